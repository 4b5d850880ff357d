"""Tests for bench/float32_math_parity.py's log reading and figures."""

import argparse
import os
import sys

import pytest

BENCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench"
)
sys.path.insert(0, BENCH)

import float32_math_parity as parity  # pylint: disable=wrong-import-position


def test_last_logged_loss_reads_the_training_programs_log_lines():
    log = (
        "I1127 train.py:568] step 60/600 loss 1.2345 lr 0.0183 2.10 steps/s ETA 270 s\n"
        "I1127 other line with loss 9.9\n"
        "I1127 train.py:568] step 600/600 loss 0.5250 lr 0 2.20 steps/s ETA 0 s\n"
    )
    assert parity.last_logged_loss(log) == pytest.approx(0.525)
    with pytest.raises(ValueError, match="no 'step N/M loss X' line"):
        parity.last_logged_loss("nothing logged")


def test_figures_compare_the_means_with_float32s_own_spread():
    mious = {
        "float32_math_seed1": 0.50,
        "float32_math_seed2": 0.44,
        "bfloat16_math_seed1": 0.49,
        "bfloat16_math_seed2": 0.47,
    }
    assert set(mious) == set(parity.RUNS)
    results = {name: {"miou": m, "loss": 0.5} for name, m in mious.items()}
    args = argparse.Namespace(num_train=200, num_val=50, steps=600)
    figures = {f["name"]: f for f in parity.figures_of(results, args)}
    assert figures["float32_math_mean_val_miou"]["value"] == pytest.approx(0.47)
    assert figures["bfloat16_math_mean_val_miou"]["value"] == pytest.approx(0.48)
    diff = figures["bfloat16_math_minus_float32_mean_miou"]["value"]
    assert diff == pytest.approx(0.01)
    assert figures["float32_seed_spread_miou"]["value"] == pytest.approx(0.06)
    assert "--float32_math=bfloat16 --seed=2" in (
        figures["bfloat16_math_seed2_val_miou"]["detail"]
    )


def test_bad_sizes_are_refused():
    with pytest.raises(SystemExit):
        parity.parse_args(["--steps=0"])
    quick = parity.parse_args(["--quick"])
    assert (quick.steps, quick.num_train, quick.num_val) == (4, 16, 4)

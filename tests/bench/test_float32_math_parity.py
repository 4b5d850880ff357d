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


def test_mode_in_effect_must_be_the_one_asked():
    log = "I1127 speed_flags.py:99] Float32 convolutions compute in bfloat16.\n"
    assert parity.mode_in_effect(log, "bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="bfloat16 asked, but the training ran in"):
        parity.mode_in_effect(log.replace("bfloat16", "float32"), "bfloat16")
    with pytest.raises(ValueError, match="does not say"):
        parity.mode_in_effect("step 1/1 loss 0.5", "float32")


def test_figures_compare_the_medians_with_float32s_own_range():
    mious = {
        "float32_math_seed1": 0.60,
        "float32_math_seed2": 0.35,
        "float32_math_seed3": 0.58,
        "bfloat16_math_seed1": 0.59,
        "bfloat16_math_seed2": 0.61,
        "bfloat16_math_seed3": 0.34,
    }
    assert set(mious) == set(parity.RUNS)
    results = {name: {"miou": m, "loss": 0.5} for name, m in mious.items()}
    args = argparse.Namespace(num_train=200, num_val=50, steps=600)
    figures = {f["name"]: f["value"] for f in parity.figures_of(results, args)}
    assert figures["float32_math_median_val_miou"] == pytest.approx(0.58)
    assert figures["bfloat16_math_median_val_miou"] == pytest.approx(0.59)
    assert figures["bfloat16_math_lowest_val_miou"] == pytest.approx(0.34)
    assert figures["float32_math_highest_val_miou"] == pytest.approx(0.60)
    diff = figures["bfloat16_math_minus_float32_median_miou"]
    assert diff == pytest.approx(0.01)
    assert figures["float32_seed_range_miou"] == pytest.approx(0.25)
    details = {f["name"]: f["detail"] for f in parity.figures_of(results, args)}
    assert "--float32_math=bfloat16 --seed=3" in details["bfloat16_math_seed3_val_miou"]


def test_bad_sizes_are_refused():
    with pytest.raises(SystemExit):
        parity.parse_args(["--steps=0"])
    quick = parity.parse_args(["--quick"])
    assert (quick.steps, quick.num_train, quick.num_val) == (4, 16, 4)

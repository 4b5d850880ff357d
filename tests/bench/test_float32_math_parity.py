"""Tests for bench/float32_math_parity.py's log reading and figures."""

import argparse
import json
import os
import sys

import pytest

BENCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench"
)
sys.path.insert(0, BENCH)

import float32_math_parity as parity  # pylint: disable=wrong-import-position

from deeplab_dpc.layers import fast_paths  # pylint: disable=wrong-import-position
from deeplab_dpc.training import speed  # pylint: disable=wrong-import-position


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


def test_seeds_flag():
    args = parity.parse_args([])
    assert args.seeds == (1, 2, 3, 4)
    assert set(parity.run_names(args.seeds)) == {
        f"{mode}_math_seed{seed}" for mode in parity.MODES for seed in (1, 2, 3, 4)
    }
    assert parity.run_names((5, 6))["bfloat16_math_seed6"] == ("bfloat16", 6)
    for bad in ("1", "1,1", "0,1", "a,b"):
        with pytest.raises(SystemExit):
            parity.parse_args([f"--seeds={bad}"])


def test_paired_difference_is_the_paired_t_interval():
    # Hand-worked: differences 1, 1, 2; mean 4/3, standard deviation
    # sqrt(1/3), standard error 1/3, t(0.975, 2) = 4.302653.
    difference, low, high = parity.paired_difference([1.0, 2.0, 3.0], [0.0, 1.0, 1.0])
    half = 4.302653 / 3.0
    assert difference == pytest.approx(4.0 / 3.0)
    assert low == pytest.approx(4.0 / 3.0 - half, abs=1e-5)
    assert high == pytest.approx(4.0 / 3.0 + half, abs=1e-5)


def test_figures_compare_the_modes_over_seeds():
    mious = {
        "float32_math_seed1": 0.60,
        "float32_math_seed2": 0.62,
        "float32_math_seed3": 0.64,
        "bfloat16_math_seed1": 0.59,
        "bfloat16_math_seed2": 0.61,
        "bfloat16_math_seed3": 0.66,
    }
    seeds = (1, 2, 3)
    assert set(mious) == set(parity.run_names(seeds))
    results = {name: {"miou": m, "loss": 0.5} for name, m in mious.items()}
    args = argparse.Namespace(num_train=200, num_val=50, steps=600, seeds=seeds)
    listed = parity.figures_of(results, args)
    figures = {f["name"]: f["value"] for f in listed}
    assert figures["float32_math_mean_val_miou"] == pytest.approx(0.62)
    assert figures["float32_math_std_val_miou"] == pytest.approx(0.02)
    assert figures["bfloat16_math_median_val_miou"] == pytest.approx(0.61)
    assert figures["bfloat16_math_lowest_val_miou"] == pytest.approx(0.59)
    assert figures["float32_math_highest_val_miou"] == pytest.approx(0.64)
    # Per seed: -0.01, -0.01, +0.02.
    assert figures["bfloat16_math_minus_float32_miou"] == pytest.approx(0.0)
    low = figures["bfloat16_math_minus_float32_ci95_low"]
    high = figures["bfloat16_math_minus_float32_ci95_high"]
    # Standard deviation sqrt(0.0003), standard error 0.01.
    half = 4.302653 * 0.01
    assert low == pytest.approx(-half, abs=1e-6)
    assert high == pytest.approx(half, abs=1e-6)
    details = {f["name"]: f["detail"] for f in listed}
    assert "--float32_math=bfloat16 --seed=3" in details["bfloat16_math_seed3_val_miou"]
    assert (
        "from the float32 pretraining's backbone"
        in details["float32_math_seed1_val_miou"]
    )


def test_a_cpu_without_bfloat16_reports_so_and_trains_nothing(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    output = tmp_path / "parity.json"
    monkeypatch.setattr(
        parity, "measure", lambda args: pytest.fail("trained on a CPU without BF16")
    )

    def reported_only(cpu_flags, says):
        """Runs main on a CPU with `cpu_flags`: one figure, 0, saying `says`."""
        cpuinfo.write_text(f"model name\t: Some Xeon\nflags\t\t: {cpu_flags}\n")
        figures = parity.main(["--quick", f"--output_json={output}"], str(cpuinfo))
        assert [(f["name"], f["value"]) for f in figures] == [
            ("cpu_computes_bfloat16", 0.0)
        ]
        assert says in figures[0]["detail"]
        assert json.loads(output.read_text())["figures"] == figures

    reported_only("fpu avx2 avx512f", "computes exactly as float32 here")
    # A BF16 CPU with oneDNN off (TF_ENABLE_ONEDNN_OPTS=0): nothing to compare.
    monkeypatch.setattr(fast_paths, "onednn_enabled", lambda: False)
    reported_only("fpu avx512_bf16", "oneDNN is off")
    # oneDNN on but computing float32 all the same (an AMD EPYC seen so).
    monkeypatch.setattr(fast_paths, "onednn_enabled", lambda: True)
    monkeypatch.setattr(speed, "fresh_process_computes_bfloat16", lambda: False)
    reported_only("fpu avx512_bf16", "computed float32")
    # With a BF16 flag, oneDNN on and using it, it measures, and says so first.
    monkeypatch.setattr(speed, "fresh_process_computes_bfloat16", lambda: True)
    monkeypatch.setattr(parity, "measure", lambda args: 2.0)
    monkeypatch.setattr(
        parity,
        "figures_of",
        lambda results, args: [parity.benchlib.figure("measured", results, "x")],
    )
    figures = parity.main(["--quick", f"--output_json={output}"], str(cpuinfo))
    assert [(f["name"], f["value"]) for f in figures] == [
        ("cpu_computes_bfloat16", 1.0),
        ("measured", 2.0),
    ]

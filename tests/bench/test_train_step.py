"""Tests for bench/train_step.py's figures (no model is trained)."""

import os
import sys

import pytest

BENCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench"
)
sys.path.insert(0, BENCH)

import train_step  # pylint: disable=wrong-import-position


def _results(float32_math, rounds=None):
    """Three rounds of one step each; `rounds` overrides a model's rounds."""
    results = {}
    for name, seconds in zip(train_step.MODELS, (2.0, 1.6, 4.0)):
        steps = (rounds or {}).get(name, [[seconds]] * 3)
        results[name] = {
            "rounds": steps,
            "loss": 1.0,
            "peak_rss_mb": 100.0,
        }
    results[train_step.OURS_BF16_MATH]["float32_math"] = float32_math
    return results


def _figure(figures, name):
    (figure,) = [f for f in figures if f["name"] == name]
    return figure


def _bf16_ratio(float32_math):
    args = train_step.parse_args([])
    figures = train_step.figures_of(_results(float32_math), args)
    return _figure(
        figures, f"{train_step.OURS_BF16_MATH}_over_{train_step.OURS}_images_per_s"
    )


def test_bf16_math_ratio_says_what_the_cpu_computed():
    bought = _bf16_ratio("bfloat16")
    assert bought["value"] == 2.0 / 1.6
    assert bought["detail"].startswith("what --float32_math=bfloat16 buys")
    noise = _bf16_ratio("float32")
    assert noise["value"] == 2.0 / 1.6
    assert "this CPU computes no bfloat16" in noise["detail"]
    assert "buys" not in noise["detail"]


def test_ratio_names_the_spread_of_its_paired_rounds():
    # Model Garden's machine slowed in round 2 and ours in round 3: the ratio
    # of medians is 4.0 / 2.0, the rounds' own ratios 2.0, 3.0 (4.5 / 1.5)
    # and 1.6 (4.0 / 2.5).
    rounds = {
        train_step.OURS: [[2.0, 2.0], [1.5, 1.5], [2.5, 2.5]],
        train_step.BASELINE: [[4.0, 4.0], [4.5, 4.5], [4.0, 4.0]],
    }
    args = train_step.parse_args([])
    figures = train_step.figures_of(_results("float32", rounds), args)
    ratio = _figure(
        figures, f"{train_step.OURS}_over_{train_step.BASELINE}_images_per_s"
    )
    assert ratio["value"] == 4.0 / 2.0
    assert "min 1.600, median 2.000, max 3.000 over 3 rounds" in ratio["detail"]
    with pytest.raises(ValueError, match="no per-round ratios"):
        train_step.benchlib.describe_ratios([])


def test_paired_ratios_refuses_unpaired_rounds():
    assert train_step.benchlib.paired_ratios([[2.0], [6.0, 2.0]], [[1.0], [2.0]]) == [
        2.0,
        2.0,
    ]
    with pytest.raises(ValueError, match="same number"):
        train_step.benchlib.paired_ratios([[1.0]], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="same number"):
        train_step.benchlib.paired_ratios([], [])

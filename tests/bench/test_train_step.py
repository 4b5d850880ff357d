"""Tests for bench/train_step.py's figures (no model is trained)."""

import os
import sys

BENCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench"
)
sys.path.insert(0, BENCH)

import train_step  # pylint: disable=wrong-import-position


def _results(float32_math):
    results = {
        name: {"seconds": [seconds] * 3, "loss": 1.0, "peak_rss_mb": 100.0}
        for name, seconds in zip(train_step.MODELS, (2.0, 1.6, 4.0))
    }
    results[train_step.OURS_BF16_MATH]["float32_math"] = float32_math
    return results


def _bf16_ratio(float32_math):
    args = train_step.parse_args([])
    figures = train_step.figures_of(_results(float32_math), args)
    name = f"{train_step.OURS_BF16_MATH}_over_{train_step.OURS}_images_per_s"
    (figure,) = [f for f in figures if f["name"] == name]
    return figure


def test_bf16_math_ratio_says_what_the_cpu_computed():
    bought = _bf16_ratio("bfloat16")
    assert bought["value"] == 2.0 / 1.6
    assert bought["detail"].startswith("what --float32_math=bfloat16 buys")
    noise = _bf16_ratio("float32")
    assert noise["value"] == 2.0 / 1.6
    assert "this CPU computes no bfloat16" in noise["detail"]
    assert "buys" not in noise["detail"]

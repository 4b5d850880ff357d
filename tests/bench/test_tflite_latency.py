"""Tests for bench/tflite_latency.py's figures (no file is converted or run)."""

import os
import sys

import pytest

BENCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench"
)
sys.path.insert(0, BENCH)

import tflite_latency  # pylint: disable=wrong-import-position

BASELINE = tflite_latency.peer_process.BASELINE


def _figures(tmp_path, latency_rounds):
    """figures_of at 2 threads; `latency_rounds`: model -> float32 rounds."""
    models = tflite_latency.peer_process.MODELS
    files = {}
    for name in models:
        for variant in tflite_latency.VARIANTS:
            path = tmp_path / f"{name}_{variant}.tflite"
            path.write_bytes(b"\0" * 1024)
            files[name, variant] = str(path)
    madds = {name: 2e9 for name in models}
    madds["ours_dpc"] = 3e9
    latencies = {
        2: {
            (name, variant): (
                latency_rounds[name] if variant == "float32" else [[10.0], [10.0]]
            )
            for name, variant in files
        }
    }
    memory = {key: 50.0 for key in files}
    args = tflite_latency.parse_args(["--threads=2"])
    figures = tflite_latency.figures_of(madds, files, latencies, memory, 300.0, args)
    return {f["name"]: f for f in figures}


def test_ours_over_model_garden_in_latency_and_gflops_with_round_spread(tmp_path):
    # Model Garden's second round ran slow: 40 and 60 ms; ours_dpc 45 and 45.
    figures = _figures(
        tmp_path,
        {
            "ours_aspp": [[30.0], [30.0]],
            BASELINE: [[40.0], [60.0]],
            "ours_dpc": [[45.0], [45.0]],
        },
    )
    latency = figures[f"ours_dpc_over_{BASELINE}_float32_latency_2t"]
    assert latency["value"] == pytest.approx(45.0 / 50.0)
    assert "min 0.750, median 0.938, max 1.125 over 2 rounds" in latency["detail"]
    gflops = figures[f"ours_dpc_over_{BASELINE}_float32_gflops_2t"]
    # 1.5x the MAdds in 0.9x the time.
    assert gflops["value"] == pytest.approx(1.5 / 0.9)
    assert "min 1.333, median 1.667, max 2.000 over 2 rounds" in gflops["detail"]
    assert figures["ours_dpc_float32_gflops_2t"]["value"] == pytest.approx(
        2 * 3e9 / 0.045 / 1e9
    )
    assert figures["ours_dpc_int8_speedup_2t"]["value"] == pytest.approx(4.5)
    assert f"{BASELINE}_over_{BASELINE}_float32_gflops_2t" not in figures

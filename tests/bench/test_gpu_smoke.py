"""bench/gpu_smoke.py runs end to end on the CPU with tiny settings.

The program is run as a user runs it, in a subprocess, with the GPUs hidden
(`CUDA_VISIBLE_DEVICES=-1`), so that it takes its CPU path on any machine.
Both models run: 81x81 is the smallest crop of the form 16*k+1 that Keras'
Xception takes (it needs 71x71).
"""

import json
import os
import sys

import program_testing
import pytest

PROGRAM = os.path.join(program_testing.REPO, "bench", "gpu_smoke.py")
MODELS = ("mobilenet_v2_dpc", "xception_aspp_decoder")
NO_GPU = "No GPU visible: running on the CPU"


@pytest.fixture(name="cpu_env")
def _cpu_env(program_env):
    return dict(program_env, CUDA_VISIBLE_DEVICES="-1")


def _run(env, *flags):
    return program_testing.run([sys.executable, PROGRAM, *flags], env, timeout=600)


def test_both_models_train_in_float16_and_export_on_the_cpu(cpu_env, tmp_path):
    proc = _run(
        cpu_env,
        "--crop_size=81,81",
        "--batch_size_per_replica=1",
        "--steps=1",
        "--depth_multiplier=0.35",
        f"--output_dir={tmp_path}",
        "--json",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    # Said at the start and again in the summary.
    assert lines[0].startswith(NO_GPU), lines[:3]
    assert proc.stdout.count(NO_GPU) == 2
    assert "PASSED: every check passed" in proc.stdout
    assert "FAILED" not in proc.stdout
    result = json.loads(lines[-1])
    assert result["ok"] and not result["failures"]
    assert result["gpu"] is False and result["replicas"] == 1
    assert list(result["models"]) == list(MODELS)
    for name in MODELS:
        checks = result["models"][name]
        for check in ("forward_backward", "train_float16", "export"):
            assert checks[check]["ok"], (name, check)
        train = checks["train_float16"]
        assert train["compute_dtype"] == "float16"
        assert len(train["losses"]) == 2 and len(train["step_seconds"]) == 1
        assert train["images_per_s"] > 0
        assert train["images_per_s_per_replica"] == train["images_per_s"]
        assert f"{name}_images_per_s " in proc.stdout
        assert f"{name}_images_per_s_per_replica " in proc.stdout
        export = checks["export"]
        assert export["predictions_shape"] == [1, 81, 81]
        assert export["path"] == str(tmp_path / name / "export" / "1")
        assert os.path.isfile(os.path.join(export["path"], "saved_model.pb"))
    assert result["models"]["xception_aspp_decoder"]["export"][
        "probabilities_shape"
    ] == [1, 81, 81, 21]


def test_require_gpu_without_a_gpu_exits_non_zero_and_says_why(cpu_env):
    proc = _run(
        cpu_env, "--require_gpu", "--crop_size=33,33", "--models=mobilenet_v2_dpc"
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--require_gpu: no GPU visible to TensorFlow" in proc.stderr
    # Nothing was built or run.
    assert "forward_backward" not in proc.stdout

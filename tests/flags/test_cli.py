"""`--help` of every program (content, grouping, speed: no TensorFlow), user
errors in one line, and the flag modules' values against the library's."""

import ast
import os
import resource
import sys
import time

import program_testing
from program_testing import REPO
import pytest

from deeplab_dpc.export import tflite
from deeplab_dpc.flags import cli
from deeplab_dpc.flags import common_flags
from deeplab_dpc.flags import speed_flags
from deeplab_dpc.flags import train_flags
from deeplab_dpc.models import backbones
from deeplab_dpc.models import deeplab
from deeplab_dpc.training import speed
from deeplab_dpc.training import trainer

MODEL = "Model and data set flags"
# Program -> flags its --help must list (its own and shared ones it uses).
PROGRAMS = {
    "deeplab_dpc.train": [
        "--train_logdir",
        "--model_variant",
        "--dataset_dir",
        "--base_learning_rate",
        "--jit_compile",
    ],
    "deeplab_dpc.eval": [
        "--eval_logdir",
        "--checkpoint_dir",
        "--eval_scales",
        "--add_flipped_images",
        "--model_variant",
    ],
    "deeplab_dpc.vis": [
        "--vis_logdir",
        "--checkpoint_dir",
        "--eval_scales",
        "--add_flipped_images",
        "--dataset",
    ],
    "deeplab_dpc.flops": ["--crop_size", "--model_variant", "--head"],
    "deeplab_dpc.predict": [
        "--images",
        "--output_dir",
        "--saved_model",
        "--tflite",
        "--checkpoint_path",
        "--crop_size",
        "--model_variant",
    ],
    "export/export_model.py": [
        "--export_path",
        "--checkpoint_path",
        "--crop_size",
        "--model_variant",
    ],
    "export/export_tflite.py": [
        "--output_dir",
        "--checkpoint_path",
        "--crop_size",
        "--variants",
        "--dataset_dir",
    ],
    "export/compare.py": ["--models", "--checkpoint_path", "--variants"],
    "datasets/build_seg_data.py": ["--image_folder", "--output_dir", "--num_shards"],
    "datasets/build_synthetic_data.py": ["--output_dir", "--num_train"],
    "datasets/build_voc2012_data.py": ["--voc_root", "--output_dir", "--num_shards"],
    "datasets/build_cityscapes_data.py": ["--cityscapes_root", "--output_dir"],
    "datasets/build_ade20k_data.py": ["--ade20k_root", "--output_dir"],
    "deeplab_dpc.import_checkpoint": [
        "--tf1_checkpoint",
        "--output_dir",
        "--model_variant",
    ],
    "deeplab_dpc.demo": ["--demo_dir", "--stages"],
    "deeplab_dpc.search": [
        "--search_dir",
        "--mode",
        "--strategy",
        "--train_crop_size",
        "--model_variant",
    ],
    "export/serving_client.py": ["--images", "--output_dir", "--protocol"],
}
# Programs without the model and data set flags.
NO_MODEL_FLAGS = {
    "datasets/build_seg_data.py",
    "datasets/build_synthetic_data.py",
    "datasets/build_voc2012_data.py",
    "datasets/build_cityscapes_data.py",
    "datasets/build_ade20k_data.py",
    "deeplab_dpc.demo",
    "export/serving_client.py",
}
# What `--help` must not import: each takes seconds.
HEAVY_MODULES = ("tensorflow", "keras", "optuna", "grpc", "matplotlib", "jax")
# `--help` takes well under this much CPU time (user + system of the
# program: on a loaded machine its wall time stretches, its CPU time not).
HELP_CPU_SECONDS = 3.0
# A generous wall-time bound, for a machine busy with other tests.
HELP_WALL_SECONDS = 15.0


def test_every_program_is_covered():
    """Every program of the package, datasets/ and export/ is in PROGRAMS."""
    programs = {
        f"{folder}/{name}"
        for folder in ("datasets", "export")
        for name in os.listdir(os.path.join(REPO, folder))
        if name.endswith(".py")
    }
    for name in os.listdir(os.path.join(REPO, "deeplab_dpc")):
        path = os.path.join(REPO, "deeplab_dpc", name)
        if name.endswith(".py") and "cli.run(" in open(path, encoding="utf-8").read():
            programs.add(f"deeplab_dpc.{name[:-3]}")
    programs.add("deeplab_dpc.search")
    assert programs == set(PROGRAMS)


def _command(program):
    if program.endswith(".py"):
        return [sys.executable, "-X", "importtime", os.path.join(REPO, program)]
    return [sys.executable, "-X", "importtime", "-m", program]


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_help_lists_the_programs_flags_grouped_without_tensorflow(program, program_env):
    start = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = program_testing.run([*_command(program), "--help"], program_env, timeout=60)
    elapsed = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in PROGRAMS[program]:
        assert f"  {flag}" in proc.stdout or f"  --[no]{flag[2:]}" in proc.stdout, flag
    own = (
        "Training flags:"
        if program == "deeplab_dpc.train"
        else "Flags of this program:"
    )
    assert own in proc.stdout
    if program not in NO_MODEL_FLAGS:
        assert f"{MODEL} (" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    heavy = sorted(set(HEAVY_MODULES) & imported)
    assert not heavy, f"--help imported {heavy}"
    assert cpu < HELP_CPU_SECONDS, f"--help took {cpu:.1f} s of CPU time"
    assert elapsed < HELP_WALL_SECONDS, f"--help took {elapsed:.1f} s"


def test_help_groups_in_order_with_titles():
    text = cli.help_text("deeplab_dpc.flags.test_nothing", doc="Doc line.")
    assert text.startswith("Doc line.")
    # This process defines common, train, speed and tflite flags (imports).
    order = [text.index(title) for _, title in cli.GROUPS if title in text]
    assert order == sorted(order) and len(order) >= 3


def test_user_errors_are_one_line_and_usage_errors_exit_2(program_env, tmp_path):
    missing = tmp_path / "no_cell.json"
    proc = program_testing.run_module(
        "deeplab_dpc.flops",
        f"--dense_prediction_cell_json={missing}",
        "--crop_size=33,33",
        env=program_env,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert str(missing) in proc.stderr and "error: " in proc.stderr
    assert f"{cli.TRACEBACK_ENV}=1" in proc.stderr
    shown = program_testing.run_module(
        "deeplab_dpc.flops",
        f"--dense_prediction_cell_json={missing}",
        "--crop_size=33,33",
        env=dict(program_env, **{cli.TRACEBACK_ENV: "1"}),
    )
    assert shown.returncode == 1 and "Traceback" in shown.stderr
    usage = program_testing.run_module("deeplab_dpc.flops", "stray", env=program_env)
    assert usage.returncode == 2
    assert (
        usage.stderr.strip().splitlines()[-1] == "error: Too many arguments: ['stray']"
    )


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_bad_flag_values_are_one_error_line_and_exit_2(program, program_env):
    # absl's own parser printed "FATAL Flags parsing error: ..." and a second
    # line, and exited 1 (the audit counted 9 such answers as unclear).
    for flag, message in (
        ("--no_such_flag=1", "error: Unknown command line flag 'no_such_flag'"),
        ("--verbosity=loud", "error: flag --verbosity=loud: "),
    ):
        proc = program_testing.run(
            [*_command(program)[:1], *_command(program)[3:], flag], program_env
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), proc.stderr


def test_flag_modules_name_the_library_values():
    # The flag modules name them without importing TensorFlow.
    assert common_flags.BACKBONE_NAMES == tuple(sorted(backbones.BACKBONES))
    assert common_flags.OUTPUT_STRIDES == tuple(backbones.OUTPUT_STRIDES)
    assert (common_flags.HEAD_DPC, common_flags.HEAD_ASPP) == (
        deeplab.HEAD_DPC,
        deeplab.HEAD_ASPP,
    )
    assert train_flags.LEARNING_POLICIES == tuple(trainer.LEARNING_POLICIES)
    assert speed_flags.MIXED_PRECISION_VALUES == tuple(speed.MIXED_PRECISION_VALUES)
    assert speed_flags.MIXED_PRECISION_VALUES[0] == speed.MIXED_PRECISION_NONE
    assert speed_flags.FLOAT32_MATH_VALUES == tuple(speed.FLOAT32_MATH_VALUES)
    assert speed_flags.FLOAT32_MATH_VALUES[0] == speed.FLOAT32_MATH_EXACT
    # tflite_flags and train_flags both define --train_split: read, not import.
    path = os.path.join(REPO, "deeplab_dpc", "flags", "tflite_flags.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    (names,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and node.targets[0].id == "VARIANT_NAMES"
    ]
    assert names == tuple(tflite.VARIANTS)


def test_export_programs_pixel_budget_is_the_libraries():
    # export_model.py names it without importing TensorFlow; read, not run
    # (running it would define its flags in this process).
    from deeplab_dpc.export import (
        saved_model,
    )  # pylint: disable=import-outside-toplevel

    path = os.path.join(REPO, "export", "export_model.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    (value,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [t.id for t in node.targets] == ["DEFAULT_MAX_IMAGE_PIXELS"]
    ]
    assert eval(
        compile(ast.Expression(value), path, "eval")
    ) == (  # pylint: disable=eval-used
        saved_model.DEFAULT_MAX_IMAGE_PIXELS
    )


def _literal_assignments(relative_path):
    """{name: value} of a program's module-level literal assignments, read
    without running it (running it would define its flags here)."""
    path = os.path.join(REPO, relative_path)
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            values[node.targets[0].id] = value
    return values


def test_serving_client_names_the_libraries_values():
    # The client imports the serving library (TensorFlow, gRPC) in main only.
    from deeplab_dpc.export import serving  # pylint: disable=import-outside-toplevel

    values = _literal_assignments("export/serving_client.py")
    assert values["PREDICT_IMAGES"] == serving.PREDICT_IMAGES
    assert values["SIGNATURES"] == serving.SIGNATURES
    assert values["GRPC_PORT"] == serving.GRPC_PORT
    assert values["REST_PORT"] == serving.REST_PORT


def test_search_program_names_the_engines_study_name():
    from deeplab_dpc.search import engine  # pylint: disable=import-outside-toplevel

    values = _literal_assignments("deeplab_dpc/search/program.py")
    assert values["DEFAULT_STUDY_NAME"] == engine.DEFAULT_STUDY_NAME


# TensorFlow's C++ start-up lines (this machine has no GPU: cuInit fails).
NATIVE_NOISE = (
    "cuInit",
    "oneDNN custom operations",
    "cudart_stub",
    "absl::InitializeLog()",
)


def _quiet_env(program_env):
    """A user's environment: nothing asks TensorFlow to be quiet."""
    env = dict(program_env)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def _noise(stderr):
    return [line for line in stderr.splitlines() if any(n in line for n in NATIVE_NOISE)]


# A converter's writer processes: tests/datasets/test_build_programs.py.

@pytest.mark.parametrize(
    "program",
    [
        # Imports TensorFlow (and gRPC, TF Serving's protos) in main, then
        # refuses the image pattern.
        [
            os.path.join(REPO, "export/serving_client.py"),
            "--images=/nonexistent/*.png",
            "--output_dir=/nonexistent/out",
        ],
        # Imports TensorFlow before main, which refuses the stage.
        ["-m", "deeplab_dpc.demo", "--stages=nothing"],
    ],
    ids=["serving_client", "demo"],
)
def test_programs_keep_tensorflows_start_up_lines_quiet(program, program_env):
    proc = program_testing.run(
        [sys.executable, *program], _quiet_env(program_env), timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not _noise(proc.stderr), proc.stderr

"""A user's day: train -> eval -> vis -> export_model -> export_tflite ->
predict, each program given `--flagfile=<train_logdir>/train.flags` and its
own paths alone; resuming with other model flags is refused; the three
model forms predict the same pixels on images that are not crop-sized; the
README's Python API example runs.

One tiny run (MobileNet-v2 alpha 0.35 + the published DPC, 2 steps), shared
by the tests of this module; they run in file order.
"""

import os
import re
import sys

import numpy as np
from PIL import Image
import program_testing
import pytest

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.export import image_predictor
from deeplab_dpc.models import deeplab

# The synthetic images are 48x48: eval, vis and the exports use the crop 49.
CROP = "--crop_size=49,49"


def _run(program_env, *args):
    if args[0].endswith(".py"):
        program = os.path.join(program_testing.REPO, args[0])
        command = [sys.executable, program, *args[1:]]
    else:
        command = [sys.executable, "-m", *args]
    return program_testing.run(command, program_env, timeout=600)


@pytest.fixture(name="run", scope="module")
def _trained(synthetic_data, tmp_path_factory):
    """The folders of one training run: data, logdir, and a scratch dir."""
    data_dir = synthetic_data(num_train=16, num_val=2, height=48, width=48)
    root = tmp_path_factory.mktemp("chain")
    env = program_testing.environment()
    logdir = str(root / "train")
    proc = _run(
        env,
        "deeplab_dpc.train",
        f"--train_logdir={logdir}",
        "--dataset=synthetic",
        f"--dataset_dir={data_dir}",
        "--model_variant=mobilenet_v2",
        "--depth_multiplier=0.35",
        "--head=dpc",
        "--train_crop_size=33,33",
        "--train_batch_size=2",
        "--training_number_of_steps=2",
        "--base_learning_rate=0.01",
        "--seed=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"env": env, "logdir": logdir, "root": root, "data_dir": data_dir}


def test_train_records_only_this_packages_flags(run):
    with open(os.path.join(run["logdir"], "train.flags")) as f:
        shared = f.read()
    with open(os.path.join(run["logdir"], "train_run.flags")) as f:
        own = f.read()
    assert "--depth_multiplier=0.35" in shared and "--head=dpc" in shared
    assert f"--dataset_dir={run['data_dir']}" in shared
    assert "--base_learning_rate=0.01" in own and "--train_crop_size=33,33" in own
    assert "--base_learning_rate" not in shared
    names = re.findall(r"^--(?:no)?([a-z0-9_]+)", shared + own, re.M)
    for internal in ("test_tmpdir", "hbm_oom_exit", "verbosity", "logtostderr"):
        assert internal not in names


@pytest.fixture(name="chain", scope="module")
def _chain(run):
    """eval, vis, export_model and export_tflite run with train.flags alone.

    A fixture, not a test, so that the tests reading their outputs hold with
    any test order or distribution (pytest -n).
    """
    env, logdir, root = run["env"], run["logdir"], run["root"]
    flagfile = f"--flagfile={os.path.join(logdir, 'train.flags')}"
    steps = {
        "eval": (
            "deeplab_dpc.eval",
            flagfile,
            f"--checkpoint_dir={logdir}",
            f"--eval_logdir={root / 'eval'}",
            "--eval_crop_size=49,49",
            "--max_number_of_evaluations=1",
        ),
        "vis": (
            "deeplab_dpc.vis",
            flagfile,
            f"--checkpoint_dir={logdir}",
            f"--vis_logdir={root / 'vis'}",
            "--vis_crop_size=49,49",
        ),
        "export_model": (
            "export/export_model.py",
            flagfile,
            f"--checkpoint_path={logdir}",
            f"--export_path={root / 'export'}",
            CROP,
        ),
        "export_tflite": (
            "export/export_tflite.py",
            flagfile,
            f"--checkpoint_path={logdir}",
            f"--output_dir={root / 'tflite'}",
            CROP,
            "--variants=float32",
            "--allow_resize",
        ),
    }
    return {name: _run(env, *args) for name, args in steps.items()}


def test_every_program_takes_the_training_flagfile(run, chain):
    root = run["root"]
    for name, proc in chain.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
        # No C++ start-up noise from TensorFlow.
        assert "absl::InitializeLog" not in proc.stderr, name
    assert os.path.isfile(root / "eval" / "eval_results.json")
    assert os.listdir(root / "vis" / "segmentation_results")
    assert os.path.isfile(root / "export" / "1" / "saved_model.pb")
    assert os.path.isfile(root / "tflite" / "float32.tflite")


def test_predict_program_writes_colored_and_raw_pngs(run, chain):
    del chain  # Its TFLite file.
    env, root = run["env"], run["root"]
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8)).save(
        photos / "small.jpg"
    )
    Image.fromarray(rng.integers(0, 256, (75, 52, 3), np.uint8)).save(
        photos / "large.png"
    )
    proc = _run(
        env,
        "deeplab_dpc.predict",
        f"--tflite={root / 'tflite' / 'float32.tflite'}",
        f"--images={photos}/*",
        f"--output_dir={root / 'predictions'}",
        "--dataset=synthetic",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2/2" in proc.stderr  # the progress bar
    for name, shape in (("small", (30, 40)), ("large", (75, 52))):
        colored = np.asarray(
            Image.open(root / "predictions" / f"{name}_prediction.png")
        )
        raw = np.asarray(Image.open(root / "predictions" / f"{name}_raw.png"))
        assert colored.shape == (*shape, 3) and raw.shape == shape
        assert raw.max() < 7


def test_three_model_forms_predict_the_same_pixels(run, chain):
    del chain  # Its SavedModel and TFLite file.
    root = run["root"]
    options = deeplab.ModelOptions(
        model_variant="mobilenet_v2",
        depth_multiplier=0.35,
        num_classes=7,
        crop_size=(49, 49),
        output_stride=16,
        dense_prediction_cell=cell_spec.published_cell(),
    )
    forms = {
        "checkpoint": image_predictor.from_checkpoint(options, run["logdir"]),
        "saved_model": image_predictor.from_saved_model(str(root / "export")),
        "tflite": image_predictor.from_tflite(str(root / "tflite" / "float32.tflite")),
    }
    rng = np.random.default_rng(2)
    # Smaller than the crop (padded only), larger (scaled down to fit), odd.
    images = [
        rng.integers(0, 256, shape, np.uint8)
        for shape in ((30, 40, 3), (150, 200, 3), (61, 23, 3))
    ]
    for image in images:
        reference = forms["saved_model"](image)
        assert reference.shape == image.shape[:2]
        np.testing.assert_array_equal(forms["checkpoint"](image), reference)
        agreement = np.mean(forms["tflite"](image) == reference)
        assert agreement >= 0.999, (image.shape, agreement)


def test_readme_python_api_example_runs(run):
    with open(os.path.join(program_testing.REPO, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'TRAIN_LOGDIR = "/tmp/train"' in code
    code = code.replace('"/tmp/train"', repr(run["logdir"]))
    exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used


def test_resuming_with_other_model_flags_is_refused(run):
    logdir = run["logdir"]
    before = {
        name: open(os.path.join(logdir, name), "rb").read()
        for name in sorted(os.listdir(logdir))
        if os.path.isfile(os.path.join(logdir, name))
    }
    proc = _run(
        run["env"],
        "deeplab_dpc.train",
        f"--flagfile={os.path.join(logdir, 'train.flags')}",
        f"--train_logdir={logdir}",
        "--depth_multiplier=0.5",
        "--train_crop_size=33,33",
        "--train_batch_size=2",
        "--training_number_of_steps=4",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "--depth_multiplier=0.5 here, --depth_multiplier=0.35 recorded" in (
        proc.stderr
    )
    assert f"--flagfile={os.path.join(logdir, 'train.flags')}" in proc.stderr
    assert "another --train_logdir" in proc.stderr
    after = {
        name: open(os.path.join(logdir, name), "rb").read()
        for name in sorted(os.listdir(logdir))
        if os.path.isfile(os.path.join(logdir, name))
    }
    assert after == before


def test_an_eval_crop_smaller_than_the_images_is_one_clear_line(run):
    proc = _run(
        run["env"],
        "deeplab_dpc.eval",
        f"--flagfile={os.path.join(run['logdir'], 'train.flags')}",
        f"--checkpoint_dir={run['logdir']}",
        f"--eval_logdir={run['root'] / 'eval_small'}",
        "--eval_crop_size=33,33",
        "--max_number_of_evaluations=1",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert "image larger than the eval crop size 33,33" in line, line
    assert "--eval_crop_size" in line and "function_node" not in line

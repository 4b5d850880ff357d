"""The import_checkpoint program, and DeepLab's graph reproduced through the
programs that read its output: eval's predictor, the eval and vis programs,
the exported SavedModel and the float32 TFLite file.

The oracle is `../shared/fixtures/deeplab_tf1_mnv2_dpc_257/` (DeepLab's own
MobileNet-v2 + DPC graph, its checkpoint and its logits; see its README).
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.data import tfexample
from deeplab_dpc.evaluation import inference
from deeplab_dpc.export import litert_runner
from deeplab_dpc.models import deeplab

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
PARITY = FIXTURES / "deeplab_tf1_mnv2_dpc_257"
VARIABLES = FIXTURES / "deeplab_tf1_variables"
CELL = ROOT / "deeplab_dpc" / "cells" / "dense_prediction_cell_branch5_top1_cityscapes.json"
# DeepLab's flags of the fixture's model.
PARITY_FLAGS = (
    "--model_variant=mobilenet_v2",
    f"--dense_prediction_cell_json={CELL}",
    "--num_classes=19",
    "--output_stride=16",
)

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"issue 23: the shared fixtures are not at {FIXTURES}"
)


def run(args, timeout=600):
    """Runs a program (`-m module` or a script path) as a user does."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def import_program(*args):
    return run(["-m", "deeplab_dpc.import_checkpoint", *args])


@pytest.fixture(name="imported", scope="module")
def _imported(tmp_path_factory):
    """The fixture's checkpoint imported by the program (its output folder)."""
    output_dir = tmp_path_factory.mktemp("imported")
    proc = import_program(
        f"--tf1_checkpoint={PARITY}",
        *PARITY_FLAGS,
        "--crop_size=257,257",
        f"--output_dir={output_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return output_dir, proc.stdout


@pytest.fixture(name="expected", scope="module")
def _expected():
    return dict(np.load(PARITY / "expected.npz"))


def options(crop=(257, 257)):
    from deeplab_dpc.cells import cell_spec  # pylint: disable=import-outside-toplevel

    return deeplab.ModelOptions(
        model_variant="mobilenet_v2",
        num_classes=19,
        crop_size=crop,
        output_stride=16,
        dense_prediction_cell=cell_spec.load_cell(str(CELL)),
    )


def log_softmax(logits):
    return logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))


def check_upsampled_logits(upsampled, expected, shift_free=False):
    """`upsampled` [2, 257, 257, 19] against DeepLab's: the sampled logits
    within 1e-3 (up to a per-pixel constant when `shift_free`, for
    log-probabilities) and the argmax on >= 99.9% of the pixels."""
    rows, cols = expected["upsampled_rows"], expected["upsampled_cols"]
    got = upsampled[:, rows][:, :, cols]
    want = expected["upsampled_logits_sub"]
    if shift_free:
        got, want = log_softmax(got), log_softmax(want)
    diff = np.abs(got - want).max()
    assert diff < 1e-3, diff
    agreement = (upsampled.argmax(-1) == expected["upsampled_argmax"]).mean()
    assert agreement >= 0.999, agreement
    return diff, agreement


# ------------------------------------------------------------- the program


def test_program_prints_the_table_and_writes_a_training_checkpoint(imported):
    output_dir, stdout = imported
    assert "mapped                      312 variables (2,543,507 values)" in stdout
    assert "skipped: optimizer slot     188 checkpoint entries" in stdout
    assert "skipped: global step          1 checkpoint entries" in stdout
    latest = tf.train.latest_checkpoint(str(output_dir))
    # DeepLab's global_step becomes the checkpoint's step, as eval reports it.
    reader = tf.train.load_checkpoint(str(PARITY / "model.ckpt"))
    step = int(reader.get_tensor("global_step"))
    assert latest.endswith(f"ckpt-{step}")
    saved = tf.train.load_checkpoint(latest)
    assert int(saved.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == step
    flags_text = (output_dir / "model.flags").read_text()
    assert f"--dense_prediction_cell_json={CELL}" in flags_text
    assert "--num_classes=19" in flags_text


def test_eval_predictor_reproduces_deeplabs_logits(imported, expected):
    output_dir, _ = imported
    model = inference.load_model(options(), str(output_dir))
    for fold in (False, True):
        predictor = inference.Predictor(model, options(), fold_batch_norm=fold)
        (_, scale_model), = predictor.models
        upsampled = scale_model(expected["images"], training=False).numpy()
        check_upsampled_logits(upsampled, expected)
        predictions = predictor.predictions(expected["images"]).numpy()
        agreement = (predictions == expected["upsampled_argmax"]).mean()
        assert agreement >= 0.999, (fold, agreement)


def write_val_split(data_dir, expected):
    """The fixture's images, labelled with DeepLab's predictions."""
    data_dir.mkdir()
    path = data_dir / tfexample.shard_name("val", 0, 1)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, (image, label) in enumerate(
            zip(expected["images"], expected["upsampled_argmax"])
        ):
            example = tfexample.encode_example(
                tfexample.encode_png(image.astype(np.uint8)),
                f"image{i}",
                257,
                257,
                tfexample.encode_png(label[..., None].astype(np.uint8)),
                image_format="png",
            )
            writer.write(example.SerializeToString())
    return data_dir


def test_eval_and_vis_programs_score_deeplabs_predictions(imported, expected, tmp_path):
    output_dir, _ = imported
    data_dir = write_val_split(tmp_path / "data", expected)
    common = [
        f"--flagfile={output_dir / 'model.flags'}",
        f"--checkpoint_dir={output_dir}",
        f"--dataset_dir={data_dir}",
    ]
    proc = run(
        ["-m", "deeplab_dpc.eval", *common, f"--eval_logdir={tmp_path / 'eval'}",
         "--eval_crop_size=257,257", "--max_number_of_evaluations=1"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert result["num_images"] == 2
    assert result["pixel_accuracy"] >= 0.999, result["pixel_accuracy"]
    assert result["miou"] >= 0.99, result["miou"]

    proc = run(
        ["-m", "deeplab_dpc.vis", *common, f"--vis_logdir={tmp_path / 'vis'}",
         "--vis_crop_size=257,257", "--also_save_raw_predictions"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i in range(2):
        raw = tf.io.decode_png(
            tf.io.read_file(str(tmp_path / "vis" / "raw_segmentation_results" / f"image{i}.png"))
        ).numpy()[..., 0]
        agreement = (raw == expected["upsampled_argmax"][i]).mean()
        assert agreement >= 0.999, agreement


def test_saved_model_reproduces_deeplabs_logits(imported, expected, tmp_path):
    output_dir, _ = imported
    proc = run(
        ["export/export_model.py", f"--flagfile={output_dir / 'model.flags'}",
         f"--checkpoint_path={output_dir}", f"--export_path={tmp_path / 'export'}",
         "--crop_size=257,257"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = tf.saved_model.load(str(tmp_path / "export" / "1"))
    outputs = served.signatures["serving_default"](
        tf.constant(expected["images"].astype(np.uint8))
    )
    probabilities = outputs["SemanticProbabilities"].numpy()
    # Log-probabilities are the logits up to a per-pixel constant.
    check_upsampled_logits(np.log(probabilities), expected, shift_free=True)
    agreement = (outputs["SemanticPredictions"].numpy() == expected["upsampled_argmax"]).mean()
    assert agreement >= 0.999, agreement


def test_float32_tflite_reproduces_deeplabs_logits(imported, expected, tmp_path):
    output_dir, _ = imported
    proc = run(
        ["export/export_tflite.py", f"--flagfile={output_dir / 'model.flags'}",
         f"--checkpoint_path={output_dir}", f"--output_dir={tmp_path / 'tflite'}",
         "--crop_size=257,257", "--variants=float32"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runner = litert_runner.Runner(str(tmp_path / "tflite" / "float32.tflite"))
    upsampled = np.concatenate([runner.run(image) for image in expected["images"]])
    check_upsampled_logits(upsampled, expected)


# ------------------------------------------------------------- bad cases


def test_wrong_num_classes_fails_with_one_error(tmp_path):
    proc = import_program(
        f"--tf1_checkpoint={PARITY}",
        "--model_variant=mobilenet_v2",
        f"--dense_prediction_cell_json={CELL}",
        "--num_classes=21",
        "--crop_size=65,65",
        f"--output_dir={tmp_path / 'out'}",
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "logits/semantic/weights" in proc.stderr
    assert "19 classes" in proc.stderr and "num_classes=21" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_dpc_checkpoint_without_the_cell_lists_every_variable(tmp_path):
    proc = import_program(
        f"--tf1_checkpoint={PARITY}",
        "--num_classes=19",
        "--crop_size=65,65",
        f"--output_dir={tmp_path / 'out'}",
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "--dense_prediction_cell_json" in proc.stderr
    # Every unused cell variable and every missing ASPP variable is listed.
    reader = tf.train.load_checkpoint(str(PARITY / "model.ckpt"))
    cell_variables = [
        n for n in reader.get_variable_to_shape_map()
        if n.startswith("meta_architecture/") and not n.endswith("/Momentum")
    ]
    assert len(cell_variables) == 55
    for name in cell_variables:
        assert f"    {name} [" in proc.stderr, name
    for name in ("aspp0/weights", "image_pooling/BatchNorm/gamma", "concat_projection/weights"):
        assert f"    {name}\n" in proc.stderr, name
    assert not (tmp_path / "out").exists()


def test_no_checkpoint_and_bad_flags(tmp_path):
    proc = import_program(
        f"--tf1_checkpoint={tmp_path / 'nope'}", f"--output_dir={tmp_path / 'out'}"
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "nope" in proc.stderr
    proc = import_program(
        f"--tf1_checkpoint={PARITY}", "--atrous_rates=6,x", f"--output_dir={tmp_path}"
    )
    assert proc.returncode != 0 and "--atrous_rates" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_existing_output_is_kept_unless_overwrite(imported, tmp_path):
    output_dir, _ = imported
    proc = import_program(
        f"--tf1_checkpoint={PARITY}", *PARITY_FLAGS, "--crop_size=65,65",
        f"--output_dir={output_dir}",
    )
    assert proc.returncode != 0 and "--overwrite" in proc.stderr
    # Our own checkpoint is not a TF1 one.
    proc = import_program(
        f"--tf1_checkpoint={output_dir}", *PARITY_FLAGS, "--crop_size=65,65",
        f"--output_dir={tmp_path / 'again'}",
    )
    assert proc.returncode != 0 and "not DeepLab's TF1" in proc.stderr


@pytest.mark.parametrize(
    "name,lines",
    [
        # Repeated --atrous_rates and --multi_grid, --noaspp_with_separable_conv.
        ("r50beta_aspp", ("--multi_grid=1", "--multi_grid=4", "--atrous_rates=18",
                          "--noaspp_with_separable_conv")),
        # The model zoo's MobileNet-v3 flags (LR-ASPP head and decoder).
        ("mnv3_small_seg", ("--aspp_with_squeeze_and_excitation",
                            "--decoder_output_is_logits", "--image_pooling_stride=4,5")),
    ],
)
def test_deeplabs_own_flags(name, lines, tmp_path):
    """A checkpoint of DeepLab's graph imported with DeepLab's flags verbatim."""
    config = json.loads((VARIABLES / f"{name}.json").read_text())
    rng = np.random.default_rng(0)
    arrays = {
        n: rng.normal(0, 0.1, shape).astype(np.float32)
        for n, shape in config["variables"]
    }
    names = sorted(arrays)
    prefix = str(tmp_path / "tf1" / "model.ckpt")
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(arrays[n]) for n in names],
    )
    crop = "33,33" if config["output_stride"] == 16 else "769,769"
    proc = import_program(
        f"--tf1_checkpoint={tmp_path / 'tf1'}",
        *config["deeplab_flags"],
        f"--num_classes={config['num_classes']}",
        f"--crop_size={crop}",
        f"--output_dir={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(rf"^mapped +{len(arrays)} variables", proc.stdout, re.M)
    flags_text = (tmp_path / "out" / "model.flags").read_text()
    for line in lines:
        assert line in flags_text.splitlines(), flags_text

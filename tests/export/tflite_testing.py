"""Shared setup of the tests of the TFLite exporters (deeplab_dpc.export).

Not a test module: the test files import it as
`from tests.export import tflite_testing`. `workspace()` builds, once per
test process, a tiny built-in synthetic data set and two checkpoints of
small MobileNet-v2 models (published DPC and ASPP heads, crop 33, output
stride 16) with `sensitive_weights`: a trained model would cost too much
here, and larger random weights (`model_testing.random_weights`) saturate
the network into one class everywhere, whatever the image, where a broken
conversion would still "agree".
"""

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile

import model_testing
import numpy as np
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.data import synthetic
from deeplab_dpc.evaluation import inference
from deeplab_dpc.export import legacy_keras
from deeplab_dpc.export import tflite
from deeplab_dpc.export import tflite_export
from deeplab_dpc.models import deeplab

CROP = (33, 33)
# Least pixel agreement of int8 classes with float ones: these untrained,
# input-sensitive models flip pixels under any noise (a trained one agrees
# at 0.99, see the report); a broken conversion agrees far less (below 0.6).
INT8_AGREEMENT = 0.75
# The same for the QAT file (test_qat.py), which fine-tunes these models a
# few steps, with fake quantization, before conversion: over fine-tuning
# seeds 0-2, both TF_ENABLE_ONEDNN_OPTS settings and two CPUs, its agreement
# with the float model measured 0.74-0.85 and with its fine-tuned model
# 0.72-0.91 (December 2026), on either side of INT8_AGREEMENT. A file that gives
# the majority class everywhere agrees at 0.57 (test_qat.py checks the
# file is above that), an unrelated model at 0.03.
QAT_AGREEMENT = 0.65
NUM_CLASSES = synthetic.NUM_CLASSES
IGNORE_LABEL = synthetic.IGNORE_LABEL
NUM_VAL = 6
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The model flags of `options("dpc")` for the programs.
MODEL_FLAGS = (
    "--model_variant=mobilenet_v2",
    "--depth_multiplier=0.35",
    "--output_stride=16",
    "--crop_size=33,33",
    "--dataset=synthetic",
)


def options(head="dpc"):
    """`ModelOptions` of the test models: "dpc" (published cell) or "aspp"."""
    return deeplab.ModelOptions(
        model_variant="mobilenet_v2",
        depth_multiplier=model_testing.ALPHA,
        num_classes=NUM_CLASSES,
        crop_size=CROP,
        output_stride=16,
        dense_prediction_cell=cell_spec.published_cell() if head == "dpc" else None,
        backbone_weights=None,
    )


def sensitive_weights(keras_model, seed=0):
    """He-normal kernels (std sqrt(2 / fan_in)), batch norm as initialised.

    The logits then vary with the image, pixel by pixel, over several
    classes, so that the parity checks can fail.
    """
    rng = np.random.default_rng(seed)
    weights = []
    for value in keras_model.get_weights():
        if value.ndim > 1:
            shape = value.shape
            fan_in = np.prod(shape[:-1]) if shape[-1] > 1 else np.prod(shape[:2])
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        weights.append(value.astype(np.float32))
    return weights


@functools.lru_cache(maxsize=None)
def workspace():
    """Builds the data set and checkpoints once; returns their paths.

    Returns:
      dict: "root" (a temporary folder, removed at exit), "data" (train
      and val shards), and "dpc"/"aspp" (checkpoint folders).
    """
    root = tempfile.mkdtemp(prefix="tflite_testing_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = os.path.join(root, "data")
    synthetic.build(
        data,
        num_train=8,
        num_val=NUM_VAL,
        height=CROP[0],
        width=CROP[1],
        num_shards=1,
        num_workers=1,
    )
    paths = {"root": root, "data": data}
    for seed, head in enumerate(("dpc", "aspp")):
        tf.keras.utils.set_random_seed(seed)
        model = deeplab.build_deeplab(options(head))
        model.set_weights(sensitive_weights(model, seed=seed))
        paths[head] = os.path.join(root, head)
        tf.train.Checkpoint(model=model).save(os.path.join(paths[head], "ckpt"))
    return paths


@functools.lru_cache(maxsize=None)
def model(head="dpc"):
    """The Keras model of a checkpoint of `workspace()` (do not change it)."""
    return inference.load_model(options(head), workspace()[head])


def representative(count=4):
    """Calibration images from the train split."""
    pattern = os.path.join(workspace()["data"], "train-*")
    return tflite.representative_images(pattern, CROP, count)


def checks(**overrides):
    """`CheckOptions` on the val split of `workspace()`."""
    values = dict(
        dataset_dir=workspace()["data"],
        num_classes=NUM_CLASSES,
        ignore_label=IGNORE_LABEL,
        parity_images=3,
        min_pixel_agreement=INT8_AGREEMENT,
    )
    values.update(overrides)
    return tflite_export.CheckOptions(**values)


def fine_tuned_export(output_dir, variant, checks, representative=None, **fields):
    """Exports a fine-tuned variant of `model()`, as the exporter does.

    A tf_keras subprocess fine-tunes a copy of the model (batch 2, eager
    steps) on the train split of `workspace()`; then the variant is
    converted and checked.

    Args:
      output_dir: str, the export folder.
      variant: str, "qat_int8" or "pruned".
      checks: `CheckOptions`, e.g. `checks()`.
      representative: calibration images, e.g. `representative()`, for
        "qat_int8".
      **fields: the variant's `legacy_keras.FineTuneOptions` fields (its
        steps, the target sparsity...).

    Returns:
      the export report.
    """
    fine_tune = legacy_keras.FineTuneOptions(
        dataset_dir=workspace()["data"],
        batch_size=2,
        ignore_label=IGNORE_LABEL,
        run_eagerly=True,
        **fields,
    )
    return tflite_export.export(
        output_dir,
        tflite.keras_model_fn(model()),
        tflite.ConversionOptions(crop_size=CROP),
        checks,
        variants=[variant],
        representative=representative,
        keras=(model(), options()),
        fine_tune=fine_tune,
    )


def val_images(count=NUM_VAL):
    """Val images padded to the crop, float32 `[count, h, w, 3]`."""
    pattern = os.path.join(workspace()["data"], "val-*")
    return np.concatenate(tflite.representative_images(pattern, CROP, count))


def run_program(program, *args, timeout=600):
    """Runs `export/<program>` as a user does; returns the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "export", program), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )

"""DeepLab's TF1 checkpoints as checkpoints of the training program.

`import_to_checkpoint` builds the model of a `deeplab.ModelOptions`, loads
DeepLab's checkpoint into it (`models.tf1_checkpoint`: all or nothing, every
variable one to one with its shape) and writes
`tf.train.Checkpoint(model=..., step=...)` into a folder with a `checkpoint`
file, as `trainer.run` writes its own (`ckpt-<step>`, the step being
DeepLab's `global_step`). The eval, vis and export programs then read the
folder as a `train_logdir`, and the training program takes it as
`--tf_initial_checkpoint`. The written checkpoint holds weights only: it
serves any crop size (the crop fixes no variable).

Example:
>>> options = deeplab.ModelOptions(model_variant="xception_71", ...)
>>> path, report = import_to_checkpoint(options, "xception71_dpc/", "/tmp/x71")
>>> print(report.format_table())
"""

import dataclasses

import numpy as np
import tensorflow as tf

from deeplab_dpc.models import deeplab
from deeplab_dpc.models import tf1_checkpoint
from deeplab_dpc.training import initial_checkpoint

# The prefix `trainer.run` gives its checkpoints (`trainer.CHECKPOINT_PREFIX`).
CHECKPOINT_PREFIX = "ckpt"
_GLOBAL_STEP = "global_step"


def tf1_global_step(path):
    """DeepLab's `global_step` in a TF1 checkpoint, or 0 when it has none."""
    reader = tf.train.load_checkpoint(path)
    if reader.has_tensor(_GLOBAL_STEP):
        return int(reader.get_tensor(_GLOBAL_STEP))
    return 0


def import_to_checkpoint(options, tf1_path, output_dir, *, overwrite=False):
    """Imports DeepLab's TF1 checkpoint and writes it in this package's format.

    Args:
      options: the `deeplab.ModelOptions` of the checkpoint's model (DeepLab's
        model flags: variant, head, rates, decoder, classes, ...).
      tf1_path: str, a TF1 checkpoint prefix or a folder holding one (a
        model-zoo tarball's contents).
      output_dir: str, the folder written (created if needed).
      overwrite: bool, replace checkpoints already in `output_dir`.

    Returns:
      (str, `tf1_checkpoint.ImportReport`): the written checkpoint's prefix
      and what the import mapped and skipped.

    Raises:
      FileNotFoundError: no TF1 checkpoint at `tf1_path`.
      FileExistsError: `output_dir` already holds a checkpoint (without
        `overwrite`).
      ValueError: `tf1_path` is not a TF1 checkpoint (one of this package's:
        use it as it is).
      tf1_checkpoint.CheckpointMismatchError: the checkpoint does not fit
        the options; the message names every unmapped, missing and
        misshapen variable. Nothing is written then.
    """
    prefix = tf1_checkpoint.resolve_tf1_checkpoint(tf1_path)
    if not initial_checkpoint.is_tf1_checkpoint(prefix):
        raise ValueError(
            f"{prefix!r} is a checkpoint of this package, not DeepLab's TF1 one: "
            "the programs read it as it is"
        )
    if tf.train.latest_checkpoint(output_dir) and not overwrite:
        raise FileExistsError(
            f"{output_dir!r} already holds a checkpoint "
            f"({tf.train.latest_checkpoint(output_dir)}); pass --overwrite or "
            "another --output_dir"
        )
    model = deeplab.build_deeplab(dataclasses.replace(options, backbone_weights=None))
    report = tf1_checkpoint.import_tf1_checkpoint(model, prefix, options.model_variant)
    step = tf.Variable(tf1_global_step(prefix), dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(model=model, step=step)
    tf.io.gfile.makedirs(output_dir)
    manager = tf.train.CheckpointManager(
        checkpoint, output_dir, max_to_keep=1, checkpoint_name=CHECKPOINT_PREFIX
    )
    written = manager.save(checkpoint_number=int(step.numpy()))
    _check_round_trip(options, model, written)
    return written, report


def _check_round_trip(options, model, written):
    """Reads the written checkpoint back as the programs do; raises if a
    weight is lost or changed (e.g. a layer `tf.train.Checkpoint` misses)."""
    fresh = deeplab.build_deeplab(dataclasses.replace(options, backbone_weights=None))
    result = initial_checkpoint.restore_initial_checkpoint(fresh, written)
    if result["missing"] or result["unused"]:
        raise RuntimeError(
            f"{written}: the written checkpoint does not read back: missing "
            f"{result['missing']}, unused {result['unused']}"
        )
    for want, got in zip(model.weights, fresh.weights):
        if not np.array_equal(want.numpy(), got.numpy()):
            raise RuntimeError(f"{written}: {want.path} did not read back equal")

"""Flags shared by the export programs (`export/*.py`), beside `common_flags`.

`--checkpoint_path` and `--crop_size` are DeepLab's export flags; the model
and data set flags come from `deeplab_dpc.flags.common_flags`, so the training
flagfile serves the exporters too. Library code never reads `FLAGS`.
"""

import os

from absl import flags

from deeplab_dpc.flags import common_flags

CHECKPOINT_PATH = flags.DEFINE_string(
    "checkpoint_path",
    None,
    "A training checkpoint: its prefix (e.g. train_logdir/ckpt-3000) or a "
    "train_logdir (its latest checkpoint).",
)
CROP_SIZE = flags.DEFINE_string(
    "crop_size",
    "513,513",
    "The exported model's crop 'H,W' (output_stride * k + 1); larger images "
    "are scaled down to fit it, smaller ones padded.",
)


def checkpoint_from_flags():
    """The checkpoint prefix `--checkpoint_path` names.

    Returns:
      str, the prefix (for a directory, its latest checkpoint).

    Raises:
      FileNotFoundError: naming the flag when there is no checkpoint there.
    """
    import tensorflow as tf

    path = CHECKPOINT_PATH.value or ""
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(
                f"--checkpoint_path={path!r} is a directory without a checkpoint "
                "(expected a train_logdir with a 'checkpoint' file)"
            )
        return latest
    if not path or not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(
            f"--checkpoint_path={path!r}: no checkpoint there (neither a "
            f"train_logdir nor a checkpoint prefix with {path + '.index'!r})"
        )
    return path


def model_options_from_flags(**overrides):
    """`deeplab.ModelOptions` from the model flags and `--crop_size`.

    Raises:
      flags.ValidationError: naming the flag of a bad value.
    """
    crop = common_flags.parse_size(CROP_SIZE.value, "crop_size")
    try:
        return common_flags.model_options_from_flags(crop, **overrides)
    except flags.ValidationError:
        raise
    except ValueError as e:
        raise flags.ValidationError(
            f"--crop_size={CROP_SIZE.value!r} "
            f"(--output_stride={common_flags.OUTPUT_STRIDE.value}): {e}"
        ) from e

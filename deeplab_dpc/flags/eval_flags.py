"""Flags and checks shared by the eval and vis programs.

Both programs read checkpoints of the training program, optionally watching
its `train_logdir`, and infer as DeepLab does (`eval_scales`,
`add_flipped_images`); defining those flags once lets one flagfile serve
both.
"""

from absl import flags

from deeplab_dpc.flags import common_flags

CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir",
    None,
    "The training program's train_logdir (its checkpoints), or one checkpoint.",
)
EVAL_SCALES = flags.DEFINE_list(
    "eval_scales", ["1.0"], "Scales of multi-scale inference (e.g. 0.5,0.75,1.0)."
)
ADD_FLIPPED_IMAGES = flags.DEFINE_boolean(
    "add_flipped_images", False, "Also infer on left-right flipped images."
)
EVAL_INTERVAL_SECS = flags.DEFINE_float(
    "eval_interval_secs",
    300.0,
    "Seconds between looks for a new checkpoint.",
    lower_bound=0,
)
EVAL_TIMEOUT_SECS = flags.DEFINE_float(
    "eval_timeout_secs",
    None,
    "Stop when no new checkpoint comes for this long (default: wait forever).",
    lower_bound=0,
)


def parse_scales(crop_size, output_stride):
    """`--eval_scales` as floats, each checked against the crop.

    Raises:
      flags.ValidationError: naming the flag and the bad scale.
    """
    from deeplab_dpc.evaluation import inference

    values = EVAL_SCALES.value
    try:
        scales = inference.check_scales(float(v) for v in values)
        for scale in scales:
            inference.scaled_crop(crop_size, scale, output_stride)
    except ValueError as e:
        raise flags.ValidationError(f"--eval_scales={','.join(values)}: {e}") from e
    return scales


def check_split(split, flag_name):
    """Raises unless --dataset_dir holds shards of the split (or it is TFDS).

    Raises:
      flags.ValidationError: naming --dataset_dir and the split flag.
    """
    from deeplab_dpc.data import tfexample

    if tfds_name():
        return
    dataset_dir = common_flags.DATASET_DIR.value
    if not dataset_dir:
        raise flags.ValidationError("--dataset_dir is required")
    try:
        tfexample.split_files(dataset_dir, split)
    except FileNotFoundError as e:
        raise flags.ValidationError(
            f"--dataset_dir={dataset_dir!r} holds no shards of "
            f"--{flag_name}={split!r}: {e}"
        ) from e


def tfds_name():
    """The TFDS name when --dataset is `tfds:<name>`, else None."""
    from deeplab_dpc.data import tfds_source

    name = common_flags.DATASET.value
    return name if tfds_source.is_tfds_name(name) else None


def checkpoints(max_count):
    """The checkpoints to process, in order.

    One checkpoint prefix gives itself; a directory gives its checkpoints as
    they appear (`tf.train.checkpoints_iterator`), until `max_count` (0:
    forever) or `--eval_timeout_secs` without a new one.

    Raises:
      FileNotFoundError: for a path that is neither a directory nor a
        checkpoint prefix.
    """
    import tensorflow as tf

    from deeplab_dpc.evaluation import inference

    path = CHECKPOINT_DIR.value
    if not tf.io.gfile.isdir(path):
        yield inference.resolve_checkpoint(path, "--checkpoint_dir")
        return
    for count, checkpoint in enumerate(
        tf.train.checkpoints_iterator(
            path,
            min_interval_secs=EVAL_INTERVAL_SECS.value,
            timeout=EVAL_TIMEOUT_SECS.value,
        ),
        start=1,
    ):
        yield checkpoint
        if max_count and count >= max_count:
            return

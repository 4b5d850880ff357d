"""Trains DeepLab (with a DPC or ASPP head), as DeepLab's train.py.

  python -m deeplab_dpc.train --train_logdir=DIR --dataset=synthetic \
      --dataset_dir=DATA [--train_crop_size=513,513] [--train_batch_size=8] \
      [--distribution_strategy=default|mirrored|multi_worker_mirrored]

Model and data set flags come from `deeplab_dpc.common_flags`. The program
writes its resolved flags to `<train_logdir>/train.flags`, then runs
`train_lib.run`; a restarted run resumes from the latest checkpoint.
`--tf_initial_checkpoint` (with `--initialize_last_layer`,
`--last_layers_contain_logits_only`) initialises a new run's model weights
from another run's checkpoint, as DeepLab's fine-tuning flags.
`multi_worker_mirrored` reads the cluster from `TF_CONFIG`. The speed levers
`--jit_compile`, `--mixed_precision`, `--float32_math` and the thread flags
come from `deeplab_dpc.speed_flags`.
"""

import os

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from deeplab_dpc import common_flags
from deeplab_dpc import file_io
from deeplab_dpc import speed_flags
from deeplab_dpc import train_lib
from deeplab_dpc.data import tfexample

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")

_TRAIN_LOGDIR = flags.DEFINE_string(
    "train_logdir", None, "Where checkpoints, events and train.flags go."
)
_TRAIN_SPLIT = flags.DEFINE_string("train_split", "train", "Split to train on.")
_TRAIN_CROP_SIZE = flags.DEFINE_string(
    "train_crop_size", "513,513", "Training crop 'H,W' (output_stride * k + 1)."
)
_TRAIN_BATCH_SIZE = flags.DEFINE_integer(
    "train_batch_size", 8, "Global batch, split over the replicas."
)
_TRAINING_NUMBER_OF_STEPS = flags.DEFINE_integer(
    "training_number_of_steps", 30000, "The step training stops at."
)
_BASE_LEARNING_RATE = flags.DEFINE_float(
    "base_learning_rate", 1e-4, "Initial learning rate."
)
_LEARNING_POLICY = flags.DEFINE_enum(
    "learning_policy", "poly", list(train_lib.LEARNING_POLICIES), "Learning policy."
)
_LEARNING_POWER = flags.DEFINE_float("learning_power", 0.9, "Poly policy power.")
_END_LEARNING_RATE = flags.DEFINE_float(
    "end_learning_rate", 0.0, "Poly policy's final learning rate."
)
_LEARNING_RATE_DECAY_STEP = flags.DEFINE_integer(
    "learning_rate_decay_step", 2000, "Step policy: steps between decays."
)
_LEARNING_RATE_DECAY_FACTOR = flags.DEFINE_float(
    "learning_rate_decay_factor", 0.1, "Step policy: decay factor."
)
_SLOW_START_STEP = flags.DEFINE_integer(
    "slow_start_step", 0, "Steps trained at --slow_start_learning_rate first."
)
_SLOW_START_LEARNING_RATE = flags.DEFINE_float(
    "slow_start_learning_rate", 1e-4, "Learning rate of the slow start."
)
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
_HARD_EXAMPLE_MINING_STEP = flags.DEFINE_integer(
    "hard_example_mining_step",
    0,
    "Steps over which the kept pixels ramp from 100% to --top_k_percent_pixels.",
)
_TOP_K_PERCENT_PIXELS = flags.DEFINE_float(
    "top_k_percent_pixels", 1.0, "Fraction of hardest pixels kept in the loss."
)
_LOG_STEPS = flags.DEFINE_integer("log_steps", 10, "Steps between log lines.")
_SAVE_INTERVAL_SECS = flags.DEFINE_float(
    "save_interval_secs", 1200, "Seconds between checkpoints."
)
_MAX_TO_KEEP = flags.DEFINE_integer("max_to_keep", 5, "Checkpoints kept.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of weights and input pipeline.")
_MIN_SCALE_FACTOR = flags.DEFINE_float("min_scale_factor", 0.5, "Min scale.")
_MAX_SCALE_FACTOR = flags.DEFINE_float("max_scale_factor", 2.0, "Max scale.")
_SCALE_FACTOR_STEP_SIZE = flags.DEFINE_float(
    "scale_factor_step_size", 0.25, "Scale step."
)
_FINE_TUNE_BATCH_NORM = flags.DEFINE_boolean(
    "fine_tune_batch_norm", True, "Train batch norm (False freezes it)."
)
_TF_INITIAL_CHECKPOINT = flags.DEFINE_string(
    "tf_initial_checkpoint",
    "",
    "Checkpoint of this program (prefix or directory) whose model weights "
    "initialise a run that starts from scratch; ignored when resuming.",
)
_INITIALIZE_LAST_LAYER = flags.DEFINE_boolean(
    "initialize_last_layer",
    True,
    "Restore the last layers from --tf_initial_checkpoint (false to fine-tune "
    "with another number of classes).",
)
_LAST_LAYERS_CONTAIN_LOGITS_ONLY = flags.DEFINE_boolean(
    "last_layers_contain_logits_only",
    False,
    "The last layers are the logits only (true) or the logits, head and "
    "decoder (false).",
)
_SAVE_SUMMARIES_IMAGES = flags.DEFINE_boolean(
    "save_summaries_images",
    False,
    "Also write an image, its labels and prediction to TensorBoard at log steps.",
)
_DISTRIBUTION_STRATEGY = flags.DEFINE_enum(
    "distribution_strategy", "default", list(STRATEGIES), "tf.distribute strategy."
)
_NUM_GPUS = flags.DEFINE_integer(
    "num_gpus", 0, "GPUs per worker for mirrored strategies (0: all devices)."
)


def make_strategy(name, num_gpus):
    """The `tf.distribute.Strategy` named by --distribution_strategy."""
    if name == "mirrored":
        devices = [f"/gpu:{i}" for i in range(num_gpus)] if num_gpus else None
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        # TFConfigClusterResolver reads the cluster from TF_CONFIG.
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def write_flags(train_logdir):
    """Writes the resolved flags to `<train_logdir>/train.flags` atomically."""
    path = os.path.join(train_logdir, "train.flags")
    file_io.write_text(path, flags.FLAGS.flags_into_string())
    return path


def options_from_flags(num_replicas):
    """(ModelOptions, TrainOptions) from the flags.

    Raises:
      flags.ValidationError: naming the flag of a bad value.
    """
    crop, model_options = common_flags.model_options_for_crop_flag(
        "train_crop_size", _TRAIN_CROP_SIZE.value
    )
    if _TRAIN_BATCH_SIZE.value % num_replicas:
        raise flags.ValidationError(
            f"--train_batch_size={_TRAIN_BATCH_SIZE.value} is the global batch "
            f"and must be divisible by the {num_replicas} replicas"
        )
    dataset_dir = common_flags.DATASET_DIR.value
    if not dataset_dir:
        raise flags.ValidationError("--dataset_dir is required")
    try:
        tfexample.split_files(dataset_dir, _TRAIN_SPLIT.value)
    except FileNotFoundError as e:
        raise flags.ValidationError(
            f"--dataset_dir={dataset_dir!r} holds no shards of "
            f"--train_split={_TRAIN_SPLIT.value!r}: {e}"
        ) from e
    try:
        train_options = train_lib.TrainOptions(
            train_batch_size=_TRAIN_BATCH_SIZE.value,
            training_number_of_steps=_TRAINING_NUMBER_OF_STEPS.value,
            base_learning_rate=_BASE_LEARNING_RATE.value,
            learning_policy=_LEARNING_POLICY.value,
            learning_power=_LEARNING_POWER.value,
            end_learning_rate=_END_LEARNING_RATE.value,
            learning_rate_decay_step=_LEARNING_RATE_DECAY_STEP.value,
            learning_rate_decay_factor=_LEARNING_RATE_DECAY_FACTOR.value,
            slow_start_step=_SLOW_START_STEP.value,
            slow_start_learning_rate=_SLOW_START_LEARNING_RATE.value,
            momentum=_MOMENTUM.value,
            hard_example_mining_step=_HARD_EXAMPLE_MINING_STEP.value,
            top_k_percent_pixels=_TOP_K_PERCENT_PIXELS.value,
            log_steps=_LOG_STEPS.value,
            save_interval_secs=_SAVE_INTERVAL_SECS.value,
            max_to_keep=_MAX_TO_KEEP.value,
            seed=_SEED.value,
            min_scale_factor=_MIN_SCALE_FACTOR.value,
            max_scale_factor=_MAX_SCALE_FACTOR.value,
            scale_factor_step_size=_SCALE_FACTOR_STEP_SIZE.value,
            train_split=_TRAIN_SPLIT.value,
            dataset_dir=dataset_dir,
            ignore_label=common_flags.dataset_info_from_flags().ignore_label,
            fine_tune_batch_norm=_FINE_TUNE_BATCH_NORM.value,
            tf_initial_checkpoint=_TF_INITIAL_CHECKPOINT.value,
            initialize_last_layer=_INITIALIZE_LAST_LAYER.value,
            last_layers_contain_logits_only=_LAST_LAYERS_CONTAIN_LOGITS_ONLY.value,
            save_summaries_images=_SAVE_SUMMARIES_IMAGES.value,
            # Resolved only for image summaries: ADE20K without colours warns.
            colormap_type=(
                common_flags.dataset_info_from_flags().label_colors()
                if _SAVE_SUMMARIES_IMAGES.value
                else "pascal"
            ),
            jit_compile=speed_flags.JIT_COMPILE.value,
            mixed_precision=speed_flags.MIXED_PRECISION.value,
        )
    except ValueError as e:
        raise flags.ValidationError(str(e)) from e
    return model_options, train_options


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    try:
        speed_flags.apply_threads()
    except flags.ValidationError as e:
        raise app.UsageError(str(e)) from e
    strategy = make_strategy(_DISTRIBUTION_STRATEGY.value, _NUM_GPUS.value)
    try:
        # After the strategy: MultiWorkerMirroredStrategy must come before
        # the first op, and this runs one (a probe convolution).
        speed_flags.apply_float32_math()
        model_options, train_options = options_from_flags(strategy.num_replicas_in_sync)
    except flags.ValidationError as e:
        raise app.UsageError(str(e)) from e
    if train_lib.is_chief(strategy):
        write_flags(_TRAIN_LOGDIR.value)
    results = train_lib.run(model_options, train_options, _TRAIN_LOGDIR.value, strategy)
    logging.info(
        "Stopped at step %d (%s); last checkpoint %s.",
        results["step"],
        "SIGTERM" if results["terminated"] else "done",
        results["checkpoint"],
    )


def run():
    flags.mark_flags_as_required(["train_logdir"])
    app.run(main)


if __name__ == "__main__":
    run()

"""The training program's flags, as DeepLab's train.py names them.

`python -m deeplab_dpc.train` defines them, and so does the search program
(`python -m deeplab_dpc.search`), whose pretraining and re-rank train with
them. `options_from_flags` turns them, with the model and data set flags of
`common_flags` and the speed flags, into the trainer's options.
"""

from absl import flags

from deeplab_dpc.flags import common_flags
from deeplab_dpc.flags import speed_flags

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")
# `trainer.LEARNING_POLICIES` (the trainer imports TensorFlow).
LEARNING_POLICIES = ("poly", "step")

TRAIN_LOGDIR = flags.DEFINE_string(
    "train_logdir", None, "Where checkpoints, events and train.flags go."
)
TRAIN_SPLIT = flags.DEFINE_string("train_split", "train", "Split to train on.")
TRAIN_CROP_SIZE = flags.DEFINE_string(
    "train_crop_size", "513,513", "Training crop 'H,W' (output_stride * k + 1)."
)
TRAIN_BATCH_SIZE = flags.DEFINE_integer(
    "train_batch_size", 8, "Global batch, split over the replicas."
)
TRAINING_NUMBER_OF_STEPS = flags.DEFINE_integer(
    "training_number_of_steps", 30000, "The step training stops at."
)
BASE_LEARNING_RATE = flags.DEFINE_float(
    "base_learning_rate", 1e-4, "Initial learning rate."
)
flags.register_validator("base_learning_rate", lambda value: value > 0, "must be > 0")
LEARNING_POLICY = flags.DEFINE_enum(
    "learning_policy", "poly", list(LEARNING_POLICIES), "Learning policy."
)
LEARNING_POWER = flags.DEFINE_float("learning_power", 0.9, "Poly policy power.")
END_LEARNING_RATE = flags.DEFINE_float(
    "end_learning_rate", 0.0, "Poly policy's final learning rate."
)
LEARNING_RATE_DECAY_STEP = flags.DEFINE_integer(
    "learning_rate_decay_step", 2000, "Step policy: steps between decays."
)
LEARNING_RATE_DECAY_FACTOR = flags.DEFINE_float(
    "learning_rate_decay_factor", 0.1, "Step policy: decay factor."
)
SLOW_START_STEP = flags.DEFINE_integer(
    "slow_start_step", 0, "Steps trained at --slow_start_learning_rate first."
)
SLOW_START_LEARNING_RATE = flags.DEFINE_float(
    "slow_start_learning_rate", 1e-4, "Learning rate of the slow start."
)
MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
HARD_EXAMPLE_MINING_STEP = flags.DEFINE_integer(
    "hard_example_mining_step",
    0,
    "Steps over which the kept pixels ramp from 100% to --top_k_percent_pixels.",
)
TOP_K_PERCENT_PIXELS = flags.DEFINE_float(
    "top_k_percent_pixels", 1.0, "Fraction of hardest pixels kept in the loss."
)
LOG_STEPS = flags.DEFINE_integer("log_steps", 10, "Steps between log lines.")
SAVE_INTERVAL_SECS = flags.DEFINE_float(
    "save_interval_secs",
    1200,
    "Seconds between checkpoints (0: only at the end and on SIGTERM).",
    lower_bound=0,
)
MAX_TO_KEEP = flags.DEFINE_integer("max_to_keep", 5, "Checkpoints kept.")
SEED = flags.DEFINE_integer("seed", None, "Seed of weights and input pipeline.")
MIN_SCALE_FACTOR = flags.DEFINE_float("min_scale_factor", 0.5, "Min scale.")
MAX_SCALE_FACTOR = flags.DEFINE_float("max_scale_factor", 2.0, "Max scale.")
SCALE_FACTOR_STEP_SIZE = flags.DEFINE_float(
    "scale_factor_step_size", 0.25, "Scale step."
)
FINE_TUNE_BATCH_NORM = flags.DEFINE_boolean(
    "fine_tune_batch_norm", True, "Train batch norm (False freezes it)."
)
TF_INITIAL_CHECKPOINT = flags.DEFINE_string(
    "tf_initial_checkpoint",
    "",
    "Checkpoint of this program (prefix or directory) whose model weights "
    "initialise a run that starts from scratch; ignored when resuming.",
)
INITIALIZE_LAST_LAYER = flags.DEFINE_boolean(
    "initialize_last_layer",
    True,
    "Restore the last layers from --tf_initial_checkpoint (false to fine-tune "
    "with another number of classes).",
)
LAST_LAYERS_CONTAIN_LOGITS_ONLY = flags.DEFINE_boolean(
    "last_layers_contain_logits_only",
    False,
    "The last layers are the logits only (true) or the logits, head and "
    "decoder (false).",
)
SAVE_SUMMARIES_IMAGES = flags.DEFINE_boolean(
    "save_summaries_images",
    False,
    "Also write an image, its labels and prediction to TensorBoard at log steps.",
)
DISTRIBUTION_STRATEGY = flags.DEFINE_enum(
    "distribution_strategy", "default", list(STRATEGIES), "tf.distribute strategy."
)
NUM_GPUS = flags.DEFINE_integer(
    "num_gpus", 0, "GPUs per worker for mirrored strategies (0: all devices)."
)


def options_from_flags(num_replicas):
    """(ModelOptions, TrainOptions) from the flags.

    Raises:
      flags.ValidationError: naming the flag of a bad value.
    """
    from deeplab_dpc.data import tfexample
    from deeplab_dpc.training import trainer

    crop, model_options = common_flags.model_options_for_crop_flag(
        "train_crop_size", TRAIN_CROP_SIZE.value
    )
    if TRAIN_BATCH_SIZE.value % num_replicas:
        raise flags.ValidationError(
            f"--train_batch_size={TRAIN_BATCH_SIZE.value} is the global batch "
            f"and must be divisible by the {num_replicas} replicas"
        )
    dataset_dir = common_flags.DATASET_DIR.value
    if not dataset_dir:
        raise flags.ValidationError("--dataset_dir is required")
    try:
        tfexample.split_files(dataset_dir, TRAIN_SPLIT.value)
    except FileNotFoundError as e:
        raise flags.ValidationError(
            f"--dataset_dir={dataset_dir!r} holds no shards of "
            f"--train_split={TRAIN_SPLIT.value!r}: {e}"
        ) from e
    try:
        train_options = trainer.TrainOptions(
            train_batch_size=TRAIN_BATCH_SIZE.value,
            training_number_of_steps=TRAINING_NUMBER_OF_STEPS.value,
            base_learning_rate=BASE_LEARNING_RATE.value,
            learning_policy=LEARNING_POLICY.value,
            learning_power=LEARNING_POWER.value,
            end_learning_rate=END_LEARNING_RATE.value,
            learning_rate_decay_step=LEARNING_RATE_DECAY_STEP.value,
            learning_rate_decay_factor=LEARNING_RATE_DECAY_FACTOR.value,
            slow_start_step=SLOW_START_STEP.value,
            slow_start_learning_rate=SLOW_START_LEARNING_RATE.value,
            momentum=MOMENTUM.value,
            hard_example_mining_step=HARD_EXAMPLE_MINING_STEP.value,
            top_k_percent_pixels=TOP_K_PERCENT_PIXELS.value,
            log_steps=LOG_STEPS.value,
            save_interval_secs=SAVE_INTERVAL_SECS.value,
            max_to_keep=MAX_TO_KEEP.value,
            seed=SEED.value,
            min_scale_factor=MIN_SCALE_FACTOR.value,
            max_scale_factor=MAX_SCALE_FACTOR.value,
            scale_factor_step_size=SCALE_FACTOR_STEP_SIZE.value,
            train_split=TRAIN_SPLIT.value,
            dataset_dir=dataset_dir,
            ignore_label=common_flags.dataset_info_from_flags().ignore_label,
            fine_tune_batch_norm=FINE_TUNE_BATCH_NORM.value,
            tf_initial_checkpoint=TF_INITIAL_CHECKPOINT.value,
            initialize_last_layer=INITIALIZE_LAST_LAYER.value,
            last_layers_contain_logits_only=LAST_LAYERS_CONTAIN_LOGITS_ONLY.value,
            save_summaries_images=SAVE_SUMMARIES_IMAGES.value,
            # Resolved only for image summaries: ADE20K without colours warns.
            colormap_type=(
                common_flags.dataset_info_from_flags().label_colors()
                if SAVE_SUMMARIES_IMAGES.value
                else "pascal"
            ),
            jit_compile=speed_flags.JIT_COMPILE.value,
            mixed_precision=speed_flags.MIXED_PRECISION.value,
        )
    except ValueError as e:
        raise flags.ValidationError(str(e)) from e
    return model_options, train_options

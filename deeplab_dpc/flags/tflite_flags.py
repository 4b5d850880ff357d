"""Flags of the TFLite programs (`export/export_tflite.py`, `export/compare.py`).

They come beside `common_flags` (model and data set) and `export_flags`
(`--checkpoint_path`, `--crop_size`), so one flagfile serves training and
both programs. Library code never reads `FLAGS`: the programs call the
`*_from_flags` functions.
"""

import os

from absl import flags

from deeplab_dpc.flags import common_flags
from deeplab_dpc.flags import export_flags

# `tflite.VARIANTS` (`deeplab_dpc.export.tflite` imports TensorFlow).
VARIANT_NAMES = ("float32", "float16", "dynamic_int8", "int8", "qat_int8", "pruned")

VARIANTS = flags.DEFINE_list(
    "variants",
    None,
    f"Of {','.join(VARIANT_NAMES)}; default: all (the post-training ones "
    "for --saved_model_dir).",
)
INCLUDE_ARGMAX = flags.DEFINE_boolean(
    "include_argmax", False, "Output int32 classes instead of logits."
)
INCLUDE_PREPROCESSING = flags.DEFINE_boolean(
    "include_preprocessing", False, "Take uint8 pixels instead of float32."
)
ALLOW_RESIZE = flags.DEFINE_boolean(
    "allow_resize",
    False,
    "Input of any size (resize_tensor_input); the model still runs at the crop "
    "its head is built for, the image and logits being resized inside.",
)
ALLOW_FLEX = flags.DEFINE_boolean(
    "allow_flex", False, "Allow Select TF (Flex) ops, which need the Flex delegate."
)
REPRESENTATIVE_DATASET = flags.DEFINE_string(
    "representative_dataset",
    "",
    "TFRecord glob calibrating the int8 variants; default: "
    "<dataset_dir>/<train_split>-*.",
)
CALIBRATION_STEPS = flags.DEFINE_integer(
    "calibration_steps", 100, "Calibration images.", lower_bound=1
)
QAT_STEPS = flags.DEFINE_integer(
    "qat_steps", 1000, "Quantization-aware fine-tuning steps.", lower_bound=0
)
TARGET_SPARSITY = flags.DEFINE_float(
    "target_sparsity", 0.5, "Final sparsity of the pruned kernels."
)
PRUNING_STEPS = flags.DEFINE_integer(
    "pruning_steps", 1000, "Pruning fine-tuning steps.", lower_bound=1
)
FINE_TUNE_BATCH_SIZE = flags.DEFINE_integer(
    "fine_tune_batch_size", 8, "Batch of the QAT and pruning steps.", lower_bound=1
)
QAT_LEARNING_RATE = flags.DEFINE_float(
    "qat_learning_rate",
    1e-5,
    "SGD learning rate of the QAT steps (small: QAT starts at the float model).",
)
PRUNING_LEARNING_RATE = flags.DEFINE_float(
    "pruning_learning_rate",
    1e-3,
    "SGD learning rate of the pruning steps (larger: pruning must recover).",
)
FINE_TUNE_EAGERLY = flags.DEFINE_boolean(
    "fine_tune_eagerly",
    False,
    "Run the fine-tuning steps eagerly (cheaper than tracing for a few steps).",
)
TRAIN_SPLIT = flags.DEFINE_string(
    "train_split", "train", "Split the QAT and pruning fine-tune on."
)
EVAL_SPLIT = flags.DEFINE_string(
    "eval_split", "val", "Split of the mIOU checks (its images must fit the crop)."
)
MAX_EVAL_IMAGES = flags.DEFINE_integer(
    "max_eval_images",
    0,
    "Images of the mIOU checks (0: the whole split).",
    lower_bound=0,
)
MIN_PIXEL_AGREEMENT = flags.DEFINE_float(
    "min_pixel_agreement",
    0.9,
    "Least pixel agreement of the int8 variants' classes with the float model's.",
)
NUM_THREADS = flags.DEFINE_integer(
    "num_threads", 1, "LiteRT (XNNPACK) threads.", lower_bound=1
)


def variants_from_flags(from_checkpoint=True):
    """The `--variants` (default: all, or the post-training ones).

    Raises:
      flags.ValidationError: for an unknown variant, or a fine-tuned one
        without a checkpoint.
    """
    from deeplab_dpc.export import tflite

    if VARIANTS.value is None:
        return tflite.VARIANTS if from_checkpoint else tflite.POST_TRAINING
    try:
        variants = tflite.parse_variants(VARIANTS.value)
    except ValueError as e:
        raise flags.ValidationError(f"--variants: {e}") from e
    fine_tuned = [v for v in variants if v in tflite.FINE_TUNED]
    if fine_tuned and not from_checkpoint:
        raise flags.ValidationError(
            f"--variants={','.join(fine_tuned)} fine-tune a checkpoint's model: "
            "give --checkpoint_path"
        )
    return variants


def conversion_options_from_flags(crop_size=None):
    """`tflite.ConversionOptions` (crop: `crop_size` or `--crop_size`)."""
    from deeplab_dpc.export import tflite

    if crop_size is None:
        crop_size = common_flags.parse_size(export_flags.CROP_SIZE.value, "crop_size")
    return tflite.ConversionOptions(
        crop_size=crop_size,
        include_argmax=INCLUDE_ARGMAX.value,
        include_preprocessing=INCLUDE_PREPROCESSING.value,
        allow_resize=ALLOW_RESIZE.value,
        allow_flex=ALLOW_FLEX.value,
    )


def check_options_from_flags():
    """`tflite_export.CheckOptions` from the data set and check flags."""
    from deeplab_dpc.export import tflite_export

    info = common_flags.dataset_info_from_flags()
    return tflite_export.CheckOptions(
        dataset_dir=common_flags.DATASET_DIR.value,
        eval_split=EVAL_SPLIT.value,
        num_classes=info.num_classes,
        ignore_label=info.ignore_label,
        max_eval_images=MAX_EVAL_IMAGES.value,
        min_pixel_agreement=MIN_PIXEL_AGREEMENT.value,
        num_threads=NUM_THREADS.value,
    )


def fine_tune_options_from_flags(variants):
    """`legacy_keras.FineTuneOptions`, or None when no variant fine-tunes.

    Raises:
      flags.ValidationError: when one does and there is no --dataset_dir, or
        for a bad value.
    """
    from deeplab_dpc.export import legacy_keras
    from deeplab_dpc.export import tflite

    if not any(v in tflite.FINE_TUNED for v in variants):
        return None
    dataset_dir = common_flags.DATASET_DIR.value
    if not dataset_dir:
        raise flags.ValidationError("qat_int8 and pruned fine-tune on --dataset_dir")
    try:
        return legacy_keras.FineTuneOptions(
            dataset_dir=dataset_dir,
            train_split=TRAIN_SPLIT.value,
            batch_size=FINE_TUNE_BATCH_SIZE.value,
            qat_learning_rate=QAT_LEARNING_RATE.value,
            pruning_learning_rate=PRUNING_LEARNING_RATE.value,
            ignore_label=common_flags.dataset_info_from_flags().ignore_label,
            qat_steps=QAT_STEPS.value,
            target_sparsity=TARGET_SPARSITY.value,
            pruning_steps=PRUNING_STEPS.value,
            run_eagerly=FINE_TUNE_EAGERLY.value,
        )
    except ValueError as e:
        raise flags.ValidationError(str(e)) from e


def representative_pattern_from_flags(variants):
    """The calibration TFRecord glob, or None when no variant needs one.

    Raises:
      flags.ValidationError: when an int8 variant has no data.
    """
    from deeplab_dpc.export import tflite

    if not any(v in tflite.FULL_INTEGER for v in variants):
        return None
    pattern = REPRESENTATIVE_DATASET.value
    if not pattern and common_flags.DATASET_DIR.value:
        pattern = os.path.join(common_flags.DATASET_DIR.value, f"{TRAIN_SPLIT.value}-*")
    if not pattern:
        raise flags.ValidationError(
            "the int8 variants need --representative_dataset (or --dataset_dir)"
        )
    return pattern

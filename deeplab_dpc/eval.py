"""Evaluates DeepLab checkpoints on a split, as DeepLab's eval.py.

  python -m deeplab_dpc.eval --checkpoint_dir=TRAIN_LOGDIR \
      --eval_logdir=DIR --dataset=synthetic --dataset_dir=DATA \
      [--eval_split=val] [--eval_crop_size=513,513] [--eval_scales=1.0] \
      [--add_flipped_images] [--max_number_of_evaluations=1]

Model and data set flags come from `deeplab_dpc.flags.common_flags` (the same
flagfile serves train, eval and vis). Every new checkpoint in
`--checkpoint_dir` is evaluated (waiting `--eval_interval_secs` between
looks) until `--max_number_of_evaluations` evaluations are done (0: watch
forever, as DeepLab) or no new checkpoint comes for `--eval_timeout_secs`.
Results: a per-class IoU table in the log, `eval_results.json` and
`eval_results-<step>.json` in `--eval_logdir`, and TensorBoard scalars; the
classes are named from `class_names.txt` in `--dataset_dir` when it is
there (the ADE20K converter writes it from `objectInfo150.txt`).
`--jit_compile` (XLA), `--mixed_precision`, `--fold_batch_norm` (default
on) and the thread flags (`deeplab_dpc.flags.speed_flags`) speed inference up.
"""

from absl import app
from absl import flags
from absl import logging

from deeplab_dpc.evaluation import evaluator
from deeplab_dpc.flags import common_flags
from deeplab_dpc.flags import eval_flags
from deeplab_dpc.flags import program_errors
from deeplab_dpc.flags import speed_flags

_EVAL_LOGDIR = flags.DEFINE_string(
    "eval_logdir", None, "Where the results and summaries are written."
)
_EVAL_SPLIT = flags.DEFINE_string("eval_split", "val", "Split to evaluate.")
_EVAL_CROP_SIZE = flags.DEFINE_string(
    "eval_crop_size",
    "513,513",
    "'height,width' every image is padded to; at least the split's largest image.",
)
_EVAL_BATCH_SIZE = flags.DEFINE_integer(
    "eval_batch_size", 1, "Images per batch (DeepLab evaluates one at a time)."
)
_MAX_NUMBER_OF_EVALUATIONS = flags.DEFINE_integer(
    "max_number_of_evaluations", 0, "Stop after this many evaluations (0: never)."
)


def eval_setup():
    """(ModelOptions, scales, DatasetInfo) from the flags, checked.

    Raises:
      flags.ValidationError: naming the flag of a bad value.
    """
    crop, model_options = common_flags.model_options_for_crop_flag(
        "eval_crop_size", _EVAL_CROP_SIZE.value
    )
    scales = eval_flags.parse_scales(crop, model_options.output_stride)
    if _EVAL_BATCH_SIZE.value < 1:
        raise flags.ValidationError(
            f"--eval_batch_size must be >= 1, got {_EVAL_BATCH_SIZE.value}"
        )
    info = common_flags.dataset_info_from_flags()
    eval_flags.check_split(_EVAL_SPLIT.value, "eval_split")
    return model_options, scales, info


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    try:
        speed_flags.apply_threads()
        speed_flags.apply_float32_math()
        model_options, scales, info = eval_setup()
    except flags.ValidationError as e:
        raise app.UsageError(str(e)) from e
    done = 0
    for checkpoint in eval_flags.checkpoints(_MAX_NUMBER_OF_EVALUATIONS.value):
        logging.info("Evaluating %s.", checkpoint)
        result = evaluator.evaluate_checkpoint(
            model_options,
            checkpoint,
            dataset_dir=common_flags.DATASET_DIR.value,
            split=_EVAL_SPLIT.value,
            batch_size=_EVAL_BATCH_SIZE.value,
            ignore_label=info.ignore_label,
            scales=scales,
            add_flipped_images=eval_flags.ADD_FLIPPED_IMAGES.value,
            class_names=info.class_names or None,
            progress=True,
            tfds_name=eval_flags.tfds_name(),
            jit_compile=speed_flags.JIT_COMPILE.value,
            mixed_precision=speed_flags.MIXED_PRECISION.value,
            fold_batch_norm=speed_flags.FOLD_BATCH_NORM.value,
        )
        logging.info(
            "Step %s, %d images:\n%s",
            result["step"],
            result["num_images"],
            evaluator.format_results(result),
        )
        evaluator.write_results(_EVAL_LOGDIR.value, result)
        done += 1
    if not done:
        logging.warning(
            "No checkpoint appeared in %s within --eval_timeout_secs=%s.",
            eval_flags.CHECKPOINT_DIR.value,
            eval_flags.EVAL_TIMEOUT_SECS.value,
        )


def run():
    flags.mark_flags_as_required(["checkpoint_dir", "eval_logdir"])
    app.run(program_errors.reported(main))


if __name__ == "__main__":
    run()

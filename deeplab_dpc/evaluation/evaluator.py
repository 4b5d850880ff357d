"""Evaluation of DeepLab checkpoints, as DeepLab's eval.py computes it.

A split is read once in order (`pipeline.make_dataset(is_training=False)`:
images padded to `eval_crop_size` with the mean pixel, labels with the
ignore label, so padding never counts), predicted with `inference.Predictor`
(`eval_scales`, `add_flipped_images`), and a confusion matrix is summed over
every pixel whose label is not the ignore label (`metrics`). The results are
the overall mIOU, pixel accuracy and the IoU of every class by name, written
as JSON and as TensorBoard scalars.
"""

import json
import os
import time

from absl import logging
import tensorflow as tf
import tqdm

from deeplab_dpc import file_io
from deeplab_dpc.data import pipeline
from deeplab_dpc.evaluation import inference
from deeplab_dpc.evaluation import metrics
from deeplab_dpc.training import speed

RESULTS_FILE = "eval_results.json"
_STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"


def checkpoint_step(checkpoint_path):
    """The training step stored in a checkpoint of the training program.

    Returns:
      int, or None when the checkpoint has no step (e.g. a hand-made one).
    """
    reader = tf.train.load_checkpoint(checkpoint_path)
    if reader.has_tensor(_STEP_KEY):
        return int(reader.get_tensor(_STEP_KEY))
    return None


def evaluate(
    predictor,
    dataset,
    *,
    num_classes,
    ignore_label,
    class_names=None,
    progress=False,
    total=None,
):
    """Streams a split through a predictor and returns its figures.

    Args:
      predictor: an `inference.Predictor` (its `predictions_function` runs
        the batches, XLA-compiled when the predictor's `jit_compile`).
      dataset: batches of `pipeline.EVAL_KEYS` dicts (images padded to the
        predictor's crop).
      num_classes, ignore_label: the label set.
      class_names: optional names of the classes, for the results.
      progress: bool, show a progress bar.
      total: optional number of batches, for the progress bar.

    Returns:
      dict of `metrics.StreamingMeanIoU.result` plus "num_images" and
      "confusion_matrix" (nested lists, rows true, columns predicted).

    Raises:
      pipeline.DataError: when no pixel had a label to count.
    """
    predict = predictor.predictions_function()
    metric = metrics.StreamingMeanIoU(
        num_classes=num_classes, ignore_label=ignore_label
    )
    num_images = 0
    for batch in tqdm.tqdm(
        dataset, total=total, disable=not progress, unit="batch", desc="eval"
    ):
        predictions = predict(batch[pipeline.IMAGE])
        metric.update(batch[pipeline.LABEL][..., 0], predictions)
        num_images += int(batch[pipeline.IMAGE].shape[0])
    if not metric.matrix.sum():
        raise pipeline.DataError(
            f"nothing to evaluate: {num_images} image(s) and no labelled pixel "
            "(an empty shard, or records without labels such as a test split; "
            "an mIOU of them would be meaningless)"
        )
    result = metric.result(class_names)
    result["num_images"] = num_images
    result["confusion_matrix"] = metric.matrix.tolist()
    return result


def evaluate_checkpoint(
    model_options,
    checkpoint_path,
    *,
    dataset_dir,
    split,
    batch_size,
    ignore_label,
    scales=(1.0,),
    add_flipped_images=False,
    class_names=None,
    progress=False,
    tfds_name=None,
    jit_compile=False,
    mixed_precision=speed.MIXED_PRECISION_NONE,
    fold_batch_norm=False,
    checkpoint_flag="--checkpoint_dir",
):
    """Evaluates one checkpoint of the training program on a split.

    Args:
      model_options: `deeplab.ModelOptions` whose crop is `eval_crop_size`.
      checkpoint_path: a checkpoint prefix, or a directory (its latest).
      dataset_dir, split: the TFRecord shards (`<split>-*`).
      batch_size: int, images per batch.
      ignore_label: int.
      scales, add_flipped_images: DeepLab's `eval_scales` and flips.
      class_names: optional class names for the results.
      progress: bool, show a progress bar.
      tfds_name: optional `tfds:` data set name (see `pipeline.make_dataset`).
      jit_compile: bool, XLA-compile inference.
      mixed_precision: "none", "bfloat16" or "float16" (see `speed`).
      fold_batch_norm: bool, fold batch norm into the convs for inference.
      checkpoint_flag: str or None, the flag error messages name for
        `checkpoint_path`.

    Raises:
      pipeline.DataError: one line naming the shard and record that cannot
        be read or has a label out of range, or the split when it has no
        labelled pixel.

    Returns:
      `evaluate`'s dict plus "checkpoint", "step", "eval_scales",
      "add_flipped_images", "split", "jit_compile", "mixed_precision",
      "fold_batch_norm" and "seconds".
    """
    checkpoint_path = inference.resolve_checkpoint(checkpoint_path, checkpoint_flag)
    start = time.time()
    model = inference.load_model(
        model_options,
        checkpoint_path,
        mixed_precision=mixed_precision,
        checkpoint_flag=checkpoint_flag,
    )
    predictor = inference.Predictor(
        model,
        model_options,
        scales,
        add_flipped_images,
        jit_compile=jit_compile,
        fold_batch_norm=fold_batch_norm,
    )
    dataset = pipeline.make_dataset(
        dataset_dir,
        split,
        crop_size=model_options.crop_size,
        batch_size=batch_size,
        is_training=False,
        ignore_label=ignore_label,
        tfds_name=tfds_name,
        num_classes=model_options.num_classes,
    )
    try:
        result = evaluate(
            predictor,
            dataset,
            num_classes=model_options.num_classes,
            ignore_label=ignore_label,
            class_names=class_names,
            progress=progress,
        )
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
        raise pipeline.read_error(e, dataset_dir, split) from None
    except pipeline.DataError as e:
        raise pipeline.DataError(f"split {split!r} of {dataset_dir}: {e}") from None
    result.update(
        checkpoint=checkpoint_path,
        step=checkpoint_step(checkpoint_path),
        split=split,
        eval_scales=list(predictor.scales),
        add_flipped_images=predictor.add_flipped_images,
        jit_compile=predictor.jit_compile,
        mixed_precision=mixed_precision,
        fold_batch_norm=predictor.fold_batch_norm,
        seconds=time.time() - start,
    )
    return result


def format_results(result):
    """A human-readable table of per-class IoU and the overall mIOU."""
    names = result.get("class_names") or [
        str(i) for i in range(len(result["per_class_iou"]))
    ]
    width = max(len("mIOU"), *(len(n) for n in names))
    lines = [f"{'class':<{width}}  IoU"]
    for name, iou in zip(names, result["per_class_iou"]):
        shown = "  n/a (absent)" if iou is None else f"{100 * iou:6.2f}"
        lines.append(f"{name:<{width}}  {shown}")
    lines.append(f"{'mIOU':<{width}}  {100 * result['miou']:6.2f}")
    return "\n".join(lines)


def write_results(eval_logdir, result):
    """Writes the results as JSON and TensorBoard scalars in `eval_logdir`.

    The JSON goes to `eval_results.json` (the latest evaluation) and to
    `eval_results-<step>.json`, each atomically (temporary name, then
    rename). The scalars are `miou`, `pixel_accuracy` and
    `class_iou/<name>` at the checkpoint's step.

    Returns:
      str, the path of the step's JSON file.
    """
    tf.io.gfile.makedirs(eval_logdir)
    step = result.get("step")
    paths = [os.path.join(eval_logdir, RESULTS_FILE)]
    if step is not None:
        paths.insert(0, os.path.join(eval_logdir, f"eval_results-{step}.json"))
    text = json.dumps(result, indent=1)
    for path in paths:
        file_io.write_text(path, text)
    writer = tf.summary.create_file_writer(eval_logdir)
    names = result.get("class_names") or [
        str(i) for i in range(len(result["per_class_iou"]))
    ]
    with writer.as_default(step=step or 0):
        tf.summary.scalar("miou", result["miou"])
        tf.summary.scalar("pixel_accuracy", result["pixel_accuracy"])
        for name, iou in zip(names, result["per_class_iou"]):
            if iou is not None:
                tf.summary.scalar(f"class_iou/{name}", iou)
    writer.flush()
    logging.info("Wrote %s.", paths[0])
    return paths[0]

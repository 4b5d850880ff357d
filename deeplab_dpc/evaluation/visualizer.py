"""Visualisation of predictions, as DeepLab's vis.py writes them.

For every image of a split: the image and its colorized prediction in
`segmentation_results/` (`<name>_image.png`, `<name>_prediction.png`), and
with `also_save_raw_predictions` the raw class map in
`raw_segmentation_results/<name>.png`. For Cityscapes the raw maps hold the
official labelIds (trainIds mapped back with `cityscapesscripts`' table) and
are named `<city>_<seq>_<frame>_gtFine_labelIds.png`, which the official
evaluator (`cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling`)
matches to its ground truth. Every PNG is written under a temporary name and
renamed, so a killed run leaves no half-written file; `COMPLETE_FILE`
(`vis_complete.json`, the number of images) is written when every image is,
and removed when a run starts, so a folder without it is partial.
"""

import os

import numpy as np
import tensorflow as tf
import tqdm

from deeplab_dpc import file_io
from deeplab_dpc.data import cityscapes
from deeplab_dpc.data import pipeline
from deeplab_dpc.data import registry

SEGMENTATION_DIR = "segmentation_results"
RAW_SEGMENTATION_DIR = "raw_segmentation_results"
COMPLETE_FILE = "vis_complete.json"
_CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"
_CITYSCAPES_PREDICTION_SUFFIX = "_gtFine_labelIds"


def output_names(filename, is_cityscapes):
    """(stem for images and predictions, raw prediction file name)."""
    stem = os.path.splitext(os.path.basename(filename))[0]
    if is_cityscapes:
        base = stem
        if base.endswith(_CITYSCAPES_IMAGE_SUFFIX):
            base = base[: -len(_CITYSCAPES_IMAGE_SUFFIX)]
        return stem, base + _CITYSCAPES_PREDICTION_SUFFIX + ".png"
    return stem, stem + ".png"


def write_png(path, array):
    """Writes a uint8 `[h, w]` or `[h, w, c]` array as PNG, atomically."""
    array = np.asarray(array, dtype=np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    file_io.write_bytes(path, tf.io.encode_png(array).numpy())


def existing_results(vis_logdir):
    """The result files already in `vis_logdir`'s output folders."""
    found = []
    for sub in (SEGMENTATION_DIR, RAW_SEGMENTATION_DIR):
        folder = os.path.join(vis_logdir, sub)
        if os.path.isdir(folder):
            found.extend(os.path.join(folder, f) for f in sorted(os.listdir(folder)))
    return found


def visualize(
    predictor,
    dataset,
    vis_logdir,
    *,
    colormap_type,
    also_save_raw_predictions=False,
    cityscapes_label_ids=False,
    progress=False,
    num_images=None,
):
    """Predicts every image of `dataset` and writes DeepLab's vis outputs.

    Args:
      predictor: an `inference.Predictor`.
      dataset: batches of `pipeline.EVAL_KEYS` dicts (padded to the crop).
      vis_logdir: str, the output folder.
      colormap_type: colormap name or palette of the colorized predictions
        (see `registry.colorize`).
      also_save_raw_predictions: bool, also write the raw class maps.
      cityscapes_label_ids: bool, raw maps hold Cityscapes labelIds and are
        named for the official evaluator.
      progress: bool, show a progress bar.
      num_images: int or None, the images `dataset` holds (the bar's total).

    Returns:
      int, the number of images written.
    """
    marker = os.path.join(vis_logdir, COMPLETE_FILE)
    if os.path.lexists(marker):
        os.remove(marker)  # Until this run has written every image.
    seg_dir = os.path.join(vis_logdir, SEGMENTATION_DIR)
    raw_dir = os.path.join(vis_logdir, RAW_SEGMENTATION_DIR)
    os.makedirs(seg_dir, exist_ok=True)
    if also_save_raw_predictions:
        os.makedirs(raw_dir, exist_ok=True)
    predict = tf.function(predictor.predictions)
    count = 0
    bar = tqdm.tqdm(total=num_images, disable=not progress, unit="image", desc="vis")
    for batch in dataset:
        predictions = predict(batch[pipeline.IMAGE]).numpy()
        images = batch[pipeline.IMAGE].numpy()
        for i in range(predictions.shape[0]):
            height = int(batch[pipeline.ORIGINAL_HEIGHT][i])
            width = int(batch[pipeline.ORIGINAL_WIDTH][i])
            filename = batch[pipeline.FILENAME][i].numpy().decode("utf-8")
            stem, raw_name = output_names(filename, cityscapes_label_ids)
            prediction = predictions[i, :height, :width]
            image = np.round(images[i, :height, :width]).clip(0, 255)
            write_png(os.path.join(seg_dir, f"{stem}_image.png"), image)
            write_png(
                os.path.join(seg_dir, f"{stem}_prediction.png"),
                registry.colorize(prediction, colormap_type),
            )
            if also_save_raw_predictions:
                raw = prediction
                if cityscapes_label_ids:
                    raw = cityscapes.train_ids_to_label_ids(prediction)
                write_png(os.path.join(raw_dir, raw_name), raw)
            count += 1
        bar.update(predictions.shape[0])
    bar.close()
    file_io.write_json(marker, {"num_images": count}, indent=1)
    return count

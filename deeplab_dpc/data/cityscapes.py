"""Cityscapes: labelId <-> trainId mapping and where a split's files are.

The label table comes from the official `cityscapesscripts` package
(`cityscapesscripts.helpers.labels`), never a copy of it. Training uses the
19 trainIds (every other labelId becomes the ignore label 255); the official
evaluator reads labelIds, so predictions are mapped back with
`train_ids_to_label_ids`.

Splits, as DeepLab names them (`<split>: leftImg8bit/<dir> + <labels>/<dir>`):

  train_fine:   leftImg8bit/train + gtFine/train
  val_fine:     leftImg8bit/val + gtFine/val
  test_fine:    leftImg8bit/test, written without labels (the test split's
                gtFine files, when present, are all void: the labels are
                withheld by the benchmark), so its records carry no label
  train_coarse: leftImg8bit/{train,train_extra} + gtCoarse/{train,train_extra}

Image `<city>_<seq>_<frame>_leftImg8bit.png` pairs with label
`<city>_<seq>_<frame>_<gtFine|gtCoarse>_labelIds.png` in the same city folder;
records are named `<city>_<seq>_<frame>` (DeepLab's `image/filename`).
"""

import glob
import os

import numpy as np
from cityscapesscripts.helpers import labels as _labels

from deeplab_dpc.data import converters
from deeplab_dpc.data import registry

NUM_CLASSES = 19
IGNORE_LABEL = 255
# labelId of void pixels ("unlabeled"), written for ignore-label predictions.
UNLABELED_ID = _labels.name2label["unlabeled"].id

# trainId -> labelId, for the 19 trainIds: (7, 8, 11, ..., 33).
TRAIN_ID_TO_LABEL_ID = tuple(
    _labels.trainId2label[train_id].id for train_id in range(NUM_CLASSES)
)
# labelIds of the table (0..33); the license plate's -1 is never in an image.
LABEL_IDS = tuple(sorted(label.id for label in _labels.labels if label.id >= 0))

IMAGE_SUFFIX = "_leftImg8bit.png"

# split -> ((image/label sub-folder, label folder or None), ...)
SPLITS = {
    "train_fine": (("train", "gtFine"),),
    "val_fine": (("val", "gtFine"),),
    "test_fine": (("test", None),),
    "train_coarse": (("train", "gtCoarse"), ("train_extra", "gtCoarse")),
}


def _label_id_to_train_id_lookup():
    lookup = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for label in _labels.labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < NUM_CLASSES:
            lookup[label.id] = label.trainId
    return lookup


def _train_id_to_label_id_lookup():
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[:NUM_CLASSES] = TRAIN_ID_TO_LABEL_ID
    lookup[IGNORE_LABEL] = UNLABELED_ID
    return lookup


_TO_TRAIN_ID = _label_id_to_train_id_lookup()
_TO_LABEL_ID = _train_id_to_label_id_lookup()
_IS_LABEL_ID = np.isin(np.arange(256), LABEL_IDS)
_IS_TRAIN_ID = np.isin(np.arange(256), list(range(NUM_CLASSES)) + [IGNORE_LABEL])


def _lookup(array, lookup, valid, what):
    array = np.asarray(array)
    if array.dtype.kind not in "iub":
        raise ValueError(f"{what} must be integers, got dtype {array.dtype}")
    in_range = (array >= 0) & (array < 256)
    bad = ~in_range | ~valid[np.where(in_range, array, 0)]
    if bad.any():
        values = np.unique(array[bad])
        raise ValueError(
            f"values {values[:10].tolist()} are not Cityscapes {what}"
            + (f" ({values.size} distinct)" if values.size > 10 else "")
        )
    return lookup[array.astype(np.int64)]


def label_ids_to_train_ids(label_ids):
    """Maps Cityscapes labelIds to the 19 trainIds; other labelIds -> 255.

    Args:
      label_ids: integer array of any shape (e.g. a `*_gtFine_labelIds.png`).

    Returns:
      uint8 array of the same shape, values in [0, 19) or 255.

    Raises:
      ValueError: naming the values that are not labelIds of the table (0..33),
        e.g. when given a colour or instanceIds image by mistake.
    """
    return _lookup(label_ids, _TO_TRAIN_ID, _IS_LABEL_ID, "labelIds")


def train_ids_to_label_ids(train_ids):
    """Maps trainIds back to labelIds, for the official evaluator.

    Args:
      train_ids: integer array of any shape, values in [0, 19) or 255.

    Returns:
      uint8 array of the same shape; 255 (ignore) becomes 0 ("unlabeled").

    Raises:
      ValueError: naming the values that are neither trainIds nor 255.
    """
    return _lookup(train_ids, _TO_LABEL_ID, _IS_TRAIN_ID, "trainIds")


def list_split(cityscapes_root, split):
    """The (image, label, name) triples of a split, sorted by city and name.

    Args:
      cityscapes_root: str, the folder holding `leftImg8bit/` and `gtFine/`.
      split: one of `SPLITS`.

    Returns:
      list of (image_path, label_path or None, name). A label path is where
      the label must be; the converter reports it when it is missing.

    Raises:
      ValueError: unknown split.
      FileNotFoundError: no images for the split, naming the pattern.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown Cityscapes split {split!r}; known: {list(SPLITS)}")
    examples = []
    for folder, label_folder in SPLITS[split]:
        pattern = os.path.join(
            cityscapes_root, "leftImg8bit", folder, "*", "*" + IMAGE_SUFFIX
        )
        images = sorted(glob.glob(pattern))
        if not images:
            raise FileNotFoundError(
                f"Cityscapes split {split!r}: no images match {pattern!r}; "
                f"--cityscapes_root must hold leftImg8bit/{folder}/<city>/"
            )
        for image in images:
            name = os.path.basename(image)[: -len(IMAGE_SUFFIX)]
            label = None
            if label_folder:
                city = os.path.basename(os.path.dirname(image))
                label = os.path.join(
                    cityscapes_root,
                    label_folder,
                    folder,
                    city,
                    f"{name}_{label_folder}_labelIds.png",
                )
            examples.append((image, label, name))
    return examples


def convert_cityscapes(cityscapes_root, output_dir, splits, options):
    """Converts Cityscapes splits, labelIds mapped to trainIds.

    Args:
      cityscapes_root: str, see `list_split`.
      output_dir: str, where the shards go.
      splits: names from `SPLITS`; test_fine is written without labels.
      options: `converters.WriteOptions`.

    Returns:
      dict, split -> `shard_writer.WriteResult` (see `converters.convert_splits`).
    """
    info = registry.get("cityscapes")
    return converters.convert_splits(
        {split: list_split(cityscapes_root, split) for split in splits},
        output_dir,
        num_classes=info.num_classes,
        ignore_label=info.ignore_label,
        label_map=label_ids_to_train_ids,
        options=options,
    )

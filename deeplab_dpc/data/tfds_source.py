"""TensorFlow Datasets as a source, in the format of `tfexample.decode_example`.

Programs name a TFDS data set `--dataset=tfds:<name>[/<config>][:<version>]`;
`parse_dataset_name` checks such a name and `load` reads one split of it as
elements exactly like DeepLab TFRecords decode to: `tfexample.IMAGE` (uint8
`[h, w, 3]`), `tfexample.LABEL` (uint8 `[h, w, 1]`, in the DeepLab label
convention of the data set), `tfexample.FILENAME` (string), `tfexample.HEIGHT`
and `tfexample.WIDTH` (int32). Images are decoded by the same op as
`decode_example` (TFDS's own decoding is skipped).

Supported builders (TFDS 4.9):

* `cityscapes/semantic_segmentation` (the default config of `cityscapes`):
  `image_left` and `segmentation_label` (gtFine labelIds). Labels are mapped
  to the 19 trainIds with `cityscapes.label_ids_to_train_ids`'s table; every
  other labelId, and any value that is no labelId, becomes 255 (ignore).
  `FILENAME` is TFDS's `image_id` (`<city>_<seq>_<frame>`, DeepLab's name).
  Splits: train (2975), validation (500), test (1525; its gtFine labels are
  all void, so the labels are all 255). DeepLab's names train_fine, val_fine
  and test_fine are accepted for them.
* `cityscapes/semantic_segmentation_extra`: the same with gtCoarse labels and
  splits train, validation, train_extra.
* `scene_parse150` (ADE20K images). TFDS builds this data set from the
  scene-parsing challenge's `annotations_instance.tar`, NOT from the semantic
  `annotations/` of ADEChallengeData2016: its `annotation` is an RGB PNG whose
  red channel is a category of the 2017 instance-segmentation task (1..100,
  100 "thing" classes; 0 for every other pixel, stuff such as wall, floor,
  sky included) and whose green channel is an instance id. The red channel is
  mapped to DeepLab's ADE20K convention (151 logits, 0 = ignore, classes
  1..150 of `objectInfo150`) by `INSTANCE100_TO_ADE150`; 0 and any value above
  100 become 0. So labels are DeepLab-compatible, but the 50 stuff classes
  never occur: they are ignored, not learned. For the full 150-class labels
  convert ADEChallengeData2016 with `datasets/build_ade20k_data.py`.
  `FILENAME` is TFDS's `tfds_id` (the builder stores no file name). Splits:
  train (20210) and test (2000, which is ADE20K's validation set); DeepLab's
  val is accepted for test.

`load` only reads prepared data: with `manual_dir` (Cityscapes' zip files)
or `download=True` it first runs TFDS's `download_and_prepare`.
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from deeplab_dpc.data import cityscapes
from deeplab_dpc.data import registry
from deeplab_dpc.data import tfexample

PREFIX = "tfds:"

# 2017 instance-segmentation category (index i - 1 for category i, 1..100,
# `instanceInfo100_train.txt` of CSAILVision/placeschallenge) -> class of the
# 150-class scene parsing benchmark (`objectInfo150.txt` of
# CSAILVision/sceneparsing), matched by name ("television receiver" is the
# second name of class 90, every other name is the first name of its class).
INSTANCE100_TO_ADE150 = (
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23,
    24, 25, 28, 31, 32, 33, 34, 36, 37, 38,
    39, 40, 42, 43, 44, 45, 46, 48, 50, 51,
    54, 56, 57, 58, 59, 63, 65, 66, 67, 68,
    70, 71, 72, 73, 74, 75, 76, 77, 79, 81,
    82, 83, 84, 86, 87, 88, 89, 90, 91, 93,
    94, 96, 98, 99, 103, 104, 105, 108, 109, 111,
    112, 113, 116, 117, 119, 120, 121, 122, 124, 125,
    126, 127, 128, 130, 131, 133, 134, 135, 136, 137,
    138, 139, 140, 143, 144, 145, 147, 148, 149, 150,
)  # fmt: skip


def cityscapes_lookup():
    """uint8 `[256]`: labelId -> trainId, 255 for the rest."""
    lookup = np.full(256, cityscapes.IGNORE_LABEL, np.uint8)
    ids = np.asarray(cityscapes.LABEL_IDS)
    lookup[ids] = cityscapes.label_ids_to_train_ids(ids)
    return lookup


def ade20k_lookup():
    """uint8 `[256]`: instance category (red channel) -> ADE20K class, 0 else."""
    lookup = np.zeros(256, np.uint8)
    lookup[1 : len(INSTANCE100_TO_ADE150) + 1] = INSTANCE100_TO_ADE150
    return lookup


@dataclasses.dataclass(frozen=True)
class Source:
    """How one TFDS builder maps to DeepLab's format.

    Attributes:
      name: str, the TFDS name with config, no version.
      registry_name: str, the `registry` data set whose labels it yields.
      image_key, label_key: str, the TFDS features.
      filename_key: str, the feature stored as `FILENAME` ("tfds_id": the id
        TFDS adds).
      lookup: callable returning the uint8 `[256]` label lookup table, applied
        to channel 0 of the label.
      splits: tuple of (TFDS split, number of examples).
      split_aliases: tuple of (DeepLab split name, TFDS split name).
    """

    name: str
    registry_name: str
    image_key: str
    label_key: str
    filename_key: str
    lookup: object
    splits: tuple
    split_aliases: tuple = ()


_CITYSCAPES_ALIASES = (
    ("train_fine", "train"),
    ("val_fine", "validation"),
    ("test_fine", "test"),
)
SOURCES = {
    source.name: source
    for source in (
        Source(
            name="cityscapes/semantic_segmentation",
            registry_name="cityscapes",
            image_key="image_left",
            label_key="segmentation_label",
            filename_key="image_id",
            lookup=cityscapes_lookup,
            splits=(("train", 2975), ("validation", 500), ("test", 1525)),
            split_aliases=_CITYSCAPES_ALIASES,
        ),
        Source(
            name="cityscapes/semantic_segmentation_extra",
            registry_name="cityscapes",
            image_key="image_left",
            label_key="segmentation_label",
            filename_key="image_id",
            lookup=cityscapes_lookup,
            splits=(("train", 2975), ("validation", 500), ("train_extra", 19998)),
            split_aliases=_CITYSCAPES_ALIASES[:2],
        ),
        Source(
            name="scene_parse150",
            registry_name="ade20k",
            image_key="image",
            label_key="annotation",
            filename_key="tfds_id",
            lookup=ade20k_lookup,
            splits=(("train", 20210), ("test", 2000)),
            split_aliases=(("val", "test"),),
        ),
    )
}
# Names without a config, for builders whose default config is the one above.
_DEFAULT_CONFIGS = {"cityscapes": "cityscapes/semantic_segmentation"}


def is_tfds_name(name):
    """Whether a `--dataset` value names a TFDS data set (`tfds:...`)."""
    return name.startswith(PREFIX)


def _split_version(tfds_name):
    base, _, version = tfds_name.partition(":")
    return base, version


def parse_dataset_name(name):
    """The TFDS name in `tfds:<name>[/<config>][:<version>]`.

    Args:
      name: str, a `--dataset` value.

    Returns:
      str, the TFDS name to load, with its config made explicit
      (`tfds:cityscapes` -> `cityscapes/semantic_segmentation`) and the version
      kept when given (`scene_parse150:1.0.0`).

    Raises:
      ValueError: without the `tfds:` prefix, or for an unsupported builder,
        naming the supported ones.
    """
    if not is_tfds_name(name):
        raise ValueError(
            f"{name!r} is not a TFDS data set name; write tfds:<name>, e.g. "
            f"tfds:{next(iter(SOURCES))}"
        )
    base, version = _split_version(name[len(PREFIX) :])
    base = _DEFAULT_CONFIGS.get(base, base)
    if base not in SOURCES:
        raise ValueError(
            f"unsupported TFDS data set {name!r}; supported: "
            f"{', '.join(PREFIX + s for s in SOURCES)}"
        )
    return f"{base}:{version}" if version else base


def source(name):
    """The `Source` of a name, with or without `tfds:` and version."""
    tfds_name = parse_dataset_name(name if is_tfds_name(name) else PREFIX + name)
    return SOURCES[_split_version(tfds_name)[0]]


def tfds_split(name, split):
    """A split name as TFDS knows it: DeepLab aliases translated, others kept
    (TFDS slicing such as `train[:10]` works)."""
    return dict(source(name).split_aliases).get(split, split)


def dataset_info(name):
    """The `registry.DatasetInfo` of a TFDS data set.

    Classes, ignore label, names and colormap are those of the registry's
    data set; splits are TFDS's. `name` is the `tfds:` name.
    """
    src = source(name)
    info = registry.get(src.registry_name)
    return dataclasses.replace(
        info, name=PREFIX + parse_dataset_name(PREFIX + src.name), splits=src.splits
    )


def _converter(src):
    lookup = tf.constant(src.lookup(), tf.uint8)

    def convert(example):
        image = tf.io.decode_image(
            example[src.image_key], channels=3, expand_animations=False
        )
        raw = tf.io.decode_png(example[src.label_key])[..., :1]
        label = tf.gather(lookup, tf.cast(raw, tf.int32))
        image.set_shape([None, None, 3])
        label.set_shape([None, None, 1])
        shape = tf.shape(image)
        return {
            tfexample.IMAGE: image,
            tfexample.LABEL: label,
            tfexample.FILENAME: example[src.filename_key],
            tfexample.HEIGHT: shape[0],
            tfexample.WIDTH: shape[1],
        }

    return convert


def load(name, split, data_dir, manual_dir=None, download=False):
    """One split of a TFDS data set as `tfexample.decode_example` elements.

    Args:
      name: str, `tfds:<name>[/<config>][:<version>]` (or without `tfds:`).
      split: str, a TFDS split (slicing allowed) or a DeepLab alias of one
        (`train_fine`, `val_fine`, `test_fine`; ADE20K `val`).
      data_dir: str or None, TFDS's data directory (None: TFDS's default).
      manual_dir: str or None, where manually downloaded files are (the
        Cityscapes zips); when given, the data set is prepared first.
      download: bool, prepare the data set first (downloads what TFDS can).

    Returns:
      A `tf.data.Dataset` of dicts in file order (no shuffling).

    Raises:
      ValueError: unsupported name (see `parse_dataset_name`) or unknown split.
      FileNotFoundError: the data set is not prepared in `data_dir`.
    """
    src = source(name)
    tfds_name = parse_dataset_name(name if is_tfds_name(name) else PREFIX + name)
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if manual_dir is not None or download:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    decoders = {src.image_key: tfds.decode.SkipDecoding()}
    decoders[src.label_key] = tfds.decode.SkipDecoding()
    try:
        dataset = builder.as_dataset(
            split=tfds_split(name, split),
            shuffle_files=False,
            decoders=decoders,
            read_config=tfds.ReadConfig(add_tfds_id=True),
        )
    except AssertionError as e:  # TFDS's error for data that is not prepared
        raise FileNotFoundError(
            f"TFDS data set {tfds_name!r} is not prepared in "
            f"{builder.data_dir!r} ({e}); prepare it with `tfds build "
            f"{tfds_name} --data_dir=...` (Cityscapes: with --manual_dir "
            f"holding its zip files) or pass manual_dir / download=True"
        ) from e
    return dataset.map(
        _converter(src), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )

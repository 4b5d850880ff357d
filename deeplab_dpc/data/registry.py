"""Data sets by name, as DeepLab's `data_generator.py` registers them.

Programs take `--dataset=cityscapes` (or `pascal_voc_seg`, `ade20k`,
`synthetic`); a data set of one's own is `--dataset=custom` with
`--num_classes` and `--ignore_label`.

ADE20K's class names and colours are not built in: they come from the data
set's own files (`objectInfo150.txt` of the archive, `color150.mat` of the
devkit), which `datasets/build_ade20k_data.py` turns into `class_names.txt`
and `colormap.txt` beside the shards; any data set may have those two files
(see `metadata`), and programs apply them to the registry's `DatasetInfo`
with `metadata.with_metadata`.
"""

import dataclasses

from absl import logging
import numpy as np

COLORMAPS = ("pascal", "cityscapes", "ade20k")
MAX_COLORS = 256  # labels are uint8
ADE20K_PALETTE_HINT = (
    "ADE20K's colours are not built in: pass --colormap_file=color150.mat (the "
    "scene-parsing devkit's palette) to vis, or to datasets/build_ade20k_data.py "
    "to write colormap.txt beside the shards. Using the PASCAL colormap instead."
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """What a program needs to know of a data set.

    Attributes:
      name: str, the registry key.
      num_classes: int, logits channels (ADE20K: 151, class 0 = ignore).
      ignore_label: int, the label value excluded from loss and metrics.
      splits: tuple of (split, number of examples) pairs.
      class_names: tuple of `num_classes` names, or () when unknown.
      colormap: one of `COLORMAPS`, for visualisation.
      palette: None, or the data set's own colours, class i's in row i:
        `[colors, 3]` integers in 0..255 with num_classes <= colors <= 256
        (e.g. an array), kept as a tuple of (r, g, b) tuples. It takes the
        place of `colormap` (see `label_colors`).
    """

    name: str
    num_classes: int
    ignore_label: int
    splits: tuple = ()
    class_names: tuple = ()
    colormap: str = "pascal"
    palette: tuple = None

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be >= 1")
        if self.colormap not in COLORMAPS:
            raise ValueError(f"{self.name}: colormap must be one of {COLORMAPS}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for "
                f"{self.num_classes} classes"
            )
        if self.palette is not None:
            rows = palette_rows(self.palette)
            if len(rows) < self.num_classes:
                raise ValueError(
                    f"{self.name}: {len(rows)} palette colours for "
                    f"{self.num_classes} classes"
                )
            object.__setattr__(self, "palette", rows)

    def label_colors(self, colormap_type=None):
        """What to colour this data set's labels with (`registry.colorize`).

        Args:
          colormap_type: None for the data set's own colours, or a name of
            `COLORMAPS` to use instead; "ade20k" means the palette.

        Returns:
          `palette` when there is one and `colormap_type` is None or
          "ade20k"; else the name of a colormap: `colormap_type` or
          `colormap`, except that "ade20k" without a palette gives "pascal"
          after a warning saying how to get ADE20K's colours.
        """
        if self.palette is not None and colormap_type in (None, "ade20k"):
            return self.palette
        name = colormap_type or self.colormap
        if name == "ade20k":
            logging.warning(ADE20K_PALETTE_HINT)
            return "pascal"
        return name

    def split_size(self, split):
        """Examples in a split; ValueError naming the known splits."""
        sizes = dict(self.splits)
        if split not in sizes:
            raise ValueError(
                f"data set {self.name!r} has no split {split!r}; known: "
                f"{sorted(sizes)}"
            )
        return sizes[split]


def _cityscapes_names():
    from cityscapesscripts.helpers import labels  # pylint: disable=g-import-not-at-top

    return tuple(labels.trainId2label[i].name for i in range(19))


SYNTHETIC_CLASSES = (
    "background",
    "stripes_a",
    "stripes_b",
    "stripes_c",
    "checker_a",
    "checker_b",
    "checker_c",
)
PASCAL_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

_REGISTRY = {
    "cityscapes": lambda: DatasetInfo(
        name="cityscapes",
        num_classes=19,
        ignore_label=255,
        splits=(
            ("train_fine", 2975),
            ("val_fine", 500),
            ("test_fine", 1525),
            ("train_coarse", 22973),
        ),
        class_names=_cityscapes_names(),
        colormap="cityscapes",
    ),
    "pascal_voc_seg": lambda: DatasetInfo(
        name="pascal_voc_seg",
        num_classes=21,
        ignore_label=255,
        splits=(
            ("train", 1464),
            ("train_aug", 10582),
            ("trainval", 2913),
            ("val", 1449),
        ),
        class_names=PASCAL_CLASSES,
        colormap="pascal",
    ),
    # The built-in data set, generated by `data/synthetic.py` (whose
    # docstring says what each class is); split sizes are its defaults.
    "synthetic": lambda: DatasetInfo(
        name="synthetic",
        num_classes=len(SYNTHETIC_CLASSES),
        ignore_label=255,
        splits=(("train", 200), ("val", 50)),
        class_names=SYNTHETIC_CLASSES,
        colormap="pascal",
    ),
    "ade20k": lambda: DatasetInfo(
        name="ade20k",
        num_classes=151,
        ignore_label=0,
        splits=(("train", 20210), ("val", 2000)),
        colormap="ade20k",
    ),
}


def register(name, factory):
    """Adds a data set: `factory()` returns its `DatasetInfo`."""
    if name in _REGISTRY:
        raise ValueError(f"data set {name!r} is registered already")
    _REGISTRY[name] = factory


def names():
    """Registered data set names, plus "custom"."""
    return sorted(_REGISTRY) + ["custom"]


def get(name, num_classes=None, ignore_label=None):
    """The `DatasetInfo` of a registered data set, or of a custom one.

    Args:
      name: a registered name, or "custom".
      num_classes, ignore_label: required for "custom"; for a registered data
        set, they must be unset or agree with the registry.

    Raises:
      ValueError: naming the flag that is missing or disagrees.
    """
    if name == "custom":
        if num_classes is None or ignore_label is None:
            raise ValueError("--dataset=custom needs --num_classes and --ignore_label")
        return DatasetInfo(
            name="custom", num_classes=num_classes, ignore_label=ignore_label
        )
    if name not in _REGISTRY:
        raise ValueError(f"unknown --dataset={name!r}; choose one of {names()}")
    info = _REGISTRY[name]()
    for flag, value, known in (
        ("num_classes", num_classes, info.num_classes),
        ("ignore_label", ignore_label, info.ignore_label),
    ):
        if value is not None and value != known:
            raise ValueError(
                f"--{flag}={value} disagrees with --dataset={name} ({known}); "
                f"use --dataset=custom for a different label set"
            )
    return info


def pascal_colormap(num_colors=256):
    """DeepLab's PASCAL colormap: label bits spread over the RGB channels."""
    colormap = np.zeros((num_colors, 3), dtype=np.int64)
    indices = np.arange(num_colors, dtype=np.int64)
    for shift in reversed(range(8)):
        for channel in range(3):
            colormap[:, channel] |= ((indices >> channel) & 1) << shift
        indices >>= 3
    return colormap.astype(np.uint8)


def cityscapes_colormap():
    """Colors of the 19 trainIds (256 rows; the rest black), from
    `cityscapesscripts`' label table."""
    from cityscapesscripts.helpers import labels  # pylint: disable=g-import-not-at-top

    colormap = np.zeros((256, 3), dtype=np.uint8)
    for train_id in range(19):
        colormap[train_id] = labels.trainId2label[train_id].color
    return colormap


def palette_rows(palette):
    """A palette's colours as a tuple of (r, g, b) int tuples.

    Args:
      palette: `[colors, 3]` integers in 0..255, 1 <= colors <= 256.

    Raises:
      ValueError: for another shape or a value outside 0..255.
    """
    rows = np.asarray(palette)
    if rows.ndim != 2 or rows.shape[1] != 3 or not 1 <= len(rows) <= MAX_COLORS:
        raise ValueError(
            f"a palette is [colors, 3] with 1 <= colors <= {MAX_COLORS}, got "
            f"shape {list(rows.shape)}"
        )
    if not np.issubdtype(rows.dtype, np.integer) or rows.min() < 0 or rows.max() > 255:
        raise ValueError("a palette holds integers in 0..255")
    return tuple(tuple(row) for row in rows.tolist())


def colormap(name_or_palette):
    """A `[256, 3]` uint8 colormap, named or of a palette.

    Args:
      name_or_palette: one of `COLORMAPS`, or palette rows (see
        `palette_rows`), padded with black to 256 colours. "ade20k" has no
        built-in colours (they come from the data set's files): it gives the
        PASCAL colormap, with a warning once per process.

    Raises:
      ValueError: for an unknown name or a bad palette.
    """
    if not isinstance(name_or_palette, str):
        rows = palette_rows(name_or_palette)
        colors = np.zeros((MAX_COLORS, 3), np.uint8)
        colors[: len(rows)] = rows
        return colors
    if name_or_palette == "cityscapes":
        return cityscapes_colormap()
    if name_or_palette == "ade20k":
        logging.log_first_n(logging.WARNING, ADE20K_PALETTE_HINT, 1)
        return pascal_colormap()
    if name_or_palette == "pascal":
        return pascal_colormap()
    raise ValueError(f"unknown colormap {name_or_palette!r}; choose one of {COLORMAPS}")


def colorize(labels, colors_or_name):
    """Colors a label map with a colormap or palette (NumPy or TensorFlow).

    Args:
      labels: integer array or tensor `[..., height, width]`, values in
        [0, 256).
      colors_or_name: "pascal", "cityscapes" or "ade20k", or palette rows
        `[colors, 3]` (class i's colour in row i; classes past them are
        black), e.g. `DatasetInfo.label_colors()`; see `colormap`.

    Returns:
      uint8 `[..., height, width, 3]`, a NumPy array for a NumPy input and a
      tensor for a tensor.
    """
    colors = colormap(colors_or_name)
    if type(labels).__module__.startswith("tensorflow"):
        # Imported here: the registry itself needs no TensorFlow.
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        indices = tf.clip_by_value(tf.cast(labels, tf.int32), 0, 255)
        return tf.gather(tf.constant(colors), indices)
    return colors[np.clip(np.asarray(labels, dtype=np.int64), 0, 255)]

"""Converts segmentation data sets to DeepLab's TFRecords.

A split is a list of `(image_path, label_path or None, name)` triples.
`convert_splits` validates and encodes each example in the worker processes of
`shard_writer.write_split`: the image file's bytes as they are (`image/format`
by content), the label as a single-channel PNG of its (mapped) class ids, the
name as `image/filename` (DeepLab's VOC convention: base name, no extension);
examples without a label path carry no label. Bad input raises
`BadExampleError` naming the file (or is counted with `skip_bad_examples`);
listing errors raise `FileNotFoundError` or `ValueError` naming the file.
`convert_ade20k` and `convert_folders` also write the data set's class names
and colours beside the shards (`class_names.txt`, `colormap.txt`, see
`metadata`) once the shards are written; like shards, existing files are
only replaced with `overwrite`.
"""

import dataclasses
import glob
import io
import os

from absl import logging
import numpy as np
from PIL import Image

from deeplab_dpc.data import ade20k
from deeplab_dpc.data import metadata
from deeplab_dpc.data import registry
from deeplab_dpc.data import shard_writer
from deeplab_dpc.data import tfexample

BadExampleError = shard_writer.BadExampleError

# PIL format -> `image/format`, and the image modes each may have.
IMAGE_FORMATS = {"JPEG": "jpeg", "PNG": "png"}
IMAGE_MODES = {"JPEG": ("RGB", "L"), "PNG": ("RGB", "RGBA", "L", "LA", "P")}
# Single-channel label modes; "P" yields the palette indices (the colormap is
# dropped), "I;16"/"I" are range-checked like the rest.
LABEL_MODES = ("1", "L", "P", "I;16", "I")
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

VOC_SPLITS = ("train", "val", "trainval")
VOC_AUG_SPLIT = "train_aug"
ADE20K_SPLITS = {"train": "training", "val": "validation"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class WriteOptions:
    """How to write shards (see `shard_writer.write_split`)."""

    num_shards: int = 4
    num_workers: int = 2
    overwrite: bool = False
    skip_bad_examples: bool = False


@dataclasses.dataclass(frozen=True)
class ExampleMaker:
    """Picklable `i -> serialized tf.Example` over a split's examples.

    Attributes:
      examples: tuple of (image_path, label_path or None, name).
      num_classes: int, labels must lie in `[0, num_classes)` ...
      ignore_label: int, ... or equal this.
      label_map: None, or a picklable (module-level) function mapping the
        label file's integer array to class ids; raises ValueError on values
        it does not know.
    """

    examples: tuple
    num_classes: int
    ignore_label: int
    label_map: object = None

    def __call__(self, i):
        image_path, label_path, name = self.examples[i]
        data, image_format, (width, height) = _read_image(image_path)
        label_data = None
        if label_path is not None:
            label = self._read_label(label_path, image_path, width, height)
            label_data = tfexample.encode_png(label)
        # Deterministic: the features map's order otherwise varies between
        # processes, and shards would differ with the number of workers.
        return tfexample.encode_example(
            data, name, height, width, label_data, image_format
        ).SerializeToString(deterministic=True)

    def _read_label(self, label_path, image_path, width, height):
        if not os.path.isfile(label_path):
            raise BadExampleError(
                f"no label for image {image_path}: {label_path} does not exist"
            )
        try:
            with Image.open(label_path) as image:
                image.load()
                mode, size = image.mode, image.size
                label = np.array(image)
        except _PIL_ERRORS as e:
            raise BadExampleError(
                f"cannot decode label {label_path} (unreadable or truncated): {e}"
            ) from e
        if mode not in LABEL_MODES:
            raise BadExampleError(
                f"label {label_path} has mode {mode!r}; want a single-channel "
                f"PNG of class indices (mode 'L', or 'P' whose palette indices "
                f"are the labels)"
            )
        if size != (width, height):
            raise BadExampleError(
                f"label {label_path} is {size[0]}x{size[1]} (width x height) but "
                f"image {image_path} is {width}x{height}"
            )
        if self.label_map is not None:
            try:
                label = self.label_map(label)
            except ValueError as e:
                raise BadExampleError(f"label {label_path}: {e}") from e
        label = np.asarray(label, np.int64)
        bad = (label < 0) | ((label >= self.num_classes) & (label != self.ignore_label))
        if bad.any():
            values = np.unique(label[bad])
            raise BadExampleError(
                f"label {label_path} has values {values[:20].tolist()} outside "
                f"[0, {self.num_classes}) that are not the ignore label "
                f"{self.ignore_label}"
            )
        return label.astype(np.uint8)


def _read_image(path):
    """(file bytes, "jpeg" | "png", (width, height)) of a fully decoded image."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise BadExampleError(f"image {path} does not exist") from e
    except OSError as e:
        raise BadExampleError(f"cannot read image {path}: {e}") from e
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            pil_format, mode, size = image.format, image.mode, image.size
    except _PIL_ERRORS as e:
        raise BadExampleError(
            f"cannot decode image {path} (unreadable or truncated): {e}"
        ) from e
    if pil_format not in IMAGE_FORMATS:
        raise BadExampleError(
            f"image {path} is {pil_format}; only JPEG and PNG images are supported"
        )
    if mode not in IMAGE_MODES[pil_format]:
        raise BadExampleError(
            f"image {path} has mode {mode!r}; want one of "
            f"{IMAGE_MODES[pil_format]} for {pil_format}"
        )
    return data, IMAGE_FORMATS[pil_format], size


def convert_splits(
    split_examples, output_dir, *, num_classes, ignore_label, options, label_map=None
):
    """Writes each split's examples as DeepLab shards and prints a report.

    Every split is listed and checked for existing shards before any is
    written; each split is written atomically by `shard_writer`.

    Args:
      split_examples: dict, split name -> list of (image_path, label_path or
        None, name), in the order to write them.
      output_dir: str, where the shards go.
      num_classes, ignore_label: ints, the valid label values.
      options: `WriteOptions`.
      label_map: see `ExampleMaker`.

    Returns:
      dict, split -> `shard_writer.WriteResult`.

    Raises:
      ValueError: no splits, an empty split, or labels that do not fit a
        uint8 PNG.
      FileExistsError: shards of a split exist and not `options.overwrite`.
      BadExampleError: a bad example (unless skipped), or every example of a
        split was bad.
    """
    if not split_examples:
        raise ValueError("no splits to convert")
    if not 1 <= num_classes <= 256 or not 0 <= ignore_label <= 255:
        raise ValueError(
            f"num_classes={num_classes}, ignore_label={ignore_label}: labels are "
            f"stored as uint8 PNGs, so need num_classes <= 256 and ignore_label "
            f"in [0, 255]"
        )
    for split, examples in split_examples.items():
        if not examples:
            raise ValueError(f"split {split!r} has no examples")
    if not options.overwrite:
        shard_writer.check_no_shards(output_dir, split_examples)
    results = {}
    with shard_writer.worker_pool(options.num_workers) as pool:
        for split, examples in split_examples.items():
            maker = ExampleMaker(tuple(examples), num_classes, ignore_label, label_map)
            result = shard_writer.write_split(
                maker,
                len(examples),
                output_dir,
                split,
                num_shards=options.num_shards,
                overwrite=options.overwrite,
                num_workers=options.num_workers,
                pool=pool,
                skip_bad_examples=options.skip_bad_examples,
                description=split,
            )
            print(
                f"{split}: wrote {result.num_written} examples to "
                f"{len(result.shards)} shard(s) in {output_dir}"
            )
            if result.skipped:
                print(f"{split}: {len(result.skipped)} examples skipped")
                for reason in result.skipped:
                    print(f"  skipped: {reason}")
            results[split] = result
    return results


def read_list(path):
    """The example names of a list file, one a line, in file order.

    A line is a name (`2007_000032`) or, as some `train_aug.txt` files have
    it, an image and a label path (`/JPEGImages/2007_000032.jpg
    /SegmentationClassAug/2007_000032.png`), whose image base name is used.

    Raises:
      FileNotFoundError: the list file does not exist.
      ValueError: it is empty, a line has more than two fields, or a name is
        listed twice, naming the file and line.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"list file {path} does not exist") from e
    names, first_line = [], {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if len(fields) > 2:
            raise ValueError(
                f"{path}:{number}: want one image name per line, got {line!r}"
            )
        if len(fields) == 2:
            fields = [os.path.splitext(os.path.basename(fields[0]))[0]]
        for name in fields:
            if name in first_line:
                raise ValueError(
                    f"{path}:{number}: {name!r} is listed again (first on line "
                    f"{first_line[name]}); it would be written twice"
                )
            first_line[name] = number
        names.extend(fields)
    if not names:
        raise ValueError(f"list file {path} is empty")
    return names


def list_folders(image_folder, label_folder, list_path, image_format, label_format):
    """The examples named in a list file: `<folder>/<name>.<format>`.

    Args:
      image_folder: str.
      label_folder: str, or "" / None for a split without labels.
      list_path: str, the list file.
      image_format, label_format: str, file extensions ("jpg", "png").

    Returns:
      list of (image_path, label_path or None, name), in list order.
    """
    examples = []
    for name in read_list(list_path):
        label = f"{name}.{label_format}"
        examples.append(
            (
                os.path.join(image_folder, f"{name}.{image_format}"),
                os.path.join(label_folder, label) if label_folder else None,
                name,
            )
        )
    return examples


def _voc_list(voc_root, split):
    return os.path.join(voc_root, "ImageSets", "Segmentation", f"{split}.txt")


def voc2012_splits(voc_root):
    """VOC's splits: train, val, trainval, and train_aug when it is present."""
    aug = os.path.isfile(_voc_list(voc_root, VOC_AUG_SPLIT)) and os.path.isdir(
        os.path.join(voc_root, "SegmentationClassAug")
    )
    return list(VOC_SPLITS) + [VOC_AUG_SPLIT] * aug


def list_voc2012(voc_root, split):
    """A VOC 2012 split's (image, label, name) triples, in list order.

    `ImageSets/Segmentation/<split>.txt` names images in `JPEGImages/` and
    palette labels in `SegmentationClass/` (train_aug: index labels in
    `SegmentationClassAug/`).

    Raises:
      FileNotFoundError, ValueError: see `read_list`.
    """
    label_folder = (
        "SegmentationClassAug" if split == VOC_AUG_SPLIT else "SegmentationClass"
    )
    return list_folders(
        os.path.join(voc_root, "JPEGImages"),
        os.path.join(voc_root, label_folder),
        _voc_list(voc_root, split),
        "jpg",
        "png",
    )


def list_ade20k(ade20k_root, split):
    """An ADE20K split's (image, label, name) triples, sorted by name.

    Images `images/<folder>/*.jpg` with labels `annotations/<folder>/<name>.png`
    (folder: training for train, validation for val).

    Raises:
      ValueError: unknown split.
      FileNotFoundError: no images, naming the pattern.
    """
    if split not in ADE20K_SPLITS:
        raise ValueError(
            f"unknown ADE20K split {split!r}; known: {list(ADE20K_SPLITS)}"
        )
    folder = ADE20K_SPLITS[split]
    pattern = os.path.join(ade20k_root, "images", folder, "*.jpg")
    images = sorted(glob.glob(pattern))
    if not images:
        raise FileNotFoundError(
            f"ADE20K split {split!r}: no images match {pattern!r}; "
            f"--ade20k_root must be ADEChallengeData2016/"
        )
    examples = []
    for image in images:
        name = os.path.splitext(os.path.basename(image))[0]
        label = os.path.join(ade20k_root, "annotations", folder, name + ".png")
        examples.append((image, label, name))
    return examples


def list_files_of_folder(list_folder, splits=()):
    """split -> list file: the given splits, or every `*.txt` of the folder.

    Raises:
      FileNotFoundError: the folder has no `*.txt`, naming it.
    """
    if splits:
        return {split: os.path.join(list_folder, f"{split}.txt") for split in splits}
    paths = sorted(glob.glob(os.path.join(list_folder, "*.txt")))
    if not paths:
        raise FileNotFoundError(f"no list files (*.txt) in {list_folder}")
    return {os.path.splitext(os.path.basename(p))[0]: p for p in paths}


def convert_voc2012(voc_root, output_dir, splits, options):
    """Converts PASCAL VOC 2012 splits (21 classes, 255 ignored).

    Args:
      voc_root: str, `VOCdevkit/VOC2012`.
      output_dir: str, where the shards go.
      splits: split names; empty means `voc2012_splits(voc_root)`.
      options: `WriteOptions`.

    Returns:
      dict, split -> `shard_writer.WriteResult`.

    Raises:
      See `convert_splits` and `read_list`.
    """
    info = registry.get("pascal_voc_seg")
    return convert_splits(
        {s: list_voc2012(voc_root, s) for s in splits or voc2012_splits(voc_root)},
        output_dir,
        num_classes=info.num_classes,
        ignore_label=info.ignore_label,
        options=options,
    )


def convert_with_metadata(
    split_examples, output_dir, *, info, options, class_names=None, palette=None
):
    """`convert_splits`, then writes the metadata files beside the shards.

    Existing metadata files are checked (with the shards) before anything is
    written, and only replaced with `options.overwrite`.

    Args:
      split_examples, output_dir, options: see `convert_splits`.
      info: `registry.DatasetInfo`, for num_classes and ignore_label.
      class_names: the `info.num_classes` names for `class_names.txt`, or
        None for no such file.
      palette: `[colors, 3]` colours for `colormap.txt`, or None.

    Returns:
      dict, split -> `shard_writer.WriteResult`.

    Raises:
      FileExistsError: a metadata file exists and not `options.overwrite`.
      See `convert_splits` and `metadata.files_to_write`.
    """
    files = metadata.files_to_write(
        output_dir, class_names=class_names, palette=palette
    )
    if not options.overwrite:
        metadata.check_absent(files)
    results = convert_splits(
        split_examples,
        output_dir,
        num_classes=info.num_classes,
        ignore_label=info.ignore_label,
        options=options,
    )
    metadata.write_files(files)
    for path in files:
        logging.info("Wrote %s.", path)
    return results


def convert_ade20k(ade20k_root, output_dir, splits, options, colormap_file=None):
    """Converts ADE20K splits: 150 classes + 0 ignored, labels in [0, 150].

    The class names of `<ade20k_root>/objectInfo150.txt` ("other" for 0)
    go to `class_names.txt` beside the shards; without that file a warning
    says the class names will be generic (class indices).

    Args:
      ade20k_root: str, `ADEChallengeData2016`.
      output_dir: str, where the shards go.
      splits: names from `ADE20K_SPLITS`.
      options: `WriteOptions`.
      colormap_file: None, or the devkit's `color150.mat` (or a text
        palette, see `ade20k.read_palette`), written as `colormap.txt`.

    Returns:
      dict, split -> `shard_writer.WriteResult`.

    Raises:
      See `convert_with_metadata`, `list_ade20k`, `ade20k.read_object_info`
      and `ade20k.read_palette`.
    """
    info = registry.get("ade20k")
    object_info = os.path.join(ade20k_root, ade20k.OBJECT_INFO_FILE)
    class_names = None
    if os.path.isfile(object_info):
        class_names = ade20k.read_object_info(object_info)
    else:
        logging.warning(
            "No %s in %s: no %s is written, so class names will be generic "
            "(class indices) in eval's per-class IoU table.",
            ade20k.OBJECT_INFO_FILE,
            ade20k_root,
            metadata.CLASS_NAMES_FILE,
        )
    palette = None
    if colormap_file:
        palette = ade20k.read_palette(colormap_file, info.num_classes)
    return convert_with_metadata(
        {s: list_ade20k(ade20k_root, s) for s in splits},
        output_dir,
        info=info,
        options=options,
        class_names=class_names,
        palette=palette,
    )


def convert_folders(
    image_folder,
    label_folder,
    list_folder,
    output_dir,
    *,
    dataset_info,
    options,
    splits=(),
    image_format="jpg",
    label_format="png",
    class_names_file=None,
    colormap_file=None,
):
    """Any data set as an image folder, a label folder and list files.

    Args:
      image_folder, label_folder: str; an empty `label_folder` writes records
        without labels.
      list_folder: str, holding `<split>.txt` files of names.
      output_dir: str.
      dataset_info: `registry.DatasetInfo`, for num_classes and ignore_label.
      options: `WriteOptions`.
      splits: split names; empty means every `*.txt` in `list_folder`.
      image_format, label_format: file extensions.
      class_names_file: None, or a file of `num_classes` names, one a line,
        written as `class_names.txt`.
      colormap_file: None, or a palette (text or `.mat`, see
        `ade20k.read_palette`), written as `colormap.txt`.

    Returns:
      dict, split -> `shard_writer.WriteResult`.

    Raises:
      See `convert_with_metadata`, `list_files_of_folder`, `read_list`,
      `metadata.read_class_names` and `ade20k.read_palette`.
    """
    num_classes = dataset_info.num_classes
    return convert_with_metadata(
        {
            split: list_folders(
                image_folder, label_folder, path, image_format, label_format
            )
            for split, path in list_files_of_folder(list_folder, splits).items()
        },
        output_dir,
        info=dataset_info,
        options=options,
        class_names=(
            metadata.read_class_names(class_names_file, num_classes)
            if class_names_file
            else None
        ),
        palette=(
            ade20k.read_palette(colormap_file, num_classes) if colormap_file else None
        ),
    )

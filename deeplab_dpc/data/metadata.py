"""Class names and colours of any data set, in files beside its TFRecords.

A `--dataset_dir` may hold two plain-text (UTF-8) files:

- `class_names.txt`: one name a line, line 1 naming class 0, line i naming
  class i - 1; exactly `num_classes` lines.
- `colormap.txt`: one `R G B` colour a line (integers in 0..255, separated
  by whitespace or commas), line 1 colouring class 0; at least
  `num_classes` and at most 256 lines.

The converters write them (`datasets/build_ade20k_data.py` from the ADE20K
archive's `objectInfo150.txt` and the devkit's `color150.mat`,
`datasets/build_seg_data.py` from `--class_names_file` and
`--colormap_file`), each under a temporary name then renamed, and
`with_metadata` applies them to a `registry.DatasetInfo`: eval then names
its per-class IoU rows, and vis and the training summaries use the colours.
Readers go through `tf.io.gfile`, so a `gs://` data set works too.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from deeplab_dpc import file_io
from deeplab_dpc.data import registry

CLASS_NAMES_FILE = "class_names.txt"
COLORMAP_FILE = "colormap.txt"


def _read_lines(path):
    """The lines of a UTF-8 text file, trailing blank lines dropped.

    Raises:
      FileNotFoundError: naming the missing file.
      ValueError: the file is not UTF-8 text or holds no line.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.NotFoundError as e:
        raise FileNotFoundError(f"{path} does not exist") from e
    try:
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from e
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{path} is empty")
    return lines


def read_class_names(path, num_classes=None):
    """The class names of a `class_names.txt`-style file (one a line).

    Args:
      path: str, the file.
      num_classes: int, the number of names it must hold, or None.

    Returns:
      tuple of str, class i's name at index i (whitespace stripped).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: naming the file (and line): an empty name, or not
        `num_classes` names.
    """
    names = tuple(line.strip() for line in _read_lines(path))
    for number, name in enumerate(names, 1):
        if not name:
            raise ValueError(
                f"{path}:{number}: empty name for class {number - 1} (one name "
                f"a line, line 1 naming class 0)"
            )
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(
            f"{path} names {len(names)} classes but the data set has "
            f"{num_classes} (one name a line, line 1 naming class 0)"
        )
    return names


def read_colors(path, num_classes=None):
    """The colours of a text palette: one `R G B` a line.

    Args:
      path: str, the file; fields separated by whitespace or commas.
      num_classes: int, the fewest colours it must hold, or None.

    Returns:
      uint8 array `[colors, 3]`, line i's colour in row i - 1.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: naming the file and line of a line that is not three
        integers in 0..255; or naming the file when it has fewer than
        `num_classes` or more than 256 colours.
    """
    rows = []
    for number, line in enumerate(_read_lines(path), 1):
        try:
            values = [int(v) for v in line.replace(",", " ").split()]
        except ValueError:
            values = []
        if len(values) != 3:
            raise ValueError(
                f"{path}:{number}: want 'R G B', three integers separated by "
                f"whitespace or commas, got {line!r}"
            )
        if not all(0 <= v <= 255 for v in values):
            raise ValueError(
                f"{path}:{number}: colour {values} has a value outside 0..255"
            )
        rows.append(values)
    check_color_count(len(rows), num_classes, path)
    return np.array(rows, np.uint8)


def check_color_count(count, num_classes, path):
    """Raises ValueError naming `path` unless it has enough, but at most 256,
    colours (`num_classes` None: any number up to 256)."""
    if count > registry.MAX_COLORS:
        raise ValueError(
            f"{path} has {count} colours; labels are uint8, so at most "
            f"{registry.MAX_COLORS} are used"
        )
    if num_classes is not None and count < num_classes:
        raise ValueError(
            f"{path} has {count} colours but the data set has {num_classes} "
            f"classes (one 'R G B' a line, line 1 colouring class 0)"
        )


def with_metadata(info, dataset_dir):
    """`info` with the class names and palette of the files in `dataset_dir`.

    Args:
      info: a `registry.DatasetInfo`.
      dataset_dir: str, the folder of the TFRecords, or None / "".

    Returns:
      A `registry.DatasetInfo`: `class_names` from `class_names.txt` and
      `palette` from `colormap.txt` where those files exist, else `info`'s.

    Raises:
      ValueError: naming the file, when it is malformed, its names are not
        `info.num_classes`, or it has fewer colours than classes.
    """
    if not dataset_dir:
        return info
    changes = {}
    path = os.path.join(dataset_dir, CLASS_NAMES_FILE)
    if tf.io.gfile.exists(path):
        changes["class_names"] = read_class_names(path, info.num_classes)
    path = os.path.join(dataset_dir, COLORMAP_FILE)
    if tf.io.gfile.exists(path):
        changes["palette"] = read_colors(path, info.num_classes)
    return dataclasses.replace(info, **changes) if changes else info


def files_to_write(output_dir, *, class_names=None, palette=None):
    """{path: text} of the metadata files for `output_dir`.

    Args:
      output_dir: str, the folder of the shards.
      class_names: sequence of names (class i at index i), or None.
      palette: `[colors, 3]` integers in 0..255, or None.

    Returns:
      dict, path -> file contents; empty when both are None.

    Raises:
      ValueError: a name that is empty or spans lines, or a bad palette
        (see `registry.palette_rows`).
    """
    files = {}
    if class_names is not None:
        for i, name in enumerate(class_names):
            if not name.strip() or len(name.splitlines()) != 1:
                raise ValueError(f"class {i}: want a one-line name, got {name!r}")
        files[os.path.join(output_dir, CLASS_NAMES_FILE)] = "".join(
            f"{name.strip()}\n" for name in class_names
        )
    if palette is not None:
        files[os.path.join(output_dir, COLORMAP_FILE)] = "".join(
            f"{r} {g} {b}\n" for r, g, b in registry.palette_rows(palette)
        )
    return files


def check_absent(files):
    """Raises FileExistsError naming the first of `files` that exists (and
    `--overwrite`)."""
    for path in files:
        if os.path.exists(path):
            raise FileExistsError(
                f"{path} exists already; pass --overwrite to replace it"
            )


def write_files(files):
    """Writes each `{path: text}` file under a temporary name (`.tmp-*`
    beside it), then renames it into place (`file_io.write_text`)."""
    for path, text in files.items():
        file_io.write_text(path, text)

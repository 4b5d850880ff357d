"""ADE20K's class names and colours, read from the data set's own files.

- `ADEChallengeData2016/objectInfo150.txt`, in the challenge archive: a
  header `Idx Ratio Train Val Name`, then one tab-separated row per class,
  in order 1..150 (`1 0.1576 11664 1172 wall`). `read_object_info` gives
  DeepLab's 151 labels their names: label 0 is "other" (ignored), and labels
  1..150 keep the file's name whole, synonyms included (e.g.
  `building;edifice`), so that `class_names.txt` carries what the archive
  says (the first synonym is the short name).
- The scene-parsing devkit's `color150.mat` (MATLAB, variable `colors`,
  150x3 uint8): the colours of labels 1..150 that DeepLab's ade20k colormap
  uses, label 0 black. `read_palette` reads it, or a text palette (one
  `R G B` a line, see `metadata.read_colors`), for any data set: a file one
  colour short of `num_classes` lacks class 0's, and black is put first.
"""

import numpy as np
from scipy import io as scipy_io

from deeplab_dpc.data import metadata

OBJECT_INFO_FILE = "objectInfo150.txt"
OBJECT_INFO_HEADER = ("Idx", "Ratio", "Train", "Val", "Name")
NUM_CLASSES = 151  # label 0 ("other", ignored) and the 150 object classes
OTHER = "other"
MAT_VARIABLE = "colors"


def read_object_info(path):
    """The 151 class names of ADE20K's labels, from `objectInfo150.txt`.

    Args:
      path: str, the file.

    Returns:
      tuple of 151 str: "other", then the `Name` of rows 1..150.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: naming the file and line: a wrong header, a row without
        five fields or with non-numeric statistics, an index out of order
        (a row missing or repeated), or not 150 rows.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"ADE20K class list {path} does not exist") from e
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or tuple(lines[0].split()) != OBJECT_INFO_HEADER:
        raise ValueError(
            f"{path}:1: want the header {' '.join(OBJECT_INFO_HEADER)!r} "
            f"(tab-separated), got {lines[0] if lines else ''!r}"
        )
    names = [OTHER]
    for number, line in enumerate(lines[1:], 2):
        # The name is the rest of the line: it may hold spaces.
        fields = line.split(None, len(OBJECT_INFO_HEADER) - 1)
        if len(fields) != len(OBJECT_INFO_HEADER) or not _numbers(fields[1:4]):
            raise ValueError(
                f"{path}:{number}: want 'Idx Ratio Train Val Name' (numbers, "
                f"then the name), got {line!r}"
            )
        if fields[0] != str(len(names)):
            raise ValueError(
                f"{path}:{number}: want the row of class {len(names)} (rows "
                f"are classes 1..{NUM_CLASSES - 1} in order), got index "
                f"{fields[0]!r}"
            )
        names.append(fields[4].strip())
    if len(names) != NUM_CLASSES:
        raise ValueError(
            f"{path}: has {len(names) - 1} class rows, want {NUM_CLASSES - 1}"
        )
    return tuple(names)


def _numbers(fields):
    try:
        for field in fields:
            float(field)
    except ValueError:
        return False
    return True


def read_palette(path, num_classes=NUM_CLASSES):
    """A palette from a devkit `.mat` file (`colors`) or a text palette.

    Args:
      path: str; a name ending in `.mat` is read with `scipy.io.loadmat`,
        any other as text (one `R G B` a line).
      num_classes: int, the data set's classes (ADE20K: 151). A file of
        `num_classes - 1` colours (the devkit's 150) has no colour for class
        0: black is put first.

    Returns:
      uint8 array `[colors, 3]`, class i's colour in row i, at least
      `num_classes` rows.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: naming the file (and line or row): not a MATLAB file, no
        `colors` variable, not `[N, 3]`, a value outside the integers
        0..255, or too few or too many colours.
    """
    if str(path).lower().endswith(".mat"):
        colors = _read_mat(path)
    else:
        colors = metadata.read_colors(path)
    if len(colors) == num_classes - 1:
        colors = np.concatenate([np.zeros((1, 3), np.uint8), colors])
    metadata.check_color_count(len(colors), num_classes, path)
    return colors


def _read_mat(path):
    try:
        contents = scipy_io.loadmat(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"palette {path} does not exist") from e
    except (ValueError, TypeError, NotImplementedError) as e:
        raise ValueError(f"{path} is not a MATLAB file scipy reads: {e}") from e
    if MAT_VARIABLE not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise ValueError(
            f"{path} has no variable {MAT_VARIABLE!r} (the devkit's "
            f"color150.mat has); it holds {found}"
        )
    colors = np.asarray(contents[MAT_VARIABLE])
    if colors.ndim != 2 or colors.shape[1] != 3 or not len(colors):
        raise ValueError(
            f"{path}: {MAT_VARIABLE!r} is {'x'.join(map(str, colors.shape))}, "
            f"want Nx3 (one RGB row per class)"
        )
    if not (
        np.issubdtype(colors.dtype, np.integer)
        or np.issubdtype(colors.dtype, np.floating)
    ):
        raise ValueError(f"{path}: {MAT_VARIABLE!r} holds {colors.dtype}, not numbers")
    bad = (colors < 0) | (colors > 255) | (colors != np.round(colors))
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"{path}: colour row {row + 1} {colors[row].tolist()} has a value "
            f"outside the integers 0..255"
        )
    return colors.astype(np.uint8)

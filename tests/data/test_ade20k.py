"""ADE20K's class names and palette, read from files in the data set's own
formats that the tests write: an objectInfo150.txt of made-up rows and a
color150.mat (a real MATLAB file, by `scipy.io.savemat`) of made-up colours."""

import numpy as np
import pytest
from scipy import io as scipy_io

from deeplab_dpc.data import ade20k
from deeplab_dpc.data import registry

HEADER = "Idx\tRatio\tTrain\tVal\tName"


def object_info_rows():
    """150 rows as the archive has them; some names hold synonyms."""
    rows = ["1\t0.1576\t11664\t1172\twall"]
    for k in range(2, 151):
        name = f"thing {k}"
        if k % 40 == 2:
            name += f";synonym{k};made-up name"
        rows.append(f"{k}\t{0.1 / k:.4f}\t{2000 - k}\t{200 - k}\t{name}")
    return rows


def write_lines(path, lines, newline="\n"):
    path.write_bytes("".join(line + newline for line in lines).encode("utf-8"))
    return str(path)


def test_object_info_names_every_label(tmp_path):
    path = write_lines(tmp_path / "objectInfo150.txt", [HEADER, *object_info_rows()])
    names = ade20k.read_object_info(path)
    assert len(names) == registry.get("ade20k").num_classes == 151
    assert names[:3] == ("other", "wall", "thing 2;synonym2;made-up name")
    assert names[42] == "thing 42;synonym42;made-up name"
    assert names[150] == "thing 150"
    # Windows line ends and trailing blank lines read the same.
    crlf = write_lines(
        tmp_path / "crlf.txt", [HEADER, *object_info_rows(), "", ""], newline="\r\n"
    )
    assert ade20k.read_object_info(crlf) == names


def _swap(rows, i, j):
    rows[i], rows[j] = rows[j], rows[i]
    return rows


def _raises_naming(read, path, message):
    """`read(path)` raises a ValueError naming `path` and saying `message`."""
    with pytest.raises(ValueError) as error:
        read(str(path))
    assert str(error.value).startswith(str(path)), str(error.value)
    assert message in str(error.value), (message, str(error.value))


_BAD_OBJECT_INFO = (
    (lambda r: ["Index\tName", *r], ":1: want the header 'Idx Ratio Train Val Name'"),
    (lambda r: r, ":1: want the header"),  # no header at all
    (lambda r: [HEADER, *r[:4], *r[5:]], ":6: want the row of class 5"),
    (lambda r: [HEADER, *_swap(r, 6, 7)], ":8: want the row of class 7"),
    (lambda r: [HEADER, *r[:-1]], ": has 149 class rows, want 150"),
    (lambda r: [HEADER, *r, "151\t0.1\t1\t1\textra"], ": has 151 class rows"),
    (lambda r: [HEADER, *r[:3], "4\tbed", *r[4:]], ":5: want 'Idx Ratio"),
    (lambda r: [HEADER, *r[:3], "4\tx\t1\t1\tbed", *r[4:]], ":5: want 'Idx"),
    (lambda r: [], ":1: want the header"),
)


def test_bad_object_info_names_the_file_and_line(tmp_path):
    for k, (edit, message) in enumerate(_BAD_OBJECT_INFO):
        path = write_lines(
            tmp_path / f"objectInfo150-{k}.txt", edit(object_info_rows())
        )
        _raises_naming(ade20k.read_object_info, path, message)
    with pytest.raises(FileNotFoundError, match="objectInfo150.txt does not exist"):
        ade20k.read_object_info(str(tmp_path / "objectInfo150.txt"))


def _colors(count, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 3), dtype=np.uint8)


def test_palette_from_mat_gets_black_for_other(tmp_path):
    colors = _colors(150)
    path = str(tmp_path / "color150.mat")
    scipy_io.savemat(path, {"colors": colors})
    palette = ade20k.read_palette(path)
    assert palette.dtype == np.uint8 and palette.shape == (151, 3)
    np.testing.assert_array_equal(palette[0], [0, 0, 0])
    np.testing.assert_array_equal(palette[1:], colors)
    # A palette with class 0's colour is kept as it is; doubles are fine.
    scipy_io.savemat(path, {"colors": _colors(151, 1).astype(np.float64)})
    np.testing.assert_array_equal(ade20k.read_palette(path), _colors(151, 1))


def test_palette_from_text(tmp_path):
    colors = _colors(150, 2)
    separators = (" ", ",", ", ", "\t")
    lines = [
        separators[i % 4].join(str(v) for v in color) for i, color in enumerate(colors)
    ]
    palette = ade20k.read_palette(write_lines(tmp_path / "colors.txt", lines))
    np.testing.assert_array_equal(palette, np.concatenate([[[0, 0, 0]], colors]))
    # With a first line for index 0, and for another data set's classes.
    with_other = write_lines(tmp_path / "c151.txt", ["9 9 9", *lines])
    np.testing.assert_array_equal(ade20k.read_palette(with_other)[0], [9, 9, 9])
    four = write_lines(tmp_path / "c4.txt", lines[:4])
    assert ade20k.read_palette(four, num_classes=5).shape == (5, 3)
    assert ade20k.read_palette(four, num_classes=4).shape == (4, 3)


_BAD_TEXT_PALETTES = (
    (["1 2 3", "4 5 256"], ":2: colour [4, 5, 256] has a value outside 0..255"),
    (["1 2 3", "4 5"], ":2: want 'R G B'"),
    (["1 2 3", "", "4 5 6"], ":2: want 'R G B'"),
    (["1 2 3", "a b c"], ":2: want 'R G B'"),
    (["-1 2 3"], ":1: colour [-1, 2, 3]"),
    (["1 2 3"] * 100, " has 100 colours but the data set has 151 classes"),
    (["1 2 3"] * 257, " has 257 colours; labels are uint8"),
    ([], " is empty"),
)


def test_bad_text_palette_names_the_file(tmp_path):
    for k, (lines, message) in enumerate(_BAD_TEXT_PALETTES):
        path = write_lines(tmp_path / f"colors{k}.txt", lines)
        _raises_naming(ade20k.read_palette, path, message)


def test_bad_mat_palette_names_the_file(tmp_path):
    cases = (
        ({"palette": _colors(150)}, "has no variable 'colors'"),
        ({"colors": _colors(150)[:, :2]}, "'colors' is 150x2, want Nx3"),
        ({"colors": np.full((150, 3), 300, np.int16)}, "row 1 [300, 300, 300]"),
        ({"colors": np.full((150, 3), 0.5)}, "outside the integers 0..255"),
        ({"colors": _colors(20)}, "has 20 colours but the data set has 151"),
    )
    for k, (variables, message) in enumerate(cases):
        path = tmp_path / f"color150-{k}.mat"
        scipy_io.savemat(str(path), variables)
        _raises_naming(ade20k.read_palette, path, message)
    garbage = tmp_path / "color150.mat"
    garbage.write_bytes(b"not a MATLAB file" * 20)
    _raises_naming(ade20k.read_palette, garbage, " is not a MATLAB file")


def test_missing_palettes_name_the_file(tmp_path):
    for name in ("none.mat", "none.txt"):
        with pytest.raises(FileNotFoundError, match=f"{tmp_path / name}"):
            ade20k.read_palette(str(tmp_path / name))

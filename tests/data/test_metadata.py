"""class_names.txt and colormap.txt beside the shards, and the registry's
palette: written, read back, applied to a `DatasetInfo`, and checked."""

import logging
import os

import numpy as np
import pytest

from deeplab_dpc.data import metadata
from deeplab_dpc.data import registry

NAMES = ("void", "road", "tree;bush", "sky")
PALETTE = np.array([[0, 0, 0], [128, 64, 128], [0, 200, 0], [70, 130, 180]])


def _info(**kwargs):
    return registry.DatasetInfo(name="mine", num_classes=4, ignore_label=255, **kwargs)


def test_files_round_trip_into_dataset_info(tmp_path):
    files = metadata.files_to_write(str(tmp_path), class_names=NAMES, palette=PALETTE)
    metadata.write_files(files)
    assert sorted(os.listdir(tmp_path)) == ["class_names.txt", "colormap.txt"]
    assert (tmp_path / "class_names.txt").read_text() == "void\nroad\ntree;bush\nsky\n"
    assert (tmp_path / "colormap.txt").read_text().splitlines()[1] == "128 64 128"

    info = metadata.with_metadata(_info(), str(tmp_path))
    assert info.class_names == NAMES
    assert info.palette == tuple(map(tuple, PALETTE.tolist()))
    assert info.label_colors() == info.palette
    # No files, or no folder: the registry's info as it is.
    assert metadata.with_metadata(_info(), str(tmp_path / "empty")) == _info()
    assert metadata.with_metadata(_info(), None) == _info()


def test_bad_files_name_themselves(tmp_path):
    cases = (
        ("class_names.txt", "a\nb\nc\n", "names 3 classes but the data set has 4"),
        ("class_names.txt", "a\n\nc\nd\n", ":2: empty name for class 1"),
        ("colormap.txt", "0 0 0\n1 1 1\n2 2 2\n", "has 3 colours but the data set"),
        ("colormap.txt", "0 0 0\n1 1\n2 2 2\n3 3 3\n", ":2: want 'R G B'"),
        ("class_names.txt", "", " is empty"),
    )
    for k, (file_name, text, message) in enumerate(cases):
        folder = tmp_path / str(k)
        folder.mkdir()
        (folder / file_name).write_text(text)
        with pytest.raises(ValueError) as error:
            metadata.with_metadata(_info(), str(folder))
        assert str(error.value).startswith(str(folder / file_name)), error.value
        assert message in str(error.value), error.value


def test_existing_files_and_bad_names_are_refused(tmp_path):
    files = metadata.files_to_write(str(tmp_path), class_names=NAMES)
    metadata.check_absent(files)
    metadata.write_files(files)
    assert os.listdir(tmp_path) == ["class_names.txt"]  # no temporary left
    with pytest.raises(
        FileExistsError, match="class_names.txt exists already; pass --overwrite"
    ):
        metadata.check_absent(files)
    for names in (("a", ""), ("a", "b\nc")):
        with pytest.raises(ValueError, match="class 1: want a one-line name"):
            metadata.files_to_write(str(tmp_path), class_names=names)
    with pytest.raises(ValueError, match="0..255"):
        metadata.files_to_write(str(tmp_path), palette=PALETTE * 2)


def test_palette_checks_and_colormap_padding():
    with pytest.raises(ValueError, match="mine: 3 palette colours for 4 classes"):
        _info(palette=PALETTE[:3])
    with pytest.raises(ValueError, match=r"shape \[4, 2\]"):
        _info(palette=PALETTE[:, :2])
    with pytest.raises(ValueError, match="integers in 0..255"):
        _info(palette=PALETTE - 1)
    colormap = registry.colormap(_info(palette=PALETTE).palette)
    assert colormap.shape == (256, 3) and colormap.dtype == np.uint8
    np.testing.assert_array_equal(colormap[:4], PALETTE)
    assert not colormap[4:].any()  # classes past the palette are black


def test_label_colors_choice(caplog):
    info = _info(colormap="cityscapes", palette=PALETTE)
    assert info.label_colors() == info.label_colors("ade20k") == info.palette
    assert info.label_colors("pascal") == "pascal"
    assert _info(colormap="cityscapes").label_colors() == "cityscapes"
    with caplog.at_level(logging.WARNING):
        assert registry.get("ade20k").label_colors() == "pascal"
    assert registry.ADE20K_PALETTE_HINT in caplog.text
    assert "--colormap_file=color150.mat" in registry.ADE20K_PALETTE_HINT
    np.testing.assert_array_equal(
        registry.colormap("ade20k"), registry.pascal_colormap()
    )

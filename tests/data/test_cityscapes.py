"""Cityscapes labelId <-> trainId tables and the Cityscapes converter."""

import os

import numpy as np
import pytest
import tensorflow as tf
from cityscapesscripts.helpers import labels as cs_labels
from PIL import Image

from deeplab_dpc.data import cityscapes
from deeplab_dpc.data import converters
from deeplab_dpc.data import shard_writer
from deeplab_dpc.data import tfexample

_OPTIONS = converters.WriteOptions(num_shards=2, num_workers=1)
# Images per (folder, city) of the fixture tree.
_TREE = {
    ("train", "aachen"): 2,
    ("train", "bochum"): 1,
    ("val", "frankfurt"): 2,
    ("test", "berlin"): 1,
    ("train_extra", "augsburg"): 1,
}


def test_label_id_to_train_id_examples():
    label_ids = np.array([[7, 26, 0], [33, 1, 9]], np.uint8)
    np.testing.assert_array_equal(
        cityscapes.label_ids_to_train_ids(label_ids), [[0, 13, 255], [18, 255, 255]]
    )
    assert cityscapes.label_ids_to_train_ids(label_ids).dtype == np.uint8


def test_train_id_to_label_id_table():
    assert cityscapes.TRAIN_ID_TO_LABEL_ID == (
        7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
    )  # fmt: skip
    train_ids = np.array([[0, 13], [18, 255]], np.uint8)
    np.testing.assert_array_equal(
        cityscapes.train_ids_to_label_ids(train_ids), [[7, 26], [33, 0]]
    )


def test_round_trip_over_every_label_id():
    label_ids = np.array(cityscapes.LABEL_IDS, np.uint8)
    train_ids = cityscapes.label_ids_to_train_ids(label_ids)
    back = cityscapes.train_ids_to_label_ids(train_ids)
    evaluated = train_ids != 255
    assert evaluated.sum() == 19
    np.testing.assert_array_equal(back[evaluated], label_ids[evaluated])
    np.testing.assert_array_equal(back[~evaluated], 0)


@pytest.mark.parametrize(
    "function, values, bad",
    [
        (cityscapes.label_ids_to_train_ids, [7, 34, 200], "[34, 200]"),
        (cityscapes.label_ids_to_train_ids, [-1, 7], "[-1]"),
        (cityscapes.train_ids_to_label_ids, [0, 19, 254], "[19, 254]"),
    ],
)
def test_unknown_values_are_named(function, values, bad):
    with pytest.raises(ValueError, match=bad.replace("[", r"\[")):
        function(np.array(values, np.int32))


def _label_ids(rng):
    return rng.integers(0, 34, (8, 12), dtype=np.uint8)


def _expected_train_ids(label_ids):
    """Per pixel, from cityscapesscripts' id2label (an independent route)."""
    out = np.empty_like(label_ids)
    for (r, c), value in np.ndenumerate(label_ids):
        train_id = cs_labels.id2label[int(value)].trainId
        out[r, c] = train_id if 0 <= train_id < 19 else 255
    return out


def _write_tree(root, rng, label_for=_label_ids):
    """Cityscapes' on-disk layout; returns {name: (image, label ids)}."""
    arrays = {}
    for (folder, city), count in _TREE.items():
        for k in range(count):
            name = f"{city}_{k:06d}_000019"
            image = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
            image_dir = root / "leftImg8bit" / folder / city
            image_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(image_dir / f"{name}_leftImg8bit.png")
            label = label_for(rng)
            for gt in ("gtFine", "gtCoarse"):
                if gt == "gtFine" and folder == "train_extra":
                    continue
                label_dir = root / gt / folder / city
                label_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(label).save(label_dir / f"{name}_{gt}_labelIds.png")
            arrays[name] = (image, label)
    return arrays


def _read_split(output_dir, split):
    files = tfexample.split_files(str(output_dir), split)
    records = [tfexample.decode_example(r) for r in tf.data.TFRecordDataset(files)]
    return files, records


def test_converter_maps_label_ids_to_train_ids(tmp_path, capsys):
    root = tmp_path / "cityscapes"
    arrays = _write_tree(root, np.random.default_rng(1))
    out = tmp_path / "out"
    splits = ["train_fine", "val_fine", "test_fine", "train_coarse"]
    results = cityscapes.convert_cityscapes(str(root), str(out), splits, _OPTIONS)

    num_shards = {"train_fine": 2, "val_fine": 2, "test_fine": 1, "train_coarse": 2}
    assert sorted(os.listdir(out)) == sorted(
        tfexample.shard_name(split, k, n)
        for split, n in num_shards.items()
        for k in range(n)
    )
    expected_names = {
        "train_fine": ["aachen_000000_000019", "aachen_000001_000019"]
        + ["bochum_000000_000019"],
        "val_fine": ["frankfurt_000000_000019", "frankfurt_000001_000019"],
        "test_fine": ["berlin_000000_000019"],
        "train_coarse": ["aachen_000000_000019", "aachen_000001_000019"]
        + ["bochum_000000_000019", "augsburg_000000_000019"],
    }
    for split in splits:
        files, records = _read_split(out, split)
        assert results[split].num_written == len(expected_names[split])
        assert results[split].shards == tuple(files)
        assert [r[tfexample.FILENAME].numpy().decode() for r in records] == (
            expected_names[split]
        )
        for record in records:
            image, label_ids = arrays[record[tfexample.FILENAME].numpy().decode()]
            np.testing.assert_array_equal(record[tfexample.IMAGE].numpy(), image)
            label = record[tfexample.LABEL].numpy()
            if split == "test_fine":
                assert label.shape == (0, 0, 1)
            else:
                np.testing.assert_array_equal(
                    label[..., 0], _expected_train_ids(label_ids)
                )
    assert "train_fine: wrote 3 examples to 2 shard(s)" in capsys.readouterr().out


def test_test_fine_records_carry_no_label_feature(tmp_path):
    root = tmp_path / "cityscapes"
    _write_tree(root, np.random.default_rng(2))
    cityscapes.convert_cityscapes(str(root), str(tmp_path), ["test_fine"], _OPTIONS)
    (record,) = tf.data.TFRecordDataset(
        tfexample.split_files(str(tmp_path), "test_fine")
    )
    example = tf.train.Example.FromString(record.numpy())
    assert tfexample.LABEL_ENCODED not in example.features.feature
    assert example.features.feature[tfexample.IMAGE_FORMAT].bytes_list.value == [b"png"]


def test_unknown_label_ids_name_the_file(tmp_path):
    root = tmp_path / "cityscapes"
    _write_tree(root, np.random.default_rng(3))
    bad = root / "gtFine/val/frankfurt/frankfurt_000001_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((8, 12), 200, np.uint8)).save(bad)
    with pytest.raises(shard_writer.BadExampleError) as error:
        cityscapes.convert_cityscapes(
            str(root), str(tmp_path / "o"), ["val_fine"], _OPTIONS
        )
    assert str(bad) in str(error.value) and "[200]" in str(error.value)
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")


def test_missing_label_and_missing_split(tmp_path):
    root = tmp_path / "cityscapes"
    _write_tree(root, np.random.default_rng(4))
    label = root / "gtFine/train/bochum/bochum_000000_000019_gtFine_labelIds.png"
    label.unlink()
    with pytest.raises(shard_writer.BadExampleError, match=str(label)):
        cityscapes.convert_cityscapes(
            str(root), str(tmp_path / "o"), ["train_fine"], _OPTIONS
        )
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        cityscapes.list_split(str(tmp_path / "nowhere"), "val_fine")
    with pytest.raises(ValueError, match="unknown Cityscapes split"):
        cityscapes.list_split(str(root), "val")

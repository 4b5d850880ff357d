"""The shared converter and the VOC 2012, ADE20K and folder converters, on
small trees in each data set's on-disk layout (ADE20K's with an
objectInfo150.txt and a color150.mat of made-up contents), and the class
names and colours they write beside the shards."""

import logging
import os

import numpy as np
from PIL import Image
import pytest
from scipy import io as scipy_io
import tensorflow as tf

from deeplab_dpc.data import ade20k
from deeplab_dpc.data import converters
from deeplab_dpc.data import metadata
from deeplab_dpc.data import registry
from deeplab_dpc.data import shard_writer
from deeplab_dpc.data import tfexample

_OPTIONS = converters.WriteOptions(num_shards=2, num_workers=1)
_H, _W = 8, 12
_VOC_NAMES = [f"2007_00000{k}" for k in range(1, 6)]
_VOC_LISTS = {
    "train": _VOC_NAMES[:2],
    "val": _VOC_NAMES[2:4],
    "trainval": _VOC_NAMES[:4],
}
_VOC_AUG = [_VOC_NAMES[0], _VOC_NAMES[1], _VOC_NAMES[4]]


def _image(rng):
    return rng.integers(0, 256, (_H, _W, 3), dtype=np.uint8)


def _labels(rng, num_classes, boundary=None):
    label = rng.integers(0, num_classes, (_H, _W), dtype=np.uint8)
    if boundary is not None:
        label[3, :] = boundary
    return label


def _write_list(path, names):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{n}\n" for n in names))


def _write_voc(root, rng, aug=True):
    """VOCdevkit/VOC2012 with palette PNGs; returns {name: label} per folder."""
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug"):
        (root / folder).mkdir(parents=True)
    labels = {"SegmentationClass": {}, "SegmentationClassAug": {}}
    palette = registry.pascal_colormap().flatten().tolist()
    for name in _VOC_NAMES:
        Image.fromarray(_image(rng)).save(root / "JPEGImages" / f"{name}.jpg")
        label = _labels(rng, 21, boundary=255)
        png = Image.fromarray(label, mode="P")
        png.putpalette(palette)
        png.save(root / "SegmentationClass" / f"{name}.png")
        labels["SegmentationClass"][name] = label
        if aug:
            label = _labels(rng, 21)
            Image.fromarray(label).save(root / "SegmentationClassAug" / f"{name}.png")
            labels["SegmentationClassAug"][name] = label
    for split, names in _VOC_LISTS.items():
        _write_list(root / "ImageSets/Segmentation" / f"{split}.txt", names)
    if aug:
        _write_list(root / "ImageSets/Segmentation/train_aug.txt", _VOC_AUG)
    return labels


def _read(output_dir, split):
    """[(raw tf.train.Example, decoded dict)] of a split's shards, in order."""
    files = tfexample.split_files(str(output_dir), split)
    return [
        (tf.train.Example.FromString(r.numpy()), tfexample.decode_example(r))
        for r in tf.data.TFRecordDataset(files)
    ]


def _feature(example, key):
    return example.features.feature[key].bytes_list.value[0]


def _check_record(example, record, image_path, name, label):
    data = open(image_path, "rb").read()
    assert _feature(example, tfexample.IMAGE_ENCODED) == data
    assert record[tfexample.FILENAME].numpy().decode() == name
    image = record[tfexample.IMAGE].numpy()
    source = np.array(Image.open(image_path).convert("RGB"))
    if str(image_path).endswith(".png"):
        np.testing.assert_array_equal(image, source)
    else:  # libjpeg settings differ slightly between TF and PIL.
        assert image.shape == source.shape
        assert np.abs(image.astype(int) - source).max() <= 8
    np.testing.assert_array_equal(record[tfexample.LABEL].numpy()[..., 0], label)


def test_voc2012_with_aug(tmp_path, capsys):
    root = tmp_path / "VOCdevkit/VOC2012"
    labels = _write_voc(root, np.random.default_rng(0))
    out = tmp_path / "out"
    results = converters.convert_voc2012(str(root), str(out), [], _OPTIONS)

    assert list(results) == ["train", "val", "trainval", "train_aug"]
    assert sorted(os.listdir(out)) == sorted(
        tfexample.shard_name(s, k, 2) for s in results for k in range(2)
    )
    expected = dict(_VOC_LISTS, train_aug=_VOC_AUG)
    for split, names in expected.items():
        folder = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
        records = _read(out, split)
        assert len(records) == results[split].num_written == len(names)
        for (example, record), name in zip(records, names):
            assert _feature(example, tfexample.IMAGE_FORMAT) == b"jpeg"
            _check_record(
                example,
                record,
                root / "JPEGImages" / f"{name}.jpg",
                name,
                labels[folder][name],
            )
    # Palette indices, not colours, with the 255 boundary kept.
    assert 255 in labels["SegmentationClass"][_VOC_NAMES[0]]
    assert "train_aug: wrote 3 examples" in capsys.readouterr().out


def test_voc2012_without_aug_converts_the_three_splits(tmp_path):
    root = tmp_path / "VOC2012"
    _write_voc(root, np.random.default_rng(1), aug=False)
    assert converters.voc2012_splits(str(root)) == ["train", "val", "trainval"]
    with pytest.raises(FileNotFoundError, match="train_aug.txt"):
        converters.convert_voc2012(
            str(root), str(tmp_path / "o"), ["train_aug"], _OPTIONS
        )


def _write_ade20k(root, rng, counts=(("training", 3), ("validation", 1))):
    labels = {}
    for folder, count in counts:
        (root / "images" / folder).mkdir(parents=True)
        (root / "annotations" / folder).mkdir(parents=True)
        for k in range(count):
            name = f"ADE_{folder[:5]}_{k:08d}"
            Image.fromarray(_image(rng)).save(root / "images" / folder / f"{name}.jpg")
            label = _labels(rng, 151)
            label[0, :2] = (0, 150)
            Image.fromarray(label).save(root / "annotations" / folder / f"{name}.png")
            labels[name] = label
    return labels


def _write_object_info(root):
    """A made-up objectInfo150.txt; returns the 151 names it gives."""
    names = ["other"] + [f"class {k};alias {k}" for k in range(1, 151)]
    rows = [f"{k}\t0.001\t10\t2\t{names[k]}" for k in range(1, 151)]
    (root / ade20k.OBJECT_INFO_FILE).write_text(
        "Idx\tRatio\tTrain\tVal\tName\n" + "\n".join(rows) + "\n"
    )
    return tuple(names)


def test_ade20k(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    labels = _write_ade20k(root, np.random.default_rng(2))
    names = _write_object_info(root)
    colors = np.random.default_rng(7).integers(0, 256, (150, 3), dtype=np.uint8)
    color150 = str(tmp_path / "color150.mat")
    scipy_io.savemat(color150, {"colors": colors})
    out = tmp_path / "out"
    results = converters.convert_ade20k(
        str(root), str(out), ["train", "val"], _OPTIONS, colormap_file=color150
    )
    assert [len(r.shards) for r in results.values()] == [2, 1]
    for split, folder in (("train", "training"), ("val", "validation")):
        names_of_split = sorted(n for n in labels if n.startswith(f"ADE_{folder[:5]}"))
        records = _read(out, split)
        assert len(records) == len(names_of_split)
        for (example, record), name in zip(records, names_of_split):
            image_path = root / "images" / folder / f"{name}.jpg"
            _check_record(example, record, image_path, name, labels[name])

    # The class names and colours beside the shards name and colour labels.
    assert {"class_names.txt", "colormap.txt"} <= set(os.listdir(out))
    info = metadata.with_metadata(registry.get("ade20k"), str(out))
    assert info.class_names == names and len(names) == info.num_classes == 151
    label = labels["ADE_valid_00000000"]
    assert (label[0, :2] == (0, 150)).all()
    expected = np.concatenate([[[0, 0, 0]], colors])[label]
    np.testing.assert_array_equal(
        registry.colorize(label, info.label_colors()), expected
    )
    np.testing.assert_array_equal(
        registry.colorize(tf.constant(label), info.label_colors()).numpy(), expected
    )


def test_ade20k_metadata_overwrite_and_absence(tmp_path, caplog):
    root = tmp_path / "ADEChallengeData2016"
    _write_ade20k(root, np.random.default_rng(4), counts=(("validation", 1),))
    out = tmp_path / "out"
    palette = tmp_path / "palette.txt"
    palette.write_text("".join(f"{k} {k} {k}\n" for k in range(1, 151)))
    with caplog.at_level(logging.WARNING):
        converters.convert_ade20k(
            str(root), str(out), ["val"], _OPTIONS, colormap_file=str(palette)
        )
    # No objectInfo150.txt: a warning, and no class names.
    assert "class names will be generic" in caplog.text
    assert "class_names.txt" not in os.listdir(out)
    assert (out / "colormap.txt").read_text().startswith("0 0 0\n1 1 1\n")

    names = _write_object_info(root)
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}
    with pytest.raises(FileExistsError, match=f"{out / 'colormap.txt'} exists"):
        converters.convert_ade20k(
            str(root), str(out), ["val"], _OPTIONS, colormap_file=str(palette)
        )
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before
    options = converters.WriteOptions(num_shards=1, num_workers=1, overwrite=True)
    converters.convert_ade20k(str(root), str(out), ["val"], options)
    assert metadata.read_class_names(str(out / "class_names.txt")) == names
    assert (out / "colormap.txt").read_bytes() == before["colormap.txt"]


def test_ade20k_rejects_label_151(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _write_ade20k(root, np.random.default_rng(3))
    bad = root / "annotations/validation/ADE_valid_00000000.png"
    Image.fromarray(np.full((_H, _W), 151, np.uint8)).save(bad)
    with pytest.raises(shard_writer.BadExampleError) as error:
        converters.convert_ade20k(str(root), str(tmp_path / "o"), ["val"], _OPTIONS)
    assert str(bad) in str(error.value)
    assert "[151] outside [0, 151)" in str(error.value)


def _write_folders(root, rng, num=3):
    """A generic tree: PNG images, palette labels, one list file."""
    for folder in ("images", "labels", "lists"):
        (root / folder).mkdir(parents=True)
    names = [f"img{k}" for k in range(num)]
    labels = {}
    for name in names:
        Image.fromarray(_image(rng)).save(root / "images" / f"{name}.png")
        label = _labels(rng, 5, boundary=255)
        png = Image.fromarray(label, mode="P")
        png.putpalette([0, 0, 0, 255, 0, 0] * 128)
        png.save(root / "labels" / f"{name}.png")
        labels[name] = label
    _write_list(root / "lists/train.txt", names)
    return labels


def _convert_folders(root, out, options=_OPTIONS, **kwargs):
    """`convert_folders` of a `_write_folders` tree; kwargs: more arguments."""
    return converters.convert_folders(
        str(root / "images"),
        str(root / "labels"),
        str(root / "lists"),
        str(out),
        dataset_info=registry.get("custom", 5, 255),
        options=options,
        image_format="png",
        **kwargs,
    )


def test_folders_with_png_images(tmp_path):
    labels = _write_folders(tmp_path / "data", np.random.default_rng(4))
    results = _convert_folders(tmp_path / "data", tmp_path / "out")
    assert list(results) == ["train"]
    records = _read(tmp_path / "out", "train")
    assert [r[tfexample.FILENAME].numpy().decode() for _, r in records] == list(labels)
    for example, record in records:
        name = record[tfexample.FILENAME].numpy().decode()
        assert _feature(example, tfexample.IMAGE_FORMAT) == b"png"
        image_path = tmp_path / "data/images" / f"{name}.png"
        _check_record(example, record, image_path, name, labels[name])


def test_folders_with_class_names_and_colormap(tmp_path):
    _write_folders(tmp_path / "data", np.random.default_rng(5), num=1)
    names_file = tmp_path / "names.txt"
    names_file.write_text("background\nred\ngreen\nblue\nwhite\n")
    colormap_file = tmp_path / "colors.txt"
    colormap_file.write_text("255,0,0\n0,255,0\n0,0,255\n255,255,255\n")

    def convert(out, names=names_file):
        return _convert_folders(
            tmp_path / "data",
            out,
            class_names_file=str(names),
            colormap_file=str(colormap_file),
        )

    convert(tmp_path / "out")
    info = metadata.with_metadata(registry.get("custom", 5, 255), str(tmp_path / "out"))
    assert info.class_names == ("background", "red", "green", "blue", "white")
    # Four colours for five classes: class 0's is missing and black.
    assert info.palette[:2] == ((0, 0, 0), (255, 0, 0))
    # A wrong number of names fails before anything is written.
    names_file.write_text("background\nred\n")
    with pytest.raises(ValueError, match=f"{names_file} names 2 classes but"):
        convert(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def _truncate(path, marker, keep):
    data = path.read_bytes()
    path.write_bytes(data[: data.index(marker) + keep])


def _jpeg_image(root):
    path = root / "images/img1.png"
    Image.open(path).save(path, "JPEG")  # a JPEG named .png: format by content
    return path


_BAD_EXAMPLES = {
    "size_mismatch": (
        lambda root: Image.fromarray(np.zeros((_W, _H), np.uint8)).save(
            root / "labels/img1.png"
        ),
        "labels/img1.png is 8x12 (width x height) but image",
    ),
    "label_values": (
        lambda root: Image.fromarray(
            np.array([[7, 9, 255, 4] * 3] * _H, np.uint8)
        ).save(root / "labels/img1.png"),
        "labels/img1.png has values [7, 9] outside [0, 5)",
    ),
    "truncated_image": (
        lambda root: _truncate(_jpeg_image(root), b"\xff\xda", 20),
        "cannot decode image",
    ),
    "unreadable_image": (
        lambda root: (root / "images/img1.png").write_bytes(b"not an image"),
        "cannot decode image",
    ),
    "truncated_label": (
        lambda root: _truncate(root / "labels/img1.png", b"IDAT", 12),
        "cannot decode label",
    ),
    "rgb_label": (
        lambda root: Image.fromarray(np.zeros((_H, _W, 3), np.uint8)).save(
            root / "labels/img1.png"
        ),
        "labels/img1.png has mode 'RGB'",
    ),
    "missing_label": (
        lambda root: (root / "labels/img1.png").unlink(),
        "no label for image",
    ),
    "missing_image": (
        lambda root: (root / "images/img1.png").unlink(),
        "images/img1.png does not exist",
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_EXAMPLES))
def test_bad_example_names_the_file(tmp_path, case):
    _write_folders(tmp_path / "data", np.random.default_rng(5))
    corrupt, message = _BAD_EXAMPLES[case]
    corrupt(tmp_path / "data")
    with pytest.raises(shard_writer.BadExampleError) as error:
        _convert_folders(tmp_path / "data", tmp_path / "out")
    assert message in str(error.value)
    assert "img1.png" in str(error.value)
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("case", sorted(_BAD_EXAMPLES))
def test_skip_bad_examples_counts_them(tmp_path, capsys, case):
    labels = _write_folders(tmp_path / "data", np.random.default_rng(6))
    corrupt, message = _BAD_EXAMPLES[case]
    corrupt(tmp_path / "data")
    options = converters.WriteOptions(
        num_shards=2, num_workers=1, skip_bad_examples=True
    )
    (result,) = _convert_folders(tmp_path / "data", tmp_path / "out", options).values()
    assert result.num_written == 2 and len(result.skipped) == 1
    assert message in result.skipped[0]
    out = capsys.readouterr().out
    assert "train: 1 examples skipped" in out and message in out
    records = _read(tmp_path / "out", "train")
    assert [r[tfexample.FILENAME].numpy().decode() for _, r in records] == [
        "img0",
        "img2",
    ]
    np.testing.assert_array_equal(
        records[1][1][tfexample.LABEL][..., 0], labels["img2"]
    )


def test_all_examples_bad_writes_nothing(tmp_path):
    _write_folders(tmp_path / "data", np.random.default_rng(7), num=2)
    for name in ("img0", "img1"):
        (tmp_path / "data/labels" / f"{name}.png").unlink()
    options = converters.WriteOptions(num_workers=1, skip_bad_examples=True)
    with pytest.raises(shard_writer.BadExampleError, match="all 2 examples are bad"):
        _convert_folders(tmp_path / "data", tmp_path / "out", options)
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize(
    "contents, error, message",
    [
        (None, FileNotFoundError, "list file .*lists/train.txt does not exist"),
        ("\n  \n", ValueError, "list file .*lists/train.txt is empty"),
        ("a b c\n", ValueError, r"lists/train.txt:1: want one image name"),
    ],
)
def test_bad_list_file_names_it(tmp_path, contents, error, message):
    _write_folders(tmp_path / "data", np.random.default_rng(8))
    list_file = tmp_path / "data/lists/train.txt"
    if contents is None:
        list_file.unlink()
        (tmp_path / "data/lists/other.txt").write_text("img0\n")
    else:
        list_file.write_text(contents)
    with pytest.raises(error, match=message):
        _convert_folders(tmp_path / "data", tmp_path / "out", splits=["train"])


def test_list_lines_with_image_and_label_paths(tmp_path):
    path = tmp_path / "train_aug.txt"
    path.write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
        "2007_000039\n"
    )
    assert converters.read_list(str(path)) == ["2007_000032", "2007_000039"]


def test_a_name_listed_twice_is_an_error(tmp_path):
    # The audit's converters wrote such an example twice, silently.
    path = tmp_path / "train.txt"
    path.write_text("2007_000032\n2007_000039\n/JPEGImages/2007_000032.jpg x.png\n")
    with pytest.raises(
        ValueError, match=f"{path}:3: '2007_000032' is listed again \\(first on line 1\\)"
    ):
        converters.read_list(str(path))


def test_empty_split_is_an_error(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _write_ade20k(root, np.random.default_rng(9), counts=(("training", 1),))
    (root / "images/validation").mkdir()
    with pytest.raises(FileNotFoundError, match="images/validation/\\*.jpg"):
        converters.convert_ade20k(
            str(root), str(tmp_path / "o"), ["train", "val"], _OPTIONS
        )
    assert not (tmp_path / "o").exists()
    with pytest.raises(FileNotFoundError, match="no list files"):
        converters.list_files_of_folder(str(tmp_path))
    with pytest.raises(ValueError, match="split 'x' has no examples"):
        converters.convert_splits(
            {"x": []}, str(tmp_path), num_classes=2, ignore_label=255, options=_OPTIONS
        )


def test_existing_shards_are_kept_without_overwrite(tmp_path):
    _write_folders(tmp_path / "data", np.random.default_rng(10))
    _convert_folders(tmp_path / "data", tmp_path / "out")
    before = {
        p: (tmp_path / "out" / p).read_bytes() for p in os.listdir(tmp_path / "out")
    }
    # A new split that sorts before train: nothing is written when one exists.
    (tmp_path / "data/lists/minival.txt").write_text("img0\n")
    with pytest.raises(FileExistsError, match=f"{tmp_path / 'out'} already holds"):
        _convert_folders(tmp_path / "data", tmp_path / "out")
    after = {
        p: (tmp_path / "out" / p).read_bytes() for p in os.listdir(tmp_path / "out")
    }
    assert after == before
    options = converters.WriteOptions(num_shards=1, num_workers=1, overwrite=True)
    _convert_folders(tmp_path / "data", tmp_path / "out", options)
    assert sorted(os.listdir(tmp_path / "out")) == [
        "minival-00000-of-00001.tfrecord",
        "train-00000-of-00001.tfrecord",
    ]

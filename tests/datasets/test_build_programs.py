"""The converters in datasets/, run as a user runs them."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import tensorflow as tf
from cityscapesscripts.helpers import labels as cs_labels
from PIL import Image

from deeplab_dpc.data import registry
from deeplab_dpc.data import tfexample

_DATASETS = pathlib.Path(__file__).resolve().parents[2] / "datasets"


# TensorFlow's C++ start-up lines (this machine has no GPU: cuInit fails).
NATIVE_NOISE = ("cuInit", "oneDNN custom operations", "cudart_stub", "InitializeLog")


def _run(program, *args, quiet_env=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if not quiet_env:  # As a user runs it: the program keeps them quiet.
        del env["TF_CPP_MIN_LOG_LEVEL"]
    return subprocess.run(
        [sys.executable, str(_DATASETS / program), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _save(path, array, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode="P" if palette else None)
    if palette:
        image.putpalette(palette)
    image.save(path)


def _read(output_dir, split):
    files = tfexample.split_files(str(output_dir), split)
    return [tfexample.decode_example(r) for r in tf.data.TFRecordDataset(files)]


def _names(records):
    return [r[tfexample.FILENAME].numpy().decode() for r in records]


def test_cityscapes_with_worker_processes(tmp_path):
    rng = np.random.default_rng(0)
    labels = {}
    for city, k in (("aachen", 0), ("aachen", 1), ("bochum", 0)):
        name = f"{city}_{k:06d}_000019"
        _save(
            tmp_path / f"cs/leftImg8bit/train/{city}/{name}_leftImg8bit.png",
            rng.integers(0, 256, (8, 12, 3), dtype=np.uint8),
        )
        labels[name] = rng.integers(0, 34, (8, 12), dtype=np.uint8)
        _save(
            tmp_path / f"cs/gtFine/train/{city}/{name}_gtFine_labelIds.png",
            labels[name],
        )
    proc = _run(
        "build_cityscapes_data.py",
        f"--cityscapes_root={tmp_path / 'cs'}",
        f"--output_dir={tmp_path / 'out'}",
        "--splits=train_fine",
        "--num_shards=2",
        quiet_env=False,
    )  # default --num_workers=2: spawned workers re-import this program
    assert proc.returncode == 0, proc.stderr
    # Neither this process nor its writer processes (each imports
    # TensorFlow) print TensorFlow's start-up lines.
    noise = [x for x in proc.stderr.splitlines() if any(n in x for n in NATIVE_NOISE)]
    assert not noise, proc.stderr
    assert "train_fine: wrote 3 examples to 2 shard(s)" in proc.stdout
    assert sorted(os.listdir(tmp_path / "out")) == [
        "build_cityscapes_data.flags",
        "train_fine-00000-of-00002.tfrecord",
        "train_fine-00001-of-00002.tfrecord",
    ]
    records = _read(tmp_path / "out", "train_fine")
    assert _names(records) == sorted(labels)
    for record in records:
        train_ids = record[tfexample.LABEL].numpy()[..., 0]
        label_ids = labels[record[tfexample.FILENAME].numpy().decode()]
        for label_id in np.unique(label_ids):  # per labelId, from the table
            train_id = cs_labels.id2label[int(label_id)].trainId
            want = train_id if 0 <= train_id < 19 else 255
            assert (train_ids[label_ids == label_id] == want).all(), label_id


def test_voc2012_with_aug_set(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "VOCdevkit/VOC2012"
    palette = registry.pascal_colormap().flatten().tolist()
    names = ["2007_000032", "2007_000039", "2007_000063"]
    for name in names:
        image = Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8))
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        image.save(root / f"JPEGImages/{name}.jpg")
        label = rng.integers(0, 21, (8, 12), dtype=np.uint8)
        label[:, 5] = 255
        _save(root / f"SegmentationClass/{name}.png", label, palette)
        _save(root / f"SegmentationClassAug/{name}.png", label[::-1].copy())
    lists = {"train": names[:1], "val": names[1:], "trainval": names}
    lists["train_aug"] = names[::-1]
    for split, split_names in lists.items():
        (root / "ImageSets/Segmentation").mkdir(parents=True, exist_ok=True)
        (root / f"ImageSets/Segmentation/{split}.txt").write_text(
            "\n".join(split_names) + "\n"
        )
    out = tmp_path / "out"
    proc = _run(
        "build_voc2012_data.py",
        f"--voc_root={root}",
        f"--output_dir={out}",
        "--num_workers=1",
    )
    assert proc.returncode == 0, proc.stderr
    for split, split_names in lists.items():
        records = _read(out, split)
        assert _names(records) == split_names
        folder = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
        for record, name in zip(records, split_names):
            want = np.array(Image.open(root / f"{folder}/{name}.png"))
            np.testing.assert_array_equal(record[tfexample.LABEL][..., 0], want)
    assert "--voc_root" in (out / "build_voc2012_data.flags").read_text()


def _ade20k(root, rng):
    for folder, count in (("training", 2), ("validation", 1)):
        for k in range(count):
            name = f"ADE_{folder}_{k:08d}"
            (root / "images" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(
                root / "images" / folder / f"{name}.jpg"
            )
            _save(
                root / "annotations" / folder / f"{name}.png",
                rng.integers(0, 151, (8, 12), dtype=np.uint8),
            )


def test_ade20k_bad_label_fails_naming_the_file(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _ade20k(root, np.random.default_rng(2))
    bad = root / "annotations/training/ADE_training_00000001.png"
    _save(bad, np.full((8, 12), 151, np.uint8))
    rows = "".join(f"{k}\t0.01\t1\t1\tthing {k}\n" for k in range(1, 151))
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n" + rows)
    (tmp_path / "colors.txt").write_text("1 2 3\n" * 150)
    proc = _run(
        "build_ade20k_data.py",
        f"--ade20k_root={root}",
        f"--output_dir={tmp_path / 'out'}",
        "--num_workers=1",
        f"--colormap_file={tmp_path / 'colors.txt'}",
    )
    assert proc.returncode == 1
    assert f"error: label {bad} has values [151] outside [0, 151)" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Neither shards nor class names and colours of a failed conversion.
    assert os.listdir(tmp_path / "out") == []


def _folders(root, rng):
    for k in range(3):
        _save(
            root / f"images/img{k}.png",
            rng.integers(0, 256, (8, 12, 3), dtype=np.uint8),
        )
        _save(root / f"labels/img{k}.png", rng.integers(0, 5, (8, 12), dtype=np.uint8))
    (root / "lists").mkdir()
    (root / "lists/train.txt").write_text("img0\nimg1\nimg2\n")
    (root / "lists/val.txt").write_text("img2\n")


def _seg_args(root, *extra):
    return (
        f"--image_folder={root / 'images'}",
        f"--semantic_segmentation_folder={root / 'labels'}",
        f"--list_folder={root / 'lists'}",
        "--image_format=png",
        f"--output_dir={root / 'out'}",
        "--num_workers=1",
        *extra,
    )


def test_seg_data_skips_bad_examples(tmp_path):
    _folders(tmp_path, np.random.default_rng(3))
    (tmp_path / "labels/img1.png").unlink()
    (tmp_path / "names.txt").write_text("bg\ncat\ndog\nbird\nfish\n")
    (tmp_path / "colors.txt").write_text("0 0 0\n" + "9, 8, 7\n" * 5)
    proc = _run(
        "build_seg_data.py",
        *_seg_args(tmp_path, "--num_classes=5", "--ignore_label=255"),
        "--skip_bad_examples",
        f"--class_names_file={tmp_path / 'names.txt'}",
        f"--colormap_file={tmp_path / 'colors.txt'}",
    )
    assert proc.returncode == 0, proc.stderr
    assert "train: 1 examples skipped" in proc.stdout
    assert f"no label for image {tmp_path / 'images/img1.png'}" in proc.stdout
    assert _names(_read(tmp_path / "out", "train")) == ["img0", "img2"]
    assert _names(_read(tmp_path / "out", "val")) == ["img2"]
    out = tmp_path / "out"
    assert (out / "class_names.txt").read_text() == "bg\ncat\ndog\nbird\nfish\n"
    assert (out / "colormap.txt").read_text() == "0 0 0\n" + "9 8 7\n" * 5

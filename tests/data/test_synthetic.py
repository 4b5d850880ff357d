"""Tests of the synthetic data set: determinism, format, rules, and context."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.data import registry
from deeplab_dpc.data import synthetic
from deeplab_dpc.data import tfexample

SIZE = 33


def _build(path, seed=0, num_workers=1, **kwargs):
    return synthetic.build(
        str(path),
        num_train=kwargs.pop("num_train", 6),
        num_val=kwargs.pop("num_val", 3),
        height=kwargs.pop("height", SIZE),
        width=kwargs.pop("width", SIZE + 8),
        seed=seed,
        num_shards=2,
        num_workers=num_workers,
        **kwargs,
    )


def _shard_bytes(path):
    return {
        name: (path / name).read_bytes()
        for name in sorted(os.listdir(path))
        if name.endswith(".tfrecord")
    }


def test_shards_are_identical_with_one_and_two_workers_and_depend_on_seed(
    tmp_path,
):
    _build(tmp_path / "one", num_workers=1)
    _build(tmp_path / "two", num_workers=2)
    _build(tmp_path / "other_seed", seed=1, num_workers=1)
    one = _shard_bytes(tmp_path / "one")
    assert sorted(one) == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "val-00000-of-00002.tfrecord",
        "val-00001-of-00002.tfrecord",
    ]
    assert one == _shard_bytes(tmp_path / "two")
    other = _shard_bytes(tmp_path / "other_seed")
    assert sorted(other) == sorted(one)
    assert all(other[name] != one[name] for name in one)


def test_decoded_shards_equal_generate_example(tmp_path):
    results = _build(tmp_path)
    assert {s: r.num_written for s, r in results.items()} == {"train": 6, "val": 3}
    for split, count in (("train", 6), ("val", 3)):
        files = tfexample.split_files(str(tmp_path), split)
        elements = list(tf.data.TFRecordDataset(files).map(tfexample.decode_example))
        assert len(elements) == count
        for index, element in enumerate(elements):
            image, label = synthetic.generate_example(0, split, index, SIZE, SIZE + 8)
            np.testing.assert_array_equal(element[tfexample.IMAGE].numpy(), image)
            np.testing.assert_array_equal(
                element[tfexample.LABEL].numpy(), label[..., None]
            )
            assert element[tfexample.FILENAME].numpy().decode() == (
                f"{split}_{index:06d}"
            )
            assert (element[tfexample.HEIGHT], element[tfexample.WIDTH]) == (
                SIZE,
                SIZE + 8,
            )


def test_build_refuses_existing_shards_of_either_split_before_writing(tmp_path):
    _build(tmp_path, num_train=2, num_val=1)
    for name in os.listdir(tmp_path):
        if name.startswith("train-"):
            (tmp_path / name).unlink()
    with pytest.raises(FileExistsError, match="val-.*--overwrite"):
        _build(tmp_path, num_train=2, num_val=1)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("train-")]
    results = _build(tmp_path, num_train=2, num_val=1, overwrite=True)
    assert results["train"].num_written == 2


@pytest.mark.parametrize(
    "height, width", [(1, 1), (5, 3), (16, 16), (33, 97), (129, 129), (257, 65)]
)
def test_any_size_gives_valid_arrays(height, width):
    for index in range(3):
        image, label = synthetic.generate_example(7, "train", index, height, width)
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        assert label.shape == (height, width) and label.dtype == np.uint8
        assert label.max() < synthetic.NUM_CLASSES


def test_labels_cover_every_class_at_the_default_size():
    counts = np.zeros(synthetic.NUM_CLASSES, np.int64)
    for index in range(20):
        _, label = synthetic.generate_example(0, "train", index)
        assert set(np.unique(label)) <= set(range(synthetic.NUM_CLASSES))
        counts += np.bincount(label.ravel(), minlength=synthetic.NUM_CLASSES)
    assert (counts > 0).all(), counts


def test_examples_differ_by_index_split_and_seed():
    base, _ = synthetic.generate_example(0, "train", 0, 65, 65)
    for args in ((0, "train", 1), (0, "val", 0), (1, "train", 0)):
        other, _ = synthetic.generate_example(*args, 65, 65)
        assert not np.array_equal(base, other), args
    again, _ = synthetic.generate_example(0, "train", 0, 65, 65)
    np.testing.assert_array_equal(base, again)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown split 'trainval'"):
        synthetic.generate_example(0, "trainval", 0)
    with pytest.raises(ValueError, match="height must be a positive integer"):
        synthetic.generate_example(0, "train", 0, 0, 10)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        synthetic.generate_example(-1, "train", 0)
    with pytest.raises(ValueError, match="size must be in"):
        synthetic.region_class(0, 3, 0)


# The rules, as a table: (texture, size, tint) -> class.
RULE_TABLE = {
    # warm: stripes small/medium/large = 1/2/3, checker = 4/5/6
    (0, 0, 0): 1, (0, 1, 0): 2, (0, 2, 0): 3,
    (1, 0, 0): 4, (1, 1, 0): 5, (1, 2, 0): 6,
    # cool: ranks rotate, small/medium/large = b/c/a
    (0, 0, 1): 2, (0, 1, 1): 3, (0, 2, 1): 1,
    (1, 0, 1): 5, (1, 1, 1): 6, (1, 2, 1): 4,
}  # fmt: skip


def test_region_class_follows_the_table():
    for (texture, size, tint), cls in RULE_TABLE.items():
        assert synthetic.region_class(texture, size, tint) == cls


def test_each_cue_alone_changes_the_class():
    for texture in range(2):
        for size in range(3):
            for tint in range(2):
                cls = synthetic.region_class(texture, size, tint)
                assert synthetic.region_class(1 - texture, size, tint) != cls
                assert synthetic.region_class(texture, size, 1 - tint) != cls
                for other in set(range(3)) - {size}:
                    assert synthetic.region_class(texture, other, tint) != cls


def test_size_category_is_relative_to_the_image():
    # Mean side over min(h, w): < 0.175 small, < 0.32 medium, else large.
    assert synthetic.size_category(20, 22, 129, 129) == 0  # 0.163
    assert synthetic.size_category(24, 22, 129, 129) == 1  # 0.178
    assert synthetic.size_category(40, 42, 129, 129) == 1  # 0.318
    assert synthetic.size_category(41, 42, 129, 129) == 2  # 0.322
    assert synthetic.size_category(40, 40, 129, 129) == 1  # 0.310
    # The same box is small in a larger image, whatever the other side.
    assert synthetic.size_category(40, 40, 257, 1000) == 0
    assert synthetic.size_category(40, 40, 1000, 129) == 1


def test_labels_are_the_rules_applied_to_the_scene():
    for index in range(8):
        for height, width in ((129, 129), (65, 161)):
            scene = synthetic.generate_scene(3, "val", index, height, width)
            image, label = synthetic.generate_example(3, "val", index, height, width)
            expected = np.zeros((height, width), np.uint8)
            covered = np.zeros((height, width), bool)
            for region in scene.regions:
                mask = synthetic.region_mask(region, height, width)
                assert mask.any() and not (mask & covered).any()
                covered |= mask
                size = synthetic.size_category(
                    region.height, region.width, height, width
                )
                expected[mask] = RULE_TABLE[(region.texture, size, scene.tint)]
                # Region pixels are the texture in the palette's two colors.
                pattern = synthetic.texture_pattern(
                    region.texture, region.orientation, height, width
                )
                colors = np.asarray(synthetic.PALETTES[region.palette])
                np.testing.assert_array_equal(image[mask], colors[pattern[mask]])
            np.testing.assert_array_equal(label, expected)
            # The background carries the tint: its mean is the tint's color.
            mean = image[~covered].reshape(-1, 3).mean(0)
            np.testing.assert_allclose(
                mean, synthetic.TINT_COLORS[scene.tint], atol=3.0
            )


def test_regions_have_the_planned_sizes_at_the_default_size():
    sizes = collections.Counter()
    for index in range(20):
        scene = synthetic.generate_scene(0, "train", index)
        for region in scene.regions:
            sizes[synthetic.size_category(region.height, region.width, 129, 129)] += 1
    assert sizes[2] == 20  # one large region per image
    assert 20 <= sizes[1] <= 40 and 40 <= sizes[0] <= 80, sizes


def _interior_patches(image, label, sizes, radius):
    """(patch bytes, label, size) of the pixels whose patch lies in one region."""
    h, w = label.shape
    for y in range(radius, h - radius):
        for x in range(radius, w - radius):
            window = label[y - radius : y + radius + 1, x - radius : x + radius + 1]
            if label[y, x] == 0 or (window != label[y, x]).any():
                continue
            patch = image[y - radius : y + radius + 1, x - radius : x + radius + 1]
            yield patch.tobytes(), int(label[y, x]), int(sizes[y, x])


def test_local_patches_do_not_decide_the_label():
    # Architecture matters: equal 5x5 patches (same texture, palette and
    # phase) carry different labels, because of the size of the region they
    # lie in (same tint) and because of the image's tint (same size).
    seen = collections.defaultdict(set)  # patch -> {(label, size, tint)}
    for index in range(12):
        scene = synthetic.generate_scene(0, "train", index)
        image, label = synthetic.generate_example(0, "train", index)
        sizes = np.full(label.shape, -1)
        for region in scene.regions:
            sizes[synthetic.region_mask(region, *label.shape)] = (
                synthetic.size_category(region.height, region.width, *label.shape)
            )
        for patch, cls, size in _interior_patches(image, label, sizes, radius=2):
            seen[patch].add((cls, size, scene.tint))
    by_size = by_tint = 0
    for cases in seen.values():
        for cls, size, tint in cases:
            for other_cls, other_size, other_tint in cases:
                if other_cls != cls:
                    by_size += other_tint == tint and other_size != size
                    by_tint += other_size == size and other_tint != tint
    assert by_size > 0 and by_tint > 0
    # The rule function decides every one of them (see
    # test_labels_are_the_rules_applied_to_the_scene): given the region's size
    # and the tint, the patch's texture fixes the label.
    for cases in seen.values():
        assert len({(size, tint) for _, size, tint in cases}) == len(cases)


def test_registry_knows_the_synthetic_data_set():
    info = registry.get("synthetic")
    assert info.num_classes == synthetic.NUM_CLASSES == len(synthetic.CLASS_NAMES)
    assert info.ignore_label == synthetic.IGNORE_LABEL == 255
    assert info.splits == (("train", 200), ("val", 50))
    assert info.split_size("val") == 50
    assert "synthetic" in registry.names()

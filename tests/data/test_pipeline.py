"""Tests for deeplab_dpc.data.pipeline, on real TFRecords under tmp_path."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from deeplab_dpc.data import pipeline
from deeplab_dpc.data import tfds_source
from deeplab_dpc.data import tfexample

H, W = 17, 23
IGNORE = 255
# Smaller than the smallest scaled image (0.5 * 17 x 23 = 8 x 11): training
# crops never hold padding, so a label that is constant per example names it.
CROP = (8, 8)


def _write_split(directory, split, shard_sizes, labeled=True, seed=0):
    """Writes `<split>-*` shards with `shard_sizes[i]` records each.

    Record k (counted over the whole split, in shard order) is named
    `"{split}_{k}"`, has a random PNG image and, when `labeled`, a label
    that is `k` everywhere.

    Returns:
      The record names in file order.
    """
    rng = np.random.default_rng(seed)
    names = []
    for shard, size in enumerate(shard_sizes):
        path = os.path.join(
            directory, tfexample.shard_name(split, shard, len(shard_sizes))
        )
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(size):
                k = len(names)
                names.append(f"{split}_{k}")
                image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                label = tfexample.encode_png(np.full((H, W), k)) if labeled else None
                example = tfexample.encode_example(
                    tfexample.encode_png(image), names[-1], H, W, label, "png"
                )
                writer.write(example.SerializeToString())
    return names


def _train(directory, split, **kwargs):
    kwargs = {
        "crop_size": CROP,
        "batch_size": 2,
        "is_training": True,
        "ignore_label": IGNORE,
        **kwargs,
    }
    return pipeline.make_dataset(str(directory), split, **kwargs)


def _eval(directory, split, **kwargs):
    kwargs = {
        "crop_size": (H, W),
        "batch_size": 2,
        "is_training": False,
        "ignore_label": IGNORE,
        **kwargs,
    }
    return pipeline.make_dataset(str(directory), split, **kwargs)


def _names(dataset):
    """Record names of an evaluation dataset, in order."""
    return [n.decode() for b in dataset for n in b[pipeline.FILENAME].numpy()]


def _train_ids(dataset, num_elements):
    """Example ids (the constant labels) of the first training elements."""
    ids = []
    for batch in dataset.unbatch().take(num_elements):
        label = batch[pipeline.LABEL].numpy()
        assert (label == label.flat[0]).all()
        ids.append(int(label.flat[0]))
    return ids


def _input_context(pipeline_id):
    return tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2
    )


def test_training_batches(tmp_path):
    _write_split(tmp_path, "train", [3, 2])
    batch = next(iter(_train(tmp_path, "train", batch_size=3, seed=0)))
    assert set(batch) == set(pipeline.TRAIN_KEYS) == {pipeline.IMAGE, pipeline.LABEL}
    assert batch[pipeline.IMAGE].dtype == tf.float32
    assert batch[pipeline.IMAGE].shape == (3, *CROP, 3)
    assert batch[pipeline.LABEL].dtype == tf.int32
    assert batch[pipeline.LABEL].shape == (3, *CROP, 1)
    image = batch[pipeline.IMAGE].numpy()
    assert image.min() >= 0 and image.max() <= 255
    assert set(np.unique(batch[pipeline.LABEL])) <= set(range(5))


def test_training_repeats_and_shuffles(tmp_path):
    _write_split(tmp_path, "train", [3, 2, 4])
    ids = _train_ids(_train(tmp_path, "train", batch_size=1, seed=1), 27)
    # Shuffled before repeat: each epoch holds every example exactly once.
    for epoch in range(3):
        assert sorted(ids[9 * epoch : 9 * epoch + 9]) == list(range(9))
    assert ids[:9] != list(range(9))


def test_training_is_deterministic_with_a_seed(tmp_path):
    _write_split(tmp_path, "train", [3, 2, 4])

    def batches(seed):
        return [
            {k: v.numpy() for k, v in b.items()}
            for b in _train(tmp_path, "train", crop_size=(12, 12), seed=seed).take(6)
        ]

    first, again, other = batches(5), batches(5), batches(6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[pipeline.IMAGE], b[pipeline.IMAGE])
        np.testing.assert_array_equal(a[pipeline.LABEL], b[pipeline.LABEL])
    assert any(
        not np.array_equal(a[pipeline.IMAGE], b[pipeline.IMAGE])
        for a, b in zip(first, other)
    )


def test_eval_reads_in_file_order_once(tmp_path):
    names = _write_split(tmp_path, "val", [3, 2, 4])
    dataset = _eval(tmp_path, "val")
    assert _names(dataset) == names
    assert _names(dataset) == names  # and again, unchanged
    batches = list(dataset)
    assert [int(b[pipeline.IMAGE].shape[0]) for b in batches] == [2, 2, 2, 2, 1]
    batch = batches[0]
    assert set(batch) == set(pipeline.EVAL_KEYS)
    assert batch[pipeline.IMAGE].dtype == tf.float32
    assert batch[pipeline.LABEL].dtype == tf.int32
    np.testing.assert_array_equal(batch[pipeline.ORIGINAL_HEIGHT], [H, H])
    np.testing.assert_array_equal(batch[pipeline.ORIGINAL_WIDTH], [W, W])
    np.testing.assert_array_equal(batch[pipeline.LABEL][1], np.full((H, W, 1), 1))


def test_eval_can_drop_the_remainder(tmp_path):
    _write_split(tmp_path, "val", [3])
    dataset = _eval(tmp_path, "val", drop_remainder=True)
    assert [int(b[pipeline.IMAGE].shape[0]) for b in dataset] == [2]


def test_eval_pads_and_keeps_the_original_size(tmp_path):
    _write_split(tmp_path, "val", [1])
    batch = next(iter(_eval(tmp_path, "val", crop_size=(20, 25), batch_size=1)))
    assert batch[pipeline.IMAGE].shape == (1, 20, 25, 3)
    np.testing.assert_array_equal(batch[pipeline.IMAGE][0, H:], 127.5)
    np.testing.assert_array_equal(batch[pipeline.LABEL][0, :, W:], IGNORE)
    np.testing.assert_array_equal(batch[pipeline.LABEL][0, :H, :W], 0)
    assert int(batch[pipeline.ORIGINAL_HEIGHT][0]) == H
    assert int(batch[pipeline.ORIGINAL_WIDTH][0]) == W


def test_eval_image_larger_than_crop_is_a_clear_error(tmp_path):
    _write_split(tmp_path, "val", [1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="raise --eval_crop_size"):
        next(iter(_eval(tmp_path, "val", crop_size=(H, W - 1))))


def test_eval_unlabeled_records_get_ignore_labels(tmp_path):
    names = _write_split(tmp_path, "test", [2], labeled=False)
    batches = list(_eval(tmp_path, "test"))
    assert _names(batches) == names
    np.testing.assert_array_equal(batches[0][pipeline.LABEL], IGNORE)


def test_training_on_unlabeled_records_is_a_clear_error(tmp_path):
    _write_split(tmp_path, "test", [2], labeled=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="training needs labels"):
        next(iter(_train(tmp_path, "test", seed=0)))


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-"):
        _train(tmp_path, "train")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"crop_size": (8, 0)}, "crop_size"),
        ({"num_readers": 0}, "num_readers"),
        ({"ignore_label": "255"}, "ignore_label"),
        ({"min_scale_factor": 2.5}, "min_scale_factor"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path, kwargs, match):
    _write_split(tmp_path, "train", [1])
    with pytest.raises(ValueError, match=match):
        _train(tmp_path, "train", **kwargs)


@pytest.mark.parametrize("image_format", [b"jpeg", b"png"])
def test_reads_records_of_deeplabs_builder(tmp_path, image_format):
    # As DeepLab's build_data.image_seg_to_tfexample writes them: JPEG image
    # bytes, a PNG label, and image/format from the --image_format flag, which
    # is "png" by default even for VOC's JPEG images.
    rng = np.random.default_rng(7)
    smooth = (
        np.linspace(0, 200, W)[None, :, None] + np.linspace(0, 50, H)[:, None, None]
    )
    image = np.broadcast_to(smooth, (H, W, 3)).astype(np.uint8)
    label = rng.integers(0, 21, (H, W), dtype=np.uint8)

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": feature(tf.io.encode_jpeg(image, quality=95).numpy()),
                "image/filename": feature(b"2007_000032"),
                "image/format": feature(image_format),
                "image/height": feature(H),
                "image/width": feature(W),
                "image/channels": feature(3),
                "image/segmentation/class/encoded": feature(
                    tf.io.encode_png(label[..., None]).numpy()
                ),
                "image/segmentation/class/format": feature(b"png"),
            }
        )
    )
    path = tmp_path / "val-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(example.SerializeToString())

    batch = next(iter(_eval(tmp_path, "val", crop_size=(20, 24), batch_size=1)))
    assert batch[pipeline.FILENAME].numpy().tolist() == [b"2007_000032"]
    np.testing.assert_array_equal(batch[pipeline.LABEL][0, :H, :W, 0], label)
    assert np.abs(batch[pipeline.IMAGE][0, :H, :W].numpy() - image).max() <= 8
    next(iter(_train(tmp_path, "val", seed=0)))  # and it trains


# --- sharding ----------------------------------------------------------------


def test_shard_by_file_in_evaluation(tmp_path):
    names = _write_split(tmp_path, "val", [2, 1, 3, 2])
    files = [names[0:2], names[2:3], names[3:6], names[6:8]]
    seen = []
    for k in range(2):
        dataset = _eval(tmp_path, "val", batch_size=2, input_context=_input_context(k))
        batches = list(dataset)
        assert all(int(b[pipeline.IMAGE].shape[0]) == 1 for b in batches)
        # Pipeline k reads files k and k + 2, in order.
        assert _names(batches) == files[k] + files[k + 2]
        seen += _names(batches)
    assert sorted(seen) == sorted(names)


def test_shard_by_element_when_fewer_files_than_pipelines(tmp_path):
    names = _write_split(tmp_path, "val", [5])
    seen = [
        _names(_eval(tmp_path, "val", batch_size=2, input_context=_input_context(k)))
        for k in range(2)
    ]
    assert seen == [names[0::2], names[1::2]]


def test_shard_by_file_in_training(tmp_path):
    _write_split(tmp_path, "train", [2, 1, 3, 2])
    ids = {0: {0, 1, 3, 4, 5}, 1: {2, 6, 7}}  # files 0, 2 and files 1, 3
    for k, own in ids.items():
        dataset = _train(
            tmp_path, "train", batch_size=2, input_context=_input_context(k)
        )
        first = _train_ids(dataset, 2 * len(own))
        assert set(first[: len(own)]) == own and set(first[len(own) :]) == own


@pytest.mark.parametrize("seed", [None, 3])
def test_shard_by_element_in_training(tmp_path, seed):
    # 7 files for 8 pipelines: sharded by element. Even without a seed every
    # pipeline must cut the same fixed order, so that their first epochs
    # (one example each, none for the last) split the examples exactly.
    _write_split(tmp_path, "train", [1] * 7)
    ids = []
    for k in range(8):
        context = tf.distribute.InputContext(
            num_input_pipelines=8, input_pipeline_id=k, num_replicas_in_sync=8
        )
        dataset = _train(
            tmp_path, "train", batch_size=8, seed=seed, input_context=context
        )
        ids += _train_ids(dataset, 1 if k < 7 else 0)
    assert sorted(ids) == list(range(7))


def test_per_replica_batch_needs_an_even_split(tmp_path):
    _write_split(tmp_path, "train", [2])
    with pytest.raises(ValueError, match="divisible"):
        _train(tmp_path, "train", batch_size=3, input_context=_input_context(0))


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    from deeplab_dpc.data import pipeline

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    common = dict(ignore_label=255, crop_size=(8, 8))
    train = pipeline.distributed_dataset(
        strategy, sys.argv[1], "train", global_batch_size=4, is_training=True,
        seed=0, **common
    )
    batch = next(iter(train))
    shapes = [
        t.shape.as_list()
        for key in (pipeline.IMAGE, pipeline.LABEL)
        for t in strategy.experimental_local_results(batch[key])
    ]
    sizes = strategy.experimental_local_results(
        strategy.run(tf.function(lambda b: tf.shape(b[pipeline.IMAGE])[0]), (batch,))
    )
    evaluation = pipeline.distributed_dataset(
        strategy, sys.argv[1], "train", global_batch_size=4, is_training=False,
        crop_size=(17, 23), ignore_label=255
    )
    names = [
        n.decode()
        for b in evaluation
        for t in strategy.experimental_local_results(b[pipeline.FILENAME])
        for n in t.numpy()
    ]
    print("RESULT " + json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "shapes": shapes,
        "sizes": [int(s) for s in sizes],
        "names": names,
    }))
    """)


def test_distributed_dataset_under_mirrored_strategy(tmp_path):
    names = _write_split(tmp_path, "train", [3, 2])
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, result.stdout + result.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert out["replicas"] == 2
    assert out["shapes"] == [[2, 8, 8, 3]] * 2 + [[2, 8, 8, 1]] * 2
    assert out["sizes"] == [2, 2]
    assert sorted(out["names"]) == sorted(names)


def test_distributed_dataset_sets_the_batch_itself(tmp_path):
    _write_split(tmp_path, "train", [1])
    strategy = tf.distribute.get_strategy()
    with pytest.raises(TypeError, match="global_batch_size"):
        pipeline.distributed_dataset(
            strategy, str(tmp_path), "train", global_batch_size=2, batch_size=2
        )


def test_tfds_source_gives_the_same_batches_as_records():
    """`tfds_name` feeds TFDS elements through the same preprocessing."""
    name = "tfds:cityscapes/semantic_segmentation"
    with tfds.testing.mock_data(num_examples=3, max_value=40):
        elements = list(tfds_source.load(name, "val_fine", data_dir=None))
        height = max(int(e[tfexample.HEIGHT]) for e in elements)
        width = max(int(e[tfexample.WIDTH]) for e in elements)
        batches = list(
            pipeline.make_dataset(
                None,
                "val_fine",
                crop_size=(height, width),
                batch_size=2,
                is_training=False,
                ignore_label=255,
                tfds_name=name,
            )
        )
        train = pipeline.make_dataset(
            None,
            "val_fine",
            crop_size=(9, 9),
            batch_size=2,
            is_training=True,
            ignore_label=255,
            seed=0,
            tfds_name=name,
        )
        train_batch = next(iter(train))
    assert [b[pipeline.IMAGE].shape[0] for b in batches] == [2, 1]
    images = np.concatenate([b[pipeline.IMAGE].numpy() for b in batches])
    labels = np.concatenate([b[pipeline.LABEL].numpy() for b in batches])
    for i, element in enumerate(elements):
        h, w = int(element[tfexample.HEIGHT]), int(element[tfexample.WIDTH])
        np.testing.assert_array_equal(images[i, :h, :w], element[tfexample.IMAGE])
        np.testing.assert_array_equal(labels[i, :h, :w], element[tfexample.LABEL])
    assert train_batch[pipeline.IMAGE].shape == (2, 9, 9, 3)
    assert train_batch[pipeline.LABEL].dtype == tf.int32


def _write_records(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(
                example if isinstance(example, bytes) else example.SerializeToString()
            )


def _example(name, label_value=1, image=None):
    image = np.zeros((H, W, 3), np.uint8) if image is None else image
    label = tfexample.encode_png(np.full((H, W), label_value))
    data = image if isinstance(image, bytes) else tfexample.encode_png(image)
    return tfexample.encode_example(data, name, H, W, label, "png")


def _read_error(dataset, directory, split):
    with pytest.raises(tf.errors.OpError) as raised:
        for _ in dataset:
            pass
    return str(pipeline.read_error(raised.value, str(directory), split))


@pytest.mark.parametrize("is_training", [True, False])
def test_labels_above_num_classes_name_shard_and_record(tmp_path, is_training):
    # --dataset=custom --num_classes=1 on data with labels 0..6: the silent
    # case of the audit, now an error naming the shard, record and image.
    shard = tmp_path / tfexample.shard_name("train", 0, 1)
    _write_records(shard, [_example("a", 0), _example("b", IGNORE), _example("c", 6)])
    make = _train if is_training else _eval
    dataset = make(tmp_path, "train", num_classes=1, **({"seed": 0} if is_training else {}))
    message = _read_error(dataset, tmp_path, "train")
    assert f"{shard}: record 2: label 6 >= num_classes (1)" in message
    assert "in c" in message and "\n" not in message
    # Labels in range (and the ignore label) pass.
    next(iter(make(tmp_path, "train", num_classes=7)))


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x00" * 40, "not a valid TFRecord file after 0 record(s)"),
        ("truncated", "not a valid TFRecord file after 1 record(s)"),
        (tfexample.encode_example(b"not an image", "x", H, W), "record 0: 'image/encoded' is not"),
        (tf.train.Example(), "record 0: has no 'image/encoded'"),
    ],
)
def test_unreadable_records_name_the_file(tmp_path, content, expected):
    shard = tmp_path / tfexample.shard_name("val", 0, 1)
    if content == "truncated":
        _write_records(shard, [_example("a"), _example("b")])
        shard.write_bytes(shard.read_bytes()[:-30])
    elif isinstance(content, bytes):
        shard.write_bytes(content)
    else:
        _write_records(shard, [content])
    message = _read_error(_eval(tmp_path, "val"), tmp_path, "val")
    assert str(shard) in message and expected in message, message

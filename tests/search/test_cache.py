"""Tests of deeplab_dpc.search.cache on the built-in data set."""

import glob
import os
import shutil

from cache_testing import build
from cache_testing import COPIES
from cache_testing import CROP
from cache_testing import NUM_TRAIN
from cache_testing import NUM_VAL
from cache_testing import OPTIONS
from cache_testing import SEED
from cache_testing import shared_search
from cache_testing import write_pretrained
import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.data import pipeline
from deeplab_dpc.data import synthetic
from deeplab_dpc.models import deeplab
from deeplab_dpc.search import cache
from deeplab_dpc.training import trainer


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return shared_search(tmp_path_factory)


def _records(info, split):
    """The raw (features, labels) of a split's shards, decoded in NumPy."""
    features, labels = [], []
    label_dtype = np.dtype(info.manifest["label_dtype"])
    for shard in info.shards(split):
        path = os.path.join(info.cache_dir, shard["file"])
        for record in tf.data.TFRecordDataset(path):
            example = tf.train.Example.FromString(record.numpy()).features.feature
            raw = example["features"].bytes_list.value[0]
            features.append(np.frombuffer(raw, np.float16).reshape(info.feature_shape))
            raw = example["label"].bytes_list.value[0]
            labels.append(np.frombuffer(raw, label_dtype).reshape(info.label_shape))
    return np.stack(features), np.stack(labels)


def test_shards_hold_the_checkpoint_backbone_features_and_pipeline_labels(shared):
    search, data, pretrained, info = shared
    assert info.manifest["feature_dtype"] == "float16"
    assert info.manifest["label_dtype"] == "uint8"
    assert info.feature_shape == (5, 5, 112)
    assert info.label_shape == CROP
    assert info.count("train") == COPIES * NUM_TRAIN
    assert info.count("val") == NUM_VAL
    assert info.settings["checkpoint"] == os.path.join(pretrained, "ckpt-1")
    shards = glob.glob(os.path.join(info.cache_dir, "*.tfrecord"))
    assert info.size_bytes == sum(os.path.getsize(p) for p in shards)
    val_features, val_labels = _records(info, "val")
    train_features, train_labels = _records(info, "train")
    assert train_features.shape == (COPIES * NUM_TRAIN, 5, 5, 112)

    # Val: the checkpoint's backbone on the padded eval images.
    model = deeplab.build_deeplab(OPTIONS)
    trainer.restore_initial_checkpoint(model, pretrained, initialize_last_layer=False)
    extractor = cache.feature_extractor(model)
    batch = next(
        iter(
            pipeline.make_dataset(
                data,
                "val",
                crop_size=CROP,
                batch_size=NUM_VAL,
                is_training=False,
                ignore_label=synthetic.IGNORE_LABEL,
            )
        )
    )
    expected = extractor(batch[pipeline.IMAGE], training=False).numpy()
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(val_features, expected, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(val_labels, batch[pipeline.LABEL].numpy()[..., 0])

    # Train: exactly the seeded training pipeline's first COPIES epochs.
    tf.keras.utils.set_random_seed(SEED)
    train = pipeline.make_dataset(
        data,
        "train",
        crop_size=CROP,
        batch_size=NUM_TRAIN,
        is_training=True,
        ignore_label=synthetic.IGNORE_LABEL,
        seed=SEED,
    )
    reference = np.concatenate(
        [b[pipeline.LABEL].numpy()[..., 0] for b in train.take(COPIES)]
    )
    np.testing.assert_array_equal(train_labels, reference)

    # The reader gives the same values, as float32 and int32.
    features, labels = next(iter(cache.load_split(search, "val", batch_size=NUM_VAL)))
    assert features.dtype == tf.float32 and labels.dtype == tf.int32
    np.testing.assert_array_equal(features.numpy(), val_features.astype(np.float32))
    np.testing.assert_array_equal(labels.numpy(), val_labels)
    shuffled = cache.load_split(
        search, "train", batch_size=3, shuffle=True, seed=0, repeat=True
    )
    assert [tuple(f.shape) for f, _ in shuffled.take(7)] == [(3, 5, 5, 112)] * 7
    # No autotuning thread: with 2 workers on 2 cores, deleting an iterator
    # waited seconds for it (see cache_reader._no_autotune).
    assert shuffled.options().autotune.enabled is False


def test_same_settings_reuse_the_cache_without_writing(shared):
    search, data, pretrained, info = shared
    files = glob.glob(os.path.join(info.cache_dir, "**"), recursive=True)
    mtimes = {f: os.stat(f).st_mtime_ns for f in files}
    again = build(search, data, pretrained)
    assert again.reused
    assert again.manifest == info.manifest
    assert {f: os.stat(f).st_mtime_ns for f in files} == mtimes


def test_other_settings_are_refused_naming_them(shared, tmp_path):
    search, data, pretrained, info = shared
    manifest = os.path.join(info.cache_dir, cache.MANIFEST)
    before = os.stat(manifest).st_mtime_ns
    with pytest.raises(cache.CacheSettingsError) as error:
        build(search, data, pretrained, cache_copies=3, seed=SEED + 1)
    message = str(error.value)
    assert "cache_copies: cached 2, requested 3" in message
    assert "seed:" in message
    assert "crop_size" not in message and "overwrite" in message
    moved = str(tmp_path / "moved")
    shutil.copytree(pretrained, moved)
    with pytest.raises(cache.CacheSettingsError, match="checkpoint: cached"):
        build(search, data, moved)
    assert os.stat(manifest).st_mtime_ns == before
    with pytest.raises(ValueError, match="cache_copies must be a positive int"):
        build(str(tmp_path / "other"), data, pretrained, cache_copies=0)


def test_corrupt_or_truncated_shards_are_named(shared, tmp_path):
    search, data, pretrained, _ = shared
    copy = str(tmp_path / "search")
    shutil.copytree(search, copy)
    info = cache.load_info(copy)
    shard = os.path.join(info.cache_dir, info.shards("train")[0]["file"])
    with open(shard, "r+b") as f:
        f.seek(os.path.getsize(shard) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(cache.CorruptCacheError, match=f"{shard} fails its sha256"):
        cache.load_split(copy, "train", batch_size=2)
    cache.load_split(copy, "val", batch_size=2)  # Val is intact.
    with open(shard, "r+b") as f:
        f.truncate(100)
    with pytest.raises(cache.CorruptCacheError, match=f"{shard} has 100 bytes"):
        cache.load_split(copy, "train", batch_size=2)
    with pytest.raises(cache.CorruptCacheError, match=f"{shard} has 100 bytes"):
        build(copy, data, pretrained)


def test_failed_rebuild_keeps_the_old_cache_and_leaves_no_partial_files(
    shared, tmp_path
):
    search, data, pretrained, _ = shared
    copy = str(tmp_path / "search")
    shutil.copytree(search, copy)
    info = cache.load_info(copy)
    listing = sorted(os.listdir(info.cache_dir))
    with open(os.path.join(info.cache_dir, cache.MANIFEST), "rb") as f:
        manifest = f.read()
    # What a run killed mid-write leaves: a partial folder of a dead process
    # holding a shard that looks complete. Readers never look there.
    stale = os.path.join(info.cache_dir, ".partial-999999999-x")
    os.makedirs(stale)
    shutil.copy(os.path.join(info.cache_dir, info.shards("val")[0]["file"]), stale)
    assert cache.load_info(copy).count("val") == NUM_VAL
    # A data set whose val images are larger than the crop: the rebuild
    # fails while caching.
    bad = str(tmp_path / "bad")
    synthetic.build(bad, num_train=1, num_val=1, height=97, width=97, num_workers=1)
    for path in glob.glob(os.path.join(bad, "train-*")):
        os.remove(path)
    for path in glob.glob(os.path.join(data, "train-*")):
        shutil.copy(path, bad)
    with pytest.raises(ValueError) as error:
        build(copy, bad, pretrained, overwrite=True)
    message = str(error.value)
    assert "split 'val'" in message and "larger than the crop (65, 65)" in message
    assert sorted(os.listdir(info.cache_dir)) == listing
    with open(os.path.join(info.cache_dir, cache.MANIFEST), "rb") as f:
        assert f.read() == manifest
    cache.verify(cache.load_info(copy))


def test_writing_a_split_shows_its_progress(tmp_path, capsys):
    # Three crops in batches of two, two crops a shard: a bar counting the
    # crops to their total, with its rate and ETA (tqdm's).
    batches = [
        {
            pipeline.IMAGE: tf.zeros([n, 4, 4, 3]),
            pipeline.LABEL: tf.zeros([n, 4, 4, 1], tf.int32),
        }
        for n in (2, 2)
    ]
    entry = cache._write_split(  # pylint: disable=protected-access
        str(tmp_path),
        "val",
        batches,
        3,
        lambda images: tf.ones([images.shape[0], 2, 2, 5]),
        2,
        lambda labels, features, stored: labels.astype(np.uint8),
        True,
    )
    assert entry["count"] == 3 and len(entry["shards"]) == 2
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "cache val: 100%" in err and "3/3 [" in err
    assert "<" in err.split("3/3 [")[-1]  # [elapsed<remaining, rate]


def _one_entry(key, array):
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[array.tobytes()]))
    return tf.train.Example(
        features=tf.train.Features(feature={key: feature})
    ).SerializeToString()


def test_a_crop_has_one_serialization_whatever_the_map_order():
    # Protobuf writes a map's entries in an order that varies between
    # processes; two runs caching the same features must write the same bytes.
    features = np.arange(12, dtype=np.float16).reshape(2, 2, 3)
    label = np.arange(16, dtype=np.uint8).reshape(4, 4)
    # Concatenated messages merge: the same example, its entries label first.
    label_first = _one_entry("label", label) + _one_entry("features", features)
    features_first = _one_entry("features", features) + _one_entry("label", label)
    assert tf.train.Example.FromString(label_first) == tf.train.Example.FromString(
        features_first
    )
    for serialized in (label_first, features_first):
        example = tf.train.Example.FromString(serialized)
        assert cache.serialize(features, label) == example.SerializeToString(
            deterministic=True
        )
    parsed = tf.train.Example.FromString(cache.serialize(features, label))
    stored = parsed.features.feature
    assert stored["features"].bytes_list.value[0] == features.tobytes()
    assert stored["label"].bytes_list.value[0] == label.tobytes()

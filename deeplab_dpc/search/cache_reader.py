"""The feature cache on disk, the reading side: format, manifest, checks, loading.

`cache.build_cache` writes a cache; this module reads one (and `cache`
exports its public names too, so `cache.load_split` and the like work).

Format: `<search_dir>/cache/<train|val>-NNNNN-of-NNNNN.tfrecord`, one
`tf.train.Example` per crop with the raw bytes of the features ("features",
float16 `[fh, fw, c]`) and of the labels ("label", uint8 or int32 `[h, w]`),
shapes and dtypes in `manifest.json`. TFRecord rather than .npy: shards stream
through `tf.data` (a Cityscapes cache does not fit in memory), every record
carries a CRC, and raw bytes with static shapes decode without parsing
tensors. `manifest.json` holds the settings, the feature and label shapes,
and the record count, size and sha256 of every shard; `load_split` checks the
shards against it (once per process and file state). The backbone weights the
features came from are kept as a checkpoint in `cache/backbone/`, so a
trained head can be put back on its backbone (`proxy.to_deeplab_checkpoint`)
even when the user's checkpoint is later deleted. A folder without
`manifest.json` holds no usable cache.
"""

import dataclasses
import hashlib
import json
import math
import os
from typing import Any

import tensorflow as tf

CACHE_DIR = "cache"
MANIFEST = "manifest.json"
BACKBONE_DIR = "backbone"
SPLITS = ("train", "val")
FORMAT_VERSION = 1
FEATURES_KEY = "features"
LABEL_KEY = "label"
_SHUFFLE_BYTES = 256 * 2**20
# sha256 of shards already checked in this process, by (path, size, mtime).
_VERIFIED = {}


class CorruptCacheError(ValueError):
    """A shard is missing, truncated or altered; the message names it."""


@dataclasses.dataclass(frozen=True)
class CacheInfo:
    """A complete feature cache.

    Attributes:
      cache_dir: str, the folder of the shards and `manifest.json`.
      manifest: dict, the parsed manifest.
      reused: bool, `build_cache` found it already made.
    """

    cache_dir: str
    manifest: Any
    reused: bool = False

    @property
    def settings(self):
        return self.manifest["settings"]

    @property
    def feature_shape(self):
        return tuple(self.manifest["feature_shape"])

    @property
    def label_shape(self):
        return tuple(self.manifest["label_shape"])

    @property
    def crop_size(self):
        return tuple(self.settings["crop_size"])

    @property
    def output_stride(self):
        return self.settings["output_stride"]

    @property
    def num_classes(self):
        return self.settings["num_classes"]

    @property
    def ignore_label(self):
        return self.settings["ignore_label"]

    @property
    def backbone_checkpoint(self):
        """The prefix of the checkpoint of the backbone the features came from."""
        return os.path.join(self.cache_dir, self.manifest["backbone_checkpoint"])

    @property
    def size_bytes(self):
        return sum(s["bytes"] for s in self.shards())

    def count(self, split):
        """Examples cached for `split` ("train" or "val")."""
        return self.manifest["splits"][_check_split(split)]["count"]

    def shards(self, split=None):
        """Shard entries ({"file", "count", "bytes", "sha256"}) of one or all splits."""
        names = SPLITS if split is None else (_check_split(split),)
        return [s for n in names for s in self.manifest["splits"][n]["shards"]]


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"cache split must be one of {SPLITS}, got {split!r}")
    return split


def sha256_file(path):
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(cache_dir):
    """The parsed `manifest.json` of `cache_dir`, or None if it has none.

    Raises:
      CorruptCacheError: if the manifest cannot be read or parsed.
    """
    path = os.path.join(cache_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CorruptCacheError(f"unreadable cache manifest {path}: {e}") from e


def load_info(cache):
    """The `CacheInfo` of a cache.

    Args:
      cache: a `CacheInfo`, a search dir (its `cache/`) or a cache dir.

    Raises:
      FileNotFoundError: when there is no complete cache there.
    """
    if isinstance(cache, CacheInfo):
        return cache
    for cache_dir in (os.path.join(cache, CACHE_DIR), cache):
        manifest = read_manifest(cache_dir)
        if manifest is not None:
            return CacheInfo(cache_dir, manifest)
    raise FileNotFoundError(
        f"no complete feature cache in {cache} (no {CACHE_DIR}/{MANIFEST}); "
        "build it first (--mode=cache)"
    )


def verify(info, split=None, *, checksums=True):
    """Checks the shards of one or all splits against the manifest.

    Args:
      info: a `CacheInfo`.
      split: "train", "val" or None (both).
      checksums: bool; False checks only that the shards exist with their
        sizes.

    Raises:
      CorruptCacheError: naming the first shard that is missing, of another
        size or (with `checksums`) of another sha256.
    """
    for shard in info.shards(split):
        path = os.path.join(info.cache_dir, shard["file"])
        try:
            stat = os.stat(path)
        except FileNotFoundError as e:
            raise CorruptCacheError(f"cache shard {path} is missing") from e
        if stat.st_size != shard["bytes"]:
            raise CorruptCacheError(
                f"cache shard {path} has {stat.st_size} bytes, the manifest says "
                f"{shard['bytes']} (truncated or altered); rebuild it (--overwrite)"
            )
        key = (path, stat.st_size, stat.st_mtime_ns)
        if not checksums:
            continue
        if key not in _VERIFIED:
            _VERIFIED[key] = sha256_file(path)
        if _VERIFIED[key] != shard["sha256"]:
            raise CorruptCacheError(
                f"cache shard {path} fails its sha256 check (corrupt); rebuild it "
                "(--overwrite)"
            )


def load_split(cache, split, *, batch_size, shuffle=False, seed=None, repeat=False):
    """The cached examples of a split, checked against the manifest.

    Args:
      cache: a `CacheInfo`, search dir or cache dir.
      split: "train" or "val".
      batch_size: int.
      shuffle: bool, shuffle shards and examples (seeded by `seed`).
      seed: int or None.
      repeat: bool, repeat forever (batches then all have `batch_size`).

    Returns:
      A `tf.data.Dataset` of (features float32 `[batch, fh, fw, c]`,
      labels int32 `[batch, h, w]`).

    Raises:
      FileNotFoundError, CorruptCacheError: see `load_info` and `verify`.
    """
    info = load_info(cache)
    verify(info, split)
    files = [os.path.join(info.cache_dir, s["file"]) for s in info.shards(split)]
    feature_shape, label_shape = info.feature_shape, info.label_shape
    label_dtype = tf.as_dtype(info.manifest["label_dtype"])
    example_bytes = 2 * math.prod(feature_shape)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if not shuffle:
        ds = ds.flat_map(tf.data.TFRecordDataset)
    else:
        ds = ds.shuffle(len(files), seed=seed)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)))
        buffer = min(info.count(split), max(1, _SHUFFLE_BYTES // example_bytes))
        ds = ds.shuffle(buffer, seed=seed)
    if repeat:
        ds = ds.repeat()
    spec = {
        FEATURES_KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL_KEY: tf.io.FixedLenFeature([], tf.string),
    }

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        features = tf.io.decode_raw(parsed[FEATURES_KEY], tf.float16)
        labels = tf.io.decode_raw(parsed[LABEL_KEY], label_dtype)
        return (
            tf.cast(tf.reshape(features, [-1, *feature_shape]), tf.float32),
            tf.cast(tf.reshape(labels, [-1, *label_shape]), tf.int32),
        )

    ds = ds.batch(batch_size, drop_remainder=repeat)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_no_autotune())


def _no_autotune():
    """tf.data options without the autotuning thread.

    A trial reads a few small cached feature maps per step; the autotuner
    buys nothing there, and with 2 search workers on 2 cores deleting a
    trial's iterator waited 8-10 s for the starved autotuning thread in
    about half of the trials (`bench/search_throughput.py`: 2 workers went
    from 1.45x to 1.65x the trials/hour of 1 without it).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options

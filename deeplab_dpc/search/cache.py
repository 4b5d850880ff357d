"""The search's feature cache: backbone feature maps computed once, on disk.

`build_cache` runs the proxy backbone (DeepLab's model up to the input of its
head) once over the train split (`cache_copies` augmented copies of every
image) and the val split (un-augmented, padded to the crop), and stores the
feature maps as float16 with their labels at the crop size. Proxy trials then
train heads on `load_split` alone, without the backbone in the graph. The
format and the reading side (`load_info`, `verify`, `load_split`) live in
`cache_reader`; this module exports them too.

Atomicity: everything is written into a hidden `.partial-<pid>-*` folder of
the cache; only a complete cache is moved into place, the old manifest being
removed first and the new one written last (temporary name, then rename). A
folder without `manifest.json` holds no usable cache.
"""

import glob
import json
import math
import os
import shutil
import tempfile

from absl import logging
import numpy as np
import tensorflow as tf
import tqdm

from deeplab_dpc import file_io
from deeplab_dpc.data import pipeline
from deeplab_dpc.data import tfexample
from deeplab_dpc.models import deeplab
from deeplab_dpc.search import cache_reader
from deeplab_dpc.training import trainer

# The reading side, exported here as well.
CACHE_DIR = cache_reader.CACHE_DIR
MANIFEST = cache_reader.MANIFEST
SPLITS = cache_reader.SPLITS
CacheInfo = cache_reader.CacheInfo
CorruptCacheError = cache_reader.CorruptCacheError
load_info = cache_reader.load_info
verify = cache_reader.verify
load_split = cache_reader.load_split

DEFAULT_SHARD_BYTES = 256 * 2**20
_PARTIAL_PREFIX = ".partial-"


class CacheSettingsError(ValueError):
    """The cache on disk was made with other settings."""


def feature_extractor(model):
    """DeepLab `model` cut at the input of its head ("dense_prediction_cell"/"aspp")."""
    for name in (deeplab.DPC_LAYER, deeplab.ASPP_LAYER):
        try:
            head = model.get_layer(name)
        except ValueError:
            continue
        return tf.keras.Model(model.input, head.input, name="feature_extractor")
    raise ValueError("the model has no 'dense_prediction_cell' nor 'aspp' layer")


def _settings(options, checkpoint, dataset_dir, train_split, val_split, **values):
    """The JSON-normalised settings that decide the cache's content."""
    weights = options.backbone_weights
    weights_sha = None
    if weights and os.path.isfile(weights):
        weights_sha = cache_reader.sha256_file(weights)
    checkpoint_sha = None
    if checkpoint:
        checkpoint_sha = cache_reader.sha256_file(checkpoint + ".index")
    settings = dict(
        model_variant=options.model_variant,
        depth_multiplier=options.depth_multiplier,
        crop_size=options.crop_size,
        output_stride=options.output_stride,
        num_classes=options.num_classes,
        backbone_weights=weights,
        backbone_weights_sha256=weights_sha,
        checkpoint=os.path.abspath(checkpoint) if checkpoint else None,
        checkpoint_sha256=checkpoint_sha,
        dataset_dir=os.path.abspath(dataset_dir),
        train_split=train_split,
        val_split=val_split,
        dataset_files={
            split: [
                [os.path.basename(f), os.path.getsize(f)]
                for f in tfexample.split_files(dataset_dir, split)
            ]
            for split in (train_split, val_split)
        },
        **values,
    )
    return json.loads(json.dumps(settings))


def _differences(old, new):
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: cached {old.get(k)!r}, requested {new.get(k)!r}"
        for k in keys
        if old.get(k) != new.get(k)
    ]


def serialize(features, label):
    """One cached crop as a serialized `tf.train.Example`.

    Serialized deterministically: the features are a map, whose entries
    protobuf otherwise writes in an order that varies between processes, so
    that the same features would make shards of other bytes (and sha256).
    """
    feature = {
        key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[a.tobytes()]))
        for key, a in (
            (cache_reader.FEATURES_KEY, features),
            (cache_reader.LABEL_KEY, label),
        )
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def _write_split(directory, name, dataset, count, extract, per_shard, check, progress):
    """Writes `count` examples of `dataset` as shards; returns the manifest entry."""
    num_shards = math.ceil(count / per_shard)
    shards, writer, written = [], None, 0
    iterator = iter(dataset)
    with tqdm.tqdm(
        total=count, desc=f"cache {name}", unit="crop", disable=not progress
    ) as bar:
        while written < count:
            batch = next(iterator)
            features = extract(batch[pipeline.IMAGE]).numpy()
            stored = features.astype(np.float16)
            labels = check(batch[pipeline.LABEL].numpy()[..., 0], features, stored)
            for feature, label in zip(stored, labels):
                if written == count:
                    break
                if written % per_shard == 0:
                    index = written // per_shard
                    path = os.path.join(
                        directory, f"{name}-{index:05d}-of-{num_shards:05d}.tfrecord"
                    )
                    writer = tf.io.TFRecordWriter(path)
                    shards.append({"file": os.path.basename(path), "count": 0})
                writer.write(serialize(feature, label))
                shards[-1]["count"] += 1
                written += 1
                if written % per_shard == 0 or written == count:
                    writer.close()
            bar.update(min(len(stored), bar.total - bar.n))
    for shard in shards:
        path = os.path.join(directory, shard["file"])
        shard.update(bytes=os.path.getsize(path), sha256=cache_reader.sha256_file(path))
    return {"count": written, "shards": shards}


def _label_checker(num_classes, ignore_label, dtype, split):
    def check(labels, features, stored):
        if not np.all(np.isfinite(stored)):
            raise ValueError(
                f"backbone features of split {split!r} overflow float16; the "
                "cache cannot store them"
            )
        nonzero = np.count_nonzero(features)
        if nonzero == 0 or np.count_nonzero(stored) < nonzero / 2:
            raise ValueError(
                f"backbone features of split {split!r} are (nearly) all zero in "
                f"float16 (largest magnitude {np.abs(features).max():.3g}): the "
                "backbone looks untrained (random initialisation shrinks "
                "MobileNet-v2's activations towards zero). Give a trained "
                "checkpoint (--tf_initial_checkpoint) or --backbone_weights"
            )
        valid = labels[labels != ignore_label]
        if valid.size and (valid.min() < 0 or valid.max() >= num_classes):
            raise ValueError(
                f"split {split!r} has label {int(valid.max())} outside "
                f"[0, {num_classes}) that is not the ignore label {ignore_label}"
            )
        return labels.astype(dtype)

    return check


def _write_cache(
    directory, settings, options, checkpoint, batch_size, max_bytes, progress
):
    """Computes and writes every shard and the backbone; returns the manifest."""
    s = settings
    tf.keras.utils.set_random_seed(s["seed"])
    model = deeplab.build_deeplab(options)
    if checkpoint:
        trainer.restore_initial_checkpoint(
            model, checkpoint, initialize_last_layer=False
        )
    extractor = feature_extractor(model)
    backbone = tf.train.Checkpoint(model=extractor).write(
        os.path.join(directory, cache_reader.BACKBONE_DIR, "ckpt")
    )
    extract = tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)
    feature_shape = tuple(int(d) for d in extractor.output.shape[1:])
    fits_uint8 = 0 <= s["ignore_label"] <= 255 and s["num_classes"] <= 256
    label_dtype = np.uint8 if fits_uint8 else np.int32
    example_bytes = 2 * math.prod(feature_shape)
    per_shard = max(1, max_bytes // example_bytes)
    common = dict(
        crop_size=options.crop_size,
        batch_size=batch_size,
        ignore_label=s["ignore_label"],
    )
    num_train = tfexample.count_records(s["dataset_dir"], s["train_split"])
    num_val = tfexample.count_records(s["dataset_dir"], s["val_split"])
    train = pipeline.make_dataset(
        s["dataset_dir"], s["train_split"], is_training=True, seed=s["seed"], **common
    )
    val = pipeline.make_dataset(
        s["dataset_dir"], s["val_split"], is_training=False, **common
    )
    splits = {}
    for name, dataset, count, split in (
        ("val", val, num_val, s["val_split"]),
        ("train", train, s["cache_copies"] * num_train, s["train_split"]),
    ):
        check = _label_checker(s["num_classes"], s["ignore_label"], label_dtype, split)
        try:
            splits[name] = _write_split(
                directory, name, dataset, count, extract, per_shard, check, progress
            )
        except tf.errors.InvalidArgumentError as e:
            hint = ""
            if "larger than the eval crop size" in e.message:
                hint = (
                    f"an image of split {split!r} is larger than the crop "
                    f"{options.crop_size}: the cache reads the val split padded "
                    "to --train_crop_size and never resizes it, so the crop must "
                    "be at least every val image's size. "
                )
            raise ValueError(
                f"cannot cache split {split!r} of {s['dataset_dir']}: {hint}"
                f"TensorFlow says: {e.message.splitlines()[0]}"
            ) from e
    return {
        "format_version": cache_reader.FORMAT_VERSION,
        "settings": settings,
        "feature_shape": list(feature_shape),
        "feature_dtype": "float16",
        "label_shape": list(options.crop_size),
        "label_dtype": np.dtype(label_dtype).name,
        "backbone_checkpoint": os.path.relpath(backbone, directory),
        "train_images": num_train,
        "splits": splits,
    }


def _remove_stale_partials(cache_dir):
    """Removes `.partial-<pid>-*` folders of processes that no longer run."""
    for path in glob.glob(os.path.join(cache_dir, _PARTIAL_PREFIX + "*")):
        pid = os.path.basename(path)[len(_PARTIAL_PREFIX) :].split("-")[0]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def _install(partial, cache_dir, manifest):
    """Replaces the cache by the complete one in `partial`; manifest last."""
    manifest_path = os.path.join(cache_dir, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    for split in SPLITS:
        for old in glob.glob(os.path.join(cache_dir, f"{split}-*-of-*.tfrecord")):
            os.remove(old)
    backbone = os.path.join(cache_dir, cache_reader.BACKBONE_DIR)
    shutil.rmtree(backbone, ignore_errors=True)
    for shard in (s for n in SPLITS for s in manifest["splits"][n]["shards"]):
        os.replace(
            os.path.join(partial, shard["file"]), os.path.join(cache_dir, shard["file"])
        )
    os.replace(os.path.join(partial, cache_reader.BACKBONE_DIR), backbone)
    file_io.write_json(manifest_path, manifest, indent=1)


def build_cache(
    search_dir,
    *,
    dataset_dir,
    train_split,
    val_split,
    model_options,
    checkpoint=None,
    cache_copies,
    ignore_label,
    seed,
    overwrite=False,
    progress=True,
    batch_size=8,
    max_shard_bytes=DEFAULT_SHARD_BYTES,
):
    """Runs the proxy backbone once and caches its features (or reuses them).

    The train split gives `cache_copies` augmented crops per image: the
    number of images is counted by reading the split's records once (exact
    for any data set, where the registry's sizes describe only the canonical
    files), and the training pipeline, which shuffles within each epoch and
    then repeats, yields exactly `cache_copies` epochs, i.e. every image
    `cache_copies` times with different augmentations. The val split is read
    once, padded to the crop.

    Args:
      search_dir: str; the cache goes to `<search_dir>/cache/`.
      dataset_dir, train_split, val_split: the TFRecord shards.
      model_options: `deeplab.ModelOptions` of the proxy model (variant,
        depth multiplier, crop = the train crop, output stride, num_classes,
        `backbone_weights` used when there is no `checkpoint`).
      checkpoint: a training-program checkpoint (prefix or dir: its latest)
        whose backbone weights are used, or None.
      cache_copies: int >= 1, augmented copies of every training image.
      ignore_label: int.
      seed: int, seeds the augmentation and (via
        `tf.keras.utils.set_random_seed`, a global effect) a random
        initialisation.
      overwrite: bool, replace a cache made with other settings.
      progress: bool, show progress bars.
      batch_size: int, images per backbone call.
      max_shard_bytes: int, the largest shard's approximate size.

    Returns:
      A `CacheInfo` (its `reused` says whether the cache was already there).

    Raises:
      CacheSettingsError: the cache exists with other settings, listed, and
        `overwrite` is False.
      CorruptCacheError: a reused cache's shard is missing or of another size.
      FileNotFoundError: no shards of a split, or no checkpoint there.
      ValueError: bad arguments, an image larger than the crop in the val
        split, labels outside the classes, or features that overflow float16.
    """
    for name, value in (
        ("cache_copies", cache_copies),
        ("batch_size", batch_size),
        ("max_shard_bytes", max_shard_bytes),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if checkpoint:
        checkpoint = trainer.resolve_initial_checkpoint(checkpoint)
    settings = _settings(
        model_options,
        checkpoint,
        dataset_dir,
        train_split,
        val_split,
        cache_copies=cache_copies,
        seed=seed,
        ignore_label=ignore_label,
    )
    cache_dir = os.path.join(search_dir, CACHE_DIR)
    existing = cache_reader.read_manifest(cache_dir)
    if existing is not None:
        differences = _differences(existing["settings"], settings)
        if not differences:
            info = CacheInfo(cache_dir, existing, reused=True)
            verify(info, checksums=False)
            logging.info("Reusing the feature cache in %s (same settings).", cache_dir)
            return info
        if not overwrite:
            raise CacheSettingsError(
                f"{cache_dir} holds a feature cache made with other settings ("
                + "; ".join(differences)
                + "); use another search dir or rebuild it with overwrite "
                "(--overwrite)"
            )
    os.makedirs(cache_dir, exist_ok=True)
    _remove_stale_partials(cache_dir)
    partial = tempfile.mkdtemp(prefix=f"{_PARTIAL_PREFIX}{os.getpid()}-", dir=cache_dir)
    try:
        manifest = _write_cache(
            partial,
            settings,
            model_options,
            checkpoint,
            batch_size,
            max_shard_bytes,
            progress,
        )
        _install(partial, cache_dir, manifest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    info = CacheInfo(cache_dir, manifest)
    logging.info(
        "Feature cache %s: %d train crops (%d images x %d copies), %d val crops, "
        "features %s float16, %d shards, %d bytes.",
        cache_dir,
        info.count("train"),
        manifest["train_images"],
        cache_copies,
        info.count("val"),
        info.feature_shape,
        len(info.shards()),
        info.size_bytes,
    )
    return info

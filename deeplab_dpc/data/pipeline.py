"""The tf.data input pipeline: DeepLab TFRecords to batched dicts.

`make_dataset` reads the shards of a split (`<split>-*` in `dataset_dir`),
decodes them with `tfexample.decode_example` and preprocesses them with
`augment`:

* training: files sharded (see below) and shuffled, read by a parallel
  interleave, a shuffle buffer, `repeat()`, DeepLab's augmentation in a
  parallel map, batches of fixed size (`drop_remainder=True`), prefetch.
  Records without labels fail with a clear error.
* evaluation / visualisation: files in sorted (shard) order, read one after
  the other, no shuffle, no repeat, every example exactly once (the last
  batch may be smaller); images padded to the crop.

Batches are dicts keyed by the constants below: `IMAGE` float32
`[batch, crop_h, crop_w, 3]` in [0, 255] (the model normalises) and `LABEL`
int32 `[batch, crop_h, crop_w, 1]`, plus, in evaluation, `FILENAME`,
`ORIGINAL_HEIGHT` and `ORIGINAL_WIDTH` to cut predictions back to each image.

Distribution: with a `tf.distribute.InputContext`, `batch_size` is the global
batch and each pipeline batches `input_context.get_per_replica_batch_size`.
When a split has at least as many files as input pipelines, each pipeline
reads its own files (`shard` on the file list); otherwise every pipeline
reads all files in one fixed order (no file shuffle; the shuffle buffer
comes after the shard) and keeps every n-th record. Either way the pipelines
together see every example once per epoch. `distributed_dataset`
wraps this in `strategy.distribute_datasets_from_function`.

Determinism: with a `seed`, two training pipelines built alike yield the same
batches (seeded file and element shuffles, deterministic interleave and map,
and a stateless augmentation seed per element from
`tf.data.Dataset.random(seed)`); as for any seeded TensorFlow op, the result
also depends on the global seed (`tf.random.set_seed`). Without a seed,
training is free to trade order for speed. Evaluation is always
deterministic.
"""

import re

import tensorflow as tf

from deeplab_dpc.data import augment
from deeplab_dpc.data import tfds_source
from deeplab_dpc.data import tfexample

# Keys of the batches, defined in tfexample (decoded records) and augment
# (the original size) and collected here.
IMAGE = tfexample.IMAGE
LABEL = tfexample.LABEL
FILENAME = tfexample.FILENAME
ORIGINAL_HEIGHT = augment.ORIGINAL_HEIGHT
ORIGINAL_WIDTH = augment.ORIGINAL_WIDTH

TRAIN_KEYS = (IMAGE, LABEL)
EVAL_KEYS = (IMAGE, LABEL, FILENAME, ORIGINAL_HEIGHT, ORIGINAL_WIDTH)

# DeepLab's train.py reads with 4 readers; data_generator shuffles with 100.
DEFAULT_NUM_READERS = 4
DEFAULT_SHUFFLE_BUFFER_SIZE = 100


def _augmented(
    ds, decode, seed, pipeline_id, crop_size, ignore_label, scales, mean_pixel
):
    """Training elements: DeepLab's augmentation, `TRAIN_KEYS` only."""
    # One stateless augmentation seed per element; the pipeline id makes
    # replicas draw different augmentations.
    seeds = tf.data.Dataset.random(seed=seed).map(
        lambda r: tf.stack([r, tf.constant(pipeline_id, tf.int64)])
    )
    min_scale_factor, max_scale_factor, scale_factor_step_size = scales

    def preprocess(record, element_seed):
        element = augment.preprocess_for_train(
            decode(*record),
            element_seed,
            crop_size=crop_size,
            ignore_label=ignore_label,
            min_scale_factor=min_scale_factor,
            max_scale_factor=max_scale_factor,
            scale_factor_step_size=scale_factor_step_size,
            mean_pixel=mean_pixel,
        )
        return {key: element[key] for key in TRAIN_KEYS}

    return tf.data.Dataset.zip((ds, seeds)).map(
        preprocess, num_parallel_calls=tf.data.AUTOTUNE
    )


def _padded(ds, decode, crop_size, ignore_label, mean_pixel):
    """Evaluation elements: padded to `crop_size`, `EVAL_KEYS` only."""

    def preprocess(*record):
        element = augment.preprocess_for_eval(
            decode(*record),
            crop_size=crop_size,
            ignore_label=ignore_label,
            mean_pixel=mean_pixel,
        )
        return {key: element[key] for key in EVAL_KEYS}

    return ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)


def make_dataset(
    dataset_dir,
    split,
    *,
    crop_size,
    batch_size,
    is_training,
    ignore_label,
    min_scale_factor=0.5,
    max_scale_factor=2.0,
    scale_factor_step_size=0.25,
    mean_pixel=augment.MEAN_PIXEL,
    seed=None,
    input_context=None,
    drop_remainder=None,
    num_readers=DEFAULT_NUM_READERS,
    shuffle_buffer_size=DEFAULT_SHUFFLE_BUFFER_SIZE,
    tfds_name=None,
    num_classes=None,
):
    """A batched `tf.data.Dataset` of one split.

    Args:
      dataset_dir: str, the folder of the TFRecord shards (`--dataset_dir`);
        with `tfds_name`, TFDS's data directory (None: TFDS's default).
      split: str, the split name; its shards are `<split>-*`.
      crop_size: (height, width) ints: the random crop when training
        (`--train_crop_size`), the padded size otherwise (`--eval_crop_size`,
        which must be at least every image's size).
      batch_size: int, the batch; the global batch when `input_context` is
        given (each pipeline then batches its per-replica share).
      is_training: bool, training (augmented, shuffled, repeated) or
        evaluation/visualisation (padded, in order, once).
      ignore_label: int, fills the label's padding (255 for Cityscapes and
        PASCAL, 0 for ADE20K).
      min_scale_factor, max_scale_factor, scale_factor_step_size: the random
        scale when training (`augment.scale_factors`); unused otherwise.
      mean_pixel: 3 floats, fills the image's padding.
      seed: int or None; with a seed, training is reproducible.
      input_context: `tf.distribute.InputContext` or None.
      drop_remainder: bool or None; None means True when training (fixed
        batch shape) and False otherwise (every example once).
      num_readers: int, files read in parallel when training.
      shuffle_buffer_size: int, the element shuffle buffer when training.
      tfds_name: str or None, read `tfds:<name>` (`tfds_source.load`)
        instead of TFRecord shards; its elements are the same, and sharding
        is by element.
      num_classes: int or None; when given, every label other than
        `ignore_label` must be below it (checked per record, as the eval's
        confusion matrix checks it).

    Returns:
      A `tf.data.Dataset` of dicts: `TRAIN_KEYS` when training, `EVAL_KEYS`
      otherwise (see the module docstring for dtypes and shapes). An
      unlabeled record (test split) gets a label filled with `ignore_label`
      in evaluation.

    Raises:
      FileNotFoundError: when no shard matches `<split>-*`.
      ValueError: on bad arguments, or a global batch that the replicas
        cannot share evenly.
      tf.errors.InvalidArgumentError: while iterating, when a training record
        has no label, an evaluation image is larger than `crop_size`, a
        record has no image or not an image, or a label is out of range;
        the message names the shard and record (`read_error` turns it into
        a one-line `DataError`).
      tf.errors.DataLossError: while iterating, on a truncated or corrupt
        shard (`read_error` names it).
    """
    augment.check_crop_size(crop_size)
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(num_readers, "num_readers")
    _check_positive_int(shuffle_buffer_size, "shuffle_buffer_size")
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, int):
        raise ValueError(f"ignore_label must be an int, got {ignore_label!r}")
    scales = (min_scale_factor, max_scale_factor, scale_factor_step_size)
    if is_training:
        augment.scale_factors(*scales)
    if num_classes is not None:
        _check_positive_int(num_classes, "num_classes")
    if tfds_name is None:
        files = tfexample.split_files(dataset_dir, split)
        decode = tfexample.decode_checked_example
    else:
        files = []
        decode = _already_decoded
    if num_classes is not None:
        decode = _label_checked(decode, num_classes, ignore_label)

    num_pipelines, pipeline_id = 1, 0
    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    shard_by_file = num_pipelines > 1 and len(files) >= num_pipelines
    shard_by_element = num_pipelines > 1 and not shard_by_file
    deterministic = seed is not None or not is_training
    if drop_remainder is None:
        drop_remainder = bool(is_training)

    if tfds_name is not None:
        source = tf.constant(f"tfds:{tfds_name} {split}")
        ds = (
            tfds_source.load(tfds_name, split, dataset_dir)
            .enumerate()
            .map(lambda index, element: (element, source, index))
        )
    else:
        ds = _read_records(
            files,
            shard_by_file,
            shard_by_element,
            is_training,
            num_pipelines,
            pipeline_id,
            seed,
            num_readers,
            deterministic,
        )
    if shard_by_element:
        ds = ds.shard(num_pipelines, pipeline_id)

    if is_training:
        ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
        ds = _augmented(
            ds.repeat(),
            decode,
            seed,
            pipeline_id,
            crop_size,
            ignore_label,
            scales,
            mean_pixel,
        )
    else:
        ds = _padded(ds, decode, crop_size, ignore_label, mean_pixel)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options)


def _already_decoded(element, source, index):
    del source, index
    return element


def _label_checked(decode, num_classes, ignore_label):
    """`decode` that also checks the labels against `num_classes`."""

    def decode_and_check(serialized, source, index):
        element = decode(serialized, source, index)
        label = tf.cast(element[tfexample.LABEL], tf.int32)
        bad = tf.logical_and(label >= num_classes, label != ignore_label)
        bad = tf.logical_or(bad, label < 0)
        worst = tf.reduce_max(tf.where(bad, label, tf.zeros_like(label)))
        message = tf.strings.join(
            [
                tfexample.record_message(
                    source, index, tf.constant("label ", tf.string)
                ),
                tf.strings.as_string(worst),
                f" >= num_classes ({num_classes}) and not the ignore label "
                f"({ignore_label}) in ",
                element[tfexample.FILENAME],
                ": check --num_classes / --dataset and the converter",
            ]
        )
        with tf.control_dependencies(
            [tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message])]
        ):
            element[tfexample.LABEL] = tf.identity(element[tfexample.LABEL])
        return element

    return decode_and_check


def _tagged_records(path):
    """(serialized, path, index) of every record of one shard."""
    return (
        tf.data.TFRecordDataset(path)
        .enumerate()
        .map(lambda index, serialized: (serialized, path, index))
    )


def _read_records(
    files,
    shard_by_file,
    shard_by_element,
    is_training,
    num_pipelines,
    pipeline_id,
    seed,
    num_readers,
    deterministic,
):
    """Serialized records of the shard files, sharded by file if asked."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shard_by_file:
        ds = ds.shard(num_pipelines, pipeline_id)
    if not is_training:
        return ds.flat_map(_tagged_records)
    # Sharding by element keeps every n-th record of one fixed order, so
    # every pipeline must read the files in the same order.
    if not shard_by_element:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return ds.interleave(
        _tagged_records,
        cycle_length=min(num_readers, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic or shard_by_element,
    )


def distributed_dataset(strategy, dataset_dir, split, *, global_batch_size, **kwargs):
    """`make_dataset` for every input pipeline of a `tf.distribute` strategy.

    Args:
      strategy: a `tf.distribute.Strategy`.
      dataset_dir, split: as `make_dataset`.
      global_batch_size: int, the batch summed over replicas; each replica
        gets `global_batch_size / strategy.num_replicas_in_sync`.
      **kwargs: every other keyword argument of `make_dataset` (not
        `batch_size` nor `input_context`).

    Returns:
      A `tf.distribute.DistributedDataset` of per-replica batch dicts.

    Raises:
      TypeError: when `kwargs` holds `batch_size` or `input_context`.
      ValueError, FileNotFoundError: as `make_dataset`.
    """
    for key in ("batch_size", "input_context"):
        if key in kwargs:
            raise TypeError(
                f"distributed_dataset sets {key} itself; pass global_batch_size"
            )

    def dataset_fn(input_context):
        return make_dataset(
            dataset_dir,
            split,
            batch_size=global_batch_size,
            input_context=input_context,
            **kwargs,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


def _check_positive_int(value, name):
    """Raises ValueError naming `name` unless `value` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class DataError(ValueError):
    """A record or shard of a data set is unusable; one line naming it."""


_ASSERTION = re.compile(r"assertion failed: \[(.*?)\]\s*(\[\[|$)", re.S)


def read_error(error, dataset_dir, split):
    """A one-line `DataError` for an error raised while reading a split.

    Args:
      error: the `tf.errors.OpError` iterating a `make_dataset` dataset
        raised.
      dataset_dir, split: what the dataset reads (to find a corrupt shard).

    Returns:
      `DataError` naming the shard file and record when the error is one of
      the pipeline's checks or a truncated/corrupt shard; otherwise naming
      the split and folder, with TensorFlow's first line.
    """
    text = error.message or str(error)
    match = _ASSERTION.search(text)
    if match:
        found = re.sub(r"\\(['\"])", r"\1", match.group(1)).replace("] [", " ")
        return DataError(found.strip())
    if isinstance(error, (tf.errors.DataLossError, tf.errors.OutOfRangeError)):
        try:
            files = tfexample.split_files(dataset_dir, split)
        except (FileNotFoundError, tf.errors.OpError):
            files = []
        found = tfexample.find_unreadable_shard(files)
        if found:
            path, count, message = found
            return DataError(
                f"{path}: not a valid TFRecord file after {count} record(s) "
                f"(truncated or corrupt: {_first_line(message)})"
            )
    return DataError(
        f"reading split {split!r} of {dataset_dir}: {_first_line(text)}"
    )


def _first_line(text):
    """TensorFlow's message without its function-node prefix and op suffix."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = text.split("\n")[0]
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text).strip()

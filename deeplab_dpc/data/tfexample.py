"""DeepLab's tf.Example format for segmentation, encoding and decoding.

The feature keys and shard names are exactly those of DeepLab's
`build_data.py`, so TFRecords written by DeepLab's own converters load
unchanged, and files written here load in DeepLab.
"""

import os

import numpy as np
import tensorflow as tf

IMAGE_ENCODED = "image/encoded"
IMAGE_FILENAME = "image/filename"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_CHANNELS = "image/channels"
LABEL_ENCODED = "image/segmentation/class/encoded"
LABEL_FORMAT = "image/segmentation/class/format"

# Keys of decoded elements (dicts, not tuples).
IMAGE = "image"
LABEL = "label"
FILENAME = "filename"
HEIGHT = "height"
WIDTH = "width"

FEATURES = {
    IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=""),
    IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string, default_value=""),
    IMAGE_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="jpeg"),
    IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64, default_value=0),
    IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64, default_value=0),
    LABEL_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=""),
    LABEL_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="png"),
}


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_example(
    image_data, filename, height, width, label_data=None, image_format="jpeg"
):
    """A `tf.train.Example` with DeepLab's keys.

    Args:
      image_data: bytes, the encoded image (JPEG or PNG).
      filename: str, the image's name (DeepLab stores the base name).
      height, width: ints, the image size.
      label_data: bytes or None, the encoded PNG label; None for a test split
        (the record then carries no label feature).
      image_format: str, "jpeg" or "png".

    Returns:
      A `tf.train.Example`.
    """
    feature = {
        IMAGE_ENCODED: _bytes(image_data),
        IMAGE_FILENAME: _bytes(filename.encode("utf-8")),
        IMAGE_FORMAT: _bytes(image_format.encode("utf-8")),
        IMAGE_HEIGHT: _int64(height),
        IMAGE_WIDTH: _int64(width),
        IMAGE_CHANNELS: _int64(3),
    }
    if label_data is not None:
        feature[LABEL_ENCODED] = _bytes(label_data)
        feature[LABEL_FORMAT] = _bytes(b"png")
    return tf.train.Example(features=tf.train.Features(feature=feature))


def decode_example(serialized):
    """Parses and decodes one serialized example (graph-compatible).

    Args:
      serialized: scalar string tensor.

    Returns:
      dict with `IMAGE` (uint8 `[h, w, 3]`), `LABEL` (uint8 `[h, w, 1]`, or
      `[0, 0, 1]` when the record has no label), `FILENAME`, `HEIGHT`,
      `WIDTH` (int32 scalars).
    """
    return _decode_parsed(tf.io.parse_single_example(serialized, FEATURES))


# The first bytes of the image formats `tf.io.decode_image` reads.
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def decode_checked_example(serialized, source, index):
    """`decode_example` that names the record it cannot decode.

    Args:
      serialized: scalar string tensor.
      source: scalar string tensor, the shard file (or data set) it came from.
      index: int64 scalar tensor, the record's position in `source`.

    Returns:
      `decode_example`'s dict.

    Raises:
      tf.errors.InvalidArgumentError: while iterating, when the record has
        no `image/encoded` or it is not a JPEG, PNG, GIF or BMP image; the
        message names `source` and the record (`record_message`).
    """
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    data = parsed[IMAGE_ENCODED]
    # An empty one fails the first check, not this one.
    is_image = tf.reduce_any(
        [tf.strings.length(data) == 0]
        + [tf.strings.substr(data, 0, len(s)) == s for s in _IMAGE_SIGNATURES]
    )
    checks = [
        tf.debugging.Assert(
            tf.strings.length(data) > 0,
            [record_message(source, index, f"has no '{IMAGE_ENCODED}'")],
        ),
        tf.debugging.Assert(
            is_image,
            [
                record_message(
                    source,
                    index,
                    f"'{IMAGE_ENCODED}' is not a JPEG, PNG, GIF or BMP image",
                )
            ],
        ),
    ]
    with tf.control_dependencies(checks):
        parsed[IMAGE_ENCODED] = tf.identity(data)
    return _decode_parsed(parsed)


def record_message(source, index, what):
    """A string tensor `"<source>: record <index>: <what>"` for assertions."""
    return tf.strings.join(
        [source, ": record ", tf.strings.as_string(index), ": ", what]
    )


def _decode_parsed(parsed):
    image = tf.io.decode_image(
        parsed[IMAGE_ENCODED], channels=3, expand_animations=False
    )
    has_label = tf.strings.length(parsed[LABEL_ENCODED]) > 0
    label = tf.cond(
        has_label,
        lambda: tf.io.decode_png(parsed[LABEL_ENCODED], channels=1),
        lambda: tf.zeros([0, 0, 1], tf.uint8),
    )
    image.set_shape([None, None, 3])
    label.set_shape([None, None, 1])
    shape = tf.shape(image)
    return {
        IMAGE: image,
        LABEL: label,
        FILENAME: parsed[IMAGE_FILENAME],
        HEIGHT: shape[0],
        WIDTH: shape[1],
    }


def shard_name(split, index, num_shards):
    """DeepLab's shard name: `<split>-%05d-of-%05d.tfrecord`."""
    return "%s-%05d-of-%05d.tfrecord" % (split, index, num_shards)


def split_files(dataset_dir, split):
    """The shards of a split, sorted: DeepLab readers glob `<split>-*`.

    Raises:
      FileNotFoundError: naming the directory and pattern when none match.
    """
    pattern = os.path.join(dataset_dir, f"{split}-*")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"no TFRecord shards match {pattern!r}: check --dataset_dir and the "
            f"split name"
        )
    return files


def count_records(dataset_dir, split, limit=0):
    """The number of examples in a split's shards, at most `limit` (0: all).

    Raises:
      FileNotFoundError: as `split_files`, when the split has no shard.
    """
    records = tf.data.TFRecordDataset(split_files(dataset_dir, split))
    if limit:
        records = records.take(limit)
    return int(records.reduce(np.int64(0), lambda n, _: n + 1))


def encode_png(array):
    """PNG bytes of a uint8 `[h, w]` or `[h, w, c]` array."""
    array = np.asarray(array, np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    return tf.io.encode_png(array).numpy()


def encode_jpeg(array, quality=95):
    """JPEG bytes of a uint8 `[h, w, 3]` array."""
    return tf.io.encode_jpeg(np.asarray(array, np.uint8), quality=quality).numpy()


def find_unreadable_shard(files):
    """The first shard that is not a valid TFRecord file, for error messages.

    Reads every record of `files` in order (only call it after a read
    failed: it costs a pass over the files).

    Returns:
      (path, number of records read before the failure, TensorFlow's
      message), or None when every file reads to its end.
    """
    for path in files:
        count = 0
        try:
            for _ in tf.data.TFRecordDataset(path):
                count += 1
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
            return path, count, e.message
    return None

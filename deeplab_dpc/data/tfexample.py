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
    parsed = tf.io.parse_single_example(serialized, FEATURES)
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


def encode_png(array):
    """PNG bytes of a uint8 `[h, w]` or `[h, w, c]` array."""
    array = np.asarray(array, np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    return tf.io.encode_png(array).numpy()


def encode_jpeg(array, quality=95):
    """JPEG bytes of a uint8 `[h, w, 3]` array."""
    return tf.io.encode_jpeg(np.asarray(array, np.uint8), quality=quality).numpy()

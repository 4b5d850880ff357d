"""Bilinear resizing with DeepLab's corner alignment."""

import tensorflow as tf


def resize_bilinear(images, size):
    """`tf.compat.v1.image.resize_bilinear(..., align_corners=True)`.

    DeepLab resizes every feature map and its logits this way; the op maps to
    TFLite's RESIZE_BILINEAR with `align_corners`.

    Args:
      images: `[batch, height, width, channels]` tensor.
      size: (int, int), the output height and width.

    Returns:
      `[batch, size[0], size[1], channels]` tensor: of the input's dtype for
      float inputs (bfloat16 and float16 under mixed precision, where the op
      itself returns float32), float32 for others (e.g. uint8 images).
    """
    images = tf.convert_to_tensor(images)
    resized = tf.raw_ops.ResizeBilinear(
        images=images,
        size=tf.convert_to_tensor(size, tf.int32),
        align_corners=True,
        half_pixel_centers=False,
    )
    if images.dtype.is_floating and images.dtype != resized.dtype:
        resized = tf.cast(resized, images.dtype)
    return resized


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class ResizeBilinear(tf.keras.layers.Layer):
    """Resizes feature maps or logits to a fixed size (align_corners=True).

    Args:
      size: (int, int), output height and width.
      **kwargs: forwarded to `tf.keras.layers.Layer`.

    Call: `[batch, h, w, c]` -> `[batch, size[0], size[1], c]`.

    Example:
    >>> ResizeBilinear((33, 33))(tf.zeros([1, 17, 17, 4])).shape
    TensorShape([1, 33, 33, 4])
    """

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(int(s) for s in size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(
                f"{self.name}: size must be two positive ints, got " f"{size}"
            )

    def call(self, inputs):
        return resize_bilinear(inputs, self.size)

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        return tf.TensorShape([input_shape[0], *self.size, input_shape[-1]])

    def get_config(self):
        return {**super().get_config(), "size": self.size}

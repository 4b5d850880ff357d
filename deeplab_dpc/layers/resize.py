"""Bilinear resizing with DeepLab's corner alignment."""

import numpy as np
import tensorflow as tf

from deeplab_dpc.layers import fast_paths


def resize_bilinear(images, size, *, strided_gradient=False, layer_name=None):
    """`tf.compat.v1.image.resize_bilinear(..., align_corners=True)`.

    DeepLab resizes every feature map and its logits this way; the op maps to
    TFLite's RESIZE_BILINEAR with `align_corners`.

    Args:
      images: `[batch, height, width, channels]` tensor.
      size: (int, int), the output height and width.
      strided_gradient: bool. When True, a float32 upsampling by whole
        factors (`(out - 1) = factor * (in - 1)` on both axes, as DeepLab's
        crops `output_stride * k + 1` give) back-propagates as one strided
        depthwise convolution with the bilinear "tent" kernel
        (`upsampling_gradient`) instead of TensorFlow's `ResizeBilinearGrad`:
        the same gradient within float32 rounding, several times faster on
        the CPU, where the logits' gradient at crop size is a large tensor.
        The forward op is unchanged either way; other sizes and dtypes keep
        TensorFlow's gradient. Training layers set it; exported graphs do not
        (`tf.custom_gradient` adds an `IdentityN` to the graph). Taken only
        where `fast_paths.available(STRIDED_UPSAMPLING_GRADIENT, factors)`:
        TensorFlow's own CPU depthwise kernel (oneDNN off) takes only equal
        strides on both axes.
      layer_name: str or None, the calling layer, for `fast_paths.record`.

    Returns:
      `[batch, size[0], size[1], channels]` tensor: of the input's dtype for
      float inputs (bfloat16 and float16 under mixed precision, where the op
      itself returns float32), float32 for others (e.g. uint8 images).
    """
    images = tf.convert_to_tensor(images)
    if strided_gradient and images.dtype == tf.float32:
        factors = upsampling_factors(images.shape[1:3], size)
        if factors is not None and factors != (1, 1):
            fast = bool(
                fast_paths.available(fast_paths.STRIDED_UPSAMPLING_GRADIENT, factors)
            )
            if layer_name:
                fast_paths.record(
                    layer_name, fast_paths.STRIDED_UPSAMPLING_GRADIENT, fast
                )
            if fast:
                return _upsample_with_strided_gradient(images, size, factors)
    return _resize(images, size)


def _resize(images, size):
    resized = tf.raw_ops.ResizeBilinear(
        images=images,
        size=tf.convert_to_tensor(size, tf.int32),
        align_corners=True,
        half_pixel_centers=False,
    )
    if images.dtype.is_floating and images.dtype != resized.dtype:
        resized = tf.cast(resized, images.dtype)
    return resized


def upsampling_factors(input_size, output_size):
    """Whole upsampling factors of an align-corners resize, or None.

    Args:
      input_size, output_size: (height, width); entries may be None
        (unknown) or tensors.

    Returns:
      (int, int) with `out - 1 == factor * (in - 1)` on each axis (factor 1
      for equal sizes), or None when a size is unknown or an axis shrinks,
      grows from a single pixel, or grows by a fraction.
    """
    factors = []
    for n, m in zip(input_size, output_size):
        n, m = tf.get_static_value(n), tf.get_static_value(m)
        if n is None or m is None:
            return None
        n, m = int(n), int(m)
        if n == m:
            factors.append(1)
        elif n > 1 and m > n and (m - 1) % (n - 1) == 0:
            factors.append((m - 1) // (n - 1))
        else:
            return None
    return tuple(factors)


def tent_kernel(factors, channels, dtype=tf.float32):
    """The depthwise kernel of an align-corners upsampling by `factors`.

    Upsampling by a whole factor f with aligned corners places input pixel i
    at output `f * i` and weighs it `1 - |d| / f` at distance `|d| < f`: a
    "tent" of `2f - 1` taps per axis, separable.

    Returns:
      `[2 fh - 1, 2 fw - 1, channels, 1]` tensor.
    """
    taps = [
        1.0 - tf.abs(tf.range(1 - f, f, dtype=dtype)) / tf.cast(f, dtype)
        for f in factors
    ]
    kernel = taps[0][:, tf.newaxis] * taps[1][tf.newaxis, :]
    return tf.tile(kernel[:, :, tf.newaxis, tf.newaxis], [1, 1, channels, 1])


def upsampling_gradient(grads, factors):
    """The gradient of an align-corners upsampling by whole `factors`.

    The adjoint of the upsampling: each input pixel collects the output
    gradients within its tent (`tent_kernel`), a depthwise convolution with
    stride `factors` and SAME padding (`f - 1` pixels each side), which maps
    `(n - 1) * f + 1` pixels back to n.

    Args:
      grads: `[batch, out_height, out_width, channels]` float32.
      factors: (int, int).

    Returns:
      `[batch, in_height, in_width, channels]`.
    """
    channels = grads.shape[-1]
    if channels is None:
        channels = tf.shape(grads)[-1]
    kernel = tent_kernel(factors, channels, grads.dtype)
    return tf.nn.depthwise_conv2d(grads, kernel, [1, *factors, 1], "SAME")


def _upsample_with_strided_gradient(images, size, factors):
    @tf.custom_gradient
    def upsample(x):
        def grad(dy):
            return upsampling_gradient(dy, factors)

        return _resize(x, size), grad

    return upsample(images)


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

    def call(self, inputs, training=None):
        # In training the upsampling back-propagates as a strided depthwise
        # convolution (see `resize_bilinear`); inference graphs keep the
        # plain op for export.
        return resize_bilinear(
            inputs,
            self.size,
            strided_gradient=training is True,
            layer_name=fast_paths.layer_key(self),
        )

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        return tf.TensorShape([input_shape[0], *self.size, input_shape[-1]])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def _probe_strided_gradient(key):
    """Probe of `fast_paths.STRIDED_UPSAMPLING_GRADIENT` for factors `key`."""
    factors = tuple(key) if key else (2, 2)
    n = (3, 3)
    size = tuple((a - 1) * f + 1 for a, f in zip(n, factors))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal([1, *n, 2]), tf.float32)
    dy = tf.constant(rng.standard_normal([1, *size, 2]), tf.float32)
    fast = upsampling_gradient(dy, factors)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = resize_bilinear(x, size)
    slow = tape.gradient(y, x, output_gradients=dy)
    fast_paths.check_close(fast, slow, f"factors {factors}")


fast_paths.register_probe(
    fast_paths.STRIDED_UPSAMPLING_GRADIENT, _probe_strided_gradient
)

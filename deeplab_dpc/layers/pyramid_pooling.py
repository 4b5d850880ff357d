"""Average spatial pyramid pooling, the third op family of the DPC space."""

import tensorflow as tf

from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import fast_paths
from deeplab_dpc.layers import resize


def scale_dimension(dim, scale):
    """DeepLab's `scale_dimension`: `int((dim - 1) * scale + 1)`."""
    return int((dim - 1) * scale + 1)


def feature_size(crop_size, output_stride):
    """The backbone feature size for a crop: `(crop - 1) / OS + 1` per side."""
    return tuple(scale_dimension(d, 1.0 / output_stride) for d in crop_size)


def check_feature_size(layer_name, input_shape, crop_size, output_stride):
    """Raises unless a head's input has the feature size of its crop.

    Heads are built for one crop (DeepLab fixes the pooling geometry by it);
    images of other sizes are padded or resized to the crop before the model.

    Raises:
      ValueError: naming the layer, the crop and the sizes.
    """
    expected = feature_size(crop_size, output_stride)
    spatial = tuple(tf.TensorShape(input_shape)[1:3])
    if None not in spatial and spatial != expected:
        raise ValueError(
            f"{layer_name}: built for crop {tuple(crop_size)} at output stride "
            f"{output_stride}, i.e. {expected} features, but got {spatial} "
            f"features; pad or resize the image to the crop first"
        )


def pooling_geometry(crop_size, output_stride, grid, pooling_crop_size=None):
    """DeepLab's pyramid pooling arguments.

    Args:
      crop_size: (int, int), the crop the model is built for.
      output_stride: int, output stride of the features.
      grid: (int, int), the pooling grid (g_h, g_w).
      pooling_crop_size: (int, int) or None, DeepLab's
        `image_pooling_crop_size`; defaults to `crop_size`.

    Returns:
      (target_size, kernel_size), each an (int, int) tuple: the pooled map is
      resized to `target_size`, and the average pool uses `kernel_size` with
      stride 1 and VALID padding.

    Raises:
      ValueError: if the kernel would be larger than the feature map.
    """
    pooling_crop_size = pooling_crop_size or crop_size
    target = feature_size(crop_size, output_stride)
    kernel = tuple(
        scale_dimension(d, 1.0 / (output_stride * g))
        for d, g in zip(pooling_crop_size, grid)
    )
    if any(k > t for k, t in zip(kernel, target)) or min(kernel) < 1:
        raise ValueError(
            f"pyramid pooling grid {tuple(grid)} at image_pooling_crop_size "
            f"{tuple(pooling_crop_size)} needs a {kernel} pooling kernel, which "
            f"does not fit the {target} feature map of crop {tuple(crop_size)} at "
            f"output stride {output_stride}"
        )
    return target, kernel


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class PyramidPooling(tf.keras.layers.Layer):
    """avg_pool(kernel, stride 1, VALID) -> 1x1 conv -> BN -> ReLU -> resize.

    Kernel and target size are fixed by the crop the model is built for, as in
    DeepLab (`pooling_geometry`); inputs of other sizes are padded or resized to
    that crop before the model. Grid (1, 1) is ASPP's image-level feature.

    Args:
      grid: (int, int), the pooling grid (g_h, g_w).
      crop_size: (int, int), the crop the model is built for.
      output_stride: int, output stride of the input features.
      pooling_crop_size: (int, int) or None, DeepLab's `image_pooling_crop_size`.
      filters: int, channels of the 1x1 conv.
      weight_decay, norm_momentum, norm_epsilon, synchronized: as `ConvBN`.
      **kwargs: forwarded to `tf.keras.layers.Layer`.

    Call: `[batch, fh, fw, c]` -> `[batch, fh, fw, filters]`, where (fh, fw) is
    `feature_size(crop_size, output_stride)`.

    Raises:
      ValueError: at build, if the input's spatial size is not (fh, fw).

    Example:
    >>> layer = PyramidPooling((2, 2), crop_size=(513, 513), output_stride=16)
    >>> layer(tf.zeros([1, 33, 33, 8])).shape
    TensorShape([1, 33, 33, 256])
    """

    def __init__(
        self,
        grid,
        crop_size,
        output_stride,
        pooling_crop_size=None,
        filters=256,
        weight_decay=0.0,
        norm_momentum=conv_bn.NORM_MOMENTUM,
        norm_epsilon=conv_bn.NORM_EPSILON,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.grid = tuple(int(g) for g in grid)
        self.crop_size = tuple(int(c) for c in crop_size)
        self.output_stride = int(output_stride)
        self.pooling_crop_size = (
            tuple(int(c) for c in pooling_crop_size) if pooling_crop_size else None
        )
        self.filters = int(filters)
        self.weight_decay = float(weight_decay)
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.synchronized = synchronized
        self.target_size, self.kernel_size = pooling_geometry(
            self.crop_size, self.output_stride, self.grid, self.pooling_crop_size
        )
        self.conv = conv_bn.ConvBN(
            self.filters,
            1,
            weight_decay=weight_decay,
            norm_momentum=norm_momentum,
            norm_epsilon=norm_epsilon,
            synchronized=synchronized,
            name="conv",
        )

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        check_feature_size(self.name, input_shape, self.crop_size, self.output_stride)
        pooled = [
            input_shape[0],
            *(t - k + 1 for t, k in zip(self.target_size, self.kernel_size)),
            input_shape[-1],
        ]
        self.conv.build(tf.TensorShape(pooled))
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = tf.nn.avg_pool2d(inputs, ksize=self.kernel_size, strides=1, padding="VALID")
        x = self.conv(x, training=training)
        return resize.resize_bilinear(
            x,
            self.target_size,
            strided_gradient=training is True,
            layer_name=fast_paths.layer_key(self),
        )

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        return tf.TensorShape([input_shape[0], *self.target_size, self.filters])

    def get_config(self):
        return {
            **super().get_config(),
            "grid": self.grid,
            "crop_size": self.crop_size,
            "output_stride": self.output_stride,
            "pooling_crop_size": self.pooling_crop_size,
            "filters": self.filters,
            "weight_decay": self.weight_decay,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "synchronized": self.synchronized,
        }

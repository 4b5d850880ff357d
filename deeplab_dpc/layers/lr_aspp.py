"""DeepLab's ASPP with squeeze-and-excitation: MobileNet-v3's LR-ASPP head."""

import tensorflow as tf

from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import hard_activation
from deeplab_dpc.layers import pyramid_pooling
from deeplab_dpc.layers import resize


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class LRASPP(tf.keras.layers.Layer):
    """DeepLab's ASPP under `--aspp_with_squeeze_and_excitation`.

    What DeepLab's `model.py` builds with the MobileNet-v3 model-zoo flags
    (`--aspp_with_squeeze_and_excitation --aspp_with_concat_projection=0
    --add_image_level_feature`, no atrous rates): the features go through
    `aspp0`, a 1x1 conv -> BN -> ReLU of `filters` channels, gated by the
    image-level feature: average pooling of the kernel
    `scale_dimension(pooling_crop, 1 / OS)` at `pooling_stride`, VALID; a
    1x1 conv with bias (`image_pooling`, no BN) -> hard sigmoid
    `relu6(x + 3) * 0.16667` (`use_qsigmoid`) or sigmoid; resized bilinearly
    (align_corners) to the feature size. No concat projection, no dropout.

    Args:
      crop_size: (int, int), the crop the model is built for.
      output_stride: int, output stride of the input features.
      filters: int, DeepLab's `--aspp_convs_filters`.
      pooling_crop_size: (int, int) or None (the crop), DeepLab's
        `--image_pooling_crop_size`.
      pooling_stride: (int, int), DeepLab's `--image_pooling_stride`.
      use_qsigmoid: bool, DeepLab's `--image_se_uses_qsigmoid`.
      weight_decay, norm_momentum, norm_epsilon, synchronized: as `ConvBN`.
      **kwargs: forwarded to `tf.keras.layers.Layer`.

    Call: `[batch, fh, fw, c]` -> `[batch, fh, fw, filters]`.

    Raises:
      ValueError: when the pooling kernel exceeds the features (a crop
        smaller than the pooling crop).

    Example:
    >>> head = LRASPP((1025, 2049), 32, 128, (769, 769), (4, 5), True)
    >>> head(tf.zeros([1, 33, 65, 480])).shape
    TensorShape([1, 33, 65, 128])
    """

    def __init__(
        self,
        crop_size,
        output_stride,
        filters=256,
        pooling_crop_size=None,
        pooling_stride=(1, 1),
        use_qsigmoid=False,
        weight_decay=0.0,
        norm_momentum=conv_bn.NORM_MOMENTUM,
        norm_epsilon=conv_bn.NORM_EPSILON,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.crop_size = tuple(int(c) for c in crop_size)
        self.output_stride = int(output_stride)
        self.filters = int(filters)
        self.pooling_crop_size = (
            tuple(int(c) for c in pooling_crop_size) if pooling_crop_size else None
        )
        self.pooling_stride = tuple(int(s) for s in pooling_stride)
        self.use_qsigmoid = bool(use_qsigmoid)
        self.weight_decay = float(weight_decay)
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.synchronized = synchronized
        self.pool_size = pyramid_pooling.feature_size(
            self.pooling_crop_size or self.crop_size, self.output_stride
        )
        self.feature_size = pyramid_pooling.feature_size(
            self.crop_size, self.output_stride
        )
        if any(p > f for p, f in zip(self.pool_size, self.feature_size)):
            raise ValueError(
                f"{self.name}: the image pooling kernel {self.pool_size} (of the "
                f"pooling crop {self.pooling_crop_size}) exceeds the features "
                f"{self.feature_size} of crop {self.crop_size}: use a crop at "
                "least the --image_pooling_crop_size"
            )
        self.image_pooling = tf.keras.layers.Conv2D(
            self.filters,
            1,
            kernel_initializer=conv_bn.kernel_initializer(None),
            kernel_regularizer=conv_bn.l2_regularizer(weight_decay),
            name="image_pooling",
        )
        self.aspp0 = conv_bn.ConvBN(
            self.filters,
            1,
            weight_decay=weight_decay,
            norm_momentum=norm_momentum,
            norm_epsilon=norm_epsilon,
            synchronized=synchronized,
            name="aspp0",
        )
        # No concat projection (DeepLab's `--aspp_with_concat_projection=0`).
        self.concat_projection = None

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        pyramid_pooling.check_feature_size(
            self.name, input_shape, self.crop_size, self.output_stride
        )
        self.image_pooling.build(input_shape[:1].concatenate([1, 1, input_shape[-1]]))
        self.aspp0.build(input_shape)
        super().build(input_shape)

    def call(self, inputs, training=None):
        pooled = tf.nn.avg_pool2d(
            inputs, self.pool_size, self.pooling_stride, padding="VALID"
        )
        gate = self.image_pooling(pooled)
        if self.use_qsigmoid:
            gate = hard_activation.hard_sigmoid(gate)
        else:
            gate = tf.sigmoid(gate)
        gate = resize.resize_bilinear(gate, self.feature_size)
        return self.aspp0(inputs, training=training) * gate

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([self.filters])

    def get_config(self):
        return {
            **super().get_config(),
            "crop_size": self.crop_size,
            "output_stride": self.output_stride,
            "filters": self.filters,
            "pooling_crop_size": self.pooling_crop_size,
            "pooling_stride": self.pooling_stride,
            "use_qsigmoid": self.use_qsigmoid,
            "weight_decay": self.weight_decay,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "synchronized": self.synchronized,
        }

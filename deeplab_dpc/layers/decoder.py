"""The DeepLab v3+ decoder."""

import tensorflow as tf

from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import fast_paths
from deeplab_dpc.layers import resize
from deeplab_dpc.layers import split_separable_conv


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class Decoder(tf.keras.layers.Layer):
    """DeepLab v3+ decoder: refine the head output with a low-level feature.

    The low-level feature (stride 4) goes through a 1x1 conv to
    `low_level_filters` -> BN -> ReLU (`feature_projection0`); the head output
    is resized bilinearly (align_corners) to its size; both are concatenated
    and refined by two split separable 3x3 convs of `filters` channels
    (`decoder_conv0`, `decoder_conv1`), as DeepLab's `refine_by_decoder`.

    Args:
      filters: int, channels of the refining convs.
      low_level_filters: int, channels of the low-level projection.
      weight_decay, norm_momentum, norm_epsilon, synchronized: as `ConvBN`.
      **kwargs: forwarded to `tf.keras.layers.Layer`.

    Call: `[features, low_level]`, `[batch, fh, fw, c]` and
    `[batch, lh, lw, c_low]` -> `[batch, lh, lw, filters]`.

    Example:
    >>> decoder = Decoder()
    >>> decoder([tf.zeros([1, 9, 9, 256]), tf.zeros([1, 33, 33, 24])]).shape
    TensorShape([1, 33, 33, 256])
    """

    def __init__(
        self,
        filters=256,
        low_level_filters=48,
        weight_decay=0.0,
        norm_momentum=conv_bn.NORM_MOMENTUM,
        norm_epsilon=conv_bn.NORM_EPSILON,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.low_level_filters = int(low_level_filters)
        self.weight_decay = float(weight_decay)
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.synchronized = synchronized
        norm = dict(
            norm_momentum=norm_momentum,
            norm_epsilon=norm_epsilon,
            synchronized=synchronized,
        )
        self.feature_projection = conv_bn.ConvBN(
            self.low_level_filters,
            1,
            weight_decay=weight_decay,
            name="feature_projection0",
            **norm,
        )
        self.refine = [
            split_separable_conv.SplitSeparableConv2D(
                self.filters,
                rate=1,
                weight_decay=weight_decay,
                name=f"decoder_conv{i}",
                **norm,
            )
            for i in range(2)
        ]
        conv_bn.track_sublayers(self, self.refine)

    def build(self, input_shape):
        features_shape, low_shape = (tf.TensorShape(s) for s in input_shape)
        self.feature_projection.build(low_shape)
        shape = low_shape[:-1].concatenate(
            [features_shape[-1] + self.low_level_filters]
        )
        for layer in self.refine:
            layer.build(shape)
            shape = shape[:-1].concatenate([self.filters])
        super().build(input_shape)

    def call(self, inputs, training=None):
        features, low_level = inputs
        low = self.feature_projection(low_level, training=training)
        size = [
            d if d is not None else tf.shape(low)[i]
            for i, d in ((1, low.shape[1]), (2, low.shape[2]))
        ]
        upsampled = resize.resize_bilinear(
            features,
            size,
            strided_gradient=training is True,
            layer_name=fast_paths.layer_key(self),
        )
        x = tf.concat([upsampled, low], axis=-1)
        for layer in self.refine:
            x = layer(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        low_shape = tf.TensorShape(input_shape[1])
        return low_shape[:-1].concatenate([self.filters])

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "low_level_filters": self.low_level_filters,
            "weight_decay": self.weight_decay,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "synchronized": self.synchronized,
        }

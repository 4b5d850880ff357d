"""DeepLab's decoder that sums, whose output is the logits (LR-ASPP's)."""

import tensorflow as tf

from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import resize


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class SumMergeDecoder(tf.keras.layers.Layer):
    """DeepLab's `refine_by_decoder` with `--decoder_use_sum_merge
    --decoder_output_is_logits` (MobileNet-v3's segmentation head).

    The head's output and the low-level feature are resized bilinearly
    (align_corners) to the low-level size; the low-level feature goes
    through a 1x1 conv with bias (`feature_projection0`), the head's output
    through another (`decoder_conv0`), both of `filters` channels (the
    number of classes), no batch norm and no activation; their sum is the
    logits.

    Args:
      filters: int, DeepLab's `--decoder_filters` (= num_classes).
      weight_decay: float, L2 weight decay on the kernels.
      **kwargs: forwarded to `tf.keras.layers.Layer`.

    Call: `[features, low_level]`, `[batch, fh, fw, c]` and
    `[batch, lh, lw, c_low]` -> `[batch, lh, lw, filters]`.

    Example:
    >>> decoder = SumMergeDecoder(19)
    >>> decoder([tf.zeros([1, 5, 5, 128]), tf.zeros([1, 17, 17, 120])]).shape
    TensorShape([1, 17, 17, 19])
    """

    def __init__(self, filters, weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.weight_decay = float(weight_decay)
        common = dict(
            kernel_initializer=conv_bn.kernel_initializer(None),
            kernel_regularizer=conv_bn.l2_regularizer(weight_decay),
        )
        self.feature_projection = tf.keras.layers.Conv2D(
            self.filters, 1, name="feature_projection0", **common
        )
        self.decoder_conv = tf.keras.layers.Conv2D(
            self.filters, 1, name="decoder_conv0", **common
        )

    def build(self, input_shape):
        features_shape, low_level_shape = (tf.TensorShape(s) for s in input_shape)
        self.feature_projection.build(low_level_shape)
        self.decoder_conv.build(low_level_shape[:-1].concatenate(features_shape[-1:]))
        super().build(input_shape)

    def call(self, inputs, training=None):
        features, low_level = inputs
        size = tuple(low_level.shape[1:3])
        projected = resize.resize_bilinear(self.feature_projection(low_level), size)
        return self.decoder_conv(resize.resize_bilinear(features, size)) + projected

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape[1])[:-1].concatenate([self.filters])

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "weight_decay": self.weight_decay,
        }

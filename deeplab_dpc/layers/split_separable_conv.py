"""DeepLab's split separable convolution."""

import tensorflow as tf

from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import dilated_depthwise
from deeplab_dpc.layers import folding


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class SplitSeparableConv2D(tf.keras.layers.Layer):
    """Depthwise 3x3 (atrous) -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU.

    This is DeepLab's `split_separable_conv2d`, the "3x3 atrous separable
    convolution" of the DPC search space. Unlike `SeparableConv2D`, batch norm
    and ReLU sit between the two halves. The depthwise kernel is initialised
    with a truncated normal of stddev 0.33 and carries no weight decay; the
    pointwise kernel uses stddev 0.06 and carries the weight decay.

    Args:
      filters: int, output channels of the pointwise convolution.
      rate: int or (int, int), atrous rate (r_h, r_w) of the depthwise conv.
      kernel_size: int, depthwise kernel size.
      weight_decay: float, DeepLab's weight decay on the pointwise kernel.
      norm_momentum, norm_epsilon, synchronized: BatchNormalization settings.
      **kwargs: forwarded to `tf.keras.layers.Layer`.

    Call: `[batch, height, width, channels]` -> `[batch, height, width, filters]`.

    Example:
    >>> layer = SplitSeparableConv2D(256, rate=(6, 21))
    >>> layer(tf.zeros([1, 9, 9, 8])).shape
    TensorShape([1, 9, 9, 256])
    """

    def __init__(
        self,
        filters,
        rate=1,
        kernel_size=3,
        weight_decay=0.0,
        norm_momentum=conv_bn.NORM_MOMENTUM,
        norm_epsilon=conv_bn.NORM_EPSILON,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(rate, int):
            rate = (rate, rate)
        self.filters = int(filters)
        self.rate = tuple(int(r) for r in rate)
        self.kernel_size = int(kernel_size)
        self.weight_decay = float(weight_decay)
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.synchronized = synchronized
        if len(self.rate) != 2 or min(self.rate) < 1:
            raise ValueError(
                f"{self.name}: rate must be two positive ints, got " f"{rate}"
            )
        self.depthwise = dilated_depthwise.depthwise_class()(
            self.kernel_size,
            padding="same",
            dilation_rate=self.rate,
            use_bias=False,
            depthwise_initializer=conv_bn.kernel_initializer(0.33),
            name="depthwise",
        )
        self.depthwise_bn = conv_bn.batch_norm(
            "depthwise_bn", norm_momentum, norm_epsilon, synchronized
        )
        self.depthwise_act = tf.keras.layers.Activation("relu", name="depthwise_act")
        self.pointwise = conv_bn.ConvBN(
            self.filters,
            1,
            weight_decay=weight_decay,
            kernel_init_stddev=0.06,
            norm_momentum=norm_momentum,
            norm_epsilon=norm_epsilon,
            synchronized=synchronized,
            name="pointwise",
        )

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        self.depthwise.build(input_shape)
        self.depthwise_bn.build(input_shape)
        self.pointwise.build(input_shape)
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = self.depthwise(inputs, training=training)
        x = self.depthwise_act(self.depthwise_bn(x, training=training))
        return self.pointwise(x, training=training)

    def fold_batch_norm(self):
        """Folds both batch norms into their convs, for inference only.

        Returns:
          bool, whether anything was folded (False when done already).
        """
        depthwise = folding.fold_sublayers(self, "depthwise", "depthwise_bn")
        return self.pointwise.fold_batch_norm() or depthwise

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([self.filters])

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "rate": self.rate,
            "kernel_size": self.kernel_size,
            "weight_decay": self.weight_decay,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "synchronized": self.synchronized,
        }

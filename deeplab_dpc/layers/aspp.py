"""Atrous Spatial Pyramid Pooling (DeepLab v3 / v3+), the DPC's baseline."""

import tensorflow as tf

from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import fast_dropout
from deeplab_dpc.layers import pyramid_pooling
from deeplab_dpc.layers import split_separable_conv


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class ASPP(tf.keras.layers.Layer):
    """ASPP: image-level feature, 1x1 conv, 3x3 atrous convs, projection.

    Branch order follows DeepLab's `model.py`: image pooling (when
    `add_image_level_feature`), `aspp0` (1x1), then one 3x3 atrous conv per
    rate (`aspp1`...), split separable when `use_separable_conv`. The concat
    is projected by a 1x1 conv -> BN -> ReLU and dropped out (rate 0.1). An
    empty `atrous_rates` leaves the 1x1 branch and the image-level feature,
    as DeepLab's MobileNet-v2 models are configured. ASPP is one particular
    dense prediction cell: image pooling is the grid (1, 1) pyramid pooling op.

    Args:
      atrous_rates: sequence of ints, absolute rates (DeepLab's
        `--atrous_rates`: 6, 12, 18 at output stride 16; 12, 24, 36 at 8).
      crop_size: (int, int), the crop the model is built for.
      output_stride: int, output stride of the input features.
      use_separable_conv: bool, DeepLab's `aspp_with_separable_conv`.
      add_image_level_feature: bool, add the image pooling branch.
      pooling_crop_size: (int, int) or None, DeepLab's `image_pooling_crop_size`.
      filters: int, channels of every branch and the projection.
      dropout_rate: float, dropout after the projection.
      weight_decay, norm_momentum, norm_epsilon, synchronized: as `ConvBN`.
      **kwargs: forwarded to `tf.keras.layers.Layer`.

    Call: `[batch, fh, fw, c]` -> `[batch, fh, fw, filters]`.

    Example:
    >>> aspp = ASPP((6, 12, 18), crop_size=(513, 513), output_stride=16)
    >>> aspp(tf.zeros([1, 33, 33, 320])).shape
    TensorShape([1, 33, 33, 256])
    """

    def __init__(
        self,
        atrous_rates,
        crop_size,
        output_stride,
        use_separable_conv=True,
        add_image_level_feature=True,
        pooling_crop_size=None,
        filters=256,
        dropout_rate=0.1,
        weight_decay=0.0,
        norm_momentum=conv_bn.NORM_MOMENTUM,
        norm_epsilon=conv_bn.NORM_EPSILON,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.atrous_rates = tuple(int(r) for r in atrous_rates)
        self.crop_size = tuple(int(c) for c in crop_size)
        self.output_stride = int(output_stride)
        self.use_separable_conv = bool(use_separable_conv)
        self.add_image_level_feature = bool(add_image_level_feature)
        self.pooling_crop_size = (
            tuple(int(c) for c in pooling_crop_size) if pooling_crop_size else None
        )
        self.filters = int(filters)
        self.dropout_rate = float(dropout_rate)
        self.weight_decay = float(weight_decay)
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.synchronized = synchronized
        if any(r < 1 for r in self.atrous_rates):
            raise ValueError(
                f"{self.name}: atrous rates must be positive, got "
                f"{self.atrous_rates}"
            )
        norm = dict(
            norm_momentum=norm_momentum,
            norm_epsilon=norm_epsilon,
            synchronized=synchronized,
        )
        self.branch_layers = []
        if self.add_image_level_feature:
            self.branch_layers.append(
                pyramid_pooling.PyramidPooling(
                    (1, 1),
                    self.crop_size,
                    self.output_stride,
                    pooling_crop_size=self.pooling_crop_size,
                    filters=self.filters,
                    weight_decay=weight_decay,
                    name="image_pooling",
                    **norm,
                )
            )
        self.branch_layers.append(
            conv_bn.ConvBN(
                self.filters, 1, weight_decay=weight_decay, name="aspp0", **norm
            )
        )
        for i, rate in enumerate(self.atrous_rates, 1):
            if self.use_separable_conv:
                layer = split_separable_conv.SplitSeparableConv2D(
                    self.filters,
                    rate=rate,
                    weight_decay=weight_decay,
                    name=f"aspp{i}",
                    **norm,
                )
            else:
                layer = conv_bn.ConvBN(
                    self.filters,
                    3,
                    dilation_rate=rate,
                    weight_decay=weight_decay,
                    name=f"aspp{i}",
                    **norm,
                )
            self.branch_layers.append(layer)
        conv_bn.track_sublayers(self, self.branch_layers)
        self.concat_projection = conv_bn.ConvBN(
            self.filters, 1, weight_decay=weight_decay, name="concat_projection", **norm
        )
        self.dropout = fast_dropout.dropout_class()(
            self.dropout_rate, name="concat_projection_dropout"
        )

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        pyramid_pooling.check_feature_size(
            self.name, input_shape, self.crop_size, self.output_stride
        )
        for layer in self.branch_layers:
            layer.build(input_shape)
        self.concat_projection.build(
            input_shape[:-1].concatenate([self.filters * len(self.branch_layers)])
        )
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = tf.concat(
            [layer(inputs, training=training) for layer in self.branch_layers], axis=-1
        )
        x = self.concat_projection(x, training=training)
        return self.dropout(x, training=training)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([self.filters])

    def get_config(self):
        return {
            **super().get_config(),
            "atrous_rates": self.atrous_rates,
            "crop_size": self.crop_size,
            "output_stride": self.output_stride,
            "use_separable_conv": self.use_separable_conv,
            "add_image_level_feature": self.add_image_level_feature,
            "pooling_crop_size": self.pooling_crop_size,
            "filters": self.filters,
            "dropout_rate": self.dropout_rate,
            "weight_decay": self.weight_decay,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "synchronized": self.synchronized,
        }

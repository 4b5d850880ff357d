"""The Dense Prediction Cell (Chen et al., NeurIPS 2018)."""

import dataclasses

import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import fast_dropout
from deeplab_dpc.layers import pyramid_pooling
from deeplab_dpc.layers import split_separable_conv


def rate_multiplier(output_stride):
    """DeepLab's `conv_rate_multiplier = 16 // output_stride`.

    Output stride 32 would give 0 in DeepLab (which never ran a DPC there);
    rates are then kept as searched (multiplier 1).
    """
    return max(1, 16 // output_stride)


def make_branch_op(
    spec,
    crop_size,
    output_stride,
    filters,
    weight_decay,
    pooling_crop_size=None,
    name=None,
    **norm,
):
    """Builds the Keras layer of one search-space op.

    Args:
      spec: a `cell_spec.BranchSpec`.
      crop_size, output_stride, pooling_crop_size: the model's geometry.
      filters: int, output channels.
      weight_decay: float, DeepLab's weight decay.
      name: layer name.
      **norm: `norm_momentum`, `norm_epsilon`, `synchronized`.

    Returns:
      A `ConvBN`, `SplitSeparableConv2D` or `PyramidPooling` layer.
    """
    if spec.op == cell_spec.OP_CONV1X1:
        return conv_bn.ConvBN(filters, 1, weight_decay=weight_decay, name=name, **norm)
    if spec.op == cell_spec.OP_SEP3X3:
        mult = rate_multiplier(output_stride)
        return split_separable_conv.SplitSeparableConv2D(
            filters,
            rate=tuple(r * mult for r in spec.rate),
            weight_decay=weight_decay,
            name=name,
            **norm,
        )
    return pyramid_pooling.PyramidPooling(
        spec.grid,
        crop_size,
        output_stride,
        pooling_crop_size=pooling_crop_size,
        filters=filters,
        weight_decay=weight_decay,
        name=name,
        **norm,
    )


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class DensePredictionCell(tf.keras.layers.Layer):
    """Dense Prediction Cell: B branches, concat of all, dropout, projection.

    Branch i applies its op to the backbone feature (`input == -1`) or to the
    output of an earlier branch; the outputs of all branches are concatenated,
    dropped out (rate 0.1, training only) and projected by a 1x1 conv -> BN ->
    ReLU, as DeepLab's `dense_prediction_cell.py` does. Atrous rates are
    multiplied by `16 // output_stride`.

    Args:
      branches: a `cell_spec.CellSpec`, or a list of `cell_spec.BranchSpec` or of dicts
        with `BranchSpec` fields.
      crop_size: (int, int), the crop the model is built for (fixes the pyramid
        pooling geometry).
      output_stride: int, output stride of the input features.
      pooling_crop_size: (int, int) or None, DeepLab's `image_pooling_crop_size`.
      filters: int, channels of every branch and of the projection.
      dropout_rate: float, dropout on the concatenated features.
      weight_decay: float, DeepLab's weight decay.
      norm_momentum, norm_epsilon, synchronized: BatchNormalization settings.
      **kwargs: forwarded to `tf.keras.layers.Layer`.

    Call: `[batch, fh, fw, c]` -> `[batch, fh, fw, filters]`.

    Example:
    >>> cell = DensePredictionCell(cell_spec.published_cell(), crop_size=(513, 513),
    ...                            output_stride=16)
    >>> cell(tf.zeros([1, 33, 33, 320])).shape
    TensorShape([1, 33, 33, 256])
    """

    def __init__(
        self,
        branches,
        crop_size,
        output_stride,
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
        if isinstance(branches, cell_spec.CellSpec):
            self.cell = branches
        else:
            self.cell = cell_spec.CellSpec(
                [
                    (
                        b
                        if isinstance(b, cell_spec.BranchSpec)
                        else cell_spec.BranchSpec(**b)
                    )
                    for b in branches
                ]
            )
        self.crop_size = tuple(int(c) for c in crop_size)
        self.output_stride = int(output_stride)
        self.pooling_crop_size = (
            tuple(int(c) for c in pooling_crop_size) if pooling_crop_size else None
        )
        self.filters = int(filters)
        self.dropout_rate = float(dropout_rate)
        self.weight_decay = float(weight_decay)
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.synchronized = synchronized
        norm = dict(
            norm_momentum=norm_momentum,
            norm_epsilon=norm_epsilon,
            synchronized=synchronized,
        )
        self.branch_layers = [
            make_branch_op(
                spec,
                self.crop_size,
                self.output_stride,
                self.filters,
                self.weight_decay,
                self.pooling_crop_size,
                name=f"branch{i}",
                **norm,
            )
            for i, spec in enumerate(self.cell)
        ]
        conv_bn.track_sublayers(self, self.branch_layers)
        self.dropout = fast_dropout.dropout_class()(
            self.dropout_rate, name="concat_projection_dropout"
        )
        self.concat_projection = conv_bn.ConvBN(
            self.filters, 1, weight_decay=weight_decay, name="concat_projection", **norm
        )

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        pyramid_pooling.check_feature_size(
            self.name, input_shape, self.crop_size, self.output_stride
        )
        branch_shape = input_shape[:-1].concatenate([self.filters])
        for spec, layer in zip(self.cell, self.branch_layers):
            layer.build(input_shape if spec.input < 0 else branch_shape)
        self.concat_projection.build(
            input_shape[:-1].concatenate([self.filters * len(self.cell)])
        )
        super().build(input_shape)

    def call(self, inputs, training=None):
        outputs = []
        for spec, layer in zip(self.cell, self.branch_layers):
            source = inputs if spec.input < 0 else outputs[spec.input]
            outputs.append(layer(source, training=training))
        x = self.dropout(tf.concat(outputs, axis=-1), training=training)
        return self.concat_projection(x, training=training)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([self.filters])

    def get_config(self):
        return {
            **super().get_config(),
            "branches": [dataclasses.asdict(b) for b in self.cell],
            "crop_size": self.crop_size,
            "output_stride": self.output_stride,
            "pooling_crop_size": self.pooling_crop_size,
            "filters": self.filters,
            "dropout_rate": self.dropout_rate,
            "weight_decay": self.weight_decay,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "synchronized": self.synchronized,
        }

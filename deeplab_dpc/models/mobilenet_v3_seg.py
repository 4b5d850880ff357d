"""DeepLab's MobileNet-v3-large-seg and -small-seg as Keras layers.

The networks of DeepLab's `feature_extractor.mobilenet_v3_{large,small}_seg`
(slim's `nets/mobilenet/mobilenet_v3.py` V3_LARGE / V3_SMALL with the last
block's filters halved, as the MobileNet-v3 paper's segmentation models),
built up to their last 1x1 conv (`Conv_1`, DeepLab's final endpoint
`layer_17` / `layer_13`):

* a 3x3 stride-2 conv of 16 filters -> batch norm -> hard swish (`Conv`);
* inverted residual blocks (`expanded_conv`, `expanded_conv_1`, ...): a 1x1
  expansion (when it widens) -> BN -> activation, a k x k depthwise conv ->
  BN -> activation (the block's `depthwise_output`), a squeeze-and-excite
  (global mean, 1x1 conv with bias -> ReLU, 1x1 conv with bias -> hard
  sigmoid `relu6(x + 3) * 0.16667`, times the input) where the spec says so,
  a linear 1x1 projection -> BN, and the input added back at stride 1 when
  the depths match; activations ReLU or hard swish by block;
* the last 1x1 conv -> BN -> hard swish (`Conv_1`);
* SAME padding (slim's), batch-norm epsilon 1e-3, kernels initialised by a
  truncated normal of stddev 0.09, L2 weight decay on every conv kernel but
  the depthwise ones (DeepLab's `mobilenet_v2_arg_scope`);
* output stride by slim mobilenet's rule: once the running stride reaches
  the target, a strided layer runs at stride 1 and the layers after it are
  dilated by the strides dropped (1x1 convs never). DeepLab's published
  models run at output stride 32 (no dilation). The squeeze-and-excite pools
  globally, so features at output stride 16 are not the stride-32 ones
  subsampled.

Layers are named by their DeepLab scope below `MobilenetV3` with '.' for '/'
(`expanded_conv_3.squeeze_excite.Conv_1`, batch norms `<conv>.BatchNorm`),
the rule `models/tf1_checkpoint.py` maps by. `LOW_LEVEL` is DeepLab's
decoder endpoint at stride 8 (`layer_7/depthwise_output`, resp.
`layer_4/depthwise_output`), which the LR-ASPP decoder reads.
"""

import dataclasses
from typing import Optional

import tensorflow as tf

from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import dilated_depthwise
from deeplab_dpc.layers import fused_batch_norm
from deeplab_dpc.layers import hard_activation

NORM_MOMENTUM = 0.997
NORM_EPSILON = 1e-3
KERNEL_STDDEV = 0.09
BATCH_NORM = "BatchNorm"
RELU = "relu"
HARD_SWISH = "hard_swish"
SQUEEZE_FACTOR = 4
DIVISIBLE_BY = 8
# The decoder's endpoint (DeepLab's `networks_to_feature_maps[...][8]`) and
# its stride.
LOW_LEVEL_STRIDE = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class Block:
    """One inverted residual block of slim's MobileNet-v3 spec.

    Attributes:
      expansion: float (factor of the input depth, rounded to a multiple of
        8) or int (an absolute size, the seg variants' last block).
      filters: int, output depth.
      kernel: int, depthwise kernel size.
      stride: int, 1 or 2.
      activation: "relu" or "hard_swish".
      squeeze_excite: bool.
    """

    expansion: object
    filters: int
    kernel: int
    stride: int = 1
    activation: str = RELU
    squeeze_excite: bool = False


def _b(ef, n, k, s=1, act=RELU, se=False):
    return Block(expansion=ef, filters=n, kernel=k, stride=s, activation=act,
                 squeeze_excite=se)


# slim's V3_LARGE / V3_SMALL between the first and the last conv, with
# DeepLab's seg changes: the last block's filters halved and its expansions
# set to absolute sizes (336, 480, 480; 144, 288, 288); the last conv halved.
NETWORKS = {
    "mobilenet_v3_large_seg": (
        (
            _b(1, 16, 3),
            _b(4, 24, 3, 2),
            _b(3, 24, 3),
            _b(3, 40, 5, 2, se=True),
            _b(3, 40, 5, se=True),
            _b(3, 40, 5, se=True),
            _b(6, 80, 3, 2, HARD_SWISH),
            _b(2.5, 80, 3, 1, HARD_SWISH),
            _b(184 / 80, 80, 3, 1, HARD_SWISH),
            _b(184 / 80, 80, 3, 1, HARD_SWISH),
            _b(6, 112, 3, 1, HARD_SWISH, True),
            _b(6, 112, 3, 1, HARD_SWISH, True),
            _b(336, 80, 5, 2, HARD_SWISH, True),
            _b(480, 80, 5, 1, HARD_SWISH, True),
            _b(480, 80, 5, 1, HARD_SWISH, True),
        ),
        480,
    ),
    "mobilenet_v3_small_seg": (
        (
            _b(1, 16, 3, 2, se=True),
            _b(72 / 16, 24, 3, 2),
            _b(88 / 24, 24, 3),
            _b(4, 40, 5, 2, HARD_SWISH, True),
            _b(6, 40, 5, 1, HARD_SWISH, True),
            _b(6, 40, 5, 1, HARD_SWISH, True),
            _b(3, 48, 5, 1, HARD_SWISH, True),
            _b(3, 48, 5, 1, HARD_SWISH, True),
            _b(144, 48, 5, 2, HARD_SWISH, True),
            _b(288, 48, 5, 1, HARD_SWISH, True),
            _b(288, 48, 5, 1, HARD_SWISH, True),
        ),
        288,
    ),
}
# The decoder's stride-8 endpoint: the depthwise output (after its BN and
# activation, before the squeeze-and-excite) of `layer_7` (large) and
# `layer_4` (small), i.e. blocks expanded_conv_5 and expanded_conv_2.
LOW_LEVEL = {
    "mobilenet_v3_large_seg": "expanded_conv_5.depthwise.activation",
    "mobilenet_v3_small_seg": "expanded_conv_2.depthwise.activation",
}


def make_divisible(value, divisor=DIVISIBLE_BY, min_value=None):
    """slim mobilenet's `_make_divisible`: the nearest multiple of `divisor`,
    at least `min_value` and not below 90% of `value`."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def expansion_size(block, input_depth):
    """The expanded depth of a block (DeepLab's `expand_input_by_factor`);
    an int above 8 is an absolute size (the seg variants' last block)."""
    if isinstance(block.expansion, int) and block.expansion > 8:
        return block.expansion
    return make_divisible(input_depth * block.expansion)


def _activation(x, kind, name):
    if kind == RELU:
        return tf.keras.layers.ReLU(name=name)(x)
    return hard_activation.HardActivation(kind, name=name)(x)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Scope:
    """slim's arg scope for the network: conv / depthwise + BN builders."""

    weight_decay: float
    norm_momentum: float

    def batch_norm(self, x, name, activation: Optional[str]):
        x = fused_batch_norm.batch_norm_class()(
            momentum=self.norm_momentum,
            epsilon=NORM_EPSILON,
            scale=True,
            name=f"{name}.{BATCH_NORM}",
        )(x)
        return _activation(x, activation, f"{name}.activation") if activation else x

    def conv(self, x, filters, kernel, name, stride=1, activation=None, bn=True):
        x = tf.keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same",
            use_bias=not bn,
            kernel_initializer=conv_bn.kernel_initializer(KERNEL_STDDEV),
            kernel_regularizer=conv_bn.l2_regularizer(self.weight_decay),
            name=name,
        )(x)
        if bn:
            return self.batch_norm(x, name, activation)
        return _activation(x, activation, f"{name}.activation") if activation else x

    def depthwise(self, x, kernel, name, stride, rate, activation):
        x = dilated_depthwise.depthwise_class()(
            kernel,
            strides=stride,
            padding="same",
            dilation_rate=rate,
            use_bias=False,
            depthwise_initializer=conv_bn.kernel_initializer(KERNEL_STDDEV),
            name=name,
        )(x)
        return self.batch_norm(x, name, activation)


def squeeze_excite(x, name, scope):
    """slim's `squeeze_excite` (factor 4, ReLU inside, hard sigmoid gate)."""
    depth = x.shape[-1]
    pooled = tf.keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}.mean")(x)
    squeeze = scope.conv(
        pooled, make_divisible(depth / SQUEEZE_FACTOR), 1, f"{name}.Conv",
        activation=RELU, bn=False,
    )
    excite = tf.keras.layers.Conv2D(
        depth,
        1,
        kernel_initializer=conv_bn.kernel_initializer(KERNEL_STDDEV),
        kernel_regularizer=conv_bn.l2_regularizer(scope.weight_decay),
        name=f"{name}.Conv_1",
    )(squeeze)
    excite = hard_activation.HardActivation("hard_sigmoid", name=f"{name}.gate")(excite)
    return tf.keras.layers.Multiply(name=f"{name}.mul")([x, excite])


def inverted_residual(x, block, name, stride, rate, scope):
    """slim's `expanded_conv` with MobileNet-v3's options."""
    inputs = x
    inner = expansion_size(block, x.shape[-1])
    if inner > x.shape[-1]:
        x = scope.conv(x, inner, 1, f"{name}.expand", activation=block.activation)
    x = scope.depthwise(
        x, block.kernel, f"{name}.depthwise", stride, rate, block.activation
    )
    if block.squeeze_excite:
        x = squeeze_excite(x, f"{name}.squeeze_excite", scope)
    x = scope.conv(x, block.filters, 1, f"{name}.project")
    # slim adds the input back whenever the block runs at stride 1 (also a
    # strided block that the output stride turned to stride 1).
    if stride == 1 and x.shape[-1] == inputs.shape[-1]:
        x = tf.keras.layers.Add(name=f"{name}.add")([x, inputs])
    return x


def mobilenet_v3_seg(
    inputs,
    model_variant,
    output_stride=32,
    multi_grid=None,
    weight_decay=0.0,
    norm_momentum=None,
):
    """DeepLab's MobileNet-v3 seg network on a (preprocessed) image tensor.

    Args:
      inputs: `[batch, h, w, 3]` images in [-1, 1].
      model_variant: "mobilenet_v3_large_seg" or "mobilenet_v3_small_seg".
      output_stride: int, 8, 16 or 32 (DeepLab's models: 32).
      multi_grid: must be None (MobileNet has none).
      weight_decay: float, L2 weight decay of the conv kernels.
      norm_momentum: float or None (slim's 0.997).

    Returns:
      The `Conv_1` features `[batch, h', w', 480 or 288]`,
      h' = (h - 1) / OS + 1 for crops OS*k + 1; the layer
      `LOW_LEVEL[model_variant]` of the graph is the stride-8 endpoint.

    Raises:
      ValueError: an unknown variant, a bad output stride, or a multi_grid.

    Example:
    >>> images = tf.keras.Input((65, 65, 3))
    >>> features = mobilenet_v3_seg(images, "mobilenet_v3_small_seg")
    >>> features.shape
    TensorShape([None, 3, 3, 288])
    """
    if model_variant not in NETWORKS:
        raise ValueError(
            f"unknown MobileNet-v3 {model_variant!r}; choose one of {sorted(NETWORKS)}"
        )
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if multi_grid is not None:
        raise ValueError(f"--multi_grid is not for {model_variant} (no multi-grid block)")
    scope = _Scope(
        weight_decay=weight_decay,
        norm_momentum=NORM_MOMENTUM if norm_momentum is None else norm_momentum,
    )
    blocks, last_depth = NETWORKS[model_variant]
    x = scope.conv(inputs, 16, 3, "Conv", stride=2, activation=HARD_SWISH)
    current, rate = 2, 1
    for i, block in enumerate(blocks):
        name = "expanded_conv" if i == 0 else f"expanded_conv_{i}"
        if current == output_stride:
            stride, layer_rate = 1, rate
            rate *= block.stride
        else:
            stride, layer_rate = block.stride, 1
            current *= block.stride
        x = inverted_residual(x, block, name, stride, layer_rate, scope)
    return scope.conv(x, last_depth, 1, "Conv_1", activation=HARD_SWISH)

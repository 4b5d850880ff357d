"""DeepLab's modified aligned Xception-41, -65 and -71 as Keras layers.

The networks of DeepLab's `core/xception.py` (Chollet's Xception made deeper
and "aligned" by Dai et al., with DeepLab's changes), not
`tf.keras.applications.Xception`:

* a root of two 3x3 convs (32 filters at stride 2, then 64), each
  conv -> batch norm -> ReLU;
* entry, middle and exit flows of Xception modules: three 3x3 separable
  convs (the third one strided, instead of max pooling) plus a shortcut:
  a 1x1 conv -> batch norm (`conv`), the identity (`sum`) or none (`none`);
* each separable conv is depthwise -> batch norm -> pointwise 1x1 -> batch
  norm (DeepLab's split separable conv). In every block but the last, a ReLU
  comes *before* the separable conv and none inside it; in the exit flow's
  last block (`activation_in_separable_conv`), a ReLU follows each batch
  norm instead, and the block has no shortcut;
* a strided conv pads its input explicitly, `(k_eff - 1) // 2` before and
  the rest after (`fixed_padding`), and convolves VALID, so features stay
  aligned whatever the input's parity;
* batch norm epsilon 1e-3, decay 0.9997; kernels initialised by a truncated
  normal of stddev 0.09; L2 weight decay on every conv kernel but the
  depthwise ones;
* output stride by DeepLab's `stack_blocks_dense` rule (`atrous_schedule`):
  once the running stride reaches the target, each later unit runs at
  stride 1 and at the rate accumulated so far, and the rate is then
  multiplied by the stride the unit dropped; `multi_grid` multiplies the
  rates of the three separable convs of the exit flow's last block.

Layers are built-in Keras layers (`Conv2D`, `DepthwiseConv2D`,
`BatchNormalization`, `ReLU`, `ZeroPadding2D`, `Add`; Keras 3 uses this
package's fused batch norm and native dilated depthwise subclasses), so the
accounting and tensorflow-model-optimization see them as they are. A layer's
name is its DeepLab variable scope below the network's with '.' for '/' (Keras
names cannot hold '/'), e.g. `entry_flow.block1.unit_1.xception_module.
separable_conv1_depthwise`, and its batch norm is `<that>.BatchNorm`: the
TF1 importer (`models/tf1_checkpoint.py`) maps names by that rule alone.
"""

import dataclasses
from typing import Tuple

import tensorflow as tf

from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import dilated_depthwise
from deeplab_dpc.layers import fused_batch_norm

# DeepLab's `xception_arg_scope` as its feature extractor sets it.
NORM_MOMENTUM = 0.9997
NORM_EPSILON = 1e-3
KERNEL_STDDEV = 0.09
BATCH_NORM = "BatchNorm"  # slim's scope of a conv's batch norm.
SKIPS = ("conv", "sum", "none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class XceptionBlock:
    """One block of Xception modules (DeepLab's `xception_block`).

    Attributes:
      scope: DeepLab's scope of the block, e.g. "entry_flow/block1".
      depths: (int, int, int), filters of the three separable convs.
      skip: "conv" (1x1 conv shortcut), "sum" (identity) or "none".
      stride: int, stride of the last unit's third separable conv.
      units: int, number of modules.
      activation_in_separable_conv: ReLU after each batch norm inside the
        separable convs instead of one before each of them.
      takes_multi_grid: the block's unit rates are the network's multi_grid.
    """

    scope: str
    depths: Tuple[int, int, int]
    skip: str
    stride: int
    units: int = 1
    activation_in_separable_conv: bool = False
    takes_multi_grid: bool = False

    def __post_init__(self):
        if self.skip not in SKIPS or len(self.depths) != 3:
            raise ValueError(f"bad Xception block {self}")


def _entry(block, depth, stride):
    return XceptionBlock(
        scope=f"entry_flow/block{block}", depths=(depth,) * 3, skip="conv", stride=stride
    )


def _middle(units):
    return XceptionBlock(
        scope="middle_flow/block1", depths=(728,) * 3, skip="sum", stride=1, units=units
    )


_EXIT = (
    XceptionBlock(scope="exit_flow/block1", depths=(728, 1024, 1024), skip="conv", stride=2),
    XceptionBlock(
        scope="exit_flow/block2",
        depths=(1536, 1536, 2048),
        skip="none",
        stride=1,
        activation_in_separable_conv=True,
        takes_multi_grid=True,
    ),
)

# DeepLab's `xception_41`, `xception_65` and `xception_71`.
NETWORKS = {
    "xception_41": (_entry(1, 128, 2), _entry(2, 256, 2), _entry(3, 728, 2), _middle(8))
    + _EXIT,
    "xception_65": (_entry(1, 128, 2), _entry(2, 256, 2), _entry(3, 728, 2), _middle(16))
    + _EXIT,
    "xception_71": (
        _entry(1, 128, 2),
        _entry(2, 256, 1),
        _entry(3, 256, 2),
        _entry(4, 728, 1),
        _entry(5, 728, 2),
        _middle(16),
    )
    + _EXIT,
}

# DeepLab's decoder endpoint at stride 4 (`networks_to_feature_maps`): the
# batch-normalised output of the second separable conv of the block whose
# third conv leaves stride 4 (no activation).
LOW_LEVEL = {
    "xception_41": "entry_flow.block2.unit_1.xception_module.separable_conv2_pointwise",
    "xception_65": "entry_flow.block2.unit_1.xception_module.separable_conv2_pointwise",
    "xception_71": "entry_flow.block3.unit_1.xception_module.separable_conv2_pointwise",
}
LOW_LEVEL = {k: f"{v}.{BATCH_NORM}" for k, v in LOW_LEVEL.items()}


def atrous_schedule(unit_strides, output_stride):
    """DeepLab's `stack_blocks_dense` rule: (stride, rate) of each unit.

    Args:
      unit_strides: sequence of ints, each unit's nominal stride, in order.
      output_stride: int, the stride to reach, relative to the first unit's
        input.

    Returns:
      list of (stride, rate): the unit runs at that stride, its convs at that
      atrous rate.

    Raises:
      ValueError: if the strides cannot reach `output_stride` exactly.

    Example:
    >>> atrous_schedule([2, 2, 1, 2, 1], 4)
    [(2, 1), (2, 1), (1, 1), (1, 1), (1, 2)]
    """
    current, rate, schedule = 1, 1, []
    for stride in unit_strides:
        if current == output_stride:
            schedule.append((1, rate))
            rate *= stride
        else:
            schedule.append((stride, 1))
            current *= stride
        if current > output_stride:
            break
    if current != output_stride:
        raise ValueError(
            f"the unit strides {list(unit_strides)} cannot reach output stride "
            f"{output_stride}"
        )
    return schedule


def fixed_padding(kernel_size, rate=1):
    """DeepLab's explicit padding of a strided conv: (before, after)."""
    effective = kernel_size + (kernel_size - 1) * (rate - 1)
    before = (effective - 1) // 2
    return before, effective - 1 - before


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArgScope:
    """The settings slim's arg scope gives each layer of a DeepLab network.

    Its methods add layers to a functional graph, named by DeepLab's scopes
    (with '.' for '/').

    Attributes:
      weight_decay: float, L2 weight decay of conv kernels (not depthwise).
      norm_momentum, norm_epsilon: batch norm decay and epsilon.
      kernel_initializer: a function of no argument returning a Keras
        initializer.

    Example:
    >>> scope = ArgScope(norm_momentum=0.9997, norm_epsilon=1e-3)
    >>> x = scope.conv(tf.keras.Input((33, 33, 3)), 32, 3, "conv1_1", stride=2)
    >>> x.shape
    TensorShape([None, 17, 17, 32])
    """

    weight_decay: float = 0.0
    norm_momentum: float = NORM_MOMENTUM
    norm_epsilon: float = NORM_EPSILON
    kernel_initializer: object = lambda: conv_bn.kernel_initializer(KERNEL_STDDEV)

    def batch_norm(self, x, name, relu):
        x = fused_batch_norm.batch_norm_class()(
            momentum=self.norm_momentum,
            epsilon=self.norm_epsilon,
            scale=True,
            name=f"{name}.{BATCH_NORM}",
        )(x)
        return tf.keras.layers.ReLU(name=f"{name}.relu")(x) if relu else x

    def _padding(self, x, kernel_size, stride, rate, name):
        """SAME at stride 1; else DeepLab's fixed padding, then VALID."""
        if stride == 1 or kernel_size == 1:
            return x, "same"
        pad = fixed_padding(kernel_size, rate)
        return tf.keras.layers.ZeroPadding2D((pad, pad), name=f"{name}.pad")(x), "valid"

    def conv(self, x, filters, kernel_size, name, stride=1, rate=1, relu=True):
        """slim's `conv2d` (DeepLab's `conv2d_same` when strided) + BN [+ ReLU]."""
        x, padding = self._padding(x, kernel_size, stride, rate, name)
        x = tf.keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=stride,
            padding=padding,
            dilation_rate=rate if kernel_size > 1 else 1,
            use_bias=False,
            kernel_initializer=self.kernel_initializer(),
            kernel_regularizer=conv_bn.l2_regularizer(self.weight_decay),
            name=name,
        )(x)
        return self.batch_norm(x, name, relu)

    def depthwise(self, x, kernel_size, name, stride=1, rate=1, relu=False):
        """slim's `separable_conv2d(num_outputs=None)` + BN [+ ReLU]."""
        x, padding = self._padding(x, kernel_size, stride, rate, name)
        x = dilated_depthwise.depthwise_class()(
            kernel_size,
            strides=stride,
            padding=padding,
            dilation_rate=rate,
            use_bias=False,
            depthwise_initializer=self.kernel_initializer(),
            name=name,
        )(x)
        return self.batch_norm(x, name, relu)


def xception_module(x, prefix, block, stride, rate, unit_rates, scope):
    """One Xception module (DeepLab's `xception_module`).

    Args:
      x: the module's input, `[batch, h, w, c]`.
      prefix: str, the module's layer-name prefix (its DeepLab scope, '.'s).
      block: the `XceptionBlock` it belongs to.
      stride, rate: from `atrous_schedule`.
      unit_rates: (int, int, int), rate multipliers of the separable convs.
      scope: an `ArgScope`.

    Returns:
      The module's output tensor.
    """
    inputs, inside = x, block.activation_in_separable_conv
    for i, depth in enumerate(block.depths, 1):
        name = f"{prefix}.separable_conv{i}"
        if not inside:
            x = tf.keras.layers.ReLU(name=f"{name}.relu")(x)
        x = scope.depthwise(
            x,
            3,
            f"{name}_depthwise",
            stride=stride if i == 3 else 1,
            rate=rate * unit_rates[i - 1],
            relu=inside,
        )
        x = scope.conv(x, depth, 1, f"{name}_pointwise", relu=inside)
    if block.skip == "conv":
        shortcut = scope.conv(
            inputs, block.depths[-1], 1, f"{prefix}.shortcut", stride=stride, relu=False
        )
        return tf.keras.layers.Add(name=f"{prefix}.add")([x, shortcut])
    if block.skip == "sum":
        return tf.keras.layers.Add(name=f"{prefix}.add")([x, inputs])
    return x


def xception(
    inputs,
    model_variant,
    output_stride=16,
    multi_grid=None,
    weight_decay=0.0,
    norm_momentum=None,
):
    """DeepLab's Xception on a (preprocessed) image tensor.

    Args:
      inputs: `[batch, h, w, 3]` images in [-1, 1].
      model_variant: "xception_41", "xception_65" or "xception_71".
      output_stride: int, 8, 16 or 32.
      multi_grid: None or three ints, DeepLab's `--multi_grid` (rate
        multipliers of the exit flow's last block; default 1, 1, 1).
      weight_decay: float, DeepLab's L2 weight decay.
      norm_momentum: float or None (DeepLab's 0.9997).

    Returns:
      The `[batch, h', w', 2048]` features (ReLU'd), h' = (h - 1) / OS + 1 for
      the crops DeepLab takes. The layer `LOW_LEVEL[model_variant]` of the
      graph is the decoder's stride-4 endpoint.

    Raises:
      ValueError: an unknown variant, output stride or multi_grid.

    Example:
    >>> images = tf.keras.Input((33, 33, 3))
    >>> model = tf.keras.Model(images, xception(images, "xception_41"))
    >>> model.output.shape
    TensorShape([None, 3, 3, 2048])
    """
    if model_variant not in NETWORKS:
        raise ValueError(f"unknown Xception {model_variant!r}; choose one of {sorted(NETWORKS)}")
    if output_stride % 2:
        raise ValueError(f"output_stride must be even, got {output_stride}")
    unit_rates = (1, 1, 1) if multi_grid is None else tuple(int(r) for r in multi_grid)
    if len(unit_rates) != 3 or min(unit_rates) < 1:
        raise ValueError(f"multi_grid must be three positive ints, got {multi_grid}")
    scope = ArgScope(
        weight_decay=weight_decay,
        norm_momentum=NORM_MOMENTUM if norm_momentum is None else norm_momentum,
    )
    x = scope.conv(inputs, 32, 3, "entry_flow.conv1_1", stride=2)
    x = scope.conv(x, 64, 3, "entry_flow.conv1_2")
    units = [
        (block, i) for block in NETWORKS[model_variant] for i in range(1, block.units + 1)
    ]
    # The root's stride 2 comes before the blocks, as in DeepLab.
    schedule = atrous_schedule([block.stride for block, _ in units], output_stride // 2)
    for (block, i), (stride, rate) in zip(units, schedule):
        prefix = f"{block.scope.replace('/', '.')}.unit_{i}.xception_module"
        rates = unit_rates if block.takes_multi_grid else (1, 1, 1)
        x = xception_module(x, prefix, block, stride, rate, rates, scope)
    return x

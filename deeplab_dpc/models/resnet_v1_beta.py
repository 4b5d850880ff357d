"""DeepLab's ResNet-v1-50-beta and ResNet-v1-101-beta as Keras layers.

The networks of DeepLab's `core/resnet_v1_beta.py`: slim's ResNet-v1 with the
7x7 stem replaced by three 3x3 convs (64 at stride 2, 64, 128), then a 3x3
max pool at stride 2 (SAME) and four blocks of bottleneck units:

* a unit is 1x1 conv -> 3x3 conv (strided and atrous) -> 1x1 conv, each with
  batch norm, ReLU on the first two; its shortcut is a 1x1 conv -> batch norm
  when the depth changes, else the input subsampled by the unit's stride (a
  1x1 max pool); the sum goes through a ReLU;
* a block's stride is on its *last* unit (block1..block3 stride 2, block4
  stride 1); block4's three units take their rates from `multi_grid`
  (DeepLab's `--multi_grid`, e.g. 1, 2, 4);
* strided 3x3 convs pad explicitly (DeepLab's `conv2d_same`) and convolve
  VALID; batch norm epsilon 1e-5 and decay 0.95 (DeepLab's feature extractor
  for ResNets); He-normal kernels with L2 weight decay;
* output stride by `stack_blocks_dense` (`xception.atrous_schedule`),
  counted after the stem and pool (stride 4).

As in `models/xception.py`, the layers are built-in Keras layers named by
DeepLab's scopes under the network's (`resnet_v1_50` or `resnet_v1_101`),
with '.' for '/', e.g. `block1.unit_1.bottleneck_v1.conv2` and its batch norm
`block1.unit_1.bottleneck_v1.conv2.BatchNorm`.
"""

import dataclasses

import tensorflow as tf

from deeplab_dpc.models import xception

# DeepLab's feature extractor's `resnet_arg_scope` for ResNets.
NORM_MOMENTUM = 0.95
NORM_EPSILON = 1e-5


def kernel_initializer():
    """slim's `variance_scaling_initializer()`: He normal, truncated."""
    return tf.keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_in", distribution="truncated_normal"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResNetBlock:
    """One block of bottleneck units (DeepLab's `resnet_v1_beta_block`).

    Attributes:
      scope: DeepLab's scope of the block, e.g. "block1".
      depth_bottleneck: int, filters of the 1x1 and 3x3 convs; the unit's
        output has 4 times as many.
      units: int, number of units.
      stride: int, stride of the last unit.
      takes_multi_grid: the units' rates are the network's multi_grid.
    """

    scope: str
    depth_bottleneck: int
    units: int
    stride: int
    takes_multi_grid: bool = False


def _blocks(block3_units):
    return (
        ResNetBlock(scope="block1", depth_bottleneck=64, units=3, stride=2),
        ResNetBlock(scope="block2", depth_bottleneck=128, units=4, stride=2),
        ResNetBlock(scope="block3", depth_bottleneck=256, units=block3_units, stride=2),
        ResNetBlock(
            scope="block4", depth_bottleneck=512, units=3, stride=1, takes_multi_grid=True
        ),
    )


NETWORKS = {
    "resnet_v1_50_beta": _blocks(6),
    "resnet_v1_101_beta": _blocks(23),
}

# DeepLab's decoder endpoint at stride 4 (`networks_to_feature_maps`): the
# batch-normalised output of block1/unit_2's last conv (no activation).
LOW_LEVEL = f"block1.unit_2.bottleneck_v1.conv3.{xception.BATCH_NORM}"


def bottleneck(x, prefix, depth_bottleneck, stride, rate, scope):
    """One bottleneck unit (DeepLab's `bottleneck`).

    Args:
      x: the unit's input, `[batch, h, w, c]`.
      prefix: str, the unit's layer-name prefix (its DeepLab scope, '.'s).
      depth_bottleneck: int, filters of the first two convs.
      stride, rate: from `atrous_schedule` (rate times the unit's multi-grid).
      scope: an `xception.ArgScope`.

    Returns:
      The unit's output tensor, `4 * depth_bottleneck` channels.
    """
    depth = 4 * depth_bottleneck
    if x.shape[-1] == depth:
        shortcut = x
        if stride > 1:
            shortcut = tf.keras.layers.MaxPooling2D(
                1, strides=stride, padding="same", name=f"{prefix}.shortcut"
            )(x)
    else:
        shortcut = scope.conv(x, depth, 1, f"{prefix}.shortcut", stride=stride, relu=False)
    residual = scope.conv(x, depth_bottleneck, 1, f"{prefix}.conv1")
    residual = scope.conv(
        residual, depth_bottleneck, 3, f"{prefix}.conv2", stride=stride, rate=rate
    )
    residual = scope.conv(residual, depth, 1, f"{prefix}.conv3", relu=False)
    x = tf.keras.layers.Add(name=f"{prefix}.add")([shortcut, residual])
    return tf.keras.layers.ReLU(name=f"{prefix}.relu")(x)


def resnet_v1_beta(
    inputs,
    model_variant,
    output_stride=16,
    multi_grid=None,
    weight_decay=0.0,
    norm_momentum=None,
):
    """DeepLab's ResNet-v1-beta on a (preprocessed) image tensor.

    Args:
      inputs: `[batch, h, w, 3]` images in [-1, 1].
      model_variant: "resnet_v1_50_beta" or "resnet_v1_101_beta".
      output_stride: int, 8, 16 or 32.
      multi_grid: None or three ints, DeepLab's `--multi_grid` (the rates of
        block4's units; default 1, 1, 1).
      weight_decay: float, DeepLab's L2 weight decay.
      norm_momentum: float or None (DeepLab's 0.95).

    Returns:
      The `[batch, h', w', 2048]` features of block4. The layer `LOW_LEVEL`
      of the graph is the decoder's stride-4 endpoint.

    Raises:
      ValueError: an unknown variant, output stride or multi_grid.

    Example:
    >>> images = tf.keras.Input((33, 33, 3))
    >>> features = resnet_v1_beta(images, "resnet_v1_50_beta", multi_grid=(1, 2, 4))
    >>> features.shape
    TensorShape([None, 3, 3, 2048])
    """
    if model_variant not in NETWORKS:
        raise ValueError(
            f"unknown ResNet-v1-beta {model_variant!r}; choose one of {sorted(NETWORKS)}"
        )
    if output_stride % 4:
        raise ValueError(f"output_stride must be a multiple of 4, got {output_stride}")
    unit_rates = (1, 1, 1) if multi_grid is None else tuple(int(r) for r in multi_grid)
    if len(unit_rates) != 3 or min(unit_rates) < 1:
        raise ValueError(f"multi_grid must be three positive ints, got {multi_grid}")
    scope = xception.ArgScope(
        weight_decay=weight_decay,
        norm_momentum=NORM_MOMENTUM if norm_momentum is None else norm_momentum,
        norm_epsilon=NORM_EPSILON,
        kernel_initializer=kernel_initializer,
    )
    x = scope.conv(inputs, 64, 3, "conv1_1", stride=2)
    x = scope.conv(x, 64, 3, "conv1_2")
    x = scope.conv(x, 128, 3, "conv1_3")
    x = tf.keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    units = [
        (block, i)
        for block in NETWORKS[model_variant]
        for i in range(1, block.units + 1)
    ]
    strides = [block.stride if i == block.units else 1 for block, i in units]
    # The stem and pool1 (stride 4) come before the blocks, as in DeepLab.
    schedule = xception.atrous_schedule(strides, output_stride // 4)
    for (block, i), (stride, rate) in zip(units, schedule):
        unit_rate = unit_rates[i - 1] if block.takes_multi_grid else 1
        x = bottleneck(
            x,
            f"{block.scope}.unit_{i}.bottleneck_v1",
            block.depth_bottleneck,
            stride,
            rate * unit_rate,
            scope,
        )
    return x

"""Tests for deeplab_dpc.models.resnet_v1_beta (DeepLab's ResNet-v1-beta).

As in test_xception.py, the oracle `reference_resnet` writes DeepLab's
`core/resnet_v1_beta.py` semantics out with `tf.nn` ops (three 3x3 stem convs,
SAME 3x3 max pool, stride on each block's last unit, 1x1 max-pool shortcut
when the depth is kept, explicit padding of strided 3x3 convs, batch norm
epsilon 1e-5, multi-grid on block4, `stack_blocks_dense`) and reads the
weights by their DeepLab names.
"""

import backbone_testing as bt
import pytest
import tensorflow as tf

from deeplab_dpc.models import backbones
from deeplab_dpc.models import resnet_v1_beta

VARIANTS = ("resnet_v1_50_beta", "resnet_v1_101_beta")
SCOPES = {"resnet_v1_50_beta": "resnet_v1_50", "resnet_v1_101_beta": "resnet_v1_101"}
UNITS = {"resnet_v1_50_beta": (3, 4, 6, 3), "resnet_v1_101_beta": (3, 4, 23, 3)}
EPSILON = 1e-5


# Every test reads backbones of this crop: one build per variant, output
# stride and multi-grid, shared by the module's tests.
CROP = 65


def backbone(variant, output_stride, multi_grid=None):
    return bt.backbone(variant, CROP, output_stride, multi_grid)


def randomize(model, seed=0):
    """He-normal kernels (scaled down: 16-33 residual units add up), BN
    statistics near 1 / 0."""
    return bt.randomize(model, seed, kernel_gain=0.5)


def reference_resnet(x, weights, variant, output_stride, multi_grid=(1, 1, 1)):
    """DeepLab's ResNet-v1-beta in `tf.nn` ops: (features, low-level endpoint)."""
    w = lambda name: weights[f"{SCOPES[variant]}/{name}"]

    def conv(x, scope, stride=1, rate=1, relu=True):
        kernel = w(f"{scope}/weights")
        if stride > 1 and kernel.shape[0] > 1:
            total = kernel.shape[0] + (kernel.shape[0] - 1) * (rate - 1) - 1
            side = [total // 2, total - total // 2]
            x = tf.pad(x, [[0, 0], side, side, [0, 0]])
            x = tf.nn.conv2d(x, kernel, stride, "VALID", dilations=rate)
        else:
            x = tf.nn.conv2d(x, kernel, stride, "SAME", dilations=rate)
        x = tf.nn.batch_normalization(
            x,
            w(f"{scope}/BatchNorm/moving_mean"),
            w(f"{scope}/BatchNorm/moving_variance"),
            w(f"{scope}/BatchNorm/beta"),
            w(f"{scope}/BatchNorm/gamma"),
            EPSILON,
        )
        return tf.nn.relu(x) if relu else x

    x = conv(x / 127.5 - 1.0, "conv1_1", stride=2)
    x = conv(x, "conv1_2")
    x = conv(x, "conv1_3")
    x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    target, current, rate, low = output_stride // 4, 1, 1, None
    for b, (units, base) in enumerate(zip(UNITS[variant], (64, 128, 256, 512)), 1):
        for u in range(1, units + 1):
            nominal = 2 if (u == units and b < 4) else 1
            if current == target:
                stride, unit_rate = 1, rate
                rate *= nominal
            else:
                stride, unit_rate = nominal, 1
                current *= nominal
            if b == 4:
                unit_rate *= multi_grid[u - 1]
            scope = f"block{b}/unit_{u}/bottleneck_v1"
            if x.shape[-1] == 4 * base:
                shortcut = x[:, ::stride, ::stride]
            else:
                shortcut = conv(x, f"{scope}/shortcut", stride=stride, relu=False)
            r = conv(x, f"{scope}/conv1")
            r = conv(r, f"{scope}/conv2", stride=stride, rate=unit_rate)
            r = conv(r, f"{scope}/conv3", relu=False)
            if (b, u) == (1, 2):
                low = r
            x = tf.nn.relu(shortcut + r)
    return x, low


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("output_stride", backbones.OUTPUT_STRIDES)
def test_endpoint_shapes(variant, output_stride):
    model = backbone(variant, output_stride, (1, 2, 4))
    fs = (CROP - 1) // output_stride + 1
    assert tuple(model.output[backbones.FEATURES].shape) == (None, fs, fs, 2048)
    assert tuple(model.output[backbones.LOW_LEVEL].shape) == (None, 17, 17, 256)
    out = model(bt.images(CROP), training=False)
    assert tuple(out[backbones.FEATURES].shape) == (1, fs, fs, 2048)


@pytest.mark.parametrize(
    "variant,output_stride,multi_grid",
    [
        ("resnet_v1_50_beta", 8, (1, 2, 4)),
        ("resnet_v1_50_beta", 16, (1, 2, 4)),
        ("resnet_v1_50_beta", 32, None),
        ("resnet_v1_101_beta", 16, (1, 2, 4)),
    ],
)
def test_matches_deeplabs_graph_written_in_tf_nn(variant, output_stride, multi_grid):
    model = randomize(backbone(variant, output_stride, multi_grid), seed=1)
    x = bt.images(CROP, seed=2)
    want, want_low = reference_resnet(
        x, bt.deeplab_weights(model, variant), variant, output_stride,
        multi_grid or (1, 1, 1),
    )
    # No activation at the endpoint.
    bt.check_matches_reference(model, x, want, want_low, low_is_linear=True)


@pytest.mark.parametrize("fine,coarse", [(8, 16), (16, 32)])
def test_atrous_consistency(fine, coarse):
    bt.check_atrous_consistency(
        randomize(backbone("resnet_v1_50_beta", fine, (1, 2, 4)), seed=4),
        backbone("resnet_v1_50_beta", coarse, (1, 2, 4)),
        bt.images(CROP),
        other=bt.images(CROP, seed=1),
    )


def test_dilation_config_output_stride_16():
    model = backbone("resnet_v1_50_beta", 16, (1, 2, 4))

    def cfg(name):
        c = model.get_layer(f"{name}.conv2").get_config()
        return tuple(c["strides"]), tuple(c["dilation_rate"]), c["padding"]

    assert cfg("block2.unit_4.bottleneck_v1") == ((2, 2), (1, 1), "valid")
    assert cfg("block3.unit_6.bottleneck_v1") == ((1, 1), (1, 1), "same")
    for unit, rate in zip((1, 2, 3), (2, 4, 8)):
        assert cfg(f"block4.unit_{unit}.bottleneck_v1") == ((1, 1), (rate, rate), "same")
    # Depth kept, stride 2: the shortcut is a 1x1 max pool; stride 1: none.
    pool = model.get_layer("block2.unit_4.bottleneck_v1.shortcut")
    assert isinstance(pool, tf.keras.layers.MaxPooling2D)
    assert tuple(pool.get_config()["strides"]) == (2, 2)
    names = {layer.name for layer in model.layers}
    assert "block3.unit_6.bottleneck_v1.shortcut" not in names


def test_batch_norm_settings_and_weight_decay():
    model = backbones.build_backbone(
        "resnet_v1_50_beta", (33, 33), 16, weight_decay=1e-4
    )
    norms = [
        l for l in model.layers if isinstance(l, tf.keras.layers.BatchNormalization)
    ]
    assert {l.epsilon for l in norms} == {1e-5}
    assert {l.momentum for l in norms} == {0.95}
    kernels = [l.kernel for l in model.layers if type(l) is tf.keras.layers.Conv2D]
    assert len(kernels) == len(norms) == len(model.losses) == 3 + 16 * 3 + 4
    expected = sum(5e-5 * float(tf.reduce_sum(tf.square(k))) for k in kernels)
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-4)


def test_config_round_trip_and_keras_file(tmp_path):
    # The shared stride-8 build (atrous, multi-grid).
    model = randomize(backbone("resnet_v1_50_beta", 8, (1, 2, 4)), seed=5)
    bt.check_config_round_trip_and_keras_file(
        model, bt.images(CROP), str(tmp_path / "resnet.keras")
    )


# test_tf_keras_backbones.py builds this backbone under tf_keras (one process
# for the three backbone files).


def test_bad_arguments():
    with pytest.raises(ValueError, match="multi_grid"):
        backbones.build_backbone("resnet_v1_50_beta", (33, 33), 16, multi_grid=(1, 2))
    with pytest.raises(ValueError, match="unknown ResNet-v1-beta"):
        resnet_v1_beta.resnet_v1_beta(tf.keras.Input((33, 33, 3)), "resnet_v1_18_beta")
    with pytest.raises(ValueError, match="depth_multiplier"):
        backbones.build_backbone("resnet_v1_101_beta", (33, 33), 16, depth_multiplier=2.0)

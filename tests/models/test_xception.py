"""Tests for deeplab_dpc.models.xception (DeepLab's modified aligned Xception).

The oracle `reference_xception` below writes DeepLab's `core/xception.py`
semantics out with plain `tf.nn` ops (explicit fixed padding and VALID
convs where strided, ReLU before each separable conv but in the last block,
batch norm epsilon 1e-3, the `stack_blocks_dense` output-stride rule) and
reads the weights by their DeepLab names, so it also checks the names the
TF1 importer gives the layers.
"""

import json
import os

import backbone_testing as bt
import numpy as np
import pytest
import tensorflow as tf

import model_testing
from deeplab_dpc.models import accounting
from deeplab_dpc.models import backbones
from deeplab_dpc.models import deeplab
from deeplab_dpc.models import xception

VARIANTS = ("xception_41", "xception_65", "xception_71")
EPSILON = 1e-3

# DeepLab's block tables, written out again: (scope, depths, skip, stride,
# units); the exit flow's last block has its activations inside.
_EXIT = [
    ("exit_flow/block1", (728, 1024, 1024), "conv", 2, 1),
    ("exit_flow/block2", (1536, 1536, 2048), "none", 1, 1),
]
BLOCKS = {
    "xception_41": [
        ("entry_flow/block1", (128,) * 3, "conv", 2, 1),
        ("entry_flow/block2", (256,) * 3, "conv", 2, 1),
        ("entry_flow/block3", (728,) * 3, "conv", 2, 1),
        ("middle_flow/block1", (728,) * 3, "sum", 1, 8),
    ]
    + _EXIT,
    "xception_65": [
        ("entry_flow/block1", (128,) * 3, "conv", 2, 1),
        ("entry_flow/block2", (256,) * 3, "conv", 2, 1),
        ("entry_flow/block3", (728,) * 3, "conv", 2, 1),
        ("middle_flow/block1", (728,) * 3, "sum", 1, 16),
    ]
    + _EXIT,
    "xception_71": [
        ("entry_flow/block1", (128,) * 3, "conv", 2, 1),
        ("entry_flow/block2", (256,) * 3, "conv", 1, 1),
        ("entry_flow/block3", (256,) * 3, "conv", 2, 1),
        ("entry_flow/block4", (728,) * 3, "conv", 1, 1),
        ("entry_flow/block5", (728,) * 3, "conv", 2, 1),
        ("middle_flow/block1", (728,) * 3, "sum", 1, 16),
    ]
    + _EXIT,
}
LOW_LEVEL_SCOPE = {
    "xception_41": "entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise",
    "xception_65": "entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise",
    "xception_71": "entry_flow/block3/unit_1/xception_module/separable_conv2_pointwise",
}


def reference_xception(x, weights, variant, output_stride, multi_grid=(1, 1, 1)):
    """DeepLab's Xception in `tf.nn` ops: (features, low-level endpoint)."""
    w = lambda name: weights[f"{variant}/{name}"]

    def batch_norm(x, scope):
        return tf.nn.batch_normalization(
            x,
            w(f"{scope}/BatchNorm/moving_mean"),
            w(f"{scope}/BatchNorm/moving_variance"),
            w(f"{scope}/BatchNorm/beta"),
            w(f"{scope}/BatchNorm/gamma"),
            EPSILON,
        )

    def pad(x, stride, rate):
        if stride == 1:
            return x, "SAME"
        total = 3 + 2 * (rate - 1) - 1
        side = [total // 2, total - total // 2]
        return tf.pad(x, [[0, 0], side, side, [0, 0]]), "VALID"

    def conv(x, scope, stride=1, rate=1, relu=True):
        kernel = w(f"{scope}/weights")
        if kernel.shape[0] == 1:
            x = tf.nn.conv2d(x, kernel, stride, "SAME")
        else:
            x, padding = pad(x, stride, rate)
            x = tf.nn.conv2d(x, kernel, stride, padding, dilations=rate)
        x = batch_norm(x, scope)
        return tf.nn.relu(x) if relu else x

    def separable(x, scope, stride, rate, inside):
        if not inside:
            x = tf.nn.relu(x)
        x, padding = pad(x, stride, rate)
        x = tf.nn.depthwise_conv2d(
            x,
            w(f"{scope}_depthwise/depthwise_weights"),
            [1, stride, stride, 1],
            padding,
            dilations=[rate, rate],
        )
        x = batch_norm(x, f"{scope}_depthwise")
        if inside:
            x = tf.nn.relu(x)
        return conv(x, f"{scope}_pointwise", relu=inside)

    x = conv(x / 127.5 - 1.0, "entry_flow/conv1_1", stride=2)
    x = conv(x, "entry_flow/conv1_2")
    target, current, rate, low = output_stride // 2, 1, 1, None
    for scope, depths, skip, block_stride, units in BLOCKS[variant]:
        inside = scope == "exit_flow/block2"
        rates = multi_grid if inside else (1, 1, 1)
        for unit in range(1, units + 1):
            if current == target:
                stride, unit_rate = 1, rate
                rate *= block_stride
            else:
                stride, unit_rate = block_stride, 1
                current *= block_stride
            prefix = f"{scope}/unit_{unit}/xception_module"
            inputs = x
            for i in range(3):
                name = f"{prefix}/separable_conv{i + 1}"
                x = separable(
                    x, name, stride if i == 2 else 1, unit_rate * rates[i], inside
                )
                if name + "_pointwise" == LOW_LEVEL_SCOPE[variant]:
                    low = x
            if skip == "conv":
                x = x + conv(inputs, f"{prefix}/shortcut", stride=stride, relu=False)
            elif skip == "sum":
                x = x + inputs
    return x, low


# Every test reads backbones of this crop: one build per variant, output
# stride and multi-grid, shared by the module's tests.
CROP = 65


def backbone(variant, output_stride, multi_grid=None):
    return bt.backbone(variant, CROP, output_stride, multi_grid)


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("output_stride", backbones.OUTPUT_STRIDES)
def test_endpoint_shapes(variant, output_stride):
    model = backbone(variant, output_stride)
    fs = (CROP - 1) // output_stride + 1
    assert tuple(model.output[backbones.FEATURES].shape) == (None, fs, fs, 2048)
    assert tuple(model.output[backbones.LOW_LEVEL].shape) == (None, 17, 17, 256)
    out = model(bt.images(CROP), training=False)
    assert tuple(out[backbones.FEATURES].shape) == (1, fs, fs, 2048)


def test_non_square_crop():
    model = backbones.build_backbone("xception_41", (33, 65), 16)
    assert tuple(model.output[backbones.FEATURES].shape) == (None, 3, 5, 2048)
    assert tuple(model.output[backbones.LOW_LEVEL].shape) == (None, 9, 17, 256)


# -------------------------------------------------- DeepLab's semantics


@pytest.mark.parametrize(
    "variant,output_stride,multi_grid",
    [
        ("xception_41", 8, None),
        ("xception_41", 16, None),
        ("xception_41", 32, None),
        ("xception_65", 16, (1, 2, 4)),
        ("xception_71", 8, (1, 2, 1)),
        ("xception_71", 16, None),
    ],
)
def test_matches_deeplabs_graph_written_in_tf_nn(variant, output_stride, multi_grid):
    model = bt.randomize(backbone(variant, output_stride, multi_grid), seed=1)
    x = bt.images(CROP, seed=2)
    want_features, want_low = reference_xception(
        x, bt.deeplab_weights(model, variant), variant, output_stride,
        multi_grid or (1, 1, 1),
    )
    # The endpoint has no activation (it is the batch norm's output).
    bt.check_matches_reference(model, x, want_features, want_low, low_is_linear=True)


def test_multi_grid_changes_the_features():
    x = bt.images(CROP)
    plain = bt.randomize(backbone("xception_65", 16), seed=3)
    grid = backbone("xception_65", 16, (1, 2, 4))
    grid.set_weights(plain.get_weights())
    a = plain(x, training=False)[backbones.FEATURES].numpy()
    b = grid(x, training=False)[backbones.FEATURES].numpy()
    assert np.abs(a - b).max() > 1e-2 * np.abs(a).max()


@pytest.mark.parametrize(
    "variant,fine,coarse",
    [("xception_65", 8, 16), ("xception_65", 16, 32), ("xception_71", 8, 16)],
)
def test_atrous_consistency(variant, fine, coarse):
    """Same weights: the finer features subsampled by 2 are the coarser."""
    bt.check_atrous_consistency(
        bt.randomize(backbone(variant, fine), seed=4),
        backbone(variant, coarse),
        bt.images(CROP),
        other=bt.images(CROP, seed=1),
    )


def test_dilation_config_output_stride_8():
    model = backbone("xception_65", 8, (1, 2, 4))

    def cfg(name):
        c = model.get_layer(name).get_config()
        return tuple(c["strides"]), tuple(c["dilation_rate"]), c["padding"]

    unit = "{}.unit_{}.xception_module.separable_conv{}_depthwise"
    # Strided and padded explicitly until stride 8 is reached.
    assert cfg(unit.format("entry_flow.block2", 1, 3)) == ((2, 2), (1, 1), "valid")
    assert isinstance(
        model.get_layer(unit.format("entry_flow.block2", 1, 3) + ".pad"),
        tf.keras.layers.ZeroPadding2D,
    )
    # The unit that would pass it runs at stride 1, rate 1, SAME.
    assert cfg(unit.format("entry_flow.block3", 1, 3)) == ((1, 1), (1, 1), "same")
    assert tuple(
        model.get_layer("entry_flow.block3.unit_1.xception_module.shortcut").get_config()[
            "strides"
        ]
    ) == (1, 1)
    for i in (1, 16):
        assert cfg(unit.format("middle_flow.block1", i, 2)) == ((1, 1), (2, 2), "same")
    assert cfg(unit.format("exit_flow.block1", 1, 3)) == ((1, 1), (2, 2), "same")
    # Rate 4 times the multi-grid.
    for i, r in zip((1, 2, 3), (4, 8, 16)):
        assert cfg(unit.format("exit_flow.block2", 1, i)) == ((1, 1), (r, r), "same")


def test_batch_norm_settings_and_weight_decay_on_conv_kernels_not_depthwise():
    # One build with both settings given; the defaults on a shared build.
    model = backbones.build_backbone(
        "xception_41", (33, 33), 16, weight_decay=4e-5, norm_momentum=0.9
    )
    norms = [
        l for l in model.layers if isinstance(l, tf.keras.layers.BatchNormalization)
    ]
    # 2 root convs, 13 modules of 3 separable convs (2 norms each), 4 shortcuts.
    assert len(norms) == 2 + 13 * 6 + 4
    assert {l.epsilon for l in norms} == {1e-3}
    assert {l.momentum for l in norms} == {0.9}
    kernels = [l.kernel for l in model.layers if type(l) is tf.keras.layers.Conv2D]
    assert len(model.losses) == len(kernels) > 0
    expected = sum(2e-5 * float(tf.reduce_sum(tf.square(k))) for k in kernels)
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-4)
    default = backbone("xception_41", 16)
    assert not default.losses
    assert {
        l.momentum
        for l in default.layers
        if isinstance(l, tf.keras.layers.BatchNormalization)
    } == {0.9997}


# ---------------------------------------------------------- serialization


def test_config_round_trip_and_keras_file(tmp_path):
    model = bt.randomize(bt.backbone("xception_41", 33, 8, (1, 2, 4)), seed=5)
    bt.check_config_round_trip_and_keras_file(
        model, bt.images(33), str(tmp_path / "xception.keras")
    )


# test_tf_keras_backbones.py builds this backbone under tf_keras (one process
# for the three backbone files).


# -------------------------------------------------------------- accounting


def test_accounting_counts_every_conv():
    crop = 33
    options = deeplab.ModelOptions(
        model_variant="xception_41",
        crop_size=(crop, crop),
        output_stride=16,
        atrous_rates=(6, 12, 18),
        decoder_output_stride=4,
        backbone_weights=None,
    )
    tf.keras.utils.set_random_seed(0)
    model = deeplab.build_deeplab(options)
    counts = accounting.count(model)
    madds = params = 0
    for layer in model.layers:
        if deeplab.module_of(layer.name) != "backbone":
            continue
        params += layer.count_params()
        if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
            h, w, c = layer.output.shape[1:]
            madds += h * w * c * 9
        elif isinstance(layer, tf.keras.layers.Conv2D):
            h, w, c = layer.output.shape[1:]
            kh, kw, cin, _ = layer.kernel.shape
            madds += h * w * c * kh * kw * cin
    assert counts["backbone"] == {"params": params, "madds": madds}
    assert params == sum(
        int(np.prod(v.shape))
        for v in model.weights
        if deeplab.module_of(v.path.split("/")[0]) == "backbone"
    )
    assert madds > 0


@pytest.mark.parametrize(
    "variant,crop,num_classes,head,published",
    [
        # DeepLab's model_zoo.md, single scale, output stride 16:
        # xception65_coco_voc_trainaug (513x513, ASPP + decoder) 54.17B,
        # xception65_cityscapes_trainfine (1025x2049) 418.64B,
        # xception71_dpc_cityscapes_trainfine (1025x2049, DPC) 502.07B.
        ("xception_65", (513, 513), 21, "aspp", 54.17e9),
        ("xception_65", (1025, 2049), 19, "aspp", 418.64e9),
        ("xception_71", (1025, 2049), 19, "dpc", 502.07e9),
    ],
)
def test_madds_match_deeplabs_published_figures(variant, crop, num_classes, head, published):
    head_options = (
        dict(dense_prediction_cell=model_testing.PUBLISHED)
        if head == "dpc"
        else dict(atrous_rates=(6, 12, 18))
    )
    tf.keras.utils.set_random_seed(0)
    model = deeplab.build_deeplab(
        deeplab.ModelOptions(
            model_variant=variant,
            num_classes=num_classes,
            crop_size=crop,
            output_stride=16,
            decoder_output_stride=4,
            backbone_weights=None,
            **head_options,
        )
    )
    total = accounting.count(model)["total"]["madds"]
    # DeepLab's figures are tfprof's, which also counts some element-wise
    # ops: ours are 0.25%, 0.06% and 0.05% below them.
    assert total == pytest.approx(published, rel=3e-3)
    assert total < published


@pytest.mark.parametrize("variant", VARIANTS)
def test_params_are_deeplabs(variant):
    """The backbone's weights, BN statistics included, are the ImageNet list's."""
    path = os.path.join(
        os.path.dirname(__file__),
        "..", "..", "..", "shared", "fixtures", "deeplab_tf1_variables",
        f"{variant}_imagenet.json",
    )
    if not os.path.exists(path):
        pytest.skip(f"issue 23: the shared fixtures are not at {path}")
    with open(path) as f:
        shapes = [s for _, s in json.load(f)["variables"]]
    assert backbone(variant, 16).count_params() == sum(
        int(np.prod(s)) for s in shapes
    )


# ------------------------------------------------------------------ errors


def test_bad_arguments():
    with pytest.raises(ValueError, match="multi_grid"):
        backbones.build_backbone("xception_65", (33, 33), 16, multi_grid=(1, 2))
    with pytest.raises(ValueError, match="multi_grid"):
        backbones.build_backbone("resnet50", (33, 33), 16, multi_grid=(1, 2, 4))
    with pytest.raises(ValueError, match="depth_multiplier"):
        backbones.build_backbone("xception_65", (33, 33), 16, depth_multiplier=0.5)
    with pytest.raises(ValueError, match="tf1_checkpoint"):
        backbones.build_backbone("xception_65", (33, 33), 16, weights="imagenet")
    with pytest.raises(ValueError, match="unknown Xception"):
        xception.xception(tf.keras.Input((33, 33, 3)), "xception_99")


def test_atrous_schedule():
    assert xception.atrous_schedule([2, 2, 1, 2, 1], 4) == [
        (2, 1),
        (2, 1),
        (1, 1),
        (1, 1),
        (1, 2),
    ]
    assert xception.atrous_schedule([2, 2], 4) == [(2, 1), (2, 1)]
    with pytest.raises(ValueError, match="cannot reach"):
        xception.atrous_schedule([2, 2], 8)
    assert xception.fixed_padding(3) == (1, 1)
    assert xception.fixed_padding(3, 2) == (2, 2)
    assert xception.fixed_padding(4) == (1, 2)

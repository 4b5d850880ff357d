"""Tests for deeplab_dpc.models.mobilenet_v3_seg (DeepLab's MobileNet-v3
seg variants) and the LR-ASPP model DeepLab's model zoo builds on them.

The oracle `reference_network` writes slim's MobileNet-v3 (DeepLab's
`mobilenet_v3_{large,small}_seg` conv defs, `expanded_conv`,
`squeeze_excite`, slim mobilenet's output-stride rule) out again in `tf.nn`
ops from its own tables, reading the weights by their DeepLab names, so it
also checks the names the TF1 importer gives the layers;
`reference_lr_aspp` adds DeepLab's `model.py` head and decoder for the
model-zoo flags.
"""

import functools
import json
import pathlib

import backbone_testing as bt
import pytest
import tensorflow as tf

from deeplab_dpc.models import accounting
from deeplab_dpc.models import backbones
from deeplab_dpc.models import deeplab
from deeplab_dpc.models import mobilenet_v3_seg
from deeplab_dpc.models import tf1_checkpoint

VARIANTS = ("mobilenet_v3_large_seg", "mobilenet_v3_small_seg")
FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "shared" / "fixtures"
VARIABLES = FIXTURES / "deeplab_tf1_variables"
EPSILON = 1e-3

# slim's V3_LARGE / V3_SMALL specs with DeepLab's seg changes, written out
# again: (expansion, filters, kernel, stride, activation, squeeze-excite);
# an expansion above 8 is absolute, else a factor of the input depth.
HS, RE = "hswish", "relu"
SPECS = {
    "mobilenet_v3_large_seg": (
        [
            (1, 16, 3, 1, RE, 0), (4, 24, 3, 2, RE, 0), (3, 24, 3, 1, RE, 0),
            (3, 40, 5, 2, RE, 1), (3, 40, 5, 1, RE, 1), (3, 40, 5, 1, RE, 1),
            (6, 80, 3, 2, HS, 0), (2.5, 80, 3, 1, HS, 0), (2.3, 80, 3, 1, HS, 0),
            (2.3, 80, 3, 1, HS, 0), (6, 112, 3, 1, HS, 1), (6, 112, 3, 1, HS, 1),
            (336, 80, 5, 2, HS, 1), (480, 80, 5, 1, HS, 1), (480, 80, 5, 1, HS, 1),
        ],
        480,
        "expanded_conv_5",  # layer_7
        120,
    ),
    "mobilenet_v3_small_seg": (
        [
            (1, 16, 3, 2, RE, 1), (4.5, 24, 3, 2, RE, 0), (88 / 24, 24, 3, 1, RE, 0),
            (4, 40, 5, 2, HS, 1), (6, 40, 5, 1, HS, 1), (6, 40, 5, 1, HS, 1),
            (3, 48, 5, 1, HS, 1), (3, 48, 5, 1, HS, 1), (144, 48, 5, 2, HS, 1),
            (288, 48, 5, 1, HS, 1), (288, 48, 5, 1, HS, 1),
        ],
        288,
        "expanded_conv_2",  # layer_4
        88,
    ),
}
# DeepLab's model-zoo flags for these models (g3doc/model_zoo.md).
LR_ASPP = dict(
    image_pooling_crop_size=(129, 129),
    image_pooling_stride=(4, 5),
    aspp_with_squeeze_and_excitation=True,
    aspp_convs_filters=128,
    aspp_with_concat_projection=False,
    image_se_uses_qsigmoid=True,
    decoder_output_stride=8,
    decoder_use_sum_merge=True,
    decoder_output_is_logits=True,
)


def lr_aspp_options(variant, crop=(257, 513), num_classes=19, output_stride=32, **kw):
    return deeplab.ModelOptions(
        model_variant=variant,
        num_classes=num_classes,
        crop_size=crop,
        output_stride=output_stride,
        **{**LR_ASPP, "decoder_filters": num_classes, **kw},
    )


@functools.lru_cache(maxsize=None)
def lr_aspp_model(variant):
    """The model zoo's LR-ASPP model at its crop (257, 513), built once;
    tests that change its weights set all of them."""
    tf.keras.utils.set_random_seed(0)
    return deeplab.build_deeplab(lr_aspp_options(variant))


# The backbones' crop: one build per variant and output stride, shared by
# the module's tests.
CROP = 65


def backbone(variant, output_stride):
    return bt.backbone(variant, CROP, output_stride)


def randomize(model, seed=0):
    """He-normal kernels, BN statistics near 1 / 0: a live signal throughout."""
    return bt.randomize(model, seed, bias_std=0.2)


def _divisible(v, d=8):
    r = max(d, int(v + d / 2) // d * d)
    return r + d if r < 0.9 * v else r


def hard_swish(x):
    return x * tf.nn.relu6(x + 3.0) / 6.0


def hard_sigmoid(x):
    return tf.nn.relu6(x + 3.0) * 0.16667


def reference_network(x, weights, variant, output_stride):
    """slim's MobileNet-v3 seg in `tf.nn` ops: (features, stride-8 endpoint)."""
    w = lambda name: weights[f"MobilenetV3/{name}"]
    act = {RE: tf.nn.relu, HS: hard_swish}

    def bn(x, scope):
        return tf.nn.batch_normalization(
            x, w(f"{scope}/BatchNorm/moving_mean"), w(f"{scope}/BatchNorm/moving_variance"),
            w(f"{scope}/BatchNorm/beta"), w(f"{scope}/BatchNorm/gamma"), EPSILON,
        )

    def conv(x, scope, stride=1, activation=None):
        x = bn(tf.nn.conv2d(x, w(f"{scope}/weights"), stride, "SAME"), scope)
        return activation(x) if activation else x

    blocks, last, low_scope, _ = SPECS[variant]
    x = conv(x / 127.5 - 1.0, "Conv", 2, hard_swish)
    current, rate, low = 2, 1, None
    for i, (ef, n, k, s, a, se) in enumerate(blocks):
        scope = "expanded_conv" if i == 0 else f"expanded_conv_{i}"
        if current == output_stride:
            stride, layer_rate = 1, rate
            rate *= s
        else:
            stride, layer_rate = s, 1
            current *= s
        inputs = x
        depth = x.shape[-1]
        inner = ef if ef > 8 else _divisible(depth * ef)
        if inner > depth:
            x = conv(x, f"{scope}/expand", activation=act[a])
        dw = w(f"{scope}/depthwise/depthwise_weights")
        assert dw.shape[0] == k
        x = tf.nn.depthwise_conv2d(
            x, dw, [1, stride, stride, 1], "SAME", dilations=[layer_rate, layer_rate]
        )
        x = act[a](bn(x, f"{scope}/depthwise"))
        if scope == low_scope:
            low = x
        if se:
            pooled = tf.reduce_mean(x, [1, 2], keepdims=True)
            squeeze = tf.nn.relu(
                tf.nn.conv2d(pooled, w(f"{scope}/squeeze_excite/Conv/weights"), 1, "SAME")
                + w(f"{scope}/squeeze_excite/Conv/biases")
            )
            excite = hard_sigmoid(
                tf.nn.conv2d(squeeze, w(f"{scope}/squeeze_excite/Conv_1/weights"), 1, "SAME")
                + w(f"{scope}/squeeze_excite/Conv_1/biases")
            )
            x = x * excite
        x = conv(x, f"{scope}/project")
        assert x.shape[-1] == n
        if stride == 1 and x.shape[-1] == inputs.shape[-1]:
            x = x + inputs
    return conv(x, "Conv_1", activation=hard_swish), low


def reference_lr_aspp(images_, weights, options):
    """DeepLab's model.py for the model-zoo MobileNet-v3 flags, in `tf.nn`."""
    features, low = reference_network(
        images_, weights, options.model_variant, options.output_stride
    )
    w = lambda name: weights[name]
    fh, fw = features.shape[1:3]
    pool = [int((c - 1) / options.output_stride + 1) for c in options.image_pooling_crop_size]
    pooled = tf.nn.avg_pool2d(features, pool, options.image_pooling_stride, "VALID")
    gate = hard_sigmoid(
        tf.nn.conv2d(pooled, w("image_pooling/weights"), 1, "VALID") + w("image_pooling/biases")
    )
    gate = tf.compat.v1.image.resize_bilinear(gate, (fh, fw), align_corners=True)
    aspp0 = tf.nn.relu(
        tf.nn.batch_normalization(
            tf.nn.conv2d(features, w("aspp0/weights"), 1, "SAME"),
            w("aspp0/BatchNorm/moving_mean"), w("aspp0/BatchNorm/moving_variance"),
            w("aspp0/BatchNorm/beta"), w("aspp0/BatchNorm/gamma"), 1e-5,
        )
    )
    head = aspp0 * gate
    size = [int((c - 1) / 8 + 1) for c in options.crop_size]
    projected = tf.nn.conv2d(low, w("decoder/feature_projection0/weights"), 1, "SAME")
    projected += w("decoder/feature_projection0/biases")
    head = tf.compat.v1.image.resize_bilinear(head, size, align_corners=True)
    logits = tf.nn.conv2d(head, w("decoder/decoder_conv0/weights"), 1, "SAME")
    logits += w("decoder/decoder_conv0/biases") + projected
    return tf.compat.v1.image.resize_bilinear(logits, options.crop_size, align_corners=True)


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("output_stride", backbones.OUTPUT_STRIDES)
def test_endpoint_shapes(variant, output_stride):
    model = backbone(variant, output_stride)
    _, last, _, low_depth = SPECS[variant]
    fs = (CROP - 1) // output_stride + 1
    assert tuple(model.output[backbones.FEATURES].shape) == (None, fs, fs, last)
    assert tuple(model.output[backbones.LOW_LEVEL].shape) == (None, 9, 9, low_depth)
    assert backbones.low_level_stride(variant) == 8


# -------------------------------------------------- DeepLab's semantics


@pytest.mark.parametrize(
    "variant,output_stride",
    [(v, s) for v in VARIANTS for s in (32, 16)] + [("mobilenet_v3_small_seg", 8)],
)
def test_matches_deeplabs_network_written_in_tf_nn(variant, output_stride):
    model = randomize(backbone(variant, output_stride), seed=1)
    x = bt.images(CROP, seed=2)
    want_features, want_low = reference_network(
        x, bt.deeplab_weights(model, variant), variant, output_stride
    )
    bt.check_matches_reference(model, x, want_features, want_low, low_is_linear=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_lr_aspp_model_matches_deeplabs_graph_written_in_tf_nn(variant):
    options = lr_aspp_options(variant)
    model = randomize(lr_aspp_model(variant), seed=3)
    names = [layer.name for layer in model.layers]
    assert deeplab.LOGITS_LAYER not in names  # The decoder gives the logits.
    x = bt.images((257, 513), seed=4)
    want = reference_lr_aspp(x, bt.deeplab_weights(model, variant), options)
    got = model(x, training=False).numpy()
    assert got.shape == (1, 257, 513, 19)
    bt.close(want.numpy(), got)
    # The gate is not constant over the image: the pooled grid is 2 x 4.
    assert model.get_layer(deeplab.ASPP_LAYER).pool_size == (5, 5)


@pytest.mark.parametrize(
    "variant,fine,coarse",
    [
        ("mobilenet_v3_small_seg", 8, 16),
        ("mobilenet_v3_large_seg", 8, 16),
        ("mobilenet_v3_large_seg", 16, 32),
    ],
)
def test_atrous_consistency_with_constant_gates(variant, fine, coarse):
    """Same weights: the finer features subsampled by 2 are the coarser.

    The squeeze-and-excite blocks pool globally, over more positions at the
    finer stride, so here their gates are made constant (excite kernels 0,
    biases 3: every gate is 1.00002) to check the dilation schedule alone;
    with live gates the two differ (as in DeepLab). Not small's 16 vs 32:
    its last strided block keeps its depth (48), so at stride 1 slim adds
    its input back, a residual the stride-32 network has not."""
    m_fine = randomize(backbone(variant, fine), seed=4)
    for layer in m_fine.layers:
        if layer.name.endswith("squeeze_excite.Conv_1"):
            layer.kernel.assign(tf.zeros_like(layer.kernel))
            layer.bias.assign(tf.fill(layer.bias.shape, 3.0))
    bt.check_atrous_consistency(m_fine, backbone(variant, coarse), bt.images(CROP))


def test_dilation_config_output_stride_8():
    model = backbone("mobilenet_v3_large_seg", 8)

    def cfg(name):
        c = model.get_layer(f"{name}.depthwise").get_config()
        return tuple(c["strides"]), tuple(c["dilation_rate"])

    assert cfg("expanded_conv_3") == ((2, 2), (1, 1))  # Reaches stride 8.
    assert cfg("expanded_conv_6") == ((1, 1), (1, 1))  # Would pass it.
    assert cfg("expanded_conv_7") == ((1, 1), (2, 2))
    assert cfg("expanded_conv_12") == ((1, 1), (2, 2))
    assert cfg("expanded_conv_13") == ((1, 1), (4, 4))
    # A strided block turned to stride 1 adds its input back when the depths
    # match (slim's rule): small's expanded_conv_8 (48 -> 48) at stride 16.
    small = backbone("mobilenet_v3_small_seg", 16)
    names = {layer.name for layer in small.layers}
    assert "expanded_conv_8.add" in names
    assert "expanded_conv_8.add" not in {
        layer.name for layer in backbone("mobilenet_v3_small_seg", 32).layers
    }


def test_batch_norm_and_weight_decay():
    model = backbones.build_backbone(
        "mobilenet_v3_small_seg", (33, 33), 32, weight_decay=4e-5, norm_momentum=0.9
    )
    norms = [l for l in model.layers if isinstance(l, tf.keras.layers.BatchNormalization)]
    assert {l.epsilon for l in norms} == {1e-3} and {l.momentum for l in norms} == {0.9}
    kernels = [l.kernel for l in model.layers if type(l) is tf.keras.layers.Conv2D]
    assert len(model.losses) == len(kernels) > 0  # Not the depthwise kernels.
    default = backbone("mobilenet_v3_small_seg", 32)
    assert {
        l.momentum for l in default.layers if isinstance(l, tf.keras.layers.BatchNormalization)
    } == {0.997}


# -------------------------------------------------- mapping and accounting


@pytest.mark.skipif(not VARIABLES.is_dir(), reason=f"no fixtures at {VARIABLES}")
@pytest.mark.parametrize("variant", VARIANTS)
def test_variables_map_one_to_one_with_deeplabs_graph(variant):
    config = json.loads(
        (VARIABLES / f"{variant.replace('mobilenet_v3_', 'mnv3_')}.json").read_text()
    )
    flags = set(config["deeplab_flags"])
    for flag in (
        f"--model_variant={variant}", "--image_pooling_stride=4,5",
        "--aspp_convs_filters=128", "--aspp_with_concat_projection=0",
        "--aspp_with_squeeze_and_excitation=1", "--decoder_use_sum_merge=1",
        "--decoder_output_is_logits=1", "--image_se_uses_qsigmoid=1",
        "--decoder_output_stride=8", "--output_stride=32",
    ):
        assert flag in flags, flag
    # The variables do not depend on the crop: the shared (257, 513) build.
    model = lr_aspp_model(variant)
    names = tf1_checkpoint.tf1_variable_names(model, variant)
    got = {n: tuple(v.shape) for n, (v, _) in names.items()}
    want = {n: tuple(s) for n, s in config["variables"]}
    assert sorted(set(got) ^ set(want)) == []
    assert got == want
    assert len(names) == len(model.weights)
    modules = {module for _, module in names.values()}
    assert modules == {"backbone", "head", "decoder"}


def test_accounting():
    model = lr_aspp_model("mobilenet_v3_small_seg")
    counts = accounting.count(model)
    assert counts["logits"] == {"params": 0, "madds": 0}
    assert counts["head_branches"] == counts["head"]
    assert counts["total"]["params"] == model.count_params()
    # The decoder: two 1x1 convs at stride 8 (33 x 65), 88 and 128 -> 19.
    assert counts["decoder"]["madds"] == 33 * 65 * (88 + 128) * 19


def test_bad_options():
    with pytest.raises(ValueError, match="LR-ASPP head is built for"):
        lr_aspp_options("mobilenet_v3_small_seg", atrous_rates=(6, 12, 18))
    with pytest.raises(ValueError, match="must be num_classes=19"):
        lr_aspp_options("mobilenet_v3_small_seg", decoder_filters=21)
    with pytest.raises(ValueError, match="decoder endpoint is at stride 8"):
        deeplab.build_deeplab(
            lr_aspp_options("mobilenet_v3_small_seg", decoder_output_stride=4)
        )
    with pytest.raises(ValueError, match="only for the LR-ASPP head"):
        deeplab.ModelOptions(aspp_with_concat_projection=False)
    with pytest.raises(ValueError, match="multi_grid"):
        backbones.build_backbone("mobilenet_v3_small_seg", (33, 33), 32, multi_grid=(1, 2, 4))


# ---------------------------------------------------------- serialization


def test_config_round_trip_and_keras_file(tmp_path):
    options = lr_aspp_options("mobilenet_v3_small_seg", crop=(129, 129))
    model = randomize(deeplab.build_deeplab(options), seed=5)
    bt.check_config_round_trip_and_keras_file(
        model, bt.images(129), str(tmp_path / "mnv3.keras")
    )


# test_tf_keras_backbones.py builds its LR-ASPP model under tf_keras (one
# process for the three backbone files).

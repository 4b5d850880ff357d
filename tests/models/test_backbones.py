"""Tests for deeplab_dpc.models.backbones."""

import functools
import socket
import time

import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.layers import atrous_pooling
from deeplab_dpc.layers import image_preprocessing
from deeplab_dpc.models import backbones

# Keras 3 warns about containers without weights when loading a weights file;
# Keras warns that imagenet weights for 224x224 inputs are used.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*input_shape. is undefined:UserWarning"),
]

ALPHA = 0.35
FEATURE_CHANNELS = {
    "mobilenet_v2": 112,
    "xception": 2048,
    "resnet50": 2048,
    "resnet101": 2048,
}
LOW_LEVEL_CHANNELS = {
    "mobilenet_v2": 48,
    "xception": 256,
    "resnet50": 256,
    "resnet101": 256,
}


def _depth_multiplier(variant):
    return ALPHA if variant == "mobilenet_v2" else 1.0


@functools.lru_cache(maxsize=None)
def _cached(variant, crop, output_stride):
    """A backbone with weights=None, shared by tests that only read it.

    Tests that change weights set all of them first (`set_weights`).
    """
    tf.keras.utils.set_random_seed(0)
    return backbones.build_backbone(
        variant, (crop, crop), output_stride, _depth_multiplier(variant), None
    )


def _images(crop, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 255.0, (batch, crop, crop, 3)).astype(np.float32)


def _randomize(model, seed=0):
    """Assigns random weights that keep the signal alive through the net.

    Kernels are He-normal (fan-in kh * kw for depthwise kernels), BN gamma
    and variance near 1, beta and mean small: the features then depend on
    the image, not only on the biases.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        depthwise = isinstance(layer, tf.keras.layers.DepthwiseConv2D)
        for w in layer.weights:
            kind = w.name.split("/")[-1].split(":")[0]
            shape = tuple(w.shape)
            if kind in ("gamma", "moving_variance"):
                value = rng.uniform(0.8, 1.2, shape)
            elif len(shape) == 1:  # beta, moving_mean, bias.
                value = rng.normal(0.0, 0.05, shape)
            else:
                fan_in = np.prod(
                    shape[:2] if depthwise or kind == "depthwise_kernel" else shape[:-1]
                )
                value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            w.assign(value.astype(np.float32))
    return model


def _close(a, b, rtol=1e-4):
    """|a - b| <= rtol * max |a|, elementwise."""
    scale = np.max(np.abs(a))
    assert scale > 0
    np.testing.assert_allclose(b, a, rtol=0, atol=rtol * scale)


# ----------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "variant,crop,output_stride",
    [
        ("mobilenet_v2", 33, 8),
        ("mobilenet_v2", 65, 8),
        ("mobilenet_v2", 65, 16),
        ("mobilenet_v2", 97, 16),
        ("mobilenet_v2", 65, 32),
        ("xception", 81, 8),
        ("xception", 97, 16),
        ("xception", 97, 32),
        ("resnet50", 33, 8),
        ("resnet50", 65, 16),
        ("resnet50", 65, 32),
    ],
)
def test_endpoint_shapes(variant, crop, output_stride):
    model = _cached(variant, crop, output_stride)
    assert set(model.output) == {backbones.FEATURES, backbones.LOW_LEVEL}
    fs = (crop - 1) // output_stride + 1
    ls = (crop - 1) // 4 + 1
    assert tuple(model.output[backbones.FEATURES].shape) == (
        None,
        fs,
        fs,
        FEATURE_CHANNELS[variant],
    )
    assert tuple(model.output[backbones.LOW_LEVEL].shape) == (
        None,
        ls,
        ls,
        LOW_LEVEL_CHANNELS[variant],
    )
    assert tuple(model.input.shape) == (None, crop, crop, 3)


def test_endpoint_shapes_when_run():
    model = _cached("mobilenet_v2", 65, 16)
    out = model(_images(65, batch=2), training=False)
    assert tuple(out[backbones.FEATURES].shape) == (2, 5, 5, 112)
    assert tuple(out[backbones.LOW_LEVEL].shape) == (2, 17, 17, 48)
    assert np.isfinite(out[backbones.FEATURES].numpy()).all()


def test_non_square_crop():
    model = backbones.build_backbone("mobilenet_v2", (33, 65), 16, ALPHA)
    assert tuple(model.output[backbones.FEATURES].shape) == (None, 3, 5, 112)
    assert tuple(model.output[backbones.LOW_LEVEL].shape) == (None, 9, 17, 48)


def test_resnet101_shapes():
    model = backbones.build_backbone("resnet101", (65, 65), 16)
    assert tuple(model.output[backbones.FEATURES].shape) == (None, 5, 5, 2048)
    assert tuple(model.output[backbones.LOW_LEVEL].shape) == (None, 17, 17, 256)


def test_depth_multiplier_changes_channels():
    model = backbones.build_backbone("mobilenet_v2", (33, 33), 16, 0.5)
    assert model.output[backbones.FEATURES].shape[-1] == 160  # 320 * 0.5.


@pytest.mark.parametrize("output_stride", backbones.OUTPUT_STRIDES)
def test_mobilenet_v3_large_shapes(output_stride):
    crop = (65, 97)
    model = backbones.build_backbone("mobilenet_v3_large", crop, output_stride, 0.75)
    fh, fw = ((c - 1) // output_stride + 1 for c in crop)
    assert tuple(model.input.shape) == (None, *crop, 3)
    assert tuple(model.output[backbones.FEATURES].shape) == (None, fh, fw, 120)
    assert tuple(model.output[backbones.LOW_LEVEL].shape) == (
        None,
        17,
        25,
        24,
    )  # Stride 4 at every output stride.
    x = np.random.default_rng(0).uniform(0, 255, (1, *crop, 3)).astype(np.float32)
    out = model(x, training=False)
    assert tuple(out[backbones.FEATURES].shape) == (1, fh, fw, 120)
    assert tuple(out[backbones.LOW_LEVEL].shape) == (1, 17, 25, 24)
    assert np.isfinite(out[backbones.FEATURES].numpy()).all()


# ------------------------------------------------------- atrous consistency


@pytest.mark.parametrize(
    "variant,crop,fine,coarse",
    [
        ("mobilenet_v2", 65, 16, 32),
        ("mobilenet_v2", 65, 8, 16),
        ("xception", 97, 16, 32),
        ("xception", 81, 8, 16),
        ("resnet50", 65, 16, 32),
    ],
)
def test_atrous_consistency(variant, crop, fine, coarse):
    """Same weights: the finer features subsampled by 2 are the coarser.

    At output stride 8, Xception's block13_pool (3x3 max pool, stride 2)
    comes after the output stride is reached: it must pool a dilated 3x3
    window for the network to stay the dilated version of the OS-16 one.
    """
    m_fine = _cached(variant, crop, fine)
    m_coarse = _cached(variant, crop, coarse)
    _randomize(m_fine)
    m_coarse.set_weights(m_fine.get_weights())
    x = _images(crop)
    out_fine = m_fine(x, training=False)
    out_coarse = m_coarse(x, training=False)
    f_fine = out_fine[backbones.FEATURES].numpy()
    f_coarse = out_coarse[backbones.FEATURES].numpy()
    # Not vacuous: the features depend on the image (by far more than the
    # tolerance of the check below).
    other = m_coarse(_images(crop, seed=1), training=False)
    assert np.abs(other[backbones.FEATURES].numpy() - f_coarse).max() > (
        1e-2 * np.abs(f_coarse).max()
    )
    assert f_fine.shape[1] == 2 * (f_coarse.shape[1] - 1) + 1
    _close(f_coarse, f_fine[:, ::2, ::2])
    # The stride-4 endpoint is not affected by the output stride.
    _close(
        out_coarse[backbones.LOW_LEVEL].numpy(),
        out_fine[backbones.LOW_LEVEL].numpy(),
        rtol=1e-5,
    )
    # Not trivially equal: the fine map has content between the samples.
    assert not np.allclose(f_fine[:, 1::2, 1::2], f_fine[:, :-1:2, :-1:2])


def test_output_stride_32_is_the_keras_application():
    """At output stride 32 nothing is dilated: the backbone is Keras'
    MobileNetV2 on `(2 / 255) * x - 1`, endpoint for endpoint."""
    crop = 65
    model = _cached("mobilenet_v2", crop, 32)
    app = tf.keras.applications.MobileNetV2(
        input_shape=(crop, crop, 3), alpha=ALPHA, include_top=False, weights=None
    )
    _randomize(app, seed=1)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(app.get_layer(layer.name).get_weights())
    spec = backbones.BACKBONES["mobilenet_v2"]
    extractor = tf.keras.Model(
        app.input,
        [app.get_layer(spec.features).output, app.get_layer(spec.low_level).output],
    )
    x = _images(crop, batch=2, seed=2)
    expected = extractor(x / 127.5 - 1.0, training=False)
    out = model(x, training=False)
    _close(expected[0].numpy(), out[backbones.FEATURES].numpy(), rtol=1e-5)
    _close(expected[1].numpy(), out[backbones.LOW_LEVEL].numpy(), rtol=1e-5)


# --------------------------------------------------------- dilation config


def test_mobilenet_v2_dilation_config_output_stride_8():
    model = _cached("mobilenet_v2", 65, 8)

    def cfg(name):
        c = model.get_layer(name).get_config()
        return tuple(c["strides"]), tuple(c["dilation_rate"])

    assert cfg("block_3_depthwise") == ((2, 2), (1, 1))  # Stride 4 -> 8.
    assert cfg("block_5_depthwise") == ((1, 1), (1, 1))
    assert cfg("block_6_depthwise") == ((1, 1), (1, 1))  # Was stride 2.
    for i in range(7, 13):
        assert cfg(f"block_{i}_depthwise") == ((1, 1), (2, 2))
    assert cfg("block_13_depthwise") == ((1, 1), (2, 2))  # Was stride 2.
    for i in range(14, 17):
        assert cfg(f"block_{i}_depthwise") == ((1, 1), (4, 4))
    # 1x1 convs are never dilated.
    assert tuple(model.get_layer("block_14_project").get_config()["dilation_rate"]) == (
        1,
        1,
    )


def test_xception_block13_pool_is_atrous_at_output_stride_8():
    # block13_pool (3x3 max pool, stride 2) reads a stride-16 map: at output
    # stride 8 its stride becomes 1 and its window is dilated by 2.
    layer = _cached("xception", 81, 8).get_layer("block13_pool")
    assert isinstance(layer, atrous_pooling.AtrousPooling2D)
    assert type(layer).__name__ == "AtrousPooling2D"
    config = layer.get_config()
    assert config["pooling_type"] == "MAX"
    assert tuple(config["pool_size"]) == (3, 3)
    assert tuple(config["dilation_rate"]) == (2, 2)
    # At output stride 16 it keeps Keras' layer, at stride 1 (rate 1); at 32
    # it is Keras' own.
    for output_stride, strides in ((16, (1, 1)), (32, (2, 2))):
        layer = _cached("xception", 97, output_stride).get_layer("block13_pool")
        assert type(layer).__name__ == "MaxPooling2D"
        assert tuple(layer.get_config()["strides"]) == strides


def test_resnet50_dilation_config_output_stride_16():
    model = _cached("resnet50", 65, 16)

    def cfg(name):
        c = model.get_layer(name).get_config()
        return tuple(c["strides"]), tuple(c["dilation_rate"])

    assert cfg("conv4_block1_1_conv") == ((2, 2), (1, 1))
    # Both the shortcut and the main path of conv5_block1 lose their stride.
    assert cfg("conv5_block1_0_conv")[0] == (1, 1)
    assert cfg("conv5_block1_1_conv")[0] == (1, 1)
    assert cfg("conv5_block1_2_conv") == ((1, 1), (2, 2))
    assert cfg("conv5_block3_2_conv") == ((1, 1), (2, 2))
    assert cfg("conv5_block3_1_conv") == ((1, 1), (1, 1))  # 1x1.


# ------------------------------------------------------------ weights file


@pytest.fixture(name="weights_file", scope="module")
def _weights_file(tmp_path_factory):
    """A no-top MobileNetV2 (alpha 0.35) weights file with random weights:
    (the application, the file's path). Tests must not change either."""
    app = tf.keras.applications.MobileNetV2(
        input_shape=(65, 65, 3), alpha=ALPHA, include_top=False, weights=None
    )
    _randomize(app, seed=0)
    # Loads under Keras 3 and tf_keras.
    path = tmp_path_factory.mktemp("weights_file") / "w.weights.h5"
    app.save_weights(str(path))
    return app, str(path)


def test_weights_file_is_loaded(weights_file):
    app, path = weights_file
    model = backbones.build_backbone("mobilenet_v2", (65, 65), 16, ALPHA, weights=path)
    for name in ("Conv1", "block_16_depthwise", "block_16_project_BN"):
        for got, want in zip(
            model.get_layer(name).get_weights(), app.get_layer(name).get_weights()
        ):
            np.testing.assert_array_equal(got, want)
    # Every layer with weights got the file's.
    loaded = [layer for layer in model.layers if layer.weights]
    assert len(loaded) > 50
    for layer in loaded:
        for got, want in zip(
            layer.get_weights(), app.get_layer(layer.name).get_weights()
        ):
            np.testing.assert_array_equal(got, want, err_msg=layer.name)
    # Past the output stride, depthwise convs are dilated.
    for i in (14, 15, 16):
        config = model.get_layer(f"block_{i}_depthwise").get_config()
        assert min(config["dilation_rate"]) > 1
        assert tuple(config["strides"]) == (1, 1)
    assert tuple(
        model.get_layer("block_12_depthwise").get_config()["dilation_rate"]
    ) == (1, 1)


def test_weights_file_at_other_crop_and_output_stride(weights_file):
    # The file of a 65x65 application loads into a 33x33, OS-8 backbone.
    app, path = weights_file
    model = backbones.build_backbone("mobilenet_v2", (33, 33), 8, ALPHA, weights=path)
    np.testing.assert_array_equal(
        model.get_layer("block_16_depthwise").get_weights()[0],
        app.get_layer("block_16_depthwise").get_weights()[0],
    )
    assert tuple(
        model.get_layer("block_16_depthwise").get_config()["dilation_rate"]
    ) == (4, 4)


# ------------------------------------------------------------------ errors


def test_unknown_variant():
    with pytest.raises(ValueError, match="mobilenet_v3"):
        backbones.build_backbone("mobilenet_v3", (65, 65), 16)


@pytest.mark.parametrize(
    "crop,output_stride", [((64, 64), 16), ((65, 64), 16), ((49, 49), 32), ((9, 9), 16)]
)
def test_bad_crop(crop, output_stride):
    with pytest.raises(ValueError, match=r"output_stride \* k \+ 1"):
        backbones.build_backbone("mobilenet_v2", crop, output_stride, ALPHA)


@pytest.mark.parametrize("output_stride", [4, 2, 64])
def test_bad_output_stride(output_stride):
    with pytest.raises(ValueError, match="output_stride"):
        backbones.build_backbone("mobilenet_v2", (65, 65), output_stride, ALPHA)


@pytest.mark.parametrize("variant", ["resnet50", "xception"])
def test_depth_multiplier_only_for_mobilenet(variant):
    with pytest.raises(ValueError, match="depth_multiplier"):
        backbones.build_backbone(variant, (81, 81), 16, 0.5)


def test_missing_weights_file(tmp_path):
    path = str(tmp_path / "nope.weights.h5")
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        backbones.build_backbone("mobilenet_v2", (65, 65), 16, ALPHA, weights=path)


def test_weights_file_of_another_architecture(weights_file):
    _, path = weights_file
    with pytest.raises(ValueError, match="w.weights.h5"):
        backbones.build_backbone("xception", (81, 81), 16, weights=path)
    with pytest.raises(ValueError, match="w.weights.h5"):  # Other alpha.
        backbones.build_backbone("mobilenet_v2", (65, 65), 16, 1.0, weights=path)


def test_imagenet_without_network_says_how_to_pass_a_file():
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(3)
    start = time.monotonic()
    try:
        with pytest.raises(RuntimeError) as info:
            backbones.build_backbone(
                "mobilenet_v2", (65, 65), 16, ALPHA, weights="imagenet"
            )
    finally:
        socket.setdefaulttimeout(previous)
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "mobilenet_v2" in message
    assert "path" in message
    assert "--backbone_weights=" in message


# ----------------------------------------------------------- preprocessing


@pytest.mark.parametrize(
    "variant,crop,mode",
    [("mobilenet_v2", 65, "tf"), ("xception", 97, "tf"), ("resnet50", 65, "caffe")],
)
def test_preprocessing_layer_is_in_the_model(variant, crop, mode):
    model = _cached(variant, crop, 16)
    layer = model.get_layer("preprocessing")
    assert isinstance(layer, image_preprocessing.ImagePreprocessing)
    assert layer.get_config()["mode"] == mode
    names = [l.name for l in model.layers]
    assert names.index("preprocessing") == 1  # Right after the input.
    assert names.count("preprocessing") == 1


def test_backbone_takes_images_in_0_255():
    # Behaviour: the model normalises itself, so feeding (x/127.5 - 1)
    # instead of x gives another result; feeding x twice gives the same.
    model = _cached("mobilenet_v2", 65, 16)
    _randomize(model, seed=4)
    x = _images(65)
    a = model(x, training=False)[backbones.FEATURES].numpy()
    b = model(x, training=False)[backbones.FEATURES].numpy()
    c = model(x / 127.5 - 1.0, training=False)[backbones.FEATURES].numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1 * np.abs(a).max()


@pytest.mark.parametrize("variant", ["mobilenet_v2", "xception"])
def test_weight_decay_on_backbone_kernels_not_depthwise(variant):
    crop = (33, 33) if variant == "mobilenet_v2" else (81, 81)
    multiplier = 0.35 if variant == "mobilenet_v2" else 1.0
    plain = _cached(variant, 65 if variant == "mobilenet_v2" else 97, 16)
    decayed = backbones.build_backbone(variant, crop, 16, multiplier, weight_decay=4e-5)
    assert not plain.losses
    kernels = [
        layer.kernel for layer in decayed.layers if type(layer).__name__ == "Conv2D"
    ] + [
        layer.pointwise_kernel
        for layer in decayed.layers
        if type(layer).__name__ == "SeparableConv2D"
    ]
    assert len(decayed.losses) == len(kernels) > 0
    # slim's l2_regularizer: weight_decay * sum(w ** 2) / 2 per kernel.
    expected = sum(2e-5 * float(tf.reduce_sum(tf.square(w))) for w in kernels)
    assert float(tf.add_n(decayed.losses)) == pytest.approx(expected, rel=1e-4)


def test_norm_momentum_reaches_every_backbone_batch_norm():
    # DeepLab's batch_norm_decay; without it Keras' 0.999 would stay, and a
    # short run would evaluate with moving statistics near their start.
    model = backbones.build_backbone(
        "mobilenet_v2", (33, 33), 16, depth_multiplier=0.35, norm_momentum=0.9
    )
    norms = [
        layer
        for layer in model.layers
        if isinstance(layer, tf.keras.layers.BatchNormalization)
    ]
    assert len(norms) > 40
    assert {layer.momentum for layer in norms} == {0.9}
    kept = _cached("mobilenet_v2", 65, 16)
    assert {
        layer.momentum
        for layer in kept.layers
        if isinstance(layer, tf.keras.layers.BatchNormalization)
    } == {0.999}


def test_deeplab_variants_preprocess_as_deeplabs_feature_extractor():
    """DeepLab's feature extractor maps images to [-1, 1] ((2/255) x - 1)
    for every variant it has checkpoints of here (MobileNet, Xception and
    the ResNet-v1-beta ones alike), and pads with the mean pixel 127.5,
    which so maps to 0."""
    from deeplab_dpc.data import augment  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.models import tf1_checkpoint  # pylint: disable=import-outside-toplevel

    for variant in tf1_checkpoint.NETWORK_SCOPES:
        assert backbones.BACKBONES[variant].preprocessing == "tf", variant
    layer = image_preprocessing.ImagePreprocessing("tf")
    pixels = tf.constant([[[[0.0, 127.5, 255.0], list(augment.MEAN_PIXEL)]]])
    np.testing.assert_allclose(
        layer(pixels).numpy().ravel(), [-1, 0, 1, 0, 0, 0], atol=1e-6
    )

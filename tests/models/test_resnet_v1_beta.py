"""Tests for deeplab_dpc.models.resnet_v1_beta (DeepLab's ResNet-v1-beta).

As in test_xception.py, the oracle `reference_resnet` writes DeepLab's
`core/resnet_v1_beta.py` semantics out with `tf.nn` ops (three 3x3 stem convs,
SAME 3x3 max pool, stride on each block's last unit, 1x1 max-pool shortcut
when the depth is kept, explicit padding of strided 3x3 convs, batch norm
epsilon 1e-5, multi-grid on block4, `stack_blocks_dense`) and reads the
weights by their DeepLab names.
"""

import copy
import functools
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.models import backbones
from deeplab_dpc.models import resnet_v1_beta
from deeplab_dpc.models import tf1_checkpoint

VARIANTS = ("resnet_v1_50_beta", "resnet_v1_101_beta")
SCOPES = {"resnet_v1_50_beta": "resnet_v1_50", "resnet_v1_101_beta": "resnet_v1_101"}
UNITS = {"resnet_v1_50_beta": (3, 4, 6, 3), "resnet_v1_101_beta": (3, 4, 23, 3)}
EPSILON = 1e-5


@functools.lru_cache(maxsize=None)
def backbone(variant, crop, output_stride, multi_grid=None):
    tf.keras.utils.set_random_seed(0)
    return backbones.build_backbone(
        variant, (crop, crop), output_stride, multi_grid=multi_grid
    )


def images(crop, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 255.0, (batch, crop, crop, 3)).astype(np.float32)


def randomize(model, seed=0):
    """He-normal kernels (scaled down: 16-33 residual units add up), BN
    statistics near 1 / 0."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        kind = variable.name.split("/")[-1].split(":")[0]
        if kind in ("gamma", "moving_variance"):
            value = rng.uniform(0.8, 1.2, shape)
        elif len(shape) == 1:
            value = rng.normal(0.0, 0.05, shape)
        else:
            value = rng.normal(0.0, 0.5 * np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        variable.assign(value.astype(np.float32))
    return model


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


def close(want, got, rtol=1e-4):
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("output_stride", backbones.OUTPUT_STRIDES)
def test_endpoint_shapes(variant, output_stride):
    model = backbone(variant, 33, output_stride)
    fs = 32 // output_stride + 1
    assert tuple(model.output[backbones.FEATURES].shape) == (None, fs, fs, 2048)
    assert tuple(model.output[backbones.LOW_LEVEL].shape) == (None, 9, 9, 256)
    out = model(images(33), training=False)
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
    crop = 65
    model = randomize(backbone(variant, crop, output_stride, multi_grid), seed=1)
    weights = {
        name: variable.numpy()
        for name, (variable, _) in tf1_checkpoint.tf1_variable_names(
            model, variant
        ).items()
    }
    x = images(crop, seed=2)
    out = model(x, training=False)
    want, want_low = reference_resnet(
        x, weights, variant, output_stride, multi_grid or (1, 1, 1)
    )
    close(want.numpy(), out[backbones.FEATURES].numpy())
    close(want_low.numpy(), out[backbones.LOW_LEVEL].numpy())
    assert want_low.numpy().min() < 0  # No activation at the endpoint.


@pytest.mark.parametrize("fine,coarse", [(8, 16), (16, 32)])
def test_atrous_consistency(fine, coarse):
    crop = 65
    m_fine = randomize(backbone("resnet_v1_50_beta", crop, fine, (1, 2, 4)), seed=4)
    m_coarse = backbone("resnet_v1_50_beta", crop, coarse, (1, 2, 4))
    m_coarse.set_weights(m_fine.get_weights())
    x = images(crop)
    f_fine = m_fine(x, training=False)[backbones.FEATURES].numpy()
    f_coarse = m_coarse(x, training=False)[backbones.FEATURES].numpy()
    close(f_coarse, f_fine[:, ::2, ::2])
    other = m_coarse(images(crop, seed=1), training=False)[backbones.FEATURES].numpy()
    assert np.abs(other - f_coarse).max() > 1e-2 * np.abs(f_coarse).max()
    assert not np.allclose(f_fine[:, 1::2, 1::2], f_fine[:, :-1:2, :-1:2])


def test_dilation_config_output_stride_16():
    model = backbone("resnet_v1_50_beta", 65, 16, (1, 2, 4))

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
    model = randomize(backbone("resnet_v1_50_beta", 33, 8, (1, 2, 4)), seed=5)
    config = model.get_config()
    clone = tf.keras.Model.from_config(copy.deepcopy(config))
    assert json.dumps(clone.get_config(), sort_keys=True, default=str) == json.dumps(
        config, sort_keys=True, default=str
    )
    path = str(tmp_path / "resnet.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    x = images(33)
    want, got = model(x, training=False), loaded(x, training=False)
    for key in (backbones.FEATURES, backbones.LOW_LEVEL):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-5, atol=1e-5)


def test_builds_and_maps_under_tf_keras(program_env):
    script = textwrap.dedent(
        """
        import numpy as np, tensorflow as tf
        assert tf.keras.Model.__module__.startswith("tf_keras")
        from deeplab_dpc.models import backbones, tf1_checkpoint
        model = backbones.build_backbone(
            "resnet_v1_50_beta", (33, 33), 16, multi_grid=(1, 2, 4))
        out = model(np.zeros((1, 33, 33, 3), np.float32), training=False)
        print(tuple(out["features"].shape), tuple(out["low_level"].shape))
        names = tf1_checkpoint.tf1_variable_names(model, "resnet_v1_50_beta")
        print(len(names), len(model.weights))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(program_env, TF_USE_LEGACY_KERAS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shapes, counts = result.stdout.strip().splitlines()[-2:]
    assert shapes == "(1, 3, 3, 2048) (1, 9, 9, 256)"
    n, total = counts.split()
    assert n == total == "275"  # DeepLab's resnet_v1_50_beta_imagenet list.


def test_bad_arguments():
    with pytest.raises(ValueError, match="multi_grid"):
        backbones.build_backbone("resnet_v1_50_beta", (33, 33), 16, multi_grid=(1, 2))
    with pytest.raises(ValueError, match="unknown ResNet-v1-beta"):
        resnet_v1_beta.resnet_v1_beta(tf.keras.Input((33, 33, 3)), "resnet_v1_18_beta")
    with pytest.raises(ValueError, match="depth_multiplier"):
        backbones.build_backbone("resnet_v1_101_beta", (33, 33), 16, depth_multiplier=2.0)

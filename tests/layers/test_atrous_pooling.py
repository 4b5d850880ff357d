"""Tests for deeplab_dpc.layers.atrous_pooling."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
from deeplab_dpc.layers import atrous_pooling

C = layer_testing.C
AtrousPooling2D = atrous_pooling.AtrousPooling2D


def _pool_by_hand(x, pooling_type, pool_size, rate):
    """Stride-1 SAME pooling over the dilated window, padding excluded.

    Output (i, j) reads rows i + a * r_h - pad_top for a < k_h (likewise for
    columns), with TensorFlow's SAME split of the (k - 1) * r padding (the
    smaller half on top and left); taps outside the map are skipped.
    """
    (kh, kw), (rh, rw) = pool_size, rate
    top, left = (kh - 1) * rh // 2, (kw - 1) * rw // 2
    _, height, width, _ = x.shape
    out = np.zeros_like(x)
    for i in range(height):
        for j in range(width):
            taps = [
                x[:, i + a * rh - top, j + b * rw - left]
                for a in range(kh)
                for b in range(kw)
                if 0 <= i + a * rh - top < height and 0 <= j + b * rw - left < width
            ]
            reduce = np.max if pooling_type == "MAX" else np.mean
            out[:, i, j] = reduce(np.stack(taps), axis=0)
    return out


def _negative_map(shape, seed=0):
    """Values in [-2, -1): a zero from the padding would win every max."""
    rng = np.random.default_rng(seed)
    return -rng.uniform(1.0, 2.0, shape).astype(np.float32)


@pytest.mark.parametrize("pooling_type", atrous_pooling.POOLING_TYPES)
@pytest.mark.parametrize(
    "pool_size,rate",
    [
        ((3, 3), (1, 1)),
        ((3, 3), (2, 2)),
        ((2, 2), (1, 1)),
        ((3, 1), (4, 1)),
        ((3, 3), (6, 6)),  # The window is wider than the map.
    ],
)
def test_atrous_pooling_shape(pooling_type, pool_size, rate):
    layer = AtrousPooling2D(pooling_type, pool_size, rate)
    x = layer_testing.features((2, 7, 9, C))
    assert layer(x).shape == (2, 7, 9, C)
    assert tuple(layer.compute_output_shape((2, 7, 9, C))) == (2, 7, 9, C)
    # Unknown spatial sizes at build time.
    inputs = tf.keras.Input((None, None, C))
    model = tf.keras.Model(
        inputs, AtrousPooling2D(pooling_type, pool_size, rate)(inputs)
    )
    assert model(layer_testing.features((1, 5, 11, C))).shape == (1, 5, 11, C)


def test_atrous_max_pooling_by_hand_on_negative_map():
    # Rate 2, 3x3 window: output (i, j) is the max of x at rows i-2, i, i+2
    # and columns j-2, j, j+2 inside the map. The map is negative, so were
    # the padding a zero (tf.nn.pool with dilations pads with zeros), every
    # border output would be 0.
    x = _negative_map((2, 7, 8, 3))
    out = AtrousPooling2D("MAX", (3, 3), (2, 2))(tf.constant(x)).numpy()
    np.testing.assert_array_equal(out, _pool_by_hand(x, "MAX", (3, 3), (2, 2)))
    assert (out < 0).all()
    # A corner reads 4 taps, an edge 6, the inside 9.
    np.testing.assert_array_equal(out[:, 0, 0], np.max(x[:, 0:3:2, 0:3:2], axis=(1, 2)))
    np.testing.assert_array_equal(out[:, 0, 4], np.max(x[:, 0:3:2, 2:7:2], axis=(1, 2)))
    np.testing.assert_array_equal(out[:, 6, 7], np.max(x[:, 4:7:2, 5:8:2], axis=(1, 2)))
    np.testing.assert_array_equal(out[:, 3, 3], np.max(x[:, 1:6:2, 1:6:2], axis=(1, 2)))


@pytest.mark.parametrize("pooling_type", atrous_pooling.POOLING_TYPES)
@pytest.mark.parametrize(
    "pool_size,rate",
    [((3, 3), (2, 3)), ((3, 5), (1, 2)), ((2, 2), (2, 2)), ((3, 3), (4, 4))],
)
def test_atrous_pooling_matches_by_hand(pooling_type, pool_size, rate):
    x = _negative_map((1, 9, 10, 2), seed=1)
    out = AtrousPooling2D(pooling_type, pool_size, rate)(tf.constant(x))
    np.testing.assert_allclose(
        out.numpy(), _pool_by_hand(x, pooling_type, pool_size, rate), rtol=1e-6
    )


@pytest.mark.parametrize("pool_size", [3, 2, 5])
def test_atrous_max_pooling_rate_1_is_keras_max_pooling(pool_size):
    x = layer_testing.features((2, 7, 9, C), seed=2) - 3.0
    expected = tf.keras.layers.MaxPooling2D(pool_size, strides=1, padding="same")(x)
    out = AtrousPooling2D("MAX", (pool_size, pool_size), (1, 1))(x)
    np.testing.assert_array_equal(out.numpy(), expected.numpy())


@pytest.mark.parametrize("pool_size", [3, 2])
def test_atrous_avg_pooling_rate_1_is_keras_average_pooling(pool_size):
    x = layer_testing.features((2, 7, 9, C), seed=3)
    expected = tf.keras.layers.AveragePooling2D(pool_size, strides=1, padding="same")(x)
    out = AtrousPooling2D("AVG", (pool_size, pool_size), (1, 1))(x)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rate", [(1, 1), (2, 2), (2, 3), (5, 5)])
def test_atrous_avg_pooling_excludes_padding(rate):
    # A constant map stays constant, borders included: the mean is over the
    # taps inside the map (zero padding would lower the borders).
    x = tf.fill([2, 7, 9, 3], -2.5)
    out = AtrousPooling2D("AVG", (3, 3), rate)(x).numpy()
    np.testing.assert_allclose(out, -2.5, rtol=1e-6)
    out = AtrousPooling2D("MAX", (3, 3), rate)(x).numpy()
    np.testing.assert_array_equal(out, -2.5)


@pytest.mark.parametrize("pooling_type", ["max", "L2", "", None])
def test_atrous_pooling_rejects_bad_pooling_type(pooling_type):
    with pytest.raises(ValueError, match="pooling_type"):
        AtrousPooling2D(pooling_type, (3, 3), (2, 2))


def test_atrous_pooling_has_no_weights():
    layer = AtrousPooling2D("MAX", (3, 3), (2, 2))
    layer(layer_testing.features())
    assert not layer.weights


# ------------------------------------------------------------ serialization


_CASES = [
    pytest.param(
        lambda: AtrousPooling2D("MAX", (3, 3), (2, 2), name="block13_pool"),
        [(9, 9, C)],
        id="atrous_max_pool",
    ),
    pytest.param(
        lambda: AtrousPooling2D("AVG", [3, 5], [1, 2]),
        [(7, 11, C)],
        id="atrous_avg_pool",
    ),
]


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_config_round_trip(factory, shapes):
    del shapes
    layer_testing.check_config_round_trip(factory())


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_keras_save_load(factory, shapes, tmp_path):
    layer_testing.check_keras_save_load(factory, shapes, tmp_path)


def test_atrous_pooling_config_values():
    config = AtrousPooling2D("AVG", [3, 5], [1, 2], name="p").get_config()
    assert config["pooling_type"] == "AVG"
    assert tuple(config["pool_size"]) == (3, 5)
    assert tuple(config["dilation_rate"]) == (1, 2)
    rebuilt = AtrousPooling2D.from_config(config)
    x = layer_testing.features((1, 5, 7, 2))
    np.testing.assert_array_equal(
        rebuilt(x).numpy(), AtrousPooling2D("AVG", (3, 5), (1, 2))(x).numpy()
    )

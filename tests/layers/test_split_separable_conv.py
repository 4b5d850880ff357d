"""Tests for deeplab_dpc.layers.split_separable_conv."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
from deeplab_dpc.layers import split_separable_conv

C, F, FEAT = layer_testing.C, layer_testing.F, layer_testing.FEAT
BN_SCALE = layer_testing.BN_SCALE
_features = layer_testing.features


@pytest.mark.parametrize("rate", [1, (1, 6), (18, 3), (21, 21)])
def test_split_separable_shape(rate):
    layer = split_separable_conv.SplitSeparableConv2D(F, rate=rate)
    assert layer(_features((2, FEAT, FEAT, C))).shape == (2, FEAT, FEAT, F)


@pytest.mark.parametrize("c,f", [(8, 16), (3, 5), (320, 256)])
def test_split_separable_param_count(c, f):
    layer = split_separable_conv.SplitSeparableConv2D(f, rate=(6, 21))
    layer(_features((1, 5, 5, c)))
    assert layer.count_params() == 9 * c + 4 * c + c * f + 4 * f


def test_split_separable_rejects_bad_rate():
    with pytest.raises(ValueError, match="rate"):
        split_separable_conv.SplitSeparableConv2D(F, rate=(0, 1))


def test_split_separable_ones_by_hand():
    # Depthwise 3x3 of ones on a ones image counts the in-range taps (SAME
    # padding): 4 at a corner, 6 on an edge, 9 inside; then BN, ReLU, a
    # pointwise sum over channels, BN, ReLU.
    x = tf.ones([1, 5, 5, 2])
    layer = split_separable_conv.SplitSeparableConv2D(3, rate=1)
    layer.build(x.shape)
    layer_testing.set_ones(layer)
    out = layer(x, training=False).numpy()[0, ..., 0]
    taps = np.array(
        [[4, 6, 6, 6, 4]] + [[6, 9, 9, 9, 6]] * 3 + [[4, 6, 6, 6, 4]], np.float32
    )
    np.testing.assert_allclose(out, 2 * taps * BN_SCALE**2, rtol=1e-5)


@pytest.mark.parametrize("rate", [(1, 3), (2, 1), (3, 2)])
def test_split_separable_rate_is_height_then_width(rate):
    # An impulse spreads to the 3x3 taps of the dilated kernel: rows
    # centre +- r_h, columns centre +- r_w.
    size, centre = 11, 5
    x = np.zeros([1, size, size, 1], np.float32)
    x[0, centre, centre, 0] = 1.0
    layer = split_separable_conv.SplitSeparableConv2D(2, rate=rate)
    layer.build(x.shape)
    layer_testing.set_ones(layer)
    out = layer(tf.constant(x), training=False).numpy()[0, ..., 0]
    rows = {centre - rate[0], centre, centre + rate[0]}
    cols = {centre - rate[1], centre, centre + rate[1]}
    expected = np.zeros([size, size], bool)
    for r in rows:
        for c in cols:
            expected[r, c] = True
    np.testing.assert_array_equal(out > 0, expected)


def test_split_separable_decay_on_pointwise_only():
    wd = 1e-3
    layer = split_separable_conv.SplitSeparableConv2D(F, rate=2, weight_decay=wd)
    layer(_features())
    pointwise = [w for w in layer.weights if tuple(w.shape) == (1, 1, C, F)][0].numpy()
    assert len(layer.losses) == 1
    assert float(tf.reduce_sum(layer.losses[0])) == pytest.approx(
        wd * np.sum(pointwise**2) / 2, rel=1e-5
    )


def test_split_separable_initializers_and_batch_norm():
    # Truncated normals: depthwise stddev 0.33, pointwise 0.06 (values
    # beyond two standard deviations are redrawn).
    layer = split_separable_conv.SplitSeparableConv2D(256, rate=1)
    layer(_features((1, 5, 5, 64)))
    depthwise = [w for w in layer.weights if tuple(w.shape) == (3, 3, 64, 1)][0].numpy()
    pointwise = [w for w in layer.weights if tuple(w.shape) == (1, 1, 64, 256)][
        0
    ].numpy()
    assert np.abs(depthwise).max() <= 2 * 0.33 + 1e-6
    assert 0.7 * 0.33 < depthwise.std() < 0.33
    assert np.abs(pointwise).max() <= 2 * 0.06 + 1e-6
    assert 0.8 * 0.06 < pointwise.std() < 0.06
    for bn in (layer.depthwise_bn, layer.pointwise.bn):
        config = bn.get_config()
        assert config["momentum"] == pytest.approx(0.9997)
        assert config["epsilon"] == pytest.approx(1e-5)
        assert config["scale"] and config["center"]


# ------------------------------------------------------------ serialization


_CASES = [
    pytest.param(
        lambda: split_separable_conv.SplitSeparableConv2D(
            F, rate=(6, 21), weight_decay=4e-5, norm_epsilon=1e-3
        ),
        [(FEAT, FEAT, C)],
        id="split_separable",
    ),
]


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_config_round_trip(factory, shapes):
    del shapes
    layer_testing.check_config_round_trip(factory())


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_keras_save_load(factory, shapes, tmp_path):
    layer_testing.check_keras_save_load(factory, shapes, tmp_path)

"""Tests for deeplab_dpc.layers.conv_bn."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
from deeplab_dpc.layers import conv_bn

C, F, FEAT = layer_testing.C, layer_testing.F, layer_testing.FEAT
BN_SCALE = layer_testing.BN_SCALE
_features = layer_testing.features


def test_conv_bn_shape():
    layer = conv_bn.ConvBN(F, 1)
    assert layer(_features((2, FEAT, FEAT, C))).shape == (2, FEAT, FEAT, F)
    layer = conv_bn.ConvBN(F, 3, dilation_rate=(2, 3))
    assert layer(_features((2, 7, 11, C))).shape == (2, 7, 11, F)
    assert layer.compute_output_shape((2, 7, 11, C)) == (2, 7, 11, F)


@pytest.mark.parametrize("c,f", [(8, 16), (3, 5), (32, 256)])
def test_conv_bn_param_count(c, f):
    layer = conv_bn.ConvBN(f, 1)
    layer(_features((1, 5, 5, c)))
    assert layer.count_params() == c * f + 4 * f


def test_conv_bn_3x3_param_count():
    layer = conv_bn.ConvBN(F, 3, dilation_rate=2)
    layer(_features())
    assert layer.count_params() == 9 * C * F + 4 * F


def test_conv_bn_rejects_dilated_1x1():
    with pytest.raises(ValueError, match="1x1"):
        conv_bn.ConvBN(F, 1, dilation_rate=2)


def test_conv_bn_ones_kernel_by_hand():
    x = _features((2, 5, 5, C))
    layer = conv_bn.ConvBN(4, 1)
    layer.build(x.shape)
    layer_testing.set_ones(layer)
    out = layer(x, training=False).numpy()
    channel_sum = tf.reduce_sum(x, axis=-1, keepdims=True).numpy()
    expected = np.maximum(channel_sum, 0.0) * BN_SCALE
    np.testing.assert_allclose(
        out, np.repeat(expected, 4, axis=-1), rtol=1e-5, atol=1e-6
    )
    assert (out == 0).any() and (out > 0).any()  # The ReLU cut something.


def test_conv_bn_linear_activation_keeps_negatives():
    x = _features((1, 5, 5, C))
    layer = conv_bn.ConvBN(2, 1, activation="linear")
    layer.build(x.shape)
    layer_testing.set_ones(layer)
    out = layer(x, training=False).numpy()
    expected = tf.reduce_sum(x, axis=-1, keepdims=True).numpy() * BN_SCALE
    np.testing.assert_allclose(
        out, np.repeat(expected, 2, axis=-1), rtol=1e-5, atol=1e-6
    )


def test_weight_decay_is_slims_l2():
    # slim's l2_regularizer(wd) adds wd * sum(w**2) / 2.
    wd = 4e-5
    layer = conv_bn.ConvBN(F, 3, weight_decay=wd)
    layer(_features())
    kernel = [w for w in layer.weights if len(w.shape) == 4][0].numpy()
    total = float(sum(tf.reduce_sum(loss) for loss in layer.losses))
    assert total == pytest.approx(wd * np.sum(kernel**2) / 2, rel=1e-5)
    no_decay = conv_bn.ConvBN(F, 1)
    no_decay(_features())
    assert not no_decay.losses


# ------------------------------------------------------------ serialization


_CASES = [
    pytest.param(
        lambda: conv_bn.ConvBN(
            F,
            3,
            dilation_rate=(2, 3),
            weight_decay=4e-5,
            kernel_init_stddev=0.1,
            norm_momentum=0.9,
            name="cbn",
        ),
        [(FEAT, FEAT, C)],
        id="conv_bn",
    ),
    pytest.param(
        lambda: conv_bn.ConvBN(F, 1, activation="linear"),
        [(FEAT, FEAT, C)],
        id="conv_bn_linear",
    ),
]


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_config_round_trip(factory, shapes):
    del shapes
    layer_testing.check_config_round_trip(factory())


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_keras_save_load(factory, shapes, tmp_path):
    layer_testing.check_keras_save_load(factory, shapes, tmp_path)

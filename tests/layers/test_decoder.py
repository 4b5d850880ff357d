"""Tests for deeplab_dpc.layers.decoder."""

import pytest
import tensorflow as tf

import layer_testing
from deeplab_dpc.layers import decoder

C, F, FEAT = layer_testing.C, layer_testing.F, layer_testing.FEAT
_features = layer_testing.features


def _decoder_params(c_feat, c_low, f=F, low_f=48):
    cin = c_feat + low_f
    return (
        c_low * low_f
        + 4 * low_f
        + 9 * cin
        + 4 * cin
        + cin * f
        + 4 * f
        + 9 * f
        + 4 * f
        + f * f
        + 4 * f
    )


@pytest.mark.parametrize("feat,low", [(5, 17), (9, 9), (3, 9)])
def test_decoder_shape_and_params(feat, low):
    layer = decoder.Decoder(filters=F, low_level_filters=6)
    out = layer([_features((2, feat, feat, 12)), _features((2, low, low, C))])
    assert out.shape == (2, low, low, F)
    assert layer.count_params() == _decoder_params(12, C, low_f=6)
    assert layer.compute_output_shape([(2, feat, feat, 12), (2, low, low, C)]) == (
        2,
        low,
        low,
        F,
    )


def test_decoder_deeplab_width_params():
    layer = decoder.Decoder()
    layer([_features((1, 5, 5, 256)), _features((1, 17, 17, 24))])
    assert layer.count_params() == _decoder_params(256, 24, 256, 48)


# ------------------------------------------------------------ serialization


_CASES = [
    pytest.param(
        lambda: decoder.Decoder(filters=F, low_level_filters=6),
        [(5, 5, 12), (FEAT, FEAT, C)],
        id="decoder",
    ),
]


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_config_round_trip(factory, shapes):
    del shapes
    layer_testing.check_config_round_trip(factory())


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_keras_save_load(factory, shapes, tmp_path):
    layer_testing.check_keras_save_load(factory, shapes, tmp_path)


def test_checkpoint_saves_every_refine_weight(tmp_path):
    layer = decoder.Decoder(filters=F, low_level_filters=4)
    layer([tf.zeros([1, 5, 5, C]), tf.zeros([1, 9, 9, C])])
    layer_testing.check_checkpoint_saves_every_weight(layer, tmp_path)

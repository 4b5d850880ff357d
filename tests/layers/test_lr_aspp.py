"""Tests for deeplab_dpc.layers.lr_aspp (DeepLab's ASPP with
squeeze-and-excitation, MobileNet-v3's LR-ASPP head)."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
from deeplab_dpc.layers import lr_aspp

C = layer_testing.C


def make(**kwargs):
    values = dict(
        crop_size=(129, 257),
        output_stride=32,
        filters=6,
        pooling_crop_size=(65, 65),
        pooling_stride=(2, 3),
        use_qsigmoid=True,
    )
    values.update(kwargs)
    return lr_aspp.LRASPP(**values)


def reference(layer, x):
    """DeepLab's model.py for these flags, in NumPy/TF ops, by hand."""
    kernel, bias = (w.numpy() for w in layer.image_pooling.weights)
    # Pool kernel scale_dimension(65, 1/32) = 3, stride (2, 3), VALID.
    pooled = tf.nn.avg_pool2d(x, (3, 3), (2, 3), "VALID")
    gate = tf.nn.relu6(tf.nn.conv2d(pooled, kernel, 1, "VALID") + bias + 3) * 0.16667
    gate = tf.compat.v1.image.resize_bilinear(gate, x.shape[1:3], align_corners=True)
    return layer.aspp0(x, training=False) * gate


def test_matches_deeplabs_head():
    layer = make()
    x = layer_testing.features((2, 5, 9, C))
    out = layer(x, training=False)
    layer_testing.randomize(layer, seed=2)
    out = layer(x, training=False).numpy()
    assert out.shape == (2, 5, 9, 6)
    np.testing.assert_allclose(out, reference(layer, x).numpy(), rtol=1e-5, atol=1e-5)
    # The gate varies over the image (2 x 3 pooled cells), so the pooling's
    # geometry shows.
    assert layer.pool_size == (3, 3)
    with np.errstate(invalid="ignore", divide="ignore"):
        gate = out / layer.aspp0(x, training=False).numpy()
    assert np.nanstd(gate[0, :, :, 0]) > 1e-3
    # Params: image_pooling C*6 + 6, aspp0 C*6 + 4*6 (BN).
    assert layer.count_params() == C * 6 + 6 + C * 6 + 24


def test_sigmoid_gate_without_qsigmoid():
    layer = make(use_qsigmoid=False, pooling_crop_size=None, pooling_stride=(1, 1))
    x = layer_testing.features((1, 5, 9, C))
    layer(x)
    layer_testing.randomize(layer, seed=3)
    kernel, bias = (w.numpy() for w in layer.image_pooling.weights)
    pooled = tf.reduce_mean(x, [1, 2], keepdims=True)
    gate = tf.sigmoid(tf.nn.conv2d(pooled, kernel, 1, "VALID") + bias)
    want = layer.aspp0(x, training=False) * gate
    np.testing.assert_allclose(layer(x).numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_bad_geometry_and_feature_size():
    with pytest.raises(ValueError, match="exceeds the features"):
        make(crop_size=(33, 33))
    with pytest.raises(ValueError, match="built for crop"):
        make()(tf.zeros([1, 6, 9, C]))


def test_serialization(tmp_path):
    layer_testing.check_config_round_trip(make())
    layer_testing.check_keras_save_load(make, [(5, 9, C)], tmp_path)
    layer = make()
    layer(tf.zeros([1, 5, 9, C]))
    layer_testing.check_checkpoint_saves_every_weight(layer, tmp_path)

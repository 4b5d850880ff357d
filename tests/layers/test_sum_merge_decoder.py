"""Tests for deeplab_dpc.layers.sum_merge_decoder (the LR-ASPP decoder)."""

import numpy as np
import tensorflow as tf

import layer_testing
from deeplab_dpc.layers import sum_merge_decoder


def test_matches_deeplabs_sum_merge():
    layer = sum_merge_decoder.SumMergeDecoder(5)
    features = layer_testing.features((2, 3, 5, 12))
    low = layer_testing.features((2, 9, 17, 7), seed=1)
    layer([features, low])
    layer_testing.randomize(layer, seed=4)
    out = layer([features, low]).numpy()
    assert out.shape == (2, 9, 17, 5)
    pk, pb = (w.numpy() for w in layer.feature_projection.weights)
    ck, cb = (w.numpy() for w in layer.decoder_conv.weights)
    resized = tf.compat.v1.image.resize_bilinear(features, (9, 17), align_corners=True)
    want = (
        tf.nn.conv2d(resized, ck, 1, "SAME") + cb + tf.nn.conv2d(low, pk, 1, "SAME") + pb
    )
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-5, atol=1e-5)
    assert layer.count_params() == 7 * 5 + 5 + 12 * 5 + 5
    assert layer.compute_output_shape([(2, 3, 5, 12), (2, 9, 17, 7)]) == (2, 9, 17, 5)


def test_serialization(tmp_path):
    make = lambda: sum_merge_decoder.SumMergeDecoder(4)
    layer_testing.check_config_round_trip(make())
    layer_testing.check_keras_save_load(make, [(3, 3, 6), (9, 9, 5)], tmp_path)

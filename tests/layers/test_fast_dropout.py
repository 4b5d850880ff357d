"""Tests for deeplab_dpc.layers.fast_dropout."""

import numpy as np
import pytest
import tensorflow as tf

import model_testing
from deeplab_dpc.layers import aspp
from deeplab_dpc.layers import fast_dropout
from deeplab_dpc.models import deeplab

SEED = tf.constant([3, 7], tf.int32)


def _scale(rate):
    t = fast_dropout.drop_threshold(rate)
    return np.float32(65536 / (65536 - t))


def test_drop_threshold():
    assert fast_dropout.drop_threshold(0.0) == 0
    assert fast_dropout.drop_threshold(0.1) == 6554
    assert fast_dropout.drop_threshold(0.5) == 32768
    # Within 2**-17 of the rate; the top level keeps one value in 2**16.
    assert abs(fast_dropout.drop_threshold(0.3) / 65536 - 0.3) <= 2**-17
    assert fast_dropout.drop_threshold(0.9999999) == 65535
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="rate must be in"):
            fast_dropout.drop_threshold(bad)


def test_drops_the_rate_and_keeps_the_expectation():
    x = tf.ones([1000, 1000])
    y = fast_dropout.dropout16(x, 0.1, SEED).numpy()
    kept = y != 0
    p = 6554 / 65536
    # Binomial: 5 standard deviations of a million draws.
    assert abs((1 - kept.mean()) - p) < 5 * np.sqrt(p * (1 - p) / kept.size)
    np.testing.assert_array_equal(y[kept], _scale(0.1))
    # Unbiased: E[y] = x for the drop probability t / 2**16.
    assert abs(y.mean() - 1.0) < 5 * np.sqrt(p / (1 - p) / kept.size)


def test_bits_are_independent_across_halves_and_elements():
    # Each 32-bit word gives two elements: their drops must not correlate.
    y = fast_dropout.dropout16(tf.ones([200000]), 0.5, SEED).numpy() != 0
    even, odd = y[0::2].astype(float), y[1::2].astype(float)
    assert abs(np.corrcoef(even, odd)[0, 1]) < 0.02
    assert abs(np.corrcoef(y[:-1], y[1:])[0, 1]) < 0.02


def test_seeded_draws_repeat_and_differ_by_seed():
    x = tf.random.normal([4, 9, 9, 8], seed=1)
    a = fast_dropout.dropout16(x, 0.3, SEED)
    b = fast_dropout.dropout16(x, 0.3, SEED)
    c = fast_dropout.dropout16(x, 0.3, SEED + 1)
    np.testing.assert_array_equal(a, b)
    assert np.any(a.numpy() != c.numpy())


@pytest.mark.parametrize("shape", [(3, 5, 7, 2), (5,), (1, 3, 3)])
def test_odd_and_even_sizes(shape):
    x = tf.random.uniform(shape, 1.0, 2.0, seed=2)
    y = fast_dropout.dropout16(x, 0.4, SEED).numpy()
    assert y.shape == shape
    kept = y != 0
    np.testing.assert_allclose(y[kept], x.numpy()[kept] * _scale(0.4), rtol=1e-7)
    # Unknown sizes at tracing: the same draw.
    traced = tf.function(
        lambda t: fast_dropout.dropout16(t, 0.4, SEED),
        input_signature=[tf.TensorSpec([None] * len(shape), tf.float32)],
    )
    np.testing.assert_array_equal(traced(x), y)


def test_noise_shape_broadcasts_and_takes_none_from_the_input():
    x = tf.ones([6, 5, 4, 32])
    for noise_shape in ((6, 1, 1, 32), (None, 1, 1, None)):
        y = fast_dropout.dropout16(x, 0.5, SEED, noise_shape).numpy()
        # One draw per (image, channel): constant over the spatial dims.
        assert np.all(y == y[:, :1, :1, :])
        assert 0 < (y[:, 0, 0, :] == 0).mean() < 1


def test_rate_zero_is_identity():
    x = tf.random.normal([2, 3])
    assert fast_dropout.dropout16(x, 0.0, SEED) is x


def test_gradient_is_the_mask_times_the_scale():
    x = tf.random.uniform([4, 6, 6, 16], 1.0, 2.0, seed=3)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fast_dropout.dropout16(x, 0.2, SEED)
    grad = tape.gradient(y, x).numpy()
    expected = np.where(y.numpy() != 0, _scale(0.2), 0.0)
    np.testing.assert_array_equal(grad, expected)


def test_layer_in_training_and_inference():
    layer = fast_dropout.dropout_class()(0.1, seed=5)
    x = tf.ones([64, 64, 8])
    np.testing.assert_array_equal(layer(x, training=False), x)
    y = layer(x, training=True).numpy()
    kept = y[y != 0]
    assert 0.85 < kept.size / y.size < 0.95
    if fast_dropout.IS_TF_KERAS:
        assert type(layer) is tf.keras.layers.Dropout
        np.testing.assert_allclose(kept, 1 / 0.9, rtol=1e-7)
    else:
        # The 16-bit scale: 65536 / 58982, not Keras' 1 / 0.9 (6.8e-6 apart).
        assert type(layer) is fast_dropout.FastDropout
        np.testing.assert_array_equal(kept, _scale(0.1))
        assert _scale(0.1) != np.float32(1 / 0.9)
        # The seed generator advances: the next call draws anew; a layer
        # seeded alike draws what this one drew first.
        assert np.any(layer(x, training=True).numpy() != y)
        np.testing.assert_array_equal(
            fast_dropout.FastDropout(0.1, seed=5)(x, training=True), y
        )


def test_config_round_trip():
    layer = fast_dropout.FastDropout(0.25, noise_shape=(None, 1, 1, None), seed=4)
    config = tf.keras.layers.serialize(layer)
    restored = tf.keras.layers.deserialize(config)
    assert type(restored) is fast_dropout.FastDropout
    assert restored.rate == 0.25 and tuple(restored.noise_shape) == (None, 1, 1, None)


def test_heads_use_the_class_of_this_keras():
    expected = fast_dropout.dropout_class()
    options = model_testing.options(
        crop_size=(33, 33), dense_prediction_cell=model_testing.PUBLISHED
    )
    model = deeplab.build_deeplab(options)
    assert type(model.get_layer("dense_prediction_cell").dropout) is expected
    head = aspp.ASPP(crop_size=(33, 33), output_stride=16, atrous_rates=(6,))
    assert type(head.dropout) is expected
    if fast_dropout.IS_TF_KERAS:
        assert expected is tf.keras.layers.Dropout
    else:
        assert expected is fast_dropout.FastDropout

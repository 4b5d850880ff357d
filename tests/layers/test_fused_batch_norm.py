"""Tests for deeplab_dpc.layers.fused_batch_norm."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
import model_testing
from deeplab_dpc.layers import fused_batch_norm
from deeplab_dpc.models import deeplab

SHAPE = (3, 5, 6, 4)


def _pair(**kwargs):
    """A fused layer and Keras' own, with the same random weights."""
    kwargs.setdefault("momentum", 0.9)
    fused = fused_batch_norm.FusedBatchNormalization(**kwargs)
    plain = tf.keras.layers.BatchNormalization(**kwargs)
    for layer in (fused, plain):
        layer.build(SHAPE)
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in plain.weights]
    fused.set_weights(weights)
    plain.set_weights(weights)
    return fused, plain


def _inputs(seed=1):
    return tf.constant(
        np.random.default_rng(seed).normal(2.0, 3.0, SHAPE).astype(np.float32)
    )


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"scale": False}, {"center": False}],
    ids=["both", "no_scale", "no_center"],
)
def test_training_step_matches_keras(kwargs):
    fused, plain = _pair(**kwargs)
    x = _inputs()
    results = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.range(1.0, 5.0))
        grads = tape.gradient(loss, [x, *layer.trainable_weights])
        results.append((y.numpy(), [g.numpy() for g in grads], layer.get_weights()))
    (y_f, g_f, w_f), (y_p, g_p, w_p) = results
    np.testing.assert_allclose(y_f, y_p, rtol=1e-4, atol=1e-4)
    for a, b in zip(g_f, g_p):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    # Moving statistics updated the same way (biased variance, momentum 0.9).
    for a, b in zip(w_f, w_p):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(w_f[-1], _pair(**kwargs)[0].get_weights()[-1])


def test_inference_and_unfusable_calls_are_keras_own():
    fused, plain = _pair()
    x = _inputs()
    np.testing.assert_array_equal(fused(x, training=False), plain(x, training=False))
    # A frozen layer normalizes with its moving statistics, even in training.
    fused.trainable = plain.trainable = False
    np.testing.assert_array_equal(fused(x, training=True), plain(x, training=True))
    # Rank 2: not the fused kernel's layout.
    flat_fused = fused_batch_norm.FusedBatchNormalization()
    flat_plain = tf.keras.layers.BatchNormalization()
    flat = tf.reshape(x, [-1, SHAPE[-1]])
    np.testing.assert_allclose(
        flat_fused(flat, training=True), flat_plain(flat, training=True), atol=1e-5
    )


def test_config_round_trip():
    layer = fused_batch_norm.FusedBatchNormalization(momentum=0.99, epsilon=1e-5)
    layer_testing.check_config_round_trip(layer)


def test_models_use_the_class_of_this_keras():
    options = model_testing.options(
        crop_size=(33, 33), dense_prediction_cell=model_testing.PUBLISHED
    )
    model = deeplab.build_deeplab(options)
    norms = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, tf.keras.layers.BatchNormalization)
    ]
    assert norms
    expected = fused_batch_norm.batch_norm_class()
    assert all(type(layer) is expected for layer in norms)
    if fused_batch_norm.IS_TF_KERAS:
        # tf_keras' own layer fuses by itself, and TFMOT recognises it.
        assert expected is tf.keras.layers.BatchNormalization
    else:
        assert expected is fused_batch_norm.FusedBatchNormalization


def test_bfloat16_training_step_stays_close_to_keras():
    fused, plain = _pair(dtype="mixed_bfloat16")
    x = tf.cast(_inputs(), tf.bfloat16)
    y_fused = fused(x, training=True)
    y_plain = plain(x, training=True)
    assert y_fused.dtype == y_plain.dtype == tf.bfloat16
    np.testing.assert_allclose(
        tf.cast(y_fused, tf.float32), tf.cast(y_plain, tf.float32), atol=0.05, rtol=0.02
    )
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2)

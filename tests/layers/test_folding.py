"""Tests for deeplab_dpc.layers.folding (batch norm folded for inference)."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
import model_testing
from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import folding
from deeplab_dpc.layers import split_separable_conv
from deeplab_dpc.models import deeplab

C, F, FEAT = layer_testing.C, layer_testing.F, layer_testing.FEAT


def _batch_norms(layer):
    return [
        sub
        for sub in layer._flatten_layers(include_self=True)
        if isinstance(sub, tf.keras.layers.BatchNormalization)
    ]


def _random_statistics(layer, seed=0):
    """Random kernels and batch-norm statistics far from the identity."""
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [
            (
                rng.uniform(0.3, 2.0, w.shape)
                if w.ndim == 1
                else rng.normal(0.0, 0.3, w.shape)
            ).astype(np.float32)
            for w in layer.get_weights()
        ]
    )
    for bn in _batch_norms(layer):
        bn.moving_mean.assign(rng.normal(0.0, 1.0, bn.moving_mean.shape))
        bn.beta.assign(rng.normal(0.0, 1.0, bn.beta.shape))


@pytest.mark.parametrize(
    "factory",
    [
        lambda: conv_bn.ConvBN(F, 1, name="c1"),
        lambda: conv_bn.ConvBN(F, 3, dilation_rate=(3, 6), name="c3"),
        lambda: split_separable_conv.SplitSeparableConv2D(F, rate=(6, 3), name="s"),
    ],
)
def test_layer_fold_keeps_inference_output(factory):
    layer = factory()
    x = layer_testing.features((2, FEAT, FEAT, C))
    layer(x)
    _random_statistics(layer)
    expected = layer(x, training=False).numpy()
    assert layer.fold_batch_norm()
    assert not _batch_norms(layer)
    np.testing.assert_allclose(layer(x, training=False), expected, rtol=1e-4, atol=1e-4)
    # The folded layer carries kernels and biases only, the old ones untracked.
    names = [w.name.split(":")[0].split("/")[-1] for w in layer.weights]
    assert set(names) <= {"kernel", "bias", "depthwise_kernel"}, names
    assert len(names) == (2 if isinstance(layer, conv_bn.ConvBN) else 4)
    assert not layer.fold_batch_norm()  # Folded already: nothing to do.


def test_folded_checkpoint_round_trip(tmp_path):
    layer = conv_bn.ConvBN(F, 3, name="c")
    x = layer_testing.features((1, FEAT, FEAT, C))
    layer(x)
    _random_statistics(layer)
    layer.fold_batch_norm()
    path = tf.train.Checkpoint(layer=layer).write(str(tmp_path / "ckpt"))
    other = conv_bn.ConvBN(F, 3, name="c")
    other(x)
    other.fold_batch_norm()
    tf.train.Checkpoint(layer=other).read(path).assert_consumed()
    np.testing.assert_allclose(other(x), layer(x), rtol=1e-6)


@pytest.mark.parametrize("depthwise", [False, True])
def test_folded_kernel_and_bias_by_hand(depthwise):
    # One input channel (two depthwise outputs), a 1x1 kernel of 2s and a bias
    # of 1: y = gamma * (2x + 1 - mean) / sqrt(var + eps) + beta.
    if depthwise:
        conv = tf.keras.layers.DepthwiseConv2D(1, depth_multiplier=2, use_bias=True)
    else:
        conv = tf.keras.layers.Conv2D(2, 1, use_bias=True)
    conv.build((None, 1, 1, 1))
    conv.set_weights([np.full((1, 1, 1, 2), 2.0, np.float32), np.ones(2, np.float32)])
    bn = tf.keras.layers.BatchNormalization(epsilon=0.0)
    bn.build((None, 1, 1, 2))
    bn.set_weights(
        [
            np.array([1.0, 3.0]),
            np.array([0.5, -1.0]),
            np.array([1.0, 2.0]),
            np.array([4.0, 16.0]),
        ]
    )
    kernel, bias = folding.folded_kernel_and_bias(conv, bn)
    # scale = gamma / sqrt(var) = [0.5, 0.75]
    np.testing.assert_allclose(kernel.reshape(2), [1.0, 1.5])
    np.testing.assert_allclose(bias, [(1 - 1) * 0.5 + 0.5, (1 - 2) * 0.75 - 1.0])


def test_folded_kernel_and_bias_rejects_other_channels():
    conv = tf.keras.layers.Conv2D(3, 1, use_bias=False)
    conv.build((None, 1, 1, 2))
    bn = tf.keras.layers.BatchNormalization(name="bn4")
    bn.build((None, 1, 1, 4))
    with pytest.raises(ValueError, match="bn4 normalizes 4 channels"):
        folding.folded_kernel_and_bias(conv, bn)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dense_prediction_cell=model_testing.PUBLISHED),
        dict(dense_prediction_cell=None, decoder_output_stride=4),
    ],
    ids=["dpc", "aspp_decoder"],
)
def test_model_fold_keeps_logits(kwargs):
    options = model_testing.options(crop_size=(65, 65), output_stride=16, **kwargs)
    model = deeplab.build_deeplab(options)
    model.set_weights(model_testing.random_weights(model))
    images = model_testing.images((65, 65), batch=2)
    expected = model(images, training=False).numpy()
    folded = folding.fold_batch_norms(model)
    assert not _batch_norms(folded)
    assert sum(
        isinstance(l, folding.FoldedBatchNorm) for l in folded._flatten_layers()
    ) == len(_batch_norms(model))
    logits = folded(images, training=False).numpy()
    np.testing.assert_allclose(
        logits, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max()
    )
    assert (logits.argmax(-1) == expected.argmax(-1)).mean() > 0.999
    # A copy: the source model is untouched and shares no variable.
    assert {id(v) for v in folded.weights}.isdisjoint(id(v) for v in model.weights)
    np.testing.assert_array_equal(model(images, training=False), expected)
    assert len(folded.weights) < len(model.weights)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_model_with_decoder_folds(policy):
    # The decoder's sublayers are made when it is built: the folded copy must
    # be built under the model's policy, not the global one (float32 here).
    options = model_testing.options(crop_size=(33, 33), decoder_output_stride=4)
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        model = deeplab.build_deeplab(options)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    model.set_weights(model_testing.random_weights(model))
    images = model_testing.images((33, 33))
    folded = folding.fold_batch_norms(model)
    assert folded.dtype_policy.name == policy
    assert tf.keras.mixed_precision.global_policy().name == previous.name
    expected = tf.cast(model(images, training=False), tf.float32).numpy()
    logits = tf.cast(folded(images, training=False), tf.float32).numpy()
    assert (logits.argmax(-1) == expected.argmax(-1)).mean() > 0.95


def test_fold_rejects_a_subclassed_model():
    model = conv_bn.ConvBN(F, 1)
    with pytest.raises(ValueError, match="functional"):
        folding.fold_batch_norms(model)


def test_conv_with_two_consumers_is_not_folded():
    inputs = tf.keras.Input((5, 5, 2))
    conv = tf.keras.layers.Conv2D(3, 1, use_bias=False, name="conv")
    x = conv(inputs)
    bn = tf.keras.layers.BatchNormalization(name="bn")
    outputs = tf.keras.layers.Add()([bn(x), x])
    model = tf.keras.Model(inputs, outputs)
    _random_statistics(model)
    assert folding.foldable_pairs(model) == {}
    folded = folding.fold_batch_norms(model)
    x = np.random.default_rng(0).normal(size=(1, 5, 5, 2)).astype(np.float32)
    np.testing.assert_allclose(
        folded(x, training=False), model(x, training=False), rtol=1e-5
    )

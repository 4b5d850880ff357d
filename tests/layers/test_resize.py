"""Tests for deeplab_dpc.layers.resize."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
from deeplab_dpc.layers import fast_paths
from deeplab_dpc.layers import resize

C, FEAT = layer_testing.C, layer_testing.FEAT
_features = layer_testing.features


def test_resize_bilinear_shape():
    layer = resize.ResizeBilinear((5, 7))
    assert layer(_features((2, FEAT, FEAT, C))).shape == (2, 5, 7, C)
    assert resize.ResizeBilinear((33, 33))(tf.zeros([1, 17, 17, 4])).shape == (
        1,
        33,
        33,
        4,
    )


def test_resize_bilinear_align_corners_by_hand():
    x = tf.constant([[1.0, 2.0], [3.0, 5.0]])[None, ..., None]
    out = resize.ResizeBilinear((3, 3))(x).numpy()[0, ..., 0]
    np.testing.assert_allclose(
        out, [[1.0, 1.5, 2.0], [2.0, 2.75, 3.5], [3.0, 4.0, 5.0]], rtol=1e-6
    )
    assert out[1, 1] == pytest.approx((1 + 2 + 3 + 5) / 4)


def test_resize_bilinear_function_matches_layer():
    x = _features((1, 5, 5, 2))
    np.testing.assert_allclose(
        resize.resize_bilinear(x, (9, 9)).numpy(),
        resize.ResizeBilinear((9, 9))(x).numpy(),
    )
    # Corners are kept exactly (align_corners=True).
    out = resize.resize_bilinear(x, (9, 9)).numpy()
    np.testing.assert_array_equal(out[:, ::8, ::8], x.numpy()[:, ::4, ::4])


@pytest.mark.parametrize("size", [(0, 3), (3,), (3, 3, 3)])
def test_resize_bilinear_rejects_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        resize.ResizeBilinear(size)


def _gradient_ops(fn, x):
    """Op types of the traced gradient of `sum(fn(x) * weights)`."""

    @tf.function
    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return tape.gradient(y, x, output_gradients=tf.ones_like(y))

    return {op.type for op in gradient.get_concrete_function(x).graph.get_operations()}


@pytest.mark.parametrize(
    "in_size,out_size,factors",
    [
        ((5, 5), (65, 65), (16, 16)),  # DeepLab's logits: (crop - 1) / 16 + 1
        ((9, 5), (33, 9), (4, 2)),  # other factors per axis
        ((4, 7), (4, 13), (1, 2)),  # one axis unchanged
        ((1, 3), (1, 5), (1, 2)),  # a single row kept
    ],
)
def test_strided_gradient_matches_tensorflows(in_size, out_size, factors):
    assert resize.upsampling_factors(in_size, out_size) == factors
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, *in_size, 3)), tf.float32)
    upstream = tf.constant(rng.normal(size=(2, *out_size, 3)), tf.float32)

    def value_and_gradient(strided):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = resize.resize_bilinear(x, out_size, strided_gradient=strided)
        return y, tape.gradient(y, x, output_gradients=upstream)

    (y, got), (y_ref, expected) = value_and_gradient(True), value_and_gradient(False)
    np.testing.assert_array_equal(y.numpy(), y_ref.numpy())
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    ops = _gradient_ops(
        lambda t: resize.resize_bilinear(t, out_size, strided_gradient=True), x
    )
    # Unequal strides run only on oneDNN's kernel: elsewhere TF's gradient.
    taken = fast_paths.available(fast_paths.STRIDED_UPSAMPLING_GRADIENT, factors)
    assert factors[0] == factors[1] or not taken or fast_paths.onednn_enabled()
    assert ("ResizeBilinearGrad" not in ops) == bool(taken)
    assert ("DepthwiseConv2dNative" in ops) == bool(taken)


def test_tent_kernel_by_hand():
    kernel = resize.tent_kernel((2, 3), channels=2).numpy()
    assert kernel.shape == (3, 5, 2, 1)
    rows, cols = [0.5, 1.0, 0.5], [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]
    np.testing.assert_allclose(kernel[..., 1, 0], np.outer(rows, cols), rtol=1e-6)
    np.testing.assert_array_equal(kernel[..., 0, 0], kernel[..., 1, 0])


@pytest.mark.parametrize(
    "in_size,out_size",
    [
        ((9, 9), (5, 5)),  # shrinking
        ((1, 1), (9, 9)),  # from a single pixel: every output is that pixel
        ((4, 4), (9, 9)),  # 8 / 3: not a whole factor
        ((None, 5), (9, 9)),  # unknown height
    ],
)
def test_other_resizes_keep_tensorflows_gradient(in_size, out_size):
    assert resize.upsampling_factors(in_size, out_size) is None
    shape = [2, *(9 if n is None else n for n in in_size), 3]
    spec = tf.TensorSpec([2, *in_size, 3], tf.float32)

    @tf.function(input_signature=[spec])
    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = resize.resize_bilinear(x, out_size, strided_gradient=True)
        return tape.gradient(y, x, output_gradients=tf.ones_like(y))

    ops = {op.type for op in gradient.get_concrete_function().graph.get_operations()}
    assert "ResizeBilinearGrad" in ops and "DepthwiseConv2dNative" not in ops
    assert gradient(tf.ones(shape)).shape == shape


def test_layer_takes_the_strided_gradient_in_training_only():
    x = tf.random.normal([2, 5, 5, 3])
    layer = resize.ResizeBilinear((17, 17))
    trained = _gradient_ops(lambda t: layer(t, training=True), x)
    assert "DepthwiseConv2dNative" in trained
    assert "ResizeBilinearGrad" not in trained
    # Inference and export graphs keep the plain op (no custom gradient).
    for training in (False, None):
        ops = _gradient_ops(lambda t: layer(t, training=training), x)
        assert "ResizeBilinearGrad" in ops and "IdentityN" not in ops
    # Other dtypes (mixed precision's bfloat16 feature maps) keep TF's.
    low = _gradient_ops(
        lambda t: resize.resize_bilinear(
            tf.cast(t, tf.bfloat16), (17, 17), strided_gradient=True
        ),
        x,
    )
    assert "ResizeBilinearGrad" in low


# ------------------------------------------------------------ serialization


_CASES = [
    pytest.param(
        lambda: resize.ResizeBilinear((5, 13)), [(FEAT, FEAT, C)], id="resize"
    ),
]


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_config_round_trip(factory, shapes):
    del shapes
    layer_testing.check_config_round_trip(factory())


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_keras_save_load(factory, shapes, tmp_path):
    layer_testing.check_keras_save_load(factory, shapes, tmp_path)

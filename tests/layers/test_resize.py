"""Tests for deeplab_dpc.layers.resize."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
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

"""Tests for deeplab_dpc.layers.image_preprocessing."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
from deeplab_dpc.layers import image_preprocessing


def test_image_preprocessing_tf_by_hand():
    x = tf.constant([[[[0.0, 127.5, 255.0]]]])
    layer = image_preprocessing.ImagePreprocessing("tf")
    out = layer(x).numpy().ravel()
    np.testing.assert_allclose(out, [-1.0, 0.0, 1.0], atol=1e-6)
    assert layer(tf.zeros([2, 3, 5, 3])).shape == (2, 3, 5, 3)


def test_image_preprocessing_caffe_by_hand():
    x = tf.constant([[[[10.0, 20.0, 30.0]], [[255.0, 0.0, 128.0]]]])
    out = image_preprocessing.ImagePreprocessing("caffe")(x).numpy()
    np.testing.assert_allclose(
        out[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6
    )
    np.testing.assert_allclose(
        out[0, 1, 0], [128 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-6
    )


def test_image_preprocessing_matches_keras_applications():
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    for mode in image_preprocessing.MODES:
        expected = tf.keras.applications.imagenet_utils.preprocess_input(
            x.copy(), mode=mode
        )
        out = image_preprocessing.ImagePreprocessing(mode)(tf.constant(x))
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_image_preprocessing_casts_uint8():
    x = tf.constant([[[[0, 255, 51]]]], tf.uint8)
    out = image_preprocessing.ImagePreprocessing("tf")(x)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy().ravel(), [-1.0, 1.0, -0.6], atol=1e-6)


def test_image_preprocessing_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        image_preprocessing.ImagePreprocessing("torch")


# ------------------------------------------------------------ serialization


_CASES = [
    pytest.param(
        lambda: image_preprocessing.ImagePreprocessing("tf"),
        [(5, 5, 3)],
        id="preprocessing_tf",
    ),
    pytest.param(
        lambda: image_preprocessing.ImagePreprocessing("caffe"),
        [(5, 5, 3)],
        id="preprocessing_caffe",
    ),
]


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_config_round_trip(factory, shapes):
    del shapes
    layer_testing.check_config_round_trip(factory())


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_keras_save_load(factory, shapes, tmp_path):
    layer_testing.check_keras_save_load(factory, shapes, tmp_path)

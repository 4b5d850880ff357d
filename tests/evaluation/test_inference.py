"""`inference.Predictor` against DeepLab's multi-scale protocol, written out
from its `predict_labels_multi_scale` and `multi_scale_logits`."""

import numpy as np
import pytest
import tensorflow as tf

import model_testing
from deeplab_dpc.evaluation import inference
from deeplab_dpc.models import deeplab

CROP = (65, 65)


def options(**overrides):
    values = dict(
        model_variant="mobilenet_v2",
        depth_multiplier=model_testing.ALPHA,
        num_classes=5,
        crop_size=CROP,
        output_stride=16,
        dense_prediction_cell=model_testing.PUBLISHED,
    )
    values.update(overrides)
    return deeplab.ModelOptions(**values)


def resize(x, size):
    return tf.compat.v1.image.resize_bilinear(x, size, align_corners=True)


def scale_dimension(dim, scale):
    return int((float(dim) - 1.0) * scale + 1.0)


def deeplab_probabilities(model_options, model, images, scales, flips):
    """DeepLab's protocol: per scale (and flip), the image resized to the
    scaled crop, the logits at their own resolution resized to
    `scale_dimension(crop, max(1, scale) / logits stride)`, then to the
    image size; softmax; the mean."""
    stride = model_options.decoder_output_stride or model_options.output_stride
    total = []
    for scale in scales:
        crop = tuple(scale_dimension(c, scale) for c in CROP)
        scaled = deeplab.build_deeplab(
            deeplab.ModelOptions(**{**model_options.__dict__, "crop_size": crop})
        )
        scaled.set_weights(model.get_weights())
        feature_logits = tf.keras.Model(
            scaled.input, scaled.get_layer(deeplab.LOGITS_LAYER).output
        )
        size = tuple(scale_dimension(c, max(1.0, scale) / stride) for c in CROP)
        for flip in (False, True) if flips else (False,):
            x = tf.reverse(images, [2]) if flip else images
            logits = feature_logits(resize(x, crop), training=False)
            logits = resize(resize(logits, size), CROP)
            p = tf.nn.softmax(logits)
            total.append(tf.reverse(p, [2]) if flip else p)
    return tf.reduce_mean(tf.stack(total), 0).numpy()


@pytest.mark.parametrize("decoder", [None, 4])
def test_scales_and_flips_follow_deeplab(decoder):
    model_options = options(decoder_output_stride=decoder)
    model = deeplab.build_deeplab(model_options)
    model.set_weights(model_testing.random_weights(model))
    images = tf.random.stateless_uniform((1, *CROP, 3), (1, 2), 0, 255)
    scales = (0.75, 1.0)
    predictor = inference.Predictor(model, model_options, scales, True)
    got = predictor.probabilities(images).numpy()
    want = deeplab_probabilities(model_options, model, images, scales, True)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # Not vacuous: at 0.75 the logits pass through a grid (5x5 at stride 16)
    # their own (4x4) knots are not on; going straight to the image differs.
    logits = predictor.models[0][1](resize(images, (49, 49)))
    size = inference.logits_size(model_options, 0.75)
    direct = resize(logits, CROP).numpy()
    two_step = resize(resize(logits, size), CROP).numpy()
    assert np.abs(direct - two_step).max() > 1e-2 * np.abs(direct).max()


def test_logits_size():
    assert inference.logits_size(options(crop_size=(513, 513)), 0.5) == (33, 33)
    assert inference.logits_size(options(crop_size=(513, 1025)), 1.75) == (57, 113)
    assert inference.logits_size(
        options(crop_size=(1025, 2049), decoder_output_stride=4), 0.75
    ) == (257, 513)

"""Tests for deeplab_dpc.layers.pyramid_pooling: the pooling geometry, the
feature-size check and the PyramidPooling layer."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
from deeplab_dpc.layers import pyramid_pooling

C, F, FEAT = layer_testing.C, layer_testing.F, layer_testing.FEAT
BN_SCALE = layer_testing.BN_SCALE
OUTPUT_STRIDES = layer_testing.OUTPUT_STRIDES
_crop = layer_testing.crop
_features = layer_testing.features


# ---------------------------------------------------------- pooling geometry


@pytest.mark.parametrize(
    "crop,grid,target,kernel",
    [
        ((513, 513), (4, 4), (33, 33), (9, 9)),  # DeepLab's test cases.
        ((513, 513), (2, 2), (33, 33), (17, 17)),
        ((257, 257), (1, 1), (17, 17), (17, 17)),
        ((513, 513), (1, 4), (33, 33), (33, 9)),  # Non-square grid.
        ((513, 513), (8, 2), (33, 33), (5, 17)),
        ((513, 769), (2, 1), (33, 49), (17, 49)),  # Non-square crop.
    ],
)
def test_pooling_geometry_deeplab_cases(crop, grid, target, kernel):
    assert pyramid_pooling.pooling_geometry(crop, 16, grid) == (target, kernel)


def test_pooling_geometry_image_pooling_crop_size():
    # DeepLab's `image_pooling_crop_size` sets the kernel; the crop sets the
    # target.
    assert pyramid_pooling.pooling_geometry(
        (513, 513), 16, (1, 1), pooling_crop_size=(257, 257)
    ) == ((33, 33), (17, 17))
    assert pyramid_pooling.pooling_geometry(
        (769, 769), 8, (2, 4), pooling_crop_size=(513, 257)
    ) == ((97, 97), (33, 9))


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
def test_pooling_geometry_other_output_strides(output_stride):
    crop = _crop(output_stride)
    for grid, k in (((1, 1), 9), ((2, 2), 5), ((4, 4), 3), ((8, 8), 2)):
        assert pyramid_pooling.pooling_geometry(crop, output_stride, grid) == (
            (FEAT, FEAT),
            (k, k),
        )


def test_pooling_geometry_kernel_too_big_raises():
    with pytest.raises(ValueError, match="does not fit"):
        pyramid_pooling.pooling_geometry(
            (513, 513), 16, (1, 1), pooling_crop_size=(1025, 1025)
        )
    with pytest.raises(ValueError, match="does not fit"):
        pyramid_pooling.PyramidPooling((1, 2), (65, 65), 8, pooling_crop_size=(65, 257))


def test_feature_size():
    assert pyramid_pooling.feature_size((513, 769), 16) == (33, 49)
    assert pyramid_pooling.feature_size((65, 65), 8) == (9, 9)


# -------------------------------------------------------- check_feature_size


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
def test_check_feature_size_accepts_the_crops_features(output_stride):
    crop = _crop(output_stride)
    for shape in (
        (2, FEAT, FEAT, C),
        [None, FEAT, FEAT, C],
        tf.TensorShape([1, FEAT, FEAT, 3]),
    ):
        assert (
            pyramid_pooling.check_feature_size("head", shape, crop, output_stride)
            is None
        )


def test_check_feature_size_non_square():
    pyramid_pooling.check_feature_size("head", (1, 5, 7, C), (65, 97), 16)
    with pytest.raises(ValueError, match=r"\(5, 7\) features"):
        pyramid_pooling.check_feature_size("head", (1, 7, 5, C), (65, 97), 16)


@pytest.mark.parametrize(
    "shape", [(1, 5, 5, C), (1, 9, 8, C), (2, 17, 17, C), (1, 8, 9, C)]
)
def test_check_feature_size_wrong_size_raises(shape):
    message = (
        r"my_head: built for crop \(65, 65\) at output stride 8, i\.e\. "
        r"\(9, 9\) features, but got \(%d, %d\) features; pad or resize" % shape[1:3]
    )
    with pytest.raises(ValueError, match=message):
        pyramid_pooling.check_feature_size("my_head", shape, (65, 65), 8)


@pytest.mark.parametrize(
    "shape", [(None, None, None, C), (1, None, 9, C), (1, 5, None, C)]
)
def test_check_feature_size_skips_unknown_sizes(shape):
    # Unknown spatial sizes cannot be checked when the layer is built.
    pyramid_pooling.check_feature_size("head", shape, (65, 65), 8)


# ------------------------------------------------------------ PyramidPooling


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (4, 8), (8, 1)])
def test_pyramid_pooling_shape(output_stride, grid):
    layer = pyramid_pooling.PyramidPooling(
        grid, _crop(output_stride), output_stride, filters=F
    )
    out = layer(_features((2, FEAT, FEAT, C)))
    assert out.shape == (2, FEAT, FEAT, F)


def test_pyramid_pooling_non_square_shape():
    layer = pyramid_pooling.PyramidPooling((1, 4), (65, 129), 8, filters=F)
    assert layer(_features((1, 9, 17, C))).shape == (1, 9, 17, F)


@pytest.mark.parametrize("c,f", [(8, 16), (320, 256)])
def test_pyramid_pooling_param_count(c, f):
    layer = pyramid_pooling.PyramidPooling((2, 2), (65, 65), 8, filters=f)
    layer(_features((1, FEAT, FEAT, c)))
    assert layer.count_params() == c * f + 4 * f


@pytest.mark.parametrize("shape", [(1, 5, 5, C), (1, 9, 8, C), (1, 17, 17, C)])
def test_pyramid_pooling_wrong_feature_size_raises(shape):
    layer = pyramid_pooling.PyramidPooling((2, 2), (65, 65), 8, filters=F)
    with pytest.raises(ValueError, match=r"crop \(65, 65\)"):
        layer(_features(shape))


def test_pyramid_pooling_wrong_feature_size_raises_symbolic():
    layer = pyramid_pooling.PyramidPooling((1, 1), (65, 65), 16, filters=F)
    with pytest.raises(ValueError, match=r"\(5, 5\) features"):
        layer(tf.keras.Input((9, 9, C)))


def test_pyramid_pooling_image_level_by_hand():
    # Grid (1, 1) averages the whole map; with a ones kernel and fresh BN
    # every output is relu(sum_c mean(x_c)) / sqrt(1 + eps).
    x = _features((2, FEAT, FEAT, C), seed=3) + 0.2
    layer = pyramid_pooling.PyramidPooling((1, 1), (65, 65), 8, filters=3)
    layer.build(x.shape)
    layer_testing.set_ones(layer)
    out = layer(x, training=False).numpy()
    means = tf.reduce_sum(tf.reduce_mean(x, axis=[1, 2]), axis=-1).numpy()
    expected = np.maximum(means, 0) * BN_SCALE
    np.testing.assert_allclose(
        out,
        np.broadcast_to(expected[:, None, None, None], out.shape),
        rtol=1e-5,
        atol=1e-6,
    )


def test_pyramid_pooling_grid_by_hand():
    # Crop 65 at OS 8, grid 4: a 3x3 average pool (stride 1, VALID) on the
    # 9x9 map gives 7x7, resized back to 9x9 with corners aligned, so the
    # output corners are the corner 3x3 averages.
    x = tf.constant(
        np.random.default_rng(1).uniform(0.0, 1.0, (1, FEAT, FEAT, 1)), tf.float32
    )
    layer = pyramid_pooling.PyramidPooling((4, 4), (65, 65), 8, filters=1)
    layer.build(x.shape)
    layer_testing.set_ones(layer)
    out = layer(x, training=False).numpy()[0, ..., 0]
    xs = x.numpy()[0, ..., 0]
    for (r, c), (rs, cs) in {
        (0, 0): (slice(0, 3), slice(0, 3)),
        (0, 8): (slice(0, 3), slice(6, 9)),
        (8, 0): (slice(6, 9), slice(0, 3)),
        (8, 8): (slice(6, 9), slice(6, 9)),
    }.items():
        np.testing.assert_allclose(out[r, c], xs[rs, cs].mean() * BN_SCALE, rtol=1e-5)


# ------------------------------------------------------------ serialization


_CASES = [
    pytest.param(
        lambda: pyramid_pooling.PyramidPooling((2, 4), (65, 65), 8, filters=F),
        [(FEAT, FEAT, C)],
        id="pyramid_pooling",
    ),
    pytest.param(
        lambda: pyramid_pooling.PyramidPooling(
            (1, 1), (65, 129), 8, pooling_crop_size=(33, 65), filters=F
        ),
        [(9, 17, C)],
        id="pyramid_pooling_crop",
    ),
]


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_config_round_trip(factory, shapes):
    del shapes
    layer_testing.check_config_round_trip(factory())


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_keras_save_load(factory, shapes, tmp_path):
    layer_testing.check_keras_save_load(factory, shapes, tmp_path)

"""Tests for deeplab_dpc.layers.aspp."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
from deeplab_dpc.layers import aspp

C, F, FEAT = layer_testing.C, layer_testing.F, layer_testing.FEAT
OUTPUT_STRIDES = layer_testing.OUTPUT_STRIDES
_crop = layer_testing.crop
_features = layer_testing.features


def _aspp_params(rates, image, separable=True, c=C, f=F):
    n = 1 + len(rates) + int(image)
    total = c * f + 4 * f  # aspp0 (1x1).
    if image:
        total += c * f + 4 * f  # Image pooling.
    for _ in rates:
        total += 9 * c + 4 * c + c * f + 4 * f if separable else 9 * c * f + 4 * f
    return total + n * f * f + 4 * f  # Projection.


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
@pytest.mark.parametrize("rates", [(), (6, 12, 18), (12, 24, 36), (1,)], ids=str)
@pytest.mark.parametrize("image", [True, False], ids=["image", "noimage"])
def test_aspp_shape_and_params(output_stride, rates, image):
    layer = aspp.ASPP(
        rates,
        crop_size=_crop(output_stride),
        output_stride=output_stride,
        add_image_level_feature=image,
        filters=F,
    )
    out = layer(_features((2, FEAT, FEAT, C)))
    assert out.shape == (2, FEAT, FEAT, F)
    assert len(layer.branch_layers) == 1 + len(rates) + int(image)
    assert layer.count_params() == _aspp_params(rates, image)


def test_aspp_regular_conv_params():
    layer = aspp.ASPP(
        (6, 12),
        crop_size=(129, 129),
        output_stride=16,
        use_separable_conv=False,
        filters=F,
    )
    layer(_features())
    assert layer.count_params() == _aspp_params((6, 12), True, separable=False)


def test_aspp_deeplab_width_params():
    layer = aspp.ASPP((6, 12, 18), crop_size=(129, 129), output_stride=16)
    layer(_features((1, FEAT, FEAT, 320)))
    assert layer.count_params() == _aspp_params((6, 12, 18), True, c=320, f=256)


def test_aspp_rates_are_absolute_and_branch_order():
    layer = aspp.ASPP((12, 24, 36), crop_size=(65, 65), output_stride=8, filters=F)
    names = [b.name for b in layer.branch_layers]
    assert names == ["image_pooling", "aspp0", "aspp1", "aspp2", "aspp3"]
    rates = [tuple(b.get_config()["rate"]) for b in layer.branch_layers[2:]]
    assert rates == [(12, 12), (24, 24), (36, 36)]
    assert layer.concat_projection.name == "concat_projection"


def test_aspp_pooling_crop_size_is_used():
    layer = aspp.ASPP(
        (),
        crop_size=(129, 129),
        output_stride=16,
        pooling_crop_size=(65, 65),
        filters=F,
    )
    pool = layer.branch_layers[0]
    assert pool.get_config()["pooling_crop_size"] == (65, 65)
    assert layer(_features()).shape == (1, FEAT, FEAT, F)
    with pytest.raises(ValueError, match="does not fit"):
        aspp.ASPP(
            (), crop_size=(65, 65), output_stride=16, pooling_crop_size=(129, 129)
        )


def test_aspp_wrong_feature_size_raises():
    layer = aspp.ASPP((6,), crop_size=(65, 65), output_stride=16, filters=F)
    with pytest.raises(ValueError, match=r"crop \(65, 65\)"):
        layer(_features((1, 9, 9, C)))


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
@pytest.mark.parametrize(
    "shape", [(1, 17, 17, C), (1, 5, 5, C), (1, FEAT + 1, FEAT, C)]
)
def test_aspp_without_pooling_wrong_feature_size_raises(output_stride, shape):
    # No image-level feature and no atrous branch: only the 1x1 conv, so the
    # size check is the ASPP's own, not a pyramid pooling branch's.
    crop = _crop(output_stride)
    layer = aspp.ASPP(
        (),
        crop_size=crop,
        output_stride=output_stride,
        add_image_level_feature=False,
        filters=F,
    )
    assert [b.name for b in layer.branch_layers] == ["aspp0"]
    message = r"crop \(%d, %d\) at output stride %d" % (*crop, output_stride)
    with pytest.raises(ValueError, match=message):
        layer(_features(shape))
    symbolic = aspp.ASPP(
        (),
        crop_size=crop,
        output_stride=output_stride,
        add_image_level_feature=False,
        filters=F,
    )
    with pytest.raises(ValueError, match=message):
        symbolic(tf.keras.Input(shape[1:]))
    # The right size builds.
    assert layer(_features()).shape == (1, FEAT, FEAT, F)


def test_aspp_rejects_bad_rate():
    with pytest.raises(ValueError, match="rates"):
        aspp.ASPP((6, 0), crop_size=(65, 65), output_stride=16)


def test_aspp_dropout_only_in_training():
    layer = aspp.ASPP(
        (6,), crop_size=(129, 129), output_stride=16, filters=F, dropout_rate=0.5
    )
    x = _features((2, FEAT, FEAT, C))
    assert not np.allclose(
        layer(x, training=True).numpy(), layer(x, training=True).numpy()
    )
    np.testing.assert_array_equal(
        layer(x, training=False).numpy(), layer(x, training=False).numpy()
    )


# ------------------------------------------------------------ serialization


_CASES = [
    pytest.param(
        lambda: aspp.ASPP(
            (6, 12, 18),
            crop_size=(129, 129),
            output_stride=16,
            filters=F,
            weight_decay=4e-5,
        ),
        [(FEAT, FEAT, C)],
        id="aspp",
    ),
    pytest.param(
        lambda: aspp.ASPP(
            (),
            crop_size=(65, 65),
            output_stride=8,
            use_separable_conv=False,
            add_image_level_feature=False,
            filters=F,
        ),
        [(FEAT, FEAT, C)],
        id="aspp_plain",
    ),
]


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_config_round_trip(factory, shapes):
    del shapes
    layer_testing.check_config_round_trip(factory())


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_keras_save_load(factory, shapes, tmp_path):
    layer_testing.check_keras_save_load(factory, shapes, tmp_path)


def test_checkpoint_saves_every_branch_weight(tmp_path):
    layer = aspp.ASPP((6, 12), crop_size=_crop(16), output_stride=16, filters=F)
    layer(_features())
    layer_testing.check_checkpoint_saves_every_weight(layer, tmp_path)

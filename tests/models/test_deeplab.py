"""Tests for deeplab_dpc.models.deeplab."""

import json

import numpy as np
import pytest
import tensorflow as tf

import model_testing
from deeplab_dpc.layers import aspp
from deeplab_dpc.layers import dense_prediction_cell
from deeplab_dpc.models import deeplab

FILTERS = model_testing.FILTERS
PUBLISHED = model_testing.PUBLISHED
SAMPLED = model_testing.SAMPLED
DPC_DECODER = model_testing.DPC_DECODER
ASPP_DECODER = model_testing.ASPP_DECODER
ASPP_PLAIN = model_testing.ASPP_PLAIN
_options = model_testing.options
_model = model_testing.model
_images = model_testing.images
_random_weights = model_testing.random_weights
_feature_size = model_testing.feature_size


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize(
    "options",
    [
        DPC_DECODER,
        _options(crop_size=(33, 33), output_stride=8, dense_prediction_cell=PUBLISHED),
        _options(
            crop_size=(97, 97),
            output_stride=32,
            dense_prediction_cell=PUBLISHED,
            decoder_output_stride=4,
            num_classes=2,
        ),
        _options(
            crop_size=(49, 65),
            output_stride=16,
            dense_prediction_cell=SAMPLED,
            decoder_output_stride=4,
        ),
        _options(
            crop_size=(65, 65),
            output_stride=32,
            dense_prediction_cell=SAMPLED,
            num_classes=1,
        ),
        ASPP_DECODER,
        ASPP_PLAIN,
        _options(crop_size=(33, 33), output_stride=8, atrous_rates=(12, 24, 36)),
        _options(
            crop_size=(65, 65),
            output_stride=32,
            atrous_rates=(),
            decoder_output_stride=4,
            num_classes=19,
        ),
    ],
    ids=[
        "dpc-os16-dec",
        "dpc-os8",
        "dpc-os32-dec",
        "sampled-os16-dec-nonsq",
        "sampled-os32",
        "aspp-os16-dec",
        "aspp-empty-os16",
        "aspp-os8",
        "aspp-empty-os32-dec",
    ],
)
def test_logits_shape(options):
    model = _model(options)
    crop = options.crop_size
    assert tuple(model.output.shape) == (None, *crop, options.num_classes)
    logits = model(_images(crop, batch=2), training=False)
    assert tuple(logits.shape) == (2, *crop, options.num_classes)
    assert np.isfinite(logits.numpy()).all()
    head = model.get_layer(
        deeplab.DPC_LAYER if options.head == "dpc" else deeplab.ASPP_LAYER
    )
    assert tuple(head.output.shape) == (
        None,
        *_feature_size(crop, options.output_stride),
        FILTERS,
    )
    pre = model.get_layer(deeplab.LOGITS_LAYER).output
    size = (
        _feature_size(crop, 4)
        if options.decoder_output_stride
        else _feature_size(crop, options.output_stride)
    )
    assert tuple(pre.shape) == (None, *size, options.num_classes)


def test_head_choice():
    assert DPC_DECODER.head == deeplab.HEAD_DPC
    assert ASPP_DECODER.head == deeplab.HEAD_ASPP
    head = deeplab.build_head(DPC_DECODER)
    assert isinstance(head, dense_prediction_cell.DensePredictionCell)
    assert head.cell == PUBLISHED
    head = deeplab.build_head(ASPP_DECODER)
    assert isinstance(head, aspp.ASPP)
    assert head.get_config()["atrous_rates"] == (6, 12, 18)


def test_dpc_replaces_aspp_settings():
    # With a cell, the ASPP settings are ignored (as DeepLab does).
    options = _options(
        crop_size=(65, 65),
        output_stride=8,
        dense_prediction_cell=PUBLISHED,
        atrous_rates=(12, 24, 36),
    )
    head = deeplab.build_head(options)
    assert isinstance(head, dense_prediction_cell.DensePredictionCell)
    assert [tuple(b.get_config()["rate"]) for b in head.branch_layers] == [
        tuple(2 * r for r in b.rate) for b in PUBLISHED
    ]


# -------------------------------------------------------------- flat graph


@pytest.mark.parametrize(
    "options,names,absent",
    [
        (DPC_DECODER, {"dense_prediction_cell", "decoder"}, {"aspp"}),
        (ASPP_PLAIN, {"aspp"}, {"dense_prediction_cell", "decoder"}),
        (ASPP_DECODER, {"aspp", "decoder"}, {"dense_prediction_cell"}),
    ],
    ids=["dpc-dec", "aspp", "aspp-dec"],
)
def test_model_is_one_flat_graph(options, names, absent):
    model = _model(options)
    assert not [l.name for l in model.layers if isinstance(l, tf.keras.Model)]
    layer_names = [l.name for l in model.layers]
    assert len(layer_names) == len(set(layer_names))
    assert names | {"logits", "upsample_logits", "preprocessing"} <= set(layer_names)
    assert not absent & set(layer_names)
    assert layer_names[-1] == "upsample_logits"
    # Backbone layers are in the model itself, not in a sub-model.
    assert "block_16_project_BN" in layer_names
    assert deeplab.module_of("block_16_project_BN") == "backbone"
    assert deeplab.module_of("decoder") == "decoder"


# ------------------------------------------------------ saving and rebuild


def test_keras_save_load_dpc_model(tmp_path):
    options = _options(
        crop_size=(33, 33),
        output_stride=8,
        dense_prediction_cell=PUBLISHED,
        decoder_output_stride=4,
        num_classes=3,
    )
    model = _model(options)
    model.set_weights(_random_weights(model, seed=1))
    x = _images((33, 33), batch=2, seed=1)
    expected = model(x, training=False).numpy()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded(x, training=False).numpy(),
        expected,
        rtol=1e-4,
        atol=1e-4 * np.abs(expected).max(),
    )
    cell = loaded.get_layer(deeplab.DPC_LAYER)
    assert isinstance(cell, dense_prediction_cell.DensePredictionCell)
    assert cell.cell == PUBLISHED


def test_config_rebuild_gives_same_outputs():
    model = _model(DPC_DECODER)
    model.set_weights(_random_weights(model, seed=2))
    config = json.loads(json.dumps(model.get_config()))
    rebuilt = tf.keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    x = _images((65, 65), seed=2)
    expected = model(x, training=False).numpy()
    np.testing.assert_allclose(
        rebuilt(x, training=False).numpy(),
        expected,
        rtol=1e-5,
        atol=1e-5 * np.abs(expected).max(),
    )
    assert [l.name for l in rebuilt.layers] == [l.name for l in model.layers]


# ------------------------------------------------------------------ errors


def test_crop_not_served_by_output_stride():
    with pytest.raises(ValueError, match=r"output_stride \* k \+ 1"):
        deeplab.build_deeplab(_options(crop_size=(512, 512), output_stride=16))
    with pytest.raises(ValueError, match="crop"):
        _options(crop_size=(513, 512), output_stride=16)


def test_decoder_output_stride_8_rejected():
    with pytest.raises(ValueError, match="decoder_output_stride"):
        deeplab.build_deeplab(_options(crop_size=(65, 65), decoder_output_stride=8))


@pytest.mark.parametrize("num_classes", [0, -1])
def test_num_classes_must_be_positive(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        deeplab.build_deeplab(_options(crop_size=(65, 65), num_classes=num_classes))


def test_bad_output_stride_and_variant():
    with pytest.raises(ValueError, match="output_stride"):
        _options(crop_size=(65, 65), output_stride=4)
    with pytest.raises(ValueError, match="model_variant"):
        deeplab.build_deeplab(_options(crop_size=(65, 65), model_variant="vgg16"))

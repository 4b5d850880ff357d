"""Quantization-aware int8 under tf_keras (legacy_keras, qat) and the weight
transfer from the Keras 3 model."""

import contextlib
import dataclasses
import io
import json
import os

from ai_edge_litert import schema_py_generated as schema
import numpy as np
import pytest

from deeplab_dpc.export import keras_paths
from deeplab_dpc.export import legacy_keras
from deeplab_dpc.export import litert_runner
from tests.export import tflite_testing as tt

QAT_STEPS = 2
# The export's standard error (its progress lines).
_STDERR = {}


@pytest.fixture(name="qat", scope="module")
def _qat(tmp_path_factory):
    """qat_int8 made once: a tf_keras subprocess fine-tunes, then conversion."""
    output_dir = str(tmp_path_factory.mktemp("qat"))
    with contextlib.redirect_stderr(io.StringIO()) as err:
        report = tt.fine_tuned_export(
            output_dir,
            "qat_int8",
            tt.checks(min_pixel_agreement=tt.QAT_AGREEMENT),
            representative=tt.representative(),
            qat_steps=QAT_STEPS,
            calibration_steps=2,
        )
    _STDERR["qat"] = err.getvalue()
    return output_dir, report["variants"]["qat_int8"], report


def _convolutions(path):
    """(op, input types, output types) of the convolutions of a file."""
    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(f.read(), 0)
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    wanted = (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D)
    subgraph = model.Subgraphs(0)
    found = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin not in wanted:
            continue
        types = [
            [names[subgraph.Tensors(t).Type()].lower() for t in tensors if t >= 0]
            for tensors in (op.InputsAsNumpy(), op.OutputsAsNumpy())
        ]
        found.append((i, *types))
    assert found
    return found


def test_tf_keras_copy_starts_from_the_keras_3_weights(qat):
    # The subprocess's tf_keras model, before fine-tuning, on the parity
    # images, against the Keras 3 model's logits (relative max difference).
    _, entry, _ = qat
    assert entry["tf_keras_transfer_difference"] <= 1e-5


def test_qat_file_is_full_integer_and_agrees_with_the_models(qat):
    output_dir, entry, report = qat
    path = os.path.join(output_dir, "qat_int8.tflite")
    info = litert_runner.model_info(path)
    assert info.unsupported_ops == ()
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "CONCATENATION"} <= set(info.ops)
    assert info.input_types == ("int8",) and info.output_types == ("int8",)
    for op, inputs, outputs in _convolutions(path):
        assert inputs[:2] == ["int8", "int8"] and outputs == ["int8"], op
        assert inputs[2:] in ([], ["int32"]), op  # The bias.
    assert entry["passed"] and entry["parity"]["agreement"] >= tt.QAT_AGREEMENT
    # Against the fake-quantized tf_keras model it was converted from.
    assert entry["fine_tuned_parity"]["agreement"] >= tt.QAT_AGREEMENT
    assert report["evaluation"]["qat_int8"]["agreement"] >= tt.QAT_AGREEMENT
    # And above what a file giving the float model's majority class
    # everywhere scores on the same images (0.57 now): should the test
    # models ever drift towards one class, QAT_AGREEMENT would stop telling
    # a broken file from a good one, and this fails first.
    images = tt.val_images(tt.checks().parity_images)
    classes = np.argmax(tt.model()(images, training=False), axis=-1)
    majority = np.max(np.bincount(classes.ravel())) / classes.size
    assert entry["parity"]["agreement"] > majority + 0.05, majority


def test_progress_of_calibration_and_fine_tuning(qat):
    del qat  # Made for its standard error.
    lines = _STDERR["qat"].splitlines()
    started = lines.index("fine-tuning qat_int8 in a tf_keras process")
    # From the tf_keras subprocess, passed on as they came.
    calibration = [x for x in lines if x.startswith("qat_int8 calibration")]
    assert [x.split(";")[0] for x in calibration] == [
        "qat_int8 calibration batch 1/2",
        "qat_int8 calibration batch 2/2",
    ]
    assert lines.index(calibration[0]) > started
    steps = [x for x in lines if x.startswith("qat_int8 fine-tuning step")]
    assert [x.split(":")[0] for x in steps] == [
        f"qat_int8 fine-tuning step {n}/{QAT_STEPS}" for n in range(1, QAT_STEPS + 1)
    ]
    assert ": loss " in steps[0] and ", ETA " in steps[0] and steps[-1].endswith("done")
    (variant,) = [x for x in lines if x.startswith("variant ")]
    assert variant.startswith("variant 1/1 (qat_int8): converted and checked in ")
    assert lines.index(variant) > lines.index(steps[-1])


def test_qat_ranges_calibrated_then_fine_tuned(qat):
    _, entry, _ = qat
    assert entry["calibrated_ranges"] > 50
    assert len(entry["losses"]) == QAT_STEPS
    assert all(np.isfinite(entry["losses"]))


def test_layer_weights_cover_every_weight_once():
    model = tt.model("aspp")
    weights = keras_paths.layer_weights(model)
    assert len(weights) == len(model.weights)
    assert sum(w.size for w in weights.values()) == model.count_params()
    assert "aspp/image_pooling/conv/bn:3" in weights  # moving variance
    head = model.get_layer("aspp").image_pooling.conv.bn.moving_variance
    np.testing.assert_array_equal(weights["aspp/image_pooling/conv/bn:3"], head.numpy())


def test_load_weights_names_what_does_not_fit(tmp_path):
    path = str(tmp_path / "weights.npz")
    weights = keras_paths.layer_weights(tt.model("aspp"))
    np.savez(path, **weights)
    with pytest.raises(ValueError, match="weights it lacks: .*dense_prediction_cell"):
        keras_paths.load_weights(tt.model("dpc"), path)
    weights["logits:0"] = weights["logits:0"][..., :3]  # Another num_classes.
    np.savez(path, **weights)
    with pytest.raises(ValueError, match=r"logits:0 has shape \(1, 1, 256, 3\)"):
        keras_paths.load_weights(tt.model("aspp"), path)


def test_model_options_survive_the_request_json():
    for head in ("dpc", "aspp"):
        options = dataclasses.replace(tt.options(head), image_pooling_crop_size=(9, 9))
        request = json.loads(json.dumps(legacy_keras.options_to_json(options)))
        assert legacy_keras.options_from_json(request) == options

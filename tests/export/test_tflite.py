"""TFLite conversion and export (tflite, tflite_export, litert_runner) and
the export_tflite program, run in LiteRT."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.export import litert_runner
from deeplab_dpc.export import saved_model
from deeplab_dpc.export import tflite
from deeplab_dpc.export import tflite_export
from deeplab_dpc.layers import resize
from tests.export import tflite_testing as tt

MOBILE = ("float32", "int8")


@pytest.fixture(name="ptq", scope="module")
def _ptq(tmp_path_factory):
    """The post-training variants, exported once (logits, float input)."""
    output_dir = str(tmp_path_factory.mktemp("ptq") / "out")
    report = tflite_export.export(
        output_dir,
        tflite.keras_model_fn(tt.model()),
        tflite.ConversionOptions(crop_size=tt.CROP),
        tt.checks(),
        variants=tflite.POST_TRAINING,
        representative=tt.representative(),
    )
    return output_dir, report


@pytest.fixture(name="mobile", scope="module")
def _mobile(tmp_path_factory):
    """float32 and int8 with argmax, uint8 input and a resizable input."""
    output_dir = str(tmp_path_factory.mktemp("mobile"))
    conversion = tflite.ConversionOptions(
        crop_size=tt.CROP,
        include_argmax=True,
        include_preprocessing=True,
        allow_resize=True,
    )
    report = tflite_export.export(
        output_dir,
        tflite.keras_model_fn(tt.model()),
        conversion,
        tt.checks(),
        variants=MOBILE,
        representative=tt.representative(),
    )
    return output_dir, report


def test_every_post_training_variant_passes_its_parity_check(ptq):
    output_dir, report = ptq
    variants = report["variants"]
    assert list(variants) == list(tflite.POST_TRAINING)
    assert all(e["passed"] and e["litert_checked"] for e in variants.values())
    assert variants["float32"]["parity"]["relative_max_abs_diff"] <= 1e-3
    assert variants["float16"]["parity"]["relative_max_abs_diff"] <= 2e-2
    for variant in ("dynamic_int8", "int8"):
        assert variants[variant]["parity"]["agreement"] >= tt.INT8_AGREEMENT
    with open(os.path.join(output_dir, tflite_export.REPORT_FILE)) as f:
        assert json.load(f)["variants"].keys() == variants.keys()
    assert sorted(os.listdir(output_dir)) == sorted(
        [f"{v}.tflite" for v in variants] + [tflite_export.REPORT_FILE]
    )


def test_files_reproduce_the_keras_model_in_litert(ptq):
    output_dir, _ = ptq
    images = tt.val_images()
    logits = tt.model()(images, training=False).numpy()
    scale = np.abs(logits).max()
    for variant, tolerance in (("float32", 1e-3), ("float16", 2e-2)):
        runner = litert_runner.Runner(os.path.join(output_dir, f"{variant}.tflite"))
        assert runner.input_dtype == np.float32
        outputs = np.concatenate([runner.run(image) for image in images])
        np.testing.assert_allclose(outputs, logits, atol=tolerance * scale)
    for variant, dtype in (("dynamic_int8", np.float32), ("int8", np.int8)):
        runner = litert_runner.Runner(os.path.join(output_dir, f"{variant}.tflite"))
        assert runner.input_dtype == dtype
        agreement = np.mean(runner.predict(images) == logits.argmax(-1))
        assert agreement >= tt.INT8_AGREEMENT, variant


def test_int8_is_full_integer_and_every_file_builtin_only(ptq):
    output_dir, report = ptq
    for variant in tflite.POST_TRAINING:
        info = litert_runner.model_info(os.path.join(output_dir, f"{variant}.tflite"))
        assert info.unsupported_ops == ()
        assert {"CONV_2D", "DEPTHWISE_CONV_2D", "RESIZE_BILINEAR"} <= set(info.ops)
    int8 = litert_runner.model_info(os.path.join(output_dir, "int8.tflite"))
    assert set(int8.tensor_types.values()) == {"int8", "int32"}
    sizes = {v: e["size_bytes"] for v, e in report["variants"].items()}
    assert sizes["float16"] < 0.6 * sizes["float32"]
    assert sizes["int8"] < 0.4 * sizes["float32"]
    assert all(e["gzip_bytes"] < e["size_bytes"] for e in report["variants"].values())


def test_miou_of_every_variant_beside_the_float_model(ptq):
    _, report = ptq
    evaluation = report["evaluation"]
    assert set(evaluation) == {"float", *tflite.POST_TRAINING}
    for name, result in evaluation.items():
        assert 0.0 <= result["miou"] <= 1.0
        assert result["num_images"] == tt.NUM_VAL
        assert result["miou_drop"] == pytest.approx(
            evaluation["float"]["miou"] - result["miou"]
        )
    assert evaluation["float32"]["agreement"] == pytest.approx(1.0, abs=1e-3)
    assert evaluation["int8"]["agreement"] >= tt.INT8_AGREEMENT


def test_argmax_file_has_no_int64_and_takes_uint8_pixels(mobile):
    output_dir, report = mobile
    for variant in MOBILE:
        info = litert_runner.model_info(os.path.join(output_dir, f"{variant}.tflite"))
        assert info.tensors_of_type("int64") == []
        assert "ARG_MAX" in info.ops and info.unsupported_ops == ()
        runner = litert_runner.Runner(os.path.join(output_dir, f"{variant}.tflite"))
        assert runner.input_dtype == np.uint8
        assert runner.outputs_predictions
        assert runner.input_shape == (1, -1, -1, 3)
        assert report["variants"][variant]["parity"]["agreement"] >= tt.INT8_AGREEMENT


@pytest.mark.parametrize("size", [(41, 57), (20, 25)])
def test_resizable_input_fits_and_pads_as_the_saved_model(mobile, size):
    # Larger than the crop: scaled to fit (33x23, aspect kept), then padded;
    # smaller: padded only. Never stretched to the crop.
    output_dir, _ = mobile
    image = np.random.default_rng(3).integers(0, 256, (1, *size, 3)).astype(np.float32)
    model = tt.model()
    fit_h, fit_w = (int(v) for v in saved_model.fit_size(*size, tt.CROP))
    fitted = resize.resize_bilinear(tf.constant(image), (fit_h, fit_w))
    logits = model(saved_model.pad_to_crop(fitted, tt.CROP), training=False)
    logits = resize.resize_bilinear(logits[:, :fit_h, :fit_w], size)
    expected = np.argmax(logits.numpy(), axis=-1)
    for variant, least in (("float32", 0.999), ("int8", tt.INT8_AGREEMENT)):
        runner = litert_runner.Runner(os.path.join(output_dir, f"{variant}.tflite"))
        predictions = runner.predict(image)
        assert predictions.shape == (1, *size)
        assert np.mean(predictions == expected) >= least, variant


def test_flex_ops_are_refused_unless_allowed(tmp_path):
    def uses_erf(images):  # Erf is a Select TF op, not a LiteRT builtin.
        return tf.math.erf(images / 255.0)

    options = tflite.ConversionOptions(crop_size=(5, 5))
    function = tflite.inference_function(uses_erf, options)
    with pytest.raises(tflite.ConversionError, match="allow_flex"):
        tflite.convert(function, "float32", options)
    checks = tt.checks(dataset_dir=None)
    output_dir = tmp_path / "refused"
    with pytest.raises(tflite.ConversionError):
        tflite_export.export(
            str(output_dir), uses_erf, options, checks, variants=["float32"]
        )
    assert not output_dir.exists()
    allowed = tflite.ConversionOptions(crop_size=(5, 5), allow_flex=True)
    report = tflite_export.export(
        str(tmp_path / "allowed"), uses_erf, allowed, checks, variants=["float32"]
    )
    entry = report["variants"]["float32"]
    assert "FLEX:Erf" in entry["ops"] and not entry["litert_checked"]


def test_export_refuses_to_overwrite(tmp_path):
    (tmp_path / "float16.tflite").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        tflite_export.export(
            str(tmp_path),
            tflite.keras_model_fn(tt.model()),
            tflite.ConversionOptions(crop_size=tt.CROP),
            tt.checks(),
            variants=["float32", "float16"],
        )
    assert sorted(os.listdir(tmp_path)) == ["float16.tflite"]
    assert (tmp_path / "float16.tflite").read_bytes() == b"mine"


def test_failed_check_leaves_nothing_that_looks_complete(tmp_path):
    (tmp_path / "notes.txt").write_text("kept")
    impossible = tt.checks(dataset_dir=None, float32_tolerance=-1.0)
    with pytest.raises(tflite_export.ParityError, match="float32"):
        tflite_export.export(
            str(tmp_path),
            lambda images: tf.nn.relu(images - 100.0),
            tflite.ConversionOptions(crop_size=(5, 5)),
            impossible,
            variants=["float32", "float16"],
        )
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_saved_model_source_converts_like_its_signature(tmp_path):
    inputs = tf.keras.Input((9, 9, 3))
    x = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(4, 1)(x))
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    with pytest.raises(ValueError, match="no signature 'predict'"):
        tflite.saved_model_fn(str(tmp_path / "saved"), "predict")
    report = tflite_export.export(
        str(tmp_path / "out"),
        tflite.saved_model_fn(str(tmp_path / "saved")),
        tflite.ConversionOptions(crop_size=(9, 9)),
        tt.checks(dataset_dir=None),
        variants=["float32"],
    )
    runner = litert_runner.Runner(report["variants"]["float32"]["file"])
    image = np.random.default_rng(4).uniform(0, 255, (1, 9, 9, 3)).astype(np.float32)
    expected = model(image).numpy()
    tolerance = 1e-4 * np.abs(expected).max()
    np.testing.assert_allclose(runner.run(image), expected, atol=tolerance)


def test_program_exports_and_checks(tmp_path):
    paths = tt.workspace()
    args = [
        f"--checkpoint_path={paths['dpc']}",
        f"--output_dir={tmp_path / 'out'}",
        f"--dataset_dir={paths['data']}",
        "--head=dpc",
        "--variants=float32,dynamic_int8",
        "--include_argmax",
        "--max_eval_images=2",
        f"--min_pixel_agreement={tt.INT8_AGREEMENT}",
        *tt.MODEL_FLAGS,
    ]
    proc = tt.run_program("export_tflite.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "float model mIOU" in proc.stdout and "dynamic_int8" in proc.stdout
    with open(tmp_path / "out" / tflite_export.REPORT_FILE) as f:
        report = json.load(f)
    assert report["conversion"]["include_argmax"] is True
    for variant in ("float32", "dynamic_int8"):
        info = litert_runner.model_info(str(tmp_path / "out" / f"{variant}.tflite"))
        assert info.tensors_of_type("int64") == []
        assert report["variants"][variant]["passed"]


def test_evaluation_names_images_larger_than_the_crop():
    def background(images):
        return np.zeros(np.shape(images)[:3], np.int32)

    with pytest.raises(ValueError, match="cannot evaluate on 'val'.*larger than"):
        tflite_export.evaluate(
            {"background": background},
            tt.workspace()["data"],
            "val",
            crop_size=(17, 17),
            num_classes=tt.NUM_CLASSES,
            ignore_label=tt.IGNORE_LABEL,
        )
    result = tflite_export.evaluate(
        {"background": background},
        tt.workspace()["data"],
        "val",
        crop_size=tt.CROP,
        num_classes=tt.NUM_CLASSES,
        ignore_label=tt.IGNORE_LABEL,
        max_images=2,
    )["background"]
    assert result["num_images"] == 2
    # All background: its IoU is the pixel accuracy, the other classes' 0.
    ious = [v for v in result["per_class_iou"] if v is not None]
    assert ious[0] == pytest.approx(result["pixel_accuracy"]) and ious[0] > 0
    assert result["miou"] == pytest.approx(np.mean(ious)) and len(ious) > 1


def test_fixed_crop_file_refuses_another_size(ptq):
    # A file exported without --allow_resize, given a smaller image: the
    # audit's 33x33 input came back as a 65x65 output without an error.
    output_dir, _ = ptq
    runner = litert_runner.Runner(os.path.join(output_dir, "float32.tflite"))
    assert runner.input_shape[1:3] == tt.CROP
    image = np.zeros((1, tt.CROP[0] // 2, tt.CROP[1] // 2, 3), np.float32)
    with pytest.raises(ValueError, match="33x33 images only, not 16x16: it was exported without --allow_resize"):
        runner.predict(image)

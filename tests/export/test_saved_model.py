"""SavedModels for TF Serving: the export program, TensorFlow's own
saved_model_cli, a fresh process that never imports deeplab_dpc, and
atomic, non-clobbering writes."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.evaluation import inference
from deeplab_dpc.export import saved_model
from deeplab_dpc.layers import resize
from deeplab_dpc.models import deeplab

REPO = pathlib.Path(__file__).resolve().parents[2]
OPTIONS = deeplab.ModelOptions(
    model_variant="mobilenet_v2",
    depth_multiplier=0.35,
    crop_size=(65, 65),
    output_stride=16,
    num_classes=7,
)
MODEL_FLAGS = (
    "--model_variant=mobilenet_v2",
    "--depth_multiplier=0.35",
    "--crop_size=65,65",
    "--output_stride=16",
    "--num_classes=7",
)
TIMEOUT = 300


def _run(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False
    )


def _export_program(*args):
    return _run([sys.executable, str(REPO / "export/export_model.py"), *args])


def _saved_model_cli(*args):
    """Runs TensorFlow's `saved_model_cli` (the venv's console script)."""
    cli = pathlib.Path(sys.executable).parent / "saved_model_cli"
    if cli.exists():
        return _run([str(cli), *args])
    return _run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args]
    )


def _reinitialise(model, seed):
    """He-normal kernels, so that the logits vary over the image (the
    default initialisation gives near-ties everywhere)."""
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        if "kernel" in variable.path:
            shape = tuple(variable.shape)
            fan_in = np.prod(shape[:2] if "depthwise" in variable.path else shape[:-1])
            variable.assign(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape))


def _image(seed, height, width, batch=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def _reference(model, images):
    """What the export should compute, from the Keras model, eagerly:
    downscale to fit the crop, pad with the mean pixel, logits, cut, resize
    back, argmax."""
    height, width = images.shape[1:3]
    fit = [int(v) for v in saved_model.fit_size(height, width, OPTIONS.crop_size)]
    x = resize.resize_bilinear(tf.constant(images, tf.float32), fit)
    crop_h, crop_w = OPTIONS.crop_size
    paddings = [[0, 0], [0, crop_h - fit[0]], [0, crop_w - fit[1]], [0, 0]]
    x = tf.pad(x, paddings, constant_values=127.5)
    logits = model(x)[:, : fit[0], : fit[1]]
    logits = resize.resize_bilinear(logits, (height, width))
    return np.argmax(logits, -1)


@pytest.fixture(name="model", scope="module")
def _model():
    tf.keras.utils.set_random_seed(0)
    model = deeplab.build_deeplab(OPTIONS)
    _reinitialise(model, 0)
    return model


@pytest.fixture(name="exported", scope="module")
def _exported(model, tmp_path_factory):
    """The export program's SavedModel of `model`'s training checkpoint."""
    root = tmp_path_factory.mktemp("export_program")
    prefix = tf.train.Checkpoint(model=model).save(str(root / "train/ckpt"))
    proc = _export_program(
        f"--checkpoint_path={root / 'train'}",
        f"--export_path={root / 'export'}",
        *MODEL_FLAGS,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"dir": root / "export" / "1", "stdout": proc.stdout, "checkpoint": prefix}


def test_fit_size():
    sizes = {
        (65, 65): (65, 65),  # the crop: untouched
        (40, 50): (40, 50),  # smaller: padded, never upscaled
        (100, 130): (50, 65),  # width limits: 100 * 65 / 130
        (90, 30): (65, 21),  # height limits: floor(30 * 65 / 90)
        (66, 65): (65, 64),
        (1000, 1): (65, 1),  # at least one pixel
    }
    for (height, width), want in sizes.items():
        got = saved_model.fit_size(height, width, (65, 65))
        assert tuple(int(v) for v in got) == want, (height, width)
    assert tuple(int(v) for v in saved_model.fit_size(100, 100, (33, 65))) == (33, 33)


def test_export_program_prints_path_and_signatures(exported):
    assert f"Exported {exported['checkpoint']} to {exported['dir']}" in (
        exported["stdout"]
    )
    assert "serving_default\n  input ImageTensor: uint8 [-1, -1, -1, 3]" in (
        exported["stdout"]
    )
    assert "predict_images\n  input images: string [-1]" in exported["stdout"]
    options = json.loads(
        (exported["dir"] / saved_model.EXTRA_DIR / saved_model.OPTIONS_FILE).read_text()
    )
    assert options["model_variant"] == "mobilenet_v2"
    assert options["crop_size"] == [65, 65] and options["num_classes"] == 7
    assert options["head"] == "aspp" and options["dense_prediction_cell"] is None
    assert options["inference_scales"] == [1.0]
    assert sorted(os.listdir(exported["dir"].parent)) == ["1"]  # no leftovers


def test_saved_model_cli_shows_both_signatures(exported):
    proc = _saved_model_cli("show", "--all", "--dir", str(exported["dir"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    blocks = {
        name: text.split(f"signature_def['{name}']:")[1].split("signature_def[")[0]
        for name in ("serving_default", "predict_images")
    }
    want_outputs = (
        "outputs['SemanticPredictions'] tensor_info:\n"
        "        dtype: DT_INT32\n        shape: (-1, -1, -1)",
        "outputs['SemanticProbabilities'] tensor_info:\n"
        "        dtype: DT_FLOAT\n        shape: (-1, -1, -1, 7)",
    )
    assert (
        "inputs['ImageTensor'] tensor_info:\n        dtype: DT_UINT8\n"
        "        shape: (-1, -1, -1, 3)" in blocks["serving_default"]
    )
    assert (
        "inputs['images'] tensor_info:\n        dtype: DT_STRING\n"
        "        shape: (-1)" in blocks["predict_images"]
    )
    for block in blocks.values():
        for output in want_outputs:
            assert output in block
        assert "tensorflow/serving/predict" in block


_FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    config = json.load(open(sys.argv[1]))
    loaded = tf.saved_model.load(config["dir"])
    serve = loaded.signatures["serving_default"]
    predict_images = loaded.signatures["predict_images"]
    results, errors = {}, {}
    for name, path in config["arrays"].items():
        out = serve(ImageTensor=tf.constant(np.load(path)))
        for key, value in out.items():
            results[f"{name}/{key}"] = value.numpy()
    for name, path in config["encoded"].items():
        data = open(path, "rb").read()
        out = predict_images(images=tf.constant([data, data]))
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
        ref = serve(ImageTensor=decoded[None])
        for key in out:
            results[f"{name}/predict_images/{key}"] = out[key].numpy()
            results[f"{name}/serving_default/{key}"] = ref[key].numpy()
    bad_calls = {
        "float32": lambda: serve(ImageTensor=tf.zeros([1, 9, 9, 3], tf.float32)),
        "rank3": lambda: serve(ImageTensor=tf.zeros([9, 9, 3], tf.uint8)),
        "channels4": lambda: serve(ImageTensor=tf.zeros([1, 9, 9, 4], tf.uint8)),
        "pixels_to_predict_images": lambda: predict_images(
            images=tf.zeros([1, 9, 9, 3], tf.uint8)
        ),
        "two_sizes": lambda: predict_images(
            images=tf.constant([open(p, "rb").read() for p in config["two_sizes"]])
        ),
    }
    for name, call in bad_calls.items():
        try:
            call()
            errors[name] = "no error"
        except Exception as e:  # What a user sees, whatever it is.
            errors[name] = f"{type(e).__name__}: {e}"
    np.savez(config["results"], **results)

    # An image over the pixel budget, after a warm-up call: its error, and
    # the growth of the peak memory. ru_maxrss would carry the parent's peak
    # across fork and exec: the peak (VmHWM) is reset through
    # /proc/self/clear_refs instead.
    def status(key):
        with open("/proc/self/status") as f:
            return [int(l.split()[1]) for l in f if l.startswith(key + ":")][0] / 1024
    predict_images(images=tf.constant([open(config["budget_small"], "rb").read()]))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    try:
        predict_images(images=tf.constant([open(config["budget_big"], "rb").read()]))
        budget_error = None
    except tf.errors.InvalidArgumentError as e:
        budget_error = e.message
    budget = {"error": budget_error, "growth_mb": status("VmHWM") - before}

    modules = sorted(m for m in sys.modules if m.split(".")[0] == "deeplab_dpc")
    print(json.dumps(
        {"errors": errors, "budget": budget, "deeplab_dpc_modules": modules}))
    """)


@pytest.fixture(name="fresh", scope="module")
def _fresh(exported, tmp_path_factory):
    """Runs the SavedModel in a process that never imports deeplab_dpc: the
    images of the tests below, bad inputs, and an image over the pixel
    budget."""
    root = tmp_path_factory.mktemp("fresh")
    arrays = {
        "crop": _image(2, 65, 65),
        "smaller": _image(3, 40, 50, batch=2),
        "wider": _image(4, 100, 130),
        "taller": _image(5, 90, 30),
        "tiny": _image(6, 1, 1),
        "png_pixels": _image(7, 48, 56),
    }
    for name, array in arrays.items():
        np.save(root / f"{name}.npy", array)
    pixels = arrays["png_pixels"]
    Image.fromarray(pixels[0]).save(root / "image.png")
    Image.fromarray(pixels[0]).save(root / "image.jpg", quality=90)
    Image.fromarray(_image(8, 20, 20)[0]).save(root / "other.png")
    # 5000x5000 = 25 MP > the default 16 MP budget, in about 100 KB of PNG:
    # decoded it would take 75 MB, and 1.2 GB more as floats at full size.
    (root / "big.png").write_bytes(_solid_png(5000, 5000))
    Image.fromarray(_image(1, 30, 40)[0]).save(root / "small.png")
    config = {
        "dir": str(exported["dir"]),
        "arrays": {name: str(root / f"{name}.npy") for name in arrays},
        "encoded": {"png": str(root / "image.png"), "jpeg": str(root / "image.jpg")},
        "two_sizes": [str(root / "image.png"), str(root / "other.png")],
        "results": str(root / "results.npz"),
        "budget_small": str(root / "small.png"),
        "budget_big": str(root / "big.png"),
    }
    (root / "config.json").write_text(json.dumps(config))
    proc = _run([sys.executable, "-c", _FRESH_PROCESS, str(root / "config.json")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = dict(np.load(root / "results.npz"))
    return {"arrays": arrays, "results": results, "root": root, **report}


def test_fresh_process_never_imports_the_package(fresh):
    assert fresh["deeplab_dpc_modules"] == []


def test_crop_size_image_equals_the_keras_model(fresh, model):
    image = fresh["arrays"]["crop"]
    logits = model(tf.constant(image, tf.float32))
    np.testing.assert_array_equal(
        fresh["results"]["crop/SemanticPredictions"], np.argmax(logits, -1)
    )
    # The export folds batch norm into the convs: equal up to float rounding.
    np.testing.assert_allclose(
        fresh["results"]["crop/SemanticProbabilities"],
        tf.nn.softmax(logits),
        atol=5e-5,
    )


def test_any_size_round_trips_to_its_own_size(fresh, model):
    for name, images in fresh["arrays"].items():
        predictions = fresh["results"][f"{name}/SemanticPredictions"]
        probabilities = fresh["results"][f"{name}/SemanticProbabilities"]
        assert predictions.shape == images.shape[:3], name
        assert predictions.dtype == np.int32
        assert probabilities.shape == (*images.shape[:3], 7), name
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(predictions, _reference(model, images), name)
    # The smaller images are not resized: each is exactly eval's padded run.
    smaller = fresh["arrays"]["smaller"]
    padded = np.full((2, 65, 65, 3), 127.5, np.float32)
    padded[:, :40, :50] = smaller
    np.testing.assert_array_equal(
        fresh["results"]["smaller/SemanticPredictions"],
        np.argmax(model(padded), -1)[:, :40, :50],
    )


def test_predict_images_equals_serving_default_on_decoded(fresh):
    results = fresh["results"]
    for name in ("png", "jpeg"):
        for key in ("SemanticPredictions", "SemanticProbabilities"):
            from_bytes = results[f"{name}/predict_images/{key}"]
            decoded = results[f"{name}/serving_default/{key}"]
            assert from_bytes.shape[:3] == (2, 48, 56)
            # A batch of 2 against a batch of 1: TensorFlow's own CPU kernels
            # (oneDNN off) round by batch size, in the last bits.
            expected = np.concatenate([decoded] * 2)
            if key == "SemanticProbabilities":
                np.testing.assert_allclose(from_bytes, expected, rtol=1e-5, atol=1e-6)
            else:
                assert np.mean(from_bytes == expected) >= 0.999
    # PNG is lossless: decoded in the graph, the same answer as the pixels'.
    np.testing.assert_allclose(
        results["png/predict_images/SemanticProbabilities"][:1],
        results["png_pixels/SemanticProbabilities"],
        rtol=1e-5,
        atol=1e-6,
    )


def test_bad_inputs_get_clear_errors(fresh):
    errors = fresh["errors"]
    assert "expected to be a uint8 tensor but is a float tensor" in errors["float32"]
    for name, shape in (("rank3", "[9,9,3]"), ("channels4", "[1,9,9,4]")):
        assert (
            f"Shape of tensor imagetensor {shape} is not compatible with "
            "expected shape [?,?,?,3]" in errors[name]
        ), errors[name]
        assert "check_ImageTensor_shape" in errors[name]
    assert "expected to be a string tensor" in errors["pixels_to_predict_images"]
    assert "all images of one request must have one size" in errors["two_sizes"]


def test_multi_scale_and_flips_run_by_saved_model_cli(model, tmp_path):
    """`saved_model_cli run` loads as TF Serving does (a TF1 session that
    restores the variables), here on a multi-scale, flipped export."""
    path = saved_model.export_saved_model(
        model,
        OPTIONS,
        str(tmp_path / "export"),
        model_version=3,
        inference_scales=(1.0, 0.75),
        add_flipped_images=True,
    )
    assert path == str(tmp_path / "export" / "3")
    options_file = pathlib.Path(path, saved_model.EXTRA_DIR, saved_model.OPTIONS_FILE)
    recorded = json.loads(options_file.read_text())
    assert recorded["inference_scales"] == [1.0, 0.75]
    assert recorded["add_flipped_images"] is True
    image = _image(9, 65, 65)
    np.save(tmp_path / "image.npy", image)
    proc = _saved_model_cli(
        "run",
        "--dir",
        path,
        "--tag_set",
        "serve",
        "--signature_def",
        "serving_default",
        "--inputs",
        f"ImageTensor={tmp_path / 'image.npy'}",
        "--outdir",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = np.load(tmp_path / "out/SemanticPredictions.npy")
    probabilities = np.load(tmp_path / "out/SemanticProbabilities.npy")
    predictor = inference.Predictor(model, OPTIONS, (1.0, 0.75), True)
    floats = tf.constant(image, tf.float32)
    want = predictor.probabilities(floats)
    np.testing.assert_allclose(probabilities, want, atol=1e-5)
    assert predictions.dtype == np.int32
    np.testing.assert_array_equal(predictions, predictor.predictions(floats))
    # Scales and flips change the answer (so the comparison above says
    # something): the single-scale model disagrees somewhere.
    assert (np.argmax(model(floats), -1) != predictions).any()


def test_options_file_records_a_dense_prediction_cell(tmp_path):
    options = dataclasses.replace(
        OPTIONS, dense_prediction_cell=cell_spec.published_cell()
    )
    description = saved_model.model_description(options, [1.0, 1.5], False)
    recorded = json.loads(json.dumps(description))
    assert recorded["head"] == "dpc"
    assert cell_spec.cell_from_json(recorded["dense_prediction_cell"]) == (
        cell_spec.published_cell()
    )
    assert recorded["inference_scales"] == [1.0, 1.5]
    assert recorded["mean_pixel"] == [127.5, 127.5, 127.5]


def _pixelwise_model(options):
    """A small stand-in for DeepLab: exports in about a second."""
    inputs = tf.keras.Input((*options.crop_size, 3))
    x = tf.keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    return tf.keras.Model(inputs, tf.keras.layers.Conv2D(7, 3, padding="same")(x))


def test_refuses_existing_version_and_overwrite_replaces_it(tmp_path):
    model = _pixelwise_model(OPTIONS)
    version = tmp_path / "1"
    version.mkdir()
    (version / "user_file").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"1 already exists.*--overwrite"):
        saved_model.export_saved_model(model, OPTIONS, str(tmp_path))
    assert os.listdir(version) == ["user_file"]
    assert sorted(os.listdir(tmp_path)) == ["1"]
    saved_model.export_saved_model(model, OPTIONS, str(tmp_path), overwrite=True)
    assert "user_file" not in os.listdir(version)
    assert (version / "saved_model.pb").is_file()
    assert sorted(os.listdir(tmp_path)) == ["1"]  # staging and old copy gone


@tf.keras.utils.register_keras_serializable(package="test_saved_model")
class _EagerOnly(tf.keras.layers.Layer):
    """A layer that runs eagerly but cannot be traced into a graph (it reads
    `.numpy()`), as some hand-written custom layers do."""

    def call(self, inputs):
        return tf.constant(inputs.numpy())

    def compute_output_shape(self, input_shape):
        return input_shape


def test_failed_export_leaves_nothing_and_keeps_the_old_version(tmp_path):
    good = _pixelwise_model(OPTIONS)
    saved_model.export_saved_model(good, OPTIONS, str(tmp_path))
    before = (tmp_path / "1" / "saved_model.pb").read_bytes()
    inputs = tf.keras.Input((65, 65, 3))
    untraceable = tf.keras.Model(inputs, _EagerOnly()(good(inputs)))
    assert untraceable(tf.zeros([1, 65, 65, 3])).shape == (1, 65, 65, 7)  # eagerly
    for version, overwrite in ((2, False), (1, True)):
        with pytest.raises(AttributeError, match="numpy"):
            saved_model.export_saved_model(
                untraceable,
                OPTIONS,
                str(tmp_path),
                model_version=version,
                overwrite=overwrite,
            )
        assert sorted(os.listdir(tmp_path)) == ["1"], version
    assert (tmp_path / "1" / "saved_model.pb").read_bytes() == before


def test_model_must_fit_the_options(tmp_path):
    with pytest.raises(ValueError, match="num_classes=5"):
        saved_model.export_saved_model(
            _pixelwise_model(OPTIONS),
            dataclasses.replace(OPTIONS, num_classes=5),
            str(tmp_path),
        )
    with pytest.raises(ValueError, match="crop_size"):
        saved_model.export_saved_model(
            _pixelwise_model(OPTIONS),
            dataclasses.replace(OPTIONS, crop_size=(33, 33)),
            str(tmp_path),
        )
    assert os.listdir(tmp_path) == []


def test_program_bad_checkpoint_path(tmp_path):
    missing = tmp_path / "no_such_logdir"
    proc = _export_program(
        f"--checkpoint_path={missing}",
        f"--export_path={tmp_path / 'export'}",
        *MODEL_FLAGS,
    )
    assert proc.returncode == 1
    assert f"error: --checkpoint_path='{missing}': no checkpoint there" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "export").exists()


def _solid_png(height, width):
    """A black RGB PNG, written row by row: a few hundred KB, never in memory."""
    import struct  # pylint: disable=g-import-not-at-top
    import zlib  # pylint: disable=g-import-not-at-top

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    data = b"".join(compressor.compress(row) for _ in range(height))
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_over_budget_image_is_refused_before_decoding(exported, fresh):
    # The fresh process's 5000x5000 PNG (see `_fresh`).
    assert (fresh["root"] / "big.png").stat().st_size < 200_000
    report = fresh["budget"]
    assert report["error"] and "more than 16777216 pixels" in report["error"]
    assert "--max_image_pixels" in report["error"]
    assert report["growth_mb"] < 40, report
    options = json.loads((exported["dir"] / saved_model.EXTRA_DIR / saved_model.OPTIONS_FILE).read_text())
    assert options["max_image_pixels"] == saved_model.DEFAULT_MAX_IMAGE_PIXELS


def test_export_cleans_killed_exports_staging_and_is_readable(tmp_path):
    # A killed export's staging folders (its process gone) are removed by the
    # next export into the same place; a live process's are kept.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = __import__("socket").gethostname()
    left = tmp_path / f".1.tmp-{dead.pid}@{host}-abcdefgh"
    replaced = tmp_path / f".2.replaced-{dead.pid}@{host}-abcdefgh"
    live = tmp_path / f".1.tmp-{os.getppid()}@{host}-abcdefgh"
    for folder in (left, replaced, live):
        (folder / "variables").mkdir(parents=True)
    model = _pixelwise_model(OPTIONS)
    path = pathlib.Path(saved_model.export_saved_model(model, OPTIONS, str(tmp_path)))
    assert not left.exists() and not replaced.exists()
    assert live.exists()
    # The version folder is as readable as its files (it was 0700).
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (path / "saved_model.pb").stat().st_mode & 0o777 == 0o666 & ~umask

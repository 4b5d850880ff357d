"""The speed levers give the same results: XLA, mixed precision, float32
math, threads.

XLA-compiling a whole MobileNet-v2 training step takes 30-60 s here, so the
training-step tests use `small_deeplab`, a DeepLab of the real layers (split
separable atrous conv, pyramid pooling and 1x1 branches of a Dense
Prediction Cell, align-corners resizes, DeepLab's loss) on a short strided
stem; hard example mining under XLA is checked on the loss and its
gradient; inference and the bfloat16 forward use MobileNet-v2 (alpha 0.35)
with the published cell.
"""

import json
import os
import subprocess
import sys
import textwrap

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.data import synthetic
from deeplab_dpc.evaluation import inference
from deeplab_dpc.flags import speed_flags
from deeplab_dpc.layers import dense_prediction_cell
from deeplab_dpc.layers import resize
from deeplab_dpc.models import deeplab
from deeplab_dpc.training import initial_checkpoint
from deeplab_dpc.training import losses
from deeplab_dpc.training import speed
from deeplab_dpc.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOW = ("bfloat16", "float16")
CROP = (33, 33)
SMALL_CELL = cell_spec.CellSpec(
    branches=(
        cell_spec.BranchSpec(input=-1, op=cell_spec.OP_SEP3X3, rate=(1, 6)),
        cell_spec.BranchSpec(input=0, op=cell_spec.OP_POOL, grid=(2, 2)),
        cell_spec.BranchSpec(input=-1, op=cell_spec.OP_CONV1X1),
    )
)


def small_deeplab(options):
    """A DeepLab-like model with a 4-conv stem (stride 16), dropout off.

    Dropout is off because XLA draws other random numbers than TensorFlow's
    kernels for the same seed.
    """
    inputs = tf.keras.Input((*options.crop_size, 3))
    x = tf.keras.layers.Rescaling(2.0 / 255.0, offset=-1.0, name="scale")(inputs)
    for i in range(4):
        x = tf.keras.layers.Conv2D(
            16, 3, strides=2, padding="same", use_bias=False, name=f"stem{i}"
        )(x)
        x = tf.keras.layers.BatchNormalization(name=f"stem{i}_bn")(x)
        x = tf.keras.layers.ReLU(name=f"stem{i}_relu")(x)
    x = dense_prediction_cell.DensePredictionCell(
        SMALL_CELL,
        crop_size=options.crop_size,
        output_stride=16,
        filters=16,
        dropout_rate=0.0,
        weight_decay=options.weight_decay,
        name=deeplab.DPC_LAYER,
    )(x)
    x = deeplab.build_logits(options)(x)
    x = resize.ResizeBilinear(options.crop_size, name=deeplab.UPSAMPLE_LAYER)(x)
    return tf.keras.Model(inputs, x, name="small_deeplab")


def _mobilenet_options():
    return deeplab.ModelOptions(
        num_classes=synthetic.NUM_CLASSES,
        crop_size=CROP,
        depth_multiplier=0.35,
        dense_prediction_cell=cell_spec.published_cell(),
    )


def _separated(model):
    """Spreads the logits of an untrained model over the classes.

    Untrained, the backbone's activations shrink layer by layer (batch norm
    with its initial statistics) until the logits are their bias; a large
    random logits kernel and no bias make them depend on the image.
    """
    kernel, bias = model.get_layer(deeplab.LOGITS_LAYER).variables
    kernel.assign(tf.random.normal(kernel.shape, seed=3) * 1e11)
    bias.assign(tf.zeros(bias.shape))
    return model


@pytest.fixture(scope="module")
def data_dir(synthetic_data):
    return synthetic_data(num_train=4, num_val=1, height=33, width=33)


def _train_options(data_dir, **overrides):
    """Two steps of batch 4, batch norm frozen (replicas then agree)."""
    values = dict(
        train_batch_size=4,
        training_number_of_steps=2,
        fine_tune_batch_norm=False,
        base_learning_rate=0.01,
        dataset_dir=data_dir,
        ignore_label=synthetic.IGNORE_LABEL,
        log_steps=1,
        seed=1,
        min_scale_factor=1.0,
        max_scale_factor=1.0,
        scale_factor_step_size=0.0,
    )
    values.update(overrides)
    return trainer.TrainOptions(**values)


def _small_options():
    return deeplab.ModelOptions(num_classes=synthetic.NUM_CLASSES, crop_size=CROP)


def _run(data_dir, logdir, **overrides):
    return trainer.run(
        _small_options(),
        _train_options(data_dir, **overrides),
        logdir,
        model_fn=small_deeplab,
    )


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The float32 graph (no XLA) run every lever is compared with."""
    return _run(data_dir, str(tmp_path_factory.mktemp("reference")))


def test_loss_and_its_gradient_with_mining_compile_and_match():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 9, 9, 5)), tf.float32)
    labels = rng.integers(0, 5, size=(2, 9, 9, 1)).astype(np.int32)
    labels[0, :3] = 255
    labels = tf.constant(labels)

    def loss_and_gradient(fraction):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss_sum, count = losses.pixel_loss_sum(
                logits, labels, ignore_label=255, top_k_fraction_value=fraction
            )
        return loss_sum, count, tape.gradient(loss_sum, logits)

    compiled = tf.function(loss_and_gradient, jit_compile=True)
    for fraction in (1.0, 0.3):
        expected = loss_and_gradient(tf.constant(fraction))
        got = compiled(tf.constant(fraction))
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
    # Mined: k = int(0.3 * 162) = 48 losses kept (none zero), and only their
    # pixels get a gradient.
    _, count, gradient = compiled(tf.constant(0.3))
    assert float(count) == 48.0
    assert np.count_nonzero(np.abs(gradient.numpy()).sum(-1)) == 48


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    from deeplab_dpc.training import speed
    threads = speed.set_threads(2, 1)
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[3])
    import test_speed_levers as t

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = t.trainer.run(
        t._small_options(), t._train_options(sys.argv[1], jit_compile=True),
        sys.argv[2], strategy, model_fn=t.small_deeplab)
    print("RESULT " + json.dumps(
        {"threads": threads, "losses": results["losses"],
         "replicas": strategy.num_replicas_in_sync}))
    """)


def test_jit_training_step_matches_the_graph_step(data_dir, tmp_path, reference):
    jit = _run(data_dir, str(tmp_path / "jit"), jit_compile=True)
    assert len(jit["losses"]) == 2
    np.testing.assert_allclose(jit["losses"], reference["losses"], rtol=1e-4)


def _run_script(script, data_dir, logdir, env):
    """Runs a test script in a fresh process; the dict of its RESULT line.

    The script gets the data set, its log directory and this folder (to
    import this module) as arguments.
    """
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            data_dir,
            logdir,
            os.path.dirname(os.path.abspath(__file__)),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def test_jit_under_mirrored_strategy_matches_and_threads_apply(
    data_dir, tmp_path, reference, program_env
):
    # Two logical CPUs, one XLA function per replica; batch norm is frozen,
    # so the replicas' halves give the global batch's loss. The thread pools
    # are set before TensorFlow starts, as the programs do.
    out = _run_script(
        _MIRRORED_SCRIPT, data_dir, str(tmp_path / "mirrored"), program_env
    )
    assert out["threads"] == [2, 1] and out["replicas"] == 2
    np.testing.assert_allclose(out["losses"], reference["losses"], rtol=1e-4)


_FLOAT32_MATH_SCRIPT = textwrap.dedent("""
    import json, sys
    from deeplab_dpc.training import speed
    threads = speed.set_threads(2, 1)
    in_effect = speed.set_float32_math("bfloat16")
    sys.path.insert(0, sys.argv[3])
    import test_speed_levers as t

    results = t._run(sys.argv[1], sys.argv[2])
    try:
        speed.set_float32_math("float32")
        error = ""
    except RuntimeError as e:
        error = str(e)
    print("RESULT " + json.dumps(
        {"in_effect": in_effect, "losses": results["losses"], "error": error}))
    """)


def test_float32_math_bfloat16_training_matches_float32(
    data_dir, tmp_path, reference, program_env
):
    # A process of its own: TensorFlow reads the mode once, at its first
    # oneDNN op.
    out = _run_script(
        _FLOAT32_MATH_SCRIPT, data_dir, str(tmp_path / "bf16_math"), program_env
    )
    assert len(out["losses"]) == 2
    np.testing.assert_allclose(out["losses"], reference["losses"], rtol=0.02)
    if speed.bfloat16_math_possible():
        # The convolutions did round their inputs: not the float32 losses.
        assert out["in_effect"] == "bfloat16"
        assert out["losses"] != reference["losses"]
        # Once read, the mode cannot go back to exact float32: a clear error.
        assert "TF_SET_ONEDNN_FPMATH_MODE=BF16" in out["error"]
    else:
        assert out["in_effect"] == "float32" and not out["error"]


def test_float32_math_in_this_process_is_exact(monkeypatch):
    monkeypatch.delenv(speed.ONEDNN_FPMATH_ENV, raising=False)
    try:
        assert speed.set_float32_math("float32") == "float32"
        assert speed.float32_math_in_effect() == "float32"
        # TensorFlow has run oneDNN ops here: asking for bfloat16 now is
        # logged and changes nothing.
        assert speed.set_float32_math("bfloat16") == "float32"
        assert os.environ[speed.ONEDNN_FPMATH_ENV] == "BF16"
    finally:
        os.environ.pop(speed.ONEDNN_FPMATH_ENV, None)


def test_jit_inference_matches_the_graph_predictor():
    model = _separated(deeplab.build_deeplab(_mobilenet_options()))
    images = tf.random.uniform([2, *CROP, 3], 0, 255, seed=1)
    expected = tf.function(model)(images).numpy()
    got = tf.function(model, jit_compile=True)(images).numpy()
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)
    predictor = inference.Predictor(model, _mobilenet_options(), jit_compile=True)
    predictions = predictor.predictions_function()(images).numpy()
    assert np.mean(predictions == expected.argmax(-1)) >= 0.999
    assert len(np.unique(predictions)) > 1


def test_folded_batch_norm_predictor_matches_the_model():
    model = deeplab.build_deeplab(_mobilenet_options())
    rng = np.random.default_rng(0)
    # Batch-norm scales away from their initial identity map. (Shifts would
    # swamp this untrained model's vanishing activations; tests/layers/
    # test_folding.py folds those.)
    for layer in model._flatten_layers():
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            for variable in (layer.gamma, layer.moving_variance):
                variable.assign(rng.uniform(0.5, 1.5, variable.shape))
    _separated(model)
    images = tf.random.uniform([2, *CROP, 3], 0, 255, seed=1)
    plain = inference.Predictor(model, _mobilenet_options(), (1.0, 1.5), True)
    folded = inference.Predictor(
        model, _mobilenet_options(), (1.0, 1.5), True, fold_batch_norm=True
    )
    expected = plain.probabilities(images).numpy()
    got = folded.predictions_function()(images).numpy()
    np.testing.assert_allclose(folded.probabilities(images), expected, atol=2e-4)
    assert np.mean(got == expected.argmax(-1)) >= 0.999
    assert len(np.unique(got)) > 1
    for _, scaled in folded.models:
        assert not any(
            isinstance(layer, tf.keras.layers.BatchNormalization)
            for layer in scaled._flatten_layers()
        )
    assert any(
        isinstance(layer, tf.keras.layers.BatchNormalization)
        for layer in model._flatten_layers()
    )


def test_bfloat16_forward_is_close_to_float32():
    options = _mobilenet_options()
    reference = _separated(deeplab.build_deeplab(options))
    with speed.dtype_policy("bfloat16"):
        model = deeplab.build_deeplab(options)
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    assert model.get_layer("block_1_expand").compute_dtype == "bfloat16"
    floats = [v for v in model.weights if tf.as_dtype(v.dtype).is_floating]
    assert floats and all(v.dtype == "float32" for v in floats)
    model.set_weights(reference.get_weights())
    images = tf.random.uniform([2, *CROP, 3], 0, 255, seed=1)
    expected = reference(images).numpy()
    got = model(images)
    # Logits float32; bfloat16 keeps 8 bits of mantissa: within 5% of the
    # logits' range, and at least 95% of the pixels keep their class.
    assert got.dtype == tf.float32
    got = got.numpy()
    assert np.max(np.abs(got - expected)) <= 0.05 * np.max(np.abs(expected))
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) >= 0.95


def test_mixed_precision_training_matches_float32(data_dir, tmp_path, reference):
    runs = {p: _run(data_dir, str(tmp_path / p), mixed_precision=p) for p in LOW}
    for precision, results in runs.items():
        assert len(results["losses"]) == 2
        assert np.all(np.isfinite(results["losses"])), precision
        np.testing.assert_allclose(
            results["losses"], reference["losses"], rtol=0.02, err_msg=precision
        )
    # float16 scales the loss (the LossScaleOptimizer's scale is saved).
    reader = tf.train.load_checkpoint(runs["float16"]["checkpoint"])
    assert any("dynamic_scale" in n for n in reader.get_variable_to_shape_map())
    # The float32 weights of a bfloat16 run load under either policy.
    for precision in ("none", "bfloat16"):
        with speed.dtype_policy(precision):
            model = small_deeplab(_small_options())
        initial = initial_checkpoint.restore_initial_checkpoint(
            model, runs["bfloat16"]["checkpoint"]
        )
        assert initial["restored"] and not initial["missing"]
        assert not initial["unused"]


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="mixed_precision must be one of.*float8"):
        trainer.TrainOptions(mixed_precision="float8")
    with pytest.raises(ValueError, match="mixed_precision.*float8"):
        inference.load_model(
            _mobilenet_options(), str(tmp_path), mixed_precision="float8"
        )
    with pytest.raises(flags.IllegalFlagValueError, match="float8"):
        flags.FLAGS[speed_flags.MIXED_PRECISION.name].parse("float8")
    with pytest.raises(ValueError, match="float32_math must be one of.*float64"):
        speed.set_float32_math("float64")
    with pytest.raises(flags.IllegalFlagValueError, match="float64"):
        flags.FLAGS[speed_flags.FLOAT32_MATH.name].parse("float64")
    with pytest.raises(flags.IllegalFlagValueError, match="-1"):
        flags.FLAGS[speed_flags.INTRA_OP_PARALLELISM_THREADS.name].parse("-1")
    with pytest.raises(ValueError, match="--inter_op_parallelism_threads must be >= 0"):
        speed.set_threads(0, -2)
    # TensorFlow runs in this process: its pools cannot change any more.
    current = tf.config.threading.get_intra_op_parallelism_threads()
    with pytest.raises(RuntimeError, match="--intra_op_parallelism_threads=.*before"):
        speed.set_threads(current + 3, 0)

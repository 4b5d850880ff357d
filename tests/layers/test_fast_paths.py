"""Tests for deeplab_dpc.layers.fast_paths: probes, and each path's fallback.

`make test` runs this file with oneDNN on and with it off (the second pass
flips `TF_ENABLE_ONEDNN_OPTS`), and under Keras 3 and tf_keras: the fast
route and the forced portable one (`fast_paths.portable()`) give the same
values and gradients wherever the fast one is taken.
"""

import contextlib
import json
import platform
import sys
import textwrap

import layer_testing
import model_testing
import numpy as np
import program_testing
import pytest
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.layers import dense_prediction_cell
from deeplab_dpc.layers import dilated_depthwise
from deeplab_dpc.layers import fast_dropout
from deeplab_dpc.layers import fast_paths
from deeplab_dpc.layers import fused_batch_norm
from deeplab_dpc.layers import resize
from deeplab_dpc.models import deeplab
from deeplab_dpc.training import losses

TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}

# Every atrous rate a model of this package meets: the search space's rates
# times DeepLab's rate multiplier at output strides 32, 16 (x1) and 8 (x2),
# and the backbones' own dilations past the output stride (2 and 4).
RATES = sorted(
    {
        r * dense_prediction_cell.rate_multiplier(os_)
        for r in cell_spec.RATES
        for os_ in (8, 16, 32)
    }
    | {2, 4}
)


def _values_and_gradients(fn, inputs, variables):
    """fn's output and the gradients of a fixed random projection of it."""
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = fn(inputs)
        weights = tf.random.stateless_normal(tf.shape(y), [7, 7], dtype=y.dtype)
        objective = tf.reduce_sum(tf.cast(y * weights, tf.float32))
    grads = tape.gradient(objective, [inputs, *variables])
    return [y, *[g for g in grads if g is not None]]


def _assert_same(fast, slow):
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(
            tf.convert_to_tensor(a).numpy(),
            tf.convert_to_tensor(b).numpy(),
            **TOLERANCE,
        )


def _fast_and_portable(fn, inputs, variables, *paths):
    fast = _values_and_gradients(fn, inputs, variables)
    with fast_paths.portable(*paths):
        slow = _values_and_gradients(fn, inputs, variables)
    return fast, slow


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("training", [True, False])
def test_atrous_depthwise_fast_and_portable_routes_agree(rate, training):
    layer = dilated_depthwise.depthwise_class()(
        3, padding="same", dilation_rate=(rate, max(1, rate // 2)), use_bias=True
    )
    shape = (2, 15, 13, 4)
    layer.build(shape)
    rng = np.random.default_rng(rate)
    layer.set_weights(
        [rng.normal(size=w.shape).astype(np.float32) for w in layer.weights]
    )
    x = tf.constant(rng.normal(size=shape), tf.float32)
    for traced in (False, True):
        fn = lambda t: layer(t, training=training)  # noqa: E731
        if traced:
            fn = tf.function(fn)
        _assert_same(
            *_fast_and_portable(
                fn, x, layer.trainable_weights, fast_paths.NATIVE_DILATED_DEPTHWISE
            )
        )
    with fast_paths.portable():
        ops = layer_testing.gradient_op_types(lambda t: layer(t, training=training), x)
    # The forced fallback never runs the native dilated kernel.
    assert "IdentityN" not in ops


@pytest.mark.parametrize("factors", [(2, 2), (4, 4), (8, 8), (16, 16), (2, 3)])
def test_upsampling_gradient_fast_and_portable_routes_agree(factors):
    in_size = (3, 4)
    out_size = tuple((n - 1) * f + 1 for n, f in zip(in_size, factors))
    x = tf.constant(np.random.default_rng(0).normal(size=(2, *in_size, 3)), tf.float32)

    def fn(t):
        return resize.resize_bilinear(t, out_size, strided_gradient=True)

    _assert_same(*_fast_and_portable(fn, x, [], fast_paths.STRIDED_UPSAMPLING_GRADIENT))
    with fast_paths.portable(fast_paths.STRIDED_UPSAMPLING_GRADIENT):
        ops = layer_testing.gradient_op_types(fn, x)
    assert "ResizeBilinearGrad" in ops and "DepthwiseConv2dNative" not in ops
    taken = fast_paths.available(fast_paths.STRIDED_UPSAMPLING_GRADIENT, factors)
    assert ("ResizeBilinearGrad" not in layer_testing.gradient_op_types(fn, x)) == bool(
        taken
    )


def test_fused_batch_norm_fast_and_portable_routes_agree():
    layer = fused_batch_norm.batch_norm_class()(momentum=0.5, epsilon=1e-5)
    shape = (2, 5, 5, 4)
    layer.build(shape)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(2.0, 3.0, size=shape), tf.float32)
    results = []
    for paths in ((), (fast_paths.FUSED_BATCH_NORM,)):
        layer.moving_mean.assign(tf.zeros([4]))
        layer.moving_variance.assign(tf.ones([4]))
        with fast_paths.portable(*paths) if paths else contextlib.nullcontext():
            got = _values_and_gradients(
                lambda t: layer(t, training=True), x, layer.trainable_weights
            )
        # The moving statistics too.
        results.append([*got, layer.moving_mean.numpy(), layer.moving_variance.numpy()])
    _assert_same(*results)


def test_fast_dropout_fallback_is_keras_dropout():
    if dilated_depthwise.IS_TF_KERAS:
        # tf_keras' own layer (stateful draws, no fast path).
        assert fast_dropout.dropout_class() is tf.keras.layers.Dropout
        return
    x = tf.ones([2, 5, 5, 8])
    with fast_paths.portable(fast_paths.FAST_DROPOUT):
        got = fast_dropout.dropout_class()(0.1, seed=3)(x, training=True)
    expected = tf.keras.layers.Dropout(0.1, seed=3)(x, training=True)
    # The same seed, the same draw: Keras' own call.
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_xla_cross_entropy_fast_and_portable_routes_agree():
    rng = np.random.default_rng(2)
    logits = tf.constant(rng.normal(size=(50, 7)), tf.float32)
    labels = tf.constant(rng.integers(0, 7, size=50), tf.int32)
    fn = lambda t: losses.softmax_cross_entropy(t, labels)  # noqa: E731
    _assert_same(*_fast_and_portable(fn, logits, [], fast_paths.XLA))


def _well_conditioned(model):
    """No dropout, batch norms on their moving statistics, in training too.

    The dropouts draw different masks by route
    (`test_fast_dropout_fallback_is_keras_dropout` covers that path). Batch
    statistics of 2 images on 3x3 maps, at random initialisation, make the
    gradients chaotic: the last-bit difference of two float32 formulations
    grows to 1e-2 through the network. Frozen batch norms take the moving
    statistics; the fused kernel's own parity, moving statistics included,
    is `test_fused_batch_norm_fast_and_portable_routes_agree`.
    """
    for layer in model._flatten_layers():
        if isinstance(layer, tf.keras.layers.Dropout):
            layer.rate = 0.0
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.trainable = False


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_whole_model_fast_and_portable_routes_agree(output_stride):
    crop = 2 * output_stride + 1 if output_stride > 8 else 4 * output_stride + 1
    options = model_testing.options(
        crop_size=(crop, crop),
        output_stride=output_stride,
        dense_prediction_cell=model_testing.PUBLISHED,
        decoder_output_stride=4,
    )
    model = deeplab.build_deeplab(options)
    _well_conditioned(model)
    image = tf.constant(
        np.random.default_rng(output_stride).uniform(0, 255, size=(2, crop, crop, 3)),
        tf.float32,
    )
    for training in (True, False):
        weights = model.get_weights()
        fast = _values_and_gradients(
            lambda t: model(t, training=training), image, model.trainable_weights
        )
        model.set_weights(weights)  # Training moves the batch norms' statistics.
        with fast_paths.portable():
            slow = _values_and_gradients(
                lambda t: model(t, training=training), image, model.trainable_weights
            )
        model.set_weights(weights)
        _assert_same(fast, slow)


def test_portable_block_and_environment_turn_every_path_off(monkeypatch):
    with fast_paths.portable():
        for path in fast_paths.PATHS:
            decision = fast_paths.available(path)
            assert not decision and "portable" in decision.reason
    with fast_paths.portable(fast_paths.XLA):
        assert not fast_paths.available(fast_paths.XLA)
        assert fast_paths.available(fast_paths.FAST_DROPOUT)
    monkeypatch.setenv(fast_paths.ENV, "off")
    assert not fast_paths.available(fast_paths.FUSED_BATCH_NORM, "float32")
    monkeypatch.setenv(fast_paths.ENV, "sometimes")
    with pytest.raises(ValueError, match="DEEPLAB_DPC_FAST_PATHS"):
        fast_paths.available(fast_paths.FAST_DROPOUT)
    with pytest.raises(ValueError, match="unknown fast path"):
        fast_paths.available("warp_drive")


_PROBE_SCRIPT = textwrap.dedent("""
    import json, logging
    import tensorflow as tf
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.INFO)
    from deeplab_dpc.layers import fast_paths as f
    from deeplab_dpc.layers import resize  # registers its probe  # noqa: F401

    def runs(fn):
        try:
            fn()
            return True
        except tf.errors.OpError:
            return False

    x = tf.ones([1, 9, 9, 2]); k = tf.ones([3, 3, 2, 1])
    raw = {
        "dilated": runs(lambda: tf.raw_ops.DepthwiseConv2dNative(
            input=x, filter=k, strides=[1, 1, 1, 1], padding="SAME",
            dilations=[1, 2, 2, 1])),
        "unequal_strides": runs(lambda: tf.raw_ops.DepthwiseConv2dNative(
            input=x, filter=k, strides=[1, 2, 3, 1], padding="SAME")),
    }
    got = {
        "onednn": f.onednn_enabled(),
        "native": bool(f.available(f.NATIVE_DILATED_DEPTHWISE)),
        "native_again": bool(f.available(f.NATIVE_DILATED_DEPTHWISE)),
        "strided_equal": bool(f.available(f.STRIDED_UPSAMPLING_GRADIENT, (4, 4))),
        "strided_unequal": bool(f.available(f.STRIDED_UPSAMPLING_GRADIENT, (2, 3))),
        "fused_float32": bool(f.available(f.FUSED_BATCH_NORM, "float32")),
        "fast_dropout": bool(f.available(f.FAST_DROPOUT)),
        "xla": bool(f.available(f.XLA)),
        "raw": raw,
    }
    print("RESULT " + json.dumps(got))
    """)


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_probe_decides_by_the_kernels_of_the_process(onednn):
    env = program_testing.environment(TF_ENABLE_ONEDNN_OPTS=onednn)
    env.pop(fast_paths.ENV, None)
    proc = program_testing.run([sys.executable, "-c", _PROBE_SCRIPT], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    got = json.loads(line[len("RESULT ") :])
    # The decision follows what the kernel of this process does.
    assert got["native"] == got["raw"]["dilated"] == got["native_again"]
    assert got["strided_unequal"] == got["raw"]["unequal_strides"]
    assert got["strided_equal"] and got["fused_float32"] and got["fast_dropout"]
    assert got["xla"]
    if onednn == "0":
        # TensorFlow's own kernels: no dilations, no unequal strides.
        assert not got["onednn"] and not got["native"]
        assert not got["strided_unequal"]
        assert "Using tf.nn.depthwise_conv2d" in proc.stderr
    elif platform.machine() in ("x86_64", "AMD64"):
        assert got["onednn"] and got["native"] and got["strided_unequal"]
    # Logged once a decision, however often asked.
    assert proc.stderr.count("Fast path native_dilated_depthwise:") == 1


def test_describe_names_decisions_and_routes():
    fast_paths.clear()
    options = model_testing.options(
        crop_size=(33, 33), dense_prediction_cell=model_testing.PUBLISHED
    )
    model = deeplab.build_deeplab(options)
    model(tf.zeros([1, 33, 33, 3]), training=True)
    lines = fast_paths.describe()
    assert lines[0].startswith("oneDNN: ")
    text = "\n".join(lines)
    if dilated_depthwise.IS_TF_KERAS:
        return  # tf_keras' own layers take no fast path.
    assert "native_dilated_depthwise" in text and "layer(s) on the fast path" in text
    routes = fast_paths.taken()
    native = bool(fast_paths.available(fast_paths.NATIVE_DILATED_DEPTHWISE))
    atrous = [
        route
        for (_, path), route in routes.items()
        if path == fast_paths.NATIVE_DILATED_DEPTHWISE
    ]
    assert atrous and set(atrous) == {"fast" if native else "portable"}

"""Tests for deeplab_dpc.layers.dilated_depthwise."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
import model_testing
from deeplab_dpc.export import litert_runner
from deeplab_dpc.export import tflite
from deeplab_dpc.layers import dilated_depthwise
from deeplab_dpc.layers import fast_paths
from deeplab_dpc.models import deeplab

SHAPE = (2, 17, 15, 6)
# Whether this process's kernels take dilations (oneDNN on: yes; oneDNN off,
# as on AMD and ARM CPUs, and GPUs: no). `make test` runs this file both ways.
NATIVE = bool(fast_paths.available(fast_paths.NATIVE_DILATED_DEPTHWISE))
needs_native = pytest.mark.skipif(
    not NATIVE, reason="this process's DepthwiseConv2dNative takes no dilations"
)


@needs_native
@pytest.mark.parametrize("rate", [(2, 2), (1, 6), (6, 3), (3, 1)])
def test_native_route_matches_tensorflows(rate):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=SHAPE), tf.float32)
    kernel = tf.constant(rng.normal(size=(3, 3, SHAPE[-1], 1)), tf.float32)
    upstream = tf.constant(rng.normal(size=SHAPE), tf.float32)

    def value_and_gradients(fn):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = fn(x, kernel)
        return [y, *tape.gradient(y, [x, kernel], output_gradients=upstream)]

    got = value_and_gradients(
        lambda a, k: dilated_depthwise.dilated_depthwise_conv2d(a, k, rate)
    )
    expected = value_and_gradients(
        lambda a, k: tf.nn.depthwise_conv2d(a, k, [1, 1, 1, 1], "SAME", dilations=rate)
    )
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-5)
    # Forward and input gradient skip the SpaceToBatch reshuffle; only the
    # kernel gradient takes it.
    ops = layer_testing.gradient_op_types(
        lambda a, k: dilated_depthwise.dilated_depthwise_conv2d(a, k, rate), x, kernel
    )
    assert "DepthwiseConv2dNativeBackpropInput" not in ops
    assert "BatchToSpaceND" not in ops


def test_even_kernel_or_multiplier_is_refused():
    x = tf.zeros(SHAPE)
    with pytest.raises(ValueError, match="odd kernel and depth multiplier 1"):
        dilated_depthwise.dilated_depthwise_conv2d(x, tf.zeros([2, 2, 6, 1]), (2, 2))
    with pytest.raises(ValueError, match="odd kernel and depth multiplier 1"):
        dilated_depthwise.dilated_depthwise_conv2d(x, tf.zeros([3, 3, 6, 2]), (2, 2))


def _pair(**kwargs):
    """Our layer and Keras' own, with the same random weights."""
    kwargs = {"kernel_size": 3, "padding": "same", **kwargs}
    ours = dilated_depthwise.DilatedDepthwiseConv2D(**kwargs)
    plain = tf.keras.layers.DepthwiseConv2D(**kwargs)
    for layer in (ours, plain):
        layer.build(SHAPE)
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=w.shape).astype(np.float32) for w in plain.weights]
    ours.set_weights(weights)
    plain.set_weights(weights)
    return ours, plain


@pytest.mark.parametrize(
    "kwargs,native",
    [
        ({"dilation_rate": 2}, True),
        ({"dilation_rate": (1, 6), "use_bias": True, "activation": "relu"}, True),
        ({"dilation_rate": 12}, False),  # above NATIVE_MAX_RATE
        ({"dilation_rate": 1}, False),
        ({"dilation_rate": 2, "depth_multiplier": 2}, False),
    ],
)
def test_layer_computes_as_keras_and_takes_the_native_route_where_it_pays(
    kwargs, native
):
    ours, plain = _pair(**kwargs)
    x = tf.constant(np.random.default_rng(2).normal(size=SHAPE), tf.float32)
    results = []
    for layer in (ours, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        grads = tape.gradient(y, [x, *layer.trainable_weights])
        results.append([y, *grads])
    for a, b in zip(*results):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    if dilated_depthwise.IS_TF_KERAS:
        native = False  # tf_keras' own call always
    native = native and NATIVE  # The portable route where the kernel lacks it.
    # Inference (eval, export) takes the same route as training.
    np.testing.assert_allclose(
        ours(x, training=False), plain(x, training=False), rtol=1e-5, atol=1e-5
    )
    for training in (True, False):
        ops = layer_testing.gradient_op_types(lambda t: ours(t, training=training), x)
        keras_route = "BatchToSpaceND" in ops
        assert keras_route != (native or max(ours.dilation_rate) == 1), training
        assert ("IdentityN" in ops) == native, training


def test_exports_trace_the_portable_route_and_convert_to_litert_builtins():
    inputs = tf.keras.Input([*MAP[1:3], 3], batch_size=1)
    x = dilated_depthwise.DilatedDepthwiseConv2D(
        3, padding="same", dilation_rate=2, use_bias=True, activation="relu6"
    )(inputs)
    x = dilated_depthwise.DilatedDepthwiseConv2D(
        3, padding="same", dilation_rate=(3, 2)
    )(x)
    model = tf.keras.Model(inputs, x)
    rng = np.random.default_rng(6)
    model.set_weights(
        [rng.normal(size=w.shape).astype(np.float32) for w in model.weights]
    )
    options = tflite.ConversionOptions(crop_size=MAP[1:3])
    function = tflite.inference_function(
        lambda images: model(images, training=False), options
    )
    graph = function.graph
    # Exports trace in fast_paths.portable(): no dilated DepthwiseConv2dNative
    # (which only oneDNN's kernel runs), whatever machine converts. The
    # converter folds the reshuffles into a dilated DEPTHWISE_CONV_2D.
    assert "SpaceToBatchND" in {op.type for op in graph.get_operations()}
    for op in graph.get_operations():
        if op.type == "DepthwiseConv2dNative":
            assert list(op.get_attr("dilations")) == [1, 1, 1, 1], op.name
    content = tflite.convert(function, tflite.FLOAT32, options)
    ops = litert_runner.model_info(content).ops
    assert "DEPTHWISE_CONV_2D" in ops
    assert not {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND"} & set(ops)
    image = rng.uniform(0, 255, size=(1, *MAP[1:3], 3)).astype(np.float32)
    expected = model(image, training=False).numpy()
    got = litert_runner.Runner(content).run(image)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_config_round_trip():
    layer = dilated_depthwise.DilatedDepthwiseConv2D(
        3, padding="same", dilation_rate=(2, 3)
    )
    layer_testing.check_config_round_trip(layer)


def test_models_use_the_class_of_this_keras():
    options = model_testing.options(
        crop_size=(33, 33), dense_prediction_cell=model_testing.PUBLISHED
    )
    model = deeplab.build_deeplab(options)
    depthwise = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, tf.keras.layers.DepthwiseConv2D)
    ]
    atrous = [l for l in depthwise if max(l.dilation_rate) > 1]
    # MobileNet-v2's rate-2 blocks at output stride 16 and the cell's branches.
    assert any(l.name.startswith("block_16") for l in atrous)
    assert any(l.name == "depthwise" for l in atrous)
    expected = dilated_depthwise.depthwise_class()
    if dilated_depthwise.IS_TF_KERAS:
        # tf_keras' own class: tensorflow-model-optimization recognises it.
        assert expected is tf.keras.layers.DepthwiseConv2D
        assert all(type(l) is expected for l in depthwise)
    else:
        assert expected is dilated_depthwise.DilatedDepthwiseConv2D
        assert all(type(l) is expected for l in atrous)
        # Undilated backbone convs stay Keras' own.
        assert any(type(l) is tf.keras.layers.DepthwiseConv2D for l in depthwise)


MAP = (2, 9, 7, 5)  # The rates below reach the 9 rows and/or 7 columns.


def _kernel(layer):
    """The depthwise kernel variable (tf_keras names it `depthwise_kernel`)."""
    return layer.depthwise_kernel if dilated_depthwise.IS_TF_KERAS else layer.kernel


@pytest.mark.parametrize(
    "rate,kept,left",
    [
        ((21, 21), (1, 1), (1, 1)),  # Both axes: a per-channel scale.
        ((9, 1), (1, 3), (1, 1)),
        ((12, 3), (1, 3), (1, 3)),  # Rows cut; native route for the columns.
        ((8, 7), (3, 1), (8, 1)),  # Columns cut; SpaceToBatch for the rows.
        ((1, 9), (3, 1), (1, 1)),
        ((8, 6), None, None),  # Each rate below its axis: nothing cut.
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_taps_that_read_only_padding_are_cut_with_the_same_results(
    rate, kept, left, training
):
    layer = dilated_depthwise.DilatedDepthwiseConv2D(
        3, padding="same", dilation_rate=rate, use_bias=True, activation="relu"
    )
    layer.build(MAP)
    rng = np.random.default_rng(3)
    layer.set_weights(
        [rng.normal(size=w.shape).astype(np.float32) for w in layer.weights]
    )
    x = tf.constant(rng.normal(size=MAP), tf.float32)
    upstream = tf.constant(rng.normal(size=MAP), tf.float32)

    def reference(t):
        y = tf.nn.depthwise_conv2d(
            t, _kernel(layer), [1, 1, 1, 1], "SAME", dilations=list(rate)
        )
        return tf.nn.relu(y + layer.bias)

    results = []
    for fn in (lambda t: layer(t, training=training), reference):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        grads = tape.gradient(y, [x, *layer.trainable_weights], upstream)
        results.append([y, *grads])
    for got, expected in zip(*results):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    kernel_grad = results[0][2].numpy()
    reach = layer._reach(x)
    if kept is None:
        assert reach is None
        return
    (rows, cols), rate_left = reach
    assert rate_left == left
    assert _kernel(layer).numpy()[rows, cols].shape[:2] == kept
    # The cut taps only ever multiplied padding: no gradient reaches them.
    mask = np.ones(kernel_grad.shape, bool)
    mask[rows, cols] = False
    assert np.all(kernel_grad[mask] == 0) and np.any(kernel_grad[~mask] != 0)
    ops = layer_testing.gradient_op_types(lambda t: layer(t, training=training), x)
    if dilated_depthwise.IS_TF_KERAS:  # tf_keras' own call: the padded route.
        assert "SpaceToBatchND" in ops
        return
    if kept == (1, 1):
        assert not ops & {"DepthwiseConv2dNative", "SpaceToBatchND"}
    if NATIVE and max(left) <= dilated_depthwise.NATIVE_MAX_RATE:
        assert "SpaceToBatchND" not in ops


def test_unknown_map_size_cuts_nothing():
    layer = dilated_depthwise.DilatedDepthwiseConv2D(
        3, padding="same", dilation_rate=21
    )
    layer.build(MAP)
    x = tf.constant(np.random.default_rng(4).normal(size=MAP), tf.float32)
    spec = tf.TensorSpec([None, None, None, MAP[-1]], tf.float32)
    assert layer._reach(tf.keras.Input(batch_shape=spec.shape)) is None
    traced = tf.function(lambda t: layer(t, training=True), input_signature=[spec])
    expected = tf.nn.depthwise_conv2d(
        x, _kernel(layer), [1, 1, 1, 1], "SAME", dilations=[21, 21]
    )
    np.testing.assert_allclose(traced(x), expected, rtol=1e-5, atol=1e-5)


def test_cut_taps_under_mixed_bfloat16():
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        layer = dilated_depthwise.DilatedDepthwiseConv2D(
            3, padding="same", dilation_rate=(12, 3)
        )
        x = tf.constant(np.random.default_rng(5).normal(size=MAP), tf.float32)
        y = layer(x, training=True)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    assert y.dtype == tf.bfloat16 and _kernel(layer).dtype == tf.float32
    rounded = [
        tf.cast(tf.cast(t, tf.bfloat16), tf.float32) for t in (x, _kernel(layer))
    ]
    expected = tf.nn.depthwise_conv2d(*rounded, [1, 1, 1, 1], "SAME", dilations=[12, 3])
    np.testing.assert_allclose(tf.cast(y, tf.float32), expected, rtol=2e-2, atol=2e-2)


def test_all_taps_keeps_the_whole_kernel_for_counting():
    layer = dilated_depthwise.DilatedDepthwiseConv2D(
        3, padding="same", dilation_rate=21
    )
    x = tf.zeros(MAP)
    layer.build(MAP)
    with dilated_depthwise.all_taps():
        assert layer._reach(x) is None
        ops = layer_testing.gradient_op_types(lambda t: layer(t, training=False), x)
    assert "SpaceToBatchND" in ops  # Keras' own atrous call, all 9 taps.
    assert layer._reach(x) is not None  # Restored on leaving.

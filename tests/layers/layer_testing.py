"""Shared constants and helpers of the tests of deeplab_dpc.layers.

Not a test module: the test files import it as `import layer_testing` (the
folder is on `pythonpath` in pytest.ini).
"""

import json
import math

import numpy as np
import tensorflow as tf

from deeplab_dpc.layers import conv_bn

C = 8  # Input channels of the test feature maps.
F = 16  # Filters of the layers under test (DeepLab uses 256).
FEAT = 9  # Feature size: crops are OS * 8 + 1.
BN_SCALE = 1.0 / math.sqrt(1.0 + conv_bn.NORM_EPSILON)  # Fresh BN, inference.
OUTPUT_STRIDES = (8, 16, 32)


def crop(output_stride, feat=FEAT):
    """The crop OS * k + 1 whose feature map is `feat` x `feat`."""
    return (output_stride * (feat - 1) + 1,) * 2


def features(shape=(1, FEAT, FEAT, C), seed=0):
    """A float32 feature map of standard normal values."""
    return tf.constant(np.random.default_rng(seed).normal(size=shape), tf.float32)


def randomize(layer, seed=0):
    """Random kernels and positive 1-D weights (BN gamma/beta/mean/var)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        shape = tuple(w.shape)
        if len(shape) == 1:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.3, shape)
        w.assign(value.astype(np.float32))


def set_ones(layer):
    """All-ones kernels (rank >= 2 weights); batch norm is left fresh."""
    for w in layer.weights:
        if len(w.shape) >= 2:
            w.assign(np.ones(tuple(w.shape), np.float32))


def dumps(config):
    """The config as sorted-key JSON, for equality checks."""
    return json.dumps(config, sort_keys=True)


# ------------------------------------------------------------ serialization


def check_config_round_trip(layer):
    """get_config -> JSON -> from_config -> get_config is JSON-equal, directly
    and through Keras' serialize/deserialize (the registered name)."""
    text = dumps(layer.get_config())
    rebuilt = type(layer).from_config(json.loads(text))
    assert dumps(rebuilt.get_config()) == text
    serialized = tf.keras.layers.serialize(layer)
    again = tf.keras.layers.deserialize(json.loads(json.dumps(serialized)))
    assert type(again) is type(layer)
    assert dumps(again.get_config()) == text


def check_keras_save_load(factory, shapes, tmp_path):
    """A model around `factory()` on inputs of `shapes` (without batch) gives
    the same outputs and layer config after a `.keras` save and load.

    Inputs with 3 channels are images in [0, 255], others are in [0, 1].
    """
    inputs = [tf.keras.Input(s) for s in shapes]
    inputs = inputs if len(inputs) > 1 else inputs[0]
    layer = factory()
    model = tf.keras.Model(inputs, layer(inputs))
    randomize(model, seed=1)
    rng = np.random.default_rng(0)
    xs = [
        rng.uniform(0, 1 if s[-1] != 3 else 255, (2, *s)).astype(np.float32)
        for s in shapes
    ]
    xs = xs if len(xs) > 1 else xs[0]
    expected = model(xs, training=False).numpy()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded(xs, training=False).numpy(), expected, rtol=1e-5, atol=1e-5
    )
    reloaded_layer = loaded.layers[-1]
    assert type(reloaded_layer) is type(layer)
    assert dumps(reloaded_layer.get_config()) == dumps(layer.get_config())


def check_checkpoint_saves_every_weight(layer, tmp_path):
    """`tf.train.Checkpoint` of a built layer holds every one of its weights."""
    path = tf.train.Checkpoint(layer=layer).write(str(tmp_path / "ckpt"))
    saved = [
        name
        for name, _ in tf.train.list_variables(path)
        if name.startswith("layer/") and name.endswith("VARIABLE_VALUE")
    ]
    assert len(saved) == len(layer.weights) > 0


def gradient_op_types(fn, *args):
    """Op types that the traced value and gradients of `fn` depend on.

    Ops traced but feeding no output (TensorFlow prunes them when it runs
    the graph) are left out.
    """

    @tf.function
    def traced(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y = fn(*xs)
        return y, tape.gradient(y, xs, output_gradients=tf.ones_like(y))

    graph = traced.get_concrete_function(*args).graph
    pending = [t.op for t in graph.outputs]
    seen = set()
    while pending:
        op = pending.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        pending += [t.op for t in op.inputs] + list(op.control_inputs)
    return {graph.get_operation_by_name(name).type for name in seen}

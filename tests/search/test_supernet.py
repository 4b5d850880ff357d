"""Tests of deeplab_dpc.search.supernet: a tiny supernet (3 ops, 3 branches, 5x5 features)."""

import dataclasses
import random

import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.models import deeplab
from deeplab_dpc.search import proxy
from deeplab_dpc.search import supernet

OPS = ("conv1x1", "sep3x3@3x1", "pool@2x2")
CHANNELS = 8
LR, MOMENTUM = 0.05, 0.9
STATS = ("moving_mean", "moving_variance")
OPTIONS = deeplab.ModelOptions(
    model_variant="mobilenet_v2",
    num_classes=3,
    crop_size=(65, 65),
    output_stride=16,
    backbone_weights=None,
    weight_decay=4e-5,
    norm_momentum=0.9,
)


def _cell(*branches):
    by_token = dict(zip(OPS, supernet.normalize_ops(OPS)))
    return cell_spec.CellSpec(
        tuple(dataclasses.replace(by_token[t], input=i) for t, i in branches)
    )


# Step A, then step B: B's layers are all distinct from A's but read
# earlier branches too.
CELL_A = _cell(("sep3x3@3x1", -1), ("pool@2x2", 0), ("conv1x1", 0))
CELL_B = _cell(("pool@2x2", -1), ("sep3x3@3x1", 0), ("sep3x3@3x1", 1))


def _random_cells(count, seed):
    rng = random.Random(seed)
    ops = supernet.normalize_ops(OPS)
    cells = []
    while len(cells) < count:
        cell = cell_spec.CellSpec(
            tuple(
                dataclasses.replace(rng.choice(ops), input=rng.randrange(i + 1) - 1)
                for i in range(3)
            )
        )
        if any(b.op == cell_spec.OP_POOL for b in cell) and any(
            b.input >= 0 for b in cell
        ):
            cells.append(cell)
    return cells


def _batch(seed, size=2):
    rng = np.random.default_rng(seed)
    features = tf.constant(rng.normal(size=(size, 5, 5, CHANNELS)), tf.float32)
    labels = rng.integers(0, 3, (size, 65, 65))
    labels[:, :3] = 255  # Some ignored pixels.
    return features, tf.constant(labels, tf.int32)


def _randomize_statistics(net, seed):
    rng = np.random.default_rng(seed)
    for layer in net.all_layers:
        for v in layer.non_trainable_variables:
            if v.name == "moving_mean":
                v.assign(rng.normal(0.0, 0.3, v.shape))
            elif v.name == "moving_variance":
                v.assign(rng.uniform(0.5, 1.5, v.shape))


def _names(net, cell):
    return {layer.name for layer in net.path_layers(cell)}


def _changed(before, after):
    """{layer name: set of weight indices that changed}."""
    out = {}
    for key, value in before.items():
        if not np.array_equal(value, after[key]):
            name, index = key.rsplit(":", 1)
            out.setdefault(name, set()).add(int(index))
    return out


@pytest.fixture(scope="module")
def net():
    net = supernet.Supernet(
        OPTIONS, CHANNELS, num_branches=3, ops=OPS, dropout_rate=0.0, seed=0
    )
    _randomize_statistics(net, 1)
    return net


@pytest.fixture(scope="module")
def steps(net):
    """Step A (checked against Keras' SGD on the stand-alone cell), then step B."""
    features, labels = _batch(2)
    standalone = net.inherit(CELL_A)
    standalone.get_layer(deeplab.DPC_LAYER).dropout.rate = 0.0  # As the supernet's.
    optimizer = tf.keras.optimizers.SGD(learning_rate=LR, momentum=MOMENTUM)
    keras_step = proxy.make_train_step(standalone, optimizer, 255)
    keras_step(iter([(features, labels)]))

    train_step = net.make_train_step(lambda step: LR, MOMENTUM)
    before_a = net.get_weights()
    train_step(features, labels, net.encode(CELL_A))
    after_a = net.get_weights()
    train_step(*_batch(3), net.encode(CELL_B))
    after_b = net.get_weights()
    return standalone, before_a, after_a, after_b


def test_paths_compute_the_standalone_cell(net):
    features, _ = _batch(0, size=3)
    forward = tf.function(
        lambda x, path: net.forward(x, path, training=False),
        input_signature=[
            tf.TensorSpec([None, 5, 5, CHANNELS], tf.float32),
            net.path_spec,
        ],
    )
    for cell in _random_cells(4, seed=0) + [CELL_A, CELL_B]:
        expected = net.inherit(cell)(features, training=False)
        np.testing.assert_allclose(
            forward(features, net.encode(cell)), expected, rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            net.forward(features, net.encode(cell), training=False),
            expected,
            rtol=1e-5,
            atol=1e-6,
        )
    assert forward.experimental_get_tracing_count() == 1


def test_training_step_matches_keras_sgd_on_the_standalone_cell(net, steps):
    standalone, _, after_a, _ = steps
    head = standalone.get_layer(deeplab.DPC_LAYER)
    pairs = list(zip(head.branch_layers, net.path_layers(CELL_A)))
    pairs += [(head.concat_projection, net.projection)]
    pairs += [(standalone.get_layer(deeplab.LOGITS_LAYER), net.logits)]
    for target, source in pairs:
        for j, value in enumerate(target.get_weights()):
            np.testing.assert_allclose(
                after_a[f"{source.name}:{j}"],
                value,
                rtol=1e-4,
                atol=1e-6,
                err_msg=f"{source.name}:{j}",
            )


def test_training_step_changes_only_the_path(net, steps):
    _, before_a, after_a, after_b = steps
    shared = {"concat_projection", "logits"}
    for before, after, cell in ((before_a, after_a, CELL_A), (after_a, after_b, CELL_B)):
        changed = _changed(before, after)
        assert set(changed) == _names(net, cell) | shared
        for name in _names(net, cell) | shared:
            assert changed[name] == set(range(len(net.get_layer(name).weights))), name
    # Step B left step A's layers exactly as they were, momentum and all.
    assert not _names(net, CELL_A) & set(_changed(after_a, after_b))
    assert net.train_traces == 1


def test_recalibration_changes_only_the_statistics(net, steps):
    del steps  # Runs after the training steps (weights no longer initial).
    cell = _cell(("conv1x1", -1), ("pool@2x2", 0), ("sep3x3@3x1", 1))
    first, second = _batch(4, size=3)[0], _batch(5, size=3)[0]
    before = net.get_weights()
    net.recalibrate(cell, tf.stack([first]))
    after = net.get_weights()
    changed = _changed(before, after)
    assert set(changed) == _names(net, cell) | {"concat_projection"}
    for name, indices in changed.items():
        weights = net.get_layer(name).weights
        stats = {j for j, v in enumerate(weights) if v.name in STATS}
        assert indices == stats, name
    # One batch: branch 0's statistics are that batch's.
    branch0 = net.path_layers(cell)[0]
    x = branch0.conv(first)
    mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
    np.testing.assert_allclose(branch0.bn.moving_mean, mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(branch0.bn.moving_variance, variance, rtol=1e-4)
    # Two batches: the bias-corrected moving average (mu b1 + b2) / (1 + mu).
    net.recalibrate(cell, tf.stack([first, second]))
    mu = OPTIONS.norm_momentum
    mean2, _ = tf.nn.moments(branch0.conv(second), axes=[0, 1, 2])
    np.testing.assert_allclose(
        branch0.bn.moving_mean, (mu * mean + mean2) / (1 + mu), rtol=1e-4, atol=1e-6
    )
    # The recalibrated path is still exactly the stand-alone cell.
    np.testing.assert_allclose(
        net.forward(first, net.encode(cell)),
        net.inherit(cell)(first, training=False),
        rtol=1e-5,
        atol=1e-6,
    )


def test_scoring_does_not_retrace_across_cells(net):
    features, labels = _batch(6, size=2)
    for cell in _random_cells(3, seed=1):
        net.recalibrate(cell, tf.stack([features]))
        matrix = net.confusion(cell, features, labels).numpy()
        assert matrix.sum() == np.sum(labels.numpy() != 255)
    assert net.score_traces == 2


def test_encode_rejects_foreign_cells(net):
    with pytest.raises(ValueError, match="not in the supernet's ops"):
        net.encode(cell_spec.published_cell().branches[:3])
    with pytest.raises(ValueError, match="branches"):
        net.encode(CELL_A.branches[:2])

"""Tests for deeplab_dpc.layers.dense_prediction_cell."""

import json
import random

import layer_testing
import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.cells.cell_spec import BranchSpec
from deeplab_dpc.cells.cell_spec import CellSpec
from deeplab_dpc.layers import dense_prediction_cell
from deeplab_dpc.search import space

C, F, FEAT = layer_testing.C, layer_testing.F, layer_testing.FEAT
OUTPUT_STRIDES = layer_testing.OUTPUT_STRIDES
_crop = layer_testing.crop
_features = layer_testing.features
_randomize = layer_testing.randomize
_set_ones = layer_testing.set_ones
_dumps = layer_testing.dumps


_OPS = [
    BranchSpec(input=-1, op=cell_spec.OP_CONV1X1),
    BranchSpec(input=-1, op=cell_spec.OP_SEP3X3, rate=(1, 1)),
    BranchSpec(input=-1, op=cell_spec.OP_SEP3X3, rate=(6, 21)),
    BranchSpec(input=-1, op=cell_spec.OP_SEP3X3, rate=(18, 3)),
    BranchSpec(input=-1, op=cell_spec.OP_POOL, grid=(1, 1)),
    BranchSpec(input=-1, op=cell_spec.OP_POOL, grid=(2, 4)),
    BranchSpec(input=-1, op=cell_spec.OP_POOL, grid=(8, 8)),
]


def _op_id(spec):
    return cell_spec.describe(CellSpec(branches=(spec,))).split(" = ")[1]


def _two_branch_cell(op):
    """The op on F, then the same op on branch 0."""
    return CellSpec(
        branches=(op, BranchSpec(input=0, op=op.op, rate=op.rate, grid=op.grid))
    )


def _dpc(cell, output_stride=16, crop=None, **kwargs):
    return dense_prediction_cell.DensePredictionCell(
        cell,
        crop_size=crop or _crop(output_stride),
        output_stride=output_stride,
        filters=F,
        **kwargs
    )


def _op_params(spec, cin, f=F):
    if spec.op == cell_spec.OP_SEP3X3:
        return 9 * cin + 4 * cin + cin * f + 4 * f
    return cin * f + 4 * f  # conv1x1 and pool (1x1 conv after the pool).


def _dpc_params(cell, c=C, f=F):
    branches = sum(_op_params(b, c if b.input < 0 else f, f) for b in cell)
    return branches + len(cell) * f * f + 4 * f


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
@pytest.mark.parametrize("op", _OPS, ids=_op_id)
def test_dpc_shape(output_stride, op):
    cell = _two_branch_cell(op)
    layer = _dpc(cell, output_stride)
    out = layer(_features((2, FEAT, FEAT, C)))
    assert out.shape == (2, FEAT, FEAT, F)
    assert layer.count_params() == _dpc_params(cell)


def test_dpc_published_cell_shape():
    layer = _dpc(cell_spec.published_cell(), 16)
    assert layer(_features((2, FEAT, FEAT, C))).shape == (2, FEAT, FEAT, F)
    assert len(layer.branch_layers) == 5
    assert layer.compute_output_shape((2, FEAT, FEAT, C)) == (2, FEAT, FEAT, F)


def test_dpc_non_square_shape():
    cell = CellSpec(
        branches=(
            BranchSpec(input=-1, op=cell_spec.OP_POOL, grid=(2, 8)),
            BranchSpec(input=0, op=cell_spec.OP_SEP3X3, rate=(3, 9)),
        )
    )
    layer = _dpc(cell, 8, crop=(65, 129))
    assert layer(_features((1, 9, 17, C))).shape == (1, 9, 17, F)


@pytest.mark.parametrize("seed", range(6))
def test_dpc_param_count_random_cells(seed):
    cell = space.sample_cell(random.Random(seed))
    layer = _dpc(cell, 16)
    layer(_features())
    assert layer.count_params() == _dpc_params(cell)


def test_dpc_param_count_published_cell_at_deeplab_width():
    # Published cell, 320 input channels (MobileNet-v2), 256 filters.
    cell = cell_spec.published_cell()
    layer = dense_prediction_cell.DensePredictionCell(
        cell, crop_size=(65, 65), output_stride=8
    )
    layer(_features((1, 9, 9, 320)))
    expected = (
        (9 * 320 + 4 * 320 + 320 * 256 + 4 * 256)
        + 4 * (9 * 256 + 4 * 256 + 256 * 256 + 4 * 256)
        + 5 * 256 * 256
        + 4 * 256
    )
    assert layer.count_params() == expected == _dpc_params(cell, 320, 256)


def test_dpc_accepts_dicts_and_branch_specs():
    specs = list(cell_spec.published_cell())
    dicts = [
        {"input": b.input, "op": b.op, "rate": list(b.rate), "grid": list(b.grid)}
        for b in specs
    ]
    for branches in (specs, dicts, cell_spec.published_cell()):
        layer = _dpc(branches, 16)
        assert layer.cell == cell_spec.published_cell()


def test_dpc_wrong_feature_size_raises():
    cell = CellSpec(
        branches=(
            BranchSpec(input=-1, op=cell_spec.OP_SEP3X3, rate=(1, 6)),
            BranchSpec(input=0, op=cell_spec.OP_POOL, grid=(2, 2)),
        )
    )
    layer = _dpc(cell, 16, crop=(65, 65))  # Expects 5x5 features.
    with pytest.raises(ValueError, match=r"crop \(65, 65\)"):
        layer(_features((1, 9, 9, C)))
    layer = _dpc(cell, 16, crop=(65, 65))
    with pytest.raises(ValueError, match=r"\(5, 5\) features"):
        layer(tf.keras.Input((9, 9, C)))


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
@pytest.mark.parametrize(
    "shape", [(1, 17, 17, C), (1, 5, 5, C), (1, FEAT, FEAT + 1, C)]
)
def test_dpc_without_pool_branch_wrong_feature_size_raises(output_stride, shape):
    # The published cell has no pooling branch: the size check is the cell's
    # own, not a pyramid pooling branch's.
    cell = cell_spec.published_cell()
    assert all(b.op != cell_spec.OP_POOL for b in cell)
    crop = _crop(output_stride)
    layer = _dpc(cell, output_stride, crop=crop)
    message = r"crop \(%d, %d\) at output stride %d" % (*crop, output_stride)
    with pytest.raises(ValueError, match=message):
        layer(_features(shape))
    with pytest.raises(ValueError, match=message):
        _dpc(cell, output_stride, crop=crop)(tf.keras.Input(shape[1:]))
    # The right size builds.
    assert layer(_features()).shape == (1, FEAT, FEAT, F)


@pytest.mark.parametrize("output_stride,multiplier", [(8, 2), (16, 1), (32, 1)])
def test_dpc_rate_scaling_config(output_stride, multiplier):
    cell = cell_spec.published_cell()
    layer = _dpc(cell, output_stride)
    assert dense_prediction_cell.rate_multiplier(output_stride) == multiplier
    for spec, branch in zip(cell, layer.branch_layers):
        config = branch.get_config()
        assert tuple(config["rate"]) == tuple(r * multiplier for r in spec.rate)
        assert tuple(branch.depthwise.get_config()["dilation_rate"]) == tuple(
            r * multiplier for r in spec.rate
        )


def test_dpc_rate_scaling_by_behaviour():
    # A sep3x3 at JSON rate (1, 3) in a cell at output stride 8 is dilated
    # by (2, 6): an impulse reaches rows c +- 2 and columns c +- 6 only.
    size, centre = 17, 8
    x = np.zeros([1, size, size, 1], np.float32)
    x[0, centre, centre, 0] = 1.0
    cell = CellSpec(
        branches=(BranchSpec(input=-1, op=cell_spec.OP_SEP3X3, rate=(1, 3)),)
    )
    layer = _dpc(cell, 8, crop=(129, 129))
    layer.build(x.shape)
    _set_ones(layer)
    out = layer(tf.constant(x), training=False).numpy()[0, ..., 0]
    expected = np.zeros([size, size], bool)
    for r in (6, 8, 10):
        for c in (2, 8, 14):
            expected[r, c] = True
    np.testing.assert_array_equal(out > 0, expected)


def test_dpc_output_stride_8_equals_doubled_rates_at_16():
    # Same weights: JSON rates r at output stride 8 are rates 2r at 16.
    x = _features((1, 17, 17, C))
    cell8 = CellSpec(
        branches=(
            BranchSpec(input=-1, op=cell_spec.OP_SEP3X3, rate=(3, 6)),
            BranchSpec(input=0, op=cell_spec.OP_SEP3X3, rate=(9, 3)),
        )
    )
    cell16 = CellSpec(
        branches=(
            BranchSpec(input=-1, op=cell_spec.OP_SEP3X3, rate=(6, 12)),
            BranchSpec(input=0, op=cell_spec.OP_SEP3X3, rate=(18, 6)),
        )
    )
    cell16_same = cell8
    at8 = _dpc(cell8, 8, crop=(129, 129))
    at16 = _dpc(cell16, 16, crop=(257, 257))
    at16_same = _dpc(cell16_same, 16, crop=(257, 257))
    for layer in (at8, at16, at16_same):
        layer.build(x.shape)
    _randomize(at8)
    at16.set_weights(at8.get_weights())
    at16_same.set_weights(at8.get_weights())
    out8 = at8(x, training=False).numpy()
    np.testing.assert_allclose(
        at16(x, training=False).numpy(), out8, rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(
        at16_same(x, training=False).numpy(), out8, rtol=1e-3, atol=1e-3
    )


def test_dpc_dropout_only_in_training():
    layer = _dpc(cell_spec.published_cell(), 16, dropout_rate=0.5)
    x = _features((2, FEAT, FEAT, C))
    train1 = layer(x, training=True).numpy()
    train2 = layer(x, training=True).numpy()
    assert not np.allclose(train1, train2)
    infer1 = layer(x, training=False).numpy()
    infer2 = layer(x, training=False).numpy()
    np.testing.assert_array_equal(infer1, infer2)
    np.testing.assert_array_equal(layer(x).numpy(), infer1)


def test_dpc_zero_dropout_training_is_deterministic():
    layer = _dpc(cell_spec.published_cell(), 16, dropout_rate=0.0)
    x = _features((2, FEAT, FEAT, C))
    np.testing.assert_allclose(
        layer(x, training=True).numpy(), layer(x, training=True).numpy(), rtol=1e-6
    )


def test_dpc_branch_inputs_are_wired_as_specified():
    # Branch 1 reads branch 0; replacing branch 0 by a zero map (zero kernel)
    # must zero branch 1 (its op is a 1x1 conv -> BN -> ReLU with beta 0).
    cell = CellSpec(
        branches=(
            BranchSpec(input=-1, op=cell_spec.OP_CONV1X1),
            BranchSpec(input=0, op=cell_spec.OP_CONV1X1),
            BranchSpec(input=-1, op=cell_spec.OP_CONV1X1),
        )
    )
    layer = _dpc(cell, 16)
    x = _features()
    layer(x)
    b0, b1, b2 = layer.branch_layers
    for w in b0.weights:
        if len(w.shape) >= 2:
            w.assign(tf.zeros_like(w))
    x0 = b0(x, training=False)
    np.testing.assert_array_equal(x0.numpy(), 0)
    np.testing.assert_array_equal(b1(x0, training=False).numpy(), 0)
    assert b2(x, training=False).numpy().any()
    assert layer.concat_projection.get_config()["filters"] == F


# ------------------------------------------------------------ serialization


_MIXED = CellSpec(
    branches=(
        BranchSpec(input=-1, op=cell_spec.OP_POOL, grid=(2, 4)),
        BranchSpec(input=0, op=cell_spec.OP_SEP3X3, rate=(3, 9)),
        BranchSpec(input=-1, op=cell_spec.OP_CONV1X1),
        BranchSpec(input=1, op=cell_spec.OP_POOL, grid=(1, 1)),
    )
)

_CASES = [
    pytest.param(
        lambda: dense_prediction_cell.DensePredictionCell(
            cell_spec.published_cell(),
            crop_size=(65, 65),
            output_stride=8,
            filters=F,
            weight_decay=4e-5,
        ),
        [(FEAT, FEAT, C)],
        id="dpc_published",
    ),
    pytest.param(
        lambda: dense_prediction_cell.DensePredictionCell(
            _MIXED,
            crop_size=(129, 129),
            output_stride=16,
            pooling_crop_size=(97, 97),
            filters=F,
            dropout_rate=0.2,
        ),
        [(FEAT, FEAT, C)],
        id="dpc_mixed",
    ),
]


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_config_round_trip(factory, shapes):
    del shapes
    layer_testing.check_config_round_trip(factory())


@pytest.mark.parametrize("factory,shapes", _CASES)
def test_keras_save_load(factory, shapes, tmp_path):
    layer_testing.check_keras_save_load(factory, shapes, tmp_path)


def test_dpc_config_round_trip_published_cell():
    layer = _dpc(cell_spec.published_cell(), 8)
    config = json.loads(_dumps(layer.get_config()))
    rebuilt = dense_prediction_cell.DensePredictionCell.from_config(config)
    assert rebuilt.cell == cell_spec.published_cell()
    assert cell_spec.cell_to_json(rebuilt.cell) == cell_spec.cell_to_json(
        cell_spec.published_cell()
    )
    assert [b.get_config()["rate"] for b in rebuilt.branch_layers] == [
        b.get_config()["rate"] for b in layer.branch_layers
    ]
    assert _dumps(rebuilt.get_config()) == _dumps(layer.get_config())


def test_dpc_rebuilt_from_config_gives_same_outputs():
    cell = space.sample_cell(random.Random(3))
    layer = _dpc(cell, 16)
    x = _features((2, FEAT, FEAT, C))
    layer(x)
    _randomize(layer, seed=2)
    rebuilt = dense_prediction_cell.DensePredictionCell.from_config(
        json.loads(_dumps(layer.get_config()))
    )
    rebuilt(x)
    rebuilt.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        rebuilt(x, training=False).numpy(), layer(x, training=False).numpy(), rtol=1e-6
    )


def test_checkpoint_saves_every_branch_weight(tmp_path):
    cell = cell_spec.CellSpec(
        [
            cell_spec.BranchSpec(input=-1, op="sep3x3", rate=(1, 3)),
            cell_spec.BranchSpec(input=0, op="pool", grid=(2, 2)),
        ]
    )
    layer = _dpc(cell)
    layer(_features())
    layer_testing.check_checkpoint_saves_every_weight(layer, tmp_path)

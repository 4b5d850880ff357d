"""Tests for deeplab_dpc.models.accounting: module keys and totals, MAdds
worked out by hand, and the TensorFlow profiler cross-check."""

import model_testing
import pytest

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.cells.cell_spec import BranchSpec
from deeplab_dpc.cells.cell_spec import CellSpec
from deeplab_dpc.models import accounting
from deeplab_dpc.models import deeplab

C = model_testing.C
C_LOW = model_testing.C_LOW
FILTERS = model_testing.FILTERS
LOW_FILTERS = model_testing.LOW_FILTERS
DPC_DECODER = model_testing.DPC_DECODER
ASPP_DECODER = model_testing.ASPP_DECODER
ASPP_PLAIN = model_testing.ASPP_PLAIN
_options = model_testing.options
_model = model_testing.model
_feature_size = model_testing.feature_size


def _check_totals(counts, model):
    modules = ["backbone", "head", "logits"]
    if "decoder" in counts:
        modules.append("decoder")
    for key in ("params", "madds"):
        assert counts["total"][key] == sum(counts[m][key] for m in modules)
    assert counts["total"]["params"] == model.count_params()


def _decoder_madds(lh, lw):
    cin = FILTERS + LOW_FILTERS
    return (
        lh
        * lw
        * (
            C_LOW * LOW_FILTERS
            + 9 * cin
            + cin * FILTERS
            + 9 * FILTERS
            + FILTERS * FILTERS
        )
    )


def test_count_keys_and_totals_dpc_decoder():
    model = _model(DPC_DECODER)
    counts = accounting.count(model)
    assert list(counts) == [
        "backbone",
        "head",
        "head_branches",
        "decoder",
        "logits",
        "total",
    ]
    _check_totals(counts, model)
    fh, fw = _feature_size((65, 65), 16)
    lh, lw = _feature_size((65, 65), 4)
    nc = DPC_DECODER.num_classes
    # Logits: a 1x1 conv (with bias) at the decoder's output size.
    assert counts["logits"]["madds"] == lh * lw * FILTERS * nc
    assert counts["logits"]["params"] == FILTERS * nc + nc
    assert counts["decoder"]["madds"] == _decoder_madds(lh, lw)
    assert counts["decoder"]["params"] == model.get_layer("decoder").count_params()
    head = model.get_layer(deeplab.DPC_LAYER)
    assert counts["head"]["params"] == head.count_params()
    # Projection over 5 branches: 1x1 conv 1280 -> 256 plus BN.
    assert counts["head"]["params"] - counts["head_branches"]["params"] == (
        5 * FILTERS * FILTERS + 4 * FILTERS
    )
    assert counts["head"]["madds"] - counts["head_branches"]["madds"] == (
        fh * fw * 5 * FILTERS * FILTERS
    )
    # The published cell: five split separable convs, the first on F.
    per_pixel = (9 * C + C * FILTERS) + 4 * (9 * FILTERS + FILTERS * FILTERS)
    assert counts["head_branches"]["madds"] == fh * fw * per_pixel
    for entry in counts.values():
        assert entry["params"] > 0 and entry["madds"] > 0


def test_count_keys_and_totals_aspp_no_decoder():
    model = _model(ASPP_PLAIN)
    counts = accounting.count(model)
    assert list(counts) == ["backbone", "head", "head_branches", "logits", "total"]
    _check_totals(counts, model)
    fh, fw = _feature_size((33, 33), 16)
    nc = ASPP_PLAIN.num_classes
    assert counts["logits"]["madds"] == fh * fw * FILTERS * nc
    # Image pooling (a 1x1 conv on the 1x1 pooled map) and the 1x1 branch.
    assert counts["head_branches"]["madds"] == C * FILTERS + fh * fw * C * FILTERS
    assert counts["head"]["madds"] - counts["head_branches"]["madds"] == (
        fh * fw * 2 * FILTERS * FILTERS
    )


def test_count_same_backbone_for_both_heads():
    a = accounting.count(_model(DPC_DECODER))
    b = accounting.count(_model(ASPP_DECODER))
    assert a["backbone"] == b["backbone"]
    assert a["decoder"] == b["decoder"]
    assert a["logits"] == b["logits"]


@pytest.mark.parametrize(
    "branch,per_pixel",
    [
        (BranchSpec(input=-1, op=cell_spec.OP_CONV1X1), C * FILTERS),
        (
            BranchSpec(input=-1, op=cell_spec.OP_SEP3X3, rate=(6, 21)),
            9 * C + C * FILTERS,
        ),
    ],
    ids=["conv1x1", "sep3x3"],
)
def test_count_single_branch_dpc(branch, per_pixel):
    options = _options(
        crop_size=(65, 65),
        output_stride=8,
        dense_prediction_cell=CellSpec(branches=(branch,)),
        num_classes=4,
    )
    model = _model(options)
    counts = accounting.count(model)
    _check_totals(counts, model)
    fh, fw = _feature_size((65, 65), 8)
    assert counts["head_branches"]["madds"] == fh * fw * per_pixel
    assert counts["head"]["madds"] - counts["head_branches"]["madds"] == (
        fh * fw * FILTERS * FILTERS
    )
    assert counts["logits"]["madds"] == fh * fw * FILTERS * 4


def test_count_single_pool_branch_dpc():
    # Crop 65 at OS 16: 5x5 features, grid 2 -> 3x3 kernel, 3x3 pooled map;
    # the 1x1 conv runs on the pooled map.
    cell = CellSpec(branches=(BranchSpec(input=-1, op=cell_spec.OP_POOL, grid=(2, 2)),))
    model = _model(
        _options(crop_size=(65, 65), output_stride=16, dense_prediction_cell=cell)
    )
    counts = accounting.count(model)
    _check_totals(counts, model)
    assert counts["head_branches"]["madds"] == 3 * 3 * C * FILTERS
    assert counts["head_branches"]["params"] == C * FILTERS + 4 * FILTERS
    assert counts["head"]["madds"] - counts["head_branches"]["madds"] == (
        5 * 5 * FILTERS * FILTERS
    )


def test_count_aspp_empty_rates_no_image_feature():
    options = _options(
        crop_size=(65, 65),
        output_stride=16,
        atrous_rates=(),
        add_image_level_feature=False,
    )
    model = _model(options)
    counts = accounting.count(model)
    _check_totals(counts, model)
    fh, fw = _feature_size((65, 65), 16)
    assert counts["head_branches"]["madds"] == fh * fw * C * FILTERS
    assert counts["head_branches"]["params"] == C * FILTERS + 4 * FILTERS
    assert counts["head"]["madds"] - counts["head_branches"]["madds"] == (
        fh * fw * FILTERS * FILTERS
    )
    assert counts["head"]["params"] == (
        C * FILTERS + 4 * FILTERS + FILTERS * FILTERS + 4 * FILTERS
    )
    assert counts["logits"]["madds"] == fh * fw * FILTERS * options.num_classes


@pytest.mark.parametrize("options", [DPC_DECODER, ASPP_DECODER], ids=["dpc", "aspp"])
def test_count_matches_tensorflow_profiler(options):
    model = _model(options)
    madds = accounting.count(model)["total"]["madds"]
    ratio = accounting.profiler_flops(model) / (2 * madds)
    assert 1.0 <= ratio <= 1.1

"""The demo's DPC-vs-ASPP table."""

from deeplab_dpc import demo


def test_report_compares_dpc_and_aspp_per_backbone():
    rows = demo.compare(["mobilenet_v2"], (33, 65), 16, 19)
    assert [r["head"] for r in rows] == ["DPC (published)", "ASPP 6,12,18"]
    for row in rows:
        assert 0 < row["branch_params"] < row["head_params"] < row["total_params"]
        assert 0 < row["branch_madds"] < row["head_madds"] < row["total_madds"]
    # Same backbone and logits: totals differ exactly by the heads.
    dpc, aspp = rows
    assert (
        dpc["total_params"] - aspp["total_params"]
        == dpc["head_params"] - aspp["head_params"]
    )
    text = demo.report(["mobilenet_v2"], (33, 65), 16, 19)
    assert "DPC/ASPP head params" in text and "branch MAdds" in text

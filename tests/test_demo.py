"""The demo: its DPC-vs-ASPP table, stages and programs."""

import os

from absl import app
import pytest

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


def test_prepare_data_writes_then_reuses_the_synthetic_set(tmp_path):
    data_dir = str(tmp_path / "synthetic")
    small = {"crop": (65, 65), "num_train": 8, "num_val": 4}
    first = demo.prepare_data(data_dir, **small)
    assert first.startswith("wrote") and "images (8, 65, 65, 3)" in first
    shards = sorted(p.name for p in (tmp_path / "synthetic").iterdir())
    assert "train-00000-of-00004.tfrecord" in shards
    assert demo.prepare_data(data_dir, **small).startswith("reused")
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir()) == shards
    # An earlier demo's images of another size are refused, not mixed in.
    with pytest.raises(app.UsageError, match=r"holds 65x65 images .*uses 513x513"):
        demo.prepare_data(data_dir)
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir()) == shards


def test_the_search_runs_where_the_cell_space_means_something():
    """33x33 features or more: crop 513 at output stride 16 (issue 22)."""
    flags = dict(f.lstrip("-").split("=", 1) for f in demo.SEARCH_FLAGS)
    crop = [int(v) for v in flags["train_crop_size"].split(",")]
    with open(demo.PRESET) as f:
        stride = int(
            next(l for l in f if l.startswith("--output_stride=")).split("=")[1]
        )
    assert all((c - 1) // stride + 1 >= 33 for c in crop)
    assert flags["max_head_madds"] == "1.1xaspp"


def test_stages_have_headings_and_times_and_commands_name_the_interpreter(capsys):
    with demo.stage("search", 3, 4):
        demo.run_program(["-c", "pass"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "== Stage 3/4: a small architecture search (about 9 min here) =="
    assert out[1].startswith("$ ") and out[1].endswith("python -c pass")
    assert out[1].split()[1].endswith("python") and out[1].split()[1] != "-c"
    assert out[2].startswith("== Stage 3/4 done in 0 min ")


def test_programs_and_preset_from_a_checkout_or_installed(tmp_path):
    assert demo.in_checkout()
    assert demo.export_program("compare") == ["export/compare.py"]
    assert demo.PRESET == os.path.join(demo.REPO, "configs", demo.PRESET_NAME)
    assert os.path.isfile(demo.PRESET)
    # Installed (site-packages holds no export/ folder): the modules the
    # wheel installs and its copy of the preset (tests/test_packaging.py).
    site = str(tmp_path)
    assert not demo.in_checkout(site)
    assert demo.export_program("compare", site) == [
        "-m",
        "deeplab_dpc.export_programs.compare",
    ]
    package = os.path.join(site, "deeplab_dpc")
    assert demo.preset(site, package) == os.path.join(
        package, "configs", "synthetic_mobilenetv2_dpc.flags"
    )

"""The demo: its DPC-vs-ASPP table, stages and programs."""

import os

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
    first = demo.prepare_data(data_dir)
    assert first.startswith("wrote") and "images (8, 129, 129, 3)" in first
    shards = sorted(p.name for p in (tmp_path / "synthetic").iterdir())
    assert "train-00000-of-00004.tfrecord" in shards
    assert demo.prepare_data(data_dir).startswith("reused")
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir()) == shards


def test_stages_have_headings_and_times_and_commands_name_the_interpreter(capsys):
    with demo.stage("search", 3, 4):
        demo.run_program(["-c", "pass"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "== Stage 3/4: a small architecture search (about 10 min here) =="
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

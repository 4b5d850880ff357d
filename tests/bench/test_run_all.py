"""Tests for bench/run_all.py's result files (no benchmark is run)."""

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench"
)
sys.path.insert(0, BENCH)

import run_all  # pylint: disable=wrong-import-position


def _result(name, value, started="2026-01-01T00:00:00"):
    return {
        "benchmark": name,
        "command": f"bench/{name}.py",
        "figures": [{"name": "x", "value": value, "unit": "ms", "detail": "d"}],
        "seconds": 1.0,
        "started": started,
    }


def test_merge_keeps_earlier_results_of_the_same_kind_in_order():
    previous = {
        "quick": False,
        "benchmarks": [_result("inference", 1.0), _result("search_throughput", 2.0)],
    }
    merged = run_all.merge(previous, [_result("search_throughput", 3.0)], quick=False)
    assert [r["benchmark"] for r in merged] == ["inference", "search_throughput"]
    assert merged[1]["figures"][0]["value"] == 3.0
    # A quick run never mixes with full ones.
    assert run_all.merge(previous, [_result("fma_peak", 4.0)], quick=True) == [
        _result("fma_peak", 4.0)
    ]
    assert (
        run_all.merge(None, [_result("levers", 5.0)], quick=False)[0]["figures"][0][
            "value"
        ]
        == 5.0
    )


def test_markdown_names_each_section_and_when_it_ran():
    text = run_all.markdown(
        [_result("inference", 1234.0, "2026-11-26T19:00:00")],
        {"cpu": "test cpu", "cores": 2},
        "2026-11-26T18:00:00",
    )
    assert "## inference" in text
    assert "Run 2026-11-26T19:00:00, 1 s, oneDNN not recorded." in text
    recorded = dict(_result("inference", 1.0), onednn="off (TF_ENABLE_ONEDNN_OPTS=0)")
    assert "oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)." in run_all.markdown(
        [recorded], {"cpu": "c", "cores": 2}, "t"
    )
    assert "| x | 1,234 | ms | d |" in text
    assert "on test cpu (2 cores; no listed flags)." in text
    flagged = run_all.markdown(
        [], {"cpu": "c", "cores": 2, "flags": ["avx512f", "amx_bf16"]}, "t"
    )
    assert "on c (2 cores; avx512f, amx_bf16)." in flagged


def test_machine_names_the_cpu_and_the_flags_the_levers_need(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some Xeon\n"
        "flags\t\t: fpu avx2 avx512f amx_tile amx_bf16 avx512_vnni sse\n"
        "\nprocessor\t: 1\nmodel name\t: Some Xeon\nflags\t\t: fpu\n"
    )
    machine = run_all.benchlib.machine(str(cpuinfo))
    assert machine["cpu"] == "Some Xeon" and machine["cores"] >= 1
    # In SPEED_FLAGS' order; the first processor's flags.
    assert machine["flags"] == [
        "avx2",
        "avx512f",
        "avx512_vnni",
        "amx_tile",
        "amx_bf16",
    ]
    assert run_all.benchlib.machine(str(tmp_path / "missing"))["flags"] == []


def test_unknown_benchmark_is_named(tmp_path):
    status = subprocess.run(
        [sys.executable, os.path.join(BENCH, "run_all.py"), "--only=nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 2
    assert "unknown ['nope']" in status.stderr


def test_a_corrupt_results_file_is_named_and_kept(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(SystemExit, match="results.json is not a results file"):
        run_all._previous(str(tmp_path))
    assert path.read_text() == "{not json"


@pytest.mark.parametrize("value,state", [("0", "off"), ("1", "on")])
def test_onednn_state_follows_the_variable(monkeypatch, value, state):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", value)
    got = run_all.benchlib.onednn_state()
    assert got == f"{state} (TF_ENABLE_ONEDNN_OPTS={value})" or (
        value == "1" and got.startswith("off")  # a TensorFlow without oneDNN
    )


def test_markdown_shows_a_benchmarks_details_below_its_figures():
    detailed = dict(_result("search_efficacy", 1.0), details="| head |\n|---|\n| a |\n")
    text = run_all.markdown(
        [detailed, _result("inference", 2.0)], {"cpu": "c", "cores": 2}, "t"
    )
    section = text.split("## search_efficacy")[1].split("## inference")[0]
    assert section.index("| x | 1 | ms | d |") < section.index("| head |\n|---|\n| a |")
    assert "| head |" not in text.split("## inference")[1]


def test_reuse_puts_a_result_run_by_hand_beside_the_earlier_ones(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    previous = {
        "started": "2026-01-01T00:00:00",
        "quick": False,
        "machine": {"cpu": "c", "cores": 2},
        "benchmarks": [_result("inference", 1.0)],
    }
    (out / "results.json").write_text(json.dumps(previous))
    by_hand = dict(
        _result("search_efficacy", 0.6), details="![curves](search_efficacy.png)"
    )
    by_hand.pop("started")
    by_hand["machine"] = {"cpu": "other cpu", "cores": 8}
    path = tmp_path / "se.json"
    path.write_text(json.dumps(by_hand))
    run_all.main(
        [
            "--only=search_efficacy",
            f"--reuse=search_efficacy={path}",
            f"--output_dir={out}",
        ]
    )
    summary = json.loads((out / "results.json").read_text())
    assert [r["benchmark"] for r in summary["benchmarks"]] == [
        "inference",
        "search_efficacy",
    ]
    assert summary["benchmarks"][0] == _result("inference", 1.0)
    assert summary["benchmarks"][1]["reused_from"] == str(path)
    # The header keeps the full run's date and machine; the section run on
    # another machine names its own.
    assert summary["machine"] == {"cpu": "c", "cores": 2}
    text = (out / "results.md").read_text()
    assert text.splitlines()[2].startswith("2026-01-01T00:00:00 on c (2 cores")
    section = text.split("## search_efficacy")[1]
    assert "On other cpu (8 cores), not the machine named above." in section
    assert "not the machine" not in text.split("## search_efficacy")[0]
    assert "Run by hand with the command above" in section
    assert "![curves](search_efficacy.png)" in section


def test_reuse_names_a_wrong_or_missing_file(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_result("inference", 1.0)))
    with pytest.raises(SystemExit, match="other.json: it holds 'inference'"):
        run_all.load_reused("search_efficacy", str(other))
    with pytest.raises(SystemExit, match="missing.json: cannot read it"):
        run_all.load_reused("search_efficacy", str(tmp_path / "missing.json"))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(dict(_result("search_efficacy", 1.0), figures=[])))
    with pytest.raises(SystemExit, match="empty.json: it has no figures"):
        run_all.load_reused("search_efficacy", str(empty))
    with pytest.raises(SystemExit):  # argparse: exit status 2
        run_all._parse(["--reuse=nope=x.json"])

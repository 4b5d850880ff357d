"""The side-by-side comparison (compare) and the compare program."""

import dataclasses
import json
import os

import pytest

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.export import compare
from deeplab_dpc.models import accounting
from tests.export import tflite_testing as tt

VARIANTS = ("float32", "int8")
PNG = b"\x89PNG\r\n\x1a\n"
# The compare program's standard error (its progress lines).
_STDERR = {}


@pytest.fixture(name="comparison", scope="module")
def _comparison(tmp_path_factory):
    """The compare program run once on the DPC and ASPP test models."""
    paths = tt.workspace()
    output_dir = tmp_path_factory.mktemp("comparison") / "out"
    proc = tt.run_program(
        "compare.py",
        f"--output_dir={output_dir}",
        f"--models=dpc:{paths['dpc']}:dpc,aspp:{paths['aspp']}:aspp",
        f"--dataset_dir={paths['data']}",
        f"--variants={','.join(VARIANTS)}",
        f"--min_pixel_agreement={tt.INT8_AGREEMENT}",
        "--calibration_steps=4",
        "--max_eval_images=3",
        "--latency_runs=3",
        "--warmup_runs=1",
        *tt.MODEL_FLAGS,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _STDERR["compare"] = proc.stderr
    with open(output_dir / compare.JSON_FILE) as f:
        return output_dir, json.load(f), proc.stdout


def test_numbers_are_sane(comparison):
    _, result, _ = comparison
    rows = result["rows"]
    assert [(r["model"], r["variant"]) for r in rows] == [
        (m, v) for m in ("dpc", "aspp") for v in VARIANTS
    ]
    for row in rows:
        counts = accounting.count(tt.model(row["model"]))
        assert row["params"] == counts["total"]["params"]
        assert row["madds"] == counts["total"]["madds"]
        assert row["head_madds"] == counts["head"]["madds"]
        assert row["latency_ms"] > 0 and row["peak_memory_mib"] > 0
        assert 0.0 <= row["miou"] <= 1.0 and row["agreement"] >= tt.INT8_AGREEMENT
        assert 0 < row["gzip_bytes"] < row["size_bytes"] == os.path.getsize(row["file"])
    by = {(r["model"], r["variant"]): r for r in rows}
    for model in ("dpc", "aspp"):
        float32, int8 = by[model, "float32"], by[model, "int8"]
        assert int8["size_bytes"] < 0.4 * float32["size_bytes"]
    assert by["dpc", "float32"]["madds"] > by["aspp", "float32"]["madds"]
    assert result["settings"]["latency_runs"] == 3


def test_progress_of_models_variants_and_evaluations(comparison):
    del comparison  # Run for its standard error.
    lines = _STDERR["compare"].splitlines()
    for model, number in (("dpc", 1), ("aspp", 2)):
        assert f"model {number}/2 ({model}): exporting float32, int8" in lines
        (done,) = [x for x in lines if x.startswith(f"model {number}/2 ({model}): exported")]
        assert ", ETA " in done if number == 1 else done.endswith(", done")
    variants = [x for x in lines if x.startswith("variant ")]
    assert [x.split(":")[0] for x in variants] == [
        "variant 1/2 (float32)",
        "variant 2/2 (int8)",
    ] * 2
    assert ": converted and checked in " in variants[0] and ", ETA " in variants[0]
    images = [x for x in lines if x.startswith("evaluation image ")]
    # --max_eval_images=3, once per model: the float model and both files.
    assert [x.split(":")[0] for x in images] == [
        f"evaluation image {n}/3" for n in (1, 2, 3)
    ] * 2
    assert images[0].startswith("evaluation image 1/3: 3 models in ")
    assert ", ETA " in images[0] and images[2].endswith(", done")


def test_markdown_table_and_plots_are_written(comparison):
    output_dir, result, stdout = comparison
    table = (output_dir / compare.MARKDOWN_FILE).read_text()
    assert table == compare.markdown(result) and table in stdout
    for row in result["rows"]:
        assert f"| {row['model']} | {row['variant']} | {row['params']:,} |" in table
    for name in compare.PLOTS:
        data = (output_dir / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    assert sorted(os.listdir(output_dir / "dpc")) == sorted(
        [f"{v}.tflite" for v in VARIANTS] + ["tflite_export.json"]
    )


def test_models_from_flags_and_from_a_config_file(tmp_path):
    base = tt.options("aspp")
    cell_path = tmp_path / "cell.json"
    cell_spec.dump_cell(cell_spec.published_cell(), str(cell_path))
    specs = compare.parse_models(
        ["a:/ck/a:aspp", f"b:/ck/b:{cell_path}", "c:/ck/c:dpc:xception"], base
    )
    assert [s.options.head for s in specs] == ["aspp", "dpc", "dpc"]
    assert specs[1].options.dense_prediction_cell == cell_spec.published_cell()
    assert specs[2].options.model_variant == "xception"
    config = tmp_path / "models.json"
    models = [
        {"name": "x", "checkpoint_path": "/ck/x", "head": "dpc"},
        {"name": "y", "checkpoint_path": "/ck/y", "options": {"atrous_rates": [6, 12]}},
    ]
    config.write_text(json.dumps({"models": models}))
    x, y = compare.load_models(str(config), base)
    cell = cell_spec.published_cell()
    assert x.options == dataclasses.replace(base, dense_prediction_cell=cell)
    assert y.options.atrous_rates == (6, 12) and y.options.head == "aspp"


@pytest.mark.parametrize(
    "items, message",
    [
        (["a:/ck"], "expected name:checkpoint_path:head"),
        (["a:/ck:nosuchcell.json"], "neither 'aspp', 'dpc' nor a readable cell"),
        (["a b:/ck:aspp"], "must match"),
        (["a:/ck:aspp", "a:/ck2:dpc"], r"unique: \['a'\]"),
    ],
)
def test_bad_model_items_are_named(items, message):
    with pytest.raises(ValueError, match=message):
        compare.parse_models(items, tt.options("aspp"))


def test_config_with_unknown_options_is_refused(tmp_path):
    config = tmp_path / "models.json"
    models = [{"name": "x", "checkpoint_path": "/ck", "options": {"depth": 3}}]
    config.write_text(json.dumps({"models": models}))
    with pytest.raises(ValueError, match=r"models\[0\]: unknown options \['depth'\]"):
        compare.load_models(str(config), tt.options("aspp"))

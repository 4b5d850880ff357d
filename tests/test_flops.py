"""The flops program, run as a user runs it."""

import json
import os
import subprocess
import sys

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.models import accounting
from deeplab_dpc.models import deeplab

_BASE = [
    "--model_variant=mobilenet_v2",
    "--depth_multiplier=0.35",
    "--num_classes=5",
    "--output_stride=16",
]


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "deeplab_dpc.flops", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_json_matches_in_process_accounting(tmp_path):
    cell_path = tmp_path / "cell.json"
    cell_spec.dump_cell(cell_spec.published_cell(), cell_path)
    proc = _run(
        *_BASE,
        f"--dense_prediction_cell_json={cell_path}",
        "--crop_size=65,49",
        "--decoder_output_stride=4",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert list(result) == ["modules"]
    modules = result["modules"]
    assert list(modules) == [
        "backbone",
        "head",
        "head_branches",
        "decoder",
        "logits",
        "total",
    ]
    options = deeplab.ModelOptions(
        model_variant="mobilenet_v2",
        depth_multiplier=0.35,
        num_classes=5,
        crop_size=(65, 49),
        dense_prediction_cell=cell_spec.published_cell(),
        decoder_output_stride=4,
    )
    assert modules == accounting.count(deeplab.build_deeplab(options))


def test_aspp_without_decoder_and_table():
    proc = _run(
        *_BASE, "--head=aspp", "--atrous_rates=6,12,18", "--crop_size=33", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout)["modules"]
    assert "decoder" not in modules
    for key in ("params", "madds"):
        assert modules["total"][key] == sum(
            modules[m][key] for m in ("backbone", "head", "logits")
        )
    # ASPP at 3x3 features of 112 channels: the image pooling conv runs on the
    # pooled 1x1 map, the 1x1 branch and three split separable convs (depthwise
    # 3x3 + pointwise) on the 3x3 map; the projection is not a branch.
    c = 112
    image_pooling = 1 * 1 * c * 256
    conv1x1 = 3 * 3 * c * 256
    separable = 3 * 3 * (9 * c + c * 256)
    assert modules["head_branches"]["madds"] == (
        image_pooling + conv1x1 + 3 * separable
    )
    assert modules["head"]["madds"] - modules["head_branches"]["madds"] == (
        3 * 3 * 5 * 256 * 256
    )
    table = _run(*_BASE, "--head=aspp", "--crop_size=33")
    assert table.returncode == 0, table.stderr
    assert "head_branches" in table.stdout and "MAdds" in table.stdout


def test_bad_crop_and_bad_cell_are_clear_errors(tmp_path):
    proc = _run(*_BASE, "--crop_size=64,64", "--json")
    assert proc.returncode != 0
    assert "output_stride * k + 1" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('[{"kernel": 3, "rate": [2, 6], "op": "conv", "input": -1}]')
    proc = _run(*_BASE, f"--dense_prediction_cell_json={bad}", "--json")
    assert proc.returncode != 0
    assert str(bad) in proc.stderr and "rate" in proc.stderr

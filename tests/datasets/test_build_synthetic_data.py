"""Runs datasets/build_synthetic_data.py as a user does: one subprocess."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import tensorflow as tf

from deeplab_dpc.data import registry
from deeplab_dpc.data import synthetic
from deeplab_dpc.data import tfexample

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "datasets" / "build_synthetic_data.py"


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, str(PROGRAM), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_program_writes_the_registered_splits_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "synthetic"
    result = _run(f"--output_dir={out}", "--num_workers=1")
    assert result.returncode == 0, result.stderr
    # The defaults are the registry's split sizes.
    for split, size in registry.get("synthetic").splits:
        assert f"{split}: {size} examples in 4 shard(s)" in result.stdout
        files = tfexample.split_files(str(out), split)
        assert len(files) == 4
        assert sum(1 for _ in tf.data.TFRecordDataset(files)) == size
    first = next(iter(tf.data.TFRecordDataset(tfexample.split_files(str(out), "val"))))
    element = tfexample.decode_example(first)
    image, label = synthetic.generate_example(0, "val", 0)
    np.testing.assert_array_equal(element[tfexample.IMAGE].numpy(), image)
    np.testing.assert_array_equal(element[tfexample.LABEL].numpy()[..., 0], label)
    assert "--num_train=200" in (out / "build_synthetic_data.flags").read_text()

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = _run(f"--output_dir={out}", "--num_train=3", "--num_val=2")
    assert refused.returncode == 1
    assert "already holds" in refused.stderr and "--overwrite" in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    replaced = _run(
        f"--output_dir={out}",
        "--num_train=3",
        "--num_val=2",
        "--num_shards=1",
        "--height=17",
        "--width=33",
        "--num_workers=1",
        "--overwrite",
    )
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(p.name for p in out.glob("*.tfrecord")) == [
        "train-00000-of-00001.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]


def test_program_rejects_stray_arguments_and_missing_output_dir(tmp_path):
    stray = _run(f"--output_dir={tmp_path}", "extra")
    assert stray.returncode != 0 and "Too many arguments" in stray.stderr
    assert not list(tmp_path.iterdir())
    missing = _run()
    assert missing.returncode != 0 and "output_dir" in missing.stderr

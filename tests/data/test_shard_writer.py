"""shard_writer: refuses to overwrite, atomic on failure and on SIGKILL,
deterministic whatever the number of workers."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_dpc.data import converters
from deeplab_dpc.data import shard_writer
from deeplab_dpc.data import tfexample


def _record(i):
    return b"record %d" % i


def _records(output_dir, split):
    files = tfexample.split_files(str(output_dir), split)
    return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def test_refuses_to_overwrite_and_names_the_directory(tmp_path):
    shard_writer.write_split(_record, 3, str(tmp_path), "train", 2, num_workers=1)
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        shard_writer.write_split(
            lambda i: b"new", 3, str(tmp_path), "train", 2, num_workers=1
        )
    assert {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)} == before


def test_overwrite_replaces_and_removes_stale_shards(tmp_path):
    shard_writer.write_split(_record, 8, str(tmp_path), "train", 4, num_workers=1)
    shard_writer.write_split(_record, 1, str(tmp_path), "val", 1, num_workers=1)
    result = shard_writer.write_split(
        lambda i: b"new %d" % i, 5, str(tmp_path), "train", 2, True, num_workers=1
    )
    assert sorted(os.listdir(tmp_path)) == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]
    assert result.shards == tuple(tfexample.split_files(str(tmp_path), "train"))
    assert _records(tmp_path, "train") == [b"new %d" % i for i in range(5)]
    assert _records(tmp_path, "val") == [b"record 0"]


def test_count_records_counts_every_shard_of_a_split(tmp_path):
    shard_writer.write_split(_record, 7, str(tmp_path), "train", 3, num_workers=1)
    shard_writer.write_split(_record, 2, str(tmp_path), "val", 1, num_workers=1)
    assert tfexample.count_records(str(tmp_path), "train") == 7
    assert tfexample.count_records(str(tmp_path), "train", limit=4) == 4
    assert tfexample.count_records(str(tmp_path), "train", limit=10) == 7
    assert tfexample.count_records(str(tmp_path), "val") == 2
    with pytest.raises(FileNotFoundError, match="test-"):
        tfexample.count_records(str(tmp_path), "test")


def test_contiguous_sharding_and_skip_count(tmp_path):
    def make(i):
        if i in (2, 5):
            raise shard_writer.BadExampleError(f"example {i} is bad")
        return _record(i)

    result = shard_writer.write_split(
        make, 7, str(tmp_path), "s", 3, num_workers=1, skip_bad_examples=True
    )
    assert result.num_written == 5
    assert result.skipped == ("example 2 is bad", "example 5 is bad")
    per_shard = [[r.numpy() for r in tf.data.TFRecordDataset(f)] for f in result.shards]
    assert per_shard == [
        [b"record 0", b"record 1"],
        [b"record 3", b"record 4"],
        [b"record 6"],
    ]


@pytest.mark.parametrize("error", [shard_writer.BadExampleError, RuntimeError])
def test_failure_in_the_middle_leaves_no_shard_and_no_temp_file(tmp_path, error):
    def make(i):
        if i == 5:
            raise error(f"example {i} is bad")
        return _record(i)

    with pytest.raises(error, match="example 5"):
        # Shards 0 and 1 are complete (as temp files) when example 5 fails.
        shard_writer.write_split(make, 8, str(tmp_path), "train", 4, num_workers=1)
    assert os.listdir(tmp_path) == []


def _png_examples(root, num):
    rng = np.random.default_rng(0)
    examples = []
    for k in range(num):
        image, label = root / f"{k}.png", root / f"{k}_label.png"
        Image.fromarray(rng.integers(0, 256, (8, 12, 3), np.uint8)).save(image)
        Image.fromarray(rng.integers(0, 3, (8, 12), np.uint8)).save(label)
        examples.append((str(image), str(label), f"example{k}"))
    return examples


def test_same_shards_with_one_and_two_workers(tmp_path):
    maker = converters.ExampleMaker(tuple(_png_examples(tmp_path, 7)), 3, 255)
    contents = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        shard_writer.write_split(maker, 7, str(out), "train", 3, num_workers=workers)
        contents.append({p: (out / p).read_bytes() for p in sorted(os.listdir(out))})
    assert list(contents[0]) == [tfexample.shard_name("train", k, 3) for k in range(3)]
    assert contents[0] == contents[1]


_SLOW_WRITER = """
import sys, time
from deeplab_dpc.data import shard_writer

def slow(i):
    time.sleep(0.2)
    return b"record %d" % i

shard_writer.write_split(slow, 400, sys.argv[1], "train", 2, num_workers=1)
"""


def test_killed_conversion_leaves_no_complete_looking_shard(tmp_path):
    script = tmp_path / "slow_writer.py"
    script.write_text(textwrap.dedent(_SLOW_WRITER))
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    temp = out / ".train-00000-of-00002.tfrecord.tmp"
    try:
        deadline = time.monotonic() + 60
        while not temp.exists():
            assert proc.poll() is None, "the writer exited before writing"
            assert time.monotonic() < deadline, "no temporary shard appeared"
            time.sleep(0.05)
        time.sleep(0.5)  # a few records into the first shard
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(FileNotFoundError):
        tfexample.split_files(str(out), "train")
    left = os.listdir(out)
    assert left and all(p.startswith(".") and p.endswith(".tmp") for p in left)


def _always_bad(i):
    raise shard_writer.BadExampleError(f"example {i} is bad")


def test_all_bad_with_skip_raises_and_publishes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(shard_writer.BadExampleError, match="all 5 examples"):
        shard_writer.write_split(
            _always_bad,
            5,
            str(out),
            "train",
            num_shards=2,
            num_workers=1,
            skip_bad_examples=True,
        )
    assert sorted(os.listdir(out)) == []

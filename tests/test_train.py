"""The training program: end to end, SIGTERM, MirroredStrategy, bad flags."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from absl import flags
import program_testing
import pytest
import tensorflow as tf

from deeplab_dpc.data import synthetic
from deeplab_dpc.flags import train_flags
from deeplab_dpc.training import speed
from deeplab_dpc.training import trainer

FLAGS = flags.FLAGS


@pytest.fixture(scope="module")
def data_dir(synthetic_data):
    return synthetic_data(num_train=16, num_val=2, height=48, width=48)


def _program_args(data_dir, logdir, *extra):
    return [
        sys.executable,
        "-m",
        "deeplab_dpc.train",
        f"--train_logdir={logdir}",
        "--dataset=synthetic",
        f"--dataset_dir={data_dir}",
        "--train_crop_size=33,33",
        "--depth_multiplier=0.35",
        "--train_batch_size=2",
        "--base_learning_rate=0.01",
        "--seed=1",
        *extra,
    ]


def test_program_trains_writes_flags_and_checkpoints(data_dir, tmp_path, program_env):
    logdir = str(tmp_path / "log")
    proc = program_testing.run(
        _program_args(
            data_dir,
            logdir,
            "--training_number_of_steps=3",
            "--log_steps=1",
            "--save_summaries_images",
            "--float32_math=bfloat16",
        ),
        program_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 3/3 loss" in proc.stderr
    assert "steps/s" in proc.stderr and "ETA" in proc.stderr
    mode = "bfloat16" if speed.bfloat16_math_possible() else "float32"
    assert f"Float32 convolutions compute in {mode}." in proc.stderr
    with open(os.path.join(logdir, "train.flags")) as f:
        shared = f.read()
    with open(os.path.join(logdir, "train_run.flags")) as f:
        written = f.read()
    assert "--depth_multiplier=0.35" in shared and "--dataset=synthetic" in shared
    assert "--train_crop_size=33,33" in written
    assert "--training_number_of_steps=3" in written
    assert tf.train.latest_checkpoint(logdir).endswith("ckpt-3")
    events = [n for n in os.listdir(logdir) if n.startswith("events.out.tfevents")]
    assert events
    tags = {}
    for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, events[0])):
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append(event.step)
    assert tags["loss"] == [1, 2, 3] and tags["learning_rate"] == [1, 2, 3]
    for tag in ("image", "label", "prediction"):
        assert tags[tag] == [1, 2, 3], tags


def test_sigterm_saves_and_exits(data_dir, tmp_path, program_env):
    logdir = str(tmp_path / "log")
    proc = subprocess.Popen(
        _program_args(
            data_dir, logdir, "--training_number_of_steps=100000", "--log_steps=1"
        ),
        cwd=program_testing.REPO,
        env=program_env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "step 1/100000" in line:
                proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                break
        assert any("step 1/100000" in line for line in seen), "".join(seen)[-3000:]
        rest = proc.communicate(timeout=program_testing.TIMEOUT)[1]
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    # Within seconds, saved (tests/test_sigterm.py tries every program; its
    # bound for a stop that saves, SAVE_STOP_SECONDS, allows for a loaded
    # machine).
    assert elapsed < 30, f"{elapsed:.1f} s from SIGTERM to the end"
    # Not 0: a scheduler must see a run to restart (README, "Training").
    assert proc.returncode == trainer.EXIT_TERMINATED == 143, rest[-3000:]
    assert "SIGTERM" in rest
    latest = tf.train.latest_checkpoint(logdir)
    assert latest is not None
    step = tf.train.load_checkpoint(latest).get_tensor(
        "step/.ATTRIBUTES/VARIABLE_VALUE"
    )
    assert 1 <= step < 100000


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from deeplab_dpc.training import trainer
    from deeplab_dpc.models import deeplab

    def model_fn(options):
        model = deeplab.build_deeplab(options)
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, tf.keras.layers.Dropout):
                layer.rate = 0.0
        return model

    data_dir, logdir = sys.argv[1:3]
    model_options = deeplab.ModelOptions(
        num_classes=7, crop_size=(33, 33), depth_multiplier=0.35)
    train_options = trainer.TrainOptions(
        train_batch_size=4, training_number_of_steps=4, base_learning_rate=0.01,
        dataset_dir=data_dir, ignore_label=255, log_steps=1, seed=1,
        fine_tune_batch_norm=False)
    out = {}
    for name, strategy in (
        ("default", tf.distribute.get_strategy()),
        ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
    ):
        results = trainer.run(model_options, train_options,
                                f"{logdir}/{name}", strategy, model_fn=model_fn)
        out[name] = results["losses"]
        out[name + "_replicas"] = strategy.num_replicas_in_sync
    print("RESULT " + json.dumps(out))
    """)


def test_mirrored_two_replicas_match_the_default_strategy(
    data_dir, tmp_path, program_env
):
    # Batch norm is frozen (fine_tune_batch_norm=False) and dropout off: with
    # them, each replica normalises with its own half batch and draws its own
    # dropout mask, so the losses legitimately differ. Everything else (the
    # loss over the global batch's valid pixels, the summed gradients, the
    # same examples in the same order) must agree up to float round-off.
    proc = program_testing.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT, data_dir, str(tmp_path)], program_env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])
    assert out["default_replicas"] == 1 and out["mirrored_replicas"] == 2
    assert len(out["default"]) == 4
    assert out["mirrored"] == pytest.approx(out["default"], rel=1e-4, abs=1e-5)


def _set(**values):
    for name, value in values.items():
        setattr(FLAGS, name, value)


def test_bad_crop_names_the_flag(parsed_flags, data_dir):
    _set(dataset="synthetic", dataset_dir=data_dir, train_crop_size="32,32")
    with pytest.raises(flags.ValidationError, match="--train_crop_size='32,32'"):
        train_flags.options_from_flags(1)


def test_batch_not_divisible_by_replicas(parsed_flags, data_dir):
    _set(
        dataset="synthetic",
        dataset_dir=data_dir,
        train_crop_size="33,33",
        train_batch_size=3,
    )
    with pytest.raises(flags.ValidationError, match="--train_batch_size=3"):
        train_flags.options_from_flags(2)
    model_options, train_options = train_flags.options_from_flags(1)
    assert model_options.crop_size == (33, 33)
    assert model_options.num_classes == synthetic.NUM_CLASSES
    assert train_options.train_batch_size == 3
    assert train_options.ignore_label == synthetic.IGNORE_LABEL


def test_missing_dataset_dir_or_shards(parsed_flags, tmp_path):
    _set(dataset="synthetic", train_crop_size="33,33", dataset_dir=None)
    with pytest.raises(flags.ValidationError, match="--dataset_dir is required"):
        train_flags.options_from_flags(1)
    _set(dataset_dir=str(tmp_path), train_split="train")
    with pytest.raises(
        flags.ValidationError, match=r"no shards of --train_split='train'"
    ):
        train_flags.options_from_flags(1)


def test_program_reports_bad_flags_and_stray_args(data_dir, tmp_path, program_env):
    proc = program_testing.run(
        _program_args(data_dir, str(tmp_path / "log"), "--train_crop_size=40,40", "x"),
        program_env,
    )
    assert proc.returncode != 0
    assert "Too many arguments" in proc.stderr
    proc = program_testing.run(
        _program_args(data_dir, str(tmp_path / "log"), "--train_crop_size=40,40"),
        program_env,
    )
    assert proc.returncode != 0
    assert "--train_crop_size='40,40'" in proc.stderr
    assert not os.path.exists(tmp_path / "log" / "train.flags")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"depth_multiplier": -1.0}, "depth_multiplier"),
        ({"base_learning_rate": -1.0}, "base_learning_rate"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_numeric_flags_have_ranges(parsed_flags, data_dir, values, message):
    # The audit's silent runs: a negative width or learning rate trained and
    # exited 0.
    _set(dataset="synthetic", dataset_dir=data_dir, train_crop_size="33,33")
    with pytest.raises(
        (flags.ValidationError, flags.IllegalFlagValueError), match=message
    ):
        _set(**values)
        train_flags.options_from_flags(1)


def test_labels_above_num_classes_and_missing_gpus_stop_the_program(
    data_dir, tmp_path, program_env
):
    # --num_classes=1 (a custom data set) on the 7-class synthetic data: the
    # first record's labels are out of range, named in one line.
    args = _program_args(
        data_dir, str(tmp_path / "log"), "--training_number_of_steps=2"
    )
    args = [a for a in args if not a.startswith("--dataset=")] + ["--num_classes=1"]
    proc = program_testing.run(args, program_env)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = errors[-1]
    assert "train-0000" in last, last
    assert ": record " in last and ">= num_classes (1)" in last, last
    assert tf.train.latest_checkpoint(str(tmp_path / "log")) is None
    # Two GPUs asked for on a machine without any: an error at start-up (it
    # hung in the audit).
    proc = program_testing.run(
        _program_args(
            data_dir,
            str(tmp_path / "log2"),
            "--distribution_strategy=mirrored",
            "--num_gpus=2",
        ),
        dict(program_env, CUDA_VISIBLE_DEVICES=""),
        timeout=60,
    )
    assert proc.returncode != 0
    assert "--num_gpus=2 but this machine has 0 GPU(s)" in proc.stderr

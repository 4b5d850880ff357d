"""Every program stops on SIGTERM within seconds, and leaves no process.

Each case starts a program as a user would, waits until it is at work in
one state (importing TensorFlow; tracing its first training step;
pretraining after a step;
waiting for a checkpoint; writing shards with worker processes; the demo
running the search program), sends SIGTERM and checks that it ends within
`STOP_SECONDS` (`SAVE_STOP_SECONDS` when it saves a checkpoint first) with
a non-zero status (the training program and the
search's pretraining: `trainer.EXIT_TERMINATED`, after a checkpoint) and
that none of its processes outlives it by `ORPHAN_SECONDS`. The audit found
a training run that logged two GPUs and never stopped on SIGTERM.

The cases share one tiny data set (48x48 images), tests/test_train.py's,
whose `test_sigterm_saves_and_exits` is the training program's case after
its first step (saved, exit status 143, within 10 s). States that cost a
trained model (eval, vis, predict and the exports inside their loops) are
tried at start-up only: they install no SIGTERM handler, so the kernel's
default action ends them in any state, and the processes they start are
`processes.child_kwargs` children (tests/test_processes.py).
"""

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time

import process_testing
import pytest
import tensorflow as tf

from deeplab_dpc.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOP_SECONDS = 10.0
# A stop that saves a checkpoint first: its first save traces TensorFlow's
# saving functions, which took over 10 s at a load of 7 on 2 cores (under
# a second unloaded); the trainer's own bound is TERMINATION_GRACE_SECS
# plus twice its slowest step.
SAVE_STOP_SECONDS = 30.0
ORPHAN_SECONDS = 5.0
READY_SECONDS = 240.0  # To reach the state: TensorFlow's import on a busy machine.

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to find processes"
)


@pytest.fixture(name="data", scope="module")
def _data(synthetic_data):
    # The arguments of tests/test_train.py: one data set for both.
    return synthetic_data(num_train=16, num_val=2, height=48, width=48)


def _tensorflow_loading(proc, lines):
    del lines
    return process_testing.maps_tensorflow(proc.pid)


def _line(text):
    def ready(proc, lines):
        del proc
        return any(text in line for line in lines)

    return ready


def _workers(count):
    def ready(proc, lines):
        del lines
        return len(process_testing.descendants(proc.pid)) >= count

    return ready


def _module(name):
    return [sys.executable, "-m", name]


def _script(path):
    return [sys.executable, os.path.join(REPO, path)]


_MODEL = ["--dataset=synthetic", "--depth_multiplier=0.35"]
_TRAIN = _MODEL + [
    "--train_crop_size=33,33",
    "--train_batch_size=2",
    "--base_learning_rate=0.01",
    "--seed=1",
]

# name -> (command, state, ready(proc, lines), expected exit statuses).
# Statuses: EXIT_TERMINATED where the program catches SIGTERM, -SIGTERM
# (killed by it; a shell reports 128 + 15 = 143 alike) where it does not.
KILLED = (-int(signal.SIGTERM),)
TERMINATED = (trainer.EXIT_TERMINATED,)
CASES = {
    "train-first-step": (
        _module("deeplab_dpc.train")
        + ["--train_logdir={tmp}/train", "--dataset_dir={data}"]
        + _TRAIN
        + ["--training_number_of_steps=100000"],
        "tracing its first step",
        _line("Training from step 0 to 100000"),
        TERMINATED,
    ),
    "eval": (
        _module("deeplab_dpc.eval")
        + [
            "--checkpoint_dir={tmp}/empty",
            "--eval_logdir={tmp}/eval",
            "--dataset_dir={data}",
            "--eval_crop_size=49,49",
        ]
        + _MODEL,
        "waiting for a checkpoint",
        _line("Waiting for new checkpoint"),
        KILLED,
    ),
    "vis": (
        _module("deeplab_dpc.vis")
        + [
            "--checkpoint_dir={tmp}/empty",
            "--vis_logdir={tmp}/vis",
            "--dataset_dir={data}",
            "--vis_crop_size=49,49",
        ]
        + _MODEL,
        "importing TensorFlow",
        _tensorflow_loading,
        KILLED,
    ),
    "search-pretrain": (
        _module("deeplab_dpc.search")
        + [
            "--mode=all",  # Without a checkpoint: pretraining first.
            "--search_dir={tmp}/search",
            "--dataset_dir={data}",
            "--pretrain_steps=100000",
        ]
        + _TRAIN,
        "pretraining the proxy backbone",
        _line("Fast paths:"),  # Logged once the first step is counted.
        TERMINATED,
    ),
    "search": (
        _module("deeplab_dpc.search")
        + ["--search_dir={tmp}/search", "--dataset_dir={data}"]
        + _TRAIN,
        "importing TensorFlow",
        _tensorflow_loading,
        KILLED,
    ),
    "build_synthetic_data": (
        _script("datasets/build_synthetic_data.py")
        + [
            "--output_dir={tmp}/out",
            "--num_train=2000",
            "--num_val=8",
            "--num_workers=2",
        ],
        "writing shards in 2 worker processes",
        _workers(2),
        KILLED,
    ),
    "build_cityscapes_data": (
        _script("datasets/build_cityscapes_data.py")
        + ["--cityscapes_root={tmp}/cs", "--output_dir={tmp}/out"],
        "importing TensorFlow",
        _tensorflow_loading,
        KILLED,
    ),
    "build_voc2012_data": (
        _script("datasets/build_voc2012_data.py")
        + ["--voc_root={tmp}/voc", "--output_dir={tmp}/out"],
        "importing TensorFlow",
        _tensorflow_loading,
        KILLED,
    ),
    "build_ade20k_data": (
        _script("datasets/build_ade20k_data.py")
        + ["--ade20k_root={tmp}/ade", "--output_dir={tmp}/out"],
        "importing TensorFlow",
        _tensorflow_loading,
        KILLED,
    ),
    "build_seg_data": (
        _script("datasets/build_seg_data.py")
        + [
            "--image_folder={tmp}/images",
            "--semantic_segmentation_folder={tmp}/labels",
            "--list_folder={tmp}/lists",
            "--output_dir={tmp}/out",
        ],
        "importing TensorFlow",
        _tensorflow_loading,
        KILLED,
    ),
    "export_model": (
        _script("export/export_model.py")
        + ["--checkpoint_path={tmp}/empty", "--export_path={tmp}/export"]
        + _MODEL,
        "importing TensorFlow",
        _tensorflow_loading,
        KILLED,
    ),
    "export_tflite": (
        _script("export/export_tflite.py")
        + ["--checkpoint_path={tmp}/empty", "--output_dir={tmp}/tflite"]
        + _MODEL,
        "importing TensorFlow",
        _tensorflow_loading,
        KILLED,
    ),
    "predict": (
        _module("deeplab_dpc.predict")
        + ["--saved_model={tmp}/export", "--images={tmp}", "--output_dir={tmp}/p"],
        "importing TensorFlow",
        _tensorflow_loading,
        KILLED,
    ),
    "demo": (
        # The search stage on the shared data set: the demo runs the search
        # program as its child.
        _module("deeplab_dpc.demo") + ["--demo_dir={tmp}/demo", "--stages=search"],
        "running the search program",
        _workers(1),
        KILLED,
    ),
}


class _Output:
    """A process's output lines, read by a thread as they come."""

    def __init__(self, stream):
        self.lines = []
        self._thread = threading.Thread(target=self._read, args=(stream,))
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line)

    def join(self):
        self._thread.join(timeout=30)
        return "".join(self.lines)


def _wait(condition, seconds, period=0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(period)
    return condition()


# The heavy cases first; `PARALLEL` at a time (they spend most of their
# time importing TensorFlow and tracing: on 2 cores the file takes about
# half as long as one case after the other).
ORDER = ("search-pretrain", "train-first-step", "demo", "build_synthetic_data", "eval")
PARALLEL = 2


def _try(name, tmp_path, data, env):
    """Runs one case; returns what the test checks."""
    command, state, ready, _ = CASES[name]
    (tmp_path / "empty").mkdir()
    if name == "demo":
        (tmp_path / "demo").mkdir()
        os.symlink(data, tmp_path / "demo" / "synthetic")  # Reused, not written.
    argv = [arg.format(tmp=tmp_path, data=data) for arg in command]
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = _Output(proc.stdout)
    seen = set()
    result = {"reached": False, "elapsed": None}
    try:
        _wait(
            lambda: ready(proc, output.lines) or proc.poll() is not None,
            READY_SECONDS,
        )
        result["reached"] = proc.poll() is None and ready(proc, output.lines)
        if not result["reached"]:
            return result
        seen.update(process_testing.descendants(proc.pid))
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()

        def ended():
            seen.update(process_testing.descendants(proc.pid))
            return proc.poll() is not None

        _wait(ended, SAVE_STOP_SECONDS)
        result["elapsed"] = time.monotonic() - start
    finally:
        if proc.poll() is None:
            for pid in process_testing.descendants(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
        result["output"] = output.join()
        result["status"] = proc.returncode
        proc.stdout.close()
        _wait(lambda: not any(map(process_testing.alive, seen)), ORPHAN_SECONDS)
        result["survivors"] = [pid for pid in seen if process_testing.alive(pid)]
        for pid in result["survivors"]:
            os.kill(pid, signal.SIGKILL)
    return result


@pytest.fixture(name="results", scope="module")
def _results(data, tmp_path_factory):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    names = list(ORDER) + sorted(set(CASES) - set(ORDER))
    folders = {name: tmp_path_factory.mktemp(name) for name in names}
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        futures = {
            name: pool.submit(_try, name, folders[name], data, env) for name in names
        }
        return {
            name: {**future.result(), "tmp": folders[name]}
            for name, future in futures.items()
        }


@pytest.mark.parametrize("name", sorted(CASES))
def test_program_stops_on_sigterm_and_leaves_no_process(name, results):
    _, state, _, statuses = CASES[name]
    result = results[name]
    text = result["output"]
    assert result["reached"], (
        f"{name} ended (status {result['status']}) or timed out before "
        f"{state}:\n{text[-3000:]}"
    )
    elapsed = result["elapsed"]
    bound = SAVE_STOP_SECONDS if name == "search-pretrain" else STOP_SECONDS
    assert elapsed < bound, (
        f"{name} ran on {elapsed:.1f} s after SIGTERM:\n{text[-3000:]}"
    )
    assert result["status"] in statuses, (
        f"{name}: status {result['status']} after SIGTERM while {state}, "
        f"expected one of {statuses}:\n{text[-3000:]}"
    )
    assert not result["survivors"], f"{name} left processes {result['survivors']}"
    if name == "train-first-step" and "saving a checkpoint" not in text:
        # SIGTERM came before the first step ended: nothing to save.
        assert "no step to save" in text, text[-3000:]
    if name == "search-pretrain":
        # Stopped after a step: the step is in a checkpoint, and the search
        # went no further (it used to cache features of the half-trained
        # backbone and search on them).
        search_dir = result["tmp"] / "search"
        assert tf.train.latest_checkpoint(str(search_dir / "pretrain")), text
        assert sorted(os.listdir(search_dir)) == ["pretrain"]

"""Training across processes: MultiWorkerMirroredStrategy on loopback, and
a run killed with SIGKILL that resumes from its last checkpoint."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300


@pytest.fixture(scope="module")
def data_dir(synthetic_data):
    return synthetic_data(num_train=8, num_val=1, height=40, width=40)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


_WORKER_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    from deeplab_dpc.training import trainer
    from deeplab_dpc.models import deeplab

    data_dir, logdir = sys.argv[1:3]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    model_options = deeplab.ModelOptions(
        num_classes=7, crop_size=(33, 33), depth_multiplier=0.35)
    train_options = trainer.TrainOptions(
        train_batch_size=4, training_number_of_steps=3, base_learning_rate=0.01,
        dataset_dir=data_dir, ignore_label=255, log_steps=1, seed=1)
    results = trainer.run(model_options, train_options, logdir, strategy)
    print("RESULT " + json.dumps({
        "losses": results["losses"], "step": results["step"],
        "replicas": strategy.num_replicas_in_sync,
        "chief": trainer.is_chief(strategy)}))
    """)


def test_two_workers_train_in_lock_step(data_dir, tmp_path, program_env):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    logdir = str(tmp_path / "log")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER_SCRIPT, data_dir, logdir],
            cwd=REPO,
            env=dict(
                program_env,
                TF_CONFIG=json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}
                ),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err[-3000:]
            line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
            outputs.append(json.loads(line[len("RESULT ") :]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    chief, other = outputs
    assert chief["chief"] and not other["chief"]
    assert chief["replicas"] == other["replicas"] == 2
    assert chief["step"] == other["step"] == 3
    assert len(chief["losses"]) == 3
    assert chief["losses"] == pytest.approx(other["losses"], rel=1e-6)
    # Only the chief's checkpoints remain; the other worker's are temporary.
    assert tf.train.latest_checkpoint(logdir).endswith("ckpt-3")
    assert not [n for n in os.listdir(logdir) if n.startswith("workertemp")]


def _train(data_dir, logdir, steps, env, **popen):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deeplab_dpc.train",
            f"--train_logdir={logdir}",
            "--dataset=synthetic",
            f"--dataset_dir={data_dir}",
            "--train_crop_size=33,33",
            "--depth_multiplier=0.35",
            "--train_batch_size=2",
            f"--training_number_of_steps={steps}",
            "--log_steps=1",
            "--save_interval_secs=0.001",
            "--seed=1",
        ],
        cwd=REPO,
        env=env,
        text=True,
        **popen,
    )


def test_killed_run_resumes_from_its_last_checkpoint(data_dir, tmp_path, program_env):
    logdir = str(tmp_path / "log")
    proc = _train(data_dir, logdir, 1000, program_env, stderr=subprocess.PIPE)
    try:
        for line in proc.stderr:
            if "step 3/1000" in line:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    latest = tf.train.latest_checkpoint(logdir)
    assert latest is not None, os.listdir(logdir)
    resumed_from = int(latest.rsplit("-", 1)[1])
    assert 1 <= resumed_from < 1000

    end = resumed_from + 2
    rerun = _train(data_dir, logdir, end, program_env, stderr=subprocess.PIPE)
    err = rerun.communicate(timeout=TIMEOUT)[1]
    assert rerun.returncode == 0, err[-3000:]
    assert f"at step {resumed_from}" in err
    steps = [l for l in err.splitlines() if f"/{end} loss" in l]
    assert len(steps) == 2 and f"step {end}/{end}" in steps[-1]
    assert tf.train.latest_checkpoint(logdir).endswith(f"ckpt-{end}")

"""Shared pieces of the search tests: a cheap real objective and a worker program.

The objective is a fixed analytic function of the cell: a quality score per
op plus a bonus for deeper graphs ("miou"), and the exact multiply-adds and
weights of the cell's convolutions on a 33x33x320 feature map with 256
filters ("madds", "params"). It costs microseconds, so the tests exercise the
strategies and the engine, not training.

Run as a program, this module is one search worker (see `main`).
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import optuna

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.search import engine
from deeplab_dpc.search import optuna_space
from deeplab_dpc.search import space

FEATURE_SIZE = 33
FEATURE_CHANNELS = 320
FILTERS = 256


def analytic_scores(cell) -> dict:
    """Returns {"miou", "madds", "params"} of a cell (a fixed function of it)."""
    quality, madds, params = [], 0, 0
    pixels = FEATURE_SIZE * FEATURE_SIZE
    for branch in cell:
        channels = FEATURE_CHANNELS if branch.input < 0 else FILTERS
        if branch.op == cell_spec.OP_CONV1X1:
            quality.append(0.5)
            weights, positions = channels * FILTERS, pixels
        elif branch.op == cell_spec.OP_SEP3X3:
            quality.append(
                1.0 - (abs(branch.rate[0] - 9) + abs(branch.rate[1] - 6)) / 48
            )
            weights, positions = 9 * channels + channels * FILTERS, pixels
        else:
            quality.append(0.4 + 0.05 * math.log2(branch.grid[0] * branch.grid[1]))
            weights = channels * FILTERS
            positions = branch.grid[0] * branch.grid[1]
        params += weights
        madds += weights * positions
    projection = len(cell) * FILTERS * FILTERS
    params += projection
    madds += projection * pixels
    depth = sum(branch.input >= 0 for branch in cell) / len(cell)
    miou = 0.2 + 0.6 * sum(quality) / len(quality) + 0.02 * depth
    return {"miou": miou, "madds": madds, "params": params}


def param_distance(cell_a, cell_b) -> int:
    """How many flattened parameters (ops and inputs) two cells differ in."""
    a, b = optuna_space.cell_to_params(cell_a), optuna_space.cell_to_params(cell_b)
    return sum(a[name] != b[name] for name in a)


def make_objective(train_log_dir=None, seconds=0.0, hang_marker=None):
    """An `engine.run_worker` objective over `analytic_scores`.

    Args:
        train_log_dir: if set, each training appends the cell's canonical key
            to `train_log_dir/train-<pid>.log` (to count trainings).
        seconds: float, how long each training takes.
        hang_marker: if set, the first training writes this process's pid to
            this file and then sleeps for 10 minutes (to be killed).
    """
    state = {"hang": hang_marker}

    def objective(cell, report):
        if train_log_dir:
            path = os.path.join(train_log_dir, f"train-{os.getpid()}.log")
            with open(path, "a", encoding="utf-8") as f:
                f.write(space.canonical_key(cell) + "\n")
        if state["hang"]:
            with open(state["hang"], "w", encoding="utf-8") as f:
                f.write(str(os.getpid()))
            state["hang"] = None
            time.sleep(600)
        scores = analytic_scores(cell)
        report(1, scores["miou"] * 0.5)
        time.sleep(seconds)
        report(2, scores["miou"])
        return dict(scores, seconds=seconds)

    return objective


def wait_for_workers(study, count, timeout=60.0) -> None:
    """A barrier through the storage: each worker marks itself, then waits."""
    study.set_user_attr(f"ready_{engine.worker_index()}", True)
    deadline = time.monotonic() + timeout
    while sum(key.startswith("ready_") for key in study.user_attrs) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} workers joined in {timeout} s")
        time.sleep(0.05)


def worker_argv(storage, **flags) -> list:
    """The command of one worker of this module, with `--name=value` flags."""
    argv = [sys.executable, os.path.abspath(__file__), f"--storage={storage}"]
    return argv + [f"--{name}={value}" for name, value in flags.items()]


def trainings(train_log_dir) -> dict:
    """{log file name: [canonical keys trained, in order]} of `make_objective`."""
    out = {}
    for name in sorted(os.listdir(train_log_dir)):
        if name.startswith("train-"):
            with open(os.path.join(train_log_dir, name), encoding="utf-8") as f:
                out[name] = f.read().split()
    return out


def summaries(log_dir) -> list:
    """The JSON summary line of each worker log written by `launch_workers`."""
    out = []
    for name in sorted(os.listdir(log_dir)):
        with open(os.path.join(log_dir, name), encoding="utf-8") as f:
            lines = [line for line in f if line.startswith("{")]
        out.append(json.loads(lines[-1]))
    return out


def main(argv=None) -> None:
    """One worker: joins a study and runs it to its total; prints a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study_name", default=engine.DEFAULT_STUDY_NAME)
    parser.add_argument("--strategy", default="random_local")
    parser.add_argument("--num_trials", type=int, required=True)
    parser.add_argument("--num_branches", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--train_log_dir")
    parser.add_argument("--hang_marker", help="worker 0 hangs in its first training")
    parser.add_argument("--barrier", type=int, default=0)
    parser.add_argument("--heartbeat_interval", type=int, default=1)
    parser.add_argument("--grace_period", type=int, default=2)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = engine.create_or_load_study(
        args.storage,
        args.study_name,
        args.strategy,
        num_branches=args.num_branches,
        seed=args.seed,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        pruner=optuna.pruners.NopPruner(),
    )
    if args.barrier:
        wait_for_workers(study, args.barrier)
    hang = args.hang_marker if engine.worker_index() == 0 else None
    stats = engine.run_worker(
        study,
        make_objective(args.train_log_dir, args.seconds, hang),
        num_trials_total=args.num_trials,
        poll_seconds=0.1,
    )
    threads = {k: os.environ.get(k) for k in engine.thread_env(1)}
    summary = {
        "index": engine.worker_index(),
        "stats": dataclasses.asdict(stats),
        "threads": threads,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

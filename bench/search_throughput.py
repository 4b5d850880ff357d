r"""Search throughput: completed proxy trials per hour with 1 and 2 local workers.

  .venv/bin/python bench/search_throughput.py [--quick] [--output_json=PATH]

Prepares a search directory once (the built-in data set, a briefly
pretrained MobileNet-v2 backbone, its feature cache) with the search program
itself, then runs studies of `--trials` trials with the search program's
`--mode=search`, alternating `--num_workers=1` and `--num_workers=2`, for
`--rounds` rounds, each a new study in the same storage. A study's rate is
its completed trials over the span from its first trial's start to its last
trial's end, read back from the study (process start-up, imports and model
tracing before the first trial are excluded; each trial's own model building
is included). Pruning is off, so every trial runs its `--proxy_steps`.

Beside the rates, the cores each setting keeps busy: the CPU time of the
search program's processes (user + system, from `getrusage` of the
waited-for children) over the program's wall time, start-up included; idle
cores with 2 workers point at waiting (locks, threads) rather than work.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _BENCH)

import benchlib  # pylint: disable=wrong-import-position

_DEMO_LIKE = (
    "--train_crop_size=129,129",
    "--train_batch_size=8",
    "--base_learning_rate=0.02",
    "--proxy_batch_size=8",
    "--proxy_learning_rate=0.05",
    "--pruner=none",
    "--strategy=random_local",
    "--target_crop_size=513,513",
    "--seed=1",
)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="Trials per study.")
    parser.add_argument("--rounds", type=int, default=2, help="Studies per setting.")
    parser.add_argument("--proxy_steps", type=int, default=100, help="Steps a trial.")
    parser.add_argument("--pretrain_steps", type=int, default=200, help="Backbone.")
    parser.add_argument("--num_images", type=int, default=48, help="Train images.")
    parser.add_argument("--quick", action="store_true", help="Tiny smoke run.")
    parser.add_argument("--output_json", default=None, help="Result file.")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.rounds, args.proxy_steps = 2, 1, 10
        args.pretrain_steps, args.num_images = 10, 8
    return args


def _program(search_dir, data_dir, *flags):
    """Runs the search program; its output goes to search_dir/bench.log."""
    command = [
        sys.executable,
        "-m",
        "deeplab_dpc.search",
        f"--search_dir={search_dir}",
        "--dataset=synthetic",
        f"--dataset_dir={data_dir}",
        *_DEMO_LIKE,
        *flags,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(os.path.join(search_dir, "bench.log"), "a") as log:
        status = subprocess.run(command, stdout=log, stderr=log, env=env, check=False)
    if status.returncode:
        raise RuntimeError(
            f"{' '.join(command)} failed ({status.returncode}); see "
            f"{os.path.join(search_dir, 'bench.log')}"
        )


def prepare(work_dir, args):
    """The data set, pretrained backbone and feature cache."""
    from deeplab_dpc.data import synthetic  # pylint: disable=import-outside-toplevel

    data_dir = os.path.join(work_dir, "data")
    search_dir = os.path.join(work_dir, "search")
    os.makedirs(search_dir)
    synthetic.build(data_dir, num_train=args.num_images, num_val=16, seed=0)
    _program(
        search_dir,
        data_dir,
        "--mode=pretrain",
        f"--pretrain_steps={args.pretrain_steps}",
    )
    _program(search_dir, data_dir, "--mode=cache")
    return data_dir, search_dir


def study_rate(search_dir, study_name):
    """(completed trials, trials per hour over the study's span)."""
    import optuna  # pylint: disable=import-outside-toplevel

    storage = f"sqlite:///{os.path.join(search_dir, 'study.db')}"
    study = optuna.load_study(study_name=study_name, storage=storage)
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.COMPLETE
    ]
    if not done:
        raise RuntimeError(f"study {study_name} completed no trial")
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    return len(done), len(done) * 3600.0 / (end - start).total_seconds()


def _children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(data_dir, search_dir, args):
    """Trials per hour and cores busy for each worker count, alternating.

    Returns:
      ({workers: [trials per hour per study]}, {workers: [cores busy]}).
    """
    rates, busy = {1: [], 2: []}, {1: [], 2: []}
    for round_index in range(args.rounds):
        for workers in (1, 2):
            name = f"throughput-w{workers}-r{round_index}"
            start, cpu = time.perf_counter(), _children_cpu_seconds()
            _program(
                search_dir,
                data_dir,
                "--mode=search",
                f"--study_name={name}",
                f"--num_trials={args.trials}",
                f"--num_workers={workers}",
                f"--proxy_steps={args.proxy_steps}",
            )
            wall = time.perf_counter() - start
            busy[workers].append((_children_cpu_seconds() - cpu) / wall)
            done, rate = study_rate(search_dir, name)
            rates[workers].append(rate)
            print(
                f"round {round_index + 1}: {workers} worker(s): {done} trials, "
                f"{rate:.1f} trials/h ({wall:.0f} s wall with start-up, "
                f"{busy[workers][-1]:.2f} cores busy)",
                flush=True,
            )
    return rates, busy


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as work_dir:
        data_dir, search_dir = prepare(work_dir, args)
        rates, busy = measure(data_dir, search_dir, args)
    one, two = benchlib.median(rates[1]), benchlib.median(rates[2])
    busy_one, busy_two = benchlib.median(busy[1]), benchlib.median(busy[2])
    detail = (
        f"{args.trials} trials a study, {args.proxy_steps} proxy steps at 129x129, "
        f"batch 8, MobileNet-v2 features; median of {args.rounds} studies, "
        "alternating 1 and 2 workers"
    )
    results = [
        benchlib.figure("trials/hour, 1 worker", one, "trials/h", detail),
        benchlib.figure("trials/hour, 2 workers", two, "trials/h", detail),
        benchlib.figure("2 workers / 1 worker", two / one, "x", "same run"),
        benchlib.figure(
            "cores busy, 1 worker",
            busy_one,
            "cores",
            "CPU seconds of the search processes / wall seconds, start-up "
            "included; median over the studies",
        ),
        benchlib.figure(
            "cores busy, 2 workers",
            busy_two,
            "cores",
            "as above",
        ),
        benchlib.figure(
            "search processes peak memory",
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
            "MB",
            "largest peak RSS of one process among the pretrain, cache and search "
            "processes (ru_maxrss of the waited-for descendants)",
        ),
    ]
    print(benchlib.format_figures(results))
    if args.output_json:
        benchlib.write_result(args.output_json, "search_throughput", results, sys.argv)


if __name__ == "__main__":
    main()

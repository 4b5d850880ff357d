r"""Search throughput: completed proxy trials per hour with 1 and 2 local workers.

  .venv/bin/python bench/search_throughput.py [--quick] [--output_json=PATH]

Prepares a search directory once (the built-in data set, a briefly
pretrained MobileNet-v2 backbone, its feature cache) with the search program
itself, then runs studies of `--trials` trials with the search program's
`--mode=search` in three settings, alternating, for `--rounds` rounds, each
a new study in the same storage:

  1 worker            `--num_workers=1`: one process, TensorFlow's own
                      thread counts on both cores;
  1 worker on 1 core  the same, the program pinned to one core (CPU
                      affinity, as `taskset -c`; TensorFlow sizes its thread
                      pools to it);
  2 workers           `--num_workers=2`: two worker processes, each with one
                      core's threads (`engine.thread_env`).

The 2-workers / 1-worker ratio is what a second worker adds on this machine.
When sharing a study costs nothing it is 2 / (the speed-up one worker gets
from its second thread), so it falls as TensorFlow uses the second core
better. The 2-workers / 1-worker-on-1-core ratio is the scaling per core:
what sharing a study (storage, waits, duplicate cells) and running side by
side (memory, caches) cost.

The settings do the same work: every study is a uniform random search
(`--strategy=random_local --explore_prob=1`, the paper's random phase), and
a cell sampler draws trial n's cell from (`--seed`, n) alone whatever the
number of workers, so within a round the three studies train the same
cells; the rounds' seeds differ (round r: `--seed=r`). Proxy trials differ
in cost with their cells (atrous rates below the feature size, pooling), so
a comparison of studies that trained different cells (as with local search,
which follows each study's own results) measures the cells as much as the
workers. Each ratio is the median over the rounds of the round's ratio: a
round's studies run back to back on the same cells, so a slow spell of this
(shared, noisy) machine touches the settings compared alike.

Pruning is off, so every trial runs its `--proxy_steps`. Two rates are read
back from each study (process start-up and imports are outside both; each
trial's own model building and tracing are inside):

  study span    completed trials over the span from the first trial's start
                to the last trial's end;
  steady state  the sum over the workers (each trial records its process,
                `engine.ATTR_WORKER`) of the worker's trials after its first
                over the span from its first trial's end to its last trial's
                end: the pace of a long search. It leaves out each process's
                first trial, which pays one-time costs (first graph
                optimisations, XLA and oneDNN kernel compilation, the cache's
                first reads) that a search of hundreds of trials amortises,
                and the wait at the end of a short study for the last worker
                to finish. With 2 workers a short study pays these twice per
                half as many trials, so the study-span ratio understates
                what a second worker adds to a long search.

Beside the rates, the cores each setting keeps busy: the CPU time of the
search program's processes (user + system, from `getrusage` of the
waited-for children) over the program's wall time, start-up included; idle
cores with 2 workers point at waiting (locks, threads) rather than work.
"""

import argparse
import os
import resource
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
# Uniform samples only: the same cells in every setting (module docstring).
_SAME_CELLS = ("--explore_prob=1",)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="Trials per study.")
    parser.add_argument("--rounds", type=int, default=5, help="Studies per setting.")
    parser.add_argument("--proxy_steps", type=int, default=100, help="Steps a trial.")
    parser.add_argument("--pretrain_steps", type=int, default=200, help="Backbone.")
    parser.add_argument("--num_images", type=int, default=48, help="Train images.")
    parser.add_argument("--quick", action="store_true", help="Tiny smoke run.")
    parser.add_argument("--output_json", default=None, help="Result file.")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.rounds, args.proxy_steps = 4, 1, 10
        args.pretrain_steps, args.num_images = 10, 8
    return args


def _program(search_dir, data_dir, *flags, preexec_fn=None):
    """Runs the search program with the demo's settings (`benchlib.search_program`)."""
    benchlib.search_program(
        search_dir, data_dir, [*_DEMO_LIKE, *flags], preexec_fn=preexec_fn
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
    """(completed trials, trials/h over the study's span, steady trials/h).

    Raises:
      RuntimeError: when the study completed no trial, or no worker 2.
    """
    import optuna  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.search import engine  # pylint: disable=import-outside-toplevel

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
    span_rate = len(done) * 3600.0 / (end - start).total_seconds()
    return len(done), span_rate, steady_rate(done, engine.ATTR_WORKER)


def steady_rate(trials, worker_attr):
    """Sum over workers of (trials after the first) / (first end to last end).

    Args:
      trials: completed `optuna.trial.FrozenTrial`s of one study.
      worker_attr: the user attribute naming the trial's process.

    Returns:
      trials per hour.

    A worker with a single trial has no pace to read and adds nothing (an
    underestimate, which only short studies risk).

    Raises:
      RuntimeError: when no worker completed 2 trials.
    """
    ends = {}
    for t in trials:
        ends.setdefault(t.user_attrs[worker_attr], []).append(t.datetime_complete)
    paced = [sorted(times) for times in ends.values() if len(times) > 1]
    if not paced:
        raise RuntimeError(
            f"no worker of {len(ends)} completed 2 trials; the steady rate needs "
            "them (raise --trials)"
        )
    return sum(
        (len(times) - 1) * 3600.0 / (times[-1] - times[0]).total_seconds()
        for times in paced
    )


def _children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _one_core():
    """Pins the calling (child) process to one of this process's cores."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


# (name, --num_workers, pin the program to one core).
SETTINGS = (
    ("1 worker", 1, False),
    ("1 worker on 1 core", 1, True),
    ("2 workers", 2, False),
)


def measure(data_dir, search_dir, args):
    """Trials per hour and cores busy for each setting, alternating.

    Returns:
      ({setting: [trials/h over each study's span]}, {setting: [steady
      trials/h per study]}, {setting: [cores busy]}), keyed by the names of
      `SETTINGS`.
    """
    rates, steady, busy = ({name: [] for name, _, _ in SETTINGS} for _ in range(3))
    for round_index in range(args.rounds):
        for setting, workers, pinned in SETTINGS:
            name = f"throughput-{setting.replace(' ', '-')}-r{round_index}"
            start, cpu = time.perf_counter(), _children_cpu_seconds()
            _program(
                search_dir,
                data_dir,
                "--mode=search",
                f"--study_name={name}",
                f"--num_trials={args.trials}",
                f"--num_workers={workers}",
                f"--proxy_steps={args.proxy_steps}",
                *_SAME_CELLS,
                f"--seed={round_index + 1}",
                preexec_fn=_one_core if pinned else None,
            )
            wall = time.perf_counter() - start
            busy[setting].append((_children_cpu_seconds() - cpu) / wall)
            done, rate, pace = study_rate(search_dir, name)
            rates[setting].append(rate)
            steady[setting].append(pace)
            print(
                f"round {round_index + 1}: {setting}: {done} trials, "
                f"{rate:.1f} trials/h over the study, {pace:.1f} steady "
                f"({wall:.0f} s wall with start-up, {busy[setting][-1]:.2f} "
                "cores busy)",
                flush=True,
            )
    return rates, steady, busy


def _round_ratio(name, numerators, denominators, of_medians, meaning):
    """The median of the rounds' ratios (each round's studies ran back to back
    on the same cells), the per-round values and the ratio of medians in its
    description."""
    ratios = [a / b for a, b in zip(numerators, denominators)]
    return benchlib.figure(
        name,
        benchlib.median(ratios),
        "x",
        f"median of the rounds' ratios ({', '.join(f'{r:.2f}' for r in ratios)}; "
        f"ratio of the medians {of_medians:.2f}); {meaning}",
    )


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as work_dir:
        data_dir, search_dir = prepare(work_dir, args)
        rates, steady, busy = measure(data_dir, search_dir, args)
    span = {name: benchlib.median(values) for name, values in rates.items()}
    pace = {name: benchlib.median(values) for name, values in steady.items()}
    cores = {name: benchlib.median(values) for name, values in busy.items()}
    detail = (
        f"{args.trials} trials a study, {args.proxy_steps} proxy steps at 129x129, "
        f"batch 8, MobileNet-v2 features; uniform random cells, the same "
        f"cells in every setting of a round; median of {args.rounds} studies, "
        "the settings alternating"
    )
    steady_detail = (
        "each worker's trials after its first over its first to last trial end, "
        "summed over the workers; " + detail
    )
    results = []
    for name, _, pinned in SETTINGS:
        results.append(
            benchlib.figure(
                f"steady trials/hour, {name}",
                pace[name],
                "trials/h",
                ("pinned to one core (taskset-like affinity); " if pinned else "")
                + steady_detail,
            )
        )
    results += [
        _round_ratio(
            "steady: 2 workers / 1 worker",
            steady["2 workers"],
            steady["1 worker"],
            pace["2 workers"] / pace["1 worker"],
            "the pace of a long search, the one worker using both cores (the "
            "goal's figure)",
        ),
        _round_ratio(
            "steady: 2 workers / 1 worker on 1 core",
            steady["2 workers"],
            steady["1 worker on 1 core"],
            pace["2 workers"] / pace["1 worker on 1 core"],
            "scaling per core (each of the 2 workers has one core's threads), "
            "what the workers' sharing of a study costs",
        ),
    ]
    for name, _, _ in SETTINGS:
        results.append(
            benchlib.figure(
                f"study-span trials/hour, {name}",
                span[name],
                "trials/h",
                "completed trials over the first start to the last end, first "
                "trials and the last worker's wait included; " + detail,
            )
        )
    results.append(
        benchlib.figure(
            "study-span: 2 workers / 1 worker",
            span["2 workers"] / span["1 worker"],
            "x",
            f"same run; a study of {args.trials} trials",
        )
    )
    for name, _, _ in SETTINGS:
        results.append(
            benchlib.figure(
                f"cores busy, {name}",
                cores[name],
                "cores",
                "CPU seconds of the search processes / wall seconds, start-up "
                "included; median over the studies",
            )
        )
    results.append(
        benchlib.figure(
            "search processes peak memory",
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
            "MB",
            "largest peak RSS of one process among the pretrain, cache and search "
            "processes (ru_maxrss of the waited-for descendants)",
        )
    )
    print(benchlib.format_figures(results))
    if args.output_json:
        benchlib.write_result(args.output_json, "search_throughput", results, sys.argv)


if __name__ == "__main__":
    main()

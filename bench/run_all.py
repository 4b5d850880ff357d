r"""Runs every benchmark of bench/ and writes bench/results.json and results.md.

  .venv/bin/python bench/run_all.py [--quick] [--only=a,b] [--output_dir=bench]
      [--reuse=NAME=JSON ...]

`make bench` calls this after setting up the peers' virtual environment
(bench/peers/setup.sh). Each benchmark runs as its own process, one after
the other (they would contend for the cores), writing its figures with the
command that produced them; a failed benchmark is reported in both files
and makes the exit status non-zero, and the others still run. Both files
are written under temporary names and renamed. `--only=a,b` reruns those
benchmarks and keeps the others' results already in `--output_dir` (when
they were run with the same `--quick`), so one figure can be remeasured
without the whole suite; each section says when it ran. `--reuse=NAME=JSON`
takes a benchmark's result from the `--output_json` of a run made by hand
instead of running it (search_efficacy takes up to 3 hours and resumes in
its own `--work_dir`, so it is often run on its own, then put in here with
`--only=search_efficacy --reuse=search_efficacy=<its JSON>`).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _BENCH)

import benchlib  # pylint: disable=wrong-import-position

# In the order they run: the peak first (the others are fractions of it).
BENCHMARKS = (
    "fma_peak",
    "inference",
    "tflite_latency",
    "train_step",
    "float32_math_parity",
    "levers",
    "proxy_saving",
    "search_throughput",
    "input_pipeline",
    # Up to 3 hours on 2 cores: proxy fidelity and search efficacy.
    "search_efficacy",
)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smoke-test sizes.")
    parser.add_argument("--only", default="", help="Comma-separated benchmarks.")
    parser.add_argument("--output_dir", default=_BENCH, help="Where results go.")
    parser.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="Take NAME's result from JSON, the --output_json of a run made by "
        "hand (e.g. a long benchmark resumed in its own --work_dir), instead of "
        "running it. Repeatable.",
    )
    args = parser.parse_args(argv)
    args.only = [name for name in args.only.split(",") if name]
    unknown = sorted(set(args.only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {list(BENCHMARKS)}")
    reuse = {}
    for item in args.reuse:
        name, sep, path = item.partition("=")
        if not sep or not path or name not in BENCHMARKS:
            parser.error(
                f"--reuse={item}: expected NAME=JSON with NAME one of "
                f"{list(BENCHMARKS)}"
            )
        reuse[name] = path
    args.reuse = reuse
    return args


def load_reused(name, path):
    """`name`'s result dict from `path`, a benchmark's --output_json file.

    Raises:
      SystemExit: naming the file, when it is missing, is not JSON or holds
        another benchmark's result or no figures.
    """
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"error: --reuse={name}={path}: cannot read it ({e})")
    if not isinstance(result, dict) or result.get("benchmark") != name:
        got = result.get("benchmark") if isinstance(result, dict) else None
        sys.exit(f"error: --reuse={name}={path}: it holds {got!r}'s result")
    if not isinstance(result.get("figures"), list) or not result["figures"]:
        sys.exit(f"error: --reuse={name}={path}: it has no figures")
    result["reused_from"] = path
    return result


def run_one(name, work_dir, quick, onednn="unknown"):
    """Runs one benchmark; its result dict, or one with an "error".

    `onednn` ("on", "off", with the variable when set: `benchlib.onednn_state`)
    is recorded with the result, as each process of the benchmark ran.
    """
    output = os.path.join(work_dir, f"{name}.json")
    command = [sys.executable, os.path.join(_BENCH, f"{name}.py")]
    command += [f"--output_json={output}"] + (["--quick"] if quick else [])
    # Shown as one reruns it by hand: from the repository, without the
    # temporary result file.
    shown = benchlib.command_line(
        [os.path.join("bench", f"{name}.py")] + (["--quick"] if quick else [])
    )
    print(f"=== {name}: {shown}", flush=True)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    start = time.perf_counter()
    status = subprocess.run(command, check=False, cwd=os.path.dirname(_BENCH))
    seconds = time.perf_counter() - start
    if status.returncode == 0 and os.path.exists(output):
        with open(output) as f:
            result = json.load(f)
    else:
        result = {
            "benchmark": name,
            "command": shown,
            "error": f"exit status {status.returncode}; its output is above",
            "figures": [],
        }
    result["command"] = shown
    result["onednn"] = onednn
    result["seconds"] = seconds
    result["started"] = started
    print(f"=== {name}: {seconds:.0f} s", flush=True)
    return result


def merge(previous, results, quick):
    """`results` in `BENCHMARKS` order, plus `previous` ones not rerun.

    Args:
      previous: the summary dict of an earlier results.json, or None.
      results: this run's result dicts.
      quick: bool, this run's `--quick`; earlier results of the other kind
        are dropped, not mixed in.
    """
    by_name = {}
    if previous is not None and previous.get("quick") == quick:
        by_name = {r["benchmark"]: r for r in previous.get("benchmarks", [])}
    by_name.update({r["benchmark"]: r for r in results})
    return [by_name[name] for name in BENCHMARKS if name in by_name]


def _previous(output_dir):
    path = os.path.join(output_dir, "results.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"{path} is not a results file ({e}); move it away to rerun")


def markdown(results, machine, started):
    """The results as Markdown: one section per benchmark."""
    lines = [
        "# Benchmark results",
        "",
        f"{started} on {machine['cpu']} ({machine['cores']} cores; "
        f"{', '.join(machine.get('flags') or ['no listed flags'])}). "
        "Every figure comes from the command above its table; ratios are "
        "measured in one run, alternating the compared things. Each section "
        "names TensorFlow's oneDNN state in its run (ours and Model Garden's "
        "processes alike; docs/portability.md).",
    ]
    for result in results:
        lines += ["", f"## {result['benchmark']}", "", f"`{result['command']}`", ""]
        own = result.get("machine") or {}
        if own.get("cpu") and own["cpu"] != machine["cpu"]:
            # A section rerun (or run by hand) on another machine says so.
            lines += [
                f"On {own['cpu']} ({own.get('cores', '?')} cores), not the "
                "machine named above.",
                "",
            ]
        if "reused_from" in result:
            lines += [
                "Run by hand with the command above (run_all took its result "
                f"file); oneDNN {result.get('onednn', 'not recorded')}.",
                "",
            ]
        elif "started" in result:
            lines += [
                f"Run {result['started']}, {result['seconds']:.0f} s, "
                f"oneDNN {result.get('onednn', 'not recorded')}.",
                "",
            ]
        if "error" in result:
            lines.append(f"**Failed**: {result['error']}.")
            continue
        lines += ["| figure | value | unit | how |", "|---|---:|---|---|"]
        for fig in result["figures"]:
            value = fig["value"]
            shown = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
            lines.append(
                f"| {fig['name']} | {shown} | {fig['unit']} | {fig['detail']} |"
            )
        if result.get("details"):
            lines += ["", result["details"].strip()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    names = args.only or list(BENCHMARKS)
    reused = [load_reused(name, path) for name, path in args.reuse.items()]
    names = [name for name in names if name not in args.reuse]
    started = datetime.datetime.now().isoformat(timespec="seconds")
    partial = bool(args.only) or bool(args.reuse)
    previous = _previous(args.output_dir) if partial else None
    onednn = benchlib.onednn_state()
    print(f"oneDNN {onednn} (every benchmark process inherits it)", flush=True)
    with tempfile.TemporaryDirectory() as work_dir:
        results = [run_one(name, work_dir, args.quick, onednn) for name in names]
    failed = [r["benchmark"] for r in results if "error" in r]
    results += reused
    if partial:
        results = merge(previous, results, args.quick)
    machine = benchlib.machine()
    if partial and previous is not None and previous.get("quick") == args.quick:
        # The header keeps the full run's date and machine.
        started = previous.get("started", started)
        machine = previous.get("machine", machine)
    os.makedirs(args.output_dir, exist_ok=True)
    summary = {
        "started": started,
        "quick": args.quick,
        "machine": machine,
        "benchmarks": results,
    }
    benchlib.write_text(
        os.path.join(args.output_dir, "results.json"), json.dumps(summary, indent=1)
    )
    benchlib.write_text(
        os.path.join(args.output_dir, "results.md"),
        markdown(results, machine, started),
    )
    print(f"wrote {args.output_dir}/results.json and results.md", flush=True)
    if failed:
        sys.exit(f"benchmarks failed: {failed}")


if __name__ == "__main__":
    main()

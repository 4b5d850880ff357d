r"""Runs every benchmark of bench/ and writes bench/results.json and results.md.

  .venv/bin/python bench/run_all.py [--quick] [--only=a,b] [--output_dir=bench]

`make bench` calls this after setting up the peers' virtual environment
(bench/peers/setup.sh). Each benchmark runs as its own process, one after
the other (they would contend for the cores), writing its figures with the
command that produced them; a failed benchmark is reported in both files
and makes the exit status non-zero, and the others still run. Both files
are written under temporary names and renamed.
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
    "levers",
    "proxy_saving",
    "search_throughput",
    "input_pipeline",
)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smoke-test sizes.")
    parser.add_argument("--only", default="", help="Comma-separated benchmarks.")
    parser.add_argument("--output_dir", default=_BENCH, help="Where results go.")
    args = parser.parse_args(argv)
    args.only = [name for name in args.only.split(",") if name]
    unknown = sorted(set(args.only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {list(BENCHMARKS)}")
    return args


def run_one(name, work_dir, quick):
    """Runs one benchmark; its result dict, or one with an "error"."""
    output = os.path.join(work_dir, f"{name}.json")
    command = [sys.executable, os.path.join(_BENCH, f"{name}.py")]
    command += [f"--output_json={output}"] + (["--quick"] if quick else [])
    print(f"=== {name}: {benchlib.command_line(command[1:])}", flush=True)
    start = time.perf_counter()
    status = subprocess.run(command, check=False, cwd=os.path.dirname(_BENCH))
    seconds = time.perf_counter() - start
    if status.returncode == 0 and os.path.exists(output):
        with open(output) as f:
            result = json.load(f)
    else:
        result = {
            "benchmark": name,
            "command": benchlib.command_line(command[1:]),
            "error": f"exit status {status.returncode}; its output is above",
            "figures": [],
        }
    result["seconds"] = seconds
    print(f"=== {name}: {seconds:.0f} s", flush=True)
    return result


def markdown(results, machine, started):
    """The results as Markdown: one section per benchmark."""
    lines = [
        "# Benchmark results",
        "",
        f"{started} on {machine['cpu']} ({machine['cores']} cores). "
        "Every figure comes from the command above its table; ratios are "
        "measured in one run, alternating the compared things.",
    ]
    for result in results:
        lines += ["", f"## {result['benchmark']}", "", f"`{result['command']}`", ""]
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
    return "\n".join(lines) + "\n"


def _write(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    names = args.only or list(BENCHMARKS)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory() as work_dir:
        results = [run_one(name, work_dir, args.quick) for name in names]
    machine = benchlib.machine()
    os.makedirs(args.output_dir, exist_ok=True)
    summary = {
        "started": started,
        "quick": args.quick,
        "machine": machine,
        "benchmarks": results,
    }
    _write(os.path.join(args.output_dir, "results.json"), json.dumps(summary, indent=1))
    _write(
        os.path.join(args.output_dir, "results.md"),
        markdown(results, machine, started),
    )
    failed = [r["benchmark"] for r in results if "error" in r]
    print(f"wrote {args.output_dir}/results.json and results.md", flush=True)
    if failed:
        sys.exit(f"benchmarks failed: {failed}")


if __name__ == "__main__":
    main()

r"""TFLite in LiteRT: float32 and int8 files of our models and Model Garden's.

  .venv/bin/python bench/tflite_latency.py [--quick] [--peak_json=PATH]
      [--files_dir=DIR] [--output_json=PATH]

The models of bench/inference.py (ours_aspp, model_garden, ours_dpc), 513x513,
batch 1. Each model's worker (`peer_process`, one process per model, one
model at a time) writes its files: ours through
`deeplab_dpc.export.tflite` (TF 2.21), Model Garden's through TF 2.20's
converter in its worker; "float32" is the plain conversion, "int8" the
full-integer one (int8 input and logits, builtin int8 ops only) calibrated
on 8 random images. This process then runs every file in LiteRT
(`ai_edge_litert`, XNNPACK, which it applies by default) without TensorFlow
loaded, at each of `--threads` (1 and 2): all files in alternating rounds
of `--runs` timed `invoke()` calls after `--warmup` untimed ones, the input
set once outside the timing; each figure is the median of all its calls.
GFLOP/s = 2 x the model's MAdds (from its worker's "info", as in
bench/inference.py) / latency; for the float32 files also as a fraction of
the fp32 peak of bench/fma_peak.py (`benchlib.fp32_peak`: `--peak_json`,
fma_peak.json beside `--output_json`, or measured now). Peak memory is
`litert_runner.peak_memory`: one fresh NumPy + LiteRT process per file, its
peak RSS above the size before loading. Ours over Model Garden's float32 is
given as a latency ratio and as a GFLOP/s ratio (the goal's measure), each
with the spread of its per-round ratios.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from deeplab_dpc.export import litert_runner

import benchlib
import peer_process

BENCHMARK = "tflite_latency"
VARIANTS = ("float32", "int8")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="129x129, 2 rounds")
    parser.add_argument("--crop", type=int, default=513, help="square input size")
    parser.add_argument("--threads", default="1,2", help="LiteRT thread counts")
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds")
    parser.add_argument("--runs", type=int, default=5, help="invokes per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed invokes")
    parser.add_argument(
        "--peak_json",
        help="fma_peak.py's JSON (default: fma_peak.json beside --output_json if "
        "there, else measured now)",
    )
    parser.add_argument(
        "--files_dir", help="keep the .tflite files here (default: a temporary dir)"
    )
    parser.add_argument("--output_json", help="write the result JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.crop, args.rounds, args.runs, args.warmup = 129, 2, 2, 1
    try:
        args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--threads must be comma-separated ints, got {args.threads!r}")
    if not args.threads or min(args.threads) < 1:
        parser.error("--threads needs thread counts >= 1")
    if (args.crop - 1) % peer_process.OUTPUT_STRIDE or args.crop < 1:
        parser.error(
            f"--crop must be {peer_process.OUTPUT_STRIDE}*k+1, got {args.crop}"
        )
    if min(args.rounds, args.runs) < 1 or args.warmup < 0:
        parser.error("--rounds and --runs must be >= 1, --warmup >= 0")
    return args


def write_files(args, directory):
    """Has each model's worker write its files; returns their MAdds and paths.

    Returns:
      (madds, files): dict model -> MAdds, dict (model, variant) -> path.
    """
    madds, files = {}, {}
    for name in peer_process.MODELS:
        with peer_process.start(name, crop=args.crop) as worker:
            madds[name] = worker.call("info")["madds"]
            for variant in VARIANTS:
                path = os.path.join(directory, f"{name}_{variant}.tflite")
                worker.call("tflite", path=path, quantize=variant)
                files[name, variant] = path
        print(f"wrote the {name} files", file=sys.stderr)
    return madds, files


def _timer(interpreter, runs):
    def run():
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            interpreter.invoke()
            times.append((time.perf_counter() - start) * 1000.0)
        return times

    return run


def time_files(files, threads, args):
    """Invoke latencies (ms) of every file at one thread count, by round.

    Returns:
      dict (model, variant) -> list of `args.rounds` lists of `args.runs` ms.
    """
    timers = {}
    for index, (key, path) in enumerate(files.items()):
        runner = litert_runner.Runner(path, num_threads=threads)
        shape = [d if d > 0 else 1 for d in runner.input_shape[1:]]
        rng = np.random.default_rng(index)
        runner.set_input(rng.uniform(0.0, 255.0, shape).astype(np.float32))
        for _ in range(args.warmup):
            runner.interpreter.invoke()
        timers[key] = _timer(runner.interpreter, args.runs)
    return benchlib.alternate(timers, args.rounds)


def _median_ms(rounds):
    return benchlib.median([ms for round_ms in rounds for ms in round_ms])


def figures_of(madds, files, latencies, memory, peak, args):
    """The figures; `latencies`: threads -> `time_files`' rounds."""
    timing = (
        f"batch 1, {args.crop}x{args.crop}, LiteRT (XNNPACK) invoke(); median of "
        f"{args.rounds * args.runs} calls in {args.rounds} rounds of {args.runs} "
        f"alternating the {len(files)} files, {args.warmup} warm-up calls"
    )
    figures = []
    for (name, variant), path in files.items():
        prefix = f"{name}_{variant}"
        figures.append(
            benchlib.figure(
                f"{prefix}_file_size", os.path.getsize(path) / 2**20, "MB", "MiB"
            )
        )
        for threads in args.threads:
            ms = _median_ms(latencies[threads][name, variant])
            gflops = 2.0 * madds[name] / (ms / 1000.0) / 1e9
            figures += [
                benchlib.figure(
                    f"{prefix}_latency_{threads}t",
                    ms,
                    "ms",
                    f"{threads} threads; {timing}",
                ),
                benchlib.figure(
                    f"{prefix}_gflops_{threads}t",
                    gflops,
                    "GFLOP/s",
                    f"2 x {madds[name] / 1e9:.3f} GMAdds / latency (float-model MAdds)",
                ),
            ]
            if variant == "float32":
                figures.append(
                    benchlib.figure(
                        f"{prefix}_fraction_of_peak_{threads}t",
                        gflops / peak,
                        "x",
                        f"GFLOP/s / fp32_peak ({peak:.1f} GFLOP/s, bench/fma_peak.py)",
                    )
                )
        figures.append(
            benchlib.figure(
                f"{prefix}_peak_rss",
                memory[name, variant],
                "MB",
                f"litert_runner.peak_memory at {max(args.threads)} threads: load, "
                f"allocate, one invoke; peak RSS above the size before loading (MiB)",
            )
        )
    for threads in args.threads:
        for name in peer_process.MODELS:
            figures.append(
                benchlib.figure(
                    f"{name}_int8_speedup_{threads}t",
                    _median_ms(latencies[threads][name, "float32"])
                    / _median_ms(latencies[threads][name, "int8"]),
                    "x",
                    "float32 latency / int8 latency, same run",
                )
            )
        baseline = peer_process.BASELINE
        base_rounds = latencies[threads][baseline, "float32"]
        for name in peer_process.MODELS:
            if name == baseline:
                continue
            rounds = latencies[threads][name, "float32"]
            latency_ratio = _median_ms(rounds) / _median_ms(base_rounds)
            per_round = benchlib.paired_ratios(rounds, base_rounds)
            madds_ratio = madds[name] / madds[baseline]
            figures += [
                benchlib.figure(
                    f"{name}_over_{baseline}_float32_latency_{threads}t",
                    latency_ratio,
                    "x",
                    "ratio of float32 medians, same run (below 1: ours faster); "
                    + benchlib.describe_ratios(per_round),
                ),
                benchlib.figure(
                    f"{name}_over_{baseline}_float32_gflops_{threads}t",
                    madds_ratio / latency_ratio,
                    "x",
                    f"ratio of float32 GFLOP/s, same run (MAdds ratio "
                    f"{madds_ratio:.3f} / latency ratio; at least 1: ours computes "
                    f"as fast); "
                    + benchlib.describe_ratios([madds_ratio / r for r in per_round]),
                ),
            ]
    return figures


def measure(args, directory):
    peak = benchlib.fp32_peak(
        args.peak_json, max(args.threads), args.quick, args.output_json
    )["value"]
    madds, files = write_files(args, directory)
    latencies = {threads: time_files(files, threads, args) for threads in args.threads}
    memory = {
        key: litert_runner.peak_memory(path, num_threads=max(args.threads))[
            "peak_rss_delta_mib"
        ]
        for key, path in files.items()
    }
    return figures_of(madds, files, latencies, memory, peak, args)


def main(argv):
    args = parse_args(argv)
    peer_process.exit_without_peers()
    if args.files_dir:
        os.makedirs(args.files_dir, exist_ok=True)
        figures = measure(args, args.files_dir)
    else:
        with tempfile.TemporaryDirectory() as directory:
            figures = measure(args, directory)
    benchlib.report(BENCHMARK, figures, args.output_json)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

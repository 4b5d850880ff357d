r"""This CPU's achievable fp32 peak, measured with large matmuls in TensorFlow.

  .venv/bin/python bench/fma_peak.py [--quick] [--threads=2] [--bfloat16]
      [--output_json=PATH]

Method: square float32 `tf.linalg.matmul` of size N (2*N^3 FLOPs, N in
`--sizes`) inside a `tf.function`, TensorFlow's intra-op threads set to
`--threads` (inter-op 1: one op at a time). Each size is warmed up, then
timed `--repeats` times, each timing a chain of `--chain` matmuls. A peak
is what the hardware can do, and on a shared machine noise only ever slows
a timing down, so the figure is the best size's FASTEST timing (its median
is in the detail). A tuned GEMM (oneDNN here) is the fastest fp32 code
TensorFlow runs, so this is the ceiling the models' achieved GFLOP/s are
compared to ("fraction of peak"). It is a little below the theoretical FMA
peak (cores x FMA units x SIMD lanes x 2 x clock), which a register-only
FMA loop approaches. `--bfloat16` adds the same measurement in bfloat16
(oneDNN uses AMX / AVX-512 BF16 where the CPU has them), the ceiling of
mixed-precision runs.
"""

import argparse
import sys
import time

import benchlib

BENCHMARK = "fma_peak"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repeats")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument(
        "--sizes", default="2048,4096", help="comma-separated matrix sizes N"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats")
    parser.add_argument("--chain", type=int, default=4, help="matmuls per timing")
    parser.add_argument(
        "--bfloat16", action="store_true", help="also measure bfloat16 matmuls"
    )
    parser.add_argument("--output_json", help="write the result JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.chain = "1024", 2, 2
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated ints, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 1:
        parser.error("--sizes needs at least one positive size")
    if args.threads < 1 or args.repeats < 1 or args.chain < 1:
        parser.error("--threads, --repeats and --chain must be >= 1")
    return args


def matmul_gflops(tf, size, repeats, chain, dtype):
    """(best, median) GFLOP/s of timings of `chain` size x size matmuls."""
    a = tf.random.uniform([size, size], -1.0, 1.0, tf.float32)
    b = tf.cast(tf.random.uniform([size, size], -1.0, 1.0, tf.float32), dtype)
    scale = tf.constant(1.0 / size, dtype)

    @tf.function
    def run(x):
        x = tf.cast(x, dtype)
        for _ in range(chain):
            x = tf.linalg.matmul(x, b) * scale
        return tf.reduce_sum(tf.cast(x, tf.float32))

    run(a).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(a).numpy()
        times.append(time.perf_counter() - start)
    flops = 2.0 * size**3 * chain / 1e9
    return flops / min(times), flops / benchlib.median(times)


def peak_figure(tf, name, dtype, args):
    by_size = {
        size: matmul_gflops(tf, size, args.repeats, args.chain, dtype)
        for size in args.sizes
    }
    best = max(by_size, key=lambda size: by_size[size][0])
    detail = (
        f"{dtype.name} matmul in TF {tf.__version__} (tf.function), {args.threads} "
        f"intra-op threads; fastest of {args.repeats} timings of {args.chain} "
        f"chained {best}x{best} matmuls (median {by_size[best][1]:.1f}); fastest "
        f"by size: " + ", ".join(f"{n}: {g[0]:.1f}" for n, g in by_size.items())
    )
    return benchlib.figure(name, by_size[best][0], "GFLOP/s", detail)


def main(argv):
    args = parse_args(argv)
    import tensorflow as tf  # After parsing: --help needs no TensorFlow.

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    figures = [peak_figure(tf, "fp32_peak", tf.float32, args)]
    if args.bfloat16:
        figures.append(peak_figure(tf, "bf16_peak", tf.bfloat16, args))
    benchlib.report(BENCHMARK, figures, args.output_json)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

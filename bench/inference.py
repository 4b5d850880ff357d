r"""Inference vs TF Model Garden: batch 1, 513x513, 2 threads, tf.function forward.

  .venv/bin/python bench/inference.py [--quick] [--peak_json=PATH]
      [--profile=RUNS] [--output_json=PATH]

Three models, each in its own worker process (`peer_process`), so that each
peak RSS is one model's:

  ours_aspp     our MobileNet-v2 + ASPP without atrous rates (1x1 and
                image-level branches: DeepLab v3 as DeepLab's MobileNet-v2
                models run it), output stride 16, no decoder;
  model_garden  Model Garden's `mnv2_deeplabv3_pascal` (its registered
                experiment and task, random weights), TensorFlow 2.20, under
                the peers venv (`bash bench/peers/setup.sh`);
  ours_dpc      our MobileNet-v2 + the published DPC, output stride 16.

Ours run with their batch norms folded into the convs, as our eval, vis and
export programs run them by default (`--fold_batch_norm`); Model Garden's
runs as its Keras model does (grappler fuses its fused batch norms).
All three output logits upsampled to the input (Model Garden's worker
resizes its stride-16 logits inside the timed forward; ours do it in the
model), run with the same TensorFlow thread settings (`--intra_op_threads`,
`--inter_op_threads`, default 2 and 2: what TensorFlow picks by itself on 2
cores), and are timed in alternating rounds (ours_aspp, model_garden,
ours_dpc, ours_aspp, ...) of `--repeats` calls each after `--warmup` untimed
calls; the figure is the median of all timed calls. `--profile=RUNS` adds
each model's most expensive op types (`benchlib.op_type_profile`). GFLOP/s = 2 x MAdds /
latency, as a fraction of the fp32 peak of bench/fma_peak.py: read from
`--peak_json`, or from fma_peak.json beside `--output_json` (where
bench/run_all.py has just written it), else measured in a child process.

MAdds are counted by one rule for all (`accounting`'s: conv and matmul
multiply-accumulates; Model Garden's worker applies it to its frozen
graph), with the profiler's float ops / 2 in the detail. ours_aspp and
model_garden are the same network: both count 2,740,709,056 MAdds at 513.
What differs: Model Garden's params include MobileNet-v2's last 1x1 conv to
1280 channels (414,720 weights), which it builds but no output uses (ours
ends at the 320-channel block, as DeepLab); its batch norm has momentum 0.99
and epsilon 1e-3 (ours DeepLab's 0.9997 and 1e-5), no dropout (ours keep 0.9
in training only), and its resizes use half-pixel centres (ours DeepLab's
align_corners); none of these changes the inference compute.
"""

import argparse
import sys

import benchlib
import peer_process

BENCHMARK = "inference"
MODELS = peer_process.MODELS
BASELINE = peer_process.BASELINE


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="129x129, 2 rounds")
    parser.add_argument("--crop", type=int, default=513, help="square input size")
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds")
    parser.add_argument("--repeats", type=int, default=3, help="calls per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="RUNS",
        help="also profile each forward over RUNS traced runs: time per op type",
    )
    parser.add_argument("--intra_op_threads", type=int, default=2)
    parser.add_argument("--inter_op_threads", type=int, default=2)
    parser.add_argument(
        "--peak_json",
        help="fma_peak.py's JSON (default: fma_peak.json beside --output_json if "
        "there, else measured now)",
    )
    parser.add_argument("--output_json", help="write the result JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.crop, args.rounds, args.repeats, args.warmup = 129, 2, 2, 1
    if (args.crop - 1) % peer_process.OUTPUT_STRIDE or args.crop < 1:
        parser.error(
            f"--crop must be {peer_process.OUTPUT_STRIDE}*k+1 (output stride "
            f"{peer_process.OUTPUT_STRIDE}), got {args.crop}"
        )
    if min(args.rounds, args.repeats) < 1 or min(args.warmup, args.profile) < 0:
        parser.error("--rounds and --repeats must be >= 1, --warmup and --profile >= 0")
    return args


def measure(workers, args):
    """Info, per-call latencies and peak RSS of each worker.

    Returns:
      dict name -> {"info", "ms" (all timed calls), "peak_rss_mb"}.
    """
    results = {name: {"info": w.call("info")} for name, w in workers.items()}
    timed = peer_process.timed_rounds(
        workers, "infer", args.rounds, args.repeats, args.warmup
    )
    for name, rounds in timed.items():
        results[name]["ms"] = [ms for reply in rounds["replies"] for ms in reply["ms"]]
        results[name]["peak_rss_mb"] = rounds["peak_rss_mb"]
    if args.profile:
        for name, worker in workers.items():
            results[name]["profile"] = worker.call("profile", runs=args.profile)
    return results


def profile_figures(results, args, top=8):
    """Per-op-type figures of each model's `top` most expensive op types."""
    figures = []
    for name in MODELS:
        profile = results[name]["profile"]
        ranked = sorted(profile["ms"].items(), key=lambda item: -item[1])
        total = sum(profile["ms"].values())
        for op, ms in ranked[:top]:
            figures.append(
                benchlib.figure(
                    f"{name}_op_{op}",
                    ms,
                    "ms",
                    f"{profile['count'][op]} ops, {100 * ms / total:.1f}% of op time; "
                    f"mean of {args.profile} tf.profiler-traced runs (wall "
                    f"{profile['wall_ms']:.0f} ms), benchlib.op_type_profile",
                )
            )
    return figures


def figures_of(results, peak_figure, args):
    figures = [peak_figure]
    peak = peak_figure["value"]
    calls = args.rounds * args.repeats
    timing = (
        f"batch 1, {args.crop}x{args.crop}, tf.function forward, threads "
        f"intra {args.intra_op_threads} / inter {args.inter_op_threads}; median of "
        f"{calls} calls in {args.rounds} alternating rounds of {args.repeats} "
        f"({', '.join(MODELS)}), {args.warmup} warm-up calls"
    )
    for name in MODELS:
        info, ms = results[name]["info"], results[name]["ms"]
        latency = benchlib.median(ms)
        gflops = 2.0 * info["madds"] / (latency / 1000.0) / 1e9
        tf_version = f"TF {info['tf_version']}"
        madds_detail = info["madds_method"]
        if "madds_profiler" in info:
            madds_detail += f"; profiler float_ops / 2: {info['madds_profiler']:,}"
        figures += [
            benchlib.figure(f"{name}_params", info["params"], "params", tf_version),
            benchlib.figure(
                f"{name}_madds", info["madds"] / 1e9, "GMAdds", madds_detail
            ),
            benchlib.figure(
                f"{name}_latency",
                latency,
                "ms",
                f"{timing}; min {min(ms):.1f}, max {max(ms):.1f}; {tf_version}",
            ),
            benchlib.figure(f"{name}_gflops", gflops, "GFLOP/s", "2 x MAdds / latency"),
            benchlib.figure(
                f"{name}_fraction_of_peak", gflops / peak, "x", "GFLOP/s / fp32_peak"
            ),
            benchlib.figure(
                f"{name}_peak_rss",
                results[name]["peak_rss_mb"],
                "MB",
                "worker process VmHWM while inferring (reset after build and count)",
            ),
        ]
    baseline = benchlib.median(results[BASELINE]["ms"])
    for name in MODELS:
        if name != BASELINE:
            figures.append(
                benchlib.figure(
                    f"{name}_over_{BASELINE}_latency",
                    benchlib.median(results[name]["ms"]) / baseline,
                    "x",
                    "ratio of medians, same run (below 1: ours faster)",
                )
            )
    return figures


def main(argv):
    args = parse_args(argv)
    peer_process.exit_without_peers()
    peak = benchlib.fp32_peak(
        args.peak_json, args.intra_op_threads, args.quick, args.output_json
    )
    with peer_process.started(
        MODELS,
        crop=args.crop,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
    ) as workers:
        results = measure(workers, args)
    figures = figures_of(results, peak, args)
    if args.profile:
        figures += profile_figures(results, args)
    benchlib.report(BENCHMARK, figures, args.output_json)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

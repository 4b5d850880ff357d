r"""Training step images/s: our MobileNet-v2 + DPC vs Model Garden, 513x513, batch 8.

  .venv/bin/python bench/train_step.py [--quick] [--output_json=PATH]

Three workers (`peer_process`), one process each, same TensorFlow threads
(`--intra_op_threads` / `--inter_op_threads`, default 2 / 2):

  ours_dpc      our MobileNet-v2 (alpha 1.0) + the published DPC, output
                stride 16, no decoder: the training program's own step
                (`trainer.build_train_step`: pixel softmax cross-entropy
                over valid pixels plus the L2 losses; SGD momentum 0.9 on
                DeepLab's poly schedule) on a fixed random batch and labels;
  ours_dpc_bf16math  the same model and step (same seed, same batch) under
                `--float32_math=bfloat16`: convolutions take bfloat16 inputs
                and accumulate in float32, everything else stays float32
                (accuracy parity: bench/float32_math_parity.py);
  model_garden  Model Garden's `mnv2_deeplabv3_pascal`: a plain
                `tf.GradientTape` SGD (momentum 0.9) step, softmax
                cross-entropy of its logits resized to the crop on random
                labels (21 classes), plus its L2 losses.

The batch is fixed (no input pipeline: bench/input_pipeline.py measures
that). After `--warmup` untimed steps each, the three alternate for
`--rounds` rounds of `--repeats` steps; images/s = batch / median step time.
Each ratio also names the spread of its per-round ratios (a round's workers
run close in time, so these cancel the machine's drift): one run's ratio of
medians is only as steady as that spread.
Peak RSS is each worker's VmHWM over the training steps (reset after the
build).
"""

import argparse
import sys

import benchlib
import peer_process

BENCHMARK = "train_step"
OURS = "ours_dpc"
OURS_BF16_MATH = OURS + peer_process.BF16_MATH
MODELS = (OURS, OURS_BF16_MATH, "model_garden")
BASELINE = peer_process.BASELINE


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="129x129, 2 rounds")
    parser.add_argument("--crop", type=int, default=513, help="square crop")
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds")
    parser.add_argument("--repeats", type=int, default=2, help="steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--intra_op_threads", type=int, default=2)
    parser.add_argument("--inter_op_threads", type=int, default=2)
    parser.add_argument("--output_json", help="write the result JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.crop, args.batch, args.rounds, args.repeats, args.warmup = 129, 2, 2, 1, 1
    if (args.crop - 1) % peer_process.OUTPUT_STRIDE or args.crop < 1:
        parser.error(
            f"--crop must be {peer_process.OUTPUT_STRIDE}*k+1, got {args.crop}"
        )
    if min(args.batch, args.rounds, args.repeats) < 1 or args.warmup < 0:
        parser.error("--batch, --rounds and --repeats must be >= 1, --warmup >= 0")
    return args


def measure(args):
    """Each model's step seconds by round, last loss and peak RSS."""
    with peer_process.started(
        MODELS,
        crop=args.crop,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
    ) as workers:
        # What the bf16-math worker computes in: float32 on a CPU without
        # bfloat16 arithmetic (speed.set_float32_math falls back).
        in_effect = workers[OURS_BF16_MATH].call("info")["float32_math"]
        timed = peer_process.timed_rounds(
            workers, "train", args.rounds, args.repeats, args.warmup, batch=args.batch
        )
    results = {
        name: {
            "rounds": [reply["seconds"] for reply in rounds["replies"]],
            "loss": rounds["replies"][-1]["loss"],
            "peak_rss_mb": rounds["peak_rss_mb"],
        }
        for name, rounds in timed.items()
    }
    results[OURS_BF16_MATH]["float32_math"] = in_effect
    return results


def figures_of(results, args):
    steps = args.rounds * args.repeats
    detail = (
        f"batch {args.batch}, {args.crop}x{args.crop}, threads intra "
        f"{args.intra_op_threads} / inter {args.inter_op_threads}; batch / median of "
        f"{steps} steps in {args.rounds} alternating rounds of {args.repeats}, "
        f"{args.warmup} warm-up steps"
    )
    figures = []
    rate = {}
    for name in MODELS:
        seconds = [s for steps in results[name]["rounds"] for s in steps]
        rate[name] = args.batch / benchlib.median(seconds)
        figures += [
            benchlib.figure(
                f"{name}_images_per_s",
                rate[name],
                "images/s",
                f"{detail}; step min {min(seconds):.2f} s, max {max(seconds):.2f} s; "
                f"last loss {results[name]['loss']:.3f}",
            ),
            benchlib.figure(
                f"{name}_peak_rss",
                results[name]["peak_rss_mb"],
                "MB",
                "worker process VmHWM over the training steps (reset after build)",
            ),
        ]
    for name in (OURS, OURS_BF16_MATH):
        figures.append(
            benchlib.figure(
                f"{name}_over_{BASELINE}_images_per_s",
                rate[name] / rate[BASELINE],
                "x",
                "ratio of images/s, same run (above 1: ours faster); "
                + _spread(results, name, BASELINE),
            )
        )
    if results[OURS_BF16_MATH]["float32_math"] == "bfloat16":
        what = "what --float32_math=bfloat16 buys: ratio of images/s, same run"
    else:
        what = (
            "ratio of images/s, same run; this CPU computes no bfloat16, so "
            "--float32_math=bfloat16 ran in float32: both workers ran the same "
            "computation and the ratio is the benchmark's noise"
        )
    figures.append(
        benchlib.figure(
            f"{OURS_BF16_MATH}_over_{OURS}_images_per_s",
            rate[OURS_BF16_MATH] / rate[OURS],
            "x",
            what + "; " + _spread(results, OURS_BF16_MATH, OURS),
        )
    )
    return figures


def _spread(results, name, other):
    """The per-round ratios of `name`'s images/s to `other`'s, summarized."""
    return benchlib.describe_ratios(
        benchlib.paired_ratios(results[other]["rounds"], results[name]["rounds"])
    )


def main(argv):
    args = parse_args(argv)
    peer_process.exit_without_peers()
    figures = figures_of(measure(args), args)
    benchlib.report(BENCHMARK, figures, args.output_json)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

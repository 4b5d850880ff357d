r"""What the speed levers buy here: XLA, bfloat16 and batch-norm folding.

  .venv/bin/python bench/levers.py [--quick] [--output_json=PATH] [--threads=N]

Measures, in one process and one run, for MobileNet-v2 (alpha 1.0) with the
published Dense Prediction Cell and random weights:
  1. the training step (`trainer.build_train_step`, the step `trainer.run`
     takes: forward, backward, SGD) at 257x257, batch 4, in steps/s, with
     `jit_compile` off/on and `mixed_precision` none/bfloat16;
  2. inference (`tf.function` forward) at 513x513, batch 1, latency in ms,
     with the same four settings, and float32 with the batch norms folded
     into the convs (`--fold_batch_norm`, what eval, vis and export run).
The variants of a figure are timed in turn (A B C D A B C D ...), each
round timing a few steps after a warm-up (tracing and XLA compilation are
not timed); each figure is the median over the rounds, and the ratios to the
float32 graph step are of medians of the same run. `--quick` uses alpha 0.35
and 65x65 crops, a smoke test of the script only.
"""

import argparse
import os
import sys
import time

import numpy as np
import tensorflow as tf

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_BENCH, os.path.dirname(_BENCH)]
# pylint: disable=wrong-import-position
import benchlib

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.data import pipeline
from deeplab_dpc.layers import folding
from deeplab_dpc.models import deeplab
from deeplab_dpc.training import speed
from deeplab_dpc.training import trainer

NUM_CLASSES = 19
VARIANTS = (
    ("float32", False, "none"),
    ("float32+xla", True, "none"),
    ("bfloat16", False, "bfloat16"),
    ("bfloat16+xla", True, "bfloat16"),
)
FOLDED = "float32+folded"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Tiny smoke run.")
    parser.add_argument("--output_json", default="", help="Write the figures.")
    parser.add_argument(
        "--threads", type=int, default=0, help="Intra-op threads (0: all cores)."
    )
    parser.add_argument("--rounds", type=int, default=0, help="0: 5, quick 2.")
    return parser.parse_args(argv)


def _options(crop, depth_multiplier):
    return deeplab.ModelOptions(
        num_classes=NUM_CLASSES,
        crop_size=(crop, crop),
        depth_multiplier=depth_multiplier,
        dense_prediction_cell=cell_spec.published_cell(),
    )


def train_step_timer(model_options, batch_size, jit, precision, steps):
    """A callable timing `steps` training steps; returns seconds per step."""
    train_options = trainer.TrainOptions(
        train_batch_size=batch_size,
        jit_compile=jit,
        mixed_precision=precision,
        ignore_label=255,
    )
    strategy = tf.distribute.get_strategy()
    with speed.dtype_policy(precision):
        model = deeplab.build_deeplab(model_options)
    optimizer = trainer.build_optimizer(train_options, model)
    step = trainer.build_train_step(model, optimizer, strategy, train_options)
    crop = model_options.crop_size
    rng = np.random.default_rng(0)
    batch = {
        pipeline.IMAGE: tf.constant(
            rng.uniform(0, 255, (batch_size, *crop, 3)), tf.float32
        ),
        pipeline.LABEL: tf.constant(
            rng.integers(0, NUM_CLASSES, (batch_size, *crop, 1)), tf.int32
        ),
    }
    fraction = tf.constant(1.0)
    float(step(batch, fraction))  # Trace and compile: not timed.

    def timed():
        start = time.perf_counter()
        for _ in range(steps):
            loss = step(batch, fraction)
        float(loss)
        return (time.perf_counter() - start) / steps

    return timed


def inference_timer(model_options, jit, precision, runs, fold=False):
    """A callable timing `runs` batch-1 forwards; returns seconds per run."""
    with speed.dtype_policy(precision):
        model = deeplab.build_deeplab(model_options)
    if fold:
        model = folding.fold_batch_norms(model)
    forward = tf.function(lambda images: model(images, training=False), jit_compile=jit)
    image = tf.random.uniform([1, *model_options.crop_size, 3], 0, 255, seed=0)
    forward(image).numpy()  # Trace and compile: not timed.

    def timed():
        start = time.perf_counter()
        for _ in range(runs):
            logits = forward(image)
        logits.numpy()
        return (time.perf_counter() - start) / runs

    return timed


def _speedups(kind, medians):
    """Each variant's speed-up over the float32 graph, from the medians."""
    return [
        benchlib.figure(
            f"{kind} speed-up {name} vs float32",
            medians["float32"] / seconds,
            "x",
            "ratio of the medians above, same run",
        )
        for name, seconds in medians.items()
        if name != "float32"
    ]


def measure(timers, rounds):
    """Medians (seconds) of the timers, alternated round by round."""
    times = benchlib.alternate(timers, rounds)
    return {name: benchlib.median(values) for name, values in times.items()}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    threads = speed.set_threads(args.threads, 0)
    quick = args.quick
    rounds = args.rounds or (2 if quick else 5)
    alpha = 0.35 if quick else 1.0
    train_crop, infer_crop = (65, 65) if quick else (257, 513)
    batch_size, steps, runs = (2, 1, 2) if quick else (4, 3, 5)
    thread_text = f"intra-op threads {threads[0] or 'default'}"

    figures = []
    train_options = _options(train_crop, alpha)
    train = measure(
        {
            name: train_step_timer(train_options, batch_size, jit, precision, steps)
            for name, jit, precision in VARIANTS
        },
        rounds,
    )
    infer_options = _options(infer_crop, alpha)
    infer_timers = {
        name: inference_timer(infer_options, jit, precision, runs)
        for name, jit, precision in VARIANTS
    }
    infer_timers[FOLDED] = inference_timer(infer_options, False, "none", runs, True)
    infer = measure(infer_timers, rounds)
    model_text = f"MobileNet-v2 alpha {alpha} + published DPC, random weights"
    for name, seconds in train.items():
        figures.append(
            benchlib.figure(
                f"train step {name} {train_crop}x{train_crop} batch {batch_size}",
                1.0 / seconds,
                "steps/s",
                f"{model_text}; median of {rounds} alternating rounds of "
                f"{steps} steps; {thread_text}",
            )
        )
    figures += _speedups("train step", train)
    for name, seconds in infer.items():
        figures.append(
            benchlib.figure(
                f"inference {name} {infer_crop}x{infer_crop} batch 1",
                1000.0 * seconds,
                "ms",
                f"{model_text}; tf.function forward; median of {rounds} "
                f"alternating rounds of {runs} runs; {thread_text}",
            )
        )
    figures += _speedups("inference", infer)
    figures.append(
        benchlib.figure(
            "peak memory (all nine variants in one process)",
            benchlib.peak_rss_mb(),
            "MB",
            "VmHWM of this process",
        )
    )
    benchlib.report("levers", figures, args.output_json, argv)


if __name__ == "__main__":
    main()

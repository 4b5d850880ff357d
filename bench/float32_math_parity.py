r"""Accuracy parity of `--float32_math=bfloat16`: the same training, evaluated.

  .venv/bin/python bench/float32_math_parity.py [--quick] [--output_json=PATH]

Writes the built-in synthetic data set (`deeplab_dpc.data.synthetic`) to a
temporary folder, then trains and evaluates with the programs themselves
(`python -m deeplab_dpc.train`, then `python -m deeplab_dpc.eval` on the val
split), each run in processes of its own (TensorFlow reads the float32 math
mode once per process), with configs/synthetic_mobilenetv2_dpc.flags:
MobileNet-v2 (alpha 0.35) + the published DPC, 129x129 crops, batch 8,
`--steps` steps, batch-norm decay `1 - 10 / steps` (a short run's horizon,
as the search's proxy trials). Six runs: `--float32_math=float32` and
`--float32_math=bfloat16`, each with `--seed=1`, `2` and `3` (a seed fixes
the initial weights and the batches; a run repeats exactly on the same code
and machine).

Short runs from scratch on this set are chaotic, bimodal even: most end near
0.59 val mIOU, some near 0.34, and any change of rounding flips single runs
between the two (a rewrite of one gradient, equal to float32 rounding,
flipped a float32 seed from 0.34 to 0.59; bfloat16 math and float32 have
each been seen in both). So parity is a question about distributions, and
three seeds only sketch them: the figures are each run's val mIOU and last
training loss, each mode's median, lowest and highest mIOU over the seeds,
and the difference of the medians (bfloat16 math - float32) beside
float32's own range over seeds. The speed that bfloat16 math buys is
bench/train_step.py's (same run as Model Garden).
`--quick`: a tiny data set and a few steps, a smoke test of the script only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import benchlib

BENCHMARK = "float32_math_parity"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(REPO, "configs", "synthetic_mobilenetv2_dpc.flags")
MODES = ("float32", "bfloat16")
SEEDS = (1, 2, 3)
# name -> (--float32_math, --seed)
RUNS = {f"{mode}_math_seed{seed}": (mode, seed) for mode in MODES for seed in SEEDS}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Tiny smoke run.")
    parser.add_argument("--steps", type=int, default=600, help="Training steps.")
    parser.add_argument("--num_train", type=int, default=200)
    parser.add_argument("--num_val", type=int, default=50)
    parser.add_argument("--output_json", default="", help="Write the figures.")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.num_train, args.num_val = 4, 16, 4
    if min(args.steps, args.num_train, args.num_val) < 1:
        parser.error("--steps, --num_train and --num_val must be >= 1")
    return args


# The training program's log lines: "step 40/400 loss 1.2345 lr ..." and
# `speed_flags.apply_float32_math`'s "Float32 convolutions compute in X.".
_LOSS_LINE = re.compile(r"step (\d+)/\d+ loss ([-+0-9.eEinfa]+)")
_MODE_LINE = re.compile(r"Float32 convolutions compute in (\w+)\.")


def _program(module, flags):
    """Runs `python -m deeplab_dpc.<module>`; its log (stderr).

    Raises:
      RuntimeError: when it fails, with its log's tail.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", f"deeplab_dpc.{module}", f"--flagfile={PRESET}"]
    proc = subprocess.run(
        command + flags, cwd=REPO, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{module} {' '.join(flags)} failed with exit status "
            f"{proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return proc.stderr


def last_logged_loss(log):
    """The loss of the training log's last "step N/M loss X" line.

    Raises:
      ValueError: when the log has no such line.
    """
    found = _LOSS_LINE.findall(log)
    if not found:
        raise ValueError("the training log has no 'step N/M loss X' line")
    return float(found[-1][1])


def mode_in_effect(log, asked):
    """The float32 math mode the training log says was in effect.

    Raises:
      ValueError: when the log does not say, or says another mode than
        `asked` (a run that would compare nothing: the CPU computes no
        bfloat16, or the process ran a oneDNN op too early).
    """
    found = _MODE_LINE.findall(log)
    if not found:
        raise ValueError("the training log does not say its float32 math mode")
    if found[-1] != asked:
        raise ValueError(
            f"--float32_math={asked} asked, but the training ran in {found[-1]}"
        )
    return found[-1]


def train_and_evaluate(data_dir, work_dir, name, float32_math, seed, steps):
    """Trains and evaluates one run; {"miou", "loss"} of it.

    Raises:
      ValueError: when the training did not run in `float32_math`.
    """
    train_dir = os.path.join(work_dir, name, "train")
    eval_dir = os.path.join(work_dir, name, "eval")
    common = [f"--dataset_dir={data_dir}", f"--float32_math={float32_math}"]
    log = _program(
        "train",
        common
        + [
            f"--train_logdir={train_dir}",
            "--train_crop_size=129,129",
            "--train_batch_size=8",
            f"--training_number_of_steps={steps}",
            "--base_learning_rate=0.02",
            f"--log_steps={max(1, steps // 10)}",
            f"--seed={seed}",
            # A short run's horizon (as the search's proxy trials): with
            # DeepLab's 0.9997 the moving statistics would stay near their
            # initial values and every evaluation would be alike.
            f"--batch_norm_decay={1.0 - 10.0 / max(steps, 10):.6g}",
        ],
    )
    mode_in_effect(log, float32_math)
    _program(
        "eval",
        common
        + [
            f"--checkpoint_dir={train_dir}",
            f"--eval_logdir={eval_dir}",
            "--eval_crop_size=129,129",
            "--max_number_of_evaluations=1",
        ],
    )
    with open(os.path.join(eval_dir, "eval_results.json")) as f:
        miou = json.load(f)["miou"]
    return {"miou": float(miou), "loss": last_logged_loss(log)}


def measure(args):
    from deeplab_dpc.data import synthetic

    with tempfile.TemporaryDirectory(prefix="float32_math_parity-") as work_dir:
        data_dir = os.path.join(work_dir, "data")
        synthetic.build(data_dir, num_train=args.num_train, num_val=args.num_val)
        return {
            name: train_and_evaluate(data_dir, work_dir, name, math, seed, args.steps)
            for name, (math, seed) in RUNS.items()
        }


def figures_of(results, args):
    detail = (
        f"MobileNet-v2 (alpha 0.35) + the published DPC, synthetic data "
        f"({args.num_train} train / {args.num_val} val), 129x129, batch 8, "
        f"{args.steps} steps"
    )
    figures = []
    for name, (math, seed) in RUNS.items():
        figures += [
            benchlib.figure(
                f"{name}_val_miou",
                results[name]["miou"],
                "mIOU",
                f"{detail}; --float32_math={math} --seed={seed}; eval program",
            ),
            benchlib.figure(
                f"{name}_last_loss",
                results[name]["loss"],
                "loss",
                "the training program's last logged step",
            ),
        ]
    median = {}
    for mode in MODES:
        mious = [results[f"{mode}_math_seed{seed}"]["miou"] for seed in SEEDS]
        median[mode] = benchlib.median(mious)
        seeds = ", ".join(map(str, SEEDS))
        figures += [
            benchlib.figure(
                f"{mode}_math_median_val_miou",
                median[mode],
                "mIOU",
                f"median over seeds {seeds}",
            ),
            benchlib.figure(
                f"{mode}_math_lowest_val_miou", min(mious), "mIOU", f"seeds {seeds}"
            ),
            benchlib.figure(
                f"{mode}_math_highest_val_miou", max(mious), "mIOU", f"seeds {seeds}"
            ),
        ]
    spread = [results[f"float32_math_seed{seed}"]["miou"] for seed in SEEDS]
    figures += [
        benchlib.figure(
            "bfloat16_math_minus_float32_median_miou",
            median["bfloat16"] - median["float32"],
            "mIOU",
            "difference of the medians: what bfloat16 math changes",
        ),
        benchlib.figure(
            "float32_seed_range_miou",
            max(spread) - min(spread),
            "mIOU",
            "float32's own range over seeds: the yardstick of the line above",
        ),
    ]
    return figures


def main(argv):
    args = parse_args(argv)
    sys.path.insert(0, REPO)
    figures = figures_of(measure(args), args)
    benchlib.report(BENCHMARK, figures, args.output_json)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

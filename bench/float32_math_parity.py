r"""Accuracy parity of `--float32_math=bfloat16`: the same training, evaluated.

  .venv/bin/python bench/float32_math_parity.py [--quick] [--seeds=1,2,3,4]
      [--output_json=PATH]

Writes the built-in synthetic data set (`deeplab_dpc.data.synthetic`) to a
temporary folder and trains and evaluates with the programs themselves
(`python -m deeplab_dpc.train`, then `python -m deeplab_dpc.eval` on the val
split), each run in processes of its own (TensorFlow reads the float32 math
mode once per process), with configs/synthetic_mobilenetv2_dpc.flags:
MobileNet-v2 (alpha 0.35) + the published DPC, 129x129 crops, batch 8,
`--steps` steps, batch-norm decay `1 - 10 / steps` (a short run's horizon,
as the search's proxy trials).

The protocol is DeepLab's own: a pretrained backbone, a new head. One
float32 run (seed 0) pretrains the backbone, the stand-in for ImageNet
weights; then every compared run starts from it with
`--tf_initial_checkpoint`, `--initialize_last_layer=false` and
`--last_layers_contain_logits_only=false` (backbone restored; the DPC,
decoder and logits new), once per mode (`--float32_math=float32` and
`bfloat16`) and seed (`--seeds`; a seed fixes the new layers' weights and
the batches; a run repeats exactly on the same code and machine).

Why not from scratch: short runs of the whole model from random weights on
this set are chaotic, bimodal even (most near 0.59 val mIOU, some near
0.34, and any change of rounding flips single runs between the two; both
modes were seen in both), so a handful of seeds could not tell the modes
apart. From a pretrained backbone the runs agree within a few hundredths, and
the two runs of a seed within about one.

Figures: each run's val mIOU and last training loss; each mode's mean,
standard deviation over seeds, median, lowest and highest mIOU; the
mean over seeds of each seed's difference (bfloat16 math - float32; the two
runs of a seed share their new weights and batches, so they pair up) with
its 95% confidence interval (paired t, `scipy.stats.ttest_rel`), beside
float32's own standard deviation over seeds. The speed that bfloat16 math
buys is bench/train_step.py's (same run as Model Garden).
`--quick`: a tiny data set, two seeds and a few steps, a smoke test of the
script only. On a CPU without AVX-512 BF16 or AMX BF16 the two modes compute
alike, so the script only reports that (`cpu_computes_bfloat16` 0) and
trains nothing.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

import benchlib

BENCHMARK = "float32_math_parity"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(REPO, "configs", "synthetic_mobilenetv2_dpc.flags")
MODES = ("float32", "bfloat16")
PRETRAIN_SEED = 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Tiny smoke run.")
    parser.add_argument("--steps", type=int, default=600, help="Training steps.")
    parser.add_argument("--seeds", default="1,2,3,4", help="Seeds of each mode.")
    parser.add_argument("--num_train", type=int, default=200)
    parser.add_argument("--num_val", type=int, default=50)
    parser.add_argument("--output_json", default="", help="Write the figures.")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.num_train, args.num_val, args.seeds = 4, 16, 4, "1,2"
    try:
        args.seeds = tuple(int(seed) for seed in args.seeds.split(","))
    except ValueError:
        parser.error(f"--seeds must be comma-separated ints, got {args.seeds!r}")
    if len(set(args.seeds)) < 2 or PRETRAIN_SEED in args.seeds:
        parser.error(
            f"--seeds needs at least 2 different seeds, not {PRETRAIN_SEED} "
            f"(the pretraining's), got {args.seeds}"
        )
    if min(args.steps, args.num_train, args.num_val) < 1:
        parser.error("--steps, --num_train and --num_val must be >= 1")
    return args


def run_names(seeds):
    """name -> (--float32_math, --seed) of the compared runs."""
    return {f"{mode}_math_seed{seed}": (mode, seed) for mode in MODES for seed in seeds}


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


def _train_flags(data_dir, train_dir, float32_math, seed, steps):
    """The training program's flags of one run."""
    return [
        f"--dataset_dir={data_dir}",
        f"--float32_math={float32_math}",
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
    ]


def pretrain(data_dir, work_dir, steps):
    """Trains the float32 run whose backbone every compared run starts from.

    Returns:
      its train_logdir (a checkpoint directory).
    """
    train_dir = os.path.join(work_dir, "pretrain")
    log = _program(
        "train", _train_flags(data_dir, train_dir, "float32", PRETRAIN_SEED, steps)
    )
    mode_in_effect(log, "float32")
    return train_dir


def train_and_evaluate(data_dir, work_dir, name, float32_math, seed, steps, initial):
    """Trains one run from `initial`'s backbone and evaluates it.

    Returns:
      {"miou", "loss"} of the run.

    Raises:
      ValueError: when the training did not run in `float32_math`.
    """
    train_dir = os.path.join(work_dir, name, "train")
    eval_dir = os.path.join(work_dir, name, "eval")
    log = _program(
        "train",
        _train_flags(data_dir, train_dir, float32_math, seed, steps)
        + [
            f"--tf_initial_checkpoint={initial}",
            "--initialize_last_layer=false",
            "--last_layers_contain_logits_only=false",
        ],
    )
    mode_in_effect(log, float32_math)
    _program(
        "eval",
        [
            f"--dataset_dir={data_dir}",
            f"--float32_math={float32_math}",
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
        initial = pretrain(data_dir, work_dir, args.steps)
        return {
            name: train_and_evaluate(
                data_dir, work_dir, name, math, seed, args.steps, initial
            )
            for name, (math, seed) in run_names(args.seeds).items()
        }


def paired_difference(bfloat16_mious, float32_mious, confidence=0.95):
    """Mean over seeds of (bfloat16 math - float32) and its interval.

    The runs of one seed pair up: the same new-layer weights and batches,
    so only the float32 math differs between them.

    Returns:
      (difference, low, high): the interval of `confidence` from the paired
      t-test (`scipy.stats.ttest_rel`).
    """
    from scipy import stats

    result = stats.ttest_rel(bfloat16_mious, float32_mious)
    interval = result.confidence_interval(confidence)
    difference = statistics.fmean(b - f for b, f in zip(bfloat16_mious, float32_mious))
    return difference, float(interval.low), float(interval.high)


def figures_of(results, args):
    detail = (
        f"MobileNet-v2 (alpha 0.35) + the published DPC, synthetic data "
        f"({args.num_train} train / {args.num_val} val), 129x129, batch 8, "
        f"{args.steps} steps from the float32 pretraining's backbone (seed "
        f"{PRETRAIN_SEED}), new head"
    )
    runs = run_names(args.seeds)
    figures = []
    for name, (math, seed) in runs.items():
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
    mious = {}
    seeds = ", ".join(map(str, args.seeds))
    for mode in MODES:
        mious[mode] = [
            results[f"{mode}_math_seed{seed}"]["miou"] for seed in args.seeds
        ]
        values = mious[mode]
        figures += [
            benchlib.figure(
                f"{mode}_math_mean_val_miou",
                statistics.fmean(values),
                "mIOU",
                f"mean over seeds {seeds}",
            ),
            benchlib.figure(
                f"{mode}_math_std_val_miou",
                statistics.stdev(values),
                "mIOU",
                f"standard deviation over seeds {seeds}",
            ),
            benchlib.figure(
                f"{mode}_math_median_val_miou",
                benchlib.median(values),
                "mIOU",
                f"median over seeds {seeds}",
            ),
            benchlib.figure(
                f"{mode}_math_lowest_val_miou", min(values), "mIOU", f"seeds {seeds}"
            ),
            benchlib.figure(
                f"{mode}_math_highest_val_miou", max(values), "mIOU", f"seeds {seeds}"
            ),
        ]
    difference, low, high = paired_difference(mious["bfloat16"], mious["float32"])
    figures += [
        benchlib.figure(
            "bfloat16_math_minus_float32_miou",
            difference,
            "mIOU",
            "mean over seeds of each seed's difference (same seed: same new "
            "weights and batches): what bfloat16 math changes",
        ),
        benchlib.figure(
            "bfloat16_math_minus_float32_ci95_low",
            low,
            "mIOU",
            "95% confidence interval of that mean (paired t), lower end",
        ),
        benchlib.figure(
            "bfloat16_math_minus_float32_ci95_high",
            high,
            "mIOU",
            "as above, upper end; compare float32_math_std_val_miou, the "
            "seeds' own spread",
        ),
    ]
    return figures


def bfloat16_figure(computes_bfloat16, onednn=True, used=lambda: True):
    """The figure saying whether this process computes bfloat16 at all.

    Args:
      computes_bfloat16: bool, the CPU lists AVX-512 BF16 or AMX BF16.
      onednn: bool, oneDNN is on in this process.
      used: callable -> bool, oneDNN does compute bfloat16 in a fresh process
        (`speed.fresh_process_computes_bfloat16`); asked only when the two
        above hold.
    """
    if computes_bfloat16 and onednn and not used():
        computes_bfloat16 = False
        detail = (
            "this CPU lists AVX-512 BF16 or AMX BF16 and oneDNN is on, but a "
            "fresh process with TF_SET_ONEDNN_FPMATH_MODE=BF16 computed "
            "float32 (speed.fresh_process_computes_bfloat16): oneDNN does not "
            "use bfloat16 here, so no run is compared"
        )
    elif computes_bfloat16 and not onednn:
        computes_bfloat16 = False
        detail = (
            "this CPU has AVX-512 BF16 or AMX BF16, but oneDNN is off in this "
            "process (TF_ENABLE_ONEDNN_OPTS=0, or TensorFlow's default on this "
            "CPU) and only oneDNN reads TF_SET_ONEDNN_FPMATH_MODE: "
            "--float32_math=bfloat16 computes exactly as float32 here, so no run "
            "is compared; rerun with oneDNN on"
        )
    elif computes_bfloat16:
        detail = "AVX-512 BF16 or AMX BF16 (speed.cpu_computes_bfloat16)"
    else:
        detail = (
            "no AVX-512 BF16 or AMX BF16 on this CPU (speed.cpu_computes_bfloat16): "
            "--float32_math=bfloat16 computes exactly as float32 here, so no run "
            "is compared; rerun on a CPU with either"
        )
    return benchlib.figure(
        "cpu_computes_bfloat16", float(computes_bfloat16), "yes=1", detail
    )


def main(argv, cpuinfo="/proc/cpuinfo"):
    args = parse_args(argv)
    sys.path.insert(0, REPO)
    from deeplab_dpc.layers import fast_paths
    from deeplab_dpc.training import speed

    figure = bfloat16_figure(
        speed.cpu_computes_bfloat16(cpuinfo),
        onednn=fast_paths.onednn_enabled(),
        used=speed.fresh_process_computes_bfloat16,
    )
    figures = [figure]
    if figure["value"]:
        figures += figures_of(measure(args), args)
    benchlib.report(BENCHMARK, figures, args.output_json)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

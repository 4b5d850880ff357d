r"""Input pipeline throughput vs the training program's consumption, 513x513.

  .venv/bin/python bench/input_pipeline.py [--quick] [--output_json=PATH]

Writes a synthetic data set of large images (Cityscapes-like 1025x2049 by
default) to a temporary folder, then measures:
  1. the training pipeline alone (decode, DeepLab's random scale 0.5-2.0,
     pad, crop, flip, batch) in images/s, after a warm-up, in this process;
  2. the training program itself (`python -m deeplab_dpc.train`,
     MobileNet-v2 + the published DPC, same crop and batch, on the same
     files) in images/s, from its logged steps/s after the first window
     (which includes tracing);
and reports both, their ratio (the pipeline must outrun the step), and the
peak memory of the pipeline and of the training program.
"""

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _BENCH)

import benchlib  # pylint: disable=wrong-import-position

_RATE = re.compile(r"step (\d+)/\d+ loss \S+ lr \S+ ([\d.]+) steps/s")


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=1025, help="Image height.")
    parser.add_argument("--width", type=int, default=2049, help="Image width.")
    parser.add_argument("--num_images", type=int, default=24, help="Images.")
    parser.add_argument("--crop", type=int, default=513, help="Square crop.")
    parser.add_argument("--batch", type=int, default=8, help="Batch size.")
    parser.add_argument("--batches", type=int, default=12, help="Pipeline batches.")
    parser.add_argument("--train_steps", type=int, default=12, help="Program steps.")
    parser.add_argument("--quick", action="store_true", help="Tiny smoke run.")
    parser.add_argument("--output_json", default=None, help="Result file.")
    args = parser.parse_args(argv)
    if args.quick:
        args.height, args.width, args.num_images, args.crop = 129, 257, 8, 65
        args.batch, args.batches, args.train_steps = 2, 4, 6
    return args


def pipeline_rate(dataset_dir, args):
    """Images/s of the training pipeline alone."""
    from deeplab_dpc.data import pipeline  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.data import synthetic  # pylint: disable=import-outside-toplevel

    dataset = pipeline.make_dataset(
        dataset_dir,
        "train",
        crop_size=(args.crop, args.crop),
        batch_size=args.batch,
        is_training=True,
        ignore_label=synthetic.IGNORE_LABEL,
        seed=0,
    )
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(args.batches):
        batch = next(iterator)
    batch[pipeline.IMAGE].numpy()
    return args.batches * args.batch / (time.perf_counter() - start)


def program_rate(dataset_dir, logdir, args):
    """Images/s of the training program, median of its logged windows."""
    window = max(1, args.train_steps // 4)
    command = [
        sys.executable,
        "-m",
        "deeplab_dpc.train",
        f"--train_logdir={logdir}",
        "--dataset=synthetic",
        f"--dataset_dir={dataset_dir}",
        "--model_variant=mobilenet_v2",
        "--head=dpc",
        f"--train_crop_size={args.crop},{args.crop}",
        f"--train_batch_size={args.batch}",
        f"--training_number_of_steps={args.train_steps}",
        f"--log_steps={window}",
        "--save_interval_secs=0",
        "--seed=0",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    rates = [float(m.group(2)) for m in _RATE.finditer(done.stderr)]
    if len(rates) < 2:
        raise RuntimeError(
            f"no steps/s lines after the first in:\n{done.stderr[-3000:]}"
        )
    return benchlib.median(rates[1:]) * args.batch, benchlib.command_line(command[1:])


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    from deeplab_dpc.data import synthetic  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "data")
        synthetic.build(
            data_dir,
            num_train=args.num_images,
            num_val=1,
            height=args.height,
            width=args.width,
            seed=0,
            num_shards=4,
            num_workers=1,  # In this process: the only child is the program.
        )
        data = pipeline_rate(data_dir, args)
        pipeline_rss = benchlib.peak_rss_mb()
        program, command = program_rate(data_dir, os.path.join(tmp, "train"), args)
    program_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    detail = (
        f"{args.height}x{args.width} images, {args.crop}x{args.crop} crops, "
        f"batch {args.batch}"
    )
    results = [
        benchlib.figure(
            "input pipeline", data, "images/s", f"{detail}, {args.batches} batches"
        ),
        benchlib.figure(
            "training program",
            program,
            "images/s",
            f"{detail}, MobileNet-v2 + DPC, median of its logged windows after "
            f"the first: {command}",
        ),
        benchlib.figure("pipeline / program", data / program, "x", "same run"),
        benchlib.figure(
            "pipeline peak memory",
            pipeline_rss,
            "MB",
            "this process (data generation included)",
        ),
        benchlib.figure(
            "training program peak memory", program_rss, "MB", "its process"
        ),
    ]
    benchlib.report("input_pipeline", results, args.output_json, sys.argv)


if __name__ == "__main__":
    main()

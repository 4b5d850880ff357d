r"""Benchmark workers: one model per long-lived process, driven over a pipe.

A driver (bench/inference.py, tflite_latency.py, train_step.py) starts one
`Worker` per model (`started` starts several and closes them all), so that
each model's peak memory is its own process's, and alternates timing rounds
between them without rebuilding anything (`timed_rounds`):

  * `model_garden(...)`: TF Model Garden's `mnv2_deeplabv3_pascal` in
    bench/peers/model_garden_worker.py under the peers venv
    (bench/.peers-venv, made by `bash bench/peers/setup.sh`);
  * `ours(...)`: our DeepLab (MobileNet-v2 + ASPP or + the published DPC)
    served by this file run as a script, in the project's venv:

      .venv/bin/python bench/peer_process.py --head=aspp|dpc [--crop=513] \
          [--intra_op_threads=2] [--inter_op_threads=2] [--no-fold_batch_norm] \
          [--float32_math=float32|bfloat16]

    `ours_<head>` runs float32 convolutions exactly; `ours_<head>_bf16math`
    (`BF16_MATH`) runs them with bfloat16 inputs and float32 accumulation,
    the training program's `--float32_math=bfloat16`.

Both speak `benchlib.serve`'s protocol with the same commands and replies
(see model_garden_worker.py): "info", "infer", "train", "tflite",
"profile", "rss".
Our side: params and MAdds from `accounting.count` (exact conv/matmul
multiply-accumulates; the profiler's float ops / 2 too, as a cross-check),
the forward is the model's batch-1 `tf.function` (logits upsampled to the
input inside the model) with its batch norms folded into the convs, as eval,
vis and export run it (`--fold_batch_norm`, the default; `--no-fold_batch_norm`
times the model as trained), the training step is the training program's own
(`trainer.build_train_step`: pixel cross-entropy over valid pixels plus
L2, SGD momentum 0.9 on DeepLab's poly schedule), and TFLite files come from
`deeplab_dpc.export.tflite` ("int8" = its full-integer variant).
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile

import benchlib

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
PEERS_VENV = os.path.join(BENCH_DIR, ".peers-venv")
MODEL_GARDEN_WORKER = os.path.join(BENCH_DIR, "peers", "model_garden_worker.py")
SETUP_COMMAND = "bash bench/peers/setup.sh"
HEADS = ("aspp", "dpc")
# The models the drivers compare, by name: ours_<head> and Model Garden's.
BASELINE = "model_garden"
MODELS = ("ours_aspp", BASELINE, "ours_dpc")
# Suffix of our models under `--float32_math=bfloat16` ("ours_dpc_bf16math").
BF16_MATH = "_bf16math"
NUM_CLASSES = 21  # PASCAL VOC, as Model Garden's mnv2_deeplabv3_pascal.
OUTPUT_STRIDE = 16  # Model Garden's mnv2_deeplabv3_pascal.
IGNORE_LABEL = 255
_STDERR_TAIL = 3000


class WorkerError(RuntimeError):
    """A worker failed to start, died, or answered a command with an error."""


class Worker:
    """A worker process speaking `benchlib.serve`'s line protocol.

    Args:
      name: str, for messages (e.g. "model_garden").
      argv: the worker's command line.
      env: extra environment variables.

    Its stderr goes to a temporary log file, whose tail is quoted when the
    worker dies. Use as a context manager, or call `close()`.
    """

    def __init__(self, name, argv, env=None):
        self.name = name
        self.argv = list(argv)
        self._log = tempfile.NamedTemporaryFile(
            "w+", prefix=f"bench-{name}-", suffix=".log", delete=False
        )
        full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=full_env,
        )

    @property
    def pid(self):
        return self._process.pid

    def _stderr_tail(self):
        self._log.flush()
        with open(self._log.name) as f:
            return f.read()[-_STDERR_TAIL:]

    def call(self, cmd, **kwargs):
        """Sends one command and returns its reply (a dict, without "ok").

        Raises:
          WorkerError: when the worker has exited (quoting its stderr) or
            replied with an error (quoting its traceback).
        """
        request = json.dumps({"cmd": cmd, **kwargs})
        try:
            self._process.stdin.write(request + "\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            code = self._process.wait()
            raise WorkerError(
                f"worker {self.name} exited (code {code}) on {request}; "
                f"command: {' '.join(self.argv)}\n--- its stderr ---\n"
                f"{self._stderr_tail()}"
            )
        try:
            reply = json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkerError(
                f"worker {self.name} answered {request} with a line that is "
                f"not JSON: {line[:200]!r}"
            ) from e
        if not reply.pop("ok", False):
            raise WorkerError(
                f"worker {self.name}: {cmd} failed: {reply.get('error')}\n"
                f"{reply.get('traceback', '')}"
            )
        return reply

    def peak_rss_mb(self):
        """The worker's peak RSS (VmHWM), read from /proc by this process."""
        return benchlib.child_peak_rss_mb(self.pid)

    def close(self, timeout=60):
        """Asks the worker to quit; kills it if it does not within timeout."""
        if self._process.poll() is None:
            try:
                self._process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self._process.stdin.flush()
                self._process.wait(timeout=timeout)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            stream.close()
        self._log.close()
        os.remove(self._log.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def threads_args(intra_op_threads, inter_op_threads):
    """The workers' thread flags (both workers take the same ones)."""
    return [
        f"--intra_op_threads={int(intra_op_threads)}",
        f"--inter_op_threads={int(inter_op_threads)}",
    ]


def peers_python():
    """The peers venv's interpreter.

    Raises:
      FileNotFoundError: when the venv is missing, naming the setup command.
    """
    python = os.path.join(PEERS_VENV, "bin", "python")
    if not os.path.exists(python):
        raise FileNotFoundError(
            f"the peers venv {PEERS_VENV} is missing: run `{SETUP_COMMAND}` from "
            f"the repository root (it installs tf-models-official and "
            f"TensorFlow 2.20 CPU, a few minutes)"
        )
    return python


def model_garden(crop=513, intra_op_threads=2, inter_op_threads=2, upsample=True):
    """Starts Model Garden's `mnv2_deeplabv3_pascal` worker (peers venv)."""
    argv = [
        peers_python(),
        MODEL_GARDEN_WORKER,
        f"--crop={int(crop)}",
        *threads_args(intra_op_threads, inter_op_threads),
        "--upsample_logits" if upsample else "--no-upsample_logits",
    ]
    return Worker("model_garden", argv)


def ours(
    head,
    crop=513,
    intra_op_threads=2,
    inter_op_threads=2,
    depth_multiplier=1.0,
    float32_math="float32",
):
    """Starts a worker for our MobileNet-v2 DeepLab with the given head.

    Args:
      head: "aspp" (DeepLab v3: 1x1 + image-level branches, no atrous
        rates) or "dpc" (the published cell), both at output stride 16,
        without decoder.
      crop, intra_op_threads, inter_op_threads, depth_multiplier: the
        model's crop, TensorFlow's threads, MobileNet-v2's alpha.
      float32_math: "float32" or "bfloat16" (`speed.set_float32_math`).

    Raises:
      ValueError: for an unknown head.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        f"--head={head}",
        f"--crop={int(crop)}",
        f"--depth_multiplier={float(depth_multiplier)}",
        *threads_args(intra_op_threads, inter_op_threads),
        f"--float32_math={float32_math}",
    ]
    suffix = BF16_MATH if float32_math == "bfloat16" else ""
    return Worker(f"ours_{head}{suffix}", argv)


def start(name, crop=513, intra_op_threads=2, inter_op_threads=2):
    """Starts the worker of a model named in `MODELS` (ours also + `BF16_MATH`).

    Raises:
      ValueError: for another name.
      FileNotFoundError: for "model_garden" without the peers venv.
    """
    threads = dict(intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads)
    if name == BASELINE:
        return model_garden(crop=crop, **threads)
    model, float32_math = name, "float32"
    if name.endswith(BF16_MATH):
        model, float32_math = name[: -len(BF16_MATH)], "bfloat16"
    if model not in MODELS or model == BASELINE:
        ours_names = [m for m in MODELS if m != BASELINE]
        raise ValueError(
            f"unknown model {name!r}; choose from {MODELS} or "
            f"{[m + BF16_MATH for m in ours_names]}"
        )
    return ours(model[len("ours_") :], crop=crop, float32_math=float32_math, **threads)


@contextlib.contextmanager
def started(names, **kwargs):
    """Starts the workers of the named models; closes them all on leaving.

    The workers are started in `names`' order without waiting for one to be
    built before the next starts; every worker started is closed on leaving
    the block, also when a start, a command or a close fails.

    Args:
      names: model names from `MODELS`.
      **kwargs: `start`'s crop and thread arguments.

    Yields:
      dict name -> `Worker`, in the order of `names`.
    """
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(start(name, **kwargs)) for name in names}


def timed_rounds(workers, cmd, rounds, repeats, warmup, **kwargs):
    """Times a command in every worker, alternating the workers by round.

    Each worker in turn resets its peak RSS and runs `warmup` untimed calls
    (`cmd` with repeats=0); then `benchlib.alternate` runs `rounds` rounds of
    one `cmd` call of `repeats` timed repeats per worker; last, each worker's
    peak RSS since its reset is read.

    Args:
      workers: dict name -> `Worker`.
      cmd: "infer" or "train"; kwargs: its other arguments (e.g. batch).
      rounds, repeats, warmup: ints, as above.

    Returns:
      dict name -> {"replies": its `rounds` replies, "peak_rss_mb"}.
    """
    for worker in workers.values():
        worker.call("rss", reset=True)
        worker.call(cmd, repeats=0, warmup=warmup, **kwargs)
    replies = benchlib.alternate(
        {
            name: (lambda w=w: w.call(cmd, repeats=repeats, warmup=0, **kwargs))
            for name, w in workers.items()
        },
        rounds,
    )
    return {
        name: {
            "replies": replies[name],
            "peak_rss_mb": worker.call("rss")["peak_rss_mb"],
        }
        for name, worker in workers.items()
    }


def exit_without_peers():
    """Exits with the reason when the peers venv is missing (drivers' main)."""
    try:
        peers_python()
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")


def model_options(head, crop, depth_multiplier=1.0):
    """Our `ModelOptions` for a head ("aspp" or "dpc"), as `ours` builds."""
    from deeplab_dpc.cells import cell_spec
    from deeplab_dpc.models import deeplab

    return deeplab.ModelOptions(
        model_variant="mobilenet_v2",
        num_classes=NUM_CLASSES,
        crop_size=(crop, crop),
        output_stride=OUTPUT_STRIDE,
        dense_prediction_cell=cell_spec.published_cell() if head == "dpc" else None,
        atrous_rates=(),
        decoder_output_stride=None,
        depth_multiplier=depth_multiplier,
    )


class OursWorker(benchlib.ModelWorker):
    """The command handlers around one of our models (this file's `main`)."""

    def __init__(self, args):
        import tensorflow as tf

        super().__init__(tf, args)
        from deeplab_dpc.models import deeplab
        from deeplab_dpc.training import speed

        # Before the model runs: TensorFlow reads the mode once.
        self.float32_math = speed.set_float32_math(args.float32_math)

        tf.keras.utils.set_random_seed(args.seed)
        self.options = model_options(args.head, args.crop, args.depth_multiplier)
        self.model = deeplab.build_deeplab(self.options)
        crop = args.crop
        self.image = tf.random.uniform([1, crop, crop, 3], 0.0, 255.0)
        spec = tf.TensorSpec([1, crop, crop, 3], tf.float32)
        model = self.model
        if args.fold_batch_norm:
            from deeplab_dpc.layers import folding

            model = folding.fold_batch_norms(self.model)
        self.forward = tf.function(
            lambda images: model(images, training=False)
        ).get_concrete_function(spec)

    def info(self):
        from deeplab_dpc.models import accounting

        rows = accounting.count(self.model)
        return {
            "params": rows["total"]["params"],
            "madds": rows["total"]["madds"],
            "madds_method": (
                "accounting.count: exact conv/matmul multiply-accumulates "
                "(BN, activations, pooling, resize count 0)"
            ),
            "madds_profiler": accounting.profiler_flops(self.model) // 2,
            "modules": rows,
            "head": self.args.head,
            "fold_batch_norm": self.args.fold_batch_norm,
            "float32_math": self.float32_math,
            **self._runtime_info(),
        }

    def _build_train_step(self, batch):
        """The training program's own step (`trainer.build_train_step`)."""
        from deeplab_dpc.data import pipeline
        from deeplab_dpc.training import trainer

        tf = self.tf
        options = trainer.TrainOptions(
            train_batch_size=batch,
            base_learning_rate=1e-3,
            ignore_label=IGNORE_LABEL,
        )
        optimizer = trainer.build_optimizer(options, self.model)
        step = trainer.build_train_step(
            self.model, optimizer, tf.distribute.get_strategy(), options
        )
        crop = self.args.crop
        inputs = {
            pipeline.IMAGE: tf.random.uniform([batch, crop, crop, 3], 0.0, 255.0),
            pipeline.LABEL: tf.random.uniform(
                [batch, crop, crop, 1], 0, NUM_CLASSES, dtype=tf.int32
            ),
        }
        fraction = tf.constant(1.0)
        return lambda: step(inputs, fraction)

    def tflite(self, path, quantize="float32"):
        from deeplab_dpc import file_io
        from deeplab_dpc.export import tflite

        if quantize not in (tflite.FLOAT32, tflite.INT8):
            raise ValueError(f"quantize must be float32 or int8, got {quantize!r}")
        tf = self.tf
        options = tflite.ConversionOptions(crop_size=self.options.crop_size)
        function = tflite.inference_function(tflite.keras_model_fn(self.model), options)
        representative = None
        if quantize == tflite.INT8:
            rng = tf.random.Generator.from_seed(self.args.seed)
            shape = [1, *self.options.crop_size, 3]
            representative = [
                rng.uniform(shape, 0.0, 255.0).numpy()
                for _ in range(self.CALIBRATION_IMAGES)
            ]
        content = tflite.convert(function, quantize, options, representative)
        file_io.write_bytes(path, content)
        return {"path": path, "bytes": len(content)}


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Serves one of our models.")
    parser.add_argument("--head", choices=HEADS, required=True)
    parser.add_argument("--crop", type=int, default=513, help="square crop")
    parser.add_argument("--depth_multiplier", type=float, default=1.0)
    parser.add_argument("--intra_op_threads", type=int, default=2)
    parser.add_argument("--inter_op_threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fold_batch_norm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Time inference with batch norm folded into the convs.",
    )
    parser.add_argument(
        "--float32_math",
        choices=("float32", "bfloat16"),
        default="float32",
        help="How float32 convolutions compute (speed.set_float32_math).",
    )
    args = parser.parse_args(argv)
    if args.crop < 1 or args.intra_op_threads < 0 or args.inter_op_threads < 0:
        parser.error("--crop must be >= 1 and the thread counts >= 0")
    return args


def main(argv):
    args = parse_args(argv)
    replies = benchlib.claim_stdout()
    benchlib.serve(OursWorker(args), stdout=replies)


if __name__ == "__main__":
    main(sys.argv[1:])

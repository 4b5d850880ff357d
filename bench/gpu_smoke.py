r"""GPU smoke test: does this package train and export on this machine's GPUs?

  .venv/bin/python bench/gpu_smoke.py [--crop_size=513,513] \
      [--batch_size_per_replica=4] [--steps=5] [--depth_multiplier=1.0] \
      [--models=mobilenet_v2_dpc,xception_aspp_decoder] [--output_dir=DIR] \
      [--json] [--require_gpu]

One command for a user with GPUs. Under `tf.distribute.MirroredStrategy`
over every visible GPU (NCCL all-reduce, MirroredStrategy's default on
GPUs), for each model of `--models`:

  mobilenet_v2_dpc       MobileNet-v2 (alpha `--depth_multiplier`) + the
                         published Dense Prediction Cell, output stride 16,
                         19 classes (configs/cityscapes_mobilenetv2_dpc.flags);
  xception_aspp_decoder  Xception + ASPP (rates 6, 12, 18) + the v3+ decoder,
                         output stride 16, 21 classes
                         (configs/pascal_xception_aspp_decoder.flags);

all with random weights (no download) at `--crop_size`, it checks:

  1. forward_backward: one forward and backward pass in float32 on a random
     batch (`losses.regularized_loss`, a `tf.GradientTape` in `strategy.run`):
     the loss and every gradient are finite and no trainable variable is
     left without a gradient;
  2. train_float16: the model built under `--mixed_precision=float16`
     (`speed.dtype_policy`) trains `1 + --steps` steps with the training
     program's own step (`trainer.build_optimizer`, a `LossScaleOptimizer`,
     and `trainer.build_train_step`): every loss and the weights after
     are finite. The first step (tracing) is not timed; images/s = global
     batch x timed steps / their seconds, and per replica ("per GPU") that
     divided by the replicas;
  3. export: as the programs do it, the float16-trained model's training
     checkpoint, restored into a float32 model as export/export_model.py
     does (`inference.load_model`; the weights must come back unchanged),
     exported with `export.saved_model.export_saved_model` (batch norms
     folded), loaded back with `tf.saved_model.load`, and its
     `serving_default` run once on a uint8 image: the predictions have the
     image's size and the probabilities are finite and sum to 1.

It prints the devices, TensorFlow's version and build, a line per check as
it ends, the fast paths each model's training took
(`fast_paths.describe()`: the probes' decisions on this process's devices
and the routes of the model's layers), and a final table; `--json` also
prints one JSON object as the last line. The exit status is 0 only if every
check passed; a failed check is named ("FAILED <model> / <check>: ...", its
traceback on stderr) and the others still run.

Without a GPU it runs on the CPU (MirroredStrategy over the CPU; it says
so at the start and in the summary), which checks the code, not a GPU:
float16 is slow on CPUs, so use tiny settings there, e.g. (81x81 is the
smallest crop 16*k+1 that Keras' Xception takes)

  .venv/bin/python bench/gpu_smoke.py --crop_size=81,81 \
      --batch_size_per_replica=1 --steps=1 --depth_multiplier=0.35

`--cpu_replicas=N` splits the CPU into N logical devices, so that the
all-reduce of N replicas runs too; `--require_gpu` exits with status 2 and a
message when no GPU is visible.
"""

import dataclasses
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_BENCH, os.path.dirname(_BENCH)]
# pylint: disable=wrong-import-position
from absl import app
from absl import flags
import benchlib
import numpy as np
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.data import pipeline
from deeplab_dpc.evaluation import inference
from deeplab_dpc.export import saved_model
from deeplab_dpc.export import serving
from deeplab_dpc.layers import fast_paths
from deeplab_dpc.models import deeplab
from deeplab_dpc.training import losses
from deeplab_dpc.training import speed
from deeplab_dpc.training import trainer

BENCHMARK = "gpu_smoke"
IGNORE_LABEL = 255
MIXED_PRECISION = "float16"
FORWARD_BACKWARD = "forward_backward"
TRAIN = "train_float16"
EXPORT = "export"
STAGES = (FORWARD_BACKWARD, TRAIN, EXPORT)
# Exit status of --require_gpu without a GPU (1 is a failed check).
NO_GPU_STATUS = 2


@dataclasses.dataclass(frozen=True)
class SmokeModel:
    """A model of `--models`: its description and `ModelOptions` fields.

    `depth_multiplier` and `crop_size` come from the flags.
    """

    description: str
    options: dict
    has_depth_multiplier: bool = False
    min_crop: int = 1


MODELS = {
    "mobilenet_v2_dpc": SmokeModel(
        "MobileNet-v2 + published DPC, OS 16",
        dict(
            model_variant="mobilenet_v2",
            num_classes=19,
            output_stride=16,
            dense_prediction_cell=cell_spec.published_cell(),
        ),
        has_depth_multiplier=True,
    ),
    "xception_aspp_decoder": SmokeModel(
        "Xception + ASPP (6, 12, 18) + decoder, OS 16",
        dict(
            model_variant="xception",
            num_classes=21,
            output_stride=16,
            atrous_rates=(6, 12, 18),
            decoder_output_stride=4,
        ),
        # Keras' Xception refuses inputs below 71x71.
        min_crop=71,
    ),
}

_CROP_SIZE = flags.DEFINE_list(
    "crop_size", ["513", "513"], "Crop height,width (16*k+1 at output stride 16)."
)
_BATCH_SIZE_PER_REPLICA = flags.DEFINE_integer(
    "batch_size_per_replica",
    4,
    "Images per replica (per GPU); the global batch is this times the replicas.",
    lower_bound=1,
)
_STEPS = flags.DEFINE_integer(
    "steps",
    5,
    "Timed float16 training steps per model, after one untimed warm-up step.",
    lower_bound=1,
)
_DEPTH_MULTIPLIER = flags.DEFINE_float(
    "depth_multiplier", 1.0, "MobileNet-v2's alpha (mobilenet_v2_dpc only)."
)
_MODELS = flags.DEFINE_list(
    "models",
    list(MODELS),
    f"Models to check, any of {', '.join(MODELS)}.",
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir",
    "",
    "Where each model's checkpoint and export go (<output_dir>/<model>/train "
    "and <output_dir>/<model>/export/1, replaced if present); empty: a "
    "temporary folder, removed at the end.",
)
_JSON = flags.DEFINE_boolean(
    "json", False, "Also print the results as one JSON object, the last line."
)
_REQUIRE_GPU = flags.DEFINE_boolean(
    "require_gpu",
    False,
    f"Exit with status {NO_GPU_STATUS} and a message when no GPU is visible, "
    "instead of running on the CPU.",
)
_CPU_REPLICAS = flags.DEFINE_integer(
    "cpu_replicas",
    1,
    "Without a GPU: split the CPU into this many logical devices, one "
    "MirroredStrategy replica each (runs the all-reduce of several replicas "
    "on a CPU-only machine). Ignored when a GPU is visible.",
    lower_bound=1,
)


class CheckError(Exception):
    """A check of the smoke test failed (not an exception of the package)."""


def _first_line(error):
    """The error's type and the line of its message that says what failed."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    # A `tf.function`'s error starts with "in user code:" and the traceback
    # of the trace, and ends with the original error.
    line = lines[-1] if lines and lines[0] == "in user code:" else (lines or [""])[0]
    return f"{type(error).__name__}: {line}"[:500]


def setup_devices(cpu_replicas):
    """Configures the devices before TensorFlow starts its runtime.

    GPUs get memory growth (the peak memory reported is then what the
    models took); without one, the CPU is split into `cpu_replicas` logical
    devices.

    Returns:
      (the visible GPUs' physical devices, MirroredStrategy's devices or None
      for its default: every GPU, else the CPU).
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError):
                pass  # Already initialised: keep TensorFlow's setting.
        return gpus, None
    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
        )
        return gpus, [f"/cpu:{i}" for i in range(cpu_replicas)]
    return gpus, None


def environment_lines(gpus, strategy):
    """What this process runs on: TensorFlow, its build, the devices."""
    build = tf.sysconfig.get_build_info()
    lines = [
        f"TensorFlow {tf.__version__} (built with CUDA: "
        f"{tf.test.is_built_with_cuda()}"
        + (
            f", CUDA {build.get('cuda_version')}, cuDNN {build.get('cudnn_version')}"
            if build.get("cuda_version")
            else ""
        )
        + f"); Keras {tf.keras.__version__}",
    ]
    machine = benchlib.machine()
    lines.append(f"CPU: {machine['cpu']} ({machine['cores']} usable cores)")
    for device in tf.config.list_physical_devices():
        line = f"physical device: {device.name} ({device.device_type})"
        if device.device_type == "GPU":
            details = tf.config.experimental.get_device_details(device)
            line += (
                f": {details.get('device_name', '?')}, compute capability "
                f"{details.get('compute_capability', '?')}"
            )
        lines.append(line)
    lines.append(
        f"MirroredStrategy: {strategy.num_replicas_in_sync} replica(s) on "
        f"{', '.join(strategy.extended.worker_devices)}; cross-device ops "
        f"{_cross_device_ops(strategy)}"
    )
    return lines


def _cross_device_ops(strategy):
    """The all-reduce MirroredStrategy chose (NcclAllReduce on GPUs)."""
    # pylint: disable=protected-access
    extended = strategy.extended
    ops = getattr(extended, "_cross_device_ops", None) or getattr(
        extended, "_inferred_cross_device_ops", None
    )
    return type(ops).__name__ if ops is not None else "unknown"


def _per(strategy):
    """What a replica is: "GPU" on GPUs, else "replica"."""
    devices = strategy.extended.worker_devices
    return "GPU" if all("GPU" in d.upper() for d in devices) else "replica"


def no_gpu_line(strategy):
    return (
        "No GPU visible: running on the CPU (MirroredStrategy over "
        f"{', '.join(strategy.extended.worker_devices)}). This checks the "
        "code, not a GPU; the images/s are the CPU's."
    )


def model_options(name, crop_size, depth_multiplier):
    spec = MODELS[name]
    kwargs = dict(spec.options, crop_size=crop_size, backbone_weights=None)
    if spec.has_depth_multiplier:
        kwargs["depth_multiplier"] = depth_multiplier
    return deeplab.ModelOptions(**kwargs)


def random_batch(strategy, options, batch_size_per_replica, seed=0):
    """A fixed random batch, distributed: each replica its own images.

    Labels are random classes, with a few pixels `IGNORE_LABEL`.
    """
    replicas = strategy.num_replicas_in_sync
    size = batch_size_per_replica * replicas
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 255.0, (size, *options.crop_size, 3)).astype(np.float32)
    labels = rng.integers(0, options.num_classes, (size, *options.crop_size, 1))
    labels[rng.uniform(size=labels.shape) < 0.05] = IGNORE_LABEL
    labels = labels.astype(np.int32)

    def value_fn(context):
        i = context.replica_id_in_sync_group
        part = slice(i * batch_size_per_replica, (i + 1) * batch_size_per_replica)
        return {
            pipeline.IMAGE: tf.constant(images[part]),
            pipeline.LABEL: tf.constant(labels[part]),
        }

    return strategy.experimental_distribute_values_from_function(value_fn), size


def _all_finite(values):
    return all(bool(np.all(np.isfinite(np.asarray(v)))) for v in values)


def forward_backward(strategy, options, batch):
    """Check 1: a float32 forward and backward pass; its loss and gradients."""
    with strategy.scope():
        with speed.dtype_policy(speed.MIXED_PRECISION_NONE):
            model = deeplab.build_deeplab(options)
    variables = model.trainable_variables

    def replica_pass(replica_batch):
        with tf.GradientTape() as tape:
            logits = model(replica_batch[pipeline.IMAGE], training=True)
            loss = losses.regularized_loss(
                model, logits, replica_batch[pipeline.LABEL], ignore_label=IGNORE_LABEL
            )
        grads = tape.gradient(loss, variables)
        missing = sum(g is None for g in grads)
        present = [tf.cast(g, tf.float32) for g in grads if g is not None]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in present])
        return (
            loss,
            tf.linalg.global_norm(present),
            1 - tf.cast(finite, tf.int32),
            tf.constant(missing, tf.int32),
        )

    @tf.function
    def step(distributed_batch):
        per_replica = strategy.run(replica_pass, args=(distributed_batch,))
        # Mean loss and gradient norm; replicas with non-finite gradients and
        # missing gradients summed.
        ops = [tf.distribute.ReduceOp.MEAN] * 2 + [tf.distribute.ReduceOp.SUM] * 2
        return [
            strategy.reduce(op, value, axis=None) for op, value in zip(ops, per_replica)
        ]

    start = time.perf_counter()
    loss, norm, not_finite, missing = (t.numpy() for t in step(batch))
    seconds = time.perf_counter() - start
    result = {
        "loss": float(loss),
        "gradient_norm": float(norm),
        "trainable_variables": len(variables),
        "seconds_with_tracing": seconds,
    }
    if not np.isfinite(loss):
        raise CheckError(f"float32 loss is {float(loss)}")
    if not_finite or not np.isfinite(norm):
        raise CheckError(f"float32 gradients are not finite (global norm {norm})")
    if missing:
        raise CheckError(
            f"{int(missing)} of {len(variables)} trainable variables got no gradient"
        )
    return result


def build_float16(strategy, options, global_batch, steps):
    """The model and optimizer of check 2, as `trainer.run` builds them."""
    train_options = trainer.TrainOptions(
        train_batch_size=global_batch,
        training_number_of_steps=steps + 1,
        mixed_precision=MIXED_PRECISION,
        ignore_label=IGNORE_LABEL,
    )
    with strategy.scope():
        with speed.dtype_policy(train_options.mixed_precision):
            model = deeplab.build_deeplab(options)
        optimizer = trainer.build_optimizer(train_options, model)
    return model, optimizer, train_options


def train_float16(strategy, model, optimizer, train_options, batch, steps):
    """Check 2: `1 + steps` float16 training steps; images/s of the timed ones."""
    if speed.mixed_precision_of(model) != MIXED_PRECISION:
        raise CheckError(
            f"the model's dtype policy is {model.dtype_policy.name}, not "
            f"{speed.check_mixed_precision(MIXED_PRECISION)}"
        )
    train_step = trainer.build_train_step(model, optimizer, strategy, train_options)
    fraction = tf.constant(1.0, tf.float32)
    step_losses, seconds = [], []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = float(train_step(batch, fraction))
        seconds.append(time.perf_counter() - start)
        step_losses.append(loss)
    global_batch = train_options.train_batch_size
    replicas = strategy.num_replicas_in_sync
    timed = seconds[1:]
    images_per_s = global_batch * len(timed) / sum(timed)
    result = {
        "losses": step_losses,
        "warmup_seconds": seconds[0],
        "step_seconds": timed,
        "median_step_seconds": benchlib.median(timed),
        "global_batch": global_batch,
        "images_per_s": images_per_s,
        "images_per_s_per_replica": images_per_s / replicas,
        "compute_dtype": model.dtype_policy.compute_dtype,
        "loss_scale": _loss_scale(optimizer),
        "per": _per(strategy),
    }
    if not _all_finite(step_losses):
        raise CheckError(f"float16 training losses are not all finite: {step_losses}")
    if not _all_finite(v.numpy() for v in model.variables):
        raise CheckError("the weights are not finite after float16 training")
    return result


def _loss_scale(optimizer):
    scale = getattr(optimizer, "dynamic_scale", None)
    if scale is None:
        scale = getattr(optimizer, "loss_scale", None)
    try:
        return float(np.asarray(scale))
    except (TypeError, ValueError):
        return None


def export_and_serve(model, optimizer, options, steps, model_dir):
    """Check 3: the trained model's checkpoint, exported and served.

    As the programs do it: the training program's checkpoint
    (`tf.train.Checkpoint(model, optimizer, step)` in `<model_dir>/train`),
    restored into a float32 model as export/export_model.py restores it
    (`inference.load_model`), exported to `<model_dir>/export/1`
    (`export_saved_model`, batch norms folded), loaded back with
    `tf.saved_model.load`, and `serving_default` run once on a uint8 image.
    """
    start = time.perf_counter()
    train_dir = os.path.join(model_dir, "train")
    checkpoint = tf.train.Checkpoint(
        model=model,
        optimizer=optimizer,
        step=tf.Variable(steps + 1, dtype=tf.int64, trainable=False),
    )
    manager = tf.train.CheckpointManager(
        checkpoint,
        train_dir,
        max_to_keep=1,
        checkpoint_name=trainer.CHECKPOINT_PREFIX,
    )
    manager.save(checkpoint_number=steps + 1)
    trained = model.get_weights()
    # The export program restores in a process of its own, where Keras'
    # automatic layer names (Xception's shortcut convs are unnamed:
    # "conv2d", "conv2d_1", ...) count from zero, as they did when the
    # trained model was built: the checkpoint is matched by those names.
    tf.keras.backend.clear_session()
    restored = inference.load_model(options, train_dir)
    differ = [
        v.path
        for v, w in zip(restored.weights, trained)
        if not np.array_equal(v.numpy(), w)
    ]
    if differ or len(restored.weights) != len(trained):
        raise CheckError(
            f"the float32 model restored from the {MIXED_PRECISION} training "
            f"checkpoint differs in {len(differ)} weight(s), e.g. {differ[:3]}"
        )
    path = saved_model.export_saved_model(
        restored, options, os.path.join(model_dir, "export"), overwrite=True
    )
    export_seconds = time.perf_counter() - start
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures[serving.SERVING_DEFAULT]
    height, width = options.crop_size
    image = np.random.default_rng(1).integers(
        0, 256, (1, height, width, 3), dtype=np.uint8
    )
    outputs = serve(**{serving.IMAGE_TENSOR: tf.constant(image)})
    predictions = outputs[serving.SEMANTIC_PREDICTIONS].numpy()
    probabilities = outputs[serving.SEMANTIC_PROBABILITIES].numpy()
    result = {
        "path": path,
        "checkpoint_and_export_seconds": export_seconds,
        "predictions_shape": list(predictions.shape),
        "probabilities_shape": list(probabilities.shape),
    }
    if predictions.shape != (1, height, width):
        raise CheckError(
            f"SemanticPredictions has shape {predictions.shape}, expected "
            f"(1, {height}, {width})"
        )
    if probabilities.shape != (1, height, width, options.num_classes):
        raise CheckError(
            f"SemanticProbabilities has shape {probabilities.shape}, expected "
            f"(1, {height}, {width}, {options.num_classes})"
        )
    if not _all_finite([probabilities]):
        raise CheckError("SemanticProbabilities are not finite")
    sums = probabilities.sum(axis=-1)
    if np.max(np.abs(sums - 1.0)) > 1e-3:
        raise CheckError(
            f"SemanticProbabilities sum to {sums.min():.4f}..{sums.max():.4f}, not 1"
        )
    if predictions.min() < 0 or predictions.max() >= options.num_classes:
        raise CheckError("SemanticPredictions are outside the classes")
    return result


def run_check(results, name, stage, fn):
    """Runs one check; records and prints its outcome. Returns its value."""
    start = time.perf_counter()
    try:
        value = fn()
        ok = True
    except Exception as e:  # pylint: disable=broad-except
        value = None
        ok = False
        error = _first_line(e)
        if isinstance(e, tf.errors.ResourceExhaustedError):
            error += (
                " (out of memory: try a smaller --batch_size_per_replica or "
                "--crop_size)"
            )
        traceback.print_exc()
        print(f"FAILED {name} / {stage}: {error}", flush=True)
    entry = dict(value or {}) if ok and isinstance(value, dict) else {}
    entry["ok"] = ok
    entry["seconds"] = time.perf_counter() - start
    if not ok:
        entry["error"] = error
    results[name][stage] = entry
    if ok:
        print(
            f"ok     {name} / {stage} ({entry['seconds']:.1f} s)"
            f"{_summary(stage, entry)}",
            flush=True,
        )
    return value


def _summary(stage, entry):
    if stage == FORWARD_BACKWARD:
        return f": loss {entry['loss']:.4f}, gradient norm {entry['gradient_norm']:.4g}"
    if stage == TRAIN:
        return (
            f": losses {', '.join(f'{l:.4f}' for l in entry['losses'])}; "
            f"{entry['images_per_s']:.3g} images/s, "
            f"{entry['images_per_s_per_replica']:.3g} images/s per {entry['per']}"
        )
    if stage == EXPORT:
        return f": {entry['path']} serves {entry['predictions_shape']} predictions"
    return ""


def check_model(
    name, strategy, crop_size, depth_multiplier, batch_size, steps, export_dir
):
    """Runs the three checks of one model; {stage: result dict}."""
    results = {name: {}}
    options = model_options(name, crop_size, depth_multiplier)
    # Routes are recorded per layer name for the whole process: forget the
    # previous model's (its export's portable ones), so that `describe()`
    # names this model's layers only. The probes run again, as cheap.
    fast_paths.clear()
    batch, global_batch = random_batch(strategy, options, batch_size)
    with trainer.released_custom_gradients():
        run_check(
            results,
            name,
            FORWARD_BACKWARD,
            lambda: forward_backward(strategy, options, batch),
        )
        tf.keras.backend.clear_session()
        gc.collect()
        built = {}

        def train():
            built["model"], built["optimizer"], train_options = build_float16(
                strategy, options, global_batch, steps
            )
            return train_float16(
                strategy,
                built["model"],
                built["optimizer"],
                train_options,
                batch,
                steps,
            )

        run_check(results, name, TRAIN, train)
        # The routes of the training step's trace (the export's, next,
        # records the portable routes it takes).
        results[name]["fast_paths"] = fast_paths.describe()
        print(f"  fast paths after {name}'s training (fast_paths.describe()):")
        for line in results[name]["fast_paths"]:
            print(f"    {line}", flush=True)

        def export():
            if "model" not in built:
                raise CheckError(f"no {MIXED_PRECISION} model: it failed to build")
            return export_and_serve(
                built["model"],
                built["optimizer"],
                options,
                steps,
                os.path.join(export_dir, name),
            )

        run_check(results, name, EXPORT, export)
    built.clear()
    tf.keras.backend.clear_session()
    gc.collect()
    results[name]["peak_gpu_memory_mb"] = _peak_gpu_memory_mb()
    return results[name]


def _peak_gpu_memory_mb():
    """Peak memory of each GPU since the last reset, in MB (reset after)."""
    peaks = {}
    for device in tf.config.list_logical_devices("GPU"):
        key = device.name.split("device:")[-1]
        try:
            peaks[key] = tf.config.experimental.get_memory_info(key)["peak"] / 2**20
            tf.config.experimental.reset_memory_stats(key)
        except (ValueError, RuntimeError):
            pass
    return peaks


def summary_table(results, per):
    """The final table: a row per model, a column per check and the speeds."""
    header = ("model", FORWARD_BACKWARD, TRAIN, EXPORT, "images/s", f"per {per}")
    rows = [header]
    for name, stages in results.items():
        train = stages.get(TRAIN, {})
        rows.append(
            (
                name,
                *("ok" if stages.get(s, {}).get("ok") else "FAILED" for s in STAGES),
                f"{train['images_per_s']:.3g}" if train.get("ok") else "-",
                f"{train['images_per_s_per_replica']:.3g}" if train.get("ok") else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
        for row in rows
    )


def parse_crop(values):
    try:
        crop = tuple(int(v) for v in values)
    except ValueError as e:
        raise app.UsageError(f"--crop_size must be two integers, got {values}") from e
    if len(crop) != 2:
        raise app.UsageError(f"--crop_size must be height,width, got {values}")
    return crop


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    crop_size = parse_crop(_CROP_SIZE.value)
    names = [n.strip() for n in _MODELS.value if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        raise app.UsageError(
            f"--models: unknown {unknown} (known: {', '.join(MODELS)})"
            if unknown
            else "--models is empty"
        )
    for name in names:
        try:
            model_options(name, crop_size, _DEPTH_MULTIPLIER.value)
        except ValueError as e:
            raise app.UsageError(f"--models={name}: {e}") from e
        if min(crop_size) < MODELS[name].min_crop:
            raise app.UsageError(
                f"--crop_size={crop_size[0]},{crop_size[1]} is too small for "
                f"{name}: its backbone needs at least {MODELS[name].min_crop} "
                f"pixels a side (e.g. --crop_size=81,81)"
            )

    gpus, devices = setup_devices(_CPU_REPLICAS.value)
    if not gpus and _REQUIRE_GPU.value:
        print(
            "--require_gpu: no GPU visible to TensorFlow "
            "(tf.config.list_physical_devices('GPU') is empty; TensorFlow "
            f"{tf.__version__}, built with CUDA: {tf.test.is_built_with_cuda()}). "
            "Check the NVIDIA driver (nvidia-smi), CUDA_VISIBLE_DEVICES, and "
            "that TensorFlow has GPU support (pip install 'tensorflow[and-cuda]').",
            file=sys.stderr,
            flush=True,
        )
        return NO_GPU_STATUS
    strategy = tf.distribute.MirroredStrategy(devices)
    replicas = strategy.num_replicas_in_sync
    if not gpus:
        print(no_gpu_line(strategy), flush=True)
    for line in environment_lines(gpus, strategy):
        print(line, flush=True)
    batch_size = _BATCH_SIZE_PER_REPLICA.value
    steps = _STEPS.value
    print(
        f"Checking {', '.join(names)} at {crop_size[0]}x{crop_size[1]}, "
        f"{batch_size} image(s) per replica x {replicas} replica(s), "
        f"{steps} timed {MIXED_PRECISION} step(s) after 1 warm-up step.",
        flush=True,
    )

    export_dir = _OUTPUT_DIR.value or tempfile.mkdtemp(prefix="gpu_smoke_")
    results = {}
    start = time.perf_counter()
    try:
        for name in names:
            print(f"--- {name}: {MODELS[name].description}", flush=True)
            try:
                results[name] = check_model(
                    name,
                    strategy,
                    crop_size,
                    _DEPTH_MULTIPLIER.value,
                    batch_size,
                    steps,
                    export_dir,
                )
            except Exception as e:  # pylint: disable=broad-except
                # Outside the checks (e.g. the batch): every check failed.
                traceback.print_exc()
                error = _first_line(e)
                print(f"FAILED {name} / setup: {error}", flush=True)
                results[name] = {s: {"ok": False, "error": error} for s in STAGES}
                results[name]["peak_gpu_memory_mb"] = {}
    finally:
        if not _OUTPUT_DIR.value:
            shutil.rmtree(export_dir, ignore_errors=True)
    failures = [
        f"{name} / {stage}: {stages[stage]['error']}"
        for name, stages in results.items()
        for stage in STAGES
        if not stages[stage]["ok"]
    ]
    ok = not failures

    print("--- summary")
    if not gpus:
        print(no_gpu_line(strategy))
    else:
        print(f"{replicas} GPU(s): {', '.join(strategy.extended.worker_devices)}")
    print(summary_table(results, _per(strategy)))
    figures = []
    for name, stages in results.items():
        train = stages[TRAIN]
        if train["ok"]:
            detail = (
                f"{crop_size[0]}x{crop_size[1]}, global batch "
                f"{train['global_batch']} over {replicas} replica(s), "
                f"{MIXED_PRECISION}, {steps} timed step(s)"
            )
            figures.append(
                benchlib.figure(
                    f"{name}_images_per_s", train["images_per_s"], "images/s", detail
                )
            )
            figures.append(
                benchlib.figure(
                    f"{name}_images_per_s_per_{_per(strategy).lower()}",
                    train["images_per_s_per_replica"],
                    "images/s",
                    "the above divided by the replicas",
                )
            )
        for device, peak in stages["peak_gpu_memory_mb"].items():
            figures.append(
                benchlib.figure(
                    f"{name}_peak_memory_{device}",
                    peak,
                    "MB",
                    "peak of tf.config.experimental.get_memory_info",
                )
            )
    if figures:
        print(benchlib.format_figures(figures))
    seconds = time.perf_counter() - start
    if ok:
        print(f"PASSED: every check passed in {seconds:.0f} s.")
    else:
        print(f"FAILED: {len(failures)} check(s) failed in {seconds:.0f} s:")
        for failure in failures:
            print(f"  {failure}")
    if _JSON.value:
        print(
            json.dumps(
                {
                    "benchmark": BENCHMARK,
                    "ok": ok,
                    "gpu": bool(gpus),
                    "tf_version": tf.__version__,
                    "devices": list(strategy.extended.worker_devices),
                    "replicas": replicas,
                    "crop_size": list(crop_size),
                    "batch_size_per_replica": batch_size,
                    "steps": steps,
                    "models": results,
                    "failures": failures,
                    "peak_rss_mb": benchlib.peak_rss_mb(),
                    "seconds": seconds,
                }
            )
        )
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    app.run(main)

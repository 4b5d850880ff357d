"""Fine-tuned TFLite variants (QAT int8, pruned) made under tf_keras.

tensorflow-model-optimization 0.8 accepts only tf_keras models, and
`TF_USE_LEGACY_KERAS=1` must be set before TensorFlow is imported, so this
work runs in a subprocess (`python -m deeplab_dpc.export.legacy_keras
WORK_DIR`) started by `run` from the Keras 3 process:

1. `run` writes into WORK_DIR the model's weights keyed by layer path and
   weight index (`keras_paths.save_weights`: `"<layer>/<sublayer>/...:<i>"` in an .npz,
   which both Keras versions produce alike, unlike variable names or
   orders), the parity images, and `request.json` (model options, variants,
   `FineTuneOptions`).
2. The subprocess builds the same architecture with `deeplab.build_deeplab`
   (the layers build under both Keras versions), loads the weights by path
   (`keras_paths.load_weights`, which fails on any missing, extra or misshapen weight),
   and runs the parity images through it ("float" outputs: the caller checks
   they equal the Keras 3 model's).
3. Per variant, in `VARIANTS` order: "qat_int8" (`qat.quantize`, which
   copies the float model, `qat.calibrate`, `qat_steps` of fine-tuning),
   then "pruned" (`pruning.prunable`, which wraps the float model's own
   layers, `pruning_steps` of fine-tuning with the sparsity ramping to
   `target_sparsity`, `pruning.strip`). Fine-tuning reads the training split through the
   project's pipeline and minimizes DeepLab's loss
   (`trainer.pixel_loss_sum`, plus weight decay), with batch norm frozen
   (`trainer.freeze_batch_norm`: its statistics stay the float model's,
   as DeepLab fine-tunes with small batches).
4. It writes each fine-tuned model as a frozen GraphDef `<variant>.pb`
   (`images` float32 `[batch, crop_h, crop_w, 3]` -> `logits`; the QAT one
   keeps its FakeQuant ops), their outputs on the parity images
   (`outputs.npz`) and `result.json` (losses, sparsity, tensor names).
   The calling process converts the graphs to TFLite like every variant.

The subprocess reports its calibration and fine-tuning steps as progress
lines (`deeplab_dpc.progress`) on its standard error; `run` passes them on
to its own as they come and keeps the rest for its error message.
"""

import dataclasses
import json
import os
import subprocess
import sys
import threading
from typing import Optional

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import (
    convert_to_constants,
)  # pylint: disable=g-direct-tensorflow-import

from deeplab_dpc import processes
from deeplab_dpc import progress
from deeplab_dpc.cells import cell_spec
from deeplab_dpc.data import pipeline
from deeplab_dpc.export import keras_paths
from deeplab_dpc.models import deeplab
from deeplab_dpc.training import trainer

LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"
REQUEST_FILE = "request.json"
RESULT_FILE = "result.json"
WEIGHTS_FILE = "weights.npz"
IMAGES_FILE = "parity_images.npz"
OUTPUTS_FILE = "outputs.npz"
FLOAT = "float"
QAT_INT8 = "qat_int8"
PRUNED = "pruned"
VARIANTS = (QAT_INT8, PRUNED)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FineTuneOptions:
    """Fine-tuning of the QAT and pruned variants.

    Attributes:
      dataset_dir: str, the TFRecord shards (`--dataset_dir`).
      train_split: str, the split fine-tuned on.
      batch_size: int, images per step.
      qat_learning_rate: float, constant SGD learning rate of QAT. QAT
        starts close to the float model and wants small steps: on the
        synthetic set (MobileNet-v2 0.35 + DPC, 65 px, 300 steps) 1e-5 gave
        an mIOU 0.07 points below float, 1e-4 1.2 points, 1e-3 2.9 points.
      pruning_learning_rate: float, the same for pruning, which must recover
        from the removed weights: 1e-3 lost 6.8 mIOU points at 50% sparsity
        there, 1e-4 16, 1e-5 40.
      momentum: float, SGD momentum.
      ignore_label: int, the data set's.
      qat_steps: int >= 0, QAT fine-tuning steps.
      calibration_steps: int >= 1, batches that set the QAT ranges first.
      target_sparsity: float in (0, 1), the pruned kernels' final sparsity.
      pruning_steps: int >= 1, pruning fine-tuning steps.
      seed: int or None, seeds the pipeline.
      run_eagerly: bool, run the training steps eagerly instead of in a
        `tf.function` (whose tracing costs as much as ~10 eager steps of a
        quantization-aware model: worth it only for a few steps).
    """

    dataset_dir: str
    train_split: str = "train"
    batch_size: int = 8
    qat_learning_rate: float = 1e-5
    pruning_learning_rate: float = 1e-3
    momentum: float = 0.9
    ignore_label: int = 255
    qat_steps: int = 1000
    calibration_steps: int = 10
    target_sparsity: float = 0.5
    pruning_steps: int = 1000
    seed: Optional[int] = 0
    run_eagerly: bool = False

    def __post_init__(self):
        for name, minimum in (
            ("batch_size", 1),
            ("qat_steps", 0),
            ("calibration_steps", 1),
            ("pruning_steps", 1),
        ):
            if getattr(self, name) < minimum:
                raise ValueError(
                    f"{name} must be >= {minimum}, got {getattr(self, name)}"
                )
        if not 0.0 < self.target_sparsity < 1.0:
            raise ValueError(
                f"target_sparsity must be in (0, 1), got {self.target_sparsity}"
            )


def options_to_json(options):
    """A `deeplab.ModelOptions` as JSON-ready values."""
    values = dataclasses.asdict(options)
    cell = options.dense_prediction_cell
    values["dense_prediction_cell"] = (
        None if cell is None else cell_spec.cell_to_json(cell)
    )
    return values


def options_from_json(values):
    """The inverse of `options_to_json`."""
    values = dict(values)
    cell = values["dense_prediction_cell"]
    values["dense_prediction_cell"] = (
        None if cell is None else cell_spec.cell_from_json(cell, source="request")
    )
    for name in ("crop_size", "image_pooling_crop_size"):
        if values[name] is not None:
            values[name] = tuple(values[name])
    return deeplab.ModelOptions(**values)


def run(
    variants, model, model_options, fine_tune, parity_images, work_dir, timeout=None
):
    """Makes the fine-tuned variants in a tf_keras subprocess.

    Args:
      variants: names from `VARIANTS`.
      model: the Keras 3 DeepLab model with its weights.
      model_options: its `deeplab.ModelOptions`.
      fine_tune: `FineTuneOptions`.
      parity_images: float32 `[n, crop_h, crop_w, 3]` in [0, 255].
      work_dir: str, an existing empty folder; gets `<variant>.pb`.
      timeout: seconds or None.

    Returns:
      dict with "outputs" (`FLOAT` and each variant -> the tf_keras model's
      logits on the parity images, before and after fine-tuning) and per
      variant its result: "graph" (the GraphDef's path), "input" and
      "output" (tensor names), "losses", and "sparsity"... for "pruned".

    Raises:
      RuntimeError: when the subprocess fails, with its error output.
    """
    keras_paths.save_weights(model, os.path.join(work_dir, WEIGHTS_FILE))
    np.savez(os.path.join(work_dir, IMAGES_FILE), images=parity_images)
    request = {
        "variants": list(variants),
        "model_options": options_to_json(model_options),
        "fine_tune": dataclasses.asdict(fine_tune),
    }
    with open(os.path.join(work_dir, REQUEST_FILE), "w") as f:
        json.dump(request, f, indent=2)
    env = dict(os.environ, **{LEGACY_KERAS_ENV: "1"})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    progress.emit(f"fine-tuning {', '.join(variants)} in a tf_keras process")
    returncode, errors = _run_passing_progress(
        [sys.executable, "-m", __name__, work_dir], env, timeout
    )
    if returncode != 0:
        raise RuntimeError(
            f"the tf_keras subprocess for {list(variants)} failed "
            f"(exit {returncode}):\n{errors[-4000:]}"
        )
    with open(os.path.join(work_dir, RESULT_FILE)) as f:
        result = json.load(f)
    with np.load(os.path.join(work_dir, OUTPUTS_FILE)) as outputs:
        result["outputs"] = {key: outputs[key] for key in outputs.files}
    return result


def _run_passing_progress(command, env, timeout):
    """Runs `command`; passes its progress lines on to this process's
    standard error as they come.

    Returns:
      (exit status, the rest of its standard error).

    Raises:
      subprocess.TimeoutExpired: after `timeout` seconds (it is killed).
    """
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **processes.child_kwargs(env),  # A killed export leaves no child.
    )
    errors = []

    def read():
        for line in proc.stderr:
            if progress.is_progress_line(line):
                progress.emit(line.rstrip("\n"))
            else:
                errors.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        reader.join()
        proc.stderr.close()
    return returncode, "".join(errors)


def fine_tune_model(
    model, batches, steps, learning_rate, options, hooks=None, what=None
):
    """Fine-tunes a tf_keras model with DeepLab's loss (SGD with momentum).

    Args:
      model: the (quantization-aware or prunable) tf_keras model.
      batches: iterator of pipeline batches (`pipeline.IMAGE`, `LABEL`).
      steps: int >= 0.
      learning_rate: float.
      options: `FineTuneOptions` (momentum, ignore label, eagerness).
      hooks: object with `begin()` and `end()` called around the steps.
      what: str or None; when given, a progress line "<what> fine-tuning
        step n/N: loss ..." every tenth of the steps.

    Returns:
      list of the steps' losses.

    Raises:
      FloatingPointError: on a non-finite loss, naming the step.
    """
    optimizer = tf.keras.optimizers.SGD(learning_rate, momentum=options.momentum)

    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = trainer.regularized_loss(
                model, logits, labels, ignore_label=options.ignore_label
            )
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    if not options.run_eagerly:
        step = tf.function(step)
    losses = []
    steps_done = progress.Progress(f"{what} fine-tuning step", steps) if what else None
    if hooks is not None:
        hooks.begin()
    for i in range(steps):
        batch = next(batches)
        loss = float(step(batch[pipeline.IMAGE], batch[pipeline.LABEL]))
        if not np.isfinite(loss):
            raise FloatingPointError(f"non-finite fine-tuning loss at step {i}")
        losses.append(loss)
        if steps_done is not None:
            steps_done.advance(detail=f"loss {loss:.4f}")
    if hooks is not None:
        hooks.end()
    return losses


def freeze(model, crop_size, path):
    """Writes `images -> logits` of a model as a frozen GraphDef.

    Returns:
      (input tensor name, output tensor name).
    """
    spec = tf.TensorSpec([None, *crop_size, 3], tf.float32, name="images")
    function = tf.function(lambda images: model(images, training=False))
    frozen = convert_to_constants.convert_variables_to_constants_v2(
        function.get_concrete_function(spec)
    )
    with open(path, "wb") as f:
        f.write(frozen.graph.as_graph_def().SerializeToString())
    return frozen.inputs[0].name, frozen.outputs[0].name


def _make_variant(variant, model, options, batches, work_dir):
    """Fine-tunes and freezes one variant; returns (model, result)."""
    # Imported here: both need tensorflow-model-optimization, which needs
    # tf_keras (this subprocess).
    from deeplab_dpc.export import pruning  # pylint: disable=g-import-not-at-top
    from deeplab_dpc.export import qat  # pylint: disable=g-import-not-at-top

    if variant == QAT_INT8:
        # Frozen after `quantize`, whose weight copy needs the original
        # order of trainable and frozen weights.
        tuned = qat.quantize(model)
        trainer.freeze_batch_norm(tuned)
        images = (
            next(batches)[pipeline.IMAGE] for _ in range(options.calibration_steps)
        )
        calibration = progress.Progress(
            f"{variant} calibration batch", options.calibration_steps
        )
        ranges = qat.calibrate(tuned, calibration.track(images))
        losses = fine_tune_model(
            tuned,
            batches,
            options.qat_steps,
            options.qat_learning_rate,
            options,
            what=variant,
        )
        result = {"losses": losses, "calibrated_ranges": ranges}
    else:
        trainer.freeze_batch_norm(model)
        schedule = pruning.schedule(options.target_sparsity, options.pruning_steps)
        wrapped = pruning.prunable(model, schedule)
        hooks = pruning.StepHooks(wrapped)
        losses = fine_tune_model(
            wrapped,
            batches,
            options.pruning_steps,
            options.pruning_learning_rate,
            options,
            hooks,
            what=variant,
        )
        tuned = pruning.strip(wrapped)
        result = {"losses": losses, **pruning.sparsity(tuned)}
    graph = os.path.join(work_dir, f"{variant}.pb")
    crop_size = tuple(tuned.input_shape[1:3])
    result["input"], result["output"] = freeze(tuned, crop_size, graph)
    result["graph"] = graph
    return tuned, result


def _is_tf_keras():
    return tf.keras.Model.__module__.startswith("tf_keras")


def main(work_dir):
    """The subprocess: reads the request in `work_dir`, writes the files."""
    if not _is_tf_keras():
        raise SystemExit(f"run with {LEGACY_KERAS_ENV}=1: tf.keras is not tf_keras")
    with open(os.path.join(work_dir, REQUEST_FILE)) as f:
        request = json.load(f)
    model_options = options_from_json(request["model_options"])
    fine_tune = FineTuneOptions(**request["fine_tune"])
    with np.load(os.path.join(work_dir, IMAGES_FILE)) as saved:
        images = saved["images"]
    batches = iter(
        pipeline.make_dataset(
            fine_tune.dataset_dir,
            fine_tune.train_split,
            crop_size=model_options.crop_size,
            batch_size=fine_tune.batch_size,
            is_training=True,
            ignore_label=fine_tune.ignore_label,
            seed=fine_tune.seed,
        )
    )
    model = deeplab.build_deeplab(model_options)
    keras_paths.load_weights(model, os.path.join(work_dir, WEIGHTS_FILE))
    outputs = {FLOAT: model(images, training=False).numpy()}
    result = {}
    # In `VARIANTS` order: QAT works on a copy of the model's weights (and
    # leaves it as it was), pruning changes the model itself.
    for variant in [v for v in VARIANTS if v in request["variants"]]:
        tuned, result[variant] = _make_variant(
            variant, model, fine_tune, batches, work_dir
        )
        outputs[variant] = tuned(images, training=False).numpy()
    np.savez(os.path.join(work_dir, OUTPUTS_FILE), **outputs)
    with open(os.path.join(work_dir, RESULT_FILE), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    processes.die_with_parent_from_env()
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {LEGACY_KERAS_ENV}=1 python -m {__name__} WORK_DIR")
    main(sys.argv[1])

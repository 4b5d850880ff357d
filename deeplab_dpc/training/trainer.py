"""DeepLab training: a custom `tf.distribute` loop (DeepLab's train.py).

`run` builds the model and an SGD-with-momentum optimizer under
`strategy.scope()`, reads the training split through
`pipeline.distributed_dataset` and trains with `strategy.run` and a
`tf.GradientTape` inside one `tf.function`. `Model.fit` is not used: Keras 3's
`fit` fails under `MultiWorkerMirroredStrategy`, a custom loop does not.

Loss: DeepLab's softmax cross-entropy over the valid pixels of the GLOBAL
batch, with optional hard example mining, plus the L2 (see `losses`): each
replica divides its pixel-loss sum by the global count (an all-reduce) and
adds `1 / num_replicas` of the L2, so the replicas' summed losses and
gradients are the global batch's.

Learning rate: DeepLab's poly or step policy with slow start
(`DeepLabLearningRate`).

Speed levers: with `TrainOptions.jit_compile` each replica's forward and
backward pass is XLA-compiled (see `build_train_step`); the all-reduce and
the optimizer update stay outside XLA, where every strategy supports them.
`TrainOptions.mixed_precision` builds the model under a `speed` dtype policy.

Checkpoints: `tf.train.Checkpoint(model, optimizer, step)` in the log dir,
every `save_interval_secs` and at the end, `max_to_keep` kept; a new `run`
restores the latest one and continues to `training_number_of_steps`. SIGTERM
makes the loop save and return (at once when there is nothing to save;
see `_TerminationFlag`). A non-finite loss raises `FloatingPointError`
naming the step, and no checkpoint is ever written from non-finite weights.

Fine-tuning (DeepLab's `tf_initial_checkpoint`, `initialize_last_layer`,
`last_layers_contain_logits_only`): a run whose log dir has no checkpoint yet
initialises the MODEL weights (not the optimizer, not the step) from
`tf_initial_checkpoint`, a checkpoint written by this program; a resumed run
restores its own latest checkpoint and ignores it. See
`initial_checkpoint.restore_initial_checkpoint` for how the last layers
are skipped.
"""

import contextlib
import dataclasses
import functools
import os
import shutil
import signal
import threading
import time
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import (
    ops as tf_ops,
)  # pylint: disable=g-direct-tensorflow-import

from deeplab_dpc.data import pipeline
from deeplab_dpc.data import registry
from deeplab_dpc.layers import fast_paths
from deeplab_dpc.models import deeplab
from deeplab_dpc.training import initial_checkpoint
from deeplab_dpc.training import losses
from deeplab_dpc.training import speed

POLICY_POLY = "poly"
POLICY_STEP = "step"
LEARNING_POLICIES = (POLICY_POLY, POLICY_STEP)

CHECKPOINT_PREFIX = "ckpt"

# The loss and fine-tuning live in `losses` and `initial_checkpoint`; these
# names stay importable from here for the callers that predate the split.
top_k_fraction = losses.top_k_fraction
pixel_loss_sum = losses.pixel_loss_sum
regularized_loss = losses.regularized_loss

_CUSTOM_GRADIENT_PREFIX = "CustomGradient-"


@contextlib.contextmanager
def released_custom_gradients():
    """Drops the custom gradients registered within it, when it ends.

    In a `tf.function`, each call of a `tf.custom_gradient` function (the
    native dilated depthwise conv's, the upsampling's) registers its gradient
    in TensorFlow's global gradient registry for good, and the gradient's
    closure holds tensors of the traced graph, so no graph of a model that
    trained in this process is ever freed (tensorflow/tensorflow#97697, open
    in TF 2.21). A process that trains model after model (a search worker's
    proxy trials, the re-rank) grew by about 11 MB a proxy trial. Use it
    around code whose graphs are dead when it ends; also a decorator.
    """
    known = getattr(getattr(tf_ops, "_gradient_registry", None), "_registry", None)
    before = set(known) if isinstance(known, dict) else None
    try:
        yield
    finally:
        if before is not None:
            for name in set(known) - before:
                if name.startswith(_CUSTOM_GRADIENT_PREFIX):
                    del known[name]


resolve_initial_checkpoint = initial_checkpoint.resolve_initial_checkpoint
restore_initial_checkpoint = initial_checkpoint.restore_initial_checkpoint


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Training settings, DeepLab's train.py flags.

    Attributes:
      train_batch_size: int, the GLOBAL batch (split over the replicas).
      training_number_of_steps: int, the step a run trains to.
      base_learning_rate, learning_policy ("poly" or "step"), learning_power,
        end_learning_rate, learning_rate_decay_step,
        learning_rate_decay_factor, slow_start_step, slow_start_learning_rate:
        the learning rate (see `DeepLabLearningRate`).
      momentum: float, SGD momentum.
      hard_example_mining_step, top_k_percent_pixels: hard example mining
        (see the module docstring); `top_k_percent_pixels == 1` disables it.
      log_steps: int, steps between log lines and summaries.
      save_interval_secs: float, seconds between checkpoints (<= 0: only at
        the end).
      max_to_keep: int, checkpoints kept.
      seed: int or None, seeds weights, dropout and the input pipeline.
      min_scale_factor, max_scale_factor, scale_factor_step_size: the random
        scale augmentation.
      train_split: str, the split read for training.
      dataset_dir: str, the folder of the TFRecord shards.
      ignore_label: int, the label that does not count.
      fine_tune_batch_norm: bool; False freezes batch norm (moving statistics
        and frozen gamma/beta), as DeepLab does for small batches.
      tf_initial_checkpoint: str, a checkpoint of this program (a prefix, or
        a directory: its latest checkpoint) whose model weights initialise a
        run that starts from scratch; "" starts from the model's own
        initialisation. Ignored when the log dir already has a checkpoint.
      initialize_last_layer: bool; False does not restore the last layers
        (to fine-tune with a different number of classes).
      last_layers_contain_logits_only: bool; the last layers are the logits
        layer only (True) or the logits, head (DPC/ASPP) and decoder (False).
      save_summaries_images: bool; at every log step the chief also writes
        an image of the batch with its true and predicted labels colorized.
      colormap_type: the colormap of those label images.
      jit_compile: bool, XLA-compile each replica's forward and backward
        pass (the optimizer update stays outside XLA, see `run`).
      mixed_precision: "none", "bfloat16" or "float16" (see `speed`): the
        dtype policy the model is built under; "float16" also scales the
        loss (`LossScaleOptimizer`).
    """

    train_batch_size: int = 8
    training_number_of_steps: int = 30000
    base_learning_rate: float = 1e-4
    learning_policy: str = POLICY_POLY
    learning_power: float = 0.9
    end_learning_rate: float = 0.0
    learning_rate_decay_step: int = 2000
    learning_rate_decay_factor: float = 0.1
    slow_start_step: int = 0
    slow_start_learning_rate: float = 1e-4
    momentum: float = 0.9
    hard_example_mining_step: int = 0
    top_k_percent_pixels: float = 1.0
    log_steps: int = 10
    save_interval_secs: float = 1200.0
    max_to_keep: int = 5
    seed: Optional[int] = None
    min_scale_factor: float = 0.5
    max_scale_factor: float = 2.0
    scale_factor_step_size: float = 0.25
    train_split: str = "train"
    dataset_dir: Optional[str] = None
    ignore_label: int = 255
    fine_tune_batch_norm: bool = True
    tf_initial_checkpoint: str = ""
    initialize_last_layer: bool = True
    last_layers_contain_logits_only: bool = False
    save_summaries_images: bool = False
    colormap_type: str = "pascal"
    jit_compile: bool = False
    mixed_precision: str = speed.MIXED_PRECISION_NONE

    def __post_init__(self):
        for name in (
            "train_batch_size",
            "training_number_of_steps",
            "log_steps",
            "max_to_keep",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("hard_example_mining_step", "slow_start_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.learning_power > 0:
            raise ValueError(f"learning_power must be > 0, got {self.learning_power}")
        # 0 is allowed here (a step that changes no weight, in tests); the
        # training program's flag wants > 0.
        for name in (
            "base_learning_rate",
            "end_learning_rate",
            "slow_start_learning_rate",
            "momentum",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learning_policy not in LEARNING_POLICIES:
            raise ValueError(
                f"learning_policy must be one of {LEARNING_POLICIES}, got "
                f"{self.learning_policy!r}"
            )
        if self.learning_policy == POLICY_STEP and self.learning_rate_decay_step < 1:
            raise ValueError(
                f"learning_rate_decay_step must be >= 1, got "
                f"{self.learning_rate_decay_step}"
            )
        if not 0.0 < self.top_k_percent_pixels <= 1.0:
            raise ValueError(
                f"top_k_percent_pixels must be in (0, 1], got "
                f"{self.top_k_percent_pixels}"
            )
        speed.check_mixed_precision(self.mixed_precision)


class DeepLabLearningRate(tf.keras.optimizers.schedules.LearningRateSchedule):
    """DeepLab's learning rate: poly or step policy, with slow start.

    poly: `(base - end) * (1 - min(step, total) / total) ** power + end`;
    step: `base * factor ** floor(step / decay_step)`; for
    `step < slow_start_step` the rate is `slow_start_learning_rate`.

    Args:
      options: a `TrainOptions`.

    Call: `schedule(step)` -> float32 scalar tensor, `step` the number of
    steps already taken.
    """

    def __init__(self, options):
        self.options = options

    def __call__(self, step):
        o = self.options
        step = tf.cast(step, tf.float32)
        if o.learning_policy == POLICY_POLY:
            total = float(o.training_number_of_steps)
            frac = 1.0 - tf.minimum(step, total) / total
            rate = (o.base_learning_rate - o.end_learning_rate) * tf.pow(
                frac, o.learning_power
            ) + o.end_learning_rate
        else:
            rate = o.base_learning_rate * tf.pow(
                o.learning_rate_decay_factor,
                tf.floor(step / float(o.learning_rate_decay_step)),
            )
        return tf.where(
            step < float(o.slow_start_step),
            tf.constant(o.slow_start_learning_rate, tf.float32),
            tf.cast(rate, tf.float32),
        )

    def get_config(self):
        return dataclasses.asdict(self.options)


def is_chief(strategy):
    """True for the chief (or a single-process run)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    return (
        task_type == "worker"
        and task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def _num_workers(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, len(spec.get("chief", [])) + len(spec.get("worker", [])))


def freeze_batch_norm(model):
    """Freezes every BatchNormalization layer (inference mode, fixed params)."""
    for layer in model._flatten_layers(
        include_self=False
    ):  # pylint: disable=protected-access
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.trainable = False


# The training program's exit status after a SIGTERM (checkpoint written):
# 128 + SIGTERM, what a shell reports for a process SIGTERM stopped, so that
# schedulers see a run to restart, not a finished one (0) or a failure (1).
EXIT_TERMINATED = 128 + int(signal.SIGTERM)


# After a SIGTERM with steps to save, the loop has this long (plus twice its
# slowest step and save so far) to save and return; then the process ends
# with EXIT_TERMINATED whatever its main thread is doing (a hung step).
TERMINATION_GRACE_SECS = 20.0


class _TerminationFlag:
    """Set by SIGTERM; the loop then saves and returns.

    With nothing to save (before the first step of this run ends, or right
    after a checkpoint), a single-worker run ends at once with
    `EXIT_TERMINATED`: the handler raises `SystemExit` when the main thread
    runs Python (e.g. tracing the step), and a watchdog thread ends the
    process when it runs a long op. With steps to save, the watchdog waits
    `TERMINATION_GRACE_SECS` plus twice the slowest step and save for the
    loop to save and return, then ends the process: the handler of Python
    runs only between bytecodes, so a main thread stuck in TensorFlow's
    C++ (a collective that waits forever) would otherwise never stop. The
    watchdog learns of the signal through `signal.set_wakeup_fd`, which the
    interpreter writes to from the signal itself.
    """

    def __init__(self, exit_at_once=True):
        self.requested = False
        self.unsaved = False  # Steps done since the last checkpoint.
        self.slowest = 0.0  # Seconds of the slowest step or save so far.
        self._exit_at_once = exit_at_once
        self._previous = None
        self._previous_fd = None
        self._done = None
        self._pipe = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread: no handler.
            self._previous = None
            return self
        read_fd, write_fd = os.pipe()
        try:
            os.set_blocking(write_fd, False)
            self._previous_fd = signal.set_wakeup_fd(
                write_fd, warn_on_full_buffer=False
            )
        except (OSError, ValueError):
            os.close(read_fd)
            os.close(write_fd)
            return self
        self._pipe = (read_fd, write_fd)
        self._done = threading.Event()
        threading.Thread(
            target=self._watch, args=(read_fd,), name="sigterm_watchdog", daemon=True
        ).start()
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True
        if self._exit_at_once and not self.unsaved:
            logging.warning("SIGTERM received: no step to save; stopping.")
            raise Terminated()
        logging.warning("SIGTERM received: saving a checkpoint and stopping.")

    def _watch(self, read_fd):
        try:
            self._wait_and_end(read_fd)
        finally:
            os.close(read_fd)

    def _wait_and_end(self, read_fd):
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data or self._done.is_set():
                return
            if int(signal.SIGTERM) in data:
                break
        wait = 2.0 if self._exit_at_once and not self.unsaved else (
            TERMINATION_GRACE_SECS + 2 * self.slowest
        )
        if self._done.wait(wait):
            return
        os.write(
            2,
            f"SIGTERM: the training loop did not stop within {wait:.0f} s; "
            f"ending the process (exit status {EXIT_TERMINATED}).\n".encode(),
        )
        os._exit(EXIT_TERMINATED)  # pylint: disable=protected-access

    def __exit__(self, *exc):
        if self._pipe is not None:
            self._done.set()
            try:
                signal.set_wakeup_fd(self._previous_fd)
            except ValueError:
                pass
            try:
                os.write(self._pipe[1], b"\0")  # Wakes the watchdog to end.
            except OSError:
                pass
            os.close(self._pipe[1])  # Its read end closes with the thread.
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


class Terminated(SystemExit):
    """Ends the process with `EXIT_TERMINATED`: `run` stopped on SIGTERM.

    Raised by `stop_if_terminated`, for callers of `run` that must not go on
    (the search's pretraining and re-rank) once it returned early.
    """

    def __init__(self):
        super().__init__(EXIT_TERMINATED)


def stop_if_terminated(results):
    """Raises `Terminated` when `results` (of `run`) says SIGTERM stopped it."""
    if results["terminated"]:
        raise Terminated()


def _all_finite(variables):
    return all(bool(np.all(np.isfinite(v.numpy()))) for v in variables)


def write_image_summaries(model, strategy, batch, step, options):
    """The first image of this worker's batch, its labels and prediction.

    Labels are colorized with `options.colormap_type` (ignored pixels take
    the colormap's color of the ignore label).
    """
    image = strategy.experimental_local_results(batch[pipeline.IMAGE])[0][:1]
    label = strategy.experimental_local_results(batch[pipeline.LABEL])[0][:1]
    logits = model(image, training=False)
    prediction = tf.argmax(logits, axis=-1, output_type=tf.int32)
    tf.summary.image("image", tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), step)
    tf.summary.image(
        "label", registry.colorize(label[..., 0], options.colormap_type), step
    )
    tf.summary.image(
        "prediction", registry.colorize(prediction, options.colormap_type), step
    )


def build_optimizer(options, model):
    """SGD with momentum on `DeepLabLearningRate`, built for `model`.

    Under float16 mixed precision it is wrapped in a `LossScaleOptimizer`
    (dynamic loss scale), which unscales the gradients and skips steps
    whose gradients are not finite. Call it under the strategy's scope.
    """
    optimizer = tf.keras.optimizers.SGD(
        learning_rate=DeepLabLearningRate(options), momentum=options.momentum
    )
    if options.mixed_precision in speed.LOSS_SCALED:
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer


def build_train_step(model, optimizer, strategy, options):
    """The training step `run` takes (also what bench/levers.py times).

    Args:
      model: the Keras model, built under `strategy.scope()` and the dtype
        policy of `options.mixed_precision`.
      optimizer: its optimizer, built; a `LossScaleOptimizer` for float16.
      strategy: the `tf.distribute.Strategy` of the model.
      options: a `TrainOptions` (ignore label, jit_compile, mixed_precision).

    Returns:
      A `tf.function` `train_step(batch, fraction)`: one step on a
      distributed batch of `pipeline.IMAGE` / `pipeline.LABEL`, with the
      hard-mining fraction a float32 scalar tensor (a tensor, so that the
      mining ramp does not retrace it); returns the step's loss.
    """
    o = options
    num_replicas = strategy.num_replicas_in_sync
    loss_scaled = o.mixed_precision in speed.LOSS_SCALED

    def replica_gradients(images, labels, fraction, loss_scale):
        """Pixel-loss sum, count and L2 of a replica's batch, and gradients.

        The gradients of the (loss-scaled) pixel-loss sum and L2 come
        apart: the loss divides the sum by the GLOBAL count, an all-reduce,
        which cannot run inside XLA on every strategy.
        """
        with tf.GradientTape(persistent=True) as tape:
            logits = model(images, training=True)
            loss_sum, count = losses.pixel_loss_sum(
                logits,
                labels,
                ignore_label=o.ignore_label,
                top_k_fraction_value=fraction,
            )
            l2 = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
            scaled_sum, scaled_l2 = loss_sum * loss_scale, l2 * loss_scale
        variables = model.trainable_variables
        return (
            loss_sum,
            count,
            l2,
            tape.gradient(scaled_sum, variables),
            tape.gradient(scaled_l2, variables),
        )

    compiled = {}

    jit = fast_paths.jit_compile(o.jit_compile)

    def gradients_function():
        if not jit:
            return replica_gradients
        # One XLA function per replica: a compiled cluster runs on one device
        # and must capture that replica's copies of the variables.
        replica = tf.get_static_value(
            tf.distribute.get_replica_context().replica_id_in_sync_group
        )
        key = int(replica) if replica is not None else 0
        if key not in compiled:
            compiled[key] = tf.function(replica_gradients, jit_compile=True)
        return compiled[key]

    def replica_step(batch, fraction):
        ctx = tf.distribute.get_replica_context()
        loss_scale = (
            optimizer.scale_loss(tf.constant(1.0)) if loss_scaled else tf.constant(1.0)
        )
        loss_sum, count, l2, sum_grads, l2_grads = gradients_function()(
            batch[pipeline.IMAGE], batch[pipeline.LABEL], fraction, loss_scale
        )
        global_count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
        inverse_count = tf.math.divide_no_nan(1.0, global_count)
        l2_share = 1.0 / float(num_replicas)
        grads = [
            g * inverse_count if l2_g is None else g * inverse_count + l2_g * l2_share
            for g, l2_g in zip(sum_grads, l2_grads)
        ]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss_sum * inverse_count + l2 * l2_share

    @tf.function
    def train_step(batch, fraction):
        per_replica = strategy.run(replica_step, args=(batch, fraction))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return train_step


class _Checkpoints:
    """A run's checkpoints: resume or initialise, save, clean up.

    The chief writes to `train_logdir`; other workers of a multi-worker run
    write throwaway copies to a `workertemp_*` folder, removed at the end
    (every worker must take part in a save).
    """

    def __init__(self, model, optimizer, step_var, train_logdir, strategy, o):
        self._model = model
        self._step_var = step_var
        self._chief = is_chief(strategy)
        self._checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, step=step_var
        )
        self.directory = train_logdir
        if not self._chief:
            resolver = strategy.cluster_resolver
            self.directory = os.path.join(
                train_logdir, f"workertemp_{resolver.task_type}_{resolver.task_id}"
            )
        self._manager = tf.train.CheckpointManager(
            self._checkpoint,
            self.directory,
            max_to_keep=o.max_to_keep if self._chief else 1,
            checkpoint_name=CHECKPOINT_PREFIX,
        )
        self.latest = tf.train.latest_checkpoint(train_logdir)

    def restore(self, o, model_variant):
        """Resumes from the latest checkpoint, else applies the initial one
        (ours or DeepLab's TF1 one, whose names depend on `model_variant`)."""
        if self.latest:
            self._checkpoint.restore(self.latest).assert_existing_objects_matched()
            logging.info(
                "Restored %s at step %d.", self.latest, int(self._step_var.numpy())
            )
            if o.tf_initial_checkpoint:
                logging.info(
                    "Resuming: --tf_initial_checkpoint=%s is ignored.",
                    o.tf_initial_checkpoint,
                )
        elif o.tf_initial_checkpoint:
            initial_checkpoint.restore_initial_checkpoint(
                self._model,
                o.tf_initial_checkpoint,
                initialize_last_layer=o.initialize_last_layer,
                last_layers_contain_logits_only=o.last_layers_contain_logits_only,
                model_variant=model_variant,
            )

    def save(self, step):
        """Writes a checkpoint of `step`; returns its path (the chief's)."""
        if not _all_finite(self._model.variables):
            raise FloatingPointError(
                f"non-finite weights at step {step}: refusing to write a checkpoint"
            )
        path = self._manager.save(checkpoint_number=step)
        if self._chief:
            self.latest = path
        return path

    def remove_worker_copies(self):
        if not self._chief and tf.io.gfile.exists(self.directory):
            shutil.rmtree(self.directory, ignore_errors=True)


def _training_dataset(strategy, model_options, o):
    return pipeline.distributed_dataset(
        strategy,
        o.dataset_dir,
        o.train_split,
        global_batch_size=o.train_batch_size,
        crop_size=model_options.crop_size,
        is_training=True,
        ignore_label=o.ignore_label,
        num_classes=model_options.num_classes,
        min_scale_factor=o.min_scale_factor,
        max_scale_factor=o.max_scale_factor,
        scale_factor_step_size=o.scale_factor_step_size,
        seed=o.seed,
    )


def _build_model_and_optimizer(strategy, model_options, o, model_fn):
    """(model, optimizer, global step variable), made under the strategy."""
    with strategy.scope():
        with speed.dtype_policy(o.mixed_precision):
            model = (model_fn or deeplab.build_deeplab)(model_options)
        if not o.fine_tune_batch_norm:
            freeze_batch_norm(model)
        optimizer = build_optimizer(o, model)
        step_var = tf.Variable(
            0,
            dtype=tf.int64,
            trainable=False,
            name="global_step",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
    logging.info(
        "Training step: jit_compile=%s, mixed_precision=%s (%s policy).",
        o.jit_compile,
        o.mixed_precision,
        model.dtype_policy.name,
    )
    return model, optimizer, step_var


class _Progress:
    """Log lines and TensorBoard scalars every `log_steps` steps."""

    def __init__(self, o, schedule, step, chief):
        self._o = o
        self._schedule = schedule
        self._chief = chief
        self._window_start, self._window_step = time.time(), step

    def log(self, step, loss, write_images):
        """Logs step `step` (1-based) when due; returns whether it logged."""
        total = self._o.training_number_of_steps
        if step % self._o.log_steps and step != total:
            return False
        now = time.time()
        rate = (step - self._window_step) / max(now - self._window_start, 1e-9)
        eta = (total - step) / rate if rate > 0 else float("inf")
        lr = float(self._schedule(step - 1))
        if self._chief:
            logging.info(
                "step %d/%d loss %.4f lr %.3g %.2f steps/s ETA %.0f s",
                step,
                total,
                loss,
                lr,
                rate,
                eta,
            )
            tf.summary.scalar("loss", loss, step=step)
            tf.summary.scalar("learning_rate", lr, step=step)
            if self._o.save_summaries_images:
                write_images()
            tf.summary.flush()
        self._window_start, self._window_step = now, step
        return True


def _check_finite(loss, step, schedule, last_checkpoint):
    if not np.isfinite(loss):
        raise FloatingPointError(
            f"loss is {loss} at step {step + 1} (learning rate "
            f"{float(schedule(step)):.3g}); no checkpoint was written "
            f"for it, the last one is {last_checkpoint}"
        )


def run(model_options, train_options, train_logdir, strategy=None, *, model_fn=None):
    """Trains DeepLab to `train_options.training_number_of_steps`.

    Args:
      model_options: a `deeplab.ModelOptions` (crop = the training crop).
      train_options: a `TrainOptions`.
      train_logdir: str, checkpoints, `train.flags` and TensorBoard events.
      strategy: a `tf.distribute.Strategy`; None means the default strategy.
      model_fn: callable `ModelOptions -> tf.keras.Model`, called under the
        strategy's scope; default `deeplab.build_deeplab` (tests pass hooks).

    Returns:
      dict with "step" (the final step), "loss" (the last loss, None when no
      step ran), "losses" (the loss of every step this run took),
      "logged_losses" (the losses of the log lines), "checkpoint" (path of
      the last checkpoint written, or None) and "terminated" (SIGTERM).

    Raises:
      ValueError: when the global batch does not split over the replicas,
        or `tf_initial_checkpoint` does not fit the model (see
        `initial_checkpoint.restore_initial_checkpoint`).
      FileNotFoundError: when the split has no shards, or nothing is at
        `tf_initial_checkpoint`.
      FloatingPointError: on a non-finite loss, naming the step.
      pipeline.DataError: on a record that cannot be trained on (a label
        >= num_classes, no image, a corrupt shard), naming shard and record.
    """
    strategy = strategy or tf.distribute.get_strategy()
    o = train_options
    num_replicas = strategy.num_replicas_in_sync
    if o.train_batch_size % num_replicas:
        raise ValueError(
            f"train_batch_size {o.train_batch_size} is not divisible by the "
            f"{num_replicas} replicas"
        )
    chief = is_chief(strategy)
    tf.io.gfile.makedirs(train_logdir)
    if o.seed is not None:
        tf.keras.utils.set_random_seed(o.seed)
    dataset = _training_dataset(strategy, model_options, o)
    schedule = DeepLabLearningRate(o)
    model, optimizer, step_var = _build_model_and_optimizer(
        strategy, model_options, o, model_fn
    )
    checkpoints = _Checkpoints(model, optimizer, step_var, train_logdir, strategy, o)
    checkpoints.restore(o, model_options.model_variant)
    train_step = build_train_step(model, optimizer, strategy, o)

    @tf.function
    def agree(flag):
        """Any worker's flag, for decisions every worker must take alike."""
        value = strategy.run(lambda: tf.cast(flag, tf.int32))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) > 0

    multi_worker = _num_workers(strategy) > 1
    writer = (
        tf.summary.create_file_writer(train_logdir)
        if chief
        else tf.summary.create_noop_writer()
    )
    results = {"loss": None, "losses": [], "logged_losses": [], "terminated": False}
    iterator = iter(dataset)
    step = int(step_var.numpy())
    total = o.training_number_of_steps
    progress = _Progress(o, schedule, step, chief)
    last_save = time.time()
    saved_step = step if checkpoints.latest else None
    # A multi-worker run stops only where every worker agrees to.
    with _TerminationFlag(exit_at_once=not multi_worker) as termination, (
        writer.as_default()
    ):
        logging.info("Training from step %d to %d.", step, total)
        while step < total:
            started = time.monotonic()
            fraction = losses.top_k_fraction(
                step, o.top_k_percent_pixels, o.hard_example_mining_step
            )
            # A tensor, so that the mining ramp does not retrace the step.
            try:
                batch = next(iterator)
            except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
                raise pipeline.read_error(e, o.dataset_dir, o.train_split) from None
            loss = float(train_step(batch, tf.constant(fraction, tf.float32)))
            _check_finite(loss, step, schedule, checkpoints.latest)
            step += 1
            step_var.assign(step)
            termination.unsaved = True
            results["losses"].append(loss)
            results["loss"] = loss
            if len(results["losses"]) == 1:
                # The step is traced (and counted, so that a SIGTERM from here
                # on saves it): which kernels its layers run on.
                for line in fast_paths.describe():
                    logging.info("Fast paths: %s", line)
            images = functools.partial(
                write_image_summaries, model, strategy, batch, step, o
            )
            if progress.log(step, loss, images):
                results["logged_losses"].append(loss)
            stop = termination.requested
            due = o.save_interval_secs > 0 and (
                time.time() - last_save >= o.save_interval_secs
            )
            if multi_worker:
                stop = bool(agree(stop))
                due = bool(agree(due))
            if (due or stop) and step < total:
                checkpoints.save(step)
                saved_step = step
                last_save = time.time()
                termination.unsaved = False
            if len(results["losses"]) > 1:  # The first one traced the step.
                termination.slowest = max(
                    termination.slowest, time.monotonic() - started
                )
            if stop:
                results["terminated"] = True
                break
        if saved_step != step:
            checkpoints.save(step)
    checkpoints.remove_worker_copies()
    return {**results, "step": step, "checkpoint": checkpoints.latest}

"""DeepLab training: a custom `tf.distribute` loop (DeepLab's train.py).

`run` builds the model and an SGD-with-momentum optimizer under
`strategy.scope()`, reads the training split through
`pipeline.distributed_dataset` and trains with `strategy.run` and a
`tf.GradientTape` inside one `tf.function`. `Model.fit` is not used: Keras 3's
`fit` fails under `MultiWorkerMirroredStrategy`, a custom loop does not.

Loss (the same value whatever the number of replicas):

* softmax cross-entropy per pixel; pixels labelled `ignore_label` weigh 0;
* without hard example mining (`top_k_percent_pixels == 1`): DeepLab's mean
  over valid pixels. Each replica sums its pixel losses and divides by the
  number of valid pixels of the GLOBAL batch (an all-reduce), so the sum of
  the replicas' losses (and of their gradients, which the optimizer
  all-reduces) is the mean over the global batch;
* with hard example mining: the fraction of pixels kept ramps linearly from
  1 to `top_k_percent_pixels` over the first `hard_example_mining_step`
  steps (DeepLab's `_compute_top_k_percent_pixels`); each replica keeps its
  `int(fraction * pixels)` largest weighted pixel losses; the loss is their
  sum over the non-zero kept losses of the global batch (DeepLab divides by
  the number of non-zero kept losses). The top k is taken per replica, as in
  DeepLab's per-clone loss, so this one depends on the replica split;
* plus the model's regularisation losses (`model.losses`), each replica
  adding `1 / num_replicas` of them.

Learning rate: DeepLab's poly or step policy with slow start
(`DeepLabLearningRate`).

Checkpoints: `tf.train.Checkpoint(model, optimizer, step)` in the log dir,
every `save_interval_secs` and at the end, `max_to_keep` kept; a new `run`
restores the latest one and continues to `training_number_of_steps`. SIGTERM
makes the loop save and return. A non-finite loss raises `FloatingPointError`
naming the step, and no checkpoint is ever written from non-finite weights.

Fine-tuning (DeepLab's `tf_initial_checkpoint`, `initialize_last_layer`,
`last_layers_contain_logits_only`): a run whose log dir has no checkpoint yet
initialises the MODEL weights (not the optimizer, not the step) from
`tf_initial_checkpoint`, a checkpoint written by this program; a resumed run
restores its own latest checkpoint and ignores it. See
`restore_initial_checkpoint` for how the last layers are skipped.
"""

import dataclasses
import os
import shutil
import signal
import time
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from deeplab_dpc import vis_lib
from deeplab_dpc.data import pipeline
from deeplab_dpc.models import deeplab

POLICY_POLY = "poly"
POLICY_STEP = "step"
LEARNING_POLICIES = (POLICY_POLY, POLICY_STEP)

CHECKPOINT_PREFIX = "ckpt"

# The modules (`deeplab.MODULES`) that DeepLab's "last layers" cover.
LOGITS_MODULES = ("logits",)
LAST_LAYER_MODULES = ("logits", "head", "decoder")

# Names in the object graph of the checkpoints `run` writes.
_MODEL_KEY = "model"
_OPTIMIZER_KEY = "optimizer"
_OPTIMIZER_VARIABLES_KEY = "_trainable_variables"
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VARIABLE_VALUE = "VARIABLE_VALUE"


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


def top_k_fraction(step, top_k_percent_pixels, hard_example_mining_step):
    """The fraction of pixels hard example mining keeps at `step`.

    DeepLab's linear ramp from 1.0 (step 0) to `top_k_percent_pixels`
    (at and after `hard_example_mining_step`).

    Args:
      step: int or scalar tensor, steps already taken.
      top_k_percent_pixels: float in (0, 1].
      hard_example_mining_step: int >= 0.

    Returns:
      A float32 scalar tensor.
    """
    if hard_example_mining_step == 0:
        return tf.constant(top_k_percent_pixels, tf.float32)
    ratio = tf.minimum(1.0, tf.cast(step, tf.float32) / float(hard_example_mining_step))
    return ratio * top_k_percent_pixels + (1.0 - ratio)


def pixel_loss_sum(logits, labels, *, ignore_label, top_k_fraction_value=1.0):
    """The summed pixel losses of one (replica) batch and their count.

    Args:
      logits: float `[batch, height, width, num_classes]`.
      labels: int `[batch, height, width, 1]` (or `[batch, height, width]`).
      ignore_label: int, pixels with this label weigh 0.
      top_k_fraction_value: float or scalar tensor in (0, 1]; below 1 only
        the `int(fraction * pixels)` largest weighted losses are kept.

    Returns:
      (loss_sum, count), float32 scalars: the sum of the kept losses and the
      number of valid pixels (fraction 1) or of non-zero kept losses
      (fraction < 1). The loss is `loss_sum / count`, the counts summed over
      replicas.
    """
    num_classes = tf.shape(logits)[-1]
    logits = tf.reshape(tf.cast(logits, tf.float32), [-1, num_classes])
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    valid = tf.not_equal(labels, ignore_label)
    weights = tf.cast(valid, tf.float32)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    losses = weights * tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=safe_labels, logits=logits
    )
    fraction = tf.convert_to_tensor(top_k_fraction_value, tf.float32)

    def mean_over_valid():
        return tf.reduce_sum(losses), tf.reduce_sum(weights)

    def top_k():
        num_pixels = tf.cast(tf.size(losses), tf.float32)
        k = tf.maximum(1, tf.cast(fraction * num_pixels, tf.int32))
        kept, _ = tf.nn.top_k(losses, k=k, sorted=False)
        return tf.reduce_sum(kept), tf.reduce_sum(
            tf.cast(tf.not_equal(kept, 0.0), tf.float32)
        )

    return tf.cond(fraction >= 1.0, mean_over_valid, top_k)


def regularized_loss(model, logits, labels, *, ignore_label):
    """One replica's loss: the mean over valid pixels plus the model's L2.

    What the training step computes without a strategy (the proxy trial and
    the QAT/pruning fine-tunes); `run` divides by the global pixel count.
    """
    loss_sum, count = pixel_loss_sum(logits, labels, ignore_label=ignore_label)
    loss = tf.math.divide_no_nan(loss_sum, count)
    if model.losses:
        loss += tf.add_n(model.losses)
    return loss


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


class _TerminationFlag:
    """Set by SIGTERM; the loop then saves and returns."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread: no handler.
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint and stopping.")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def _all_finite(variables):
    return all(bool(np.all(np.isfinite(v.numpy()))) for v in variables)


def resolve_initial_checkpoint(path):
    """The checkpoint prefix `--tf_initial_checkpoint` names.

    Args:
      path: str, a checkpoint prefix or a directory of checkpoints.

    Returns:
      str, the checkpoint prefix (for a directory, its latest checkpoint).

    Raises:
      FileNotFoundError: when there is no checkpoint at `path`.
    """
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(
                f"--tf_initial_checkpoint={path!r} is a directory without a "
                "checkpoint"
            )
        return latest
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(
            f"--tf_initial_checkpoint={path!r}: no checkpoint there (neither a "
            f"directory of checkpoints nor a prefix with {path + '.index'!r})"
        )
    return path


def _checkpoint_model_variables(reader):
    """The model variables of a checkpoint of this program, by Keras path.

    Walks the checkpoint's object graph from its `model` and from the
    optimizer's `_trainable_variables` (Keras 3 saves each variable once, the
    trainable ones of sublayers held in Python lists only there) and reads
    each variable's `full_name`, the Keras variable path ("logits/kernel").

    Args:
      reader: a `tf.train.CheckpointReader`.

    Returns:
      dict: variable path -> checkpoint key.

    Raises:
      ValueError: when the checkpoint has no `model` object, or two of its
        variables share a path.
    """
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))

    def child(node_id, name):
        for ref in graph.nodes[node_id].children:
            if ref.local_name == name:
                return ref.node_id
        return None

    model_id = child(0, _MODEL_KEY)
    if model_id is None:
        raise ValueError(
            "--tf_initial_checkpoint is not a checkpoint of this training "
            f"program: it has no '{_MODEL_KEY}' object"
        )
    roots = [model_id]
    optimizer_id = child(0, _OPTIMIZER_KEY)
    if optimizer_id is not None:
        trainable_id = child(optimizer_id, _OPTIMIZER_VARIABLES_KEY)
        if trainable_id is not None:
            roots.append(trainable_id)
    paths, seen, stack = {}, set(roots), list(roots)
    while stack:
        node = graph.nodes[stack.pop()]
        for attribute in node.attributes:
            if attribute.name != _VARIABLE_VALUE or not attribute.full_name:
                continue
            key = attribute.checkpoint_key
            if paths.setdefault(attribute.full_name, key) != key:
                raise ValueError(
                    f"--tf_initial_checkpoint has two variables named "
                    f"{attribute.full_name!r}"
                )
        for ref in node.children:
            if ref.node_id not in seen:
                seen.add(ref.node_id)
                stack.append(ref.node_id)
    return paths


def _is_weight(variable):
    """True for the float variables (not e.g. a dropout's RNG state)."""
    return tf.as_dtype(variable.dtype).is_floating


def restore_initial_checkpoint(
    model,
    path,
    *,
    initialize_last_layer=True,
    last_layers_contain_logits_only=False,
):
    """Initialises `model`'s weights from a checkpoint of this program.

    Only the model is restored (not the optimizer nor the step). Variables
    are matched by their Keras path (`variable.path`, e.g. "logits/kernel"),
    which the checkpoint's object graph stores as each variable's
    `full_name`: the keys alone do not do, as Keras 3 saves a trainable
    variable once, often under `optimizer/_trainable_variables/<i>`. Weights
    a checkpoint lacks (e.g. the branches' batch-norm statistics in
    checkpoints written before `conv_bn.track_sublayers` made list-held
    sublayers visible to `tf.train.Checkpoint`) keep their initialisation and
    are logged as a warning. Layers of the skipped last layers keep their
    fresh initialisation.

    Args:
      model: a DeepLab Keras model (`deeplab.build_deeplab`).
      path: str, a checkpoint prefix or a directory (its latest checkpoint).
      initialize_last_layer: bool; False skips the last layers.
      last_layers_contain_logits_only: bool; the last layers are the logits
        layer only (True) or the logits, head and decoder (False), the
        modules of `deeplab.MODULES`.

    Returns:
      dict with "checkpoint" (the path read), "restored" and "skipped"
      (layer names; layers without weights are in neither), "missing"
      (paths of weights of restored layers absent from the checkpoint) and
      "unused" (checkpoint model variables the model did not take).

    Raises:
      FileNotFoundError: when there is no checkpoint at `path`.
      ValueError: when the checkpoint is not one of this program, when the
        logits shapes differ and `initialize_last_layer` is True, or when
        the architectures differ (a restored layer with no weight in the
        checkpoint, or a weight of another shape).
    """
    path = resolve_initial_checkpoint(path)
    reader = tf.train.load_checkpoint(path)
    saved = _checkpoint_model_variables(reader)
    shapes = reader.get_variable_to_shape_map()
    skipped_modules = ()
    if not initialize_last_layer:
        skipped_modules = (
            LOGITS_MODULES if last_layers_contain_logits_only else LAST_LAYER_MODULES
        )
    restored, skipped, missing, used = [], [], [], set()
    for layer in model.layers:
        weights = [v for v in layer.variables if _is_weight(v)]
        if not weights:
            continue
        if deeplab.module_of(layer.name) in skipped_modules:
            skipped.append(layer.name)
            used.update(v.path for v in weights)
            continue
        found = [v for v in weights if v.path in saved]
        if not found:
            raise ValueError(
                f"--tf_initial_checkpoint={path!r} has no weight of layer "
                f"{layer.name!r} (another architecture?)"
            )
        for variable in found:
            key = saved[variable.path]
            shape = tuple(shapes[key])
            if shape != tuple(variable.shape):
                if layer.name == deeplab.LOGITS_LAYER:
                    raise ValueError(
                        f"--tf_initial_checkpoint's {variable.path} has shape "
                        f"{shape} but the model's has shape "
                        f"{tuple(variable.shape)} (another number of classes?); "
                        "--initialize_last_layer=false fine-tunes with a new "
                        "number of classes (the logits are then freshly "
                        "initialised)"
                    )
                raise ValueError(
                    f"--tf_initial_checkpoint's {variable.path} has shape "
                    f"{shape} but the model's has shape {tuple(variable.shape)} "
                    "(another architecture?)"
                )
        for variable in found:
            variable.assign(reader.get_tensor(saved[variable.path]))
            used.add(variable.path)
        missing.extend(v.path for v in weights if v.path not in saved)
        restored.append(layer.name)
    unused = sorted(set(saved) - used)
    logging.info(
        "Initialised from %s: restored %d layers; skipped %d (%s).",
        path,
        len(restored),
        len(skipped),
        ", ".join(skipped) or "none",
    )
    if missing:
        logging.warning(
            "--tf_initial_checkpoint has no value for %d weights, left as "
            "initialised: %s",
            len(missing),
            ", ".join(missing),
        )
    if unused:
        logging.warning(
            "%d model variables of --tf_initial_checkpoint were not used: %s",
            len(unused),
            ", ".join(unused),
        )
    return {
        "checkpoint": path,
        "restored": restored,
        "skipped": skipped,
        "missing": missing,
        "unused": unused,
    }


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
        "label", vis_lib.colorize(label[..., 0], options.colormap_type), step
    )
    tf.summary.image(
        "prediction", vis_lib.colorize(prediction, options.colormap_type), step
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
        `restore_initial_checkpoint`).
      FileNotFoundError: when the split has no shards, or nothing is at
        `tf_initial_checkpoint`.
      FloatingPointError: on a non-finite loss, naming the step.
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

    dataset = pipeline.distributed_dataset(
        strategy,
        o.dataset_dir,
        o.train_split,
        global_batch_size=o.train_batch_size,
        crop_size=model_options.crop_size,
        is_training=True,
        ignore_label=o.ignore_label,
        min_scale_factor=o.min_scale_factor,
        max_scale_factor=o.max_scale_factor,
        scale_factor_step_size=o.scale_factor_step_size,
        seed=o.seed,
    )

    schedule = DeepLabLearningRate(o)
    with strategy.scope():
        model = (model_fn or deeplab.build_deeplab)(model_options)
        if not o.fine_tune_batch_norm:
            freeze_batch_norm(model)
        optimizer = tf.keras.optimizers.SGD(learning_rate=schedule, momentum=o.momentum)
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(
            0,
            dtype=tf.int64,
            trainable=False,
            name="global_step",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
    ckpt_dir = train_logdir
    if not chief:
        resolver = strategy.cluster_resolver
        ckpt_dir = os.path.join(
            train_logdir, f"workertemp_{resolver.task_type}_{resolver.task_id}"
        )
    manager = tf.train.CheckpointManager(
        checkpoint,
        ckpt_dir,
        max_to_keep=o.max_to_keep if chief else 1,
        checkpoint_name=CHECKPOINT_PREFIX,
    )
    latest = tf.train.latest_checkpoint(train_logdir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("Restored %s at step %d.", latest, int(step_var.numpy()))
        if o.tf_initial_checkpoint:
            logging.info(
                "Resuming: --tf_initial_checkpoint=%s is ignored.",
                o.tf_initial_checkpoint,
            )
    elif o.tf_initial_checkpoint:
        restore_initial_checkpoint(
            model,
            o.tf_initial_checkpoint,
            initialize_last_layer=o.initialize_last_layer,
            last_layers_contain_logits_only=o.last_layers_contain_logits_only,
        )

    def replica_step(batch, fraction):
        ctx = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            logits = model(batch[pipeline.IMAGE], training=True)
            loss_sum, count = pixel_loss_sum(
                logits,
                batch[pipeline.LABEL],
                ignore_label=o.ignore_label,
                top_k_fraction_value=fraction,
            )
            global_count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
            loss = tf.math.divide_no_nan(loss_sum, global_count)
            if model.losses:
                loss += tf.add_n(model.losses) / float(num_replicas)
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    @tf.function
    def train_step(batch, fraction):
        per_replica = strategy.run(replica_step, args=(batch, fraction))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

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
    results = {
        "step": int(step_var.numpy()),
        "loss": None,
        "losses": [],
        "logged_losses": [],
        "checkpoint": latest,
        "terminated": False,
    }

    def save(step):
        if not _all_finite(model.variables):
            raise FloatingPointError(
                f"non-finite weights at step {step}: refusing to write a checkpoint"
            )
        path = manager.save(checkpoint_number=step)
        if chief:
            results["checkpoint"] = path
        return path

    iterator = iter(dataset)
    step = int(step_var.numpy())
    total = o.training_number_of_steps
    last_save = time.time()
    window_start, window_step = time.time(), step
    saved_step = step if latest else None
    with _TerminationFlag() as termination, writer.as_default():
        while step < total:
            fraction = top_k_fraction(
                step, o.top_k_percent_pixels, o.hard_example_mining_step
            )
            # A tensor, so that the mining ramp does not retrace the step.
            batch = next(iterator)
            loss = float(train_step(batch, tf.constant(fraction, tf.float32)))
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss} at step {step + 1} (learning rate "
                    f"{float(schedule(step)):.3g}); no checkpoint was written "
                    f"for it, the last one is {results['checkpoint']}"
                )
            step += 1
            step_var.assign(step)
            results["losses"].append(loss)
            results["loss"] = loss
            if step % o.log_steps == 0 or step == total:
                now = time.time()
                rate = (step - window_step) / max(now - window_start, 1e-9)
                eta = (total - step) / rate if rate > 0 else float("inf")
                lr = float(schedule(step - 1))
                results["logged_losses"].append(loss)
                if chief:
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
                    if o.save_summaries_images:
                        write_image_summaries(model, strategy, batch, step, o)
                    writer.flush()
                window_start, window_step = now, step
            stop = termination.requested
            due = o.save_interval_secs > 0 and (
                time.time() - last_save >= o.save_interval_secs
            )
            if multi_worker:
                stop = bool(agree(stop))
                due = bool(agree(due))
            if (due or stop) and step < total:
                save(step)
                saved_step = step
                last_save = time.time()
            if stop:
                results["terminated"] = True
                break
        if saved_step != step:
            save(step)
    results["step"] = step
    if not chief and tf.io.gfile.exists(ckpt_dir):
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return results

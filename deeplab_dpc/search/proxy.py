"""The proxy task: a head trained on cached backbone features only.

`run_trial` builds a Dense Prediction Cell (or, with `cell=None`, the ASPP
baseline) plus DeepLab's 1x1 logits on the cached features (no backbone in
the graph), trains it with SGD, momentum and DeepLab's poly learning rate on
the cached train crops, and evaluates mIOU on the cached val crops with
`metrics.StreamingMeanIoU` (logits bilinearly upsampled, align_corners, to
the label size; the ignore label excluded), as the paper's proxy task does.
The head and logits layers carry the names `build_deeplab` gives them, so
`to_deeplab_checkpoint` puts the trained weights into a full DeepLab model on
the cache's backbone and writes a checkpoint that the eval program reads.

Batch norm: DeepLab's decay 0.9997 suits its 30k-step runs (the moving
statistics average over about the last 11% of the steps). Short proxy runs
would evaluate with statistics that never left their initial values, so the
default `norm_momentum` keeps that horizon: `1 - 10 / proxy_steps`, capped at
DeepLab's 0.9997. The momentum is no weight: the checkpoint does not depend
on it.

Thread counts are the caller's (the search engine's) business.
"""

import dataclasses
import json
import os
import shutil
import tempfile
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.evaluation import metrics
from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import pyramid_pooling
from deeplab_dpc.layers import resize
from deeplab_dpc.models import accounting
from deeplab_dpc.models import deeplab
from deeplab_dpc.search import cache as cache_lib
from deeplab_dpc.training import losses as loss_lib
from deeplab_dpc.training import trainer

DEFAULT_TARGET_CROP = (769, 769)
CELL_JSON = "dense_prediction_cell.json"
# The loss is logged as the mean of windows of proxy_steps / _LOSS_POINTS steps.
_LOSS_POINTS = 20


@dataclasses.dataclass(frozen=True)
class TrialResult:
    """What one proxy trial measured.

    Attributes:
      cell_json: str, the cell in DeepLab's JSON format; None for ASPP.
      miou: float, the final mIOU on the cached val crops.
      per_class_iou: tuple of floats (None for a class absent from labels and
        predictions).
      head_params, head_madds: ints, the head's params and MAdds at
        `target_crop_size` (`accounting`'s "head" row of the full model).
      wall_seconds: float, the trial's duration.
      steps: int, training steps taken.
      intermediate: tuple of (step, miou): every evaluation, the final one
        last.
      losses: tuple of (step, mean training loss over the steps since the
        previous entry).
      target_crop_size: (int, int).
      checkpoint: str or None, the DeepLab checkpoint written.
    """

    cell_json: Optional[str]
    miou: float
    per_class_iou: tuple
    head_params: int
    head_madds: int
    wall_seconds: float
    steps: int
    intermediate: tuple
    losses: tuple
    target_crop_size: tuple
    checkpoint: Optional[str] = None

    @property
    def cell(self):
        """The `cell_spec.CellSpec`, or None for the ASPP head."""
        if self.cell_json is None:
            return None
        return cell_spec.cell_from_json(json.loads(self.cell_json))

    def to_dict(self):
        """A JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)


def proxy_norm_momentum(proxy_steps):
    """Batch-norm momentum for a run of `proxy_steps` (module docstring)."""
    return float(np.clip(1.0 - 10.0 / proxy_steps, 0.0, conv_bn.NORM_MOMENTUM))


def _as_cell(cell):
    if cell is None or isinstance(cell, cell_spec.CellSpec):
        return cell
    return cell_spec.cell_from_json(cell)


def model_options(
    cache,
    cell,
    *,
    atrous_rates=(),
    weight_decay=4e-5,
    norm_momentum=conv_bn.NORM_MOMENTUM,
):
    """The `deeplab.ModelOptions` of a head on a cache's backbone.

    Args:
      cache: a `cache.CacheInfo`, search dir or cache dir.
      cell: a `cell_spec.CellSpec` or its DeepLab JSON (list); None for ASPP.
      atrous_rates: ASPP rates (ASPP only; () is DeepLab's MobileNet-v2 ASPP).
      weight_decay, norm_momentum: as `ModelOptions`.

    Returns:
      `ModelOptions` at the cache's crop, variant, depth multiplier, output
      stride and classes, without decoder nor backbone weights.
    """
    info = cache_lib.load_info(cache)
    s = info.settings
    return deeplab.ModelOptions(
        model_variant=s["model_variant"],
        num_classes=s["num_classes"],
        crop_size=info.crop_size,
        output_stride=info.output_stride,
        dense_prediction_cell=_as_cell(cell),
        atrous_rates=atrous_rates,
        depth_multiplier=s["depth_multiplier"],
        backbone_weights=None,
        weight_decay=weight_decay,
        norm_momentum=norm_momentum,
    )


def head_layer_name(options):
    """The name `build_deeplab` gives the head of `options`."""
    return deeplab.DPC_LAYER if options.head == deeplab.HEAD_DPC else deeplab.ASPP_LAYER


def build_proxy_model(options, feature_shape):
    """Head + logits + upsampling on features, layers named as `build_deeplab`.

    Args:
      options: `ModelOptions` (see `model_options`).
      feature_shape: (fh, fw, c), the cached features.

    Returns:
      A Keras model from float `[batch, fh, fw, c]` features to
      `[batch, crop_h, crop_w, num_classes]` logits.
    """
    features = tf.keras.Input(shape=tuple(feature_shape))
    x = deeplab.build_head(options)(features)
    x = deeplab.build_logits(options)(x)
    x = resize.ResizeBilinear(options.crop_size, name=deeplab.UPSAMPLE_LAYER)(x)
    return tf.keras.Model(features, x, name="proxy")


def head_cost(options, feature_channels, target_crop_size):
    """The head's params and MAdds at another crop, as `accounting.count`.

    Args:
      options: `ModelOptions` of the head.
      feature_channels: int, the backbone feature's channels.
      target_crop_size: (int, int), a crop valid at the output stride.

    Returns:
      (params, madds) of the head layer alone (the "head" row of
      `accounting.count(build_deeplab(options at target_crop_size))`).
    """
    target = dataclasses.replace(options, crop_size=tuple(target_crop_size))
    layer = deeplab.build_head(target)
    size = pyramid_pooling.feature_size(target.crop_size, target.output_stride)
    shape = [1, *size, int(feature_channels)]
    layer.build(tf.TensorShape(shape))
    return int(layer.count_params()), accounting.layer_madds(
        layer, tf.TensorSpec(shape, tf.float32)
    )


def to_deeplab_checkpoint(proxy_model, options, cache, output_dir, *, overwrite=False):
    """Writes a full DeepLab checkpoint with a proxy model's head and logits.

    The backbone comes from the cache's backbone checkpoint (the weights the
    features were computed with). The checkpoint is the training program's
    `tf.train.Checkpoint(model=...)` as `<output_dir>/ckpt-0` (with the
    `checkpoint` state file, so the directory names it); for a DPC the cell
    goes next to it as `dense_prediction_cell.json`. The model to evaluate it
    with is `build_deeplab(options)`.

    Args:
      proxy_model: a trained `build_proxy_model` model.
      options: its `ModelOptions`.
      cache: a `cache.CacheInfo`, search dir or cache dir.
      output_dir: str, created; written under a temporary name, then renamed.
      overwrite: bool, replace an existing `output_dir`.

    Returns:
      str, the checkpoint prefix.

    Raises:
      FileExistsError: `output_dir` exists and `overwrite` is False.
    """
    info = cache_lib.load_info(cache)
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass overwrite to replace it")
    model = deeplab.build_deeplab(
        dataclasses.replace(options, decoder_output_stride=None)
    )
    trainer.restore_initial_checkpoint(
        model, info.backbone_checkpoint, initialize_last_layer=False
    )
    for name in (head_layer_name(options), deeplab.LOGITS_LAYER):
        model.get_layer(name).set_weights(proxy_model.get_layer(name).get_weights())
    os.makedirs(os.path.dirname(output_dir), exist_ok=True)
    partial = tempfile.mkdtemp(prefix=".partial-", dir=os.path.dirname(output_dir))
    os.chmod(partial, 0o755)  # mkdtemp's 0o700 would stay after the rename.
    try:
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model),
            partial,
            max_to_keep=1,
            checkpoint_name=trainer.CHECKPOINT_PREFIX,
        )
        prefix = manager.save(checkpoint_number=0)
        if options.dense_prediction_cell is not None:
            cell_spec.dump_cell(
                options.dense_prediction_cell, os.path.join(partial, CELL_JSON)
            )
        if os.path.exists(output_dir):
            shutil.rmtree(output_dir)
        os.replace(partial, output_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return os.path.join(output_dir, os.path.basename(prefix))


def _check_matches(name, value, cached):
    if value is not None and value != cached:
        raise ValueError(f"{name}={value} but the feature cache has {name}={cached}")


def make_train_step(model, optimizer, ignore_label, upsample_logits=True):
    """The proxy's training step, a `tf.function` of a batch iterator.

    Args:
      model: the proxy model (`build_proxy_model`).
      optimizer: a Keras optimizer.
      ignore_label: int, the label the loss skips.
      upsample_logits: bool, DeepLab's train.py flag: True, the loss is taken
        on the logits upsampled to the label size (the model's output);
        False, on the logits at the features' size against labels scaled
        down to it (`losses.scale_labels`).

    Returns:
      step(iterator) -> the scalar loss: takes the next (features, labels)
      batch, applies one SGD update of the regularised DeepLab loss.

    Builds the optimizer's slots first, if it has none: a `tf.function` that
    creates variables in its first call is traced twice (a DPC's proxy step:
    1.7 s to trace, against 0.75 s with the slots built before).
    """
    if not getattr(optimizer, "built", False):
        optimizer.build(model.trainable_variables)

    net = model
    if not upsample_logits:  # The same layers, up to the upsampling.
        net = tf.keras.Model(
            model.inputs, model.get_layer(deeplab.UPSAMPLE_LAYER).input
        )

    @tf.function
    def train_step(iterator):
        features, labels = next(iterator)
        with tf.GradientTape() as tape:
            logits = net(features, training=True)
            if not upsample_logits:
                labels = loss_lib.scale_labels(labels, tf.shape(logits)[1:3])
            loss = trainer.regularized_loss(
                model, logits, labels, ignore_label=ignore_label
            )
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return train_step


def _check_positive_ints(**values):
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _make_evaluate(model, info, eval_batch_size):
    """A function returning the head's `StreamingMeanIoU` result on "val"."""

    @tf.function
    def predict(features):
        return tf.argmax(model(features, training=False), -1, output_type=tf.int32)

    def evaluate():
        metric = metrics.StreamingMeanIoU(
            num_classes=info.num_classes, ignore_label=info.ignore_label
        )
        for features, labels in cache_lib.load_split(
            info, "val", batch_size=eval_batch_size
        ):
            metric.update(labels, predict(features))
        return metric.result()

    return evaluate


def _train(train_step, iterator, schedule, proxy_steps, eval_every, evaluate, report):
    """Runs the proxy steps; returns (windowed losses, intermediate mIOUs)."""
    window = max(1, proxy_steps // _LOSS_POINTS)
    losses, window_losses, intermediate = [], [], []
    for step in range(1, proxy_steps + 1):
        loss = float(train_step(iterator))
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"proxy loss is {loss} at step {step} (learning rate "
                f"{float(schedule(step - 1)):.3g})"
            )
        window_losses.append(loss)
        if step % window == 0 or step == proxy_steps:
            losses.append((step, float(np.mean(window_losses))))
            window_losses = []
        if eval_every is not None and step % eval_every == 0 and step < proxy_steps:
            miou = evaluate()["miou"]
            intermediate.append((step, miou))
            if report is not None:
                report(step, miou)
    return losses, intermediate


@trainer.released_custom_gradients()
def run_trial(
    cell,
    cache,
    *,
    proxy_steps,
    proxy_batch_size,
    base_learning_rate=0.01,
    learning_power=0.9,
    momentum=0.9,
    weight_decay=4e-5,
    num_classes=None,
    ignore_label=None,
    eval_every=None,
    report: Optional[Callable[[int, float], None]] = None,
    seed=None,
    target_crop_size=DEFAULT_TARGET_CROP,
    atrous_rates=(),
    norm_momentum=None,
    eval_batch_size=8,
    checkpoint_dir=None,
    upsample_logits=True,
):
    """Trains and evaluates one head on the cached features.

    Args:
      cell: a `cell_spec.CellSpec` or DeepLab JSON list; None for the ASPP head
        (with `atrous_rates`), the baseline.
      cache: a `cache.CacheInfo`, search dir or cache dir.
      proxy_steps, proxy_batch_size: ints >= 1.
      base_learning_rate, learning_power, momentum: DeepLab's poly schedule
        and SGD momentum (the paper's proxy: 0.01, 0.9, 0.9).
      weight_decay: float, DeepLab's weight decay on the head and logits.
      num_classes, ignore_label: None (the cache's) or the cache's values.
      eval_every: int or None; evaluate every so many steps (before the last)
        and pass (step, miou) to `report`.
      report: callable(step, miou) or None; whatever it raises (e.g.
        `optuna.TrialPruned`) ends the trial and propagates.
      seed: int or None, seeds the initialisation, dropout and batches.
      target_crop_size: (int, int), the crop the head's cost is counted at.
      atrous_rates: ASPP rates when `cell` is None.
      norm_momentum: float or None (`proxy_norm_momentum(proxy_steps)`).
      eval_batch_size: int, val crops per batch.
      checkpoint_dir: str or None; write the trained head on the cache's
        backbone there (`to_deeplab_checkpoint`).
      upsample_logits: bool, how the training loss meets the labels
        (`make_train_step`; DeepLab's flag): False takes it at the features'
        size. Evaluation always upsamples the logits to the label size.

    Returns:
      A `TrialResult`.

    Raises:
      ValueError: bad arguments, or classes that differ from the cache's.
      CorruptCacheError: a shard fails its check.
      FloatingPointError: a non-finite loss, naming the step.
      FileExistsError: `checkpoint_dir` exists.
    """
    start = time.time()
    info = cache_lib.load_info(cache)
    if checkpoint_dir is not None and os.path.exists(checkpoint_dir):
        raise FileExistsError(f"checkpoint_dir {checkpoint_dir} already exists")
    _check_matches("num_classes", num_classes, info.num_classes)
    _check_matches("ignore_label", ignore_label, info.ignore_label)
    _check_positive_ints(
        proxy_steps=proxy_steps,
        proxy_batch_size=proxy_batch_size,
        eval_batch_size=eval_batch_size,
        eval_every=1 if eval_every is None else eval_every,
    )
    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    if norm_momentum is None:
        norm_momentum = proxy_norm_momentum(proxy_steps)
    options = model_options(
        info,
        cell,
        atrous_rates=atrous_rates,
        weight_decay=weight_decay,
        norm_momentum=norm_momentum,
    )
    head_params, head_madds = head_cost(
        options, info.feature_shape[-1], target_crop_size
    )
    model = build_proxy_model(options, info.feature_shape)
    schedule = trainer.DeepLabLearningRate(
        trainer.TrainOptions(
            train_batch_size=proxy_batch_size,
            training_number_of_steps=proxy_steps,
            base_learning_rate=base_learning_rate,
            learning_power=learning_power,
            momentum=momentum,
            ignore_label=info.ignore_label,
        )
    )
    optimizer = tf.keras.optimizers.SGD(learning_rate=schedule, momentum=momentum)
    train = cache_lib.load_split(
        info, "train", batch_size=proxy_batch_size, shuffle=True, seed=seed, repeat=True
    )

    train_step = make_train_step(
        model, optimizer, info.ignore_label, upsample_logits=upsample_logits
    )
    evaluate = _make_evaluate(model, info, eval_batch_size)
    losses, intermediate = _train(
        train_step, iter(train), schedule, proxy_steps, eval_every, evaluate, report
    )
    final = evaluate()
    intermediate.append((proxy_steps, final["miou"]))
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = to_deeplab_checkpoint(model, options, info, checkpoint_dir)
    return TrialResult(
        cell_json=(
            None
            if options.dense_prediction_cell is None
            else cell_spec.cell_to_json_string(options.dense_prediction_cell)
        ),
        miou=final["miou"],
        per_class_iou=tuple(final["per_class_iou"]),
        head_params=head_params,
        head_madds=head_madds,
        wall_seconds=time.time() - start,
        steps=proxy_steps,
        intermediate=tuple(intermediate),
        losses=tuple(losses),
        target_crop_size=tuple(target_crop_size),
        checkpoint=checkpoint,
    )

"""Inference as DeepLab's eval, vis and export run it: scales and flips.

DeepLab's `predict_labels_multi_scale` runs the model on the image resized
by each of `eval_scales` (sizes by `scale_dimension`, bilinear with
align_corners), and on its left-right mirror when `add_flipped_images`,
resizes every logits map to the logits size of the crop (`logits_size`)
and then to the image size, turns it into softmax
probabilities, averages them all and takes the argmax. A single scale of 1.0
without flips is plain `argmax(model(images))`.

Our models are built for one crop (the pooling geometry of a DPC or ASPP is
fixed by it, as in DeepLab), so a scale gets its own model built for the
scaled crop, sharing the weights of the scale-1 model: `Predictor` builds
them and copies the weights. Every scaled crop must itself be of the form
OS*k + 1 (e.g. 0.5 to 1.75 in steps of 0.25 for 513 or 1025 at OS 16).

Speed levers: `load_model(..., mixed_precision=)` builds the model under a
mixed-precision policy (`speed`; the checkpoint's float32 weights load
whatever the policy), `Predictor(..., jit_compile=True)` makes
`predictions_function` an XLA-compiled `tf.function`, and
`Predictor(..., fold_batch_norm=True)` runs the models with their batch
norms folded into the convs.
"""

import dataclasses

import tensorflow as tf

from deeplab_dpc.layers import fast_paths
from deeplab_dpc.layers import folding
from deeplab_dpc.layers import pyramid_pooling
from deeplab_dpc.layers import resize
from deeplab_dpc.models import backbones
from deeplab_dpc.models import deeplab
from deeplab_dpc.training import initial_checkpoint
from deeplab_dpc.training import speed


def scaled_crop(crop_size, scale, output_stride):
    """The crop DeepLab runs at for `scale` (`scale_dimension` per side).

    Raises:
      ValueError: when the scale is not positive, or the scaled crop is not of
        the form OS*k + 1, naming the scale and the crop.
    """
    if scale <= 0:
        raise ValueError(f"eval/inference scales must be positive, got {scale}")
    crop = tuple(pyramid_pooling.scale_dimension(d, scale) for d in crop_size)
    try:
        backbones.check_crop(crop, output_stride)
    except ValueError as error:
        raise ValueError(
            f"scale {scale} turns crop {tuple(crop_size)} into {crop}, which "
            f"output stride {output_stride} cannot serve: {error}"
        ) from None
    return crop


def logits_size(options, scale):
    """The size DeepLab brings a scale's logits to before the image size.

    DeepLab's `multi_scale_logits` with `image_pyramid=[scale]`:
    `scale_dimension(crop, max(1, scale) / logits_output_stride)` per side,
    the logits' stride being the decoder's when there is one.
    """
    stride = options.decoder_output_stride or options.output_stride
    return tuple(
        pyramid_pooling.scale_dimension(d, max(1.0, scale) / stride)
        for d in options.crop_size
    )


def check_scales(scales):
    """Returns `scales` as a tuple of floats; raises on an empty or bad list."""
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise ValueError("at least one scale is needed (e.g. 1.0)")
    if any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {scales}")
    return scales


class Predictor:
    """Multi-scale, optionally flipped inference around a DeepLab model.

    Args:
      model: the DeepLab Keras model built for `options.crop_size`, with its
        weights (restored or trained); the scale-1 model.
      options: its `deeplab.ModelOptions`.
      scales: floats, DeepLab's `eval_scales` / `inference_scales`.
      add_flipped_images: bool, also run the left-right mirrored images.
      jit_compile: bool, `predictions_function` is XLA-compiled.
      fold_batch_norm: bool, run copies of the models with their batch norms
        folded into the convs (`folding.fold_batch_norms`): the same
        predictions up to float rounding, faster; `model` is left as it is.

    `probabilities(images)` and `predictions(images)` take float images
    `[batch, crop_h, crop_w, 3]` in [0, 255] (padded to the crop, as the eval
    pipeline makes them) and work eagerly or inside a `tf.function`. The
    models of the other scales are built under the dtype policy of `model`.

    Raises:
      ValueError: for a bad scale, or a model of an unknown dtype policy.
    """

    def __init__(
        self,
        model,
        options,
        scales=(1.0,),
        add_flipped_images=False,
        *,
        jit_compile=False,
        fold_batch_norm=False,
    ):
        self.options = options
        self.scales = check_scales(scales)
        self.add_flipped_images = bool(add_flipped_images)
        self.jit_compile = fast_paths.jit_compile(bool(jit_compile))
        self.fold_batch_norm = bool(fold_batch_norm)
        self.crop_size = tuple(options.crop_size)
        self.models = []
        for scale in self.scales:
            crop = scaled_crop(self.crop_size, scale, options.output_stride)
            if crop == self.crop_size:
                self.models.append((crop, model))
                continue
            with speed.dtype_policy(speed.mixed_precision_of(model)):
                scaled = deeplab.build_deeplab(
                    dataclasses.replace(options, crop_size=crop, backbone_weights=None)
                )
            scaled.set_weights(model.get_weights())
            self.models.append((crop, scaled))
        if self.fold_batch_norm:
            self.models = [
                (crop, folding.fold_batch_norms(m)) for crop, m in self.models
            ]

    def _probabilities_at(self, model, crop, scale, images):
        if crop != self.crop_size:
            images = resize.resize_bilinear(images, crop)
        logits = model(images, training=False)
        if crop != self.crop_size:
            # DeepLab's `multi_scale_logits` resizes each scale's logits to
            # the logits size of the scale-1 crop (of the scaled one above
            # 1) before they go to the image size: a scale below 1 passes
            # through that coarser grid, which smooths its logits.
            logits = resize.resize_bilinear(logits, logits_size(self.options, scale))
            logits = resize.resize_bilinear(logits, self.crop_size)
        return tf.nn.softmax(tf.cast(logits, tf.float32))

    def probabilities(self, images):
        """Mean softmax probabilities, `[batch, crop_h, crop_w, num_classes]`."""
        images = tf.convert_to_tensor(images, tf.float32)
        total, count = 0.0, 0
        for scale, (crop, model) in zip(self.scales, self.models):
            total += self._probabilities_at(model, crop, scale, images)
            count += 1
            if self.add_flipped_images:
                flipped = self._probabilities_at(
                    model, crop, scale, tf.reverse(images, [2])
                )
                total += tf.reverse(flipped, [2])
                count += 1
        return total / count

    def predictions(self, images):
        """Predicted classes, int32 `[batch, crop_h, crop_w]`."""
        if self.scales == (1.0,) and not self.add_flipped_images:
            _, model = self.models[0]
            logits = model(tf.convert_to_tensor(images, tf.float32), training=False)
            return tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.argmax(self.probabilities(images), axis=-1, output_type=tf.int32)

    def predictions_function(self):
        """`predictions` as a `tf.function`, XLA-compiled with `jit_compile`."""
        return tf.function(self.predictions, jit_compile=self.jit_compile)


def renamed_flag(error, checkpoint_flag):
    """`error` of the initial-checkpoint code naming `checkpoint_flag` instead.

    `initial_checkpoint` names the training program's
    `--tf_initial_checkpoint`; eval and vis take `--checkpoint_dir`.
    """
    if not checkpoint_flag:
        return error
    return type(error)(str(error).replace("--tf_initial_checkpoint", checkpoint_flag))


def resolve_checkpoint(path, checkpoint_flag=None):
    """`initial_checkpoint.resolve_initial_checkpoint` naming `checkpoint_flag`."""
    try:
        return initial_checkpoint.resolve_initial_checkpoint(path)
    except FileNotFoundError as e:
        raise renamed_flag(e, checkpoint_flag) from None


def load_model(
    options,
    checkpoint_path,
    *,
    mixed_precision=speed.MIXED_PRECISION_NONE,
    checkpoint_flag=None,
):
    """Builds the model for `options` and restores a training checkpoint.

    Args:
      options: `deeplab.ModelOptions` (its backbone weights are not loaded:
        the checkpoint has them).
      checkpoint_path: a checkpoint prefix or a `train_logdir` (its latest).
      mixed_precision: "none", "bfloat16" or "float16", the dtype policy the
        model is built under (`speed.dtype_policy`).
      checkpoint_flag: str or None, the flag that gave `checkpoint_path`,
        which the error messages then name (e.g. "--checkpoint_dir").

    Returns:
      the Keras model with the checkpoint's weights.

    Raises:
      FileNotFoundError: when there is no checkpoint there.
      ValueError: when the checkpoint does not fit the model (e.g. another
        `num_classes` or cell), naming the mismatching weights, or for a bad
        `mixed_precision`.
    """
    with speed.dtype_policy(mixed_precision):
        model = deeplab.build_deeplab(
            dataclasses.replace(options, backbone_weights=None)
        )
    try:
        result = initial_checkpoint.restore_initial_checkpoint(model, checkpoint_path)
    except (FileNotFoundError, ValueError) as e:
        raise renamed_flag(e, checkpoint_flag) from None
    if result["missing"] or result["unused"]:
        raise ValueError(
            f"checkpoint {result['checkpoint']!r} does not fit the model "
            f"(another --dense_prediction_cell_json, --model_variant or "
            f"decoder?): weights it lacks: {result['missing'] or 'none'}; "
            f"weights it has that the model does not: {result['unused'] or 'none'}"
        )
    return model

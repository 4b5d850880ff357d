"""TFLite variants of a DeepLab model for LiteRT, and their export.

Conversion always goes through a FROZEN concrete function
(`inference_function`): the Keras 3 model's variables are folded into
constants first. (Converting its un-frozen function, or a `tf.Module`
SavedModel that tracks the Keras 3 variables, gives a file without weights
that outputs NaN.) The function is, for one image:

  input  `[1, crop_h, crop_w, 3]`, float32 pixels in [0, 255], or uint8
         pixels with `include_preprocessing` (cast inside: feed raw pixels);
  output float32 logits `[1, crop_h, crop_w, num_classes]`, or with
         `include_argmax` int32 classes `[1, crop_h, crop_w]` (ArgMax with
         int32 output: no int64 tensor anywhere in the file).

`allow_resize`: the model is built for one crop (the pooling geometry of
its DPC or ASPP and its output size are fixed by it, as in DeepLab), so the
file cannot just run at another size. With `allow_resize` its input is
`[1, None, None, 3]`: an image of any size (set with
`Interpreter.resize_tensor_input`) is fitted and padded as the SavedModel
does (`fit_and_pad`: scaled down to fit the crop if larger, aspect ratio
kept, then padded at the bottom and right with the mean pixel), the model
runs at the crop, and its logits lose the padding and are resized back to
the image size before the argmax: the SavedModel's pixels, in one file.
Without it the input is fixed to the crop: `fit_and_pad` the image yourself
(`deeplab_dpc.export.image_predictor` does).

Variants (`VARIANTS`): "float32"; "float16" (float16 weights);
"dynamic_int8" (int8 weights, activations quantized at run time);
"int8" (full-integer post-training quantization calibrated on
`representative_images`; int8 input and logits, uint8 input with
`include_preprocessing`); "qat_int8" (full-integer, from a
quantization-aware model) and "pruned" (float32, from a pruned model): both
fine-tuned under tf_keras by `legacy_keras`, whose frozen graphs
`graph_def_fn` loads. `convert` only allows LiteRT's builtin ops unless
`allow_flex`; `tflite_export` checks every written file.
"""

import dataclasses

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import (  # pylint: disable=g-direct-tensorflow-import
    convert_to_constants,
)

from deeplab_dpc.data import augment
from deeplab_dpc.data import tfexample
from deeplab_dpc.export import legacy_keras
from deeplab_dpc.export import saved_model
from deeplab_dpc.layers import fast_paths
from deeplab_dpc.layers import resize

FLOAT32 = "float32"
FLOAT16 = "float16"
DYNAMIC_INT8 = "dynamic_int8"
INT8 = "int8"
QAT_INT8 = legacy_keras.QAT_INT8
PRUNED = legacy_keras.PRUNED
VARIANTS = (FLOAT32, FLOAT16, DYNAMIC_INT8, INT8, QAT_INT8, PRUNED)
# Converted from the model as it is, in this process.
POST_TRAINING = (FLOAT32, FLOAT16, DYNAMIC_INT8, INT8)
# Fine-tuned with tensorflow-model-optimization under tf_keras first.
FINE_TUNED = legacy_keras.VARIANTS
FULL_INTEGER = (INT8, QAT_INT8)
# Variants whose outputs are float logits close to a float model's.
FLOAT_OUTPUTS = (FLOAT32, FLOAT16, PRUNED)

LOGITS = "logits"
PREDICTIONS = "predictions"


class ConversionError(RuntimeError):
    """The TFLite converter failed, or the file breaks the export's rules."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConversionOptions:
    """The inputs and outputs of the exported files.

    Attributes:
      crop_size: (int, int), the model's crop (its fixed input size).
      include_argmax: bool, output int32 classes instead of logits.
      include_preprocessing: bool, take uint8 pixels instead of float32.
      allow_resize: bool, accept any input size (see the module docstring).
      allow_flex: bool, allow Select TF (Flex) ops.
    """

    crop_size: tuple
    include_argmax: bool = False
    include_preprocessing: bool = False
    allow_resize: bool = False
    allow_flex: bool = False

    def __post_init__(self):
        object.__setattr__(self, "crop_size", tuple(int(c) for c in self.crop_size))
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(
                f"crop_size must be two positive ints, got {self.crop_size}"
            )


def parse_variants(variants):
    """Checks a list (or comma-separated string) of variant names.

    Returns:
      tuple of names in `VARIANTS` order, without repeats.

    Raises:
      ValueError: naming an unknown variant, or for an empty list.
    """
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if not variants:
        raise ValueError(f"no variant asked; choose from {list(VARIANTS)}")
    return tuple(v for v in VARIANTS if v in variants)


def keras_model_fn(model):
    """`images -> logits` of a Keras model (Keras 3 or tf_keras), inference."""
    return lambda images: model(images, training=False)


def saved_model_fn(saved_model_dir, signature_key="serving_default"):
    """`images -> float scores` of a SavedModel signature.

    The signature must take one image tensor `[batch, h, w, 3]` (float32, or
    uint8: the float pixels are rounded and cast) and give exactly one float32
    rank-4 output (logits or probabilities, e.g. a Keras `model.export`), or
    `SemanticProbabilities` (this project's serving SavedModels).

    Raises:
      ValueError: for a missing signature or one of another form, naming
        its inputs and outputs.
    """
    loaded = tf.saved_model.load(saved_model_dir)
    if signature_key not in loaded.signatures:
        raise ValueError(
            f"--saved_model_dir={saved_model_dir!r} has no signature "
            f"{signature_key!r}; it has {sorted(loaded.signatures)}"
        )
    signature = loaded.signatures[signature_key]
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    scores = [
        name
        for name, spec in outputs.items()
        if spec.dtype == tf.float32 and spec.shape.rank == 4
    ]
    if "SemanticProbabilities" in scores:
        scores = ["SemanticProbabilities"]
    input_name, input_spec = next(iter(inputs.items()), (None, None))
    if (
        len(inputs) != 1
        or input_spec.dtype not in (tf.float32, tf.uint8)
        or input_spec.shape.rank != 4
        or input_spec.shape[-1] not in (3, None)
        or len(scores) != 1
    ):
        raise ValueError(
            f"signature {signature_key!r} of {saved_model_dir!r} must take one "
            f"float32 or uint8 [batch, h, w, 3] image and give one float32 "
            f"[batch, h, w, classes] output; it takes {inputs} and gives {outputs}"
        )

    def fn(images):
        if input_spec.dtype == tf.uint8:
            images = tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
        return signature(**{input_name: images})[scores[0]]

    fn.saved_model = loaded  # Keeps the loaded variables alive.
    return fn


def fit_and_pad(images, crop_size):
    """DeepLab's fit-and-pad of the SavedModel (`saved_model.fit_size`).

    Args:
      images: float32 `[batch, h, w, 3]` pixels in [0, 255].
      crop_size: (int, int), the model's crop.

    Returns:
      (float32 `[batch, crop_h, crop_w, 3]`, the fitted (h, w) int32
      tensors): scaled down to fit the crop when larger (aspect ratio
      kept), padded at the bottom and right with the mean pixel.
    """
    shape = tf.shape(images)
    fit_h, fit_w = saved_model.fit_size(shape[1], shape[2], crop_size, tf.int32)
    fitted = resize.resize_bilinear(images, tf.stack([fit_h, fit_w]))
    return saved_model.pad_to_crop(fitted, crop_size), (fit_h, fit_w)


def unpad_and_restore(scores, fitted, image_size):
    """Cuts `fit_and_pad`'s padding from `[batch, crop_h, crop_w, c]` scores
    and resizes them back to `image_size` (bilinear, align_corners)."""
    fit_h, fit_w = fitted
    return resize.resize_bilinear(scores[:, :fit_h, :fit_w], image_size)


def inference_function(model_fn, options):
    """The frozen function a file is converted from (module docstring).

    Args:
      model_fn: callable, float32 images `[1, crop_h, crop_w, 3]` in
        [0, 255] -> float scores `[1, crop_h, crop_w, num_classes]`.
      options: `ConversionOptions`.

    Returns:
      a `ConcreteFunction` with its variables folded into constants.
    """
    crop = options.crop_size
    size = [None, None] if options.allow_resize else list(crop)
    dtype = tf.uint8 if options.include_preprocessing else tf.float32
    spec = tf.TensorSpec([1, *size, 3], dtype, name="image")

    def serve(images):
        x = tf.cast(images, tf.float32)
        if options.allow_resize:
            image_size = tf.shape(x)[1:3]
            x, fitted = fit_and_pad(x, crop)
        scores = model_fn(x)
        if options.allow_resize:
            scores = unpad_and_restore(scores, fitted, image_size)
        if options.include_argmax:
            return {PREDICTIONS: tf.argmax(scores, axis=-1, output_type=tf.int32)}
        return {LOGITS: tf.cast(scores, tf.float32)}

    # Portable ops only (`fast_paths`): the file must not depend on the
    # kernels of the machine that converts it.
    with fast_paths.portable():
        concrete = tf.function(serve).get_concrete_function(spec)
    return convert_to_constants.convert_variables_to_constants_v2(concrete)


def representative_images(
    file_pattern, crop_size, steps, *, mean_pixel=augment.MEAN_PIXEL
):
    """Calibration images from TFRecords in DeepLab's format.

    Records are decoded by `tfexample.decode_example` in file order; an
    image larger than the crop is scaled down (aspect ratio kept) to fit it,
    as the serving SavedModel does; every image is then padded to the crop
    with the mean pixel by `augment.preprocess_for_eval`.

    Args:
      file_pattern: str, a glob of TFRecord files (`--representative_dataset`).
      crop_size: (int, int).
      steps: int >= 1, the number of images.
      mean_pixel: 3 floats, the padding.

    Returns:
      list of float32 arrays `[1, crop_h, crop_w, 3]` in [0, 255].

    Raises:
      FileNotFoundError: when the glob matches nothing.
      ValueError: for steps < 1.
    """
    if steps < 1:
        raise ValueError(f"calibration steps must be >= 1, got {steps}")
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord file matches {file_pattern!r}")

    def fit(serialized):
        element = tfexample.decode_example(serialized)
        image = tf.cast(element[tfexample.IMAGE], tf.float32)
        height, width = saved_model.fit_size(
            element[tfexample.HEIGHT], element[tfexample.WIDTH], crop_size
        )
        image = resize.resize_bilinear(image[tf.newaxis], tf.stack([height, width]))
        element[tfexample.IMAGE] = image[0]
        element[tfexample.LABEL] = tf.zeros([0, 0, 1], tf.uint8)
        return augment.preprocess_for_eval(
            element, crop_size=crop_size, ignore_label=0, mean_pixel=mean_pixel
        )[tfexample.IMAGE]

    dataset = tf.data.TFRecordDataset(files).take(steps).map(fit)
    return [image.numpy()[np.newaxis] for image in dataset]


def convert(function, variant, options, representative=None):
    """Converts a frozen inference function to one TFLite variant.

    Args:
      function: from `inference_function` (for "qat_int8", of a
        quantization-aware tf_keras model).
      variant: one of `VARIANTS`; "pruned" converts as float32.
      options: `ConversionOptions` (only `allow_flex` is read here).
      representative: for "int8" and "qat_int8", list of float32 images
        `[1, h, w, 3]` in [0, 255] (the calibration data).

    Returns:
      bytes, the .tflite file.

    Raises:
      ConversionError: when the converter fails (e.g. an op LiteRT's
        builtins lack, without `allow_flex`).
      ValueError: for "int8" or "qat_int8" without representative images.
    """
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant != FLOAT32 and variant != PRUNED:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    if variant in FULL_INTEGER:
        # A quantization-aware graph ("qat_int8") has no range for what the
        # converter folds (batch norm into convolutions): without calibration
        # those parts would stay float.
        if not representative:
            raise ValueError(f"{variant} needs representative images")
        if function.inputs[0].dtype == tf.float32:
            converter.inference_input_type = tf.int8
        if function.outputs[0].dtype == tf.float32:
            converter.inference_output_type = tf.int8
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        dtype = function.inputs[0].dtype.as_numpy_dtype
        images = [np.round(image).astype(dtype) for image in representative]
        converter.representative_dataset = lambda: ([image] for image in images)
    if options.allow_flex:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    try:
        return converter.convert()
    except Exception as e:  # ConverterError, ValueError, RuntimeError...
        hint = "" if options.allow_flex else " (--allow_flex allows Select TF ops)"
        raise ConversionError(
            f"{variant}: the TFLite converter failed{hint}: {e}"
        ) from e


def graph_def_fn(path, input_name, output_name):
    """`images -> logits` of a frozen GraphDef file (`legacy_keras.freeze`)."""
    graph_def = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        graph_def.ParseFromString(f.read())
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.compat.v1.import_graph_def(graph_def, name=""), []
    )
    return wrapped.prune(
        wrapped.graph.get_tensor_by_name(input_name),
        wrapped.graph.get_tensor_by_name(output_name),
    )

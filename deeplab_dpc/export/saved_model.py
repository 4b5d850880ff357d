"""SavedModels for TF Serving, as DeepLab's `export_model.py` writes them.

`export_saved_model` writes `<export_path>/<model_version>/`, the layout
`tensorflow_model_server --model_base_path=<export_path>` serves, with the
signatures of `serving.py`. Inside the graph, for images of any size:

1. Images that fit the crop (height <= crop height and width <= crop width)
   are not resized, as DeepLab's export with its default (unset)
   `min_resize_value`/`max_resize_value` and as its eval. A larger image is
   scaled down, keeping its aspect ratio, to the largest size that fits the
   crop (the limiting side becomes the crop's), bilinearly with
   align_corners: DeepLab's `resize_to_range` with the crop as the maximum.
   (DeepLab would run a larger image at its own size; a model built for one
   crop, whose pooling geometry is fixed, cannot.) Smaller images are never
   upscaled: they are served exactly as eval runs them.
2. The image is padded at the bottom and right to the crop with the mean
   pixel (`augment.MEAN_PIXEL`), as in eval.
3. `inference.Predictor`'s models run on it, at `inference_scales` and,
   with `add_flipped_images`, on the mirrored image too.
4. The padding is cut away and the results are resized back to the input's
   size (bilinear, align_corners): `SemanticProbabilities` (still summing to
   1 per pixel), and `SemanticPredictions`, the argmax of the resized logits
   for the single scale 1.0 without flips (DeepLab's `predict_labels`; so
   exactly `argmax(model(image))` for a crop-size image) or of the resized
   mean probabilities otherwise (its `predict_labels_multi_scale`).

`predict_images` decodes its strings (JPEG, PNG, GIF or BMP; grey and RGBA
become RGB) and runs them as one `serving_default` batch, so the images of
one request must share one size (a clear error says so otherwise).

Inputs of another rank or channel count fail at the first op with
"Shape of tensor imagetensor [...] is not compatible with expected shape
[?,?,?,3]"; another dtype fails before the graph runs ("expected to be a
uint8 tensor"). The model options, scales and flips are written to
`assets.extra/deeplab_options.json` for provenance (TF Serving ignores it).
"""

import dataclasses
import json
import os
import shutil

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import deeplab_dpc
from deeplab_dpc import file_io
from deeplab_dpc.cells import cell_spec
from deeplab_dpc.data import augment
from deeplab_dpc.evaluation import inference
from deeplab_dpc.export import serving
from deeplab_dpc.layers import fast_paths
from deeplab_dpc.layers import resize

EXTRA_DIR = "assets.extra"
OPTIONS_FILE = "deeplab_options.json"
# The signatures' pixel budget by default (`--max_image_pixels`): 16 MP, a
# 4096x4096 image. An 8000x8000 PNG of 198 KB cost 5.1 GiB without one.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
# The staging and replaced-version folders of exports (`file_io`).
_STAGING = r"\.\d+\.(?:tmp|replaced)-"


def fit_size(height, width, crop_size, dtype=tf.int64):
    """The size an image is served at: itself if it fits the crop, else
    scaled down to fit it with the aspect ratio kept.

    Args:
      height, width: int32 scalar tensors (or ints), the image's size.
      crop_size: (int, int), the model's crop.
      dtype: the integer type of the arithmetic (int32 for TFLite files,
        which must hold no int64 tensor; exact for sides below 2**31 / crop).

    Returns:
      (height, width) int32 scalar tensors; the limiting side of a scaled
      image is exactly the crop's, the other `floor(side * scale)` (>= 1).
    """
    crop_h, crop_w = (tf.constant(c, dtype) for c in crop_size)
    h, w = tf.cast(height, dtype), tf.cast(width, dtype)
    # Integer arithmetic: scale = min(crop_h / h, crop_w / w), exactly.
    height_limits = crop_h * w <= crop_w * h
    scaled_h = tf.where(height_limits, crop_h, tf.maximum(h * crop_w // w, 1))
    scaled_w = tf.where(height_limits, tf.maximum(w * crop_h // h, 1), crop_w)
    fits = tf.logical_and(h <= crop_h, w <= crop_w)
    return (
        tf.cast(tf.where(fits, h, scaled_h), tf.int32),
        tf.cast(tf.where(fits, w, scaled_w), tf.int32),
    )


def pad_to_crop(images, crop_size):
    """Pads float `[batch, h, w, 3]` at the bottom/right with the mean pixel."""
    shape = tf.shape(images)
    paddings = [[0, 0], [0, crop_size[0] - shape[1]], [0, crop_size[1] - shape[2]]]
    padded = tf.stack(
        [
            tf.pad(images[..., c], paddings, constant_values=float(mean))
            for c, mean in enumerate(augment.MEAN_PIXEL)
        ],
        axis=-1,
    )
    padded.set_shape([None, *crop_size, 3])
    return padded


def _decode(encoded, max_pixels):
    """One image, after its header's size is checked against `max_pixels`."""
    height, width = _header_size(encoded)
    check = tf.debugging.assert_less_equal(
        height * width,
        tf.constant(max_pixels, tf.int64),
        message=_over_budget("predict_images", max_pixels),
    )
    with tf.control_dependencies([check]):
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def _over_budget(signature, max_pixels):
    return (
        f"{signature}: an image has more than {max_pixels} pixels, the "
        "export's --max_image_pixels (height x width as its header says, "
        "checked before decoding): send a smaller image"
    )


def _header_size(encoded):
    """(height, width), int64, from a JPEG, PNG, GIF or BMP header, not decoded.

    Unknown formats give (0, 0): `decode_image` then refuses them.
    """
    head = tf.strings.substr(
        tf.strings.join([tf.strings.substr(encoded, 0, 32), b"\0" * 32]), 0, 32
    )
    raw = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def number(start, size, big_endian):
        digits = raw[start : start + size]
        if big_endian:
            digits = tf.reverse(digits, [0])
        return tf.reduce_sum(digits * (256 ** tf.range(size, dtype=tf.int64)))

    def starts(signature):
        return tf.strings.substr(encoded, 0, len(signature)) == signature

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(encoded), tf.int64)
        return shape[0], shape[1]

    def bmp():
        height = number(22, 4, False)
        height = tf.where(height >= 2**31, 2**32 - height, height)  # Top-down.
        return height, number(18, 4, False)

    return tf.case(
        [
            (starts(b"\xff\xd8\xff"), jpeg),
            (starts(b"\x89PNG"), lambda: (number(20, 4, True), number(16, 4, True))),
            (starts(b"GIF8"), lambda: (number(8, 2, False), number(6, 2, False))),
            (starts(b"BM"), bmp),
        ],
        default=lambda: (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
    )


def _decode_batch(encoded, max_pixels):
    """Decodes `[batch]` JPEG/PNG strings of one size into uint8 images."""
    check = tf.debugging.assert_positive(
        tf.size(encoded), message="predict_images: the request has no image"
    )
    with tf.control_dependencies([check]):
        size = tf.shape(_decode(encoded[0], max_pixels))[:2]

    def decode_checked(data):
        image = _decode(data, max_pixels)
        same = tf.debugging.assert_equal(
            tf.shape(image)[:2],
            size,
            message="predict_images: all images of one request must have one "
            "size (send images of other sizes in other requests); this "
            "image's height, width vs the first's",
        )
        with tf.control_dependencies([same]):
            return tf.identity(image)

    return tf.map_fn(
        decode_checked,
        encoded,
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )


class _ServingGraph:
    """The signatures' Python functions over a `Predictor`.

    Args:
      predictor: an `inference.Predictor`.
      max_pixels: int, the largest height x width a signature accepts.
    """

    def __init__(self, predictor, max_pixels=None):
        self._predictor = predictor
        self._max_pixels = int(max_pixels or DEFAULT_MAX_IMAGE_PIXELS)

    def signatures(self):
        """The signature concrete functions, by signature name.

        `predict_images` decodes and calls `serving_default`'s function, so
        the SavedModel holds the model's graph once.
        """
        image_spec = tf.TensorSpec(
            [None, None, None, 3], tf.uint8, name=serving.IMAGE_TENSOR
        )
        encoded_spec = tf.TensorSpec([None], tf.string, name=serving.ENCODED_IMAGES)
        segment = tf.function(
            self._segment, input_signature=[image_spec], autograph=False
        )
        segment_encoded = tf.function(
            lambda encoded: segment(_decode_batch(encoded, self._max_pixels)),
            input_signature=[encoded_spec],
            autograph=False,
        )
        return {
            serving.SERVING_DEFAULT: segment.get_concrete_function(),
            serving.PREDICT_IMAGES: segment_encoded.get_concrete_function(),
        }

    def _scores(self, images):
        """(scores whose argmax is the prediction, probabilities) at the crop.

        As DeepLab: the logits for the single scale 1.0 without flips, else
        the mean probabilities over scales and flips.
        """
        predictor = self._predictor
        if predictor.scales == (1.0,) and not predictor.add_flipped_images:
            _, model = predictor.models[0]
            logits = tf.cast(model(images, training=False), tf.float32)
            return logits, tf.nn.softmax(logits)
        probabilities = predictor.probabilities(images)
        return probabilities, probabilities

    def _segment(self, images):
        # A runtime shape check: the signature's shape is not enforced when
        # the graph runs, and a wrong rank would fail deep inside.
        images = tf.ensure_shape(
            images, [None, None, None, 3], name="check_ImageTensor_shape"
        )
        shape = tf.shape(images)
        height, width = shape[1], shape[2]
        checks = [
            tf.debugging.assert_positive(
                shape[1:3], message="ImageTensor: images need at least 1x1 pixels"
            ),
            tf.debugging.assert_less_equal(
                tf.cast(height, tf.int64) * tf.cast(width, tf.int64),
                tf.constant(self._max_pixels, tf.int64),
                message=_over_budget("ImageTensor", self._max_pixels),
            ),
        ]
        with tf.control_dependencies(checks):
            fit_h, fit_w = fit_size(height, width, self._predictor.crop_size)
        images = resize.resize_bilinear(
            tf.cast(images, tf.float32), tf.stack([fit_h, fit_w])
        )
        images = pad_to_crop(images, self._predictor.crop_size)
        scores, probabilities = self._scores(images)

        def restore_size(values):
            # Cut the padding away; back to the input's size.
            return resize.resize_bilinear(
                values[:, :fit_h, :fit_w], tf.stack([height, width])
            )

        probabilities = restore_size(probabilities)
        if scores is not probabilities:
            scores = restore_size(scores)
        return {
            serving.SEMANTIC_PREDICTIONS: tf.argmax(
                scores, axis=-1, output_type=tf.int32
            ),
            serving.SEMANTIC_PROBABILITIES: probabilities,
        }


def _check_model(model, options):
    want_input = (*options.crop_size, 3)
    if tuple(model.input_shape[1:]) != want_input:
        raise ValueError(
            f"the model takes {list(model.input_shape)} but the options' crop "
            f"needs [None, {', '.join(map(str, want_input))}]: build it for "
            f"crop_size {options.crop_size}"
        )
    if model.output_shape[-1] != options.num_classes:
        raise ValueError(
            f"the model has {model.output_shape[-1]} classes but the options "
            f"say num_classes={options.num_classes}"
        )


def _tf_variables(models):
    """The `tf.Variable`s behind the models' (Keras 3) variables.

    Tracking them rather than the Keras variables matters: a Keras 3
    variable exports a copy of itself, which session-based loaders (TF
    Serving, `saved_model_cli run`) restore while the graph reads the
    original, never restored ("Could not find variable ...").

    Raises:
      TypeError: for a variable that is not backed by a `tf.Variable`.
    """
    variables = []
    for model in models:
        for variable in model.variables:
            if not isinstance(variable, tf.Variable):
                variable = variable.value
            if not isinstance(variable, tf.Variable):
                raise TypeError(
                    f"cannot export {model.name}: its variable {variable!r} is "
                    "not a tf.Variable (Keras' TensorFlow backend is needed)"
                )
            variables.append(variable)
    return variables


def model_description(options, inference_scales, add_flipped_images):
    """The JSON-ready provenance record of an export (the options file)."""
    values = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    cell = values.pop("dense_prediction_cell")
    values.update(
        head=options.head,
        dense_prediction_cell=None if cell is None else cell_spec.cell_to_json(cell),
        inference_scales=list(inference.check_scales(inference_scales)),
        add_flipped_images=bool(add_flipped_images),
        mean_pixel=list(augment.MEAN_PIXEL),
        deeplab_dpc_version=deeplab_dpc.__version__,
    )
    return values


def _existing_version_error(path):
    return FileExistsError(
        f"{path} already exists: choose another --model_version or "
        "pass --overwrite (overwrite=True) to replace it"
    )


def version_dir(export_path, model_version, overwrite=False):
    """The version folder an export writes, checked before the work.

    Args:
      export_path: str, the model's base path.
      model_version: int >= 1.
      overwrite: bool, an existing folder may be replaced.

    Returns:
      str, `<export_path>/<model_version>`.

    Raises:
      ValueError: for a bad version.
      FileExistsError: when the folder exists and not `overwrite`.
    """
    if (
        isinstance(model_version, bool)
        or not isinstance(model_version, int)
        or model_version < 1
    ):
        raise ValueError(f"model_version must be an int >= 1, got {model_version!r}")
    path = os.path.join(export_path, str(model_version))
    if os.path.lexists(path) and not overwrite:
        raise _existing_version_error(path)
    return path


def _publish(staging, target, overwrite):
    """Renames the finished export into place (replacing an old one)."""
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    if not overwrite:
        raise _existing_version_error(target)
    parent, name = os.path.split(target)
    trash = file_io.make_staging_dir(parent, f".{name}.replaced-", _STAGING)
    old = os.path.join(trash, name)
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(old, target)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def export_saved_model(
    model,
    options,
    export_path,
    *,
    model_version=1,
    inference_scales=(1.0,),
    add_flipped_images=False,
    overwrite=False,
    fold_batch_norm=True,
    max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
):
    """Writes a SavedModel for TF Serving to `<export_path>/<model_version>`.

    The export is written to a hidden `.<version>.tmp-<pid>@<host>-*` folder
    of `export_path` (which TF Serving ignores: not a number) and renamed into
    place when complete; a failure removes it, and the next export into
    `export_path` removes those of killed exports (`file_io.make_staging_dir`).
    The version folder gets the mode of a plain folder under the umask (its
    files are readable by whoever may read the folder, e.g. TF Serving
    running as another user).

    Args:
      model: the DeepLab Keras model built for `options.crop_size`, with its
        weights.
      options: its `deeplab.ModelOptions`.
      export_path: str, the model's base path (local file system).
      model_version: int >= 1, the version folder.
      inference_scales: floats, DeepLab's `--inference_scales`.
      add_flipped_images: bool, also average the mirrored images.
      overwrite: bool, replace an existing version folder.
      fold_batch_norm: bool, serve the model with its batch norms folded
        into the convs (`folding.fold_batch_norms`): the same predictions up
        to float rounding, faster. `model` itself is left as it is.
      max_image_pixels: int >= 1, the signatures refuse an image of more
        pixels (height x width) with an error naming the limit;
        `predict_images` reads the size from the image's header before
        decoding, so an over-budget image costs no memory.

    Returns:
      str, the version folder written.

    Raises:
      FileExistsError: when the version folder exists and not `overwrite`.
      ValueError: for a bad version, scales the output stride cannot serve,
        or a model that does not fit the options.
    """
    target = version_dir(export_path, model_version, overwrite)
    _check_model(model, options)
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) or max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be an int >= 1, got {max_image_pixels!r}")
    description = model_description(options, inference_scales, add_flipped_images)
    description["max_image_pixels"] = max_image_pixels
    predictor = inference.Predictor(
        model,
        options,
        inference_scales,
        add_flipped_images,
        fold_batch_norm=fold_batch_norm,
    )
    # The root holds the variables of every scale's model (not the Keras
    # objects, which saving would walk for nothing) and only the signatures
    # as functions.
    root = tf.Module(name="deeplab")
    root.model_variables = _tf_variables(m for _, m in predictor.models)
    # Named after this process; killed exports' leftovers go first.
    staging = file_io.make_staging_dir(
        export_path, f".{model_version}.tmp-", _STAGING
    )
    try:
        # Traced on the portable ops only: the SavedModel must serve on any
        # device, not just on kernels of the machine that exports it.
        with fast_paths.portable():
            signatures = _ServingGraph(predictor, max_image_pixels).signatures()
            tf.saved_model.save(root, staging, signatures=signatures)
        os.makedirs(os.path.join(staging, EXTRA_DIR))
        with open(os.path.join(staging, EXTRA_DIR, OPTIONS_FILE), "w") as f:
            json.dump(description, f, indent=2)
            f.write("\n")
        _publish(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def describe(path):
    """The signatures of a SavedModel as text (name, inputs, outputs).

    Args:
      path: str, a SavedModel folder.

    Returns:
      str, one block per signature, e.g. "serving_default\\n  input
      ImageTensor: uint8 [-1, -1, -1, 3]\\n  output ...".
    """
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())

    def line(kind, name, info):
        dtype = tf.dtypes.as_dtype(info.dtype).name
        if info.tensor_shape.unknown_rank:
            return f"  {kind} {name}: {dtype} (unknown rank)"
        shape = [d.size for d in info.tensor_shape.dim]
        return f"  {kind} {name}: {dtype} {shape}"

    blocks = []
    for key, signature in sorted(saved.meta_graphs[0].signature_def.items()):
        if key.startswith("__"):
            continue
        lines = [key]
        lines += [line("input", k, v) for k, v in sorted(signature.inputs.items())]
        lines += [line("output", k, v) for k, v in sorted(signature.outputs.items())]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def serving_function(predictor):
    """`serving_default`'s function over a `Predictor`, without a SavedModel.

    Traced on the portable ops, as `export_saved_model` traces it, so it
    gives the exported SavedModel's pixels (`image_predictor` runs
    checkpoints with it).

    Args:
      predictor: an `inference.Predictor`.

    Returns:
      a concrete function: uint8 `[batch, h, w, 3]` images of any size ->
      {`SemanticPredictions`, `SemanticProbabilities`}.
    """
    with fast_paths.portable():
        return _ServingGraph(predictor).signatures()[serving.SERVING_DEFAULT]

"""Class maps of ordinary images from any of a model's three forms.

`from_checkpoint(options, checkpoint_path)`, `from_saved_model(path)` and
`from_tflite(path)` each give an `ImagePredictor`: called on one RGB image
(uint8 `[height, width, 3]` of any size, e.g. `read_image(path)` of a JPEG
or PNG), it returns the int32 `[height, width]` classes. All three run
DeepLab's fit-and-pad: an image larger than the model's crop is scaled down
to fit it (aspect ratio kept), padded at the bottom and right with the mean
pixel, and the scores lose the padding and are resized back to the image
before the argmax. A checkpoint runs the SavedModel's own serving graph
(`saved_model.serving_function`), so the two agree exactly; a TFLite file
with `--allow_resize` does the same inside the file, and for a file of a
fixed crop `tflite.fit_and_pad` runs outside it (float32 files agree with
the SavedModel up to float rounding, int8 ones within their quantization).

Example:

    options = deeplab.ModelOptions(num_classes=3, crop_size=(129, 129), ...)
    predict = image_predictor.from_checkpoint(options, "/tmp/train")
    classes = predict(image_predictor.read_image("photo.jpg"))
"""

import dataclasses
import os

import numpy as np
from PIL import Image
import tensorflow as tf

from deeplab_dpc.evaluation import inference
from deeplab_dpc.export import litert_runner
from deeplab_dpc.export import saved_model
from deeplab_dpc.export import serving
from deeplab_dpc.export import tflite

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def read_image(path):
    """An image file as uint8 RGB `[height, width, 3]` (grey and RGBA too)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), np.uint8)


def _check_image(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(
            f"expected one RGB image [height, width, 3], got shape {image.shape}"
        )
    return image


@dataclasses.dataclass(frozen=True)
class ImagePredictor:
    """`predictor(image) -> classes` for one model form.

    Attributes:
      form: "checkpoint", "saved_model" or "tflite".
      source: the path the model came from.
      predict_fn: uint8 `[h, w, 3]` numpy image -> int32 `[h, w]` classes.
    """

    form: str
    source: str
    predict_fn: object

    def __call__(self, image):
        """The int32 `[height, width]` classes of a uint8 RGB image.

        Raises:
          ValueError: for an array that is not one `[h, w, 3]` image.
        """
        return np.asarray(self.predict_fn(_check_image(image)), np.int32)


def from_checkpoint(options, checkpoint_path, *, fold_batch_norm=True):
    """An `ImagePredictor` of a training checkpoint.

    Args:
      options: the run's `deeplab.ModelOptions` (its crop is the model's).
      checkpoint_path: a checkpoint prefix or a train_logdir (its latest).
      fold_batch_norm: bool, fold the batch norms as `export_model` does.

    Raises:
      FileNotFoundError, ValueError: as `inference.load_model`.
    """
    model = inference.load_model(options, checkpoint_path)
    predictor = inference.Predictor(model, options, fold_batch_norm=fold_batch_norm)
    function = saved_model.serving_function(predictor)

    def predict(image):
        outputs = function(tf.constant(image[np.newaxis], tf.uint8))
        return outputs[serving.SEMANTIC_PREDICTIONS][0].numpy()

    return ImagePredictor("checkpoint", str(checkpoint_path), predict)


def _saved_model_dir(path):
    """`path`, or its highest numbered version folder (an export_path)."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = [v for v in os.listdir(path) if v.isdigit()] if os.path.isdir(path) else []
    if not versions:
        raise FileNotFoundError(
            f"--saved_model={path!r}: neither a SavedModel (saved_model.pb) nor "
            "an export_path with numbered versions"
        )
    return os.path.join(path, max(versions, key=int))


def from_saved_model(path):
    """An `ImagePredictor` of a SavedModel of `export_model` (its
    `serving_default`), or of its export_path (the latest version).

    Raises:
      FileNotFoundError: when there is no SavedModel there.
    """
    path = _saved_model_dir(path)
    signature = tf.saved_model.load(path).signatures[serving.SERVING_DEFAULT]

    def predict(image):
        outputs = signature(
            **{serving.IMAGE_TENSOR: tf.constant(image[np.newaxis], tf.uint8)}
        )
        return outputs[serving.SEMANTIC_PREDICTIONS][0].numpy()

    predict.signature = signature  # Keeps the loaded variables alive.
    return ImagePredictor("saved_model", path, predict)


def from_tflite(path, *, num_threads=1):
    """An `ImagePredictor` of a TFLite file of `export_tflite` (any variant,
    with or without `--allow_resize`, `--include_argmax` or
    `--include_preprocessing`)."""
    runner = litert_runner.Runner(path, num_threads=num_threads)
    resizable = -1 in runner.input_shape[1:3]
    crop = runner.input_shape[1:3]

    def predict(image):
        height, width = image.shape[:2]
        if resizable:
            output = runner.run(image.astype(np.float32))[0]
            return output if runner.outputs_predictions else output.argmax(-1)
        padded, fitted = tflite.fit_and_pad(
            tf.constant(image[np.newaxis], tf.float32), crop
        )
        output = tf.constant(runner.run(padded.numpy()))
        if runner.outputs_predictions:
            # Classes cannot be interpolated: nearest neighbour, not argmax of
            # resized logits as the other forms (pixels at class borders).
            classes = output[0, : fitted[0], : fitted[1], tf.newaxis]
            restored = tf.image.resize(classes, (height, width), method="nearest")
            return restored[..., 0].numpy()
        scores = tflite.unpad_and_restore(output, fitted, (height, width))
        return tf.argmax(scores[0], axis=-1, output_type=tf.int32).numpy()

    return ImagePredictor("tflite", str(path), predict)

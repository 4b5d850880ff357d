r"""Exports a trained model as a SavedModel for TF Serving (DeepLab's export).

  python export/export_model.py --checkpoint_path=TRAIN_LOGDIR \
      --export_path=DIR [--model_version=1] [--crop_size=513,513] \
      [--inference_scales=1.0 [--inference_scales=1.25 ...]] \
      [--add_flipped_images] [--nofold_batch_norm] [--overwrite] \
      [model and data set flags]

Takes the training program's model and data set flags (one flagfile serves
both: `--flagfile=TRAIN_LOGDIR/train.flags`). `--checkpoint_path` is a
checkpoint prefix or a train_logdir (its latest checkpoint). Writes
`<export_path>/<model_version>/` atomically, for
`tensorflow_model_server --model_base_path=<export_path>`, and prints it and
its signatures: `serving_default` (uint8 `ImageTensor` of any size) and
`predict_images` (encoded JPEG/PNG strings), each giving
`SemanticPredictions` and `SemanticProbabilities` at the images' size. See
`deeplab_dpc/export/saved_model.py` for the resizing and padding. The
served graph has the batch norms folded into the convs (same predictions,
faster) unless `--nofold_batch_norm`. Both signatures refuse an image of
more than `--max_image_pixels` pixels (default 16 MP) with an error naming
the limit; `predict_images` reads the size from the image's header first.
"""

from absl import app
from absl import flags

from deeplab_dpc.flags import cli
from deeplab_dpc.flags import export_flags
from deeplab_dpc.flags import speed_flags

_EXPORT_PATH = flags.DEFINE_string(
    "export_path", None, "The model's base path; the version folder goes in it."
)
_MODEL_VERSION = flags.DEFINE_integer(
    "model_version", 1, "Version folder name (TF Serving's version).", lower_bound=1
)
_INFERENCE_SCALES = flags.DEFINE_multi_float(
    "inference_scales",
    [1.0],
    "Scales the image is run at; their probabilities are averaged.",
)
_ADD_FLIPPED_IMAGES = flags.DEFINE_boolean(
    "add_flipped_images", False, "Also average the left-right mirrored images."
)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Replace an existing <export_path>/<model_version>."
)
# `saved_model.DEFAULT_MAX_IMAGE_PIXELS` (that module imports TensorFlow,
# which --help does without; tests/flags/test_cli.py checks they agree).
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
_MAX_IMAGE_PIXELS = flags.DEFINE_integer(
    "max_image_pixels",
    DEFAULT_MAX_IMAGE_PIXELS,
    "The signatures refuse images of more pixels (height x width; "
    "predict_images checks the header before decoding).",
    lower_bound=1,
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    try:
        options = export_flags.model_options_from_flags()
    except flags.ValidationError as e:
        raise app.UsageError(str(e)) from e
    from deeplab_dpc.evaluation import inference
    from deeplab_dpc.export import saved_model

    try:
        scales = inference.check_scales(_INFERENCE_SCALES.value)
        for scale in scales:
            inference.scaled_crop(options.crop_size, scale, options.output_stride)
    except ValueError as e:
        raise app.UsageError(f"--inference_scales: {e}") from e
    try:
        saved_model.version_dir(
            _EXPORT_PATH.value, _MODEL_VERSION.value, _OVERWRITE.value
        )
        checkpoint = export_flags.checkpoint_from_flags()
    except OSError as e:
        raise SystemExit(f"error: {e}") from e
    try:
        model = inference.load_model(options, checkpoint)
    except ValueError as e:
        raise SystemExit(
            f"error: --checkpoint_path={checkpoint!r} does not fit the model "
            f"flags (the training run's --flagfile fits): {e}"
        ) from e
    try:
        path = saved_model.export_saved_model(
            model,
            options,
            _EXPORT_PATH.value,
            model_version=_MODEL_VERSION.value,
            inference_scales=scales,
            add_flipped_images=_ADD_FLIPPED_IMAGES.value,
            overwrite=_OVERWRITE.value,
            fold_batch_norm=speed_flags.FOLD_BATCH_NORM.value,
            max_image_pixels=_MAX_IMAGE_PIXELS.value,
        )
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    print(f"Exported {checkpoint} to {path}")
    print(saved_model.describe(path))


def run():
    cli.run(main, __name__, required=["checkpoint_path", "export_path"])


if __name__ == "__main__":
    run()

r"""Predicts the classes of ordinary image files with a trained model.

  python -m deeplab_dpc.predict --flagfile=TRAIN_LOGDIR/train.flags \
      --checkpoint_path=TRAIN_LOGDIR --crop_size=513,513 \
      --images='photos/*.jpg' --output_dir=DIR
  python -m deeplab_dpc.predict --saved_model=EXPORT_PATH --images=... --output_dir=DIR
  python -m deeplab_dpc.predict --tflite=FILE.tflite --images=... --output_dir=DIR

One of `--checkpoint_path` (with the run's model and data set flags and
`--crop_size`, as `export_model` takes them), `--saved_model` (an
`export_model` SavedModel or its export_path) or `--tflite` (an
`export_tflite` file). `--images` is a glob, a folder or a comma list of
them (JPEG, PNG, BMP, GIF files of any size). For each image it writes
`<output_dir>/<name>_prediction.png` (the classes coloured: `--colormap_type`,
else the data set's colours) and `<output_dir>/<name>_raw.png` (the class
indices), with a progress bar. Images larger than the model's crop are
scaled down to fit it and all are padded to it, as DeepLab does, so the
three forms give the same pixels (see `deeplab_dpc/export/image_predictor.py`).
"""

import glob
import os
import sys

from absl import app
from absl import flags

from deeplab_dpc.data import registry
from deeplab_dpc.flags import cli
from deeplab_dpc.flags import common_flags
from deeplab_dpc.flags import export_flags

_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", None, "An export_model SavedModel (or its export_path)."
)
_TFLITE = flags.DEFINE_string("tflite", None, "An export_tflite .tflite file.")
_IMAGES = flags.DEFINE_list(
    "images", None, "Image files: globs or folders, comma separated ('photos/*.jpg')."
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the PNGs go.")
_COLORMAP_TYPE = flags.DEFINE_enum(
    "colormap_type",
    None,
    registry.COLORMAPS,
    "Colormap of the coloured predictions (default: the data set's).",
)
_NUM_THREADS = flags.DEFINE_integer(
    "num_threads", 2, "LiteRT threads (--tflite).", lower_bound=1
)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Write over predictions already in --output_dir."
)


def image_files(patterns):
    """The image files of globs or folders, sorted, without repeats.

    Raises:
      flags.ValidationError: when they name no image file.
    """
    from deeplab_dpc.export import image_predictor

    found = set()
    for pattern in patterns:
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "*")
        found.update(
            path
            for path in glob.glob(os.path.expanduser(pattern))
            if path.lower().endswith(image_predictor.IMAGE_EXTENSIONS)
        )
    if not found:
        raise flags.ValidationError(
            f"--images={','.join(patterns)!r} names no JPEG, PNG, BMP or GIF file"
        )
    return sorted(found)


def output_paths(files, output_dir):
    """(coloured, raw) output paths per file.

    Raises:
      flags.ValidationError: when two files share a name.
    """
    stems = {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise flags.ValidationError(
                f"{stems[stem]} and {path} would write the same predictions; "
                "give them in separate runs"
            )
        stems[stem] = path
    return {
        path: (
            os.path.join(output_dir, f"{stem}_prediction.png"),
            os.path.join(output_dir, f"{stem}_raw.png"),
        )
        for stem, path in stems.items()
    }


def load_predictor():
    """The `ImagePredictor` of the one model form given.

    Raises:
      flags.ValidationError: unless exactly one form is given.
    """
    from deeplab_dpc.export import image_predictor

    given = [
        name
        for name, value in (
            ("checkpoint_path", export_flags.CHECKPOINT_PATH.value),
            ("saved_model", _SAVED_MODEL.value),
            ("tflite", _TFLITE.value),
        )
        if value
    ]
    if len(given) != 1:
        raise flags.ValidationError(
            "give exactly one of --checkpoint_path, --saved_model, --tflite"
            + (f" (got {', '.join('--' + g for g in given)})" if given else "")
        )
    if _SAVED_MODEL.value:
        return image_predictor.from_saved_model(_SAVED_MODEL.value)
    if _TFLITE.value:
        if not os.path.isfile(_TFLITE.value):
            raise FileNotFoundError(f"--tflite={_TFLITE.value!r}: no such file")
        return image_predictor.from_tflite(
            _TFLITE.value, num_threads=_NUM_THREADS.value
        )
    options = export_flags.model_options_from_flags()
    return image_predictor.from_checkpoint(
        options, export_flags.checkpoint_from_flags()
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    files = image_files(_IMAGES.value)
    outputs = output_paths(files, _OUTPUT_DIR.value)
    existing = [p for pair in outputs.values() for p in pair if os.path.exists(p)]
    if existing and not _OVERWRITE.value:
        raise flags.ValidationError(
            f"--output_dir={_OUTPUT_DIR.value!r} already holds {existing[0]} "
            f"(and {len(existing) - 1} more); pass --overwrite or choose "
            "another folder"
        )
    colors = common_flags.dataset_info_from_flags().label_colors(
        _COLORMAP_TYPE.value
    )
    import tqdm

    from deeplab_dpc.evaluation import visualizer
    from deeplab_dpc.export import image_predictor

    predictor = load_predictor()
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    for path in tqdm.tqdm(files, desc="predict", unit="image", file=sys.stderr):
        classes = predictor(image_predictor.read_image(path))
        colored, raw = outputs[path]
        visualizer.write_png(colored, registry.colorize(classes, colors))
        visualizer.write_png(raw, classes)
    print(
        f"Wrote the predictions of {len(files)} image(s) by "
        f"{predictor.form} {predictor.source} to {_OUTPUT_DIR.value}"
    )


def run():
    cli.run(main, __name__, required=["output_dir", "images"])


if __name__ == "__main__":
    run()

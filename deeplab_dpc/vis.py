"""Writes colorized (and raw) predictions of a split, as DeepLab's vis.py.

  python -m deeplab_dpc.vis --checkpoint_dir=TRAIN_LOGDIR --vis_logdir=DIR \
      --dataset=synthetic --dataset_dir=DATA [--vis_split=val] \
      [--vis_crop_size=513,513] [--colormap_type=pascal] \
      [--colormap_file=color150.mat] [--also_save_raw_predictions]

Outputs go to `<vis_logdir>/segmentation_results/` and, with
`--also_save_raw_predictions`, `<vis_logdir>/raw_segmentation_results/`
(see `evaluation/visualizer.py`); for `--dataset=cityscapes` the raw maps are the official
labelIds the `cityscapesscripts` evaluator reads. The program refuses to
write over results already in `--vis_logdir` unless `--overwrite`. It
visualises the latest checkpoint `--max_number_of_iterations` times, each
time a new one appears (0: watch forever, DeepLab's default; here the
default is one pass).

Colours: `--colormap_file` (a text palette of `R G B` lines, line 1 colouring
class 0, or ADE20K's devkit `color150.mat`) overrides everything; else
`--colormap_type`, or by default the data set's own palette
(`colormap.txt` in `--dataset_dir`, which `build_ade20k_data.py
--colormap_file` writes) or its named colormap. ADE20K's colours are not
built in: without a palette, `ade20k` logs a warning and uses PASCAL's.

The model runs with its batch norms folded into the convs (the same
predictions, faster) unless `--nofold_batch_norm`; the other speed levers
and the thread flags of `deeplab_dpc.flags.speed_flags` apply as in eval.
"""

import os

from absl import app
from absl import flags
from absl import logging

from deeplab_dpc.data import registry
from deeplab_dpc.flags import cli
from deeplab_dpc.flags import common_flags
from deeplab_dpc.flags import eval_flags
from deeplab_dpc.flags import speed_flags

_VIS_LOGDIR = flags.DEFINE_string("vis_logdir", None, "Where the PNGs are written.")
_VIS_SPLIT = flags.DEFINE_string("vis_split", "val", "Split to visualise.")
_VIS_CROP_SIZE = flags.DEFINE_string(
    "vis_crop_size",
    "513,513",
    "'height,width' every image is padded to; at least the split's largest image.",
)
_VIS_BATCH_SIZE = flags.DEFINE_integer("vis_batch_size", 1, "Images per batch.")
_COLORMAP_TYPE = flags.DEFINE_enum(
    "colormap_type",
    None,
    registry.COLORMAPS,
    "Colormap of the predictions (default: the data set's); ade20k takes the "
    "palette of colormap.txt in --dataset_dir.",
)
_COLORMAP_FILE = flags.DEFINE_string(
    "colormap_file",
    None,
    "Palette overriding --colormap_type and the data set's colours: 'R G B' "
    "lines (line 1: class 0), or a .mat file with 'colors' (ADE20K's "
    "color150.mat; a palette one colour short of num_classes gets black for "
    "class 0).",
)
_ALSO_SAVE_RAW_PREDICTIONS = flags.DEFINE_boolean(
    "also_save_raw_predictions", False, "Also write the raw class-map PNGs."
)
_MAX_NUMBER_OF_ITERATIONS = flags.DEFINE_integer(
    "max_number_of_iterations",
    1,
    "Passes over new checkpoints (0: watch --checkpoint_dir forever).",
)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Write over results already in --vis_logdir."
)


def label_colors(info):
    """The colours of the predictions: --colormap_file's palette, else
    `info.label_colors(--colormap_type)`.

    Raises:
      flags.ValidationError: naming --colormap_file when it is unreadable.
    """
    from deeplab_dpc.data import ade20k

    if _COLORMAP_FILE.value:
        try:
            return ade20k.read_palette(_COLORMAP_FILE.value, info.num_classes)
        except (OSError, ValueError) as e:
            raise flags.ValidationError(f"--colormap_file: {e}") from e
    return info.label_colors(_COLORMAP_TYPE.value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    try:
        speed_flags.apply_threads()
        speed_flags.apply_float32_math()
        crop, model_options = common_flags.model_options_for_crop_flag(
            "vis_crop_size", _VIS_CROP_SIZE.value
        )
        scales = eval_flags.parse_scales(crop, model_options.output_stride)
        info = common_flags.dataset_info_from_flags()
        eval_flags.check_split(_VIS_SPLIT.value, "vis_split")
        if _VIS_BATCH_SIZE.value < 1:
            raise flags.ValidationError("--vis_batch_size must be >= 1")
        colors = label_colors(info)
    except (ValueError, flags.ValidationError) as e:
        raise app.UsageError(str(e)) from e
    import tensorflow as tf

    from deeplab_dpc.data import pipeline
    from deeplab_dpc.data import tfexample
    from deeplab_dpc.evaluation import inference
    from deeplab_dpc.evaluation import visualizer

    existing = visualizer.existing_results(_VIS_LOGDIR.value)
    if existing and not _OVERWRITE.value:
        raise app.UsageError(
            f"--vis_logdir={_VIS_LOGDIR.value!r} already holds {len(existing)} "
            f"results (e.g. {existing[0]}); pass --overwrite to replace them or "
            "choose another folder"
        )
    os.makedirs(_VIS_LOGDIR.value, exist_ok=True)
    num_images = None  # A TFDS split's size is not counted here.
    if not eval_flags.tfds_name():
        num_images = tfexample.count_records(
            common_flags.DATASET_DIR.value, _VIS_SPLIT.value
        )
    for checkpoint in eval_flags.checkpoints(_MAX_NUMBER_OF_ITERATIONS.value):
        model = inference.load_model(
            model_options,
            checkpoint,
            mixed_precision=speed_flags.MIXED_PRECISION.value,
            checkpoint_flag="--checkpoint_dir",
        )
        predictor = inference.Predictor(
            model,
            model_options,
            scales,
            eval_flags.ADD_FLIPPED_IMAGES.value,
            jit_compile=speed_flags.JIT_COMPILE.value,
            fold_batch_norm=speed_flags.FOLD_BATCH_NORM.value,
        )
        dataset = pipeline.make_dataset(
            common_flags.DATASET_DIR.value,
            _VIS_SPLIT.value,
            crop_size=crop,
            batch_size=_VIS_BATCH_SIZE.value,
            is_training=False,
            ignore_label=info.ignore_label,
            tfds_name=eval_flags.tfds_name(),
        )
        try:
            count = visualizer.visualize(
                predictor,
                dataset,
                _VIS_LOGDIR.value,
                colormap_type=colors,
                also_save_raw_predictions=_ALSO_SAVE_RAW_PREDICTIONS.value,
                cityscapes_label_ids=info.name == "cityscapes",
                progress=True,
                num_images=num_images,
            )
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
            raise pipeline.read_error(
                e, common_flags.DATASET_DIR.value, _VIS_SPLIT.value
            ) from None
        logging.info(
            "Wrote %d images of %s to %s.", count, checkpoint, _VIS_LOGDIR.value
        )


def run():
    cli.run(main, __name__, required=["checkpoint_dir", "vis_logdir"])


if __name__ == "__main__":
    run()

r"""Converts any segmentation data set of folders and list files to TFRecords.

  python datasets/build_seg_data.py --image_folder=DIR \
      --semantic_segmentation_folder=DIR --list_folder=DIR \
      --output_dir=DIR (--dataset=NAME | --num_classes=N --ignore_label=L) \
      [--image_format=jpg] [--label_format=png] [--splits=train,val] \
      [--class_names_file=FILE] [--colormap_file=FILE] \
      [--num_shards=4] [--num_workers=2] [--overwrite] [--skip_bad_examples]

Each `<split>.txt` in --list_folder names one example a line; example `NAME`
is `<image_folder>/NAME.<image_format>` with the single-channel label
`<semantic_segmentation_folder>/NAME.<label_format>` (class indices; palette
PNGs give their indices). Labels must be in [0, num_classes) or the ignore
label. An empty --semantic_segmentation_folder writes records without labels.
This is DeepLab's `build_voc2012_data.py` for any data set (e.g.
PASCAL-Person-Part, or one's own). `--class_names_file` (one name a line,
line 1 naming class 0) and `--colormap_file` (`R G B` lines, or a `.mat`
palette) are copied beside the shards as `class_names.txt` and
`colormap.txt`, which eval and vis read from `--dataset_dir`.
"""

from absl import app
from absl import flags

from deeplab_dpc.data import registry
from deeplab_dpc.flags import cli
from deeplab_dpc.flags import converter_flags

_IMAGE_FOLDER = flags.DEFINE_string("image_folder", None, "Folder of the images.")
_LABEL_FOLDER = flags.DEFINE_string(
    "semantic_segmentation_folder",
    None,
    "Folder of the label PNGs; empty for splits without labels.",
)
_LIST_FOLDER = flags.DEFINE_string(
    "list_folder", None, "Folder of the <split>.txt list files."
)
_IMAGE_FORMAT = flags.DEFINE_string("image_format", "jpg", "Image file extension.")
_LABEL_FORMAT = flags.DEFINE_string("label_format", "png", "Label file extension.")
_SPLITS = flags.DEFINE_list(
    "splits", [], "Splits to convert; default: every *.txt in --list_folder."
)
_DATASET = flags.DEFINE_enum(
    "dataset",
    "custom",
    registry.names(),
    "A registered data set, for its num_classes and ignore_label; custom "
    "needs --num_classes and --ignore_label.",
)
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "Labels must be in [0, num_classes) ...", lower_bound=1
)
_IGNORE_LABEL = flags.DEFINE_integer(
    "ignore_label", None, "... or equal the ignore label (e.g. 255)."
)
_CLASS_NAMES_FILE = flags.DEFINE_string(
    "class_names_file",
    None,
    "The num_classes class names, one a line (line 1: class 0); written as "
    "class_names.txt beside the shards.",
)
_COLORMAP_FILE = flags.DEFINE_string(
    "colormap_file",
    None,
    "Class colours, 'R G B' a line (line 1: class 0), or a .mat file with a "
    "'colors' variable; written as colormap.txt beside the shards.",
)
_WRITE = converter_flags.define_write_flags(num_shards=4)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    from deeplab_dpc.data import converters

    with converter_flags.user_errors():
        converters.convert_folders(
            _IMAGE_FOLDER.value,
            _LABEL_FOLDER.value,
            _LIST_FOLDER.value,
            _WRITE.output_dir.value,
            dataset_info=registry.get(
                _DATASET.value, _NUM_CLASSES.value, _IGNORE_LABEL.value
            ),
            options=_WRITE.options(),
            splits=_SPLITS.value,
            image_format=_IMAGE_FORMAT.value,
            label_format=_LABEL_FORMAT.value,
            class_names_file=_CLASS_NAMES_FILE.value,
            colormap_file=_COLORMAP_FILE.value,
        )
        converter_flags.write_flagfile(_WRITE.output_dir.value, "build_seg_data")


def run():
    cli.run(
        main,
        __name__,
        required=[
            "image_folder",
            "semantic_segmentation_folder",
            "list_folder",
            "output_dir",
        ],
    )


if __name__ == "__main__":
    run()

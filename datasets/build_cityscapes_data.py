r"""Converts Cityscapes to DeepLab TFRecords (labelIds -> 19 trainIds).

  python datasets/build_cityscapes_data.py --cityscapes_root=DIR \
      --output_dir=DIR [--splits=train_fine,val_fine] [--num_shards=10] \
      [--num_workers=2] [--overwrite] [--skip_bad_examples]

Reads `leftImg8bit/<split>/<city>/*_leftImg8bit.png` and
`gtFine/<split>/<city>/*_gtFine_labelIds.png` and maps the labelIds to the 19
trainIds with `cityscapesscripts`' label table (others -> 255). Splits:
train_fine, val_fine, test_fine (written without labels), train_coarse
(gtCoarse train + train_extra). Writes `<split>-%05d-of-%05d.tfrecord`.
"""

from absl import app
from absl import flags

from deeplab_dpc.flags import cli
from deeplab_dpc.flags import converter_flags

_CITYSCAPES_ROOT = flags.DEFINE_string(
    "cityscapes_root", None, "The folder holding leftImg8bit/ and gtFine/."
)
_SPLITS = flags.DEFINE_list(
    "splits",
    ["train_fine", "val_fine"],
    "Splits: train_fine, val_fine, test_fine, train_coarse.",
)
_WRITE = converter_flags.define_write_flags(num_shards=10)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    from deeplab_dpc.data import cityscapes

    with converter_flags.user_errors():
        cityscapes.convert_cityscapes(
            _CITYSCAPES_ROOT.value,
            _WRITE.output_dir.value,
            _SPLITS.value,
            _WRITE.options(),
        )
        converter_flags.write_flagfile(_WRITE.output_dir.value, "build_cityscapes_data")


def run():
    cli.run(main, __name__, required=["cityscapes_root", "output_dir"])


if __name__ == "__main__":
    run()

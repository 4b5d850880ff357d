r"""Converts PASCAL VOC 2012 (and its augmented set) to DeepLab TFRecords.

  python datasets/build_voc2012_data.py --voc_root=VOCdevkit/VOC2012 \
      --output_dir=DIR [--splits=train,val,trainval,train_aug] \
      [--num_shards=4] [--num_workers=2] [--overwrite] [--skip_bad_examples]

Reads `ImageSets/Segmentation/<split>.txt`, `JPEGImages/<name>.jpg` and the
palette PNGs `SegmentationClass/<name>.png`, whose palette indices are the
labels (255: boundary, ignored); train_aug reads the index PNGs of
`SegmentationClassAug/`. By default converts train, val, trainval, and
train_aug when `SegmentationClassAug/` and `train_aug.txt` are present.
"""

from absl import app
from absl import flags

from deeplab_dpc.flags import cli
from deeplab_dpc.flags import converter_flags

_VOC_ROOT = flags.DEFINE_string(
    "voc_root", None, "VOCdevkit/VOC2012: JPEGImages/, SegmentationClass/, ..."
)
_SPLITS = flags.DEFINE_list(
    "splits",
    [],
    "Splits (list files in ImageSets/Segmentation); default: train, val, "
    "trainval, and train_aug when present.",
)
_WRITE = converter_flags.define_write_flags(num_shards=4)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    from deeplab_dpc.data import converters

    with converter_flags.user_errors():
        converters.convert_voc2012(
            _VOC_ROOT.value, _WRITE.output_dir.value, _SPLITS.value, _WRITE.options()
        )
        converter_flags.write_flagfile(_WRITE.output_dir.value, "build_voc2012_data")


def run():
    cli.run(main, __name__, required=["voc_root", "output_dir"])


if __name__ == "__main__":
    run()

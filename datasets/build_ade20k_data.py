r"""Converts ADE20K (the scene parsing challenge) to DeepLab TFRecords.

  python datasets/build_ade20k_data.py --ade20k_root=ADEChallengeData2016 \
      --output_dir=DIR [--colormap_file=color150.mat] [--splits=train,val] \
      [--num_shards=4] [--num_workers=2] [--overwrite] [--skip_bad_examples]

Reads `images/{training,validation}/*.jpg` and
`annotations/{training,validation}/<name>.png`: 150 classes, label 0 is
"other" and ignored, so the model has 151 logits and labels are in [0, 150].
Beside the shards it writes `class_names.txt` from the archive's
`objectInfo150.txt` (without it, a warning: class names will be generic)
and, with `--colormap_file` (the scene-parsing devkit's `color150.mat`, or a
text palette of `R G B` lines), `colormap.txt`; eval and vis read both from
`--dataset_dir`. Existing files are only replaced with `--overwrite`.
"""

from absl import app
from absl import flags

from deeplab_dpc.flags import cli
from deeplab_dpc.flags import converter_flags

_ADE20K_ROOT = flags.DEFINE_string(
    "ade20k_root", None, "ADEChallengeData2016: images/ and annotations/."
)
_SPLITS = flags.DEFINE_list("splits", ["train", "val"], "Splits: train, val.")
_COLORMAP_FILE = flags.DEFINE_string(
    "colormap_file",
    None,
    "ADE20K's palette, written as colormap.txt beside the shards: the "
    "scene-parsing devkit's color150.mat, or a text file of 'R G B' lines.",
)
_WRITE = converter_flags.define_write_flags(num_shards=4)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    from deeplab_dpc.data import converters

    with converter_flags.user_errors():
        converters.convert_ade20k(
            _ADE20K_ROOT.value,
            _WRITE.output_dir.value,
            _SPLITS.value,
            _WRITE.options(),
            colormap_file=_COLORMAP_FILE.value,
        )
        converter_flags.write_flagfile(_WRITE.output_dir.value, "build_ade20k_data")


def run():
    cli.run(main, __name__, required=["ade20k_root", "output_dir"])


if __name__ == "__main__":
    run()

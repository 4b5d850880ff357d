r"""Imports a DeepLab TF1 checkpoint (e.g. from DeepLab's model zoo).

  python -m deeplab_dpc.import_checkpoint \
      --tf1_checkpoint=deeplab_cityscapes_xception71_trainfine/ \
      --model_variant=xception_71 \
      --dense_prediction_cell_json=deeplab_dpc/cells/dense_prediction_cell_branch5_top1_cityscapes.json \
      --decoder_output_stride=4 --num_classes=19 \
      --output_dir=/tmp/x71_dpc

Takes DeepLab's own model flags verbatim (`--atrous_rates=6
--atrous_rates=12 --atrous_rates=18` or `--atrous_rates=6,12,18`,
`--multi_grid`, `--noaspp_with_separable_conv`, `--output_stride`, ...;
`docs/model_zoo.md` lists the command of every released checkpoint).
`--tf1_checkpoint` is a checkpoint prefix or the folder of a model-zoo
tarball's contents. Every variable must map one to one (optimizer slots and
`global_step` are skipped); otherwise it fails (exit status 1) with one
error listing every unmapped, missing or misshapen variable, and writes
nothing. On success it prints the import table and writes `--output_dir`
as the training program writes a `train_logdir`: `ckpt-<global_step>` with
a `checkpoint` file, plus `model.flags` (the model flags given here), so

  python -m deeplab_dpc.eval --flagfile=/tmp/x71_dpc/model.flags \
      --checkpoint_dir=/tmp/x71_dpc --eval_logdir=... --dataset=cityscapes ...

and vis, `export/export_model.py --checkpoint_path=/tmp/x71_dpc`,
`export/export_tflite.py` and `train --tf_initial_checkpoint=/tmp/x71_dpc`
read it like their own (train also reads the TF1 checkpoint directly).
"""

import os

from absl import app
from absl import flags

from deeplab_dpc import file_io
from deeplab_dpc.flags import cli
from deeplab_dpc.flags import common_flags

MODEL_FLAGS_FILE = "model.flags"

_TF1_CHECKPOINT = flags.DEFINE_string(
    "tf1_checkpoint",
    None,
    "DeepLab's TF1 checkpoint: a prefix (dir/model.ckpt) or a folder holding "
    "one (a model-zoo tarball's contents).",
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Folder the checkpoint of this package goes to."
)
_CROP_SIZE = flags.DEFINE_string(
    "crop_size",
    "513,513",
    "Crop 'H,W' the model is built at for the import (output_stride * k + 1); "
    "no variable depends on it, the checkpoint serves every crop.",
)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Replace a checkpoint already in --output_dir."
)


def model_flags_text():
    """The model and data set flags given on the command line, one a line
    (the cell's JSON by its absolute path, so the file serves any folder)."""
    lines = []
    for flag in flags.FLAGS.get_flags_for_module(common_flags):
        if not flag.present:
            continue
        if flag.name == common_flags.DPC_JSON.name and flag.value:
            lines.append(f"--{flag.name}={os.path.abspath(flag.value)}")
        else:
            lines.append(flag.serialize())
    return "\n".join(line for line in lines if line) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    try:
        _, options = common_flags.model_options_for_crop_flag(
            "crop_size", _CROP_SIZE.value
        )
    except flags.ValidationError as e:
        raise app.UsageError(str(e)) from e
    # After the flags: the library imports TensorFlow (`--help` stays quick).
    # pylint: disable=import-outside-toplevel
    from deeplab_dpc.models import tf1_checkpoint
    from deeplab_dpc.training import tf1_import

    # pylint: enable=import-outside-toplevel
    try:
        written, report = tf1_import.import_to_checkpoint(
            options,
            _TF1_CHECKPOINT.value,
            _OUTPUT_DIR.value,
            overwrite=_OVERWRITE.value,
        )
    except tf1_checkpoint.CheckpointMismatchError as e:
        raise SystemExit(f"error: --tf1_checkpoint: {e}") from e
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    file_io.write_text(
        os.path.join(_OUTPUT_DIR.value, MODEL_FLAGS_FILE), model_flags_text()
    )
    print(report.format_table())
    print(f"Wrote {written} (model flags: {MODEL_FLAGS_FILE} beside it).")


def run():
    cli.run(main, __name__, required=["tf1_checkpoint", "output_dir"])


if __name__ == "__main__":
    run()

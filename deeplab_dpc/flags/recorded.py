"""The flag files the programs write, and what a training run's record says.

The training program writes two files into its `train_logdir`:

* `train.flags`: the model and data set flags (`common_flags`) only. Every
  program defines those, so `--flagfile=<train_logdir>/train.flags` serves
  train, eval, vis, predict, flops, search, export_model, export_tflite and
  compare alike, with each program's own flags after it.
* `train_run.flags`: the training program's other flags of that run
  (steps, batch, learning rate, speed levers...), for the record;
  `--flagfile=train.flags --flagfile=train_run.flags` repeats the run.

Both hold this package's flags alone (not absl's or TensorFlow's internals
such as `--test_tmpdir`); so do the converters' `<program>.flags`.
`differing_model_flags` compares a logdir's record with the flags of a run
about to resume there.
"""

import os
import sys

from absl import flags

SHARED_FLAGS_FILE = "train.flags"
RUN_FLAGS_FILE = "train_run.flags"
SHARED_MODULE = "deeplab_dpc.flags.common_flags"
PACKAGE = "deeplab_dpc"
# The flags a checkpoint's variables depend on: resuming with others fails.
MODEL_FLAGS = (
    "model_variant",
    "depth_multiplier",
    "output_stride",
    "head",
    "dense_prediction_cell_json",
    "atrous_rates",
    "multi_grid",
    "aspp_with_separable_conv",
    "add_image_level_feature",
    "decoder_output_stride",
    "dataset",
    "num_classes",
)


def _is_package_module(name):
    return name == sys.argv[0] or name == PACKAGE or name.startswith(PACKAGE + ".")


def package_flags():
    """This package's flags (shared modules and the running program's own),
    by module name."""
    return {
        name: list(module_flags)
        for name, module_flags in flags.FLAGS.flags_by_module_dict().items()
        if _is_package_module(name)
    }


def _serialize(flag_list):
    lines = []
    for flag in sorted(flag_list, key=lambda f: f.name):
        if flag.value is not None:
            lines.extend(flag.serialize().splitlines())
    return "".join(line + "\n" for line in lines)


def shared_flags_into_string():
    """The model and data set flags, one `--name=value` a line."""
    return _serialize(package_flags().get(SHARED_MODULE, []))


def program_flags_into_string():
    """This package's flags but the shared ones: the program's own run."""
    return _serialize(
        flag
        for name, module_flags in package_flags().items()
        if name != SHARED_MODULE
        for flag in module_flags
    )


def package_flags_into_string():
    """Every flag of this package the program defines (not absl's or
    TensorFlow's), one `--name=value` a line."""
    return _serialize(
        flag for module_flags in package_flags().values() for flag in module_flags
    )


def _lines_of(text, name):
    """The lines of a flag file that set `--name` (in order)."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line in (f"--{name}", f"--no{name}") or line.startswith(f"--{name}="):
            found.append(line)
    return found


def differing_model_flags(train_logdir):
    """The model flags whose values differ from `<train_logdir>/train.flags`.

    Returns:
      list of (flag name, recorded lines, current lines); empty when there
      is no record or every model flag agrees.
    """
    path = os.path.join(train_logdir, SHARED_FLAGS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    differing = []
    for name in MODEL_FLAGS:
        if name not in flags.FLAGS:
            continue
        flag = flags.FLAGS[name]
        now = [] if flag.value is None else flag.serialize().splitlines()
        recorded = _lines_of(text, name)
        if recorded != now and not (recorded == [] and not flag.present):
            differing.append((name, recorded, now))
    return differing


def resume_error(train_logdir, differing):
    """The message refusing to resume with model flags that differ.

    Args:
      train_logdir: str, the run's folder.
      differing: `differing_model_flags(train_logdir)`.
    """

    def show(lines, name):
        return " ".join(lines) if lines else f"--{name} unset"

    record = os.path.join(train_logdir, SHARED_FLAGS_FILE)
    changes = "; ".join(
        f"{show(now, name)} here, {show(recorded, name)} recorded"
        for name, recorded, now in differing
    )
    return (
        f"--train_logdir={train_logdir!r} holds the checkpoints of another "
        f"model ({changes} in {record}). Resume with the recorded flags "
        f"(--flagfile={record}) or train into another --train_logdir; "
        "nothing was written"
    )

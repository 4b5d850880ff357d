"""docs/model_zoo.md: every import command there parses and builds valid
model options (the flags and crop of each documented checkpoint)."""

import pathlib
import re
import shlex

from absl import flags
from absl.testing import flagsaver
import pytest

from deeplab_dpc import import_checkpoint  # pylint: disable=unused-import (its flags)
from deeplab_dpc.flags import common_flags

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "model_zoo.md"
COMMAND = re.compile(r"python -m deeplab_dpc\.import_checkpoint (.*?)\n```", re.S)


def commands():
    text = DOC.read_text()
    return [shlex.split(m.replace("\\\n", " ")) for m in COMMAND.findall(text)]


def test_every_released_model_has_a_command():
    assert len(commands()) == 14
    assert DOC.read_text().count("### ") == 14


@pytest.mark.parametrize("argv", commands(), ids=lambda a: a[-1].rsplit("/", 1)[-1])
def test_command_builds_valid_options(argv):
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["import_checkpoint", *argv])
        crop = flags.FLAGS.crop_size
        _, options = common_flags.model_options_for_crop_flag("crop_size", crop)
        assert flags.FLAGS.tf1_checkpoint and flags.FLAGS.output_dir
    assert options.num_classes in (19, 21, 151)
    assert options.model_variant in argv[1]

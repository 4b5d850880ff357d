"""The presets in configs/: model and data set flags only, so that every
program takes them, and each resolves to the model it describes."""

import glob
import os

from absl import flags
from absl.testing import flagsaver
import pytest

from deeplab_dpc import eval as _eval  # noqa: F401  (defines eval's flags)
from deeplab_dpc import train as _train  # noqa: F401
from deeplab_dpc import vis as _vis  # noqa: F401
from deeplab_dpc.cells import cell_spec
from deeplab_dpc.flags import common_flags

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.flags")))
EXPECTED = {
    "cityscapes_mobilenetv2_dpc": ("mobilenet_v2", 19, 16, "dpc", None, ()),
    "cityscapes_xception_dpc": ("xception", 19, 8, "dpc", 4, ()),
    "pascal_mobilenetv2_aspp": ("mobilenet_v2", 21, 16, "aspp", None, ()),
    "pascal_xception_aspp_decoder": ("xception", 21, 16, "aspp", 4, (6, 12, 18)),
    "synthetic_mobilenetv2_dpc": ("mobilenet_v2", 7, 16, "dpc", None, ()),
}


def _flag_names(path):
    with open(path) as f:
        lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    return [l[2:].split("=", 1)[0] for l in lines]


def test_every_preset_is_checked():
    assert sorted(os.path.basename(p)[:-6] for p in CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_preset_holds_shared_flags_and_resolves(path):
    shared = {f.name for f in FLAGS.get_flags_for_module(common_flags)}
    assert set(_flag_names(path)) <= shared, "program flags belong on the command line"
    with flagsaver.flagsaver():
        FLAGS(["program", f"--flagfile={path}"])
        crop = (769, 769)
        options = common_flags.model_options_from_flags(crop)
    variant, classes, stride, head, decoder, rates = EXPECTED[
        os.path.basename(path)[:-6]
    ]
    assert options.model_variant == variant
    assert options.num_classes == classes
    assert options.output_stride == stride
    assert options.head == head
    assert options.decoder_output_stride == decoder
    assert options.atrous_rates == rates
    if head == "dpc":
        assert options.dense_prediction_cell == cell_spec.published_cell()

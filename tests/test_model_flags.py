"""Model flags -> ModelOptions."""

import random

from absl import flags
from absl.testing import flagsaver
import pytest

from deeplab_dpc import model_flags
from deeplab_dpc.models import deeplab
from deeplab_dpc.search import space

FLAGS = flags.FLAGS


@pytest.fixture(autouse=True)
def _parsed_flags():
    if not FLAGS.is_parsed():
        FLAGS(["test"])
    with flagsaver.flagsaver():
        yield


def test_defaults_give_aspp_without_rates():
    options = model_flags.model_options_from_flags((513, 513))
    assert options.head == deeplab.HEAD_ASPP
    assert options.atrous_rates == ()
    assert options.model_variant == "mobilenet_v2"
    assert options.output_stride == 16
    assert options.backbone_weights is None


def test_dpc_from_json_and_published(tmp_path):
    path = tmp_path / "cell.json"
    cell = space.sample_cell(random.Random(3))
    space.dump_cell(cell, path)
    FLAGS.dense_prediction_cell_json = str(path)
    assert (
        model_flags.model_options_from_flags((513, 513)).dense_prediction_cell == cell
    )
    FLAGS.dense_prediction_cell_json = ""
    FLAGS.head = "dpc"
    assert (
        model_flags.model_options_from_flags((513, 513)).dense_prediction_cell
        == space.published_cell()
    )


def test_conflicts_and_bad_values_name_the_flag(tmp_path):
    path = tmp_path / "cell.json"
    space.dump_cell(space.published_cell(), path)
    FLAGS.dense_prediction_cell_json = str(path)
    FLAGS.head = "aspp"
    with pytest.raises(flags.ValidationError, match="--head=aspp"):
        model_flags.model_options_from_flags((513, 513))
    with pytest.raises(flags.ValidationError, match="--atrous_rates"):
        model_flags.parse_rates(["6", "x"])
    with pytest.raises(flags.ValidationError, match="--crop_size"):
        model_flags.parse_size("a,b", "crop_size")
    assert model_flags.parse_size("513", "crop_size") == (513, 513)
    assert model_flags.parse_size("1025,2049", "crop_size") == (1025, 2049)
    assert model_flags.parse_rates(["6", "12", "18"]) == (6, 12, 18)


def test_overrides_and_crop_check():
    FLAGS.atrous_rates = ["12", "24", "36"]
    FLAGS.output_stride = "8"
    options = model_flags.model_options_from_flags((65, 65), num_classes=19)
    assert options.atrous_rates == (12, 24, 36)
    assert options.num_classes == 19
    with pytest.raises(ValueError, match="output stride 8"):
        model_flags.model_options_from_flags((64, 64))

"""Model flags -> ModelOptions."""

import random

from absl import flags
import pytest

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.flags import common_flags
from deeplab_dpc.models import deeplab
from deeplab_dpc.search import space

FLAGS = flags.FLAGS
pytestmark = pytest.mark.usefixtures("parsed_flags")


def test_defaults_give_aspp_without_rates():
    options = common_flags.model_options_from_flags((513, 513))
    assert options.head == deeplab.HEAD_ASPP
    assert options.atrous_rates == ()
    assert options.model_variant == "mobilenet_v2"
    assert options.output_stride == 16
    assert options.backbone_weights is None


def test_dpc_from_json_and_published(tmp_path):
    path = tmp_path / "cell.json"
    cell = space.sample_cell(random.Random(3))
    cell_spec.dump_cell(cell, path)
    FLAGS.dense_prediction_cell_json = str(path)
    assert (
        common_flags.model_options_from_flags((513, 513)).dense_prediction_cell == cell
    )
    FLAGS.dense_prediction_cell_json = ""
    FLAGS.head = "dpc"
    assert (
        common_flags.model_options_from_flags((513, 513)).dense_prediction_cell
        == cell_spec.published_cell()
    )


def test_conflicts_and_bad_values_name_the_flag(tmp_path):
    path = tmp_path / "cell.json"
    cell_spec.dump_cell(cell_spec.published_cell(), path)
    FLAGS.dense_prediction_cell_json = str(path)
    FLAGS.head = "aspp"
    with pytest.raises(flags.ValidationError, match="--head=aspp"):
        common_flags.model_options_from_flags((513, 513))
    with pytest.raises(flags.ValidationError, match="--atrous_rates"):
        common_flags.parse_rates(["6", "x"])
    with pytest.raises(flags.ValidationError, match="--crop_size"):
        common_flags.parse_size("a,b", "crop_size")
    assert common_flags.parse_size("513", "crop_size") == (513, 513)
    assert common_flags.parse_size("1025,2049", "crop_size") == (1025, 2049)
    assert common_flags.parse_rates(["6", "12", "18"]) == (6, 12, 18)


def test_a_bad_cell_file_names_its_flag_not_the_crops(tmp_path):
    # The re-audit: a bad --dense_prediction_cell_json was reported as
    # "--train_crop_size='33,33' (--output_stride=16): <path>: ...".
    path = tmp_path / "cell.json"
    path.write_text("[" * 100000 + "]" * 100000)
    FLAGS.dense_prediction_cell_json = str(path)
    with pytest.raises(flags.ValidationError) as raised:
        common_flags.model_options_for_crop_flag("train_crop_size", "33,33")
    message = str(raised.value)
    assert message.startswith(f"--dense_prediction_cell_json: {path}: JSON nested")
    assert "crop" not in message


def test_overrides_and_crop_check():
    FLAGS.atrous_rates = ["12", "24", "36"]
    FLAGS.output_stride = "8"
    options = common_flags.model_options_from_flags((65, 65), num_classes=19)
    assert options.atrous_rates == (12, 24, 36)
    assert options.num_classes == 19
    with pytest.raises(ValueError, match="output stride 8"):
        common_flags.model_options_from_flags((64, 64))


def test_batch_norm_decay_reaches_the_options():
    from deeplab_dpc.layers import conv_bn  # pylint: disable=import-outside-toplevel

    assert (
        common_flags.model_options_from_flags((65, 65)).norm_momentum
        == conv_bn.NORM_MOMENTUM
        == 0.9997
    )
    FLAGS.batch_norm_decay = 0.95
    assert common_flags.model_options_from_flags((65, 65)).norm_momentum == 0.95
    with pytest.raises(flags.IllegalFlagValueError, match="batch_norm_decay"):
        FLAGS.batch_norm_decay = 1.5


def test_dataset_flags_give_num_classes():
    assert common_flags.model_options_from_flags((65, 65)).num_classes == 21
    FLAGS["dataset"].parse("cityscapes")
    info = common_flags.dataset_info_from_flags()
    assert (info.num_classes, info.ignore_label) == (19, 255)
    assert common_flags.model_options_from_flags((65, 65)).num_classes == 19
    FLAGS["num_classes"].parse("7")
    with pytest.raises(flags.ValidationError, match="--dataset=custom"):
        common_flags.dataset_info_from_flags()
    FLAGS["dataset"].parse("custom")
    with pytest.raises(flags.ValidationError, match="--ignore_label"):
        common_flags.dataset_info_from_flags()
    FLAGS.ignore_label = 0
    assert common_flags.model_options_from_flags((65, 65)).num_classes == 7
    FLAGS["dataset"].parse("no_such_set")
    with pytest.raises(flags.ValidationError, match="no_such_set"):
        common_flags.dataset_info_from_flags()


def test_num_classes_alone_declares_a_custom_set():
    FLAGS["num_classes"].parse("5")
    info = common_flags.dataset_info_from_flags()
    assert (info.name, info.num_classes, info.ignore_label) == ("custom", 5, 255)


def test_tfds_dataset_names():
    FLAGS["dataset"].parse("tfds:cityscapes/semantic_segmentation")
    info = common_flags.dataset_info_from_flags()
    assert (info.num_classes, info.ignore_label) == (19, 255)
    FLAGS["dataset"].parse("tfds:mnist")
    with pytest.raises(flags.ValidationError, match="--dataset"):
        common_flags.dataset_info_from_flags()


def test_metadata_files_in_dataset_dir(tmp_path):
    FLAGS["dataset"].parse("ade20k")
    FLAGS.dataset_dir = str(tmp_path)
    assert common_flags.dataset_info_from_flags().class_names == ()
    names = ["other"] + [f"class {k}" for k in range(1, 151)]
    (tmp_path / "class_names.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "colormap.txt").write_text("".join(f"{k} 0 0\n" for k in range(151)))
    info = common_flags.dataset_info_from_flags()
    assert info.class_names == tuple(names)
    assert info.label_colors()[150] == (150, 0, 0)
    (tmp_path / "class_names.txt").write_text("\n".join(names[:-1]) + "\n")
    with pytest.raises(flags.ValidationError) as error:
        common_flags.dataset_info_from_flags()
    assert f"--dataset_dir: {tmp_path / 'class_names.txt'} names 150 classes" in str(
        error.value
    )


@pytest.mark.parametrize(
    "argv, want",
    [
        # DeepLab's multi-integer form, the comma form, and both.
        (["--rates=6", "--rates=12", "--rates=18"], ["6", "12", "18"]),
        (["--rates=6,12,18"], ["6", "12", "18"]),
        # A comma list (or an empty value) replaces what came before, and
        # so does a first single value after one: a command line overrides
        # a flagfile's list.
        (["--rates=6,12", "--rates=18"], ["18"]),
        (["--rates=6,12,18", "--rates=12,24,36"], ["12", "24", "36"]),
        (["--rates=6", "--rates=12", "--rates=3,4"], ["3", "4"]),
        (["--rates=6,12,18", "--rates="], []),
        ([], []),
    ],
)
def test_multi_integer_flags_take_deeplabs_and_the_comma_form(argv, want):
    values = flags.FlagValues()
    holder = common_flags.define_comma_multi("rates", [], "Rates.", values)
    values(["program", *argv])
    assert holder.value == want
    # Written to a flagfile (train.flags, model.flags) and read back: equal.
    again = flags.FlagValues()
    common_flags.define_comma_multi("rates", [], "Rates.", again)
    serialized = [line for line in values.flags_into_string().splitlines() if line]
    again(["program", *serialized])
    assert again["rates"].value == want


def test_atrous_rates_and_multi_grid_reach_the_options():
    FLAGS.unparse_flags()
    FLAGS(
        [
            "program",
            "--model_variant=resnet_v1_50_beta",
            "--atrous_rates=6",
            "--atrous_rates=12",
            "--atrous_rates=18",
            "--multi_grid=1",
            "--multi_grid=2",
            "--multi_grid=4",
            "--noaspp_with_separable_conv",
        ]
    )
    options = common_flags.model_options_from_flags((33, 33))
    assert options.atrous_rates == (6, 12, 18)
    assert options.multi_grid == (1, 2, 4)
    assert not options.aspp_with_separable_conv
    FLAGS.multi_grid = ["1,2"]
    with pytest.raises(flags.ValidationError, match="--multi_grid=1,2: .*three"):
        common_flags.model_options_from_flags((33, 33))
    FLAGS.multi_grid = None
    FLAGS.atrous_rates = ["6,12,18"]  # Set in code: split too.
    assert common_flags.model_options_from_flags((33, 33)).atrous_rates == (6, 12, 18)
    assert common_flags.model_options_from_flags((33, 33)).multi_grid is None

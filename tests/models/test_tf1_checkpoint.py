"""Tests for deeplab_dpc.models.tf1_checkpoint against DeepLab's own graphs.

The oracles are in `../shared/fixtures/` (next to the repository's folder):
`deeplab_tf1_mnv2_dpc_257/` (a checkpoint of DeepLab's MobileNet-v2 + DPC and
DeepLab's logits for it) and `deeplab_tf1_variables/` (the variable lists of
DeepLab's graphs). Checkpoints for the variable lists are written here, in
`tmp_path`, with TensorFlow's own `SaveV2` op, as TF1's `Saver` writes them.
"""

import dataclasses
import functools
import json
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

import model_testing
from deeplab_dpc.models import deeplab
from deeplab_dpc.models import tf1_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT.parent / "shared" / "fixtures"
PARITY = FIXTURES / "deeplab_tf1_mnv2_dpc_257"
VARIABLES = FIXTURES / "deeplab_tf1_variables"

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"issue 23: the shared fixtures are not at {FIXTURES}"
)


def variable_list(name):
    """A fixture's (config, {DeepLab name: shape}) in creation order."""
    config = json.loads((VARIABLES / f"{name}.json").read_text())
    return config, {n: tuple(s) for n, s in config["variables"]}


def write_tf1_checkpoint(prefix, arrays):
    """Writes `{name: array}` as a TF1 name-based checkpoint at `prefix`."""
    names = sorted(arrays)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(arrays[n]) for n in names],
    )
    return str(prefix)


def random_arrays(shapes, seed=0):
    """Random float32 values of the shapes (positive 1-D ones, as BN needs)."""
    rng = np.random.default_rng(seed)
    return {
        n: (rng.uniform(0.5, 1.5, s) if len(s) == 1 else rng.normal(0, 0.1, s)).astype(
            np.float32
        )
        for n, s in shapes.items()
    }


def parity_options(num_classes=19, dpc=True):
    return deeplab.ModelOptions(
        model_variant="mobilenet_v2",
        num_classes=num_classes,
        crop_size=(257, 257),
        output_stride=16,
        dense_prediction_cell=model_testing.PUBLISHED if dpc else None,
        backbone_weights=None,
    )


def build(options):
    tf.keras.utils.set_random_seed(0)
    return deeplab.build_deeplab(options)


def mnv2_v3_options():
    """DeepLab's `mobilenetv2_coco_voc_trainaug` at a small crop."""
    return deeplab.ModelOptions(
        model_variant="mobilenet_v2",
        num_classes=21,
        crop_size=(65, 65),
        output_stride=16,
        backbone_weights=None,
    )


@pytest.fixture(name="mnv2_v3_model", scope="module")
def _mnv2_v3_model():
    """One model of `mnv2_v3_options()` for the module's tests: each test
    that imports into it assigns every variable it then checks, and a failed
    import assigns nothing."""
    return build(mnv2_v3_options())


@pytest.fixture(name="parity_import", scope="module")
def _parity_import():
    """The parity fixture's checkpoint imported into its model: (model,
    report)."""
    model = build(parity_options())
    report = tf1_checkpoint.import_tf1_checkpoint(model, str(PARITY), "mobilenet_v2")
    return model, report


# ------------------------------------------------------------------ parity


def test_mobilenet_v2_dpc_reproduces_deeplabs_logits(parity_import):
    model, report = parity_import
    assert len(report.mapped) == len(model.weights)
    assert report.excluded == ()
    reasons = dict(report.skipped)
    assert reasons["global_step"] == "global step"
    assert reasons["logits/semantic/weights/Momentum"] == "optimizer slot"
    # Every trained variable has its Momentum slot, and that is all it holds.
    assert len(report.skipped) == 1 + sum(
        1 for name, _, _ in report.mapped if "moving_" not in name
    )

    expected = np.load(PARITY / "expected.npz")
    logits_model = tf.keras.Model(
        model.input, [model.get_layer(deeplab.LOGITS_LAYER).output, model.output]
    )
    logits, upsampled = (t.numpy() for t in logits_model(expected["images"]))
    assert logits.shape == expected["logits"].shape == (2, 17, 17, 19)
    diff = np.abs(logits - expected["logits"]).max()
    assert diff < 1e-3, diff
    # Not vacuous: the logits are large and differ between the two images.
    assert np.abs(expected["logits"]).max() > 5
    rows, cols = expected["upsampled_rows"], expected["upsampled_cols"]
    sub = upsampled[:, rows][:, :, cols]
    assert np.abs(sub - expected["upsampled_logits_sub"]).max() < 1e-3
    agreement = (upsampled.argmax(-1) == expected["upsampled_argmax"]).mean()
    assert agreement >= 0.999, agreement


def test_report_table_counts(parity_import):
    _, report = parity_import
    table = report.format_table()
    assert re.search(rf"^mapped +{len(report.mapped)} variables", table, re.M)
    assert re.search(r"^excluded +0 model variables", table, re.M)
    assert re.search(r"^skipped: optimizer slot +188 ", table, re.M)
    assert re.search(r"^skipped: global step +1 ", table, re.M)


# ---------------------------------------------------------------- mapping


def test_mobilenet_v2_mapping_matches_deeplabs_variable_list(tmp_path, mnv2_v3_model):
    config, shapes = variable_list("mnv2_v3")
    assert config["num_classes"] == 21
    model = mnv2_v3_model
    names = tf1_checkpoint.tf1_variable_names(model, "mobilenet_v2")
    assert {n: tuple(v.shape) for n, (v, _) in names.items()} == shapes

    arrays = random_arrays(shapes)
    arrays["global_step"] = np.array(1234, np.int64)
    arrays["aspp0/weights/Momentum"] = np.zeros(shapes["aspp0/weights"], np.float32)
    arrays["aspp0/weights/ExponentialMovingAverage"] = arrays["aspp0/weights"]
    prefix = write_tf1_checkpoint(tmp_path / "model.ckpt", arrays)
    report = tf1_checkpoint.import_tf1_checkpoint(model, prefix, "mobilenet_v2")
    assert {name for name, _, _ in report.mapped} == set(shapes)
    assert dict(report.skipped) == {
        "global_step": "global step",
        "aspp0/weights/Momentum": "optimizer slot",
        "aspp0/weights/ExponentialMovingAverage": "moving average of a weight",
    }
    for name, (variable, _) in names.items():
        np.testing.assert_array_equal(variable.numpy(), arrays[name], err_msg=name)


def test_modules_of_the_mapping(mnv2_v3_model):
    model = mnv2_v3_model
    names = tf1_checkpoint.tf1_variable_names(model, "mobilenet_v2")
    modules = {name: module for name, (_, module) in names.items()}
    assert modules["MobilenetV2/Conv/weights"] == "backbone"
    assert modules["image_pooling/BatchNorm/gamma"] == "head"
    assert modules["concat_projection/weights"] == "head"
    assert modules["logits/semantic/biases"] == "logits"


def test_folder_of_a_model_zoo_tarball(tmp_path, mnv2_v3_model):
    _, shapes = variable_list("mnv2_v3")
    write_tf1_checkpoint(tmp_path / "model.ckpt", random_arrays(shapes))
    assert tf1_checkpoint.resolve_tf1_checkpoint(str(tmp_path)) == str(
        tmp_path / "model.ckpt"
    )
    model = mnv2_v3_model
    report = tf1_checkpoint.import_tf1_checkpoint(model, str(tmp_path), "mobilenet_v2")
    assert len(report.mapped) == len(shapes)


def test_no_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        tf1_checkpoint.resolve_tf1_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="found 0"):
        tf1_checkpoint.resolve_tf1_checkpoint(str(tmp_path))


# Each variable list of DeepLab's graphs: the options of the same model here
# (at a small crop: variables do not depend on it).
CONFIGURATIONS = {
    "mnv2_v3": dict(model_variant="mobilenet_v2", num_classes=21),
    "x65_aspp_dec4": dict(
        model_variant="xception_65",
        atrous_rates=(6, 12, 18),
        decoder_output_stride=4,
        num_classes=21,
    ),
    "x41_aspp_dec4": dict(
        model_variant="xception_41",
        atrous_rates=(6, 12, 18),
        decoder_output_stride=4,
        num_classes=21,
    ),
    "x71_dpc_dec4": dict(
        model_variant="xception_71",
        dense_prediction_cell=model_testing.PUBLISHED,
        decoder_output_stride=4,
        num_classes=19,
    ),
    "r50beta_aspp": dict(
        model_variant="resnet_v1_50_beta",
        multi_grid=(1, 2, 4),
        atrous_rates=(6, 12, 18),
        aspp_with_separable_conv=False,
        num_classes=21,
    ),
    "r101beta_aspp": dict(
        model_variant="resnet_v1_101_beta",
        multi_grid=(1, 2, 4),
        atrous_rates=(6, 12, 18),
        aspp_with_separable_conv=False,
        num_classes=21,
    ),
}
# Backbone-only (ImageNet) lists -> the configuration they are part of.
IMAGENET = {
    "resnet_v1_50_beta_imagenet": "r50beta_aspp",
    "resnet_v1_101_beta_imagenet": "r101beta_aspp",
    "xception_41_imagenet": "x41_aspp_dec4",
    "xception_65_imagenet": "x65_aspp_dec4",
    "xception_71_imagenet": "x71_dpc_dec4",
}


@functools.lru_cache(maxsize=None)
def configured_model(name):
    options = deeplab.ModelOptions(
        crop_size=(33, 33),
        output_stride=16,
        backbone_weights=None,
        **CONFIGURATIONS[name],
    )
    return build(options), options


def _check_flags(name, options):
    """The fixture's DeepLab flags are the ones the options stand for."""
    config, _ = variable_list(name)
    flags = set(config["deeplab_flags"])
    assert f"--model_variant={options.model_variant}" in flags
    assert {f"--atrous_rates={r}" for r in options.atrous_rates} <= flags
    assert ("--decoder_output_stride=4" in flags) == (
        options.decoder_output_stride == 4
    )
    assert any("dense_prediction_cell_json" in f for f in flags) == (
        options.dense_prediction_cell is not None
    )
    assert ("--noaspp_with_separable_conv" in flags) == (
        not options.aspp_with_separable_conv
    )
    assert {f"--multi_grid={r}" for r in options.multi_grid or ()} <= flags
    assert config["num_classes"] == options.num_classes


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_variables_map_one_to_one_with_deeplabs_graph(name):
    model, options = configured_model(name)
    _check_flags(name, options)
    _, shapes = variable_list(name)
    names = tf1_checkpoint.tf1_variable_names(model, options.model_variant)
    got = {n: tuple(v.shape) for n, (v, _) in names.items()}
    assert sorted(set(got) - set(shapes)) == []
    assert sorted(set(shapes) - set(got)) == []
    assert got == shapes
    assert len(names) == len(model.weights)


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_backbone_variables_are_deeplabs_imagenet_list(name):
    model, options = configured_model(IMAGENET[name])
    config, shapes = variable_list(name)
    assert config["deeplab_flags"] == [f"--model_variant={options.model_variant}"]
    names = tf1_checkpoint.tf1_variable_names(model, options.model_variant)
    backbone = {
        n: tuple(v.shape) for n, (v, module) in names.items() if module == "backbone"
    }
    assert backbone == shapes


def test_xception_41_checkpoint_imports(tmp_path):
    """End to end: DeepLab's whole x41 graph, then its ImageNet backbone."""
    model, options = configured_model("x41_aspp_dec4")
    _, shapes = variable_list("x41_aspp_dec4")
    arrays = random_arrays(shapes, seed=3)
    arrays["global_step"] = np.array(30000, np.int64)
    prefix = write_tf1_checkpoint(tmp_path / "full" / "model.ckpt", arrays)
    report = tf1_checkpoint.import_tf1_checkpoint(model, prefix, "xception_41")
    assert len(report.mapped) == len(shapes) == len(model.weights)
    names = tf1_checkpoint.tf1_variable_names(model, "xception_41")
    for name in (
        "xception_41/entry_flow/conv1_1/weights",
        "xception_41/exit_flow/block2/unit_1/xception_module/"
        "separable_conv3_depthwise/BatchNorm/moving_variance",
        "decoder/feature_projection0/weights",
        "aspp3_pointwise/BatchNorm/beta",
    ):
        np.testing.assert_array_equal(names[name][0].numpy(), arrays[name])

    _, backbone = variable_list("xception_41_imagenet")
    arrays = random_arrays(backbone, seed=4)
    prefix = write_tf1_checkpoint(tmp_path / "imagenet" / "model.ckpt", arrays)
    head = {n: v.numpy().copy() for n, (v, m) in names.items() if m != "backbone"}
    report = tf1_checkpoint.import_tf1_checkpoint(
        model,
        prefix,
        "xception_41",
        exclude_modules=("head", "decoder", "logits"),
    )
    assert {n for n, _, _ in report.mapped} == set(backbone)
    assert {n for n, _ in report.excluded} == set(head)
    for name, value in head.items():
        np.testing.assert_array_equal(names[name][0].numpy(), value)


# ------------------------------------------------------------------ errors


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def _unchanged(model, before):
    return all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_wrong_num_classes_says_so_and_how_to_fine_tune():
    model = build(parity_options(num_classes=21))
    before = _weights(model)
    with pytest.raises(tf1_checkpoint.CheckpointMismatchError) as info:
        tf1_checkpoint.import_tf1_checkpoint(model, str(PARITY), "mobilenet_v2")
    message = str(info.value)
    assert "wrong num_classes" in message
    assert "19 classes" in message and "num_classes=21" in message
    assert "--initialize_last_layer=false" in message
    assert "shape mismatch" not in message  # Said once, plainly.
    assert _unchanged(model, before)  # Nothing assigned.

    # The documented way out: leave the logits as initialised.
    logits = [w.numpy().copy() for w in model.get_layer(deeplab.LOGITS_LAYER).weights]
    report = tf1_checkpoint.import_tf1_checkpoint(
        model,
        str(PARITY),
        "mobilenet_v2",
        exclude_modules=tf1_checkpoint.excluded_modules(
            initialize_last_layer=False, last_layers_contain_logits_only=True
        ),
    )
    assert {name for name, _ in report.excluded} == {
        "logits/semantic/weights",
        "logits/semantic/biases",
    }
    assert dict(report.skipped)["logits/semantic/weights"] == "excluded module logits"
    for got, want in zip(model.get_layer(deeplab.LOGITS_LAYER).weights, logits):
        np.testing.assert_array_equal(got.numpy(), want)
    assert len(report.mapped) == len(model.weights) - 2


def test_excluded_modules_follow_deeplabs_flags():
    assert tf1_checkpoint.excluded_modules() == ()
    assert tf1_checkpoint.excluded_modules(False, True) == ("logits",)
    assert set(tf1_checkpoint.excluded_modules(False, False)) == {
        "logits",
        "head",
        "decoder",
    }


def test_dpc_checkpoint_into_an_aspp_model():
    model = build(parity_options(dpc=False))
    with pytest.raises(tf1_checkpoint.CheckpointMismatchError) as info:
        tf1_checkpoint.import_tf1_checkpoint(model, str(PARITY), "mobilenet_v2")
    message = str(info.value)
    assert "aspp0/weights" in message  # Missing.
    assert "meta_architecture/branch4_pointwise/weights [1, 1, 256, 256]" in message
    assert "--dense_prediction_cell_json" in message


def test_aspp_checkpoint_into_a_dpc_model(tmp_path):
    _, shapes = variable_list("mnv2_v3")
    prefix = write_tf1_checkpoint(tmp_path / "model.ckpt", random_arrays(shapes))
    model = build(
        dataclasses.replace(
            mnv2_v3_options(), dense_prediction_cell=model_testing.PUBLISHED
        )
    )
    with pytest.raises(tf1_checkpoint.CheckpointMismatchError, match="leave out --dense"):
        tf1_checkpoint.import_tf1_checkpoint(model, prefix, "mobilenet_v2")


def test_shape_mismatch_missing_and_unused_are_all_listed(tmp_path, mnv2_v3_model):
    _, shapes = variable_list("mnv2_v3")
    arrays = random_arrays(shapes)
    arrays["MobilenetV2/expanded_conv_3/expand/weights"] = np.zeros(
        (1, 1, 24, 100), np.float32
    )
    del arrays["MobilenetV2/expanded_conv_5/depthwise/BatchNorm/moving_variance"]
    arrays["MobilenetV2/expanded_conv_99/project/weights"] = np.zeros(
        (1, 1, 8, 8), np.float32
    )
    prefix = write_tf1_checkpoint(tmp_path / "model.ckpt", arrays)
    model = mnv2_v3_model
    before = _weights(model)
    with pytest.raises(tf1_checkpoint.CheckpointMismatchError) as info:
        tf1_checkpoint.import_tf1_checkpoint(model, prefix, "mobilenet_v2")
    message = str(info.value)
    assert (
        "MobilenetV2/expanded_conv_3/expand/weights: (1, 1, 24, 100) vs "
        "(1, 1, 24, 144)" in message
    )
    assert "1 model variable(s) with no counterpart" in message
    assert "MobilenetV2/expanded_conv_5/depthwise/BatchNorm/moving_variance" in message
    assert "1 checkpoint variable(s) the model does not use" in message
    assert "MobilenetV2/expanded_conv_99/project/weights [1, 1, 8, 8]" in message
    assert _unchanged(model, before)


def test_backbone_only_checkpoint(tmp_path, mnv2_v3_model):
    _, shapes = variable_list("mnv2_v3")
    backbone = {n: s for n, s in shapes.items() if n.startswith("MobilenetV2/")}
    arrays = random_arrays(backbone)
    # What an ImageNet checkpoint holds besides DeepLab's backbone.
    arrays["MobilenetV2/Logits/Conv2d_1c_1x1/weights"] = np.zeros(
        (1, 1, 1280, 1001), np.float32
    )
    arrays["MobilenetV2/Conv_1/weights"] = np.zeros((1, 1, 320, 1280), np.float32)
    prefix = write_tf1_checkpoint(tmp_path / "model.ckpt", arrays)
    model = mnv2_v3_model
    with pytest.raises(tf1_checkpoint.CheckpointMismatchError) as info:
        tf1_checkpoint.import_tf1_checkpoint(model, prefix, "mobilenet_v2")
    assert "holds only a backbone" in str(info.value)
    assert "image_pooling/weights" in str(info.value)
    report = tf1_checkpoint.import_tf1_checkpoint(
        model, prefix, "mobilenet_v2", exclude_modules=("head", "decoder", "logits")
    )
    assert {name for name, _, _ in report.mapped} == set(backbone)
    assert len(report.skipped) == 2


def test_checkpoint_of_another_backbone(tmp_path, mnv2_v3_model):
    _, shapes = variable_list("x41_aspp_dec4")
    # Small stand-ins of the right names: the names alone give the backbone.
    arrays = {n: np.zeros([1] * len(s), np.float32) for n, s in shapes.items()}
    prefix = write_tf1_checkpoint(tmp_path / "model.ckpt", arrays)
    model = mnv2_v3_model
    with pytest.raises(tf1_checkpoint.CheckpointMismatchError) as info:
        tf1_checkpoint.import_tf1_checkpoint(model, prefix, "mobilenet_v2")
    message = str(info.value)
    assert "backbone is xception_41" in message
    assert "--model_variant=xception_41" in message
    assert "pass --decoder_output_stride=4" in message


def test_unknown_variant_and_module(mnv2_v3_model):
    model = mnv2_v3_model
    with pytest.raises(ValueError, match="xception_65"):
        tf1_checkpoint.tf1_variable_names(model, "resnet50")
    with pytest.raises(ValueError, match="unknown modules"):
        tf1_checkpoint.import_tf1_checkpoint(
            model, str(PARITY), "mobilenet_v2", exclude_modules=("aspp",)
        )


def test_skip_reasons():
    assert tf1_checkpoint.skip_reason("global_step") == "global step"
    assert tf1_checkpoint.skip_reason("aspp0/weights/Adam_1") == "optimizer slot"
    assert tf1_checkpoint.skip_reason("beta1_power") == "optimizer state"
    assert tf1_checkpoint.skip_reason("xception_65/logits/biases") == "ImageNet classifier"
    assert tf1_checkpoint.skip_reason("logits/semantic/biases") is None
    assert tf1_checkpoint.skip_reason("aspp0/weights") is None

"""DeepLab's TF1 checkpoints in training: `tf1_import` (what the
import_checkpoint program writes) and `--tf_initial_checkpoint` given a TF1
checkpoint directly (`initial_checkpoint`), with DeepLab's
`--initialize_last_layer` / `--last_layers_contain_logits_only`."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import model_testing
from deeplab_dpc.data import synthetic
from deeplab_dpc.models import deeplab
from deeplab_dpc.models import tf1_checkpoint
from deeplab_dpc.training import initial_checkpoint
from deeplab_dpc.training import tf1_import
from deeplab_dpc.training import trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT.parent / "shared" / "fixtures"
PARITY = FIXTURES / "deeplab_tf1_mnv2_dpc_257"
VARIABLES = FIXTURES / "deeplab_tf1_variables"
CROP = (33, 33)
# A run trains on the synthetic labels: it needs at least their classes.
NEW_CLASSES = synthetic.NUM_CLASSES + 2

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"issue 23: the shared fixtures are not at {FIXTURES}"
)


def parity_options(num_classes=19, crop=CROP):
    return deeplab.ModelOptions(
        model_variant="mobilenet_v2",
        num_classes=num_classes,
        crop_size=crop,
        output_stride=16,
        dense_prediction_cell=model_testing.PUBLISHED,
    )


def write_tf1_checkpoint(prefix, arrays):
    names = sorted(arrays)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(arrays[n]) for n in names],
    )
    return str(prefix)


def tf1_values(model, model_variant, prefix):
    """{DeepLab name: (model value, checkpoint value or None, module)}."""
    reader = tf.train.load_checkpoint(prefix)
    return {
        name: (
            variable.numpy(),
            reader.get_tensor(name) if reader.has_tensor(name) else None,
            module,
        )
        for name, (variable, module) in tf1_checkpoint.tf1_variable_names(
            model, model_variant
        ).items()
    }


def test_tf1_and_own_checkpoints_are_told_apart(tmp_path):
    assert initial_checkpoint.is_tf1_checkpoint(str(PARITY / "model.ckpt"))
    written, report = tf1_import.import_to_checkpoint(
        parity_options(), str(PARITY), str(tmp_path / "out")
    )
    assert len(report.mapped) == 312
    assert not initial_checkpoint.is_tf1_checkpoint(written)
    assert tf1_import.tf1_global_step(str(PARITY / "model.ckpt")) == int(
        written.rsplit("-", 1)[1]
    )
    with pytest.raises(FileExistsError, match="--overwrite"):
        tf1_import.import_to_checkpoint(parity_options(), str(PARITY), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="not DeepLab's TF1"):
        tf1_import.import_to_checkpoint(parity_options(), written, str(tmp_path / "b"))


def test_model_zoo_folder_resolves_without_a_checkpoint_file():
    # A tarball's folder: model.ckpt.* and no `checkpoint` file.
    assert initial_checkpoint.resolve_initial_checkpoint(str(PARITY)) == str(
        PARITY / "model.ckpt"
    )


def test_restore_takes_a_tf1_checkpoint_whole():
    model = deeplab.build_deeplab(parity_options())
    result = initial_checkpoint.restore_initial_checkpoint(
        model, str(PARITY), model_variant="mobilenet_v2"
    )
    assert result["skipped"] == [] and result["missing"] == []
    assert len(result["tf1_report"].mapped) == len(model.weights)
    for name, (got, want, _) in tf1_values(
        model, "mobilenet_v2", str(PARITY / "model.ckpt")
    ).items():
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_restore_of_a_tf1_checkpoint_needs_the_variant_and_fitting_classes():
    model = deeplab.build_deeplab(parity_options(num_classes=NEW_CLASSES))
    with pytest.raises(ValueError, match="pass model_variant"):
        initial_checkpoint.restore_initial_checkpoint(model, str(PARITY))
    with pytest.raises(ValueError) as info:
        initial_checkpoint.restore_initial_checkpoint(
            model, str(PARITY), model_variant="mobilenet_v2"
        )
    message = str(info.value)
    assert "--tf_initial_checkpoint" in message and "wrong num_classes" in message
    assert "--initialize_last_layer=false" in message


@pytest.mark.parametrize("logits_only", [True, False])
def test_last_layers_of_a_tf1_checkpoint(logits_only):
    model = deeplab.build_deeplab(parity_options(num_classes=NEW_CLASSES))
    fresh = {v.path: v.numpy().copy() for v in model.weights}
    result = initial_checkpoint.restore_initial_checkpoint(
        model,
        str(PARITY),
        initialize_last_layer=False,
        last_layers_contain_logits_only=logits_only,
        model_variant="mobilenet_v2",
    )
    kept = {"logits"} if logits_only else {"logits", "head"}
    assert {deeplab.module_of(n) for n in result["skipped"]} == kept
    names = tf1_checkpoint.tf1_variable_names(model, "mobilenet_v2")
    reader = tf.train.load_checkpoint(str(PARITY / "model.ckpt"))
    for name, (variable, module) in names.items():
        if module in kept:
            np.testing.assert_array_equal(variable.numpy(), fresh[variable.path])
        else:
            np.testing.assert_array_equal(variable.numpy(), reader.get_tensor(name))


def test_backbone_only_tf1_checkpoint_restores_the_backbone(tmp_path):
    """An ImageNet checkpoint (backbone and classifier only) with DeepLab's
    default --initialize_last_layer: the backbone is restored, the head,
    decoder and logits stay as initialised."""
    config = json.loads((VARIABLES / "mnv2_v3.json").read_text())
    rng = np.random.default_rng(1)
    arrays = {
        name: rng.uniform(0.5, 1.5, shape).astype(np.float32)
        for name, shape in config["variables"]
        if name.startswith("MobilenetV2/")
    }
    arrays["MobilenetV2/Logits/Conv2d_1c_1x1/weights"] = np.zeros(
        (1, 1, 1280, 1001), np.float32
    )
    arrays["global_step"] = np.array(1, np.int64)
    prefix = write_tf1_checkpoint(tmp_path / "model.ckpt", arrays)
    model = deeplab.build_deeplab(
        deeplab.ModelOptions(model_variant="mobilenet_v2", num_classes=NEW_CLASSES,
                             crop_size=CROP)
    )
    fresh = {v.path: v.numpy().copy() for v in model.weights}
    result = initial_checkpoint.restore_initial_checkpoint(
        model, str(tmp_path), model_variant="mobilenet_v2"
    )
    assert {deeplab.module_of(n) for n in result["skipped"]} == {"head", "logits"}
    for name, (got, want, module) in tf1_values(model, "mobilenet_v2", prefix).items():
        if module == "backbone":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            assert want is None
    for layer_name in (deeplab.ASPP_LAYER, deeplab.LOGITS_LAYER):
        for variable in model.get_layer(layer_name).weights:
            np.testing.assert_array_equal(variable.numpy(), fresh[variable.path])


def test_training_run_from_a_tf1_checkpoint(synthetic_data, tmp_path):
    """`trainer.run` with DeepLab's checkpoint as --tf_initial_checkpoint and
    new classes: one step at learning rate 0, batch norm frozen, leaves every
    weight but the fresh logits at DeepLab's values."""
    data = synthetic_data(num_train=2, num_val=1, height=33, width=33, num_shards=1)
    captured = {}

    def model_fn(options):
        captured["model"] = deeplab.build_deeplab(options)
        return captured["model"]

    options = trainer.TrainOptions(
        train_batch_size=1,
        training_number_of_steps=1,
        base_learning_rate=0.0,
        end_learning_rate=0.0,
        fine_tune_batch_norm=False,
        dataset_dir=data,
        ignore_label=synthetic.IGNORE_LABEL,
        min_scale_factor=1.0,
        max_scale_factor=1.0,
        scale_factor_step_size=0.0,
        seed=1,
        tf_initial_checkpoint=str(PARITY),
        initialize_last_layer=False,
        last_layers_contain_logits_only=True,
    )
    results = trainer.run(
        parity_options(num_classes=NEW_CLASSES), options, str(tmp_path / "log"),
        model_fn=model_fn,
    )
    assert results["step"] == 1 and np.isfinite(results["loss"])
    values = tf1_values(captured["model"], "mobilenet_v2", str(PARITY / "model.ckpt"))
    for name, (got, want, module) in values.items():
        if module == "logits":
            assert got.shape[-1] == NEW_CLASSES
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)

"""Fine-tuning: tf_initial_checkpoint, initialize_last_layer, last layers."""

from absl.testing import flagsaver
import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.data import synthetic
from deeplab_dpc.flags import train_flags
from deeplab_dpc.models import deeplab
from deeplab_dpc.training import trainer

CROP = (33, 33)
SOURCE_CLASSES = 7
NEW_CLASSES = 5
# A run trains on the synthetic labels (0..6): it needs >= 7 classes.
NEW_RUN_CLASSES = 9
BACKBONE_LAYER = "Conv1"  # MobileNetV2's first convolution.
HEAD_LAYER = deeplab.ASPP_LAYER
# The synthetic data set (`synthetic_data` arguments) of every run.
DATA = dict(num_train=4, num_val=1, height=33, width=33, num_shards=1)


def _model_options(num_classes):
    return deeplab.ModelOptions(
        num_classes=num_classes, crop_size=CROP, depth_multiplier=0.35
    )


def _train_options(data_dir, **overrides):
    values = dict(
        train_batch_size=2,
        training_number_of_steps=2,
        base_learning_rate=0.01,
        dataset_dir=data_dir,
        ignore_label=synthetic.IGNORE_LABEL,
        min_scale_factor=1.0,
        max_scale_factor=1.0,
        scale_factor_step_size=0.0,
        log_steps=1,
        seed=2,
    )
    values.update(overrides)
    return trainer.TrainOptions(**values)


def _frozen_options(data_dir, **overrides):
    """One step that changes no weight: learning rate 0, batch norm frozen."""
    values = dict(
        training_number_of_steps=1,
        base_learning_rate=0.0,
        end_learning_rate=0.0,
        fine_tune_batch_norm=False,
        seed=1,
    )
    values.update(overrides)
    return _train_options(data_dir, **values)


def _weights(model, layer_name=None):
    """{variable path: value} of the float variables of a model or layer."""
    owner = model if layer_name is None else model.get_layer(layer_name)
    return {
        v.path: v.numpy() for v in owner.variables if tf.as_dtype(v.dtype).is_floating
    }


def _equal(a, b):
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a
    )


def _differ(a, b):
    """True when every (randomly initialised) kernel of `a` differs in `b`."""
    kernels = [k for k in a if k.endswith("kernel")]
    return bool(kernels) and not any(
        k in b and np.array_equal(a[k], b[k]) for k in kernels
    )


@pytest.fixture(scope="module")
def source(synthetic_data, tmp_path_factory):
    """(data dir, log dir, reference weights) of a 2-step 7-class run.

    The reference weights come from the whole-checkpoint restore that a
    resumed run does, independent of `restore_initial_checkpoint`.
    """
    data = synthetic_data(**DATA)
    logdir = str(tmp_path_factory.mktemp("source"))
    options = _train_options(data)
    results = trainer.run(_model_options(SOURCE_CLASSES), options, logdir)
    assert results["step"] == 2
    # Built as `run` builds them, for the checkpoint's object graph.
    model = deeplab.build_deeplab(_model_options(SOURCE_CLASSES))
    optimizer = tf.keras.optimizers.SGD(
        learning_rate=trainer.DeepLabLearningRate(options), momentum=0.9
    )
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    tf.train.Checkpoint(model=model, optimizer=optimizer, step=step).restore(
        tf.train.latest_checkpoint(logdir)
    ).assert_existing_objects_matched()
    assert int(step.numpy()) == 2
    return data, logdir, _weights(model)


def _capturing_model_fn(captured):
    """A model_fn that keeps the model and its freshly built weights."""

    def model_fn(options):
        model = deeplab.build_deeplab(options)
        captured["model"] = model
        captured["initial"] = _weights(model)
        return model

    return model_fn


def _layer_weights(weights, layer_name):
    return {k: v for k, v in weights.items() if k.startswith(layer_name + "/")}


def test_new_run_starts_from_the_checkpoint_weights(source, tmp_path):
    data, source_dir, reference = source
    captured = {}
    logdir = str(tmp_path / "log")
    results = trainer.run(
        _model_options(SOURCE_CLASSES),
        _frozen_options(data, tf_initial_checkpoint=source_dir),
        logdir,
        model_fn=_capturing_model_fn(captured),
    )
    # Step 0 -> 1: the optimizer step and counter were not restored.
    assert results["step"] == 1 and len(results["losses"]) == 1
    trained = _weights(captured["model"])
    # Not trivially equal: the fresh weights differ from the checkpoint's.
    for layer in (BACKBONE_LAYER, HEAD_LAYER, deeplab.LOGITS_LAYER):
        assert _differ(
            _layer_weights(captured["initial"], layer),
            _layer_weights(reference, layer),
        ), layer
    # Every weight (backbone, head, logits, batch norm statistics) is the
    # checkpoint's (the step at learning rate 0 changed none).
    assert _equal(trained, reference)
    reader = tf.train.load_checkpoint(logdir)
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 1

    # Resuming restores the run's own checkpoint; the flag is ignored (even
    # a missing path).
    again = trainer.run(
        _model_options(SOURCE_CLASSES),
        _frozen_options(
            data, training_number_of_steps=2, tf_initial_checkpoint="/no/such"
        ),
        logdir,
    )
    assert again["step"] == 2 and len(again["losses"]) == 1


def test_new_classes_without_last_layer(source, tmp_path):
    data, source_dir, reference = source
    captured = {}
    results = trainer.run(
        _model_options(NEW_RUN_CLASSES),
        _frozen_options(
            data,
            tf_initial_checkpoint=tf.train.latest_checkpoint(source_dir),
            initialize_last_layer=False,
            last_layers_contain_logits_only=True,
        ),
        str(tmp_path / "log"),
        model_fn=_capturing_model_fn(captured),
    )
    assert results["step"] == 1 and np.isfinite(results["loss"])
    model = captured["model"]
    trained = _weights(model)
    logits = model.get_layer(deeplab.LOGITS_LAYER)
    assert tuple(logits.kernel.shape) == (1, 1, 256, NEW_RUN_CLASSES)
    # The logits are the fresh ones, everything else the checkpoint's.
    fresh_logits = _layer_weights(captured["initial"], deeplab.LOGITS_LAYER)
    assert _equal(_layer_weights(trained, deeplab.LOGITS_LAYER), fresh_logits)
    rest = {k: v for k, v in trained.items() if k not in fresh_logits}
    assert _equal(rest, {k: reference[k] for k in rest})
    assert _differ(
        _layer_weights(captured["initial"], BACKBONE_LAYER),
        _layer_weights(trained, BACKBONE_LAYER),
    )


def test_new_classes_with_last_layer_names_the_flag(source, tmp_path):
    data, source_dir, _ = source
    with pytest.raises(ValueError) as error:
        trainer.run(
            _model_options(NEW_CLASSES),
            _frozen_options(data, tf_initial_checkpoint=source_dir),
            str(tmp_path / "log"),
        )
    message = str(error.value)
    assert "(1, 1, 256, 7)" in message and "(1, 1, 256, 5)" in message
    assert "--initialize_last_layer=false" in message


def test_missing_checkpoint_names_the_flag_and_path(source, tmp_path):
    data, _, _ = source
    missing = str(tmp_path / "nothing" / "ckpt-3")
    with pytest.raises(FileNotFoundError, match="--tf_initial_checkpoint") as error:
        trainer.run(
            _model_options(SOURCE_CLASSES),
            _frozen_options(data, tf_initial_checkpoint=missing),
            str(tmp_path / "log"),
        )
    assert missing in str(error.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty)):
        trainer.resolve_initial_checkpoint(str(empty))


@pytest.mark.parametrize("logits_only", [True, False])
def test_last_layers_are_logits_or_logits_and_head(source, logits_only):
    _, source_dir, reference = source
    model = deeplab.build_deeplab(_model_options(NEW_CLASSES))
    initial = _weights(model)
    result = trainer.restore_initial_checkpoint(
        model,
        source_dir,
        initialize_last_layer=False,
        last_layers_contain_logits_only=logits_only,
    )
    restored = _weights(model)
    head = _layer_weights(restored, HEAD_LAYER)
    if logits_only:
        assert result["skipped"] == [deeplab.LOGITS_LAYER]
        assert HEAD_LAYER in result["restored"]
        assert _equal(head, {k: reference[k] for k in head})
    else:
        assert sorted(result["skipped"]) == sorted([HEAD_LAYER, deeplab.LOGITS_LAYER])
        assert _equal(head, _layer_weights(initial, HEAD_LAYER))
        assert _differ(head, _layer_weights(reference, HEAD_LAYER))
    backbone = _layer_weights(restored, BACKBONE_LAYER)
    assert _equal(backbone, {k: reference[k] for k in backbone})
    assert _differ(backbone, _layer_weights(initial, BACKBONE_LAYER))
    kernel = model.get_layer(deeplab.LOGITS_LAYER).kernel
    assert tuple(kernel.shape) == (1, 1, 256, NEW_CLASSES)
    assert _equal(
        _layer_weights(restored, deeplab.LOGITS_LAYER),
        _layer_weights(initial, deeplab.LOGITS_LAYER),
    )


def test_program_flags_reach_the_options(parsed_flags, synthetic_data):
    with flagsaver.flagsaver(
        dataset="synthetic",
        dataset_dir=synthetic_data(**DATA),
        train_crop_size="33,33",
        tf_initial_checkpoint="/some/ckpt",
        initialize_last_layer=False,
        last_layers_contain_logits_only=True,
    ):
        _, options = train_flags.options_from_flags(1)
    assert options.tf_initial_checkpoint == "/some/ckpt"
    assert not options.initialize_last_layer
    assert options.last_layers_contain_logits_only
    assert trainer.TrainOptions().tf_initial_checkpoint == ""
    assert trainer.TrainOptions().initialize_last_layer
    assert not trainer.TrainOptions().last_layers_contain_logits_only

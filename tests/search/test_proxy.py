"""Tests of deeplab_dpc.search.proxy on cached features of the built-in data set."""

import dataclasses
import os

from cache_testing import CROP
from cache_testing import OPTIONS
from cache_testing import SEED
from cache_testing import shared_search
import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.data import synthetic
from deeplab_dpc.evaluation import evaluator
from deeplab_dpc.models import accounting
from deeplab_dpc.models import deeplab
from deeplab_dpc.search import cache
from deeplab_dpc.search import proxy
from deeplab_dpc.training import losses

TARGET = (129, 129)
CELL = cell_spec.cell_from_json(
    [
        {"op": "conv", "kernel": 3, "rate": [1, 6], "input": -1},
        {"op": "pyramid_pooling", "grid_size": [2, 2], "input": 0},
        {"op": "conv", "kernel": 1, "rate": [1, 1], "input": -1},
    ]
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """(search_dir, dataset_dir, CacheInfo) of `cache_testing.shared_search`."""
    search, data, _, info = shared_search(tmp_path_factory)
    return search, data, info


@pytest.fixture(scope="module")
def trial(shared, tmp_path_factory):
    """A trained trial, its report calls and its DeepLab checkpoint."""
    search, _, _ = shared
    calls = []
    result = proxy.run_trial(
        CELL,
        search,
        proxy_steps=60,
        proxy_batch_size=8,
        base_learning_rate=0.1,
        eval_every=20,
        report=lambda step, miou: calls.append((step, miou)),
        seed=0,
        target_crop_size=TARGET,
        checkpoint_dir=str(tmp_path_factory.mktemp("trial") / "deeplab"),
    )
    return result, calls


def test_trial_trains_evaluates_and_reports(trial):
    result, calls = trial
    assert result.steps == 60
    assert result.losses[-1][0] == 60
    assert result.losses[-1][1] < 0.6 * result.losses[0][1]
    assert 0.0 <= result.miou <= 1.0
    assert len(result.per_class_iou) == synthetic.NUM_CLASSES
    assert [step for step, _ in result.intermediate] == [20, 40, 60]
    assert calls == list(result.intermediate[:-1])
    assert result.intermediate[-1][1] == result.miou
    assert all(0.0 <= miou <= 1.0 for _, miou in calls)
    assert result.cell == CELL
    assert result.target_crop_size == TARGET
    assert result.to_dict()["cell_json"] == cell_spec.cell_to_json_string(CELL)


def test_train_step_traces_once_and_trains(shared):
    _, _, info = shared
    model = proxy.build_proxy_model(proxy.model_options(info, CELL), info.feature_shape)
    optimizer = tf.keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
    step = proxy.make_train_step(model, optimizer, info.ignore_label)
    assert optimizer.built  # Its slots exist before the step's first trace.
    batches = iter(cache.load_split(info, "train", batch_size=4, repeat=True))
    before = [v.numpy() for v in model.trainable_variables]
    losses = [float(step(batches)) for _ in range(3)]
    assert step.experimental_get_tracing_count() == 1
    assert all(np.isfinite(losses))
    assert int(optimizer.iterations) == 3
    after = [v.numpy() for v in model.trainable_variables]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))


def test_scale_labels_is_deeplabs_nearest_with_aligned_corners():
    labels = tf.reshape(tf.range(2 * 65 * 65), [2, 65, 65])
    # Output stride 16: every 16th pixel, the corners included.
    np.testing.assert_array_equal(
        losses.scale_labels(labels, (5, 5)), labels[:, ::16, ::16]
    )
    np.testing.assert_array_equal(
        losses.scale_labels(labels[..., tf.newaxis], tf.constant([5, 5])),
        labels[:, ::16, ::16],
    )
    # Other ratios: the nearest source pixel of i * (in - 1) / (out - 1).
    small = tf.reshape(tf.range(10 * 7), [1, 10, 7])
    rows = np.round(np.arange(4) * 9 / 3).astype(int)
    cols = np.round(np.arange(3) * 6 / 2).astype(int)
    np.testing.assert_array_equal(
        losses.scale_labels(small, (4, 3))[0], small.numpy()[0][rows][:, cols]
    )


@pytest.mark.parametrize("upsample_logits", [True, False])
def test_train_step_takes_the_loss_where_deeplab_says(
    shared, monkeypatch, upsample_logits
):
    """upsample_logits=True: on logits upsampled to the labels; False: on the
    logits at the features' size against labels scaled down to it."""
    _, _, info = shared
    features, labels = next(iter(cache.load_split(info, "train", batch_size=4)))
    size = tuple(labels.shape[1:3]) if upsample_logits else info.feature_shape[:2]
    expected_labels = labels if upsample_logits else losses.scale_labels(labels, size)
    shapes = []

    def regularized_loss(model, logits, labels, *, ignore_label):
        shapes.append((tuple(logits.shape), tuple(labels.shape)))
        # In the step's graph: the labels the loss meets, value for value.
        with tf.control_dependencies(
            [tf.debugging.assert_equal(labels, expected_labels)]
        ):
            return losses.regularized_loss(
                model, logits, labels, ignore_label=ignore_label
            )

    monkeypatch.setattr(proxy.trainer, "regularized_loss", regularized_loss)
    model = proxy.build_proxy_model(proxy.model_options(info, CELL), info.feature_shape)
    step = proxy.make_train_step(
        model,
        tf.keras.optimizers.SGD(learning_rate=0.05),
        info.ignore_label,
        upsample_logits=upsample_logits,
    )
    assert np.isfinite(float(step(iter([(features, labels)]))))
    assert shapes == [((4, *size, info.num_classes), (4, *size))]  # Traced once.


def test_trial_without_upsampled_logits_learns(shared):
    search, _, _ = shared
    result = proxy.run_trial(
        CELL,
        search,
        proxy_steps=30,
        proxy_batch_size=8,
        base_learning_rate=0.1,
        seed=0,
        target_crop_size=TARGET,
        upsample_logits=False,
    )
    assert result.losses[-1][1] < 0.7 * result.losses[0][1]
    assert 0.0 < result.miou <= 1.0


def test_exception_from_report_stops_the_trial(shared):
    search, _, _ = shared

    class Pruned(Exception):
        pass

    calls = []

    def report(step, miou):
        calls.append(step)
        raise Pruned(f"step {step}")

    with pytest.raises(Pruned, match="step 2"):
        proxy.run_trial(
            CELL, search, proxy_steps=6, proxy_batch_size=2, eval_every=2, report=report
        )
    assert calls == [2]


def test_head_cost_is_the_accounting_head_row_at_the_target_crop(trial, shared):
    result, _ = trial
    _, _, info = shared
    options = proxy.model_options(info, CELL)
    full = deeplab.build_deeplab(dataclasses.replace(options, crop_size=TARGET))
    head = accounting.count(full)["head"]
    assert (result.head_params, result.head_madds) == (head["params"], head["madds"])
    # The pooling geometry and feature size follow the crop: another crop,
    # other MAdds.
    _, madds_at_cache_crop = proxy.head_cost(options, info.feature_shape[-1], CROP)
    assert madds_at_cache_crop < result.head_madds


def test_eval_program_on_images_gives_the_proxy_miou(trial, shared):
    result, _ = trial
    search, data, info = shared
    assert os.path.basename(result.checkpoint) == "ckpt-0"
    directory = os.path.dirname(result.checkpoint)
    assert tf.train.latest_checkpoint(directory) == result.checkpoint
    assert cell_spec.load_cell(os.path.join(directory, proxy.CELL_JSON)) == CELL
    # The eval program's loader refuses checkpoints with missing or extra
    # weights, so this also checks that the checkpoint is complete.
    full = evaluator.evaluate_checkpoint(
        proxy.model_options(search, CELL),
        directory,
        dataset_dir=data,
        split="val",
        batch_size=4,
        ignore_label=info.ignore_label,
    )
    # Not a constant prediction: the model predicts several classes.
    assert np.count_nonzero(np.sum(full["confusion_matrix"], axis=0)) >= 2
    assert full["num_pixels"] == 4 * CROP[0] * CROP[1]
    assert abs(full["miou"] - result.miou) <= 0.02
    np.testing.assert_allclose(
        [v or 0.0 for v in full["per_class_iou"]],
        [v or 0.0 for v in result.per_class_iou],
        atol=0.05,
    )


def test_aspp_baseline_and_bad_arguments(shared, tmp_path):
    search, _, info = shared
    result = proxy.run_trial(
        None, search, proxy_steps=2, proxy_batch_size=2, target_crop_size=CROP
    )
    assert result.cell_json is None and result.cell is None
    options = proxy.model_options(info, None)
    assert options.head == deeplab.HEAD_ASPP
    assert (result.head_params, result.head_madds) == proxy.head_cost(
        options, info.feature_shape[-1], CROP
    )
    with pytest.raises(ValueError, match="num_classes=5 but the feature cache has"):
        proxy.run_trial(CELL, search, proxy_steps=2, proxy_batch_size=2, num_classes=5)
    with pytest.raises(ValueError, match="proxy_steps must be a positive int"):
        proxy.run_trial(CELL, search, proxy_steps=0, proxy_batch_size=2)
    with pytest.raises(FileNotFoundError, match="no complete feature cache"):
        proxy.run_trial(CELL, str(tmp_path), proxy_steps=2, proxy_batch_size=2)


def test_trial_leaves_no_custom_gradient_behind(shared):
    from tensorflow.python.framework import (
        ops,
    )  # pylint: disable=g-direct-tensorflow-import

    search, _, _ = shared
    kwargs = dict(proxy_steps=2, proxy_batch_size=4, seed=0)
    before = set(ops._gradient_registry._registry)
    proxy.run_trial.__wrapped__(CELL, search, **kwargs)  # Undecorated: it leaks.
    assert len(set(ops._gradient_registry._registry) - before) > 0
    before = set(ops._gradient_registry._registry)
    proxy.run_trial(CELL, search, **kwargs)
    assert set(ops._gradient_registry._registry) == before

"""Tests of deeplab_dpc.search.one_shot on the shared tiny feature cache."""

import json
import os
import random

from cache_testing import shared_search
import pytest
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.evaluation import metrics
from deeplab_dpc.search import cache
from deeplab_dpc.search import one_shot
from deeplab_dpc.search import space
from deeplab_dpc.search import supernet

SETTINGS = one_shot.OneShotSettings(
    num_branches=2,
    ops=("conv1x1", "pool@2x2"),
    steps=4,
    batch_size=4,
    base_learning_rate=0.05,
    num_cells=5,
    calibration_batches=1,
    eval_batch_size=4,
)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="sampling is 'best'"):
        one_shot.OneShotSettings(sampling="best")
    with pytest.raises(ValueError, match="steps is 0"):
        one_shot.OneShotSettings(steps=0)
    with pytest.raises(ValueError, match="not one of the 81 op tokens"):
        one_shot.OneShotSettings(ops=("conv3x3",))


def test_fair_sampling_takes_every_op_once_a_cycle():
    ops = supernet.normalize_ops(("conv1x1", "sep3x3@1x1", "pool@1x1"))
    sample = one_shot.PathSampler(ops, 3, "fair", random.Random(0))
    for _ in range(4):
        cycle = [sample() for _ in ops]
        for i in range(3):
            tokens = [cell_spec.op_token(cell[i]) for cell in cycle]
            assert sorted(tokens) == sorted(cell_spec.op_token(op) for op in ops)
            assert all(-1 <= cell[i].input < i for cell in cycle)


def test_sample_cells_are_distinct_and_stop_in_a_small_space():
    ops = supernet.normalize_ops(("conv1x1", "pool@2x2"))
    cells = one_shot.sample_cells(100, random.Random(0), ops, 2)
    keys = [space.canonical_key(c) for c in cells]
    assert len(keys) == len(set(keys))
    # Branch 0: 2 ops; branch 1: 2 ops x 2 inputs; two cells reading F twice
    # are the same graph up to branch order.
    assert len(cells) == 7


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    _, _, _, info = shared_search(tmp_path_factory)
    search_dir = str(tmp_path_factory.mktemp("one_shot"))
    lines = []
    cells = one_shot.load_or_build_ranking(search_dir, info, SETTINGS, log=lines.append)
    return search_dir, info, cells, lines


def test_ranking_is_written_best_first(ranked):
    search_dir, _, cells, lines = ranked
    folder = os.path.join(search_dir, one_shot.ONE_SHOT_DIR)
    with open(os.path.join(folder, one_shot.RANKING_FILE)) as f:
        record = json.load(f)
    scores = [r["score"] for r in record["ranking"]]
    assert len(cells) == len(scores) == 5
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert [cell_spec.cell_to_json_string(c) for c in cells] == [
        r["cell_json"] for r in record["ranking"]
    ]
    assert record["cells_per_hour"] > 0 and record["losses"][-1][0] == SETTINGS.steps
    assert os.path.exists(os.path.join(folder, one_shot.WEIGHTS_FILE))
    assert any("supernet step 4/4" in line for line in lines)


def test_ranking_and_supernet_are_read_back(ranked, monkeypatch):
    search_dir, info, cells, _ = ranked

    def no_training(*args, **kwargs):
        raise AssertionError("the supernet was trained again")

    monkeypatch.setattr(one_shot, "train_supernet", no_training)
    assert one_shot.load_or_build_ranking(search_dir, info, SETTINGS) == cells
    # Other scoring settings rescore with the stored supernet.
    fewer = one_shot.OneShotSettings(**{**SETTINGS.to_dict(), "num_cells": 3})
    assert len(one_shot.load_or_build_ranking(search_dir, info, fewer)) == 3


def test_score_is_the_inherited_cells_miou(ranked):
    search_dir, info, cells, _ = ranked
    net = one_shot.build_supernet(info, SETTINGS)
    net.load(os.path.join(search_dir, one_shot.ONE_SHOT_DIR, one_shot.WEIGHTS_FILE))
    scorer = one_shot.Scorer(net, info, calibration_batches=1, batch_size=4)
    score = scorer.score(cells[0])
    model = net.inherit(cells[0])
    metric = metrics.StreamingMeanIoU(
        num_classes=info.num_classes, ignore_label=info.ignore_label
    )
    for features, labels in cache.load_split(info, "val", batch_size=4):
        metric.update(labels, tf.argmax(model(features, training=False), -1))
    assert score == pytest.approx(metric.result()["miou"], abs=1e-9)
    # Scoring is deterministic (no dropout in the recalibration).
    assert [scorer.score(c) for c in cells] == [scorer.score(c) for c in cells]

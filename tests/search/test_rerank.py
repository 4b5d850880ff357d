"""Re-ranking proxy cells by end-to-end training, and best_cell.json."""

import json
import os

from cache_testing import shared_search
import numpy as np
import program_testing
import pytest
from scipy import stats

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.search import rank_correlation
from deeplab_dpc.search import rerank

CELLS = (
    cell_spec.cell_from_json(
        [{"op": "conv", "kernel": 1, "rate": [1, 1], "input": -1}]
    ),
    cell_spec.cell_from_json(
        [
            {"op": "conv", "kernel": 3, "rate": [1, 6], "input": -1},
            {"op": "pyramid_pooling", "grid_size": [2, 2], "input": 0},
        ]
    ),
)
OPTIONS = rerank.RerankOptions(rerank_steps=2, train_batch_size=2, seed=1)


def _rerank(candidates, info, out, data):
    """Re-ranks on the train and val splits of the shared search's data."""
    return rerank.rerank(
        candidates,
        info,
        out,
        dataset_dir=data,
        train_split="train",
        val_split="val",
        options=OPTIONS,
    )


@pytest.fixture(scope="module")
def reranked(tmp_path_factory):
    search, data, _, info = shared_search(tmp_path_factory)
    out = str(tmp_path_factory.mktemp("rerank"))
    candidates = [
        rerank.Candidate(cell=cell, proxy_miou=score, trial=i)
        for i, (cell, score) in enumerate(zip(CELLS, (0.2, 0.3)))
    ]
    summary = _rerank(candidates, info, out, data)
    return out, data, info, candidates, summary


def test_rerank_ranks_by_full_miou_and_writes_the_winner(reranked):
    out, _, _, candidates, summary = reranked
    rows = summary["candidates"]
    assert [r["full_rank"] for r in rows] == [1, 2]
    assert rows[0]["full_miou"] >= rows[1]["full_miou"]
    assert {r["trial"]: r["proxy_rank"] for r in rows} == {0: 2, 1: 1}
    for row in rows:
        assert 0.0 <= row["full_miou"] <= 1.0
        with open(
            os.path.join(os.path.dirname(row["checkpoint"]), "eval_results.json")
        ) as f:
            assert json.load(f)["miou"] == row["full_miou"]
    full = [r["full_miou"] for r in rows]
    if len(set(full)) == 1:  # Tied full mIOUs: the rank correlation is undefined.
        assert summary["spearman"] is None
    else:
        expected = stats.spearmanr([r["proxy_miou"] for r in rows], full).statistic
        assert summary["spearman"] == pytest.approx(expected)
    assert rank_correlation.spearman([0.1, 0.2, 0.3], [0.3, 0.5, 0.4]) == pytest.approx(
        0.5
    )
    best = cell_spec.load_cell(os.path.join(out, rerank.BEST_CELL_FILE))
    assert best == cell_spec.cell_from_json(rows[0]["cell"])
    with open(os.path.join(out, rerank.RESULTS_FILE)) as f:
        assert json.load(f)["candidates"] == rows


def test_rerun_reuses_finished_candidates(reranked):
    out, data, info, candidates, summary = reranked
    stamps = {
        r["checkpoint"]: os.path.getmtime(r["checkpoint"] + ".index")
        for r in summary["candidates"]
    }
    again = _rerank(candidates, info, out, data)
    assert again["candidates"] == summary["candidates"]
    assert {p: os.path.getmtime(p + ".index") for p in stamps} == stamps


def test_best_cell_trains_with_the_training_program(reranked, tmp_path, program_env):
    out, data, _, _, _ = reranked
    proc = program_testing.run_module(
        "deeplab_dpc.train",
        f"--train_logdir={tmp_path / 'train'}",
        "--dataset=synthetic",
        f"--dataset_dir={data}",
        "--train_crop_size=65,65",
        "--depth_multiplier=0.35",
        "--train_batch_size=2",
        "--training_number_of_steps=1",
        f"--dense_prediction_cell_json={os.path.join(out, rerank.BEST_CELL_FILE)}",
        env=program_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 1/1 loss" in proc.stderr


def test_no_candidates_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no candidate"):
        rerank.rerank(
            [], None, str(tmp_path), dataset_dir="", train_split="", val_split=""
        )


# Scores of 12 cells, fixed; no ties, so rho has the closed form below.
_PROXY = [0.61, 0.55, 0.70, 0.42, 0.66, 0.58, 0.49, 0.73, 0.52, 0.64, 0.45, 0.68]
_FULL = [0.64, 0.57, 0.69, 0.47, 0.60, 0.62, 0.44, 0.75, 0.50, 0.66, 0.49, 0.71]


def test_spearman_interval_on_fixed_scores_matches_scipy():
    rho, low, high = rank_correlation.spearman_interval(
        _PROXY, _FULL, resamples=999, seed=3
    )
    n = len(_PROXY)
    d = np.argsort(np.argsort(_PROXY)) - np.argsort(np.argsort(_FULL))
    assert rho == pytest.approx(1 - 6 * np.sum(d**2) / (n * (n**2 - 1)))
    assert rho == pytest.approx(stats.spearmanr(_PROXY, _FULL).statistic)
    expected = stats.bootstrap(
        (np.array(_PROXY), np.array(_FULL)),
        lambda a, b: stats.spearmanr(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=999,
        confidence_level=0.9,
        method="percentile",
        random_state=np.random.default_rng(3),
    ).confidence_interval
    assert (low, high) == pytest.approx((expected.low, expected.high))
    assert low < rho < high <= 1.0
    # Reproducible, and wider at a higher confidence.
    assert rank_correlation.spearman_interval(_PROXY, _FULL, resamples=999, seed=3) == (
        rho,
        low,
        high,
    )
    _, low95, high95 = rank_correlation.spearman_interval(
        _PROXY, _FULL, resamples=999, seed=3, confidence=0.95
    )
    assert low95 <= low and high95 >= high


def test_few_cells_give_a_wide_interval():
    _, low, high = rank_correlation.spearman_interval(_PROXY[:6], _FULL[:6], seed=0)
    _, low12, high12 = rank_correlation.spearman_interval(_PROXY, _FULL, seed=0)
    assert high - low > high12 - low12


def test_spearman_interval_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 3"):
        rank_correlation.spearman_interval([1, 2], [1, 2])
    with pytest.raises(ValueError, match="equal-length"):
        rank_correlation.spearman_interval([1, 2, 3], [1, 2])
    assert rank_correlation.spearman_interval([1, 1, 1], [1, 2, 3]) == (
        None,
        None,
        None,
    )

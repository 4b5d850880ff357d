"""The search report: Pareto front, op counts, report.md, plots, trials.json."""

import json
import os
import random

from PIL import Image
import pytest

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.search import report
from deeplab_dpc.search import space


def _records(n=12, seed=0):
    rng = random.Random(seed)
    records = []
    for i in range(n):
        cell = space.sample_cell(rng, 5)
        state = "PRUNED" if i % 5 == 4 else "COMPLETE"
        records.append(
            {
                "number": i,
                "state": state,
                "miou": None if state == "PRUNED" else rng.random(),
                "madds": rng.randint(10**8, 10**10),
                "params": rng.randint(10**5, 10**6),
                "seconds": 2.0,
                "cell": cell_spec.cell_to_json(cell),
                "duplicate_of": 0 if i == 3 else None,
            }
        )
    return records


def test_pareto_front_is_the_non_dominated_set():
    records = _records(30)
    front = report.pareto_front(records)
    done = report.completed(records)
    assert front and done[0] in front  # the best mIOU is never dominated
    for r in done:
        beaten = any(o["miou"] > r["miou"] and o["madds"] < r["madds"] for o in done)
        assert (r in front) == (not beaten)
    assert [r["madds"] for r in front] == sorted(r["madds"] for r in front)


def test_baselines_join_the_pareto_front_and_dominate_trials():
    records = _records(30)
    done = report.completed(records)
    best = max(r["miou"] for r in done)
    cheapest = min(r["madds"] for r in done)
    # Better and cheaper than every trial: the front is the baseline alone.
    aspp = {"name": "ASPP", "miou": best + 0.1, "madds": cheapest - 1}
    assert report.pareto_front(records, [aspp]) == [aspp]


def test_op_counts_count_branches_of_the_top_trials():
    records = _records(10)
    ops, rates, grids = report.op_counts(records, top=3)
    assert sum(ops.values()) == 15
    assert sum(rates.values()) == ops[cell_spec.OP_SEP3X3]
    assert sum(grids.values()) == ops[cell_spec.OP_POOL]


def test_write_report(tmp_path):
    records = _records()
    baselines = [
        {
            "name": "ASPP",
            "miou": 0.3,
            "madds": 5 * 10**9,
            "params": 7 * 10**5,
            "cell": None,
        },
    ]
    rerank = {
        "rerank_steps": 10,
        "spearman": 0.5,
        "candidates": [
            {
                "full_rank": 1,
                "proxy_rank": 2,
                "trial": 1,
                "proxy_miou": 0.6,
                "full_miou": 0.7,
                "cell": records[1]["cell"],
            },
            {
                "full_rank": 2,
                "proxy_rank": 1,
                "trial": 0,
                "proxy_miou": 0.8,
                "full_miou": 0.65,
                "cell": records[0]["cell"],
            },
        ],
    }
    path = report.write_report(
        str(tmp_path),
        records,
        baselines=baselines,
        rerank=rerank,
        top_k=5,
        settings={"strategy": "random_local"},
    )
    text = open(path).read()
    best = report.completed(records)[0]
    assert f"| 1 | {best['number']} | {best['miou']:.4f} |" in text
    assert "Spearman rank correlation of proxy and full mIOU: 0.500" in text
    assert "| ASPP | 0.3000 |" in text and "random_local" in text
    assert "10 complete, 2 pruned" in text and "1 repeated cells" in text
    for name in ("best_so_far", "miou_vs_madds", "op_frequencies", "best_cell"):
        png = tmp_path / "plots" / f"{name}.png"
        assert f"plots/{name}.png" in text
        width, height = Image.open(png).size
        assert width > 100 and height > 100
    assert json.load(open(tmp_path / "trials.json")) == records
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_no_completed_trial_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no completed trial"):
        report.write_report(str(tmp_path), [dict(_records(1)[0], state="FAIL")])


def _baselines(aspp_full):
    rows = []
    for name, proxy, full, madds in (
        ("published DPC", 0.55, 0.62, 8 * 10**8),
        (report.ASPP_BASELINE, 0.5, aspp_full, 7 * 10**8),
        ("ASPP (no atrous rates)", 0.45, 0.5, 2 * 10**8),
        ("1x1 only", 0.3, 0.35, 10**8),
    ):
        rows.append(
            {
                "name": name,
                "miou": proxy,
                "full_miou": full,
                "madds": madds,
                "params": 10**5,
                "cell": None,
            }
        )
    return rows


@pytest.mark.parametrize("aspp_full,verdict", [(0.6, "beats"), (0.75, "did not beat")])
def test_the_report_compares_the_searched_cell_with_aspp_end_to_end(
    tmp_path, aspp_full, verdict
):
    records = _records()
    winner = records[1]
    rerank = {
        "rerank_steps": 10,
        "spearman": -1.0,
        "candidates": [
            {
                "full_rank": 1,
                "proxy_rank": 2,
                "trial": 1,
                "proxy_miou": 0.6,
                "full_miou": 0.7,
                "cell": winner["cell"],
            },
            {
                "full_rank": 2,
                "proxy_rank": 1,
                "trial": 0,
                "proxy_miou": 0.8,
                "full_miou": 0.65,
                "cell": records[0]["cell"],
            },
        ],
    }
    text = open(
        report.write_report(
            str(tmp_path), records, baselines=_baselines(aspp_full), rerank=rerank
        )
    ).read()
    assert "| head | proxy mIOU | end-to-end mIOU | head MAdds |" in text
    for name in (
        "published DPC",
        report.ASPP_BASELINE,
        "ASPP (no atrous rates)",
        "1x1 only",
    ):
        assert f"| {name} |" in text
    assert (
        f"| searched cell | {winner['miou']:.4f} | 0.7000 | {winner['madds']:,} |"
        in text
    )
    ratio = winner["madds"] / (7 * 10**8)
    assert (
        f"End to end the searched cell scores 0.7000 mIOU against {aspp_full:.4f} "
        f"for {report.ASPP_BASELINE} at {ratio:.2f}x its head MAdds" in text
    )
    assert verdict in text.split("Conclusion:")[1].split("\n")[0]
    # rho over the 4 baselines and the 2 re-ranked cells, with its interval.
    assert "over 6 heads, 90% interval [" in text


def test_without_end_to_end_runs_the_conclusion_says_proxy(tmp_path):
    records = _records()
    baselines = [
        {k: v for k, v in b.items() if k != "full_miou"} for b in _baselines(0.6)
    ]
    text = open(report.write_report(str(tmp_path), records, baselines=baselines)).read()
    assert "On the proxy the searched cell scores" in text
    assert "(no end-to-end runs yet)" in text

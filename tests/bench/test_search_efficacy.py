"""bench/search_efficacy.py: its cell choice, summary and report, on fixed inputs."""

import hashlib
import json
import os
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(
    0,
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench"),
)
import search_efficacy  # pylint: disable=wrong-import-position  # noqa: E402

from deeplab_dpc.cells import cell_spec  # noqa: E402
from deeplab_dpc.search import cache  # noqa: E402
from deeplab_dpc.search import space  # noqa: E402


def _cost(cell):
    return sum(
        {"conv1x1": 1, "sep3x3": 3, "pool": 2}[b.op] * (1 + (b.input >= 0))
        for b in cell
    )


def test_fidelity_heads_include_the_baselines_and_span_the_costs():
    args = search_efficacy._parse(["--random_cells=8", "--output_stride=8"])
    heads = search_efficacy.fidelity_cells(args, _cost)
    names = [name for name, _, _ in heads]
    assert len(heads) >= 12
    assert names[:4] == [
        "published DPC",
        search_efficacy.ASPP,
        "ASPP (no atrous rates)",
        "1x1 only",
    ]
    # DeepLab's rates, doubled at output stride 8.
    assert heads[1][2] == (12, 24, 36)
    costs = [_cost(cell) for _, cell, _ in heads[4:]]
    assert costs == sorted(costs) and costs[0] < costs[-1]
    keys = {space.canonical_key(cell) for _, cell, _ in heads[4:]}
    assert len(keys) == 8


# DeepLab's ASPP without atrous rates as a cell: a 1x1 conv and image pooling.
_ASPP_NO_RATES = cell_spec.CellSpec(
    [
        cell_spec.BranchSpec(input=-1, op=cell_spec.OP_CONV1X1),
        cell_spec.BranchSpec(input=-1, op=cell_spec.OP_POOL, grid=(1, 1)),
    ]
)


def _runs():
    return [
        {
            "strategy": "random",
            "seed": s,
            "curve": [0.3, 0.4 + s / 100],
            "best_proxy_miou": 0.4,
            "head_madds": 6e8,
            "cell": cell_spec.cell_to_json(cell_spec.published_cell()),
            "e2e_miou": 0.50 + s / 100,
            "infeasible": 0,
        }
        for s in range(3)
    ] + [
        {
            "strategy": search_efficacy.DEFAULT_LABEL,
            "seed": s,
            "curve": [0.35, 0.45, 0.5][: 2 + (s > 0)],
            "best_proxy_miou": 0.5,
            "head_madds": 7e8,
            "cell": cell_spec.cell_to_json(_ASPP_NO_RATES),
            "e2e_miou": 0.58 - s / 100,
            "infeasible": 1,
        }
        for s in range(3)
    ]


def test_summary_compares_the_seed_mean_with_aspp():
    table = search_efficacy.summarize(_runs(), {"e2e_miou": 0.55})
    assert table["random"]["e2e_mean"] == pytest.approx(0.51)
    assert table["random"]["beats_aspp_mean"] is False
    default = table[search_efficacy.DEFAULT_LABEL]
    assert default["e2e_mean"] == pytest.approx(0.57)
    assert (default["e2e_min"], default["e2e_max"]) == (
        pytest.approx(0.56),
        pytest.approx(0.58),
    )
    assert default["beats_aspp_mean"] is True


def test_figures_leave_out_what_was_not_measured():
    # The default strategies run no uniform random_local: no figure for it,
    # where there was a nan in results.md.
    table = search_efficacy.summarize(_runs(), {"e2e_miou": 0.55})
    assert "random_local" not in table
    fidelity = {"rho": 0.9, "rho_low": 0.6, "rho_high": None}
    shot = {"rho": 0.2, "scores": [0.1] * 12, "cells_per_cpu_hour": 1400.0}
    shot["train_seconds"] = 360.0
    args = types.SimpleNamespace(score_cells=100)
    figures = search_efficacy.result_figures(
        fidelity, {"e2e_miou": 0.55}, table, shot, args,
        {"proxy": 3600.0, "e2e": 7200.0}, 1800.0,
    )
    values = {f["name"]: f["value"] for f in figures}
    assert "random_local_uniform_e2e_miou" not in values
    assert "proxy_rho_high" not in values
    assert not any(np.isnan(v) for v in values.values())
    assert values["default_e2e_miou"] == pytest.approx(0.57)
    assert values["random_e2e_miou"] == pytest.approx(0.51)
    assert values["measured_hours"] == pytest.approx(3.1)
    assert values["invocation_hours"] == pytest.approx(0.5)


def test_report_and_plot(tmp_path):
    args = search_efficacy._parse(["--quick", "--rerank_top_k=3"])
    fidelity = {
        "heads": [
            {
                "name": search_efficacy.ASPP,
                "head_madds": 7e8,
                "proxy_miou": 0.5,
                "e2e_miou": 0.55,
            }
        ],
        "rho": 0.7,
        "rho_low": 0.3,
        "rho_high": 0.9,
    }
    runs = _runs()
    aspp = fidelity["heads"][0]
    table = search_efficacy.summarize(runs, aspp)
    shot = {
        "ops": list(search_efficacy.ONE_SHOT_OPS),
        "scores": [0.1, 0.2, 0.3],
        "build_seconds": 5.0,
        "train_seconds": 600.0,
        "train_cpu_seconds": 1080.0,
        "score_trace_seconds": 30.0,
        "cells_per_cpu_hour": 1234.4,
        "cells_per_wall_hour": 2000.0,
        "rho": None,
        "rho_low": None,
        "rho_high": None,
    }
    text = search_efficacy.markdown(
        fidelity, runs, table, aspp, args, {"proxy": 3600.0, "e2e": 7200.0}, shot
    )
    assert "rho 0.700, 90% bootstrap interval [0.300, 0.900]" in text
    assert "| random_local+kind | 0.5700 [0.5600, 0.5800] | yes |" in text
    assert "| random | 2 | 0.4000 | 0.4000 | 600 M | 0 / 5 / 0 (0) | 0.5200 | -0.0300 |" in text
    assert "the re-rank trains the top 3 distinct cells by proxy mIOU" in text
    # Each found cell's ops by kind (1x1 / sep / pool), global image pooling apart.
    assert (
        "| random_local+kind | 0 | 0.5000 | 0.5000 | 700 M | 1 / 0 / 1 (1) | 0.5800 |"
        in text
    )
    top_1 = search_efficacy._parse(["--quick", "--rerank_top_k=1"])
    assert "the found cell is the best proxy cell" in search_efficacy.markdown(
        fidelity, runs, table, aspp, top_1, {"proxy": 3600.0, "e2e": 7200.0}, shot
    )
    assert "proxy trials 1.00 h, end-to-end runs 2.00 h" in text
    # Seed means: random_local+kind 0.57 > ASPP 0.55 > random 0.51.
    assert (
        "random_local+kind) found cells scoring 0.5700 end to end in the mean over "
        "seeds, above ASPP 6/12/18 + image pooling (0.5500), and above uniform "
        "random sampling (0.5100)" in text
    )
    # 1 + 14 + 3 proxy trials (fidelity, searches, one-shot) in one hour.
    assert "17 ops" in text and "1234 cells per CPU-hour" in text
    assert "against 18 stand-alone proxy trials per hour" in text
    assert "rho undefined (every score alike)" in text
    assert "Resumed run" not in text
    imported = [
        {"file": "run.json", "code": "abc1234", "machine": "CPU X", "measurements": 7}
    ]
    resumed = search_efficacy.markdown(
        fidelity, runs, table, aspp, args, {"proxy": 3600.0, "e2e": 7200.0}, shot,
        imported=imported,
        invocations=[
            {"started": f"T{n}", "code": f"c{n}", "machine": "CPU X", "command": c}
            for n, c in enumerate(["bench --import_run=run.json", "bench"])
        ],
    )
    assert (
        "- T0, code c0, CPU X: `bench --import_run=run.json`\n"
        "- T1, code c1, CPU X: `bench`\n" in resumed
    )
    assert (
        "Resumed run: 7 measurements were imported (`--import_run`) from "
        "`run.json`, a run of code abc1234 on CPU X whose pretrained backbone"
        in resumed
    )
    path = tmp_path / "curves.png"
    search_efficacy.plot_curves(runs, str(path))
    assert path.stat().st_size > 1000


def test_store_keeps_results_across_instances_and_refuses_garbage(tmp_path):
    path = str(tmp_path / "results.json")
    store = search_efficacy.Store(path)
    assert store.get("e2e:x") is None
    store.put("e2e:x", {"miou": 0.5, "seconds": 3.0})
    assert search_efficacy.Store(path).get("e2e:x") == {"miou": 0.5, "seconds": 3.0}
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(SystemExit, match="results.json is not the JSON"):
        search_efficacy.Store(path)


def test_end_to_end_runs_leave_no_folders_behind(tmp_path):
    # A killed run's folder (run-*) goes at the next start; other files stay.
    (tmp_path / "e2e" / "run-killed").mkdir(parents=True)
    (tmp_path / "e2e" / "run-killed" / "ckpt-1.index").write_text("x")
    (tmp_path / "e2e" / "notes.txt").write_text("kept")
    args = search_efficacy._parse([])
    store = search_efficacy.Store(str(tmp_path / "results.json"))
    heads = search_efficacy.Heads(str(tmp_path), "data", None, args, store)
    assert sorted(os.listdir(tmp_path / "e2e")) == ["notes.txt"]
    folders = []

    class FakeRerank:
        RerankOptions = dict

        @staticmethod
        def Candidate(cell, miou, atrous_rates=()):
            return (cell, miou, atrous_rates)

        @staticmethod
        def train_and_evaluate(candidate, cache, workdir, **kwargs):
            del candidate, cache, kwargs
            folders.append(workdir)
            with open(os.path.join(workdir, "ckpt-80.index"), "w") as f:
                f.write("x")
            return {"miou": 0.4}

    heads._rerank = FakeRerank
    assert heads.end_to_end("ASPP()", None) == pytest.approx(0.4)
    # The finished run's folder is gone once its result is stored ...
    assert len(folders) == 1 and not os.path.exists(folders[0])
    assert sorted(os.listdir(tmp_path / "e2e")) == ["notes.txt"]
    # ... and the stored result is reused, with no second run.
    assert heads.end_to_end("ASPP()", None) == pytest.approx(0.4)
    assert len(folders) == 1


class _FakeHeads:
    """Proxy scores from a cell's cost; end to end, the cell trained second
    (the re-rank trains in proxy order) wins."""

    def __init__(self, store):
        self.store = store
        self.end_to_end_keys = []

    def proxy_trial(self, cell, seed=1, report=None):
        del seed, report
        return types.SimpleNamespace(
            miou=_cost(cell) / 100,
            head_madds=_cost(cell),
            head_params=1,
            wall_seconds=0.5,
        )

    def end_to_end(self, key, cell):
        del cell
        self.end_to_end_keys.append(key)
        return {1: 0.5, 2: 0.9}.get(len(self.end_to_end_keys), 0.1)

    def account(self, kind, key, seconds):
        pass

    def account_stored_e2e(self, key):
        pass


@pytest.mark.parametrize("top_k", [1, 3])
def test_search_rerank_trains_the_top_k_distinct_cells_end_to_end(tmp_path, top_k):
    args = search_efficacy._parse(
        ["--strategies=random", "--seeds=1", "--trials=6", f"--rerank_top_k={top_k}"]
    )
    heads = _FakeHeads(search_efficacy.Store(str(tmp_path / "results.json")))
    (run,) = search_efficacy.part_efficacy(
        heads, args, lambda cell: True, str(tmp_path / "studies")
    )
    assert len(run["reranked"]) == len(heads.end_to_end_keys) == top_k
    assert len(set(heads.end_to_end_keys)) == top_k  # Distinct cells.
    ranked = [r["proxy_miou"] for r in run["reranked"]]
    assert ranked == sorted(ranked, reverse=True)
    assert run["best_proxy_miou"] == ranked[0] == max(run["curve"])
    assert run["top_proxy_e2e_miou"] == 0.5
    if top_k == 1:
        assert (run["found_proxy_miou"], run["e2e_miou"]) == (ranked[0], 0.5)
    else:
        # The re-rank prefers the second proxy cell, the better end to end.
        assert (run["found_proxy_miou"], run["e2e_miou"]) == (ranked[1], 0.9)
        assert run["cell"] == run["reranked"][1]["cell"]
    # Stored: a rerun trains nothing and gives the same run.
    heads.end_to_end_keys.clear()
    (again,) = search_efficacy.part_efficacy(
        heads, args, lambda cell: True, str(tmp_path / "studies")
    )
    assert again == run and heads.end_to_end_keys == []


def test_strategy_labels_name_the_sampler_and_its_op_prior(capsys):
    assert search_efficacy.sampler_of("random") == (
        "random_local",
        {"explore_prob": 1.0, "op_prior": "uniform"},
    )
    # Without a prior a strategy draws uniformly (the stored labels).
    assert search_efficacy.sampler_of("random_local") == (
        "random_local",
        {"op_prior": "uniform"},
    )
    assert search_efficacy.sampler_of("regularized_evolution") == (
        "regularized_evolution",
        {"op_prior": "uniform"},
    )
    assert search_efficacy.sampler_of("random_local+kind") == (
        "random_local",
        {"op_prior": "kind"},
    )
    assert search_efficacy.sampler_of("random+kind") == (
        "random_local",
        {"explore_prob": 1.0, "op_prior": "kind"},
    )
    # Every strategy takes the prior; unlabelled, it draws uniformly.
    assert search_efficacy.sampler_of("vizier:GAUSSIAN_PROCESS_BANDIT") == (
        "vizier:GAUSSIAN_PROCESS_BANDIT",
        {"op_prior": "uniform"},
    )
    assert search_efficacy.sampler_of("tpe+kind") == ("tpe", {"op_prior": "kind"})
    assert search_efficacy.sampler_of("vizier:GAUSSIAN_PROCESS_BANDIT+kind") == (
        "vizier:GAUSSIAN_PROCESS_BANDIT",
        {"op_prior": "kind"},
    )
    # The benchmark's strategies: each as the search program runs it by
    # default, but uniform random sampling, the baseline.
    for label in search_efficacy.DEFAULT_STRATEGIES:
        expected = "uniform" if label == search_efficacy.RANDOM else "kind"
        assert search_efficacy.sampler_of(label)[1]["op_prior"] == expected, label
    with pytest.raises(SystemExit):
        search_efficacy._parse(["--strategies=random,random_local+kinds"])
    assert "'random_local+kinds': op prior 'kinds' is not one of" in capsys.readouterr().err


def test_top_trials_skips_a_cell_trained_twice():
    from deeplab_dpc.cells import cell_spec  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.search import engine  # pylint: disable=import-outside-toplevel

    one = cell_spec.CellSpec([cell_spec.BranchSpec(input=-1, op="conv1x1")])
    two = cell_spec.published_cell()

    def trial(number, cell, miou):
        attrs = {"miou": miou, engine.ATTR_CELL: cell_spec.cell_to_json(cell)}
        return types.SimpleNamespace(number=number, user_attrs=attrs)

    trials = [trial(0, one, 0.5), trial(1, two, 0.4), trial(2, one, 0.6)]
    top = search_efficacy.top_trials(trials, 2)
    assert [t.number for t in top] == [2, 1]
    assert [t.number for t in search_efficacy.top_trials(trials, 5)] == [2, 1]


def _one_entry(key, array):
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[array.tobytes()]))
    return tf.train.Example(
        features=tf.train.Features(feature={key: feature})
    ).SerializeToString()


def _write_shard(path, crops, label_first=False):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for features, label in crops:
            if label_first:  # The same example, its map entries in another order.
                writer.write(_one_entry("label", label) + _one_entry("features", features))
            else:
                writer.write(cache.serialize(features, label))


def _crops(split):
    rng = np.random.default_rng({"train": 0, "val": 1}[split])
    return [
        (
            rng.normal(size=(3, 3, 4)).astype(np.float16),
            rng.integers(0, 7, size=(9, 9), dtype=np.uint8),
        )
        for _ in range(3)
    ]


def _prepared_run(root, label_first=False):
    """A prepared run's files as the search program leaves them (tiny)."""
    search_dir = root / "search"
    (search_dir / "pretrain").mkdir(parents=True)
    (search_dir / "cache").mkdir()
    (search_dir / "pretrain" / "ckpt-3.index").write_bytes(b"index")
    (search_dir / "pretrain" / "ckpt-3.data-00000-of-00001").write_bytes(b"weights")
    (search_dir / "pretrain" / "ckpt-2.index").write_bytes(b"an older one")
    splits = {}
    for split in ("train", "val"):
        name = f"{split}-00000-of-00001.tfrecord"
        _write_shard(search_dir / "cache" / name, _crops(split), label_first)
        splits[split] = {
            "count": 3,
            "shards": [{"file": name, "count": 3, "sha256": "not compared"}],
        }
    manifest = {
        "feature_shape": [3, 3, 4],
        "feature_dtype": "float16",
        "settings": {
            "checkpoint": str(search_dir / "pretrain" / "ckpt-3"),
            "checkpoint_sha256": "ab" * 32,
        },
        "splits": splits,
    }
    (search_dir / "cache" / "manifest.json").write_text(json.dumps(manifest))
    return search_dir


def test_an_exported_run_is_imported_only_onto_identical_files(tmp_path):
    ours = _prepared_run(tmp_path / "a")
    exported = search_efficacy.Store(str(tmp_path / "a" / "results.json"))
    exported.put("e2e:x", {"miou": 0.5, "seconds": 3.0})
    exported.put("proxy:y", {"miou": 0.4, "seconds": 1.0})
    search_efficacy.record_invocation(exported, ["--work_dir=a"])
    path = str(tmp_path / "run.json")
    record = search_efficacy.export_run(path, str(ours), exported)
    (invocation,) = record["invocations"]
    assert invocation["command"].endswith("search_efficacy.py --work_dir=a")
    assert record["code"] == invocation["code"] and invocation["machine"]
    assert record["pretrain_sha256"] == {
        "ckpt-3.data-00000-of-00001": hashlib.sha256(b"weights").hexdigest(),
        "ckpt-3.index": hashlib.sha256(b"index").hexdigest(),
    }
    assert record["cache_records_sha256"]["val"]["count"] == 3
    assert json.loads((tmp_path / "run.json").read_text())["results"] == {
        "e2e:x": {"miou": 0.5, "seconds": 3.0},
        "proxy:y": {"miou": 0.4, "seconds": 1.0},
    }

    # Another machine's run made the same backbone and crops (its shards'
    # bytes differ: their map entries come in another order). What it lacks
    # is added; what it measured itself stays.
    theirs = _prepared_run(tmp_path / "b", label_first=True)
    assert (ours / "cache" / "val-00000-of-00001.tfrecord").read_bytes() != (
        theirs / "cache" / "val-00000-of-00001.tfrecord"
    ).read_bytes()
    store = search_efficacy.Store(str(tmp_path / "b" / "results.json"))
    store.put("e2e:x", {"miou": 0.6, "seconds": 4.0})
    imported = search_efficacy.import_run(path, str(theirs), store)
    assert store.get("e2e:x") == {"miou": 0.6, "seconds": 4.0}
    assert store.get("proxy:y") == {"miou": 0.4, "seconds": 1.0}
    assert store.get(search_efficacy.INVOCATIONS_KEY) is None  # Not ours.
    assert imported == [
        {
            "file": "run.json",
            "code": record["code"],
            "machine": record["machine"],
            "measurements": 2,
        }
    ]
    # A resumed invocation imports again: nothing changes, one record.
    reread = search_efficacy.Store(str(tmp_path / "b" / "results.json"))
    assert search_efficacy.import_run(path, str(theirs), reread) == imported

    # One byte of the backbone, or one cached label, differs: nothing is added.
    def other_label(search_dir):
        crops = _crops("val")
        crops[1] = (crops[1][0], crops[1][1] + 1)
        _write_shard(search_dir / "cache" / "val-00000-of-00001.tfrecord", crops)

    for name, change in (
        (
            "pretrained checkpoint sha256",
            lambda d: (d / "pretrain" / "ckpt-3.index").write_bytes(b"indeX"),
        ),
        ("cached crops sha256", other_label),
    ):
        other = _prepared_run(tmp_path / name.replace(" ", "_"))
        change(other)
        fresh = search_efficacy.Store(str(other.parent / "results.json"))
        with pytest.raises(SystemExit, match=f"its {name} differ"):
            search_efficacy.import_run(path, str(other), fresh)
        assert fresh.items() == {}


def test_import_and_export_name_what_is_wrong(tmp_path):
    search_dir = _prepared_run(tmp_path)
    store = search_efficacy.Store(str(tmp_path / "results.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"results": {}}')
    with pytest.raises(SystemExit, match="bad.json is not a file --export_run writes"):
        search_efficacy.import_run(str(bad), str(search_dir), store)
    with pytest.raises(SystemExit, match="holds no prepared run"):
        search_efficacy.export_run(
            str(tmp_path / "out.json"), str(tmp_path / "nothing"), store
        )
    assert not (tmp_path / "out.json").exists()

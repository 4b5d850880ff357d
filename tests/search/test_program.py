"""The search program end to end: cache, search, rerank and report."""

import json
import os
import shutil

from absl import flags
from cache_testing import CROP
from cache_testing import shared_search
import optuna
import program_testing
import pytest

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.search import engine
from deeplab_dpc.search import program
from deeplab_dpc.search import proxy
from deeplab_dpc.search import study_storage

FLAGS = flags.FLAGS


def _run(search_dir, data, checkpoint, *extra):
    return program_testing.run_module(
        "deeplab_dpc.search",
        f"--search_dir={search_dir}",
        "--dataset=synthetic",
        f"--dataset_dir={data}",
        f"--train_crop_size={CROP[0]},{CROP[1]}",
        "--depth_multiplier=0.35",
        f"--tf_initial_checkpoint={checkpoint}",
        "--cache_copies=1",
        "--num_trials=2",
        "--num_branches=2",
        "--proxy_steps=6",
        "--proxy_batch_size=4",
        "--proxy_eval_every=3",
        "--top_k=1",
        "--rerank_steps=2",
        "--train_batch_size=2",
        "--target_crop_size=129,129",
        "--seed=1",
        *extra,
        env=program_testing.environment(),
        timeout=600,
    )


def test_all_modes_leave_a_report_and_a_best_cell(tmp_path_factory):
    _, data, pretrained, _ = shared_search(tmp_path_factory)
    search_dir = tmp_path_factory.mktemp("program")
    proc = _run(
        search_dir,
        data,
        pretrained,
        "--mode=all",
        "--inter_op_parallelism_threads=1",
        "--float32_math=float32",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The speed flags it shares with the training program apply.
    assert "Threads: intra-op 0, inter-op 1" in proc.stderr
    assert "Float32 convolutions compute in float32." in proc.stderr

    storage = f"sqlite:///{search_dir / 'study.db'}"
    study = optuna.load_study(study_name="dpc_search", storage=storage)
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 2
    for trial in done:
        cell = cell_spec.cell_from_json(trial.user_attrs["cell_json"])
        assert len(cell) == 2
    best = cell_spec.load_cell(str(search_dir / "best_cell.json"))
    complete = [t for t in done if t.state.name == "COMPLETE"]
    assert best in [
        cell_spec.cell_from_json(t.user_attrs["cell_json"]) for t in complete
    ]
    report = (search_dir / "report.md").read_text()
    assert "## Top" in report and "ASPP (no atrous rates)" in report
    # The default strategy and how it draws ops are in the settings table.
    assert "| strategy | random_local |" in report and "| op_prior | kind |" in report
    # Every baseline, on the proxy and end to end, and a conclusion.
    for name in ("published DPC", "ASPP 6/12/18 + image pooling", "1x1 only"):
        assert f"| {name} |" in report
    assert "| searched cell |" in report and "Conclusion: " in report
    baselines = json.loads((search_dir / "baselines.json").read_text())["baselines"]
    assert all(0.0 <= b["full_miou"] <= 1.0 for b in baselines)
    assert "Re-rank by end-to-end training (2 steps)" in report
    for name in ("best_so_far", "miou_vs_madds", "op_frequencies", "best_cell"):
        assert (search_dir / "plots" / f"{name}.png").stat().st_size > 0
    records = json.loads((search_dir / "trials.json").read_text())
    assert sorted(r["number"] for r in records) == [t.number for t in study.trials]


def test_search_without_a_cache_names_the_mode(parsed_flags, tmp_path):
    FLAGS.search_dir = str(tmp_path)
    with pytest.raises(flags.ValidationError, match="--mode=cache"):
        program.search()


def test_random_backbone_is_refused(parsed_flags, tmp_path):
    FLAGS.search_dir = str(tmp_path)
    FLAGS.tf_initial_checkpoint = ""
    with pytest.raises(flags.ValidationError, match="randomly initialised"):
        program.backbone_checkpoint(allow_pretrain=False)


def test_unknown_objective_is_named(parsed_flags, tmp_path):
    FLAGS.search_dir = str(tmp_path)
    FLAGS.objectives = ["miou", "latency"]
    with pytest.raises(flags.ValidationError, match="latency"):
        program.open_study()


def test_short_runs_keep_deeplabs_horizon_unless_batch_norm_decay_is_given(
    parsed_flags,
):
    # Not given: 1 - 10 / steps (capped at DeepLab's 0.9997).
    assert program.batch_norm_decay(200) == pytest.approx(0.95)
    assert program.batch_norm_decay(10**6) == pytest.approx(0.9997)
    # Given, even at its default value: used as it is for every short run.
    FLAGS["batch_norm_decay"].parse("0.9997")
    assert program.batch_norm_decay(200) == pytest.approx(0.9997)
    FLAGS["batch_norm_decay"].parse("0.5")
    assert program.batch_norm_decay(200) == pytest.approx(0.5)


def test_proxy_upsample_logits_reaches_the_trials_and_the_study(parsed_flags):
    assert program._proxy_kwargs()["upsample_logits"] is True
    assert program._trial_settings()["proxy_upsample_logits"] is True
    # Studies stored before the flag ran with DeepLab's default.
    assert program.TRIAL_SETTING_DEFAULTS == {"proxy_upsample_logits": True}
    FLAGS.proxy_upsample_logits = False
    assert program._proxy_kwargs()["upsample_logits"] is False
    assert program._trial_settings()["proxy_upsample_logits"] is False
    assert "upsample_logits" not in program._trial_settings()


def test_max_head_madds_is_a_multiple_of_deeplabs_aspp(parsed_flags, tmp_path_factory):
    _, _, _, info = shared_search(tmp_path_factory)
    FLAGS.target_crop_size = "129,129"
    FLAGS.max_head_madds = "1.0xaspp"
    budget = program.head_budget(info)
    channels = info.feature_shape[-1]
    rates = tuple(r * 16 // info.output_stride for r in (6, 12, 18))
    aspp = proxy.head_cost(
        proxy.model_options(info, None, atrous_rates=rates), channels, (129, 129)
    )[1]
    assert budget.max_head_madds == aspp
    published = cell_spec.published_cell()
    expected = proxy.head_cost(
        proxy.model_options(info, published), channels, (129, 129)
    )[1]
    assert budget.cost(published) == expected
    assert budget(published) == (expected <= aspp)
    FLAGS.max_head_madds = None
    assert program.head_budget(info) is None


def test_a_bad_max_head_madds_is_named(parsed_flags, tmp_path_factory):
    _, _, _, info = shared_search(tmp_path_factory)
    FLAGS.max_head_madds = "cheap"
    with pytest.raises(flags.ValidationError, match="--max_head_madds='cheap'"):
        program.head_budget(info)


def _snapshot(folder):
    """Every file and folder under `folder`: its size, mtime and bytes."""
    found = {}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        content = path.read_bytes() if path.is_file() else None
        found[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns, content)
    return found


@pytest.mark.parametrize("mode", ["cache", "search"])
def test_another_crop_is_refused_and_changes_nothing(tmp_path_factory, mode):
    # The audit: a rerun with another --train_crop_size silently reused the
    # cache of the first crop. The cache here was made at CROP (65x65).
    shared_dir, data, pretrained, _ = shared_search(tmp_path_factory)
    search_dir = tmp_path_factory.mktemp("other_crop")
    shutil.copytree(os.path.join(shared_dir, "cache"), search_dir / "cache")
    before = _snapshot(search_dir)
    proc = _run(
        search_dir, data, pretrained, f"--mode={mode}", "--train_crop_size=33,33"
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if mode == "cache":  # The cache's own check names each differing setting.
        assert "crop_size: cached" in errors[0] and "65" in errors[0], errors
    else:  # The search checks the cache's crop against the flag's.
        assert "--train_crop_size='33,33'" in errors[0], errors
        assert "made at 65,65" in errors[0], errors
    assert _snapshot(search_dir) == before


MYSQL_PASSWORD = "My-s3cret-25"


def test_local_workers_get_a_mysql_password_by_environment(
    parsed_flags, tmp_path, monkeypatch
):
    # As PostgreSQL's (tests/search/test_postgres.py, against a real server):
    # search.flags holds the URL without its password, mode 0600, and the
    # workers find it in their environment. No MySQL server or driver here.
    FLAGS.search_dir = str(tmp_path)
    FLAGS.storage = f"mysql+pymysql://dpc:{MYSQL_PASSWORD}@db.example:3306/search"
    FLAGS.num_workers = 2
    monkeypatch.setattr(program, "_load_cache", lambda: None)
    monkeypatch.setattr(program, "head_budget", lambda cache: None)
    monkeypatch.setattr(program, "open_study", lambda feasible=None: "the study")
    launched = {}

    def launch(num_workers, argv, **kwargs):
        launched.update(kwargs, num_workers=num_workers, argv=argv)

    # The program imports the engine (and Optuna) when it runs, not at start.
    monkeypatch.setattr(engine, "launch_workers", launch)
    assert program.search() == "the study"
    flagfile = tmp_path / program.FLAGS_FILE
    text = flagfile.read_text()
    assert "--storage=mysql+pymysql://dpc@db.example:3306/search\n" in text
    assert MYSQL_PASSWORD not in text
    assert flagfile.stat().st_mode & 0o777 == 0o600
    assert launched["env"] == {study_storage.PASSWORD_ENV: MYSQL_PASSWORD}
    assert launched["num_workers"] == 2


def test_a_mysql_storage_that_cannot_open_is_one_masked_line(tmp_path):
    # The driver is not installed here: the error names the storage with
    # its password masked, and nothing written holds the password.
    search_dir = tmp_path / "search"
    proc = program_testing.run_module(
        "deeplab_dpc.search",
        "--mode=report",
        f"--search_dir={search_dir}",
        f"--storage=mysql://dpc:{MYSQL_PASSWORD}@127.0.0.1:1/db",
        env=program_testing.environment(),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "mysql://dpc:***@127.0.0.1:1/db" in errors[0], errors
    # TensorFlow's C++ lines stay silent, also the devices' (cuInit).
    assert not [line for line in proc.stderr.splitlines() if "0000 " in line[:6]]
    assert MYSQL_PASSWORD not in proc.stdout + proc.stderr
    for path in search_dir.rglob("*"):
        if path.is_file():
            assert MYSQL_PASSWORD.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    "name",
    [
        "num_trials",
        "num_branches",
        "proxy_steps",
        "proxy_batch_size",
        "proxy_eval_every",
        "cache_copies",
        "top_k",
        "rerank_steps",
        "pretrain_steps",
        "num_workers",
        "heartbeat_interval",
    ],
)
def test_counts_refuse_zero(parsed_flags, name):
    # The re-audit: --proxy_steps=0 was a ZeroDivisionError traceback,
    # --num_workers=0 ran as 1. Refused when the flags are parsed instead.
    with pytest.raises(flags.IllegalFlagValueError, match="=0: 0 is not a"):
        setattr(FLAGS, name, 0)

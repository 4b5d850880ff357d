"""Tests for deeplab_dpc.search.engine: storage, totals, duplicates, workers."""

import os
import signal
import socket
import sys
import threading
import time

import optuna
from optuna.trial import TrialState
import pytest
import search_testing
import sqlalchemy
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.cells.cell_spec import BranchSpec
from deeplab_dpc.cells.cell_spec import CellSpec
from deeplab_dpc.evaluation import metrics
from deeplab_dpc.layers import dense_prediction_cell
from deeplab_dpc.models import accounting
from deeplab_dpc.search import engine
from deeplab_dpc.search import optuna_space
from deeplab_dpc.search import space
from deeplab_dpc.search import study_storage

# Two orders of one graph (same canonical key) and another cell.
CELL_A = CellSpec(
    [
        BranchSpec(input=-1, op="conv1x1"),
        BranchSpec(input=-1, op="sep3x3", rate=(3, 6)),
        BranchSpec(input=0, op="pool", grid=(2, 2)),
    ]
)
CELL_A_REORDERED = CellSpec(
    [
        BranchSpec(input=-1, op="sep3x3", rate=(3, 6)),
        BranchSpec(input=-1, op="conv1x1"),
        BranchSpec(input=1, op="pool", grid=(2, 2)),
    ]
)
CELL_B = CellSpec(
    [
        BranchSpec(input=-1, op="sep3x3", rate=(9, 6)),
        BranchSpec(input=0, op="sep3x3", rate=(1, 1)),
        BranchSpec(input=1, op="conv1x1"),
    ]
)


def _study(tmp_path, pruner=None, **kwargs):
    options = dict(strategy="random_local", num_branches=3, seed=0)
    options.update(kwargs)
    return engine.create_or_load_study(
        search_dir=tmp_path / "search",
        pruner=pruner or optuna.pruners.NopPruner(),
        **options,
    )


def _counted(study):
    return study.get_trials(states=engine.COUNTED_STATES)


# ------------------------------------------------------------------ storage


def test_a_study_keeps_its_settings_in_the_default_storage(tmp_path):
    study = _study(tmp_path)
    storage = engine.open_storage(engine.default_storage(tmp_path / "search"))
    assert isinstance(storage, study_storage.StudyStorage)
    loaded = optuna.load_study(study_name=study.study_name, storage=storage)
    assert loaded.user_attrs == {
        "strategy": "random_local",
        "objectives": ["miou"],
        "num_branches": 3,
        engine.ATTR_PARAM_SPACE: "uniform",
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(strategy="tpe"), "created with strategy='random_local', not 'tpe'"),
        (dict(num_branches=4), "created with num_branches=3, not 4"),
        (dict(objectives=("params",)), r"objectives=\['miou'\], not \['params'\]"),
    ],
)
def test_a_study_refuses_other_settings(tmp_path, change, message):
    _study(tmp_path)
    with pytest.raises(ValueError, match=message):
        _study(tmp_path, **change)


def test_a_study_refuses_other_trial_settings_naming_them(tmp_path):
    # A rerun with other --proxy_steps or --train_crop_size silently added
    # trials to the same study in the audit.
    settings = {"proxy_steps": 6, "train_crop_size": [65, 65]}
    _study(tmp_path, trial_settings=settings)
    _study(tmp_path, trial_settings=settings)  # The same: joins.
    with pytest.raises(ValueError) as raised:
        _study(tmp_path, trial_settings={"proxy_steps": 8, "train_crop_size": [33, 33]})
    message = str(raised.value)
    assert "proxy_steps=6, not 8" in message
    assert "train_crop_size=[65, 65], not [33, 33]" in message
    assert "--study_name" in message


def test_a_study_stored_before_a_setting_existed_holds_its_default(tmp_path):
    old = {"proxy_steps": 6}
    defaults = {"upsample": True}
    _study(tmp_path, trial_settings=old)
    # The default: joins, and the study records the setting from now on.
    study = _study(
        tmp_path,
        trial_settings={**old, "upsample": True},
        trial_setting_defaults=defaults,
    )
    assert study.user_attrs[engine.ATTR_TRIAL_SETTINGS] == {**old, "upsample": True}
    _study(tmp_path, trial_settings={**old, "upsample": True})  # Now stored.
    with pytest.raises(ValueError, match="upsample=True, not False"):
        _study(
            tmp_path,
            trial_settings={**old, "upsample": False},
            trial_setting_defaults=defaults,
        )
    # Without the defaults, a missing key is a difference (None).
    _study(tmp_path / "other", trial_settings=old)
    with pytest.raises(ValueError, match="upsample=None, not True"):
        _study(tmp_path / "other", trial_settings={**old, "upsample": True})


def test_a_corrupt_study_db_is_named(tmp_path):
    path = tmp_path / "search" / engine.STORAGE_FILE
    path.parent.mkdir()
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match=f"study storage {path} cannot be used"):
        _study(tmp_path)


def test_storage_passwords_are_redacted():
    url = "postgresql://user:s3cret@host:5432/db"
    assert study_storage.redact(f"in {url}, then") == (
        "in postgresql://user:***@host:5432/db, then"
    )
    text, env = study_storage.without_password(f"--storage={url}\n--x=1\n", url)
    assert text == "--storage=postgresql://user@host:5432/db\n--x=1\n"
    assert env == {"PGPASSWORD": "s3cret"}
    assert study_storage.without_password("--storage=sqlite:///a", "sqlite:///a") == (
        "--storage=sqlite:///a",
        None,
    )
    with pytest.raises(ValueError) as raised:
        engine.open_storage("postgresql//user:s3cret@host/db")
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize("scheme", ["mysql", "mysql+pymysql"])
def test_mysql_passwords_are_redacted_and_kept_out_of_flag_files(
    scheme, monkeypatch
):
    url = f"{scheme}://user:My-s3cret@host:3306/db"
    assert study_storage.redact(f"in {url}, then") == (
        f"in {scheme}://user:***@host:3306/db, then"
    )
    text, env = study_storage.without_password(f"--storage={url}\n--x=1\n", url)
    assert text == f"--storage={scheme}://user@host:3306/db\n--x=1\n"
    assert env == {study_storage.PASSWORD_ENV: "My-s3cret"}
    # The worker's side: the URL without a password gets the variable's.
    bare = sqlalchemy.engine.make_url(f"{scheme}://user@host:3306/db")
    monkeypatch.setenv(study_storage.PASSWORD_ENV, "My-s3cret")
    assert study_storage._with_password_from_env(bare).password == "My-s3cret"
    # Opening it here fails (no driver, or no server): the error is masked.
    with pytest.raises(ValueError) as raised:
        engine.open_storage(url)
    assert "My-s3cret" not in str(raised.value)
    assert f"{scheme}://user:***@host:3306/db" in str(raised.value)


def test_a_refused_connection_is_named_without_its_password(monkeypatch):
    # What a MySQL or PostgreSQL server that refuses the connection raises,
    # with the URL in the driver's message (no server in this test).
    url = "mysql+pymysql://user:My-s3cret@host/db"

    def refuse(self, storage, **kwargs):
        raise sqlalchemy.exc.OperationalError(f"connect to {storage}", None, None)

    monkeypatch.setattr(optuna.storages.RDBStorage, "__init__", refuse)
    with pytest.raises(ValueError) as raised:
        engine.open_storage(url)
    message = str(raised.value)
    assert "My-s3cret" not in message and "user:***@host" in message, message


# ------------------------------------------------------- totals and repeats


@pytest.mark.parametrize(
    "strategy, same_seed_as_worker_0",
    [("random_local", 0), ("tpe", 1)],  # Cell samplers: trial n's cell from (seed, n).
)
def test_the_worker_index_seeds_only_the_optuna_samplers(
    tmp_path, monkeypatch, strategy, same_seed_as_worker_0
):
    def first_cells(name, seed, worker):
        monkeypatch.setenv(engine.WORKER_INDEX_ENV, str(worker))
        study = _study(tmp_path / name, strategy=strategy, seed=seed)
        fixed = optuna_space.distributions(3)
        return [study.ask(fixed_distributions=fixed).params for _ in range(3)]

    second_worker = first_cells("a", 0, 1)
    assert second_worker == first_cells("b", same_seed_as_worker_0, 0)
    assert second_worker != first_cells("c", 1 - same_seed_as_worker_0, 0)


def test_identical_cells_are_trained_once(tmp_path):
    study = _study(tmp_path)
    for cell in (CELL_A, CELL_B, CELL_A_REORDERED, CELL_A):
        study.enqueue_trial(optuna_space.cell_to_params(cell))
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    stats = engine.run_worker(
        study,
        search_testing.make_objective(train_log_dir=log_dir),
        num_trials_total=5,
        poll_seconds=0.01,
    )
    assert (stats.trials, stats.trained, stats.duplicates) == (5, 3, 2)
    (keys,) = search_testing.trainings(log_dir).values()
    assert len(keys) == len(set(keys)) == 3
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 5
    original = trials[0]
    for repeat in (trials[2], trials[3]):
        assert repeat.user_attrs[engine.ATTR_DUPLICATE] == 0
        assert repeat.value == original.value
        assert repeat.user_attrs["madds"] == original.user_attrs["madds"]
        assert (
            repeat.user_attrs[engine.ATTR_KEY] == original.user_attrs[engine.ATTR_KEY]
        )
    # A repeat keeps its own branch order.
    assert (
        cell_spec.cell_from_json(trials[2].user_attrs[engine.ATTR_CELL])
        == CELL_A_REORDERED
    )
    assert engine.ATTR_DUPLICATE not in trials[4].user_attrs
    # Each trial names the process that ran it, repeats included.
    assert {t.user_attrs[engine.ATTR_WORKER] for t in trials} == {
        f"{socket.gethostname()}:{os.getpid()}"
    }


def test_pruned_trials_count_and_their_repeats_are_pruned(tmp_path):
    # Every analytic mIOU is below 0.9, so its half (step 1) is below 0.45.
    study = _study(tmp_path, pruner=optuna.pruners.ThresholdPruner(lower=0.45))
    study.enqueue_trial(optuna_space.cell_to_params(CELL_B))
    study.enqueue_trial(optuna_space.cell_to_params(CELL_B))
    stats = engine.run_worker(
        study, search_testing.make_objective(), num_trials_total=3, poll_seconds=0.01
    )
    assert (stats.trials, stats.pruned, stats.duplicates) == (3, 3, 1)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 3
    expected = search_testing.analytic_scores(CELL_B)["miou"] * 0.5
    assert trials[0].intermediate_values == {1: pytest.approx(expected)}
    assert trials[1].user_attrs[engine.ATTR_DUPLICATE] == 0
    # Samplers judge the repeat as they judge its original.
    assert trials[1].intermediate_values == trials[0].intermediate_values


def test_the_total_is_study_wide_and_rerunning_resumes(tmp_path):
    study = _study(tmp_path)
    objective = search_testing.make_objective()
    first = engine.run_worker(study, objective, num_trials_total=3, poll_seconds=0.01)
    assert first.trials == 3 and len(_counted(study)) == 3
    resumed = engine.run_worker(study, objective, num_trials_total=5, poll_seconds=0.01)
    assert resumed.trials == 2 and len(_counted(study)) == 5
    again = engine.run_worker(study, objective, num_trials_total=5, poll_seconds=0.01)
    assert again.trials == 0 and len(study.get_trials()) == 5


def test_the_objective_must_return_every_objective(tmp_path):
    study = _study(tmp_path, strategy="nsga2", objectives=("miou", "madds"))
    with pytest.raises(ValueError, match=r"must also return \['madds'\]"):
        engine.run_worker(study, lambda cell, report: {"miou": 0.5}, num_trials_total=1)
    assert study.get_trials()[0].state == TrialState.FAIL


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"model": object()}, "returned 'model': <object.*cannot be stored"),
        ({"cell_json": "[]"}, r"returned \['cell_json'\]; the engine sets these"),
    ],
)
def test_results_must_be_storable(tmp_path, extra, message):
    def objective(cell, report):
        return {"miou": 0.5, **extra}

    with pytest.raises(ValueError, match=message):
        engine.run_worker(_study(tmp_path), objective, num_trials_total=1)


@pytest.mark.parametrize("total", [0, 2.0, True])
def test_run_worker_rejects_a_bad_total(tmp_path, total):
    with pytest.raises(ValueError, match="num_trials_total"):
        engine.run_worker(
            _study(tmp_path), search_testing.make_objective(), num_trials_total=total
        )


# ------------------------------------------------------------------ workers


def test_thread_env_shares_the_cores():
    assert engine.thread_env(2, cores=4) == {
        "TF_NUM_INTRAOP_THREADS": "2",
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": "2",
    }
    assert engine.thread_env(4, cores=2)["TF_NUM_INTRAOP_THREADS"] == "1"


def test_worker_cpus_gives_each_worker_its_own_run_of_cores():
    cpus = [0, 2, 4, 6, 8]
    assert engine.worker_cpus(2, available=cpus) == [{0, 2}, {4, 6}]
    assert engine.worker_cpus(2, cores=2, available=cpus) == [{0}, {2}]
    assert engine.worker_cpus(3, cores=4, available=cpus) == [{0}, {2}, {4}]
    assert engine.worker_cpus(1, available=cpus) == [set(cpus)]
    assert engine.worker_cpus(6, available=cpus) is None  # More workers than cores.
    assert engine.worker_cpus(2, cores=8, available=cpus) is None  # Cores missing.


# The worker reads its CPUs a moment after it starts, as TensorFlow would.
_AFFINITY = (
    "import os, time; time.sleep(0.3); "
    "print(sorted(os.sched_getaffinity(0)), flush=True)"
)


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs 2 CPUs and Linux affinity",
)
@pytest.mark.parametrize("pin", [True, False])
def test_launch_workers_pins_each_worker_to_its_cores(tmp_path, pin):
    argv = [sys.executable, "-c", _AFFINITY]
    engine.launch_workers(2, argv, log_dir=tmp_path, cores=2, echo=False, pin=pin)
    seen = [(tmp_path / f"worker-{i}.log").read_text().strip() for i in (0, 1)]
    mine = sorted(os.sched_getaffinity(0))
    if pin:
        assert seen == [str([cpu]) for cpu in mine[:2]]
    else:
        assert seen == [str(mine)] * 2


def test_launch_workers_reports_each_failure():
    argv = [sys.executable, "-c", "import sys; print('no data here'); sys.exit(3)"]
    with pytest.raises(engine.WorkerError) as error:
        engine.launch_workers(2, argv, echo=False)
    message = str(error.value)
    assert message.startswith("2 of 2 search workers failed")
    assert "worker 1 (pid" in message and "exited with status 3" in message
    assert "no data here" in message


def test_two_local_workers_complete_the_total_training_each_cell_once(tmp_path):
    study = _study(tmp_path, num_branches=2)
    # Both workers pick up the same cell at once: one trains, one waits.
    for cell in (CELL_A, CELL_A_REORDERED, CELL_B, CELL_B):
        study.enqueue_trial(optuna_space.cell_to_params(cell))
    train_dir, log_dir = tmp_path / "train", tmp_path / "logs"
    train_dir.mkdir()
    argv = search_testing.worker_argv(
        engine.default_storage(tmp_path / "search"),
        num_trials=12,
        seconds=0.15,
        train_log_dir=train_dir,
        barrier=2,
    )
    env = {"TF_CPP_MIN_LOG_LEVEL": "2"}
    engine.launch_workers(2, argv, env=env, log_dir=log_dir, cores=4, echo=False)
    counted = _counted(study)
    assert len(counted) == 12 and all(t.state == TrialState.COMPLETE for t in counted)
    trained = search_testing.trainings(train_dir)
    assert len(trained) == 2  # Both workers trained.
    keys = [key for keys in trained.values() for key in keys]
    assert len(keys) == len(set(keys))
    originals = [t for t in counted if engine.ATTR_DUPLICATE not in t.user_attrs]
    assert sorted(keys) == sorted(t.user_attrs[engine.ATTR_KEY] for t in originals)
    assert len(counted) - len(originals) >= 2  # The enqueued repeats.
    summaries = search_testing.summaries(log_dir)
    assert sorted(s["index"] for s in summaries) == [0, 1]
    assert all(s["threads"]["TF_NUM_INTRAOP_THREADS"] == "2" for s in summaries)
    surplus = sum(s["stats"]["surplus"] for s in summaries)
    assert sum(s["stats"]["trials"] for s in summaries) == 12 + surplus
    # Both processes ran counted trials, and each trial names its process.
    workers = {t.user_attrs[engine.ATTR_WORKER] for t in counted}
    assert len(workers) == 2
    assert all(w.startswith(socket.gethostname() + ":") for w in workers)


def test_a_killed_worker_trial_is_retried_and_the_study_completes(tmp_path):
    _study(tmp_path, num_branches=2)
    marker = tmp_path / "hung.pid"
    argv = search_testing.worker_argv(
        engine.default_storage(tmp_path / "search"),
        num_trials=6,
        seconds=0.3,
        hang_marker=marker,
        barrier=2,
        heartbeat_interval=1,
        grace_period=2,
    )
    errors = []

    def launch():
        try:
            engine.launch_workers(
                2, argv, env={"TF_CPP_MIN_LOG_LEVEL": "2"}, echo=False
            )
        except engine.WorkerError as err:
            errors.append(str(err))

    thread = threading.Thread(target=launch)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()):
            assert thread.is_alive(), f"the workers ended unkilled: {errors}"
            assert time.monotonic() < deadline, "worker 0 never started a trial"
            time.sleep(0.05)
    finally:
        if marker.exists() and marker.read_text():
            os.kill(int(marker.read_text()), signal.SIGKILL)
        thread.join(timeout=120)
    assert not thread.is_alive()
    assert len(errors) == 1 and "1 of 2 search workers failed" in errors[0]
    assert "worker 0" in errors[0] and "killed by SIGKILL" in errors[0]
    study = optuna.load_study(
        study_name=engine.DEFAULT_STUDY_NAME,
        storage=engine.default_storage(tmp_path / "search"),
    )
    assert len(_counted(study)) == 6
    failed = study.get_trials(states=(TrialState.FAIL,))
    (dead,) = [t for t in failed if engine.ATTR_KEY in t.user_attrs]  # Not surplus.
    retries = [
        t
        for t in study.get_trials()
        if t.system_attrs.get("failed_trial") == dead.number
    ]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == dead.params
    assert retries[0].user_attrs[engine.ATTR_KEY] == dead.user_attrs[engine.ATTR_KEY]


def test_a_trial_that_never_sent_a_heartbeat_is_failed_and_retried(tmp_path):
    study = _study(tmp_path, num_branches=2, heartbeat_interval=1, grace_period=1)
    cell = CellSpec(CELL_B.branches[:2])
    study.enqueue_trial(optuna_space.cell_to_params(cell))
    # A worker that claimed the queued cell and died before its first
    # heartbeat: a storage opened without heartbeats never writes one.
    plain = optuna.load_study(
        study_name=study.study_name, storage=engine.default_storage(tmp_path / "search")
    )
    dead = plain.ask(optuna_space.distributions(2))
    assert optuna_space.params_to_cell(dead.params, 2) == cell
    result = {}

    def work():
        start = time.monotonic()
        result["stats"] = engine.run_worker(
            study,
            search_testing.make_objective(),
            num_trials_total=3,
            poll_seconds=0.05,
        )
        result["seconds"] = time.monotonic() - start

    worker = threading.Thread(target=work, daemon=True)  # Hangs if never failed.
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the worker waited for the dead trial"
    assert result["seconds"] > 1.0  # It waited the grace period out first.
    assert (result["stats"].trials, result["stats"].trained) == (3, 3)
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[0].params
    assert retry.user_attrs[engine.ATTR_KEY] == space.canonical_key(cell)
    assert len(_counted(study)) == 3


# ------------------------------------------------------ a real TF objective


def _train_dpc(cell, report):
    """Trains a tiny DPC plus logits for 3 steps on fixed random features."""
    features = tf.random.stateless_normal([2, 9, 9, 16], seed=[1, 2])
    labels = tf.random.stateless_uniform([2, 9, 9], [3, 4], maxval=3, dtype=tf.int32)
    head = dense_prediction_cell.DensePredictionCell(
        cell, crop_size=(129, 129), output_stride=16, filters=8
    )
    logits_layer = tf.keras.layers.Conv2D(3, 1)
    optimizer = tf.keras.optimizers.SGD(0.1)
    start = time.perf_counter()
    for step in range(1, 4):
        with tf.GradientTape() as tape:
            logits = logits_layer(head(features, training=True))
            loss = tf.reduce_mean(
                tf.keras.losses.sparse_categorical_crossentropy(
                    labels, logits, from_logits=True
                )
            )
        variables = head.trainable_variables + logits_layer.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        predictions = tf.argmax(logits_layer(head(features, training=False)), -1)
        matrix = metrics.confusion_matrix(
            labels, predictions, num_classes=3, ignore_label=255
        )
        miou = float(metrics.mean_iou(matrix))
        report(step, miou)
    return {
        "miou": miou,
        "madds": accounting.layer_madds(head, tf.TensorSpec([1, 9, 9, 16])),
        "params": head.count_params(),
        "seconds": time.perf_counter() - start,
        "loss": loss,
    }


def test_a_tensorflow_objective_trains_in_the_worker(tmp_path):
    study = _study(
        tmp_path, strategy="nsga2", objectives=("miou", "madds"), num_branches=2
    )
    stats = engine.run_worker(study, _train_dpc, num_trials_total=2, poll_seconds=0.01)
    assert stats.trained == 2
    for trial in study.get_trials():
        assert trial.state == TrialState.COMPLETE
        assert 0.0 <= trial.values[0] <= 1.0 and trial.values[1] > 0
        assert trial.user_attrs["miou"] == trial.values[0]
        assert trial.user_attrs["params"] > 0 and trial.user_attrs["seconds"] > 0
        assert isinstance(trial.user_attrs["loss"], float)  # A tensor, made JSON.


def test_each_finished_trial_logs_its_place_and_the_best_so_far(
    tmp_path, monkeypatch
):
    lines = []
    monkeypatch.setattr(
        engine.logging, "info", lambda fmt, *args: lines.append(fmt % args)
    )
    study = _study(tmp_path)
    engine.run_worker(
        study, search_testing.make_objective(), num_trials_total=3, poll_seconds=0.01
    )
    progress = [line for line in lines if line.startswith("trial ")]
    assert [line.split(" (")[0] for line in progress] == [
        "trial 1/3",
        "trial 2/3",
        "trial 3/3",
    ]
    best = max(t.value for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert progress[-1].endswith(f"best miou {best:.4f} so far")
    assert "ETA" in progress[0] and "ETA" not in progress[-1]

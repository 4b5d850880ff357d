"""Tests for deeplab_dpc.search.study_storage: URLs, SQLite locking, dead trials."""

import pickle
import sqlite3
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from deeplab_dpc.search import study_storage


@pytest.mark.parametrize("url", ["redis://localhost/0", "study.db", "journal.log"])
def test_open_storage_rejects_what_is_not_an_rdb_url(url):
    with pytest.raises(ValueError, match="sqlite:///, postgresql:// or mysql://"):
        study_storage.open_storage(url)


def test_open_storage_needs_a_url_or_a_search_dir():
    with pytest.raises(ValueError, match="search_dir"):
        study_storage.open_storage()


def test_default_storage_is_a_sqlite_file_with_heartbeats(tmp_path):
    storage = study_storage.open_storage(
        search_dir=tmp_path / "search", heartbeat_interval=7, max_retry=2
    )
    assert isinstance(storage, study_storage.StudyStorage)
    assert storage.url == study_storage.default_storage(tmp_path / "search")
    path = tmp_path / "search" / study_storage.STORAGE_FILE
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert storage.get_heartbeat_interval() == 7
    callback = storage.get_heartbeat_stale_trial_callback()
    assert isinstance(callback, optuna.storages.RetryHeartbeatStaleTrialCallback)


@pytest.mark.parametrize("pickled", [False, True])
def test_a_sqlite_transaction_holds_the_write_lock(tmp_path, pickled):
    storage = study_storage.open_storage(search_dir=tmp_path)
    if pickled:  # As a storage handed to another process.
        storage = pickle.loads(pickle.dumps(storage))
    other = sqlite3.connect(tmp_path / study_storage.STORAGE_FILE, timeout=0)
    with storage.engine.connect() as conn:
        conn.exec_driver_sql("SELECT count(*) FROM trials").scalar()  # Only reads.
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # Free again once the transaction ended.
    other.rollback()
    other.close()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_concurrent_workers_claim_each_queued_trial_once(tmp_path):
    url = study_storage.default_storage(tmp_path)
    study = optuna.create_study(
        study_name="queue", storage=study_storage.open_storage(url)
    )
    for index in range(30):
        study.enqueue_trial({"index": index})
    claimed = []

    def worker():
        # Each worker has its own storage, as a separate process would.
        own = optuna.load_study(
            study_name="queue", storage=study_storage.open_storage(url)
        )
        while True:
            trial = own.ask()
            if trial.number >= 30:  # The queue is empty: a new trial.
                return
            claimed.append(trial.number)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == list(range(30))


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_trial_without_a_heartbeat_is_failed_after_the_grace_period(tmp_path):
    url = study_storage.default_storage(tmp_path)
    study = optuna.create_study(
        study_name="dead",
        storage=study_storage.open_storage(url, heartbeat_interval=1, grace_period=1),
    )
    study.enqueue_trial({"x": 3})
    # A worker that claims the queued trial and dies before any heartbeat: a
    # storage opened without heartbeats never writes one.
    plain = optuna.load_study(study_name="dead", storage=url)
    dead = plain.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    assert dead.params == {"x": 3}
    # First seen now: its worker may still be in the sampler, so it lives on.
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[0].state == TrialState.RUNNING
    time.sleep(1.2)
    optuna.storages.fail_stale_trials(study)
    failed, retry = study.get_trials()
    assert failed.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING
    assert retry.system_attrs["failed_trial"] == 0
    assert retry.params == {"x": 3}

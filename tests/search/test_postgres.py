"""The many-machines path for real: workers share a study only through PostgreSQL.

The fixture runs `.ci/postgres_setup.sh` (which installs Debian's postgresql
package only if the server programs are missing), initdb's a throwaway
cluster, serves it on a free loopback port and stops it afterwards.
"""

import contextlib
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import tempfile

from cache_testing import CROP
from cache_testing import shared_search
import optuna
import program_testing
import psycopg2
import pytest

from deeplab_dpc.search import engine
import search_testing

SETUP = pathlib.Path(__file__).resolve().parents[2] / ".ci" / "postgres_setup.sh"


def _server_bindir() -> pathlib.Path:
    proc = subprocess.run(
        ["bash", str(SETUP)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.skip(
            f"PostgreSQL's server programs are missing and {SETUP} could not "
            f"install them: {proc.stderr.strip()[-400:]}"
        )
    return pathlib.Path(proc.stdout.split()[-1])


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(argv) -> None:
    argv = [str(a) for a in argv]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )


@pytest.fixture(name="postgres_url")
def _postgres_url():
    bindir = _server_bindir()
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root.
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' account to run as")
        as_user = ["runuser", "-u", "postgres", "--"]
    base = pathlib.Path(tempfile.mkdtemp(prefix="dpc-postgres-"))
    if as_user:
        os.chown(base, account.pw_uid, account.pw_gid)
    cluster, port = base / "cluster", _free_port()

    def pg(program, *args):
        _run([*as_user, bindir / program, *args])

    try:
        pg("initdb", "-D", cluster, "-U", "dpc", "-A", "trust", "--no-sync")
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={base} -c fsync=off"
        )
        log = base / "server.log"
        pg("pg_ctl", "-D", cluster, "-l", log, "-o", options, "-w", "start")
        try:
            conn = psycopg2.connect(
                host="127.0.0.1", port=port, user="dpc", dbname="postgres"
            )
            conn.autocommit = True
            with contextlib.closing(conn), conn.cursor() as cursor:
                cursor.execute("CREATE DATABASE search")
            yield f"postgresql+psycopg2://dpc@127.0.0.1:{port}/search"
        finally:
            pg("pg_ctl", "-D", cluster, "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_a_study_only_through_postgres(postgres_url, tmp_path):
    study = engine.create_or_load_study(postgres_url, "pg_study", "tpe", num_branches=2)
    train_dir, log_dir = tmp_path / "train", tmp_path / "logs"
    train_dir.mkdir()
    argv = search_testing.worker_argv(
        postgres_url,
        study_name="pg_study",
        strategy="tpe",
        num_trials=10,
        seconds=0.1,
        train_log_dir=train_dir,
        barrier=2,
    )
    engine.launch_workers(
        2, argv, env={"TF_CPP_MIN_LOG_LEVEL": "2"}, log_dir=log_dir, echo=False
    )
    counted = study.get_trials(states=engine.COUNTED_STATES)
    assert len(counted) == 10
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in counted)
    summaries = search_testing.summaries(log_dir)
    assert sorted(s["index"] for s in summaries) == [0, 1]
    assert all(s["stats"]["trials"] >= 1 for s in summaries)  # Together.
    keys = [k for keys in search_testing.trainings(train_dir).values() for k in keys]
    assert len(keys) == len(set(keys))
    originals = [t for t in counted if engine.ATTR_DUPLICATE not in t.user_attrs]
    assert len(keys) == len(originals)
    assert not list(tmp_path.glob("**/*.db"))  # No local storage was involved.


def _search(url, search_dir, data, *extra):
    return program_testing.run_module(
        "deeplab_dpc.search",
        "--mode=search",
        f"--storage={url}",
        "--study_name=secret_study",
        f"--search_dir={search_dir}",
        "--dataset=synthetic",
        f"--dataset_dir={data}",
        f"--train_crop_size={CROP[0]},{CROP[1]}",
        "--depth_multiplier=0.35",
        "--num_trials=2",
        "--num_branches=2",
        "--proxy_batch_size=4",
        "--proxy_eval_every=1",
        "--seed=1",
        *extra,
        env=program_testing.environment(),
        timeout=600,
    )


def test_readme_url_works_and_the_password_never_leaks(
    postgres_url, tmp_path_factory, tmp_path
):
    # The README's `postgresql://` (no driver): SQLAlchemy's default driver,
    # psycopg 3, is not installed; the storage maps it to psycopg2. The
    # server trusts loopback, so any password connects.
    password = "Pg-s3cret-25"
    url = postgres_url.replace(
        "postgresql+psycopg2://dpc@", f"postgresql://dpc:{password}@"
    )
    engine.create_or_load_study(url, "readme_study", "random_local", num_branches=2)
    with pytest.raises(ValueError) as raised:
        engine.create_or_load_study(url, "readme_study", "tpe", num_branches=2)
    assert password not in str(raised.value)
    assert "postgresql+psycopg2://dpc:***@127.0.0.1" in str(raised.value)

    # The search program with two local workers, then a rerun with another
    # --proxy_steps (refused, naming it): no file it writes and no line it
    # logs holds the password.
    shared_dir, data, _, _ = shared_search(tmp_path_factory)
    search_dir = tmp_path / "search"
    shutil.copytree(os.path.join(shared_dir, "cache"), search_dir / "cache")
    first = _search(url, search_dir, data, "--num_workers=2", "--proxy_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _search(url, search_dir, data, "--num_workers=1", "--proxy_steps=3")
    assert second.returncode == 2, second.stderr[-3000:]
    assert (
        "proxy_steps=2, not 3"
        in [line for line in second.stderr.splitlines() if line.startswith("error: ")][
            -1
        ]
    )
    written = [p for p in search_dir.rglob("*") if p.is_file()]
    assert any(p.name == "search.flags" for p in written)
    assert any(p.suffix == ".log" for p in written)  # The workers' logs.
    for path in written:
        assert password.encode() not in path.read_bytes(), path
    for proc in (first, second):
        assert password not in proc.stdout + proc.stderr
    flagfile = search_dir / "search.flags"
    assert "--storage=postgresql://dpc@127.0.0.1" in flagfile.read_text()
    assert flagfile.stat().st_mode & 0o777 == 0o600
    study = optuna.load_study(study_name="secret_study", storage=postgres_url)
    assert len(study.get_trials(states=engine.COUNTED_STATES)) == 2

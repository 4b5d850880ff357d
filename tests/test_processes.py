"""Worker processes die with their parent: a SIGKILLed converter or search
launcher leaves no process behind (the audit found 2 idle 856 MiB converter
workers after 6 of 7 kills)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import process_testing
import program_testing
import pytest

from deeplab_dpc import processes


_CONVERTER = textwrap.dedent("""
    import multiprocessing, time
    from deeplab_dpc.data import shard_writer
    if __name__ == "__main__":
        with shard_writer.worker_pool(2) as pool:
            for future in [pool.submit(time.sleep, 0.2) for _ in range(4)]:
                future.result()
            print(" ".join(str(p.pid) for p in multiprocessing.active_children()),
                  flush=True)
            time.sleep(120)
    """)

# The workers are what the search's are, as far as dying goes: programs
# whose `cli.run` calls `die_with_parent_from_env` first thing.
_WORKER = (
    "from deeplab_dpc import processes; import time; "
    "print('up', processes.die_with_parent_from_env(), flush=True); time.sleep(120)"
)
_LAUNCHER = textwrap.dedent(f"""
    import sys
    from deeplab_dpc.search import engine
    engine.launch_workers(2, [sys.executable, "-c", {_WORKER!r}], echo=True, pin=False)
    """)


def _kill_parent_and_wait(parent, children):
    assert children, "no worker started"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(map(process_testing.alive, children)):
        time.sleep(0.1)
    survivors = [pid for pid in children if process_testing.alive(pid)]
    for pid in survivors:  # Do not leave them to the next tests.
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived their SIGKILLed parent"


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to find the workers"
)
@pytest.mark.parametrize("mode", [processes.PRCTL, processes.WATCHDOG])
@pytest.mark.parametrize("script", ["converter", "launcher"])
def test_workers_die_with_their_sigkilled_parent(program_env, script, mode):
    # "watchdog": the fallback where prctl is missing (macOS, the BSDs),
    # forced here by DEEPLAB_DPC_NO_PRCTL.
    source = _CONVERTER if script == "converter" else _LAUNCHER
    env = dict(program_env)
    if mode == processes.WATCHDOG:
        env[processes.NO_PRCTL_ENV] = "1"
    parent = subprocess.Popen(
        [sys.executable, "-c", source],
        cwd=program_testing.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        if script == "converter":
            line = parent.stdout.readline()
            while line and not line.replace(" ", "").strip().isdigit():
                line = parent.stdout.readline()  # TensorFlow's log lines.
            children = [int(p) for p in line.split()]
        else:
            children = []
            for _ in range(2):
                line = parent.stdout.readline()
                assert line.split()[-2:] == ["up", mode], line
        # Also the converter's resource tracker, and any grandchild.
        children = sorted(set(children) | set(process_testing.descendants(parent.pid)))
        assert len(children) >= 2, children
        _kill_parent_and_wait(parent, children)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()


def test_die_with_parent_kills_a_child_whose_parent_is_already_gone():
    # The race: the parent died before the child set its parent-death signal.
    proc = program_testing.run(
        [
            sys.executable,
            "-c",
            "from deeplab_dpc import processes; import os; "
            "processes.die_with_parent(os.getppid() + 1000000); print('survived')",
        ],
        dict(os.environ, PYTHONPATH=program_testing.REPO),
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL
    assert "survived" not in proc.stdout
    assert callable(processes.parent_death_preexec())


def test_the_watchdog_kills_a_child_whose_parent_is_already_gone():
    proc = program_testing.run(
        [
            sys.executable,
            "-c",
            "from deeplab_dpc import processes; import os, time; "
            "processes.die_with_parent(os.getppid() + 1000000); print('survived')",
        ],
        dict(
            os.environ, PYTHONPATH=program_testing.REPO, **{processes.NO_PRCTL_ENV: "1"}
        ),
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL
    assert "survived" not in proc.stdout


def test_the_parent_pid_is_not_passed_on_to_grandchildren(monkeypatch):
    monkeypatch.setenv(processes.PARENT_ENV, str(os.getppid()))
    monkeypatch.setenv(processes.NO_PRCTL_ENV, "1")
    assert processes.die_with_parent_from_env() == processes.WATCHDOG
    assert processes.PARENT_ENV not in os.environ
    assert processes.die_with_parent_from_env() is None
    kwargs = processes.child_kwargs({"A": "1"})
    assert kwargs["env"] == {"A": "1", processes.PARENT_ENV: str(os.getpid())}
    assert callable(kwargs["preexec_fn"])

"""Tests for bench/benchlib.py's handling of the programs it starts."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import process_testing

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BENCH = os.path.join(_REPO, "bench")
sys.path.insert(0, _BENCH)

import benchlib  # pylint: disable=wrong-import-position

# A benchmark running a long child as `search_program` runs the search
# program (with a `preexec_fn`, as search_throughput pins a core).
_BENCHMARK = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {bench!r})
    import benchlib
    benchlib.run_logged(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        {log!r},
        dict(os.environ),
        preexec_fn=lambda: os.environ.__setitem__("X", "1"),
    )
    print("not reached", flush=True)
    """
)


def _wait(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_the_child_dies_with_the_benchmark(tmp_path, signum):
    env = dict(os.environ, PYTHONPATH=_REPO)
    benchmark = subprocess.Popen(
        [sys.executable, "-c", _BENCHMARK.format(bench=_BENCH, log=str(tmp_path / "log"))],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    children = []
    try:
        assert _wait(lambda: process_testing.children(benchmark.pid))
        children = process_testing.children(benchmark.pid)
        benchmark.send_signal(signum)
        assert benchmark.wait(timeout=60) == -signum
        assert benchmark.stdout.read() == ""
        assert _wait(lambda: not any(map(process_testing.alive, children)))
    finally:  # A failing test leaves no process behind either.
        if benchmark.poll() is None:
            benchmark.kill()
            benchmark.wait()
        for pid in children:
            if process_testing.alive(pid):
                os.kill(pid, signal.SIGKILL)
        benchmark.stdout.close()


def test_run_logged_returns_the_status_and_appends_the_output(tmp_path):
    log = tmp_path / "log"
    log.write_text("earlier\n")
    command = [sys.executable, "-c", "print('out'); raise SystemExit(3)"]
    assert benchlib.run_logged(command, str(log), dict(os.environ)) == 3
    assert log.read_text() == "earlier\nout\n"

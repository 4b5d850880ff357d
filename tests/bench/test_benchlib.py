"""Tests for bench/benchlib.py's handling of the programs it starts."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench")

# A benchmark starting a long child, as `search_program` starts the search
# program: it prints the child's pid once the handler is in place.
_BENCHMARK = textwrap.dedent(
    """
    import subprocess, sys
    sys.path.insert(0, {bench!r})
    import benchlib
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with benchlib.stop_child_on_sigterm(child):
        print(child.pid, flush=True)
        child.wait()
    print("not reached", flush=True)
    """
)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_benchmark_and_its_child():
    benchmark = subprocess.Popen(
        [sys.executable, "-c", _BENCHMARK.format(bench=os.path.abspath(_BENCH))],
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid = None
    try:
        child_pid = int(benchmark.stdout.readline())
        assert _alive(child_pid)
        benchmark.send_signal(signal.SIGTERM)
        assert benchmark.wait(timeout=60) == 128 + signal.SIGTERM
        assert benchmark.stdout.read() == ""
        # The benchmark waited for its child, so the child is gone, not a zombie.
        assert not _alive(child_pid)
    finally:  # A failing test leaves no process behind either.
        if benchmark.poll() is None:
            benchmark.kill()
            benchmark.wait()
        if child_pid is not None and _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)
        benchmark.stdout.close()


def test_outside_the_main_thread_the_handler_is_left_alone():
    import threading  # pylint: disable=import-outside-toplevel

    sys.path.insert(0, _BENCH)
    import benchlib  # pylint: disable=import-outside-toplevel

    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def enter():
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        with benchlib.stop_child_on_sigterm(child):
            seen.append(signal.getsignal(signal.SIGTERM))
            child.wait()

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join(timeout=60)
    assert seen == [before]
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("returncode", [0, 3])
def test_the_handler_is_restored_after_the_child_ends(returncode):
    sys.path.insert(0, _BENCH)
    import benchlib  # pylint: disable=import-outside-toplevel

    before = signal.getsignal(signal.SIGTERM)
    child = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({returncode})"])
    with benchlib.stop_child_on_sigterm(child):
        assert signal.getsignal(signal.SIGTERM) != before
        assert child.wait() == returncode
    assert signal.getsignal(signal.SIGTERM) is before

"""Child processes that die with their parent, whatever kills it.

A converter's writer processes and the search's local workers call
`die_with_parent` first thing (an executor's `initializer`, or
`subprocess.Popen(**child_kwargs())`, whose `preexec_fn` calls it and whose
environment names the parent for the child program to call it again): on
Linux the kernel then sends them SIGKILL when the process (strictly, the
thread) that started them ends, even by SIGKILL, where no handler of the
parent could run (`prctl(PR_SET_PDEATHSIG)`).

Where `prctl` is missing (macOS, the BSDs; or on Linux with
`DEEPLAB_DPC_NO_PRCTL=1`, which the tests set to exercise this path), a
daemon thread of the child polls its parent's pid every half second and
sends the child the signal once the parent is gone (the child was
re-parented). A `preexec_fn` runs before `exec`, where no thread survives,
so an exec'd child gets the watchdog from its program: every program's
`cli.run` calls `die_with_parent_from_env`, which reads the parent's pid
that `child_kwargs` put in `DEEPLAB_DPC_PARENT_PID`. Plain `python -c`
probes without it (`training/speed.py`, `export/litert_runner.py`) have
the kernel's signal only; they end by themselves within their timeout.

Spawned workers (`start_worker`, an executor's `initializer`) also import
TensorFlow first thing, without its C++ start-up lines (CUDA stubs, oneDNN's
note, cuInit) when their parent's programs keep them quiet
(`TF_CPP_MIN_LOG_LEVEL` set and not 0, as `flags.cli` sets it unless
`--verbosity` asks for them).
"""

import contextlib
import ctypes
import ctypes.util
import importlib
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1
# "1": never use prctl; the portable watchdog thread instead (for tests).
NO_PRCTL_ENV = "DEEPLAB_DPC_NO_PRCTL"
# The pid an exec'd child must die with (set by `child_kwargs`).
PARENT_ENV = "DEEPLAB_DPC_PARENT_PID"
# How often the watchdog reads the parent's pid, in seconds.
WATCHDOG_SECONDS = 0.5

PRCTL = "prctl"
WATCHDOG = "watchdog"


def _prctl_usable():
    return sys.platform.startswith("linux") and os.environ.get(NO_PRCTL_ENV, "") in (
        "",
        "0",
    )


def _set_pdeathsig(signum):
    """prctl(PR_SET_PDEATHSIG); False when the call is unavailable or fails."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch(gone, signum, seconds):
    while not gone():
        time.sleep(seconds)
    os.kill(os.getpid(), int(signum))


def _start_watchdog(gone, signum, seconds):
    threading.Thread(
        target=_watch,
        args=(gone, signum, seconds or WATCHDOG_SECONDS),
        name="die_with_parent",
        daemon=True,
    ).start()


def die_with_parent(
    parent_pid, signum=signal.SIGKILL, *, in_preexec=False, poll_seconds=None
):
    """Makes this process receive `signum` when its parent ends.

    Args:
      parent_pid: int, the parent's pid as the parent saw it (`os.getpid()`
        before starting this process): if it is already gone when this runs,
        this process ends at once.
      signum: the signal to receive; SIGKILL by default (no handler can
        delay it).
      in_preexec: bool, called between fork and exec (no thread would
        survive the exec: without prctl, nothing is set up here).
      poll_seconds: the watchdog's period (default `WATCHDOG_SECONDS`).

    Returns:
      "prctl" (the kernel's parent-death signal is set), "watchdog" (a
      daemon thread watches the parent) or None (in a preexec_fn without
      prctl: the child program must call `die_with_parent_from_env`).
    """
    if os.getppid() != parent_pid:  # The parent is gone already.
        os.kill(os.getpid(), int(signum))
    if _prctl_usable() and _set_pdeathsig(signum):
        if os.getppid() != parent_pid:  # The parent died before the prctl.
            os.kill(os.getpid(), int(signum))
        return PRCTL
    if in_preexec:
        return None
    _start_watchdog(lambda: os.getppid() != parent_pid, signum, poll_seconds)
    return WATCHDOG


def parent_death_preexec(signum=signal.SIGKILL):
    """A `preexec_fn` for `subprocess.Popen`: `die_with_parent` in the child.

    The signal survives the child's `exec` (not for set-user-ID programs).
    Without prctl it does nothing: use `child_kwargs`, whose environment
    lets the child program start the watchdog.
    """
    parent_pid = os.getpid()

    def preexec():
        die_with_parent(parent_pid, signum, in_preexec=True)

    return preexec


def wants_quiet_native_logs():
    """Whether TensorFlow's C++ start-up lines are to be hidden: the
    environment sets `TF_CPP_MIN_LOG_LEVEL` to a level above 0."""
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") not in ("", "0")


@contextlib.contextmanager
def native_stderr_silenced():
    """Sends what native code writes to file descriptor 2 to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly():
    """Imports TensorFlow and initialises its devices with file descriptor
    2 sent to /dev/null (their start-up lines go); returns the module."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with native_stderr_silenced():
        tf = importlib.import_module("tensorflow")
        tf.config.list_physical_devices()
    return tf


def start_worker(parent_pid, quiet_native_logs=False):
    """A spawned worker's `initializer`: `die_with_parent(parent_pid)`, then,
    when `quiet_native_logs`, TensorFlow imported without its start-up
    lines (the worker's tasks import it next).

    Args:
      parent_pid: int, the parent's pid (`os.getpid()` in the parent).
      quiet_native_logs: bool, the parent's `wants_quiet_native_logs()`.
    """
    die_with_parent(parent_pid)
    if quiet_native_logs:
        import_tensorflow_quietly()


def child_kwargs(env=None):
    """`subprocess.Popen`/`run` keyword arguments of a child that dies with us.

    Args:
      env: the child's environment (default: this process's).

    Returns:
      dict with "preexec_fn" (`parent_death_preexec()`) and "env" (`env` with
      `PARENT_ENV` set to this process's pid, for `die_with_parent_from_env`).
    """
    env = dict(os.environ if env is None else env)
    env[PARENT_ENV] = str(os.getpid())
    return {"preexec_fn": parent_death_preexec(), "env": env}


def die_with_parent_from_env():
    """`die_with_parent` for the pid `child_kwargs` left in the environment.

    The variable is removed first, so that this process's own children do
    not inherit a pid that is not their parent's. When that process is not
    this one's parent (a wrapper such as `sh -c` came between), the
    watchdog waits for it to end instead (the wrapper gets no signal).

    Returns:
      as `die_with_parent`, or None when the variable is unset or invalid.
    """
    value = os.environ.pop(PARENT_ENV, "")
    try:
        parent_pid = int(value)
    except ValueError:
        return None
    if parent_pid <= 1:
        return None
    if os.getppid() == parent_pid:
        return die_with_parent(parent_pid)
    if not _alive(parent_pid):
        os.kill(os.getpid(), signal.SIGKILL)
    _start_watchdog(lambda: not _alive(parent_pid), signal.SIGKILL, None)
    return WATCHDOG

"""Child processes that die with their parent, whatever kills it.

A converter's writer processes and the search's local workers call
`die_with_parent` first thing (an executor's `initializer`, or
`subprocess.Popen(preexec_fn=parent_death_preexec())`): on Linux the kernel
then sends them SIGKILL when the process (strictly, the thread) that started
them ends, even by SIGKILL, where no handler of the parent could run
(`prctl(PR_SET_PDEATHSIG)`). Elsewhere it does nothing; the converter's
workers still stop at their next example once their parent is gone.

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

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid, signum=signal.SIGKILL):
    """Makes this process receive `signum` when its parent ends (Linux).

    Args:
      parent_pid: int, the parent's pid as the parent saw it (`os.getpid()`
        before starting this process): if it is already gone when this runs,
        this process ends at once.
      signum: the signal to receive; SIGKILL by default (no handler can
        delay it).

    Returns:
      bool, whether the parent-death signal is set (False off Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:  # The parent died before the prctl.
        os.kill(os.getpid(), int(signum))
    return True


def parent_death_preexec(signum=signal.SIGKILL):
    """A `preexec_fn` for `subprocess.Popen`: `die_with_parent` in the child.

    The signal survives the child's `exec` (not for set-user-ID programs).
    """
    parent_pid = os.getpid()

    def preexec():
        die_with_parent(parent_pid, signum)

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

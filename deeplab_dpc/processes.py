"""Child processes that die with their parent, whatever kills it.

A converter's writer processes and the search's local workers call
`die_with_parent` first thing (an executor's `initializer`, or
`subprocess.Popen(preexec_fn=parent_death_preexec())`): on Linux the kernel
then sends them SIGKILL when the process (strictly, the thread) that started
them ends, even by SIGKILL, where no handler of the parent could run
(`prctl(PR_SET_PDEATHSIG)`). Elsewhere it does nothing; the converter's
workers still stop at their next example once their parent is gone.
"""

import ctypes
import ctypes.util
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

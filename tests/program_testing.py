"""Runs a program in a subprocess, as a test of a program does.

Not a test module: the test files import it as `import program_testing`
(pytest.ini puts tests/ on the path). `run` is `subprocess.run` from the
repository's root with the output captured as text and a timeout;
`environment` is the environment such a program gets (the `program_env`
fixture of tests/conftest.py).
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds a program may take (a loaded 2-core machine included).
TIMEOUT = 300


def environment(**changes):
    """A fresh environment for a program in a subprocess.

    TensorFlow's logs quiet, and the repository first on PYTHONPATH, as
    `python -m deeplab_dpc.<program>` from a checkout; then `changes`.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(changes)
    return env


def run(args, env, *, timeout=TIMEOUT, cwd=REPO, **kwargs):
    """Runs `args` to its end; its `subprocess.CompletedProcess`.

    stdout and stderr are captured as text; a non-zero exit raises nothing
    (the test checks `returncode`). `kwargs` go to `subprocess.run` (e.g.
    `input`).
    """
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def run_module(module, *flags, env, **kwargs):
    """`run` of `python -m module *flags` with this Python."""
    return run([sys.executable, "-m", module, *flags], env, **kwargs)

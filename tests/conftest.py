"""Test-wide settings and shared fixtures.

Every test: quiet TensorFlow logs, seeded randomness, a fresh Keras
session (and a garbage collection after each test module). On request:
parsed absl flags (`parsed_flags`), the environment of a program run in a
subprocess (`program_env`), and the built-in synthetic data set
(`synthetic_data`).
"""

import gc
import inspect
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # pylint: disable=g-import-not-at-top
from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from deeplab_dpc.data import synthetic  # pylint: disable=g-import-not-at-top
import program_testing  # pylint: disable=g-import-not-at-top


# Keras 3's clear_session also runs a full garbage collection, which takes
# seconds once the test process holds large (cached) models: after each test
# Keras' state is reset, and the collection runs once per test module.
_CLEAR_SESSION_KWARGS = (
    {"free_memory": False}
    if "free_memory" in inspect.signature(tf.keras.backend.clear_session).parameters
    else {}
)


@pytest.fixture(autouse=True)
def _seed():
    tf.keras.utils.set_random_seed(0)
    yield
    tf.keras.backend.clear_session(**_CLEAR_SESSION_KWARGS)


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage():
    yield
    gc.collect()


@pytest.fixture
def parsed_flags():
    """absl flags parsed (at their defaults) and restored after the test."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["test"])
    with flagsaver.flagsaver():
        yield


@pytest.fixture
def program_env():
    """A fresh environment for a program in a subprocess.

    TensorFlow's logs quiet, and the repository first on PYTHONPATH, as
    `python -m deeplab_dpc.<program>` from a checkout (tests/program_testing.py).
    """
    return program_testing.environment()


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """Builds the built-in synthetic data set once per set of arguments.

    Test modules that ask for the same arguments share the folder: tests
    must not write into it.

    Returns:
      a function: keyword arguments of `synthetic.build` but the folder
      (one writer process unless `num_workers` says otherwise) -> the
      folder of the train and val shards.
    """
    built = {}

    def build(**kwargs):
        kwargs = {"num_workers": 1, **kwargs}
        key = tuple(sorted(kwargs.items()))
        if key not in built:
            path = str(tmp_path_factory.mktemp("synthetic"))
            synthetic.build(path, **kwargs)
            built[key] = path
        return built[key]

    return build

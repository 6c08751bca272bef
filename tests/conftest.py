"""Shared fixtures: small seeded models built with the Keras under test.

The suite runs in four modes (see the Makefile): Keras 3 on TensorFlow (the reference mode),
legacy tf-keras (``TF_USE_LEGACY_KERAS=1``), and Keras 3 on JAX and on PyTorch;
``keras_cam._compat.keras`` is the one in use, so tests build their models with it. The cases
marked ``slow`` run in the reference mode only, unless ``KERAS_CAM_SLOW=all`` (tests/slow.py).
"""

import functools
import os
import pathlib
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from keras_cam import backend
from keras_cam._compat import LEGACY, keras

BACKEND = backend.name()

if BACKEND == "jax":
    # JAX compiles each jitted function anew in every test module (the caches are emptied after
    # each, see _seed_module), and a Keras initializer's random draw costs 1-2 s of XLA compilation
    # per weight shape. A compilation cache for this run only (an empty folder, removed at exit;
    # nothing is carried between runs) serves a program that was compiled before: the same
    # executable, so the same numbers. Subprocesses do not share it.
    import atexit
    import shutil
    import tempfile

    import jax

    _JAX_CACHE = tempfile.mkdtemp(prefix="keras-cam-tests-jax-cache-")
    atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_report_header(config):
    return f"keras-cam tests with {'tf-keras (legacy)' if LEGACY else 'Keras ' + keras.__version__} on {BACKEND}"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "tensorflow_only: TensorFlow by nature (SavedModel graphs, tf.distribute, tf.data, "
        "TensorBoard, legacy tf-keras): runs in the TensorFlow test modes, not under KERAS_BACKEND=jax/torch")
    config.addinivalue_line(
        "markers", "slow(covered_by): a slow case whose backend-dependent part the test named by "
        "covered_by checks in every mode: it runs in the reference mode (Keras 3 on TensorFlow), and in "
        "the others with KERAS_CAM_SLOW=all")


# The reference mode runs every case. The other three run every case too, except those marked
# ``slow``: each of these repeats, on a slow path, what its ``covered_by`` test already checks on
# that backend (test_cross_backend.py compares every method, target kind and metric with the
# reference, number by number, on seven models). KERAS_CAM_SLOW=all runs them in every mode.
from slow import RUNS_SLOW  # noqa: E402

_DESELECTED = []


@functools.lru_cache(maxsize=None)
def _test_names(file):
    """The test functions defined in ``tests/<file>`` (empty when there is no such file)."""
    path = pathlib.Path(__file__).parent / file
    return frozenset(re.findall(r"^def (test_\w+)\(", path.read_text(), re.M)) if path.exists() else frozenset()


def _check_covered_by(item):
    """A slow mark names the cases that cover it, as ``file.py::test_name``; each must exist."""
    covered_by = item.get_closest_marker("slow").kwargs.get("covered_by", "")
    named = re.findall(r"(test_\w+\.py)::(test_\w+)", covered_by)
    if not named:
        raise pytest.UsageError(f"{item.nodeid}: a slow mark must say which case covers it: "
                                f"slow(covered_by='test_file.py::test_name')")
    for file, name in named:
        if name not in _test_names(file):
            raise pytest.UsageError(f"{item.nodeid}: slow(covered_by=...) names {file}::{name}, which does not exist")


def pytest_collection_modifyitems(config, items):
    slow = [item for item in items if item.get_closest_marker("slow")]
    for item in slow:
        _check_covered_by(item)
    if slow and not RUNS_SLOW:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        _DESELECTED.extend(slow)
    if BACKEND == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"TensorFlow by nature; this run is on the {BACKEND} backend "
                                   f"(the TensorFlow test modes run it)")
    for item in items:
        if item.get_closest_marker("tensorflow_only"):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if _DESELECTED:
        terminalreporter.write_line(
            f"{len(_DESELECTED)} slow cases deselected: they run in the Keras 3 / TensorFlow mode "
            f"(KERAS_CAM_SLOW=all runs them here too)")


@pytest.fixture(scope="module", autouse=True)
def _seed_module():
    """Module-scoped fixtures are built before function-scoped ones: seed them too,
    so a module's models do not depend on which tests ran before it. After the module,
    on JAX, JAX's process-wide caches of compiled programs are emptied: the JAX run
    compiles thousands of programs in one process, and one CI run's process crashed
    inside XLA's compiler after 70 minutes (a segmentation fault, in a test that passes
    alone)."""
    keras.utils.set_random_seed(0)
    yield
    if keras.backend.backend() == "jax":
        import jax

        jax.clear_caches()


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)

"""Shared fixtures: small seeded models built with the Keras under test.

The suite runs twice (see the Makefile): with Keras 3, and with legacy
tf-keras (``TF_USE_LEGACY_KERAS=1``); ``keras_cam._compat.keras`` is the one
in use, so tests build their models with it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from keras_cam._compat import LEGACY, keras


def pytest_report_header(config):
    return f"keras-cam tests with {'tf-keras (legacy)' if LEGACY else 'Keras 3'}, TensorFlow {tf.__version__}"


@pytest.fixture(scope="module", autouse=True)
def _seed_module():
    """Module-scoped fixtures are built before function-scoped ones: seed them too,
    so a module's models do not depend on which tests ran before it."""
    keras.utils.set_random_seed(0)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)

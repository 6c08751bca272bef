"""Which cases every test mode runs, and which the reference mode alone (Keras 3 on TensorFlow).

The suite runs in four modes (see the Makefile). A case marked ``slow`` runs in the reference
mode, and in the other three only with ``KERAS_CAM_SLOW=all`` (tests/conftest.py). A case is
marked only when what it would check in another mode is checked there by a quicker case:

- A check repeated for every registered method runs, outside the reference mode, on one
  method per code path: the first registered name of each (module, base class) of
  ``keras_cam.methods``, e.g. Grad-CAM for the layer-gradient methods, Score-CAM for the
  streamed masked passes, LIME for the surrogates. The other methods share that path; that
  they compute the same numbers on every backend as on the reference one is
  test_cross_backend.py's comparison, for every method and target kind.
- ``covered_by`` names the case that covers the marked one in every mode.
- The property test (test_properties.py) draws 60 cases in the reference mode and 20 in
  the others: the same derandomized search, shorter.
"""

import os

import pytest

from keras_cam import backend, methods
from keras_cam._compat import LEGACY

REFERENCE = backend.name() == "tensorflow" and not LEGACY
EVERYWHERE = os.environ.get("KERAS_CAM_SLOW", "") == "all"
# Whether this run runs the slow cases (the reference mode, or KERAS_CAM_SLOW=all).
RUNS_SLOW = REFERENCE or EVERYWHERE

CROSS_BACKEND = "test_cross_backend.py::test_every_case_agrees_with_tensorflow"


def _path(name):
    cls = methods.get(name)
    return cls.__module__, cls.__mro__[1].__name__


def one_per_path(names=None):
    """The first registered method of each (module, base class) of ``keras_cam.methods``."""
    first = {}
    for name in methods.names() if names is None else names:
        first.setdefault(_path(name), name)
    return list(first.values())


def slow(covered_by):
    return pytest.mark.slow(covered_by=covered_by)


def each_method(names):
    """``names`` as pytest parameters. A registered method that shares its code path with an
    earlier one is marked slow, covered by this test on that one and by the cross-backend
    comparison. Names that are not registered (the guided methods) are kept."""
    registered = set(methods.names())
    first = {}
    params = []
    for name in names:
        if name not in registered:
            params.append(name)
            continue
        rep = first.setdefault(_path(name), name)
        params.append(name if rep == name else
                      pytest.param(name, marks=slow(f"this test on {rep!r}, and {CROSS_BACKEND}")))
    return params

"""Property-based: random small CNNs, input sizes, dtypes and targets.

Every explainer either returns finite maps in [0, 1] at the input's size, or
raises one of the documented errors (``ValueError``/``TypeError`` with a
message); never NaN, never an error from TensorFlow internals.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import keras_cam as kc
from keras_cam._compat import keras
from slow import RUNS_SLOW

EXPLAINERS = kc.methods.names(attention=False)  # every registered method (attention ones: test_attention.py)
CASES = {"run": 0, "maps": 0, "documented_errors": 0}


@st.composite
def architectures(draw):
    size = draw(st.integers(4, 24))
    channels = draw(st.sampled_from([1, 3]))
    convs = draw(st.lists(
        st.tuples(st.integers(1, 6), st.sampled_from([1, 3]), st.sampled_from(["relu", "linear", "tanh"])),
        min_size=1, max_size=3,
    ))
    pool = draw(st.booleans())
    head = draw(st.sampled_from(["gap", "flatten", "gap_keepdims"]))
    out = draw(st.sampled_from([("softmax", 3), (None, 4), ("sigmoid", 1), (None, 1)]))
    return size, channels, convs, pool, head, out


def build(size, channels, convs, pool, head, out):
    inp = keras.Input((size, size, channels))
    x = inp
    for i, (filters, kernel, act) in enumerate(convs):
        x = keras.layers.Conv2D(filters, kernel, padding="same", activation=act, name=f"conv{i}")(x)
        if pool and i == 0 and size >= 4:
            x = keras.layers.MaxPooling2D()(x)
    if head == "gap":
        x = keras.layers.GlobalAveragePooling2D()(x)
    elif head == "gap_keepdims":
        x = keras.layers.Flatten()(keras.layers.GlobalAveragePooling2D(keepdims=True)(x))
    else:
        x = keras.layers.Flatten()(x)
    activation, units = out
    return keras.Model(inp, keras.layers.Dense(units, activation=activation)(x))


images_dtypes = st.sampled_from(["float32", "float64", "uint8", "float16"])
targets_kinds = st.sampled_from(["none", "int", "list", "callable", "bad_int", "bad_len"])


# Derandomized (the same cases on every run, so CI is reproducible) and without
# the shrink phase, which can take minutes on TensorFlow models; a failure still
# reports its full failing case. Outside the reference mode the search is shorter (tests/slow.py).
@settings(max_examples=60 if RUNS_SLOW else 20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(arch=architectures(), method=st.sampled_from(EXPLAINERS), n=st.integers(1, 3),
       dtype=images_dtypes, target_kind=targets_kinds, seed=st.integers(0, 2**16))
def test_maps_are_finite_in_range_or_a_documented_error(arch, method, n, dtype, target_kind, seed):
    CASES["run"] += 1
    rng = np.random.default_rng(seed)
    model = build(*arch)
    size, channels = arch[0], arch[1]
    scale = 255 if dtype == "uint8" else 1
    images = (rng.random((n, size, size, channels)) * scale).astype(dtype)
    classes = 2 if (arch[5] == ("sigmoid", 1)) else arch[5][1]
    targets = {
        "none": None,
        "int": int(rng.integers(classes)),
        "list": [int(t) for t in rng.integers(classes, size=n)],
        "callable": lambda out: out[:, 0],
        "bad_int": classes + 2,
        "bad_len": [0] * (n + 1),
    }[target_kind]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cam = kc.methods.create(method, model)
            maps = cam(images, targets=targets)
    except (ValueError, TypeError) as err:
        CASES["documented_errors"] += 1
        assert len(str(err)) > 20, "an error must say what was wrong"
        expected_error = target_kind in ("bad_int", "bad_len") or method == "cam"
        assert expected_error, f"{method} raised on valid input: {err}"
        return
    CASES["maps"] += 1
    assert target_kind not in ("bad_int", "bad_len"), "invalid targets were accepted"
    assert maps.shape == (n, size, size)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1


def test_cases_were_run():
    """The property test above really ran cases, and both outcomes occurred."""
    print(f"\nproperty cases: {CASES}")
    assert CASES["run"] >= (30 if RUNS_SLOW else 10) and CASES["maps"] > 0 and CASES["documented_errors"] > 0

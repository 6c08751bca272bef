"""A fuzz suite over the public API (hypothesis), on the backend the suite runs with.

It draws small models of every supported shape (1-D, 2-D, 3-D and token
layouts; single, list and dict outputs; plain, nested and multi-input), every
registered method, inputs that are valid or broken (NaN, Inf, wrong dtypes,
ranks and sizes) and targets of every kind, valid and invalid. The property:

- a valid call returns finite float32 maps in [0, 1] of the documented shape,
  equal to a second code path: each image explained alone, and (for a class
  target) a callable target built to pick the same logit of the selected output;
- an invalid call raises ValueError or TypeError whose message names the argument;
- the model is never changed: weights, and each layer's ``call`` and ``activation``.

Derandomized, with a fixed budget for CI (``KERAS_CAM_FUZZ_EXAMPLES``, 40 by
default); a nightly-sized run sets it to 1000 (see docs/troubleshooting.md).
"""

import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import keras_cam as kc
from keras_cam._compat import keras

EXAMPLES = int(os.environ.get("KERAS_CAM_FUZZ_EXAMPLES", "40"))
METHODS = kc.methods.names(attention=False)
# Methods whose definition needs a particular head, or class targets (FinerCAM compares class
# logits and refuses callables), and say so with a ValueError.
NEEDS_HEAD = {"cam", "finercam"}
# Methods on SLIC superpixels, which need 2-D or 3-D inputs (a signal takes `segments=`), and say so.
NEEDS_2D = {"lime", "kernelshap"}
TALLY = {"cases": 0, "maps": 0, "errors": 0}

LAYOUTS = {"1d": ((12, 2), keras.layers.Conv1D, 3), "2d": ((10, 10, 3), keras.layers.Conv2D, 3),
           "3d": ((4, 6, 6, 1), keras.layers.Conv3D, 2), "tokens": ((8, 8, 3), None, None)}


def _features(layout, inp):
    shape, conv, kernel = LAYOUTS[layout]
    if layout == "tokens":
        x = keras.layers.Conv2D(6, 2, strides=2, name="patches")(inp)
        x = keras.layers.Reshape((16, 6))(x)
        x = keras.layers.Dense(6, activation="gelu", name="target")(x)
        return keras.layers.GlobalAveragePooling1D()(x)
    x = conv(4, kernel, padding="same", activation="relu", name="first")(inp)
    x = conv(5, kernel, padding="same", name="target")(x)
    return {1: keras.layers.GlobalAveragePooling1D, 2: keras.layers.GlobalAveragePooling2D,
            3: keras.layers.GlobalAveragePooling3D}[len(shape) - 1]()(x)


def build(layout, outputs, wrapper, seed):
    keras.utils.set_random_seed(seed)
    shape = LAYOUTS[layout][0]
    inp = keras.Input(shape, name="image")
    if wrapper == "nested":
        inner = keras.Model(inp, _features(layout, inp), name="inner")
        outer_in = keras.Input(shape, name="image_outer")
        pooled, inputs = inner(outer_in), outer_in
    elif wrapper == "multi":
        side = keras.Input((2,), name="side")
        pooled = keras.layers.Concatenate()([_features(layout, inp), side])
        inputs = [inp, side]
    else:
        pooled, inputs = _features(layout, inp), inp
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(pooled)
    if outputs == "single":
        return keras.Model(inputs, cls), None
    box = keras.layers.Dense(2, name="box")(pooled)
    if outputs == "list":
        return keras.Model(inputs, [box, cls]), 1
    return keras.Model(inputs, {"cls": cls, "box": box}), "cls"


def _snapshot(model):
    layers = [layer for layer in model._flatten_layers()] if hasattr(model, "_flatten_layers") else model.layers
    return ([np.array(w) for w in model.get_weights()],
            {(id(l), a): id(l.__dict__.get(a)) for l in layers for a in ("call", "activation")})


def _select(out, output):
    return out if output is None else out[output]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
@given(layout=st.sampled_from(sorted(LAYOUTS)), outputs=st.sampled_from(["single", "list", "dict"]),
       wrapper=st.sampled_from(["plain", "nested", "multi"]), method=st.sampled_from(METHODS),
       broken=st.sampled_from(["ok"] * 6 + ["nan", "inf", "rank", "size", "string", "bool"]),
       target=st.sampled_from(["none", "int", "list", "callable"] * 2 + ["bad_int", "bad_len", "bool", "float"]),
       n=st.integers(1, 2), seed=st.integers(0, 1000))
def test_every_call_is_right_or_a_clear_error(layout, outputs, wrapper, method, broken, target, n, seed):
    TALLY["cases"] += 1
    rng = np.random.default_rng(seed)
    model, output = build(layout, outputs, wrapper, seed)
    shape = LAYOUTS[layout][0]
    images = rng.random((n,) + shape).astype("float32")
    side = rng.random((n, 2)).astype("float32")
    args = {"ok": images, "nan": np.where(images > 0.9, np.nan, images), "inf": np.where(images > 0.9, np.inf, images),
            "rank": images[..., 0], "size": rng.random((n,) + tuple(s + 1 for s in shape[:-1]) + shape[-1:]),
            "string": "image.png", "bool": images > 0.5}[broken]
    given_input = [args, side] if wrapper == "multi" else args
    k = int(rng.integers(3))
    targets = {"none": None, "int": k, "list": [k] * n, "callable": lambda out: _select(out, output)[:, k],
               "bad_int": 7, "bad_len": [0] * (n + 1), "bool": True, "float": 1.5}[target]
    valid = broken == "ok" and target in ("none", "int", "list", "callable")
    before = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cam = kc.methods.create(method, model, output=output)
            maps = cam(given_input, targets=targets)
        except (ValueError, TypeError) as err:
            TALLY["errors"] += 1
            message = str(err)
            assert len(message) > 20 and len(message) < 2000, message
            if layout == "1d" and method in NEEDS_2D:  # refused when built, before the input is read
                assert "segments=" in message, message
                return
            assert not valid or method in NEEDS_HEAD, f"{method} refused a valid call: {message}"
            names = {"nan": "NaN", "inf": "Inf", "rank": "shape", "size": "shape", "string": "string",
                     "bool": "dtype"}
            if broken in names:
                assert names[broken] in message, message
            elif target.startswith("bad") or target in ("bool", "float"):
                assert "target" in message, message
            return
        finally:
            after = _snapshot(model)
            assert all(np.array_equal(a, b) for a, b in zip(before[0], after[0])), "weights changed"
            assert before[1] == after[1], "a layer's call or activation was left changed"
    TALLY["maps"] += 1
    assert valid, f"an invalid call ({broken}, {target}) returned maps"
    spatial = shape[:-1]
    assert maps.shape == (n,) + spatial and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    # Second paths: each image alone; a class target as a callable on the selected output.
    for i in range(n):
        alone = [images[i:i + 1], side[i:i + 1]] if wrapper == "multi" else images[i:i + 1]
        one = targets[i:i + 1] if isinstance(targets, list) else targets
        np.testing.assert_allclose(cam(alone, targets=one)[0], maps[i], atol=2e-4)
    if target == "int" and method not in NEEDS_HEAD:
        same = cam(given_input, targets=lambda out: _select(out, output)[:, k])
        np.testing.assert_allclose(same, maps, atol=2e-4)


def test_the_fuzz_cases_ran():
    """The property test above ran its budget, and both outcomes occurred."""
    print(f"\nfuzz cases: {TALLY}")
    assert TALLY["cases"] >= min(EXAMPLES, 30) and TALLY["maps"] > 0 and TALLY["errors"] > 0

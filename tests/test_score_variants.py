"""ISCAM and SSCAM against an independent implementation written here from their definitions.

The reference loops over images, channels and steps/samples one at a time: it reads
the target layer through a rebuilt sub-model, resizes each channel with
``tf.image.resize``, scales it to [0, 1] in numpy, varies the mask (``(i / steps) M``;
``M + noise * eps`` with ``eps`` drawn by ``keras_cam.random.normal_numpy`` (the
counter-based draw computed in numpy) from ``(seed, k * samples + j)``) and scores the masked input with the head's weights in
float64. It shares no code with ``keras_cam.methods.score`` (which streams the
(image, channel, repeat) triples through the model in batches).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_cam as kc
from keras_cam._compat import keras, to_host
from keras_cam.random import normal_numpy
from keras_cam.methods.score import ISCAM, SSCAM, ScoreCAM
from test_gradcam import traces

SIZE, T = 16, 24


def image_model():
    keras.utils.set_random_seed(5)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(5, 3, strides=2, padding="same", activation="relu", name="target")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head")(x))
    w, b = model.get_layer("head").get_weights()
    model.get_layer("head").set_weights([6.0 * w, b])  # classes that differ
    return model


def signal_model():
    keras.utils.set_random_seed(6)
    inp = keras.Input((T, 2))
    x = keras.layers.Conv1D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv1D(5, 3, strides=2, padding="same", activation="relu", name="target")(x)
    x = keras.layers.GlobalAveragePooling1D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head")(x))
    w, b = model.get_layer("head").get_weights()
    model.get_layer("head").set_weights([6.0 * w, b])
    return model


@pytest.fixture(scope="module")
def models():
    return {"image": image_model(), "signal": signal_model()}


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(7)
    return {"image": rng.uniform(-1, 2, size=(3, SIZE, SIZE, 3)).astype("float32"),
            "signal": rng.uniform(-1, 2, size=(3, T, 2)).astype("float32")}


def sub(model, name):
    return keras.Model(model.input, model.get_layer(name).output)


def logits(model, x):
    """Pre-softmax scores from the head's weights, float64."""
    feats = to_host(sub(model, "gap")(x)).astype(np.float64)
    w, b = (v.astype(np.float64) for v in model.get_layer("head").get_weights())
    return feats @ w + b


def up(channel, size):
    """One channel ``(*s,)`` resized to ``size`` bilinearly (a signal as a ``T x 1`` image)."""
    if len(size) == 1:
        return tf.image.resize(channel[:, None, None], (size[0], 1), "bilinear").numpy()[:, 0, 0]
    return tf.image.resize(channel[..., None], size, "bilinear").numpy()[..., 0]


def reference(model, x, vary, repeats, weighting="reference"):
    """Raw maps ``(N, *s)`` of a Score-CAM whose channel score is the mean over ``repeats``
    of the score of ``x * vary(M_k, k, r)``."""
    acts = to_host(sub(model, "target")(x)).astype(np.float64)
    classes = logits(model, x).argmax(axis=1)
    size = x.shape[1:-1]
    maps = []
    for n in range(len(x)):
        a, c = acts[n], classes[n]
        w = np.zeros(a.shape[-1])
        live = []
        for k in range(a.shape[-1]):
            m = up(a[..., k].astype(np.float32), size).astype(np.float64)
            if m.max() - m.min() <= 1e-6 * max(abs(m.max()), abs(m.min())):
                continue
            live.append(k)
            m = (m - m.min()) / (m.max() - m.min())
            values = []
            for r in range(repeats):
                z = logits(model, (x[n:n + 1] * vary(m, k, r)[None, ..., None]).astype(np.float32))[0]
                if weighting == "reference":
                    e = np.exp(z - z.max())
                    values.append(e[c] / e.sum())
                else:
                    values.append(z[c])
            w[k] = np.mean(values)
        if weighting == "paper" and live:
            e = np.exp(w[live] - w[live].max())
            w[live] = e / e.sum()
        maps.append(np.maximum((a * w).sum(-1), 0.0))
    return np.stack(maps)


def iscam_vary(steps):
    return lambda m, k, r: (r + 1) / steps * m


def sscam_vary(samples, noise, seed):
    def vary(m, k, r):
        eps = normal_numpy(seed, [k * samples + r], m.shape)[0].astype(np.float32)
        return m + noise * eps
    return vary


def assert_close(got, want, rtol=1e-5):
    scale = max(float(np.abs(want).max()), 1e-12)
    assert np.abs(np.asarray(got) - want).max() <= rtol * scale


def raw(cam, x, **kw):
    return cam(x, upsample=False, normalize=False, **kw)


# ----------------------------------------------------------------------------- definitions

@pytest.mark.parametrize("kind", ["image", "signal"])
@pytest.mark.parametrize("weighting", ["reference", "paper"])
def test_iscam_matches_the_definition(models, inputs, kind, weighting):
    model, x = models[kind], inputs[kind]
    cam = ISCAM(model, "target", steps=3, weighting=weighting, verbose=0, batch_size=7)
    assert_close(raw(cam, x), reference(model, x, iscam_vary(3), 3, weighting))


@pytest.mark.parametrize("kind", ["image", "signal"])
def test_sscam_matches_the_definition(models, inputs, kind):
    model, x = models[kind], inputs[kind]
    cam = SSCAM(model, "target", samples=3, noise=0.3, seed=11, verbose=0, batch_size=5)
    assert_close(raw(cam, x), reference(model, x, sscam_vary(3, 0.3, 11), 3))


@pytest.mark.parametrize("kind", ["image", "signal"])
def test_one_step_and_no_noise_are_score_cam(models, inputs, kind):
    model, x = models[kind], inputs[kind]
    want = raw(ScoreCAM(model, "target", verbose=0), x)
    assert_close(raw(ISCAM(model, "target", steps=1, verbose=0), x), want)
    assert_close(raw(SSCAM(model, "target", samples=4, noise=0.0, verbose=0), x), want)
    # and the final maps too
    np.testing.assert_allclose(SSCAM(model, "target", samples=2, noise=0, verbose=0)(x),
                               ScoreCAM(model, "target", verbose=0)(x), atol=1e-5)


def test_sscam_seeds(models, inputs):
    model, x = models["image"], inputs["image"]
    a = raw(SSCAM(model, "target", samples=2, seed=1, verbose=0), x)
    b = raw(SSCAM(model, "target", samples=2, seed=1, verbose=0), x)
    c = raw(SSCAM(model, "target", samples=2, seed=2, verbose=0), x)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4 * np.abs(a).max()


# ----------------------------------------------------------------------------- invariances

@pytest.mark.parametrize("cls, kw", [(ISCAM, {"steps": 2}), (SSCAM, {"samples": 2})])
def test_batch_equals_single_and_batch_size_does_not_matter(models, inputs, cls, kw):
    model, x = models["image"], inputs["image"]
    cam = cls(model, "target", verbose=0, batch_size=3, **kw)
    batch = cam(x, targets=1)
    for i in range(len(x)):
        np.testing.assert_allclose(cam(x[i], targets=1), batch[i], atol=1e-5)
    other = cls(model, "target", verbose=0, batch_size=64, **kw)(x, targets=1)
    np.testing.assert_allclose(other, batch, atol=1e-5)
    assert cam.tracing_count == traces(2)  # a batch of 3 and a single image: one trace per shape


def test_passes_and_progress(models, inputs, capsys):
    """steps x live channels masked passes per image, counted by the progress bar."""
    model, x = models["image"], inputs["image"]
    acts = to_host(sub(model, "target")(x))
    live = sum(int(a[..., k].max() > a[..., k].min()) for a in acts for k in range(acts.shape[-1]))
    ISCAM(model, "target", steps=3, verbose=1, batch_size=8)(x)
    assert f"{3 * live}/{3 * live}" in capsys.readouterr().out


def test_model_left_unchanged(models, inputs):
    model, x = models["image"], inputs["image"]
    before = to_host(model(x))
    SSCAM(model, "target", samples=2, verbose=0)(x)
    np.testing.assert_array_equal(to_host(model(x)), before)
    assert all("call" not in vars(layer) for layer in model.layers)


def test_exported():
    assert kc.ISCAM is ISCAM and kc.SSCAM is SSCAM
    assert kc.methods.get("iscam") is ISCAM and kc.methods.get("SS-CAM") is SSCAM


@pytest.mark.parametrize("cls, kwargs, word", [
    (ISCAM, {"steps": 0}, "steps"),
    (ISCAM, {"steps": 1.5}, "steps"),
    (SSCAM, {"samples": 0}, "samples"),
    (SSCAM, {"noise": -0.1}, "noise"),
    (SSCAM, {"seed": 0.5}, "seed"),
    (SSCAM, {"weighting": "mean"}, "weighting"),
])
def test_bad_arguments(models, cls, kwargs, word):
    with pytest.raises(ValueError, match=word):
        cls(models["image"], "target", **kwargs)

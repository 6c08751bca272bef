"""Score-CAM against an independent implementation written here from the definition.

The reference below loops over images and channels one at a time in numpy,
reads the target layer through a rebuilt sub-model and the class scores from
the head's weights (``features @ W + b``), so it shares no code path with
``keras_cam.methods.score`` (which streams (image, channel) pairs in batches
through the model inside one compiled function).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_cam as kc
from keras_cam import backend
from keras_cam._compat import keras, ops, to_host
from keras_cam.methods.score import ScoreCAM
from test_ablation import Counter, _reset, streamed_rows
from test_gradcam import traces

SIZE = 16
DEAD, FLAT = 1, 2  # target-layer channels forced constant: all 0, and all 0.5


def build(head, count=False, channels=6):
    inp = keras.Input((SIZE, SIZE, 3))
    x = Counter(name="counter")(inp) if count else inp
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation="relu", name="target")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    units = 1 if head == "sigmoid" else 3
    act = {"softmax": "softmax", "sigmoid": "sigmoid"}.get(head)
    out = keras.layers.Dense(units, activation=act, name="head")(x)
    if head == "softmax_layer":
        out = keras.layers.Softmax(name="probs")(out)
    model = keras.Model(inp, out)
    k, b = model.get_layer("target").get_weights()
    b[DEAD] = -1e3                 # ReLU of a large negative number: exactly 0 everywhere
    k[..., FLAT], b[FLAT] = 0.0, 0.5  # no kernel: the bias everywhere
    model.get_layer("target").set_weights([k, b])
    w, c = model.get_layer("head").get_weights()
    model.get_layer("head").set_weights([8.0 * w, c])  # confident enough that classes differ
    return model


# ----------------------------------------------------------------------------- the reference

_SUBMODELS = {}


def submodel(model, name):
    """``model``'s input to layer ``name``'s output, rebuilt once (a path independent of keras_cam)."""
    key = (id(model), name)
    if key not in _SUBMODELS:
        _SUBMODELS[key] = keras.Model(model.input, model.get_layer(name).output)
    return _SUBMODELS[key]


def activations(model, x):
    return to_host(submodel(model, "target")(x))


def head_logits(model, x):
    """Pre-activation class scores ``(N, C)`` in float64, from the head's own weights."""
    feats = to_host(submodel(model, "gap")(x)).astype(np.float64)
    w, b = (v.astype(np.float64) for v in model.get_layer("head").get_weights())
    z = feats @ w + b
    return np.concatenate([-z, z], axis=1) if z.shape[1] == 1 else z


def probs_of(logits, head):
    if head == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))  # [-z, z] -> [1 - p, p]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def reference(model, head, x, weighting, classes=None, max_channels=None, baseline=0.0, score=None):
    """``(maps at the layer's resolution, classes, channel weights)``, per the definition,
    one channel at a time."""
    acts = activations(model, x)
    logits = head_logits(model, x)
    classes = logits.argmax(axis=1) if classes is None else np.asarray(classes)
    out, weights = [], []
    for n in range(len(x)):
        a, c = acts[n], classes[n]
        ks = [k for k in range(a.shape[-1]) if a[..., k].max() != a[..., k].min()]
        if max_channels is not None:
            ks = sorted(ks, key=lambda k: -a[..., k].var())[:max_channels]
        w = np.zeros(a.shape[-1])
        for k in ks:
            up = tf.image.resize(a[None, :, :, k, None], (SIZE, SIZE), method="bilinear").numpy()[0, :, :, 0]
            mask = (up - up.min()) / (up.max() - up.min())
            z = head_logits(model, x[n:n + 1] * mask[None, :, :, None])
            if score is not None:
                w[k] = score(z)[0]
            elif weighting == "reference":
                w[k] = probs_of(z, head)[0, c]
            else:
                base = head_logits(model, np.full_like(x[n:n + 1], baseline))
                w[k] = z[0, c] - base[0, c]
        if weighting == "paper" and ks:
            e = np.exp(w[ks] - w[ks].max())
            w[ks] = e / e.sum()
        out.append(np.maximum(np.einsum("hwk,k->hw", a.astype(np.float64), w), 0.0))
        weights.append(w)
    return np.stack(out), classes, np.stack(weights)


def assert_close_to_max(actual, expected, rtol=1e-5):
    """Agreement to ``rtol`` relative to each map's maximum."""
    for got, want in zip(actual, expected):
        scale = max(np.abs(want).max(), 1e-12)
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


# ----------------------------------------------------------------------------- fixtures

HEADS = ("softmax", "logits", "sigmoid", "softmax_layer")


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(1)
    return {h: build(h) for h in HEADS}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(-1, 2, size=(3, SIZE, SIZE, 3)).astype("float32")


_CAMS = {}


def cam_of(model, **kw):
    """One silent explainer per model and options, shared by the tests (each traces once)."""
    kw.setdefault("verbose", 0)
    key = (id(model), tuple(sorted(kw.items())))
    if key not in _CAMS:
        _CAMS[key] = ScoreCAM(model, "target", **kw)
    return _CAMS[key]


# ----------------------------------------------------------------------------- agreement

@pytest.mark.parametrize("weighting", ["reference", "paper"])
@pytest.mark.parametrize("head", HEADS)
def test_matches_independent_implementation(models, images, head, weighting):
    model = models[head]
    acts = activations(model, images)
    assert (acts[..., DEAD] == 0).all() and (acts[..., FLAT] == 0.5).all()  # the constant channels
    want, classes, _ = reference(model, head, images, weighting)
    result = cam_of(model, weighting=weighting).explain(images, upsample=False, normalize=False)
    np.testing.assert_array_equal(result.targets, classes)
    assert want.max() > 0
    assert_close_to_max(result.maps, want)
    # The reported probability is the model's own output (never a second softmax).
    p = to_host(model(images))
    expect_p = p[np.arange(3), classes] if head != "sigmoid" else np.where(classes == 1, p[:, 0], 1 - p[:, 0])
    if head != "logits":
        np.testing.assert_allclose(result.probabilities, expect_p, rtol=1e-5)


@pytest.mark.parametrize("weighting", ["reference", "paper"])
def test_explicit_targets_and_final_maps(models, images, weighting):
    model = models["softmax"]
    classes = [2, 0, 1]
    raw, _, _ = reference(model, "softmax", images, weighting, classes=classes)
    up = tf.image.resize(raw[..., None].astype("float32"), (SIZE, SIZE), method="bilinear").numpy()[..., 0]
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    want = (up - lo) / (hi - lo)
    got = cam_of(model, weighting=weighting)(images, targets=classes)
    assert got.shape == (3, SIZE, SIZE)
    assert_close_to_max(got, want)


def test_paper_weighting_does_not_depend_on_the_baseline(models, images):
    model = models["logits"]
    zeros, _, _ = reference(model, "logits", images, "paper", baseline=0.0)
    other, _, _ = reference(model, "logits", images, "paper", baseline=0.7)
    assert_close_to_max(other, zeros, rtol=1e-9)  # softmax_k is shift-invariant
    assert_close_to_max(cam_of(model, weighting="paper")(images, upsample=False, normalize=False), other)


def test_callable_target_is_the_weight(models, images):
    model = models["logits"]
    want, _, _ = reference(model, "logits", images, "reference", score=lambda z: z[:, 1])
    got = cam_of(model)(images, targets=lambda out: out[:, 1], upsample=False, normalize=False)
    assert_close_to_max(got, want)


def test_linearize_false_gives_the_same_probabilities(models, images):
    model = models["softmax"]
    a = cam_of(model)(images, upsample=False, normalize=False)
    b = cam_of(model, linearize=False)(images, upsample=False, normalize=False)
    assert_close_to_max(b, a)


def test_eigen_smooth_is_the_principal_component_of_the_weighted_channels(models, images):
    model = models["softmax"]
    _, _, w = reference(model, "softmax", images, "reference")
    weighted = activations(model, images).astype(np.float64) * w[:, None, None, :]
    want = []
    for wa in weighted:
        flat = wa.reshape(-1, wa.shape[-1])
        centred = flat - flat.mean(axis=0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        proj = u[:, 0] * s[0]
        proj = proj if (proj * centred.sum(axis=1)).sum() >= 0 else -proj
        want.append(np.maximum(proj, 0).reshape(wa.shape[:2]))
    got = cam_of(model, eigen_smooth=True)(images, upsample=False, normalize=False)
    assert_close_to_max(got, np.stack(want), rtol=1e-4)


def test_aug_smooth_is_accepted(models, images):
    plain = cam_of(models["softmax"])(images)
    smooth = cam_of(models["softmax"], aug_smooth=True)(images)
    assert smooth.shape == plain.shape and np.isfinite(smooth).all()
    assert smooth.min() >= 0 and smooth.max() <= 1 and not np.allclose(smooth, plain)


# ----------------------------------------------------------------------------- Faster Score-CAM

@pytest.mark.parametrize("weighting", ["reference", "paper"])
def test_max_channels(models, images, weighting):
    model = models["softmax"]
    full = cam_of(model, weighting=weighting)(images, upsample=False, normalize=False)
    every = cam_of(model, weighting=weighting, max_channels=6)(images, upsample=False, normalize=False)
    np.testing.assert_array_equal(every, full)
    want, _, _ = reference(model, "softmax", images, weighting, max_channels=2)
    top2 = cam_of(model, weighting=weighting, max_channels=2)(images, upsample=False, normalize=False)
    assert_close_to_max(top2, want)
    assert not np.allclose(top2, full)


def test_channel_choice_closed_form():
    a = np.zeros((1, 2, 2, 4), np.float32)
    a[0, :, :, 0] = [[0, 1], [0, 1]]   # variance 0.25
    a[0, :, :, 1] = [[0, 4], [0, 0]]   # variance 3
    a[0, :, :, 2] = 7.0                # constant: never run
    a[0, :, :, 3] = [[1, 2], [1, 2]]   # variance 0.25
    a = ops.convert_to_tensor(a)
    np.testing.assert_array_equal(to_host(ScoreCAM.channels(a)), [[True, True, False, True]])
    np.testing.assert_array_equal(to_host(ScoreCAM.channels(a, 1)), [[False, True, False, False]])
    # Asking for more channels than are live never brings a constant one in.
    np.testing.assert_array_equal(to_host(ScoreCAM.channels(a, 4)), [[True, True, False, True]])


# ----------------------------------------------------------------------------- execution

@pytest.fixture(scope="module")
def counted():
    keras.utils.set_random_seed(2)
    return build("softmax", count=True, channels=8)


@pytest.mark.parametrize("batch_size", [1, 7])
def test_constant_channels_are_not_run(counted, images, batch_size):
    acts = activations(counted, images)
    live = (acts.max(axis=(1, 2)) != acts.min(axis=(1, 2))).sum()
    assert live == 3 * 6  # the two forced channels are constant in every image
    cam = cam_of(counted, batch_size=batch_size)
    counter = counted.get_layer("counter")
    _reset(counter)
    cam(images)
    # one pass per image, plus one masked pass per non-constant channel of each image
    assert counter.count == 3 + streamed_rows(live, batch_size)
    _reset(counter)
    cam_of(counted, batch_size=batch_size, max_channels=2)(images)
    assert counter.count == 3 + streamed_rows(3 * 2, batch_size)


def test_batch_size_does_not_change_the_maps(counted, images):
    maps = [cam_of(counted, batch_size=b)(images, upsample=False, normalize=False) for b in (1, 7, 64)]
    for other in maps[1:]:
        assert_close_to_max(other, maps[0], rtol=1e-6)


def test_one_trace_per_input_shape_and_single_image(models, images):
    cam = ScoreCAM(models["softmax"], "target", verbose=0)
    batch = cam(images)
    cam(images, targets=[0, 1, 2])
    cam(images[::-1].copy(), targets=2)
    assert cam.tracing_count == traces(1)
    one = cam(images[1])
    assert one.shape == (SIZE, SIZE)
    assert_close_to_max(one[None], batch[1:2], rtol=1e-6)


def test_no_constant_channel_left_gives_zero_maps(images):
    keras.utils.set_random_seed(4)
    model = build("logits")
    k, b = model.get_layer("target").get_weights()
    model.get_layer("target").set_weights([k, np.full_like(b, -1e3)])
    for weighting in ("reference", "paper"):
        with pytest.warns(UserWarning, match="all zeros"):
            maps = cam_of(model, weighting=weighting)(images)
        assert np.isfinite(maps).all() and (maps == 0).all()


def test_progress_bar_only_when_verbose(models, images, capsys):
    ScoreCAM(models["softmax"], "target", verbose=0, batch_size=4)(images)
    assert capsys.readouterr().out == ""
    ScoreCAM(models["softmax"], "target", verbose=1, batch_size=4)(images)
    assert "12/12" in capsys.readouterr().out  # 3 images x 4 non-constant channels


def test_model_left_unchanged(models, images):
    model = models["softmax"]
    before, activation = to_host(model(images)), model.get_layer("head").activation
    ScoreCAM(model, "target", verbose=0)(images)
    np.testing.assert_array_equal(to_host(model(images)), before)
    assert "call" not in vars(model.get_layer("target"))
    assert model.get_layer("head").activation is activation


def test_exported():
    assert kc.ScoreCAM is ScoreCAM


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, word", [
    ({"weighting": "softmax"}, "weighting"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": None}, "batch_size"),
    ({"max_channels": 0}, "max_channels"),
    ({"max_channels": 2.5}, "max_channels"),
    ({"verbose": 2}, "verbose"),
])
def test_bad_arguments(models, kwargs, word):
    with pytest.raises(ValueError, match=word):
        ScoreCAM(models["softmax"], "target", **kwargs)


def test_layer_without_a_spatial_map(models, images):
    # Rejected when the explainer is built, before any tracing (see also test_layout.py).
    with pytest.raises(ValueError, match=r"'gap' outputs shape \(None, \d+\), which is not a feature map"):
        ScoreCAM(models["softmax"], "gap", verbose=0)


def out_of_memory():
    """The error the backend raises when an allocation fails."""
    if backend.name() == "jax":
        import jax
        return jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4096 bytes.")
    if backend.name() == "torch":
        import torch
        return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 KiB.")
    return tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")


def test_out_of_memory_suggests_a_smaller_batch(models, images, monkeypatch):
    cam = ScoreCAM(models["softmax"], "target", batch_size=64, verbose=0)

    def exhausted(x, rows=None):
        raise out_of_memory()

    monkeypatch.setattr(cam.graph, "run", exhausted)
    with pytest.raises(MemoryError, match=r"smaller batch_size.*batch_size=16"):
        cam(images)

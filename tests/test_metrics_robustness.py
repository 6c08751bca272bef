"""Robustness, complexity and randomization metrics: closed forms, loops written from the papers, and Quantus 0.6.

Second code paths:
- closed forms on a linear toy whose map is the input itself (Integrated Gradients of
  ``S(x) = sum x`` from a zero baseline is ``x``): the local Lipschitz estimate and the
  relative input stability are 1, average sensitivity is ``mean ||d|| / ||x||``, continuity
  is ``||x_t - x||_1 / ||x_t - x||_2``;
- each metric written out as a loop over images and samples from its paper, on the draws
  documented by :mod:`keras_cam.random` (computed with numpy);
- Quantus 0.6 on the same model, maps and settings (TensorFlow by nature: Quantus runs the
  Keras model through TensorFlow): deterministic metrics agree per image, random ones in
  the mean within their Monte-Carlo spread.
"""

import functools
import warnings

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import metrics
from keras_cam import random as krandom
from keras_cam._compat import LEGACY, keras

# Quantus 0.6 rebuilds the model's head with Keras 3 (keras.Model around model.input), which refuses
# tf-keras tensors: the comparisons run in the Keras 3 TensorFlow mode.
NOT_LEGACY = pytest.mark.skipif(LEGACY, reason="Quantus 0.6 wraps models with Keras 3, not tf-keras")


class RawIG(kc.IntegratedGradients):
    """Integrated Gradients returning its signed attributions ``(N, *S, C)`` (no scaling)."""

    def explain(self, images, targets=None, upsample=True, normalize=True):
        return super().explain(images, targets, upsample=upsample, normalize=False)


def linear_model(shape, seed=0):
    """``S_c(x) = w_c sum(x) + b_c`` with ``w = (1, 0.5, -1)``; class 0 wins by its bias."""
    inp = keras.Input(shape)
    flat = keras.layers.Flatten()(inp)
    dense = keras.layers.Dense(3, activation="softmax")
    out = dense(flat)
    model = keras.Model(inp, out)
    size = int(np.prod(shape))
    dense.set_weights([np.tile(np.array([[1.0, 0.5, -1.0]], np.float32), (size, 1)),
                       np.array([50.0, 0.0, 0.0], np.float32)])
    return model


def conv_model(shape, classes=3, seed=0, padding="same", init_seed=None):
    """A tiny conv classifier (1-D or 2-D from ``shape``), softmax head, layer "target"."""
    keras.utils.set_random_seed(seed)
    conv = {2: keras.layers.Conv1D, 3: keras.layers.Conv2D}[len(shape)]
    pool = {2: keras.layers.GlobalAveragePooling1D, 3: keras.layers.GlobalAveragePooling2D}[len(shape)]
    kw = {}
    if init_seed is not None:  # seeded initializers: a clone gets the same initial weights (Quantus's MPRT clones)
        kw = dict(kernel_initializer=keras.initializers.GlorotUniform(seed=init_seed),
                  bias_initializer=keras.initializers.RandomNormal(seed=init_seed + 1))
    inp = keras.Input(shape)
    x = conv(4, 3, padding=padding, activation="relu", name="target", **kw)(inp)
    dense_kw = {} if init_seed is None else dict(
        kernel_initializer=keras.initializers.GlorotUniform(seed=init_seed + 2),
        bias_initializer=keras.initializers.RandomNormal(seed=init_seed + 3))
    out = keras.layers.Dense(classes, activation="softmax", **dense_kw)(pool()(x))
    return keras.Model(inp, out)


def unit_images(shape, n, seed):
    """Images in [0, 1] whose value range is exactly 1 (min 0, max 1), so fractions of the range are absolute."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.05, 0.95, (n,) + shape).astype(np.float32)
    flat = x.reshape(n, -1)
    flat[:, 0], flat[:, 1] = 0.0, 1.0
    return x


def uniform_draws(seed, ids, shape):
    return krandom.uniform_numpy(seed, ids, shape)


# ----------------------------------------------------------------------------- closed forms on the linear toy

@pytest.fixture(scope="module")
def toy():
    shape = (6, 5, 1)
    model = linear_model(shape)
    images = unit_images(shape, 3, seed=1)
    return model, images, RawIG(model, steps=4)


def test_toy_map_is_the_input(toy):
    model, images, ig = toy
    np.testing.assert_allclose(ig(images, 0).reshape(images.shape), images, atol=1e-5)


def test_local_lipschitz_and_relative_input_stability_are_one_on_the_toy(toy):
    _, images, ig = toy
    lle = metrics.local_lipschitz_estimate(ig, images, samples=6, std=0.05, reduce=None, batch_size=3)
    np.testing.assert_allclose(lle, 1.0, atol=2e-4)
    ris = metrics.relative_input_stability(ig, images, samples=6, reduce=None, batch_size=3)
    np.testing.assert_allclose(ris, 1.0, rtol=2e-3)


def test_avg_sensitivity_closed_form_on_the_toy(toy):
    _, images, ig = toy
    radius, samples, seed = 0.1, 5, 3
    got = metrics.avg_sensitivity(ig, images, radius=radius, samples=samples, seed=seed, reduce=None, batch_size=3)
    n, shape = len(images), images.shape[1:]
    ids = (np.arange(n)[:, None] * samples + np.arange(samples)[None]).reshape(-1)
    d = ((2 * uniform_draws(seed, ids, shape) - 1) * radius).reshape(n, samples, -1)  # range 1
    expected = np.linalg.norm(d, axis=2).mean(axis=1) / np.linalg.norm(images.reshape(n, -1), axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_continuity_closed_form_on_the_toy(toy):
    _, images, ig = toy
    got = metrics.continuity(ig, images, steps=5, reduce=None, batch_size=3)
    width = images.shape[2]
    dx = (2 * width + 1) // 5
    expected = np.zeros(len(images))
    for i, x in enumerate(images):
        for t in -width + dx * np.arange(1, 6):
            if t == 0:
                continue
            moved = np.full_like(x, x.min())
            if t > 0:
                moved[:, t:] = x[:, :width - t]
            else:
                moved[:, :width + t] = x[:, -t:]
            diff = (moved - x).reshape(-1)
            expected[i] = max(expected[i], np.abs(diff).sum() / (np.linalg.norm(diff) + 1e-9))
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_relative_output_stability_closed_form_on_the_toy(toy):
    """``h(x) - h(x') = w sum(x - x')`` for the logits of the toy, so ROS is known from the draws."""
    _, images, ig = toy
    samples, seed = 4, 2
    got = metrics.relative_output_stability(ig, images, samples=samples, seed=seed, reduce=None, batch_size=3)
    n, shape = len(images), images.shape[1:]
    ids = (np.arange(n)[:, None] * samples + np.arange(samples)[None]).reshape(-1)
    d = (0.02 + 0.18 * uniform_draws(seed, ids, shape)).reshape(n, samples, -1)
    x = images.reshape(n, 1, -1).astype(np.float64)
    num = np.linalg.norm(d / (x + (x == 0) * 1e-6), axis=2)          # a zero divisor becomes eps
    den = np.abs(d.sum(axis=2)) * np.linalg.norm([1.0, 0.5, -1.0])
    np.testing.assert_allclose(got, (num / den).max(axis=1), rtol=2e-3)


# ----------------------------------------------------------------------------- loops from the papers, Grad-CAM

@pytest.fixture(scope="module", params=[(16,), (16, 16)], ids=["1d", "2d"])
def case(request):
    spatial = request.param
    shape = spatial + (2,)
    model = conv_model(shape, seed=len(spatial))
    images = unit_images(shape, 4, seed=len(spatial))
    return model, images, kc.GradCAM(model, "target")


def _ids(n, samples):
    return (np.arange(n)[:, None] * samples + np.arange(samples)[None]).reshape(-1)


def test_avg_sensitivity_and_lipschitz_loops(case):
    model, images, cam = case
    n, shape, samples, seed = len(images), images.shape[1:], 3, 5
    classes = model.predict(images, verbose=0).argmax(axis=1)
    base = cam(images, classes).reshape(n, -1).astype(np.float64)
    u = uniform_draws(seed, _ids(n, samples), shape).reshape((n, samples) + shape)
    z = krandom.normal_numpy(seed, _ids(n, samples), shape).reshape((n, samples) + shape)
    sens, lip = np.zeros(n), np.zeros(n)
    for k in range(samples):
        d = ((2 * u[:, k] - 1) * 0.2).astype(np.float32)                    # range 1
        moved = cam(images + d, classes).reshape(n, -1)
        sens += np.linalg.norm(moved - base, axis=1) / np.linalg.norm(base, axis=1) / samples
        g = (0.1 * z[:, k]).astype(np.float32)
        moved = cam(images + g, classes).reshape(n, -1)
        step = np.linalg.norm((images + g - images).reshape(n, -1).astype(np.float64), axis=1)
        lip = np.maximum(lip, np.linalg.norm(moved - base, axis=1) / (step + 1e-10))
    got = metrics.avg_sensitivity(cam, images, samples=samples, seed=seed, reduce=None, batch_size=4)
    np.testing.assert_allclose(got, sens, rtol=1e-3, atol=1e-5)
    got = metrics.local_lipschitz_estimate(cam, images, samples=samples, seed=seed, reduce=None, batch_size=4)
    np.testing.assert_allclose(got, lip, rtol=1e-3, atol=1e-5)


def test_relative_representation_stability_loop(case):
    model, images, cam = case
    n, shape, samples, seed = len(images), images.shape[1:], 3, 1
    classes = model.predict(images, verbose=0).argmax(axis=1)
    layer = keras.Model(model.inputs, model.get_layer("target").output)
    base = cam(images, classes).reshape(n, -1).astype(np.float64)
    rep = layer.predict(images, verbose=0).reshape(n, -1).astype(np.float64)
    u = uniform_draws(seed, _ids(n, samples), shape).reshape((n, samples) + shape)
    eps, worst = 1e-6, np.zeros(n)
    for k in range(samples):
        moved_x = images + (0.02 + 0.18 * u[:, k]).astype(np.float32)
        moved = cam(moved_x, classes).reshape(n, -1)
        rep2 = layer.predict(moved_x, verbose=0).reshape(n, -1).astype(np.float64)
        num = np.linalg.norm((base - moved) / (base + (base == 0) * eps), axis=1)
        den = np.linalg.norm((rep - rep2) / (rep + (rep == 0) * eps), axis=1)
        worst = np.maximum(worst, num / (den + (den == 0) * eps))
    got = metrics.relative_representation_stability(cam, images, samples=samples, seed=seed, reduce=None,
                                                 batch_size=4)
    np.testing.assert_allclose(got, worst, rtol=2e-3)


@functools.lru_cache(maxsize=None)
def _built(spatial):
    shape = spatial + (2,)
    model = conv_model(shape, seed=len(spatial))
    return model, unit_images(shape, 4, seed=len(spatial)), kc.GradCAM(model, "target")


# each metric in one layout (the loops above run both): fewer compiles on JAX
@pytest.mark.parametrize("name, spatial", [("avg_sensitivity", (16,)), ("local_lipschitz_estimate", (16, 16)),
                                           ("continuity", (16,)), ("relative_input_stability", (16, 16)),
                                           ("relative_output_stability", (16,)),
                                           ("relative_representation_stability", (16, 16))])
def test_explainer_metrics_reduce_and_batch_size(name, spatial):
    _, images, cam = _built(spatial)
    fn = getattr(metrics, name)
    kw = {} if name == "continuity" else {"samples": 3}
    per_image = fn(cam, images, reduce=None, batch_size=4, **kw)  # shapes shared with the clean maps
    assert per_image.shape == (len(images),) and np.isfinite(per_image).all() and (per_image >= 0).all()
    mean = fn(cam, images, batch_size=2, **kw)
    assert np.mean(per_image) == pytest.approx(mean, rel=1e-3)
    # each image alone sees its own draws only when it keeps its position: the first image does
    assert fn(cam, images[:1], **kw) == pytest.approx(per_image[0], rel=1e-3)


def test_consistency_by_hand():
    model = conv_model((8, 8, 1), seed=3)
    images = unit_images((8, 8, 1), 6, seed=3)
    rng = np.random.default_rng(0)
    maps = rng.random((6, 8, 8)).astype(np.float32)
    maps[[0, 2, 3], 0, 0] = 0.0            # three maps share the "sign" label (0, 1, 1, 1, 1), the rest (1, ...)
    maps[4, 0, 1] = -0.5                  # and one is alone
    predicted = model.predict(images, verbose=0).argmax(axis=1)
    labels = [tuple(np.sign(m.reshape(-1)[:5])) for m in maps]
    expected = []
    for i in range(6):
        others = [j for j in range(6) if j != i and labels[j] == labels[i]]
        expected.append(0.0 if not others else np.mean([predicted[j] == predicted[i] for j in others]))
    got = metrics.consistency(model, images, maps, reduce=None)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got[4] == 0.0
    # "top": the positions of the 5 largest values; identical maps share the label
    same = np.repeat(maps[:1], 6, axis=0)
    np.testing.assert_allclose(metrics.consistency(model, images, same, discretize="top", reduce=None),
                               [np.mean(predicted[np.arange(6) != i] == predicted[i]) for i in range(6)])
    with pytest.raises(ValueError, match="discretize"):
        metrics.consistency(model, images, maps, discretize="median")


def test_bad_input():
    model = conv_model((8, 8, 1), seed=0)
    images = unit_images((8, 8, 1), 2, seed=0)
    cam = kc.GradCAM(model, "target")
    with pytest.raises(ValueError, match="samples"):
        metrics.avg_sensitivity(cam, images, samples=0)
    with pytest.raises(ValueError, match="radius"):
        metrics.avg_sensitivity(cam, images, radius=-1.0)
    with pytest.raises(ValueError, match="reduce"):
        metrics.local_lipschitz_estimate(cam, images, samples=1, reduce="median")
    with pytest.raises(ValueError, match="steps"):
        metrics.continuity(cam, images, steps=18)               # 2 W + 1 = 17
    with pytest.raises(ValueError, match="high"):
        metrics.relative_input_stability(cam, images, low=0.3, high=0.1)
    with pytest.raises(TypeError, match="explainer"):
        metrics.avg_sensitivity(model, images)
    with pytest.raises(ValueError, match="maps"):
        metrics.consistency(model, images, np.zeros((2, 4, 4)))
    bad = np.zeros((2, 8, 8))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.consistency(model, images, bad)
    with pytest.raises(ValueError, match="eps"):
        metrics.effective_complexity(np.ones((2, 3, 3)), eps=-1.0)


@pytest.mark.filterwarnings("ignore:GradCAM. the maps")
def test_all_zero_map_gives_zero_not_nan():
    """A layer that outputs zeros gives all-zero Grad-CAM maps: every robustness value is 0, never NaN."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3, padding="same", activation="relu", kernel_initializer="zeros",
                            bias_initializer=keras.initializers.Constant(-1.0), name="target")(inp)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    images = unit_images((8, 8, 1), 2, seed=0)
    cam = kc.GradCAM(model, "target")
    assert not cam(images).any()
    for fn in (metrics.avg_sensitivity, metrics.local_lipschitz_estimate):
        np.testing.assert_array_equal(fn(cam, images, samples=2, reduce=None), 0.0)
    np.testing.assert_array_equal(metrics.continuity(cam, images, reduce=None), 0.0)
    np.testing.assert_array_equal(metrics.effective_complexity(np.zeros((2, 4, 4)), reduce=None), 0.0)


# ----------------------------------------------------------------------------- complexity

def test_effective_complexity_by_hand():
    rng = np.random.default_rng(0)
    maps = rng.random((5, 6, 7))
    maps[maps < 0.4] = 0.0
    maps[1] *= -3.0                                        # signed and scaled: the count is of |m| / max |m|
    maps[2, :, :] = 0.0
    maps[2, 3, 3] = 2e-3                                   # a single peak
    maps[3, 0, 0] = 1e-6 * np.abs(maps[3]).max()           # below eps after scaling
    expected = [int((np.abs(m) / np.abs(m).max() > 1e-5).sum()) for m in maps]
    got = metrics.effective_complexity(maps, reduce=None)
    np.testing.assert_array_equal(got, expected)
    assert got[2] == 1
    assert metrics.effective_complexity(maps) == pytest.approx(np.mean(expected))
    rows = maps[:, 1]                                                            # 1-D maps, one all zero
    np.testing.assert_array_equal(metrics.effective_complexity(rows, eps=0.5, reduce=None),
                                  [0 if not m.any() else (np.abs(m) / np.abs(m).max() > 0.5).sum() for m in rows])


# ----------------------------------------------------------------------------- randomization

def test_mprt_closed_form_on_a_model_the_randomization_cannot_change():
    """Constant kernels and zero biases are unchanged by permutation (and by a Gaussian of std 0):
    the randomized model is the model, so sMPRT is 1 and eMPRT is 0 exactly."""
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="target",
                            kernel_initializer=keras.initializers.Constant(0.3))(inp)
    out = keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.Constant(0.2))(
        keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    images = unit_images((8, 8, 1), 3, seed=4)
    kw = dict(explainer_kwargs={"layer": "target"})
    for randomize in ("permute", "gaussian"):
        rho = metrics.smooth_mprt(kc.Saliency, model, images, samples=3, randomize=randomize, reduce=None,
                                  explainer_kwargs=None)
        np.testing.assert_allclose(rho, 1.0, atol=1e-9)
        np.testing.assert_allclose(metrics.efficient_mprt(kc.GradCAM, model, images, randomize=randomize,
                                                          reduce=None, **kw), 0.0, atol=1e-12)


@pytest.fixture(scope="module")
def seeded():
    model = conv_model((10, 10, 1), seed=7, init_seed=11)
    return model, unit_images((10, 10, 1), 3, seed=7)


def test_randomized_copy_is_quantus_permutation(seeded):
    model, _ = seeded
    before = [w.copy() for w in model.get_weights()]
    copy = metrics.randomized_copy(model, seed=42)
    for layer, orig in zip([l for l in copy.layers if l.get_weights()], [l for l in model.layers if l.get_weights()]):
        state = np.random.RandomState(43)
        for got, w in zip(layer.get_weights(), orig.get_weights()):
            np.testing.assert_array_equal(got, state.permutation(w))
    for a, b in zip(before, model.get_weights()):
        assert a.tobytes() == b.tobytes()


def test_efficient_mprt_by_hand(seeded):
    model, images = seeded
    cam = kc.GradCAM(model, "target")
    classes = model.predict(images, verbose=0).argmax(axis=1)
    before = cam(images, classes)
    after = kc.GradCAM(metrics.randomized_copy(model, 42), "target")(images, classes)

    def entropy(m):
        counts, _ = np.histogram(m.reshape(-1), bins=100)
        p = counts[counts > 0] / counts.sum()
        return -(p * np.log(p)).sum()

    expected = [(entropy(b) - entropy(a)) / entropy(a) for a, b in zip(before, after)]
    got = metrics.efficient_mprt(kc.GradCAM, model, images, explainer_kwargs={"layer": "target"}, reduce=None)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_smooth_mprt_by_hand_and_batch_size(seeded):
    model, images = seeded
    n, shape, samples, seed = len(images), images.shape[1:], 4, 42
    classes = model.predict(images, verbose=0).argmax(axis=1)
    z = krandom.normal_numpy(seed, _ids(n, samples), shape).reshape((n, samples) + shape)
    z[:, -1] = 0.0                                                           # the last sample is the clean image

    def smooth(cam):
        return np.mean([cam((images + 0.1 * z[:, k]).astype(np.float32), classes) for k in range(samples)], axis=0)

    a = np.abs(smooth(kc.Saliency(model))).reshape(n, -1)
    b = np.abs(smooth(kc.Saliency(metrics.randomized_copy(model, seed)))).reshape(n, -1)
    from scipy.stats import spearmanr
    expected = [spearmanr(a[i], b[i])[0] for i in range(n)]
    got = metrics.smooth_mprt(kc.Saliency, model, images, samples=samples, reduce=None, batch_size=3)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert metrics.smooth_mprt(kc.Saliency, model, images, samples=samples, batch_size=6) == \
        pytest.approx(np.mean(got), abs=1e-5)


def test_mprt_never_touches_the_users_weights_even_on_error(seeded):
    model, images = seeded
    before = [w.copy() for w in model.get_weights()]
    calls = []

    def flaky(m, **kwargs):
        calls.append(m)
        if len(calls) == 2:                                   # the explainer on the randomized copy
            raise RuntimeError("boom")
        return kc.GradCAM(m, "target")

    for fn in (metrics.efficient_mprt, metrics.smooth_mprt):
        calls.clear()
        with pytest.raises(RuntimeError, match="boom"):
            fn(flaky, model, images, **({"samples": 2} if fn is metrics.smooth_mprt else {}))
        assert calls[0] is model and calls[1] is not model
        for a, b in zip(before, model.get_weights()):
            assert a.tobytes() == b.tobytes()
    metrics.efficient_mprt(kc.GradCAM, model, images, explainer_kwargs={"layer": "target"})
    metrics.smooth_mprt(kc.GradCAM, model, images, samples=2, explainer_kwargs={"layer": "target"})
    for a, b in zip(before, model.get_weights()):
        assert a.tobytes() == b.tobytes()
    with pytest.raises(TypeError, match="explainer_cls"):
        metrics.efficient_mprt(kc.GradCAM(model, "target"), model, images)
    with pytest.raises(ValueError, match="randomize"):
        metrics.efficient_mprt(kc.GradCAM, model, images, randomize="shuffle")


# ----------------------------------------------------------------------------- Quantus 0.6

def _quantus():
    warnings.filterwarnings("ignore")
    return pytest.importorskip("quantus")


def _explain_func(layer="target", method=kc.GradCAM):
    """Quantus's explain_func for a Keras model (channels last). Quantus hands some batches over
    channels first (EfficientMPRT) or with the channel axis moved to the end twice (Continuity):
    moved back."""
    def explain(model, inputs, targets, **kwargs):
        x = np.asarray(inputs, np.float32)
        for axes in ((1, -1), (-1, 1)):
            if x.shape[1:] != tuple(model.input_shape[1:]):
                x = np.moveaxis(np.asarray(inputs, np.float32), *axes)
        return method(model, layer)(x, np.asarray(targets)).astype(np.float32)[:, None]
    return explain


@pytest.fixture(scope="module")
def quantus_case():
    model = conv_model((16, 16, 1), seed=9)
    images = unit_images((16, 16, 1), 4, seed=9)
    classes = model.predict(images, verbose=0).argmax(axis=1)
    cam = kc.GradCAM(model, "target")
    cam(images, classes)
    return model, images, classes, cam, cam(images, classes)


@pytest.mark.tensorflow_only
@NOT_LEGACY
def test_quantus_deterministic_metrics_per_image(quantus_case):
    quantus = _quantus()
    model, images, classes, cam, maps = quantus_case
    q = quantus.Continuity(abs=False, normalise=False, disable_warnings=True)(
        model, images, classes, a_batch=maps[:, None], explain_func=_explain_func(), channel_first=False)
    np.testing.assert_allclose(metrics.continuity(cam, images, reduce=None), q, rtol=1e-5)
    rng = np.random.default_rng(1)
    signed = (rng.random(maps.shape) - 0.3).astype(np.float32)
    signed[:2, 0, :2] = 0.0
    q = quantus.Consistency(abs=False, normalise=False, disable_warnings=True)(
        model, images, classes, a_batch=signed[:, None], channel_first=False)
    np.testing.assert_allclose(metrics.consistency(model, images, signed, reduce=None), q, atol=1e-8)
    scaled = maps / maps.reshape(len(maps), -1).max(axis=1)[:, None, None]
    q = quantus.EffectiveComplexity(disable_warnings=True)(
        model, images, classes, a_batch=scaled[:, None], channel_first=False)
    np.testing.assert_array_equal(metrics.effective_complexity(scaled, reduce=None), q)


@pytest.mark.tensorflow_only
def test_quantus_random_metrics_agree_in_mean(quantus_case):
    """Mean over images within 4 spreads of keras-cam's own seeds (their Monte-Carlo error).

    (Quantus 0.6's RelativeOutputStability and RelativeRepresentationStability feed a channels-last
    Keras model channels-first batches, so they cannot run on one; the toy closed form and the loop
    above check those two.)"""
    quantus = _quantus()
    model, images, classes, cam, maps = quantus_case
    samples = 8
    cases = [
        (metrics.avg_sensitivity, quantus.AvgSensitivity, dict(nr_samples=samples, lower_bound=0.2)),
        (metrics.local_lipschitz_estimate, quantus.LocalLipschitzEstimate,
         dict(nr_samples=samples, perturb_std=0.1, normalise=False)),
        (metrics.relative_input_stability, quantus.RelativeInputStability,
         dict(nr_samples=samples, return_nan_when_prediction_changes=False)),
    ]
    for ours, theirs, kw in cases:
        np.random.seed(0)
        q = np.mean(theirs(disable_warnings=True, **kw)(model, images, classes, a_batch=maps[:, None],
                                                        explain_func=_explain_func(), channel_first=False))
        mine = [ours(cam, images, samples=samples, seed=s) for s in range(3)]
        spread = max(np.std(mine), 1e-3 * abs(np.mean(mine)))
        assert abs(q - np.mean(mine)) <= 4 * spread + 0.05 * abs(q), (ours.__name__, q, mine)

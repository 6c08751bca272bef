"""Axiomatic metrics: completeness, non-sensitivity, input invariance.

Second code paths: closed forms on linear models (Integrated Gradients is exact on them;
a model that ignores pixels by construction), the definitions written out per image and
pixel in the tests, and Quantus 0.6 on the same model and maps (TensorFlow by nature).
"""

import warnings

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import metrics
from keras_cam._compat import LEGACY, keras

# Quantus 0.6 rebuilds the model's head with Keras 3 (keras.Model around model.input), which refuses
# tf-keras tensors: the comparisons run in the Keras 3 TensorFlow mode.
NOT_LEGACY = pytest.mark.skipif(LEGACY, reason="Quantus 0.6 wraps models with Keras 3, not tf-keras")


def linear_model(shape, kernel, bias, activation="softmax"):
    """``S = kernel^T flatten(x) + bias`` (``kernel`` ``(P*C, K)``), then ``activation``."""
    inp = keras.Input(shape)
    dense = keras.layers.Dense(kernel.shape[1], activation=activation)
    model = keras.Model(inp, dense(keras.layers.Flatten()(inp)))
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def logits_of(model, images):
    """The logits of a linear model, by hand from its weights."""
    kernel, bias = [layer for layer in model.layers if layer.weights][0].get_weights()
    return images.reshape(len(images), -1).astype(np.float64) @ kernel + bias


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("shape", [(12, 2), (5, 4, 3)], ids=["1d", "2d"])
def test_completeness_of_integrated_gradients_on_a_linear_model(shape):
    rng = np.random.default_rng(len(shape))
    size = int(np.prod(shape))
    model = linear_model(shape, rng.normal(size=(size, 3)), rng.normal(size=3))
    images = rng.normal(size=(4,) + shape).astype(np.float32)
    ig = kc.IntegratedGradients(model, steps=8)
    attributions = ig(images, normalize=False)                      # (N, *S, C), zero baseline
    maps = attributions.sum(axis=-1)
    gap = metrics.completeness(model, images, maps, baseline=0.0, reduce=None, batch_size=3)
    np.testing.assert_allclose(gap, 0.0, atol=2e-4)
    # by hand: with the "black" baseline (each image's minimum everywhere) the gap is the baseline's logit change
    classes = model.predict(images, verbose=0).argmax(axis=1)
    z = logits_of(model, images)
    black = np.broadcast_to(images.reshape(4, -1).min(axis=1)[:, None], (4, size))
    zb = logits_of(model, black)
    expected = np.abs(maps.reshape(4, -1).sum(axis=1) - (z - zb)[np.arange(4), classes])
    np.testing.assert_allclose(metrics.completeness(model, images, maps, reduce=None), expected, rtol=1e-4,
                               atol=1e-4)
    # on probabilities, and the mean
    p, pb = softmax(z), softmax(zb)
    expected = np.abs(maps.reshape(4, -1).sum(axis=1) - (p - pb)[np.arange(4), classes])
    got = metrics.completeness(model, images, maps, output="probability", reduce=None)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert metrics.completeness(model, images, maps, output="probability") == pytest.approx(got.mean(), rel=1e-9)


def test_completeness_bad_input():
    model = linear_model((4, 4, 1), np.ones((16, 2)), np.zeros(2))
    images = np.ones((2, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="baseline"):
        metrics.completeness(model, images, np.zeros((2, 4, 4)), baseline="grey")
    with pytest.raises(ValueError, match="output"):
        metrics.completeness(model, images, np.zeros((2, 4, 4)), output="logit")
    with pytest.raises(ValueError, match="maps"):
        metrics.completeness(model, images, np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="reduce"):
        metrics.completeness(model, images, np.zeros((2, 4, 4)), reduce="sum")


def ignoring_model(shape, ignored, seed):
    """A linear softmax model whose kernel is zero on the ``ignored`` pixels (all channels)."""
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    kernel = rng.uniform(0.01, 0.03, (int(np.prod(shape)), 2)) * np.array([1.0, -1.0])  # far from saturation
    kernel.reshape(shape + (2,))[ignored] = 0.0
    return linear_model(shape, kernel, np.zeros(2)), channels


@pytest.mark.parametrize("shape", [(10, 1), (4, 5, 2)], ids=["1d", "2d"])
def test_non_sensitivity_closed_form(shape):
    """Map = |x - min| on the pixels the model reads, 0 on those it ignores: the attribution is
    zero exactly where setting the pixel to the image's minimum changes nothing, so NS = 0; each
    pixel then flipped (attributed but ignored, or read but not attributed) adds exactly one."""
    rng = np.random.default_rng(len(shape))
    spatial = shape[:-1]
    ignored = np.zeros(spatial, bool)
    ignored.reshape(-1)[rng.choice(ignored.size, ignored.size // 3, replace=False)] = True
    model, _ = ignoring_model(shape, ignored, seed=1)
    images = rng.uniform(0.1, 1.0, (3,) + shape).astype(np.float32) * 4
    images.reshape(3, -1)[:, 0] = 0.0                                    # the minimum, on one pixel's channel 0
    mins = images.reshape(3, -1).min(axis=1)
    maps = np.abs(images - mins.reshape((-1,) + (1,) * len(shape))).max(axis=-1)
    maps[:, ignored] = 0.0
    got = metrics.non_sensitivity(model, images, maps, reduce=None, eps=1e-5, batch_size=7)
    np.testing.assert_array_equal(got, 0.0)
    flipped = maps.copy()
    flat = flipped.reshape(3, -1)
    ign = np.flatnonzero(ignored.reshape(-1))
    read = np.flatnonzero(~ignored.reshape(-1))
    flat[0, ign[:2]] = 0.7                       # attributed but ignored by the model: 2
    flat[1, read[1:4]] = 0.0                     # read by the model but not attributed: 3
    got = metrics.non_sensitivity(model, images, flipped, reduce=None, batch_size=64)
    np.testing.assert_array_equal(got, [2.0, 3.0, 0.0])
    assert metrics.non_sensitivity(model, images, flipped) == pytest.approx(5.0 / 3.0)


def test_non_sensitivity_by_hand_with_groups():
    """``features_in_step=3``: groups of 3 pixels in raster order, written out with the model."""
    rng = np.random.default_rng(5)
    model = linear_model((4, 4, 1), rng.normal(size=(16, 3)), rng.normal(size=3))
    images = rng.uniform(size=(2, 4, 4, 1)).astype(np.float32)
    maps = rng.uniform(size=(2, 4, 4)).astype(np.float32)
    maps[maps < 0.5] = 0.0
    classes = model.predict(images, verbose=0).argmax(axis=1)
    p0 = softmax(logits_of(model, images))[np.arange(2), classes]
    expected = np.zeros(2)
    for i in range(2):
        for g in range(6):
            x = images[i].reshape(-1).copy()
            x[3 * g:3 * g + 3] = images[i].min()
            p = softmax(logits_of(model, x[None]))[0, classes[i]]
            no_effect = abs(p - p0[i]) < 1e-3
            no_attribution = (np.abs(maps[i].reshape(-1)[3 * g:3 * g + 3]) < 1e-3).all()
            expected[i] += no_effect != no_attribution
    got = metrics.non_sensitivity(model, images, maps, eps=1e-3, features_in_step=3, reduce=None, batch_size=5)
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="features_in_step"):
        metrics.non_sensitivity(model, images, maps, features_in_step=0)
    with pytest.raises(ValueError, match="eps"):
        metrics.non_sensitivity(model, images, maps, eps=0.0)


def conv_model(padding="valid", seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(3, 3, padding=padding, activation="relu", name="target")(inp)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


def test_shifted_copy_computes_the_same_function():
    model = conv_model()
    before = [w.copy() for w in model.get_weights()]
    images = np.random.default_rng(0).normal(size=(3, 8, 8, 2)).astype(np.float32)
    copy = metrics.shifted_copy(model, -1.0)
    np.testing.assert_allclose(copy.predict(images - 1.0, verbose=0), model.predict(images, verbose=0),
                               rtol=1e-4, atol=1e-6)
    for a, b in zip(before, model.get_weights()):
        assert a.tobytes() == b.tobytes()
    dense = linear_model((4, 2), np.ones((8, 2)), np.zeros(2))
    x = np.ones((1, 4, 2), np.float32)
    np.testing.assert_allclose(metrics.shifted_copy(dense, 2.5).predict(x + 2.5, verbose=0),
                               dense.predict(x, verbose=0), rtol=1e-5)
    inp = keras.Input((4, 4, 1))
    pooled = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.DepthwiseConv2D(3)(inp))))
    with pytest.raises(ValueError, match="Dense or Conv"):
        metrics.shifted_copy(pooled, 1.0)


def test_input_invariance_gradient_vs_integrated_gradients():
    """Grad-CAM and the gradient (Saliency) are invariant to a shift the first layer absorbs;
    Integrated Gradients from a zero baseline is not (Kindermans et al.'s example)."""
    model = conv_model()
    images = np.random.default_rng(1).normal(size=(3, 8, 8, 2)).astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    cam = metrics.input_invariance(kc.GradCAM, model, images, explainer_kwargs={"layer": "target"}, reduce=None)
    np.testing.assert_array_equal(cam, 1.0)
    np.testing.assert_array_equal(metrics.input_invariance(kc.Saliency, model, images, reduce=None), 1.0)
    ig = metrics.input_invariance(kc.IntegratedGradients, model, images, explainer_kwargs={"steps": 8},
                                  reduce=None)
    np.testing.assert_array_equal(ig, 0.0)
    assert metrics.input_invariance(kc.IntegratedGradients, model, images, explainer_kwargs={"steps": 8},
                                    shift=0.0) == 1.0
    for a, b in zip(before, model.get_weights()):
        assert a.tobytes() == b.tobytes()
    with pytest.raises(TypeError, match="model"):
        metrics.input_invariance(kc.GradCAM, "model", images)
    with pytest.raises(ValueError, match="atol"):
        metrics.input_invariance(kc.GradCAM, model, images, atol=-1.0)


# ----------------------------------------------------------------------------- Quantus 0.6

@pytest.mark.tensorflow_only
@NOT_LEGACY
def test_quantus_non_sensitivity_and_completeness_per_image():
    warnings.filterwarnings("ignore")
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(3)
    ignored = np.zeros((4, 4), bool)
    ignored[1:3, 2:] = True
    model, _ = ignoring_model((4, 4, 1), ignored, seed=2)
    images = rng.uniform(size=(4, 4, 4, 1)).astype(np.float32)
    maps = rng.uniform(size=(4, 4, 4)).astype(np.float32)
    maps[maps < 0.3] = 0.0
    classes = model.predict(images, verbose=0).argmax(axis=1)
    q = quantus.NonSensitivity(normalise=False, disable_warnings=True)(
        model, images, classes, a_batch=maps[:, None], channel_first=False)
    np.testing.assert_array_equal(metrics.non_sensitivity(model, images, maps, reduce=None), q)
    # Completeness: Quantus returns sum(a) == output_func(f(x) - f(x_0)); with output_func
    # recording its argument, the gap is |sum(a) - recorded change|
    seen = []
    single = np.zeros((4, 4, 4), np.float32)
    single[:, 2, 2] = 1e-3
    q = quantus.Completeness(normalise=False, disable_warnings=True,
                             output_func=lambda d: seen.append(np.asarray(d)) or d)(
        model, images, classes, a_batch=single[:, None], channel_first=False)
    gap = metrics.completeness(model, images, single, reduce=None)
    np.testing.assert_allclose(gap, np.abs(1e-3 - np.concatenate(seen)), rtol=1e-5, atol=1e-6)
    assert list(q) == [bool(g == 0) for g in gap]

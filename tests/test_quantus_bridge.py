"""keras_cam.quantus.explain_func inside Quantus 0.6 (TensorFlow by nature: Quantus wraps tf.keras models).

The bridge is checked against a second code path: Quantus given keras-cam's
maps precomputed (``a_batch``) must score the same as Quantus computing them
through ``explain_func``, and a reference ``explain_func`` written here
(transposing Quantus's channels-first batch by hand) must give Quantus's
perturbation metrics the same numbers with the same NumPy seed.
"""

import numpy as np
import pytest

import keras_cam as kc
import keras_cam.quantus as kq
from keras_cam import backend, metrics
from keras_cam._compat import keras

pytestmark = pytest.mark.tensorflow_only
# Quantus imports TensorFlow: only in the TensorFlow modes (elsewhere conftest skips these tests by their mark).
quantus = pytest.importorskip("quantus") if backend.name() == "tensorflow" else None

H, W = 12, 10


@pytest.fixture(scope="module")
def case():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((H, W, 3)), keras.layers.Conv2D(4, 3, padding="same", name="conv"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    x = rng.random((6, H, W, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    masks = np.zeros((6, H, W), bool)
    for i, mask in enumerate(masks):
        mask[i:i + 5, 1:1 + i + 3] = True
    maps = kc.GradCAM(model, "conv")(x, y)
    return model, x, y, masks, maps


def reference(model, inputs, targets, **kwargs):
    """keras-cam's Grad-CAM in Quantus's order, written out: channels-last for the model, (N, 1, H, W) back."""
    x = np.asarray(inputs)
    if x.shape[1] == 3:                                 # Quantus's channels-first batch
        x = np.transpose(x, (0, 2, 3, 1))
    return kc.GradCAM(model, "conv")(x, np.asarray(targets))[:, None]


def test_both_channel_orders_give_keras_cams_maps_channels_first(case):
    model, x, y, _, maps = case
    explain = kq.explain_func("gradcam", layer="conv")
    first = explain(model, np.transpose(x, (0, 3, 1, 2)), y)
    last = explain(model, x, y, device="cpu")          # Quantus adds `device`; it is ignored
    assert first.shape == last.shape == (6, 1, H, W)
    np.testing.assert_allclose(first[:, 0], maps, atol=1e-6)
    np.testing.assert_allclose(last, first, atol=1e-6)
    # a reshape instead of a transpose (Quantus's own TensorFlow path) would give other maps
    scrambled = np.transpose(x, (0, 3, 1, 2)).reshape(x.shape)
    assert np.abs(kc.GradCAM(model, "conv")(scrambled, y) - maps).max() > 1e-3


def test_an_ambiguous_shape_follows_channel_first():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4, 4, 4)), keras.layers.Conv2D(2, 3, padding="same", name="conv"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    x = np.random.default_rng(1).random((2, 4, 4, 4)).astype(np.float32)
    y = np.array([0, 1])
    expected = kc.GradCAM(model, "conv")(x, y)
    cf = np.transpose(x, (0, 3, 1, 2))
    np.testing.assert_allclose(kq.explain_func("gradcam", layer="conv", channel_first=True)(model, cf, y)[:, 0],
                               expected, atol=1e-6)
    np.testing.assert_allclose(kq.explain_func("gradcam", layer="conv")(model, x, y)[:, 0], expected, atol=1e-6)
    # per call, through Quantus's explain_func_kwargs
    np.testing.assert_allclose(kq.explain_func("gradcam", layer="conv")(model, cf, y, channel_first=True)[:, 0],
                               expected, atol=1e-6)


@pytest.mark.parametrize("name, metric, ours", [
    ("PointingGame", lambda: quantus.PointingGame(disable_warnings=True),
     lambda m, s: metrics.pointing_game(m, masks=s, reduce=None) / 100),
    ("RelevanceMassAccuracy", lambda: quantus.RelevanceMassAccuracy(disable_warnings=True),
     lambda m, s: metrics.relevance_mass_accuracy(m, masks=s, reduce=None)),
    ("AttributionLocalisation", lambda: quantus.AttributionLocalisation(disable_warnings=True),
     lambda m, s: metrics.attribution_localization(m, masks=s, reduce=None)),
    ("AUC", lambda: quantus.AUC(disable_warnings=True), lambda m, s: metrics.mask_auc(m, masks=s, reduce=None)),
])
def test_quantus_explaining_with_keras_cam_scores_keras_cams_maps(case, name, metric, ours):
    model, x, y, masks, maps = case
    got = metric()(model=model, x_batch=x, y_batch=y, a_batch=None, s_batch=masks[:, None], channel_first=False,
                   explain_func=kq.explain_func("gradcam", layer="conv"))
    np.testing.assert_allclose(got, ours(maps, masks), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: quantus.MaxSensitivity(nr_samples=3, disable_warnings=True),
    lambda: quantus.AvgSensitivity(nr_samples=3, disable_warnings=True),
    lambda: quantus.RandomLogit(num_classes=3, disable_warnings=True),
])
def test_quantus_random_metrics_match_a_reference_explain_func_with_the_same_seed(case, make):
    model, x, y, _, _ = case
    results = []
    for explain in (kq.explain_func("gradcam", layer="conv"), reference):
        np.random.seed(0)
        results.append(np.asarray(make()(model=model, x_batch=x, y_batch=y, a_batch=None, channel_first=False,
                                         explain_func=explain), np.float64))
    assert np.isfinite(results[0]).sum() >= 4        # a perturbed image whose map is all zeros gives NaN
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_bad_use_gets_clear_errors(case):
    model, x, y, _, _ = case
    with pytest.raises(ValueError, match="Unknown method 'gradcan'"):
        kq.explain_func("gradcan")
    with pytest.raises(TypeError, match="must be a method name"):
        kq.explain_func(3)
    explain = kq.explain_func("gradcam", layer="conv")
    with pytest.raises(ValueError, match=r"fit model .* in neither channel order"):
        explain(model, x[:, :8], y)
    with pytest.raises(TypeError, match=r"unexpected keyword\(s\) \['gc_layer'\]"):
        explain(model, x, y, gc_layer="conv")
    with pytest.raises(ValueError, match="one integer class per input"):
        explain(model, x, y[:4])
    with pytest.raises(ValueError, match="`channel_first` must be"):
        explain(model, x, y, channel_first="yes")
    with pytest.raises(ValueError, match="not channels first"):
        explain(model, x, y, channel_first=True)

"""Issue 22: the audit's features from the maps' own forward pass, and step 3's quantiles from one sort.

The features the explain step returns (``explain_dataset(..., features=True)``: the first target
layer's activations pooled over positions, and the class scores) are checked against
:func:`keras_cam.audit.core.class_features`, a separate compiled forward pass that shares no code
with the gradient pass; a fused audit against one forced through ``class_features`` (an explainer
whose ``raw_maps`` is its own, so that it cannot fuse); and :func:`keras_cam.audit.hotspots.quantiles`
against ``np.quantile`` bit for bit.
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend
from keras_cam.audit import core, hotspots
from keras_cam.dataset import explain_dataset
from keras_cam.demo import TARGET_LAYER, load_shortcut_model, make_dataset

N = 100


@pytest.fixture(scope="module")
def setup():
    images, labels, _, _ = make_dataset(N, seed=11, watermark=(0, 0.5))
    return images, labels, load_shortcut_model()


def _batches(images, labels, size=32):
    return [(images[i:i + size], labels[i:i + size]) for i in range(0, len(images), size)]


class Unfused(kc.GradCAM):
    """Grad-CAM through a ``raw_maps`` of its own: the same maps, but no fused features."""

    def raw_maps(self, images, class_idx, target_fn=None):
        return super().raw_maps(images, class_idx, target_fn)


@pytest.mark.parametrize("make", [
    lambda m: kc.GradCAM(m, layer=TARGET_LAYER),                          # fused
    lambda m: kc.GradCAMPlusPlus(m, layer=TARGET_LAYER),                  # fused
    lambda m: kc.GradCAM(m, layer=TARGET_LAYER, aug_smooth=True),         # a second pass in the step
    lambda m: kc.SmoothGradCAMPlusPlus(m, layer=TARGET_LAYER, samples=2, noise=0.1),   # its own raw_maps
], ids=["gradcam", "gradcam++", "aug_smooth", "smooth_gradcam++"])
def test_step_features_equal_class_features_and_maps_unchanged(setup, make):
    images, labels, model = setup
    cam = make(model)
    plain = list(explain_dataset(cam, _batches(images, labels), upsample=True, verbose=0))
    with_features = list(explain_dataset(cam, _batches(images, labels), upsample=True, verbose=0, features=True))
    assert all(r.features is None for r in plain)
    for a, b in zip(plain, with_features):               # the maps, scores, classes: the same bits
        np.testing.assert_array_equal(a.maps, b.maps)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.targets, b.targets)
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
    pooled = np.concatenate([r.features[0] for r in with_features])
    scores = np.concatenate([r.features[1] for r in with_features])
    ref_pooled, ref_scores = core.class_features(cam, images, batch_size=32)
    assert pooled.shape == ref_pooled.shape == (N, 2 * 64) and scores.shape == ref_scores.shape == (N, 4)
    assert np.ptp(ref_pooled) > 1 and np.ptp(ref_scores) > 1              # numbers, not zeros
    np.testing.assert_allclose(pooled, ref_pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_fuses_features_says_which_explainers_fuse(setup):
    model = setup[2]
    assert kc.GradCAM(model, layer=TARGET_LAYER).fuses_features
    assert kc.LayerCAM(model, layer=TARGET_LAYER).fuses_features
    assert not kc.GradCAM(model, layer=TARGET_LAYER, aug_smooth=True).fuses_features
    assert not Unfused(model, layer=TARGET_LAYER).fuses_features
    assert not kc.SmoothGradCAMPlusPlus(model, layer=TARGET_LAYER).fuses_features
    assert not kc.ScoreCAM(model, layer=TARGET_LAYER).fuses_features


def test_features_are_traced_once_per_batch_shape(setup):
    images, labels, model = setup
    traces = []

    class Counting(kc.GradCAM):
        def raw_maps_and_features(self, images, class_idx, target_fn=None):
            traces.append(int(images.shape[0]))     # runs while tracing only (TF, JAX)
            return super().raw_maps_and_features(images, class_idx, target_fn)

    cam = Counting(model, layer=TARGET_LAYER)
    assert cam.fuses_features
    for _ in range(2):
        list(explain_dataset(cam, _batches(images, labels), verbose=0, features=True))
    if backend.name() == "torch":      # eager: one call per batch
        assert len(traces) == 2 * 4
    else:                              # the full batches and the last, smaller one; then reused
        assert sorted(traces) == [4, 32]


@pytest.mark.skipif(backend.name() != "tensorflow", reason="tf.distribute is TensorFlow's")
def test_strategy_step_returns_the_same_features(setup):
    import tensorflow as tf

    images, labels, model = setup
    cam = kc.GradCAM(model, layer=TARGET_LAYER)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
    results = list(explain_dataset(cam, dataset, strategy=tf.distribute.get_strategy(), verbose=0, features=True))
    ref_pooled, ref_scores = core.class_features(cam, images, batch_size=32)
    np.testing.assert_allclose(np.concatenate([r.features[0] for r in results]), ref_pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([r.features[1] for r in results]), ref_scores, rtol=1e-5, atol=1e-5)
    plain = list(explain_dataset(cam, dataset, strategy=tf.distribute.get_strategy(), verbose=0))
    for a, b in zip(plain, results):
        np.testing.assert_array_equal(a.maps, b.maps)


def test_features_option_is_checked(setup, tmp_path):
    images, labels, model = setup
    cam = kc.GradCAM(model, layer=TARGET_LAYER)
    with pytest.raises(TypeError, match="features"):
        explain_dataset(cam, _batches(images, labels), features=1)
    with pytest.raises(ValueError, match="out="):
        explain_dataset(cam, _batches(images, labels), features=True, out=str(tmp_path))
    # An explainer that computes its maps its own way says so, and one without a layer too; without
    # `features`, both explain the dataset as the explainer does.
    for other, match in ((kc.GuidedGradCAM(model, layer=TARGET_LAYER), "its own way"),
                         (kc.Saliency(model), "no target layer")):
        with pytest.raises(ValueError, match=match):
            explain_dataset(other, _batches(images, labels), features=True)
        first = next(iter(explain_dataset(other, _batches(images[:8], labels[:8]))))
        np.testing.assert_allclose(first.maps, other(images[:8], targets=labels[:8]), rtol=1e-4, atol=1e-5)


def _summary(result):
    return [(c.target, c.indices.tolist(), c.level, c.evidence, c.channel, c.pooling, c.score,
             None if c.region is None else c.region.tolist(), c.accuracy) for c in result.clusters]


def test_fused_audit_equals_the_class_features_audit(setup, monkeypatch):
    images, labels, model = setup
    more = make_dataset(140, seed=12, watermark=(0, 0.5))
    images, labels = np.concatenate([images, more[0]]), np.concatenate([labels, more[1]])
    calls = []
    original = core.class_features

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(core, "class_features", counted)
    fused = kc.audit(kc.GradCAM(model, layer=TARGET_LAYER), images, labels, verbose=0)
    assert not calls                                   # no second forward pass
    unfused = kc.audit(Unfused(model, layer=TARGET_LAYER), images, labels, verbose=0)
    assert len(calls) == -(-len(images) // 64)         # one class_features call per batch
    np.testing.assert_array_equal(fused.maps, unfused.maps)
    np.testing.assert_array_equal(fused.scores, unfused.scores)
    assert _summary(fused) == _summary(unfused)
    assert any(c.level is not None and c.level <= hotspots.ALPHA for c in fused.clusters)   # something found
    first, other = fused.verify_first(), unfused.verify_first()
    assert first and sorted(first) == sorted(other)
    for k in first:
        assert first[k].verdict == other[k].verdict
        assert first[k].to_dict() == other[k].to_dict()


def _old_tails(e, quantile=hotspots.BASE_QUANTILE, shared=hotspots.SHARED):
    """Step 3 as it was computed before (np.quantile)."""
    low, high = np.quantile(e, [quantile, 1.0 - shared], axis=0)
    if len(e) < 3 or 1.0 - shared <= quantile:
        t = np.maximum(e - low, 0.0)
        return np.minimum(t, np.quantile(t, 1.0 - shared, axis=0))
    return np.minimum(np.maximum(e - low, 0.0), np.maximum(high - low, 0.0))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9, 10, 11, 37, 300])
def test_quantiles_equal_np_quantile_bit_for_bit(n):
    rng = np.random.default_rng(n)
    for trial in range(12):
        e = rng.random((n, 40))
        if trial % 3 == 0:
            e = np.round(e * 4) / 4                      # many ties
        if trial % 3 == 1:
            e[:, :10] = 0.25                             # constant columns
            e[: n // 2, 10:20] = 0.0
        levels = (0.2, 0.9) if trial % 2 else (0.0, 0.1, 0.25, 0.5, 0.75, 0.95, 1.0)
        got = np.stack(hotspots.quantiles(e, levels))
        np.testing.assert_array_equal(got, np.quantile(e, list(levels), axis=0))
        np.testing.assert_array_equal(hotspots.tails(e), _old_tails(e))
        np.testing.assert_array_equal(hotspots.tails(e, 0.5, 0.6), _old_tails(e, 0.5, 0.6))  # the other branch


def test_tails_on_window_energies_equal_the_old_computation():
    rng = np.random.default_rng(0)
    q = hotspots.shares(rng.random((300, 256)) ** 4)
    e = hotspots.window_energies(q, (16, 16))
    np.testing.assert_array_equal(hotspots.tails(e), _old_tails(e))
    np.testing.assert_array_equal(hotspots.tails(q), _old_tails(q))

"""The faithfulness metrics of :mod:`keras_cam.metrics.faithfulness`, against independent computations.

(a) closed forms on a linear model ``f_c(x) = w_c . x + b_c`` (logits, ``softmax=False``):
    a map equal to each feature's contribution ``w (x - baseline)`` correlates perfectly with the
    output drops, and the gradient ``w`` has zero infidelity;
(b) direct loops written from the papers in this file (one perturbed image at a time, numpy);
(c) Quantus 0.6 on the same model, maps and settings (TensorFlow by nature): the deterministic
    metrics give the same per-image values, the random ones the same mean within Monte-Carlo error;
(d) ``reduce=None`` against ``reduce="mean"``, batch-size invariance, 1-D and 3-D layouts, bad input.
"""

import numpy as np
import pytest

from keras_cam import metrics
from keras_cam._compat import LEGACY, keras, to_host
from keras_cam.metrics import faithfulness as F

ALL = {
    "faithfulness_correlation": {"subset_size": 5, "runs": 12},
    "faithfulness_estimate": {"features_in_step": 3},
    "monotonicity": {"features_in_step": 4},
    "monotonicity_correlation": {"features_in_step": 6, "samples": 3},
    "pixel_flipping": {"features_in_step": 4},
    "region_perturbation": {"patch_size": 3, "regions": 5},
    "selectivity": {"patch_size": 3},
    "sensitivity_n": {"sizes": (2, 7), "subsets": 6},
    "irof": {"n_segments": 6},
    "infidelity": {"patch_sizes": (2, 3)},
    "sufficiency": {"threshold": 0.8},
}


def linear_model(shape, weights, bias=(0.3, -0.2)):
    """``f_c(x) = sum(weights[..., c] * x) + bias[c]``: a Dense layer on the flattened input, no softmax."""
    inp = keras.Input(shape)
    dense = keras.layers.Dense(len(bias))
    model = keras.Model(inp, dense(keras.layers.Flatten()(inp)))
    dense.set_weights([np.asarray(weights, np.float32).reshape(-1, len(bias)), np.asarray(bias, np.float32)])
    return model


def conv_model(shape, classes=3, seed=0):
    keras.utils.set_random_seed(seed)
    rank = len(shape) - 1
    conv = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[rank]
    pool = {1: keras.layers.GlobalAveragePooling1D, 2: keras.layers.GlobalAveragePooling2D,
            3: keras.layers.GlobalAveragePooling3D}[rank]
    inp = keras.Input(shape)
    x = conv(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Concatenate()([pool()(x), keras.layers.Flatten()(inp)])
    return keras.Model(inp, keras.layers.Dense(classes, activation="softmax")(x))


def predict(model, x, c):
    """The class-``c`` outputs of the model as given (probabilities for the softmax models here)."""
    out = to_host(model(np.asarray(x, np.float32), training=False)).astype(np.float64)
    return out[np.arange(len(out)), np.broadcast_to(c, len(out))]


@pytest.fixture(scope="module")
def conv2d():
    """A softmax classifier of 7x6 two-channel images, 4 images and their random maps."""
    model = conv_model((7, 6, 2))
    rng = np.random.default_rng(3)
    images = rng.random((4, 7, 6, 2)).astype(np.float32)
    maps = rng.random((4, 7, 6)).astype(np.float32)
    classes = np.argmax(to_host(model(images)), axis=1)
    return model, images, maps, classes


# ---------------------------------------------------------------------------------------------
# (a) closed forms on a linear model


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 5, 1, 2))
    x = rng.random((3, 6, 5, 1)).astype(np.float32)
    return linear_model((6, 5, 1), w), w, x


def test_correlations_of_the_exact_contributions_are_one(linear):
    model, w, x = linear
    contributions = (w[None, ..., 0, 0] * x[..., 0])  # class 0, baseline 0
    kw = dict(targets=0, baseline=0.0, softmax=False, reduce=None)
    np.testing.assert_allclose(metrics.faithfulness_correlation(model, x, contributions, subset_size=6, runs=20, **kw),
                               1.0, atol=1e-5)
    np.testing.assert_allclose(metrics.faithfulness_estimate(model, x, contributions, features_in_step=2, **kw),
                               1.0, atol=1e-5)
    np.testing.assert_allclose(metrics.sensitivity_n(model, x, contributions, sizes=(3, 11), subsets=15, **kw),
                               1.0, atol=1e-5)
    # With the black baseline (each image's minimum), the contributions are w (x - min x).
    shifted = w[None, ..., 0, 0] * (x[..., 0] - x.reshape(3, -1).min(axis=1)[:, None, None])
    np.testing.assert_allclose(metrics.faithfulness_estimate(model, x, shifted, targets=0, softmax=False, reduce=None),
                               1.0, atol=1e-5)
    # A map that reverses the contributions correlates perfectly the other way.
    np.testing.assert_allclose(metrics.faithfulness_estimate(model, x, -contributions, **kw), -1.0, atol=1e-5)


def test_infidelity_of_the_gradient_is_zero(linear):
    model, w, x = linear
    gradient = np.broadcast_to(w[None, ..., 0, 1], x.shape[:-1])  # class 1
    for sizes in [(2,), (3, 5)]:
        values = metrics.infidelity(model, x, gradient, targets=1, patch_sizes=sizes, reduce=None)
        np.testing.assert_allclose(values, 0.0, atol=1e-8)
    assert metrics.infidelity(model, x, gradient * 2, targets=1, reduce="mean") > 1e-3


def test_monotonicity_and_curves_of_a_linear_model():
    rng = np.random.default_rng(2)
    w = np.abs(rng.normal(size=(12, 1, 2))) + 0.1  # every feature adds to the class
    x = (rng.random((3, 12, 1)) + 0.5).astype(np.float32)
    model = linear_model((12, 1), w)
    contrib = w[None, :, 0, 0] * x[..., 0]  # baseline 0
    kw = dict(targets=0, baseline=0.0, softmax=False, reduce=None)
    # Putting back features that all raise the output is monotonic, whatever the order.
    np.testing.assert_array_equal(metrics.monotonicity(model, x, rng.random((3, 12)), **kw), 1.0)
    # Pixel flipping: f(x^k) = f(x) - the k largest contributions (the map ranks by contribution).
    order = np.sort(contrib, axis=1)[:, ::-1]
    curve = (contrib.sum(axis=1) + 0.3)[:, None] - np.cumsum(order, axis=1)
    np.testing.assert_allclose(metrics.pixel_flipping(model, x, contrib, **kw), np.trapezoid(curve, axis=1),
                               rtol=1e-5)
    # Region perturbation in 1-D: patches of 4 (12 features: no padding), AOPC over 2 of 3 regions.
    patches = contrib.reshape(3, 3, 4).sum(axis=2)
    drops = np.cumsum(np.sort(patches, axis=1)[:, ::-1], axis=1)[:, :2]
    np.testing.assert_allclose(metrics.region_perturbation(model, x, contrib, patch_size=4, regions=2, **kw),
                               drops.sum(axis=1) / 3, rtol=1e-5)
    # A feature that lowers the output, put back last: not monotonic.
    w2 = w.copy()
    w2[5, 0, 0] = -3.0
    model2 = linear_model((12, 1), w2)
    m = contrib.copy()
    m[:, 5] = 100.0
    np.testing.assert_array_equal(metrics.monotonicity(model2, x, m, **kw), 0.0)


def test_monotonicity_correlation_of_spread_weights():
    """Zero image: replacing feature k by u moves the logit by w_k u, so v_k ~ w_k^2 E[u^2];
    weights spread by a factor of 4 keep their order through the Monte-Carlo noise."""
    w = (4.0 ** np.arange(6))[::-1][np.array([3, 0, 5, 1, 4, 2])].reshape(6, 1, 1) * np.ones((1, 1, 2)) * 1e-3
    model = linear_model((6, 1), w, bias=(1.0, 1.0))
    x = np.zeros((2, 6, 1), np.float32)
    m = np.broadcast_to(w[:, 0, 0] ** 2, (2, 6))
    np.testing.assert_allclose(metrics.monotonicity_correlation(model, x, m, targets=0, samples=30, softmax=False, reduce=None), 1.0)
    np.testing.assert_allclose(metrics.monotonicity_correlation(model, x, -m, targets=0, samples=30, softmax=False,
                                                                reduce=None), -1.0)


def test_sufficiency_of_two_clusters():
    model = linear_model((4, 1), np.ones((4, 1, 2)))
    x = np.zeros((5, 4, 1), np.float32)
    base = np.array([1.0, 0.0, 2.0, 0.5])
    maps = np.stack([base, base, base + 3, base + 3, base + 9])
    # Distances 3, 6, 9 (times one factor) between the clusters, 1/3, 2/3, 1 of the largest: within 0.2
    # only the identical pairs. Classes 0, 0, 1, 0, 1: images 0 and 1 agree with their one neighbour,
    # 2 and 3 disagree, 4 has none.
    values = metrics.sufficiency(model, x, maps, targets=[0, 0, 1, 0, 1], threshold=0.2, reduce=None)
    np.testing.assert_array_equal(values, [1.0, 1.0, 0.0, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# (b) direct loops from the papers


def _baseline(img):
    return img.min()  # "black": the image's minimum


def test_faithfulness_estimate_and_curves_by_direct_loops(conv2d):
    model, images, maps, classes = conv2d
    est, flip, mono, sel, aopc = [], [], [], [], []
    for img, m, c in zip(images, maps, classes):
        y = predict(model, img[None], c)[0]
        order = np.argsort(-m.ravel(), kind="stable")
        b = _baseline(img)
        # Faithfulness estimate, 3 features at a time, each group alone removed.
        changed, sums = [], []  # the perturbed copies, scored in one call
        for k in range(0, order.size, 3):
            z = img.reshape(-1, 2).copy()
            z[order[k:k + 3]] = b
            changed.append(z.reshape(img.shape))
            sums.append(m.ravel()[order[k:k + 3]].sum())
        est.append(np.corrcoef(sums, y - predict(model, changed, c))[0, 1])
        # Pixel flipping, 4 at a time, cumulative.
        z, changed = img.reshape(-1, 2).copy(), []
        for k in range(0, order.size, 4):
            z[order[k:k + 4]] = b
            changed.append(z.reshape(img.shape).copy())
        flip.append(np.trapezoid(predict(model, changed, c)))
        # Monotonicity: from the baseline, features back in increasing order, 4 at a time.
        up = np.argsort(m.ravel(), kind="stable")
        z, changed = np.full_like(img.reshape(-1, 2), b), []
        for k in range(0, up.size, 4):
            z[up[k:k + 4]] = img.reshape(-1, 2)[up[k:k + 4]]
            changed.append(z.reshape(img.shape).copy())
        mono.append(float(np.all(np.diff(predict(model, changed, c)) >= 0)))
        # Patches of 3 on the 7x6 grid, padded to 9x6: one row of padding before, one after.
        rows, cols = (np.arange(7) + 1) // 3, np.arange(6) // 3
        cell = rows[:, None] * 2 + cols[None]
        sums = np.array([m[cell == p].sum() for p in range(6)])
        z, changed = img.copy(), []
        for p in np.argsort(-sums, kind="stable"):
            z[cell == p] = b
            changed.append(z.copy())
        curve = predict(model, changed, c)
        sel.append(np.trapezoid(curve))
        aopc.append(sum(y - v for v in curve[:5]) / 6)
    kw = dict(targets=classes, reduce=None)
    np.testing.assert_allclose(
        metrics.faithfulness_estimate(model, images, maps, features_in_step=3, softmax=True, **kw), est, atol=1e-5)
    np.testing.assert_allclose(metrics.pixel_flipping(model, images, maps, features_in_step=4, **kw), flip,
                               atol=1e-5)
    np.testing.assert_array_equal(metrics.monotonicity(model, images, maps, features_in_step=4, **kw), mono)
    np.testing.assert_allclose(metrics.selectivity(model, images, maps, patch_size=3, **kw), sel, atol=1e-5)
    np.testing.assert_allclose(metrics.region_perturbation(model, images, maps, patch_size=3, regions=5, **kw),
                               aopc, atol=1e-6)


def test_infidelity_irof_sufficiency_by_direct_loops(conv2d):
    from scipy.spatial.distance import cdist
    from skimage.segmentation import slic

    model, images, maps, classes = conv2d
    infd, aoc = [], []
    for img, m, c in zip(images, maps, classes):
        y = predict(model, img[None], c)[0]
        b = _baseline(img)
        # Infidelity with squares of 2 (7 rows padded to 8: none before, one after), raster order, cumulative.
        cell = (np.arange(7) // 2)[:, None] * 3 + (np.arange(6) // 2)[None]
        z, changed, explained = img.copy(), [], []
        for p in range(12):
            z[cell == p] = b
            changed.append(z.copy())
            explained.append(((img - z) * m[..., None]).sum())
        infd.append(np.mean((y - predict(model, changed, c) - np.array(explained)) ** 2))
        # IROF: superpixels by decreasing mean map value, each filled with the current image's mean.
        seg = slic(img.astype(np.float64), start_label=0, n_segments=6)
        labels = np.unique(seg)
        means = np.array([m[seg == s].mean() for s in labels])
        z, changed = img.astype(np.float64), []
        for s in labels[np.argsort(-means, kind="stable")]:
            z[seg == s] = z.mean()
            changed.append(z.copy())
        aoc.append(len(labels) - np.trapezoid(predict(model, changed, c) / y))
    kw = dict(targets=classes, reduce=None)
    np.testing.assert_allclose(metrics.infidelity(model, images, maps, patch_sizes=(2,), softmax=True, **kw), infd,
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(metrics.irof(model, images, maps, n_segments=6, **kw), aoc, atol=1e-5)
    # Sufficiency: standardized distances between the maps, neighbours within the threshold.
    flat = maps.reshape(4, -1).astype(np.float64)
    dist = cdist(flat, flat, "seuclidean")
    dist /= dist.max()
    for threshold in (0.6, 0.8, 0.9):
        near = (dist <= threshold) & ~np.eye(4, dtype=bool)
        expected = [(near[i] & (classes == classes[i])).sum() / near[i].sum() if near[i].any() else 0.0
                    for i in range(4)]
        np.testing.assert_allclose(metrics.sufficiency(model, images, maps, threshold=threshold, reduce=None),
                                   expected)


def test_random_subsets_agree_with_a_direct_loop_in_mean(conv2d):
    """Sensitivity-n with numpy's own subsets: the same correlation within Monte-Carlo error."""
    model, images, maps, classes = conv2d
    rng = np.random.default_rng(5)
    loop = []
    for img, m, c in zip(images, maps, classes):
        y = predict(model, img[None], c)[0]
        subsets = [rng.choice(42, 10, replace=False) for _ in range(150)]
        z = np.repeat(img.reshape(1, -1, 2), len(subsets), axis=0)
        for j, s in enumerate(subsets):
            z[j, s] = _baseline(img)
        drops = y - predict(model, z.reshape((-1,) + img.shape), c)
        loop.append(np.corrcoef([m.ravel()[s].sum() for s in subsets], drops)[0, 1])
    ours = [metrics.sensitivity_n(model, images, maps, sizes=10, subsets=150, seed=s, reduce=None) for s in range(3)]
    spread = np.std(ours, axis=0).max() + 1.0 / np.sqrt(150)
    np.testing.assert_allclose(np.mean(ours, axis=0), loop, atol=4 * spread)


# ---------------------------------------------------------------------------------------------
# (c) Quantus 0.6


@pytest.fixture
def quantus(monkeypatch):
    q = pytest.importorskip("quantus")
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # Quantus 0.6 calls np.trapz, gone in numpy 2.4
    return q


def _quantus(q, cls, model, images, maps, classes, batch_size=64, softmax=True, **kwargs):
    """Quantus's per-image values; ``softmax=True`` for every metric here (Quantus rebuilds the model without
    its softmax at every call otherwise, which is slow; the logits path is held to the closed forms above)."""
    metric = cls(disable_warnings=True, normalise=False, abs=False, **kwargs)
    return np.asarray(metric(model=model, x_batch=images, y_batch=classes, a_batch=maps[:, None], channel_first=False,
                             batch_size=batch_size, softmax=softmax), dtype=np.float64)


@pytest.fixture(scope="module")
def one_channel():
    model = conv_model((8, 8, 1), seed=1)
    rng = np.random.default_rng(4)
    images = rng.random((5, 8, 8, 1)).astype(np.float32)
    maps = rng.random((5, 8, 8)).astype(np.float32)
    return model, images, maps, np.argmax(to_host(model(images)), axis=1)


NOT_LEGACY = pytest.mark.skipif(LEGACY, reason="Quantus 0.6 wraps models with Keras 3, not tf-keras")


@pytest.mark.tensorflow_only
@NOT_LEGACY
def test_deterministic_metrics_match_quantus(quantus, one_channel):
    q = quantus
    model, images, maps, classes = one_channel
    kw = dict(targets=classes, reduce=None)
    close = dict(rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(metrics.faithfulness_estimate(model, images, maps, features_in_step=16, softmax=True, **kw),
                               _quantus(q, q.FaithfulnessEstimate, *one_channel, features_in_step=16), **close)
    np.testing.assert_allclose(metrics.pixel_flipping(model, images, maps, features_in_step=16, **kw),
                               _quantus(q, q.PixelFlipping, *one_channel, features_in_step=16,
                                        return_auc_per_sample=True), **close)
    curve = _quantus(q, q.RegionPerturbation, *one_channel, patch_size=3, regions_evaluation=3)
    np.testing.assert_allclose(metrics.region_perturbation(model, images, maps, patch_size=3, regions=3, **kw),
                               curve.sum(axis=1) / (curve.shape[1] + 1), **close)
    curve = _quantus(q, q.Selectivity, *one_channel, patch_size=5)  # 8 padded to 10: 4 patches
    np.testing.assert_allclose(metrics.selectivity(model, images, maps, patch_size=5, **kw),
                               np.trapezoid(curve, axis=1), **close)
    np.testing.assert_allclose(metrics.infidelity(model, images, maps, patch_sizes=(4, 8), softmax=True, **kw),
                               _quantus(q, q.Infidelity, *one_channel, perturb_patch_sizes=[4, 8],
                                        n_perturb_samples=1), **close)
    np.testing.assert_allclose(metrics.sufficiency(model, images, maps, threshold=0.8, **kw),
                               _quantus(q, q.Sufficiency, *one_channel, threshold=0.8), **close)
    # With a fixed baseline, monotonicity correlation is deterministic: one sample per step.
    np.testing.assert_allclose(
        metrics.monotonicity_correlation(model, images, maps, features_in_step=8, samples=1, baseline="black", **kw),
        _quantus(q, q.MonotonicityCorrelation, *one_channel, features_in_step=8, nr_samples=1,
                 perturb_baseline="black"), **close)
    # IROF on a 4x4 image (SLIC's default 100 segments: one per pixel, 16 model calls in Quantus); Quantus
    # fills with the mean of its whole batch: one image per batch.
    small = conv_model((4, 4, 1), seed=2)
    x4, m4 = images[:1, 2:6, 2:6], maps[:1, 2:6, 2:6]
    c4 = np.argmax(to_host(small(x4)), axis=1)
    np.testing.assert_allclose(metrics.irof(small, x4, m4, targets=c4, reduce=None),
                               _quantus(q, q.IROF, small, x4, m4, c4, batch_size=1), **close)


@pytest.mark.tensorflow_only
@NOT_LEGACY
def test_faithfulness_correlation_matches_quantus_in_mean(quantus, one_channel):
    q = quantus
    model, images, maps, classes = one_channel
    np.random.seed(0)
    theirs = _quantus(q, q.FaithfulnessCorrelation, *one_channel, subset_size=10, nr_runs=12).mean()
    ours = [metrics.faithfulness_correlation(model, images, maps, classes, subset_size=10, runs=12, seed=s,
                                             softmax=True)
            for s in range(4)]
    assert abs(np.mean(ours) - theirs) < 4 * max(np.std(ours), 0.5 / np.sqrt(12 * len(images)))


# ---------------------------------------------------------------------------------------------
# (d) invariances, layouts, bad input


@pytest.mark.parametrize("name", list(ALL))
def test_per_image_mean_and_batch_size_invariance(name, conv2d):
    model, images, maps, _ = conv2d
    fn = getattr(metrics, name)
    per_image = fn(model, images, maps, batch_size=5, reduce=None, **ALL[name])
    assert per_image.shape == (4,) and per_image.dtype == np.float64 and np.isfinite(per_image).all()
    assert fn(model, images, maps, batch_size=64, **ALL[name]) == pytest.approx(per_image.mean(), abs=1e-6)
    np.testing.assert_allclose(fn(model, images, maps, batch_size=2, reduce=None, **ALL[name]), per_image, atol=1e-6)


def test_one_and_three_dimensional_layouts():
    rng = np.random.default_rng(6)
    for shape in [(12, 2), (4, 5, 3, 1)]:
        model = conv_model(shape)
        images = rng.random((3,) + shape).astype(np.float32)
        maps = rng.random((3,) + shape[:-1]).astype(np.float32)
        names = ALL if len(shape) == 2 else ("pixel_flipping", "region_perturbation", "irof", "infidelity")
        for name, kwargs in ((k, ALL[k]) for k in names):
            if name == "irof" and len(shape) == 2:
                with pytest.raises(ValueError, match="2-D or 3-D"):
                    metrics.irof(model, images, maps)
                continue
            if name == "irof":
                kwargs = {"n_segments": 4, "channel_axis": -1}
            values = getattr(metrics, name)(model, images, maps, reduce=None, **kwargs)
            assert values.shape == (3,) and np.isfinite(values).all(), name
    # A 1-D region perturbation by hand: 12 features, patches of 3, the first patch removed.
    model = conv_model((12, 2))
    x = rng.random((2, 12, 2)).astype(np.float32)
    m = np.zeros((2, 12), np.float32)
    m[:, :3] = 1.0
    c = np.argmax(to_host(model(x)), axis=1)
    z = x.copy()
    z[:, :3] = x.reshape(2, -1).min(axis=1)[:, None, None]
    expected = (predict(model, x, c) - predict(model, z, c)) / 2
    np.testing.assert_allclose(metrics.region_perturbation(model, x, m, patch_size=3, regions=1, reduce=None),
                               expected, atol=1e-6)


def test_constant_maps_get_documented_values(conv2d):
    model, images, _, _ = conv2d
    for fill in (0.0, 0.7):
        maps = np.full(images.shape[:-1], fill, np.float32)
        for name in ("faithfulness_correlation", "faithfulness_estimate", "sensitivity_n", "monotonicity_correlation"):
            np.testing.assert_array_equal(getattr(metrics, name)(model, images, maps, reduce=None, **ALL[name]), 0.0)
        for name, kwargs in ALL.items() if fill == 0.0 else ():
            assert np.isfinite(getattr(metrics, name)(model, images, maps, reduce=None, **kwargs)).all(), name
        # Identical maps: no feature varies, every image is every other's neighbour at distance 0.
        np.testing.assert_allclose(metrics.sufficiency(model, images, maps, targets=[0, 0, 1, 2], reduce=None),
                                   [1 / 3, 1 / 3, 0.0, 0.0])


def test_bad_input(conv2d):
    model, images, maps, _ = conv2d
    with pytest.raises(ValueError, match="maps"):
        metrics.pixel_flipping(model, images, maps[:, :5])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.faithfulness_estimate(model, images, bad)
    with pytest.raises(ValueError, match="reduce"):
        metrics.selectivity(model, images, maps, reduce="median")
    with pytest.raises(ValueError, match="baseline"):
        metrics.pixel_flipping(model, images, maps, baseline="grey")
    with pytest.raises(ValueError, match="subset_size"):
        metrics.faithfulness_correlation(model, images, maps, subset_size=43)
    with pytest.raises(ValueError, match="order"):
        metrics.region_perturbation(model, images, maps, order="random")
    with pytest.raises(ValueError, match="features_in_step"):
        metrics.monotonicity(model, images, maps, features_in_step=0)
    with pytest.raises(ValueError, match="sizes"):
        metrics.sensitivity_n(model, images, maps, sizes=(50,))
    with pytest.raises(TypeError, match="callable"):
        metrics.infidelity(model, images, maps, targets=lambda out: out[:, 0])
    before = (images.copy(), maps.copy())
    metrics.irof(model, images, maps, n_segments=5)
    np.testing.assert_array_equal(images, before[0])
    np.testing.assert_array_equal(maps, before[1])

"""LIME and KernelSHAP, number by number.

Each check is against a computation written here from the papers' definitions:
the Shapley values of a linear model (``w . (x - b)`` summed over each
superpixel), the Shapley formula by enumerating subsets, the coalitions and
weighted fits re-derived in numpy (scikit-learn's ridge for LIME, the
constraint eliminated as ``shap`` does for KernelSHAP), and ``shap``'s own
KernelExplainer. Then the invariances (batch == single, seeds,
``explain_dataset``) and the errors.
"""

import itertools
import math

import numpy as np
import pytest

from keras_cam import random as kc_random
from keras_cam._compat import keras, ops, to_host
from keras_cam.methods.surrogate import LIME, KernelSHAP, merge_smallest, relabel

H = W = 8
C = 2
L = keras.layers


def linear_model(seed, shape=(H, W, C), classes=3):
    keras.utils.set_random_seed(seed)
    inp = keras.Input(shape)
    return keras.Model(inp, L.Dense(classes)(L.Flatten()(inp)))


def small_cnn(seed, shape=(H, W, C)):
    keras.utils.set_random_seed(seed)
    inp = keras.Input(shape)
    x = L.Conv2D(3, 3, padding="same", activation="tanh")(inp)
    return keras.Model(inp, L.Dense(3)(L.Flatten()(x)))


def blocks(k_rows, k_cols, h=H, w=W):
    """Rectangular superpixels: a ``k_rows x k_cols`` grid of blocks."""
    return (np.arange(h)[:, None] * k_rows // h) * k_cols + (np.arange(w)[None, :] * k_cols // w)


def scores(model, images, cls):
    return to_host(model(ops.convert_to_tensor(np.asarray(images, np.float32))))[:, cls].astype(np.float64)


def masked(x, base, labels, z):
    """``b + z[L] (x - b)`` for each coalition row of ``z``."""
    keep = np.asarray(z, np.float32)[:, labels][..., None]
    return base + keep * (x - base)


def per_segment(maps, labels):
    """The value painted on each superpixel (and that it is constant there)."""
    k = labels.max() + 1
    values = np.array([maps[labels == s][0] for s in range(k)])
    np.testing.assert_allclose(maps, values[labels], rtol=0, atol=0)
    return values


def images(n, seed=0, shape=(H, W, C)):
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype(np.float32)


# ---------------------------------------------------------------- KernelSHAP: the linear model

@pytest.mark.parametrize("seed,grid_shape,baseline,coalitions", [
    (0, (1, 1), 0.0, 50),          # K = 1: phi = f(x) - f(b), no coalition run
    (3, (2, 2), [0.2, -0.4], 14),  # K = 4, exactly the 14 coalitions, one value per channel
    (5, (4, 4), "mean", 48),       # K = 16, sampled (65534 > 48), each superpixel filled with its mean
])
def test_kernelshap_on_a_linear_model_is_w_times_x_minus_b_per_superpixel(seed, grid_shape, baseline, coalitions):
    model = linear_model(seed)
    x = images(2, seed)
    labels = blocks(*grid_shape)
    w = model.get_weights()[0][:, 1].reshape(H, W, C).astype(np.float64)
    shap = KernelSHAP(model, segments=labels, coalitions=coalitions, baseline=baseline, seed=seed)
    got = shap(x, targets=1, normalize=False)
    k = labels.max() + 1
    for i in range(len(x)):
        if baseline == "mean":
            b = np.zeros_like(x[i])
            for s in range(k):
                b[labels == s] = x[i][labels == s].mean(axis=0)
        else:
            b = np.broadcast_to(np.asarray(0.0 if baseline is None else baseline, np.float32), x[i].shape)
        contribution = (w * (x[i] - b)).sum(-1)
        expected = np.array([contribution[labels == s].sum() for s in range(k)])
        values = per_segment(got[i], labels)
        np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        # efficiency: the values add up to f(x) - f(b)
        delta = scores(model, np.stack([x[i], b]), 1)
        assert values.sum() == pytest.approx(delta[0] - delta[1], rel=1e-4, abs=1e-5)


# ---------------------------------------------------------------- KernelSHAP: Shapley values by enumeration

def shapley_by_subsets(value, k):
    """phi_i = sum_{S not containing i} |S|! (k - |S| - 1)! / k! (v(S + i) - v(S))."""
    phi = np.zeros(k)
    for i in range(k):
        others = [j for j in range(k) if j != i]
        for r in range(k):
            for subset in itertools.combinations(others, r):
                weight = math.factorial(r) * math.factorial(k - r - 1) / math.factorial(k)
                phi[i] += weight * (value(set(subset) | {i}) - value(set(subset)))
    return phi


def test_kernelshap_enumerated_equals_the_shapley_formula_on_a_nonlinear_model(seed=2, grid_shape=(1, 5)):
    model = small_cnn(seed)
    x = images(1, seed + 10)[0]
    labels = blocks(*grid_shape)
    k = labels.max() + 1
    base = np.full_like(x, 0.3)
    z_all = np.array(list(itertools.product([0, 1], repeat=k)))
    table = dict(zip(map(tuple, z_all), scores(model, masked(x, base, labels, z_all), 2)))

    def value(subset):
        return table[tuple(int(j in subset) for j in range(k))]

    expected = shapley_by_subsets(value, k)
    got = per_segment(KernelSHAP(model, segments=labels, coalitions=2 ** k, baseline=0.3)(
        x, targets=2, normalize=False), labels)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5 * np.abs(expected).max())


def kernelshap_loop(model, x, base, labels, cls, coalitions, seed):
    """KernelSHAP from the paper, sampled as the docstring says, in numpy: sizes drawn with
    mass (K - 1) / (s (K - s)), subsets of the smallest keys, complementary pairs, the
    efficiency constraint eliminated (phi_K = delta - sum of the others) as shap does."""
    k = labels.max() + 1
    mass = np.array([1.0 / (s * (k - s)) for s in range(1, k)])
    cdf = np.cumsum(mass) / mass.sum()
    rows = []
    for j in range(coalitions):
        g = kc_random.normal_numpy(seed, [j // 2], (k + 1,))[0]
        u = 0.5 * (1 + math.erf(g[0] / math.sqrt(2)))
        size = min(1 + int((cdf < u).sum()), k - 1)
        z = np.zeros(k)
        z[np.argsort(g[1:], kind="stable")[:size]] = 1
        rows.append(1 - z if j % 2 else z)
    z = np.array(rows)
    f = scores(model, masked(x, base, labels, z), cls)
    fx, fb = scores(model, np.stack([x, base]), cls)
    delta = fx - fb
    y = f - fb - z[:, -1] * delta
    design = z[:, :-1] - z[:, -1:]
    head = np.linalg.lstsq(design, y, rcond=None)[0]
    return np.append(head, delta - head.sum())


def test_kernelshap_sampled_equals_the_loop(seed=2, grid_shape=(2, 5), coalitions=31, batch_size=5):
    model = small_cnn(seed)
    x = images(1, seed + 20)[0]
    labels = blocks(*grid_shape)
    expected = kernelshap_loop(model, x, np.zeros_like(x), labels, 0, coalitions, seed)
    got = per_segment(KernelSHAP(model, segments=labels, coalitions=coalitions, seed=seed, batch_size=batch_size)(
        x, targets=0, normalize=False), labels)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_kernelshap_sampling_converges_to_the_shapley_values():
    """K = 8 (254 coalitions): the sampled values approach the Shapley values (by the
    formula), the error shrinking as coalitions grow; the efficiency holds at any count."""
    model = small_cnn(7)
    x = images(1, 30)[0]
    labels = blocks(2, 4)
    z_all = np.array(list(itertools.product([0, 1], repeat=8)))
    table = dict(zip(map(tuple, z_all), scores(model, masked(x, np.zeros_like(x), labels, z_all), 1)))
    exact = shapley_by_subsets(lambda subset: table[tuple(int(j in subset) for j in range(8))], 8)
    errors = {}
    for count in (24, 240):
        got = KernelSHAP(model, segments=labels, coalitions=count, batch_size=24)(x, targets=1, normalize=False)
        values = per_segment(got, labels)
        assert values.sum() == pytest.approx(exact.sum(), rel=1e-4, abs=1e-5)  # efficiency, always
        errors[count] = np.abs(values - exact).max()
    scale = np.abs(exact).max()
    assert errors[240] < errors[24] and errors[240] < 0.15 * scale, (errors, scale)


# ---------------------------------------------------------------- LIME

def lime_loop(model, x, labels, cls, samples, seed, kernel_width=0.25, alpha=1.0):
    """LIME as the lime package fits it: z_0 = 1, random halves, the cosine distance, the
    kernel sqrt(exp(-d^2 / width^2)), scikit-learn's Ridge with sample weights; the
    hidden superpixels filled with their own mean."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import pairwise_distances

    k = labels.max() + 1
    z = (kc_random.normal_numpy(seed, np.arange(samples), (k,)) > 0).astype(float)
    z[0] = 1
    base = np.zeros_like(x)
    for s in range(k):
        base[labels == s] = x[labels == s].mean(axis=0)
    d = pairwise_distances(z, np.ones((1, k)), metric="cosine")[:, 0]
    weights = np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))
    y = scores(model, masked(x, base, labels, z), cls)
    return Ridge(alpha=alpha).fit(z, y, sample_weight=weights).coef_


def test_lime_equals_the_lime_packages_fit(seed=2, grid_shape=(3, 3), samples=50, alpha=1.0, batch_size=7):
    model = small_cnn(seed)
    x = images(1, seed + 40)[0]
    labels = blocks(*grid_shape)
    expected = lime_loop(model, x, labels, 1, samples, seed, alpha=alpha)
    got = per_segment(LIME(model, segments=labels, samples=samples, seed=seed, alpha=alpha, batch_size=batch_size)(
        x, targets=1, normalize=False), labels)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-4 * np.abs(expected).max())


def test_lime_recovers_the_per_superpixel_effects_of_a_linear_model(seed=1):
    """f(z) = f(b) + sum_k z_k e_k exactly, e_k = w . (x - b) over superpixel k: without the
    penalty LIME recovers e; lime's alpha = 1 shrinks it a little, keeping its order."""
    model = linear_model(seed)
    x = images(1, seed + 50)[0]
    labels = blocks(2, 3)
    w = model.get_weights()[0][:, 0].reshape(H, W, C)
    contribution = (w * x).sum(-1)  # baseline 0
    effects = np.array([contribution[labels == s].sum() for s in range(6)])
    plain = per_segment(LIME(model, segments=labels, samples=60, alpha=0.0, baseline=0.0, seed=seed, batch_size=60)(
        x, targets=0, normalize=False), labels)
    np.testing.assert_allclose(plain, effects, rtol=1e-3, atol=1e-4 * np.abs(effects).max())
    ridge = per_segment(LIME(model, segments=labels, samples=300, baseline=0.0, seed=seed, batch_size=60)(
        x, targets=0, normalize=False), labels)
    np.testing.assert_allclose(ridge, effects, rtol=0.1, atol=0.05 * np.abs(effects).max())
    assert (np.argsort(ridge) == np.argsort(effects)).all()


# ---------------------------------------------------------------- superpixels

def test_slic_superpixels_paint_the_map_and_respect_the_capacity():
    model = small_cnn(0, shape=(16, 16, 3))
    x = np.random.default_rng(3).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    for n_segments in (4, 9, 300):
        labels = LIME(model, n_segments=n_segments).superpixels(x)
        assert labels.shape == (2, 16, 16)
        for i in range(2):
            k = labels[i].max() + 1
            assert k <= n_segments and set(np.unique(labels[i])) == set(range(k))
            assert k >= min(n_segments, n_segments // 4)  # a noisy input: SLIC reruns more compact
    lime = LIME(model, samples=12, n_segments=9)
    maps = lime(x, normalize=False)
    for i in range(2):
        per_segment(maps[i], lime.superpixels(x)[i])  # constant on each superpixel
    # a callable and a fixed array give the labels they were asked for (renumbered)
    fixed = blocks(2, 2, 16, 16) * 3 + 7
    assert (LIME(model, segments=fixed).superpixels(x[0]) == relabel(fixed)).all()
    assert (LIME(model, segments=lambda im: (im[..., 0] > 0.5).astype(int), n_segments=2).superpixels(x)
            == (x[..., 0] > 0.5)).all()


def test_merge_smallest_coarsens_to_the_capacity():
    rng = np.random.default_rng(0)
    for trial in range(5):
        labels = rng.integers(0, 12, (6, 7))
        merged = merge_smallest(labels, 5)
        assert merged.max() + 1 <= 5
        # a coarsening: every original label lies in one merged label
        for s in np.unique(labels):
            assert len(np.unique(merged[labels == s])) == 1


def test_volumes_use_slic_supervoxels_and_fixed_segments_are_exact():
    shape = (4, 6, 6, 1)
    model = linear_model(0, shape=shape)
    x = images(1, 60, shape)
    labels = KernelSHAP(model, coalitions=20, n_segments=6).superpixels(x)
    assert labels.shape == (1, 4, 6, 6) and 2 <= labels.max() + 1 <= 6
    fixed = np.broadcast_to(np.arange(4)[:, None, None] // 2 * 2 + np.arange(6)[None, None, :] // 3, (4, 6, 6)).copy()
    got = KernelSHAP(model, segments=fixed, coalitions=14)(x, targets=2, normalize=False)[0]
    w = model.get_weights()[0][:, 2].reshape(shape)
    contribution = (w * x[0]).sum(-1)
    expected = np.array([contribution[fixed == s].sum() for s in range(4)])
    np.testing.assert_allclose(per_segment(got, fixed), expected, rtol=1e-4, atol=1e-5)


def test_signals_need_segments_and_then_are_exact():
    model = linear_model(0, shape=(12, 2))
    x = images(2, 70, (12, 2))
    for cls in (LIME, KernelSHAP):
        with pytest.raises(ValueError, match=r"segments=.*Occlusion"):
            cls(model)
    windows = np.arange(12) // 4
    got = KernelSHAP(model, segments=windows, coalitions=6)(x, targets=0, normalize=False)
    w = model.get_weights()[0][:, 0].reshape(12, 2)
    for i in range(2):
        contribution = (w * x[i]).sum(-1)
        np.testing.assert_allclose(per_segment(got[i], windows), [contribution[windows == s].sum() for s in range(3)],
                                   rtol=1e-4, atol=1e-5)


def test_channels_first_model_with_a_per_channel_baseline():
    keras.utils.set_random_seed(0)
    inp = keras.Input((C, H, W))
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(inp)))
    x = images(1, 80, (C, H, W))
    labels = blocks(2, 2)
    base = np.array([0.5, -1.0], np.float32).reshape(C, 1, 1)
    got = KernelSHAP(model, segments=labels, coalitions=14, baseline=base, data_format="channels_first")(
        x, targets=1, normalize=False)[0]
    w = model.get_weights()[0][:, 1].reshape(C, H, W)
    contribution = (w * (x[0] - base)).sum(0)
    expected = [contribution[labels == s].sum() for s in range(4)]
    np.testing.assert_allclose(per_segment(got, labels), expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- invariances

def test_batch_equals_single_calls_and_a_new_explainer():
    """SLIC superpixels, the "mean" fill, the streamed loop (its remainder: the loop test
    above): an image alone gets its map in the batch, and a new explainer with the same
    seed the same map."""
    model = small_cnn(1)
    x = images(3, 90)

    def make():
        return KernelSHAP(model, coalitions=9, n_segments=8, batch_size=9, baseline="mean")

    explainer = make()
    batch = explainer(x, targets=[0, 1, 2], normalize=False)
    for i in range(3):
        np.testing.assert_allclose(explainer(x[i], targets=i, normalize=False), batch[i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(make()(x[1], targets=1, normalize=False), batch[1], rtol=1e-5, atol=1e-6)


def test_other_seeds_draw_other_coalitions():
    model = small_cnn(2)
    x = images(1, 91)
    labels = blocks(3, 3)
    lime = [LIME(model, segments=labels, samples=16, seed=s)(x, normalize=False) for s in (0, 1)]
    assert np.abs(lime[0] - lime[1]).max() > 1e-4    # (KernelSHAP's seeds: the loop above follows them)


def test_explain_dataset_gives_the_same_maps():
    from keras_cam.dataset import explain_dataset

    model = small_cnn(3)
    x = images(4, 92)
    y = np.array([0, 1, 2, 1])
    explainer = KernelSHAP(model, coalitions=10, n_segments=5)  # SLIC on the host, inside explain_dataset's step
    results = list(explain_dataset(explainer, list(zip(x, y)), batch_size=2, verbose=0))
    np.testing.assert_allclose(np.concatenate([r.maps for r in results]), explainer(x, targets=y), atol=2e-5)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("cls,kwargs,match", [
    (LIME, {"samples": 0}, "`samples`"),
    (KernelSHAP, {"coalitions": -3}, "`coalitions`"),
    (LIME, {"n_segments": 0}, "`n_segments`"),
    (KernelSHAP, {"n_segments": 2.5}, "`n_segments`"),
    (LIME, {"kernel_width": 0}, "`kernel_width`"),
    (LIME, {"alpha": -1}, "`alpha`"),
    (KernelSHAP, {"compactness": float("nan")}, "`compactness`"),
    (KernelSHAP, {"seed": 1.5}, "`seed`"),
    (KernelSHAP, {"segments": np.zeros((H, W + 1), int)}, r"`segments` has shape \(8, 9\).*\(8, 8\)"),
    (LIME, {"segments": np.zeros((2, H, W), int)}, "`segments` has shape"),
    (LIME, {"segments": np.zeros((H, W), np.float32)}, "integer label array"),
    (LIME, {"segments": "slic"}, "integer label array"),
    (KernelSHAP, {"baseline": "median"}, "`baseline`"),
    (KernelSHAP, {"baseline": np.zeros((3, 3))}, "`baseline` has shape"),
    (KernelSHAP, {"baseline": np.nan}, "NaN"),
    (LIME, {"layer": "dense"}, "no target layer"),
    (KernelSHAP, {"aug_smooth": True}, "aug_smooth"),
    (LIME, {"eigen_smooth": True}, "eigen_smooth"),
])
def test_bad_arguments_are_clear_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(linear_model(0), **kwargs)


def test_lime_refuses_a_single_coalition():
    with pytest.raises(ValueError, match="samples` >= 2.*samples=1"):
        LIME(linear_model(0), samples=1)
    LIME(linear_model(0), samples=2)  # the whole input and one coalition: a fit exists


class _UserError(Exception):
    pass


@pytest.mark.parametrize("cls", [LIME, KernelSHAP])
def test_a_segments_callables_own_error_reaches_the_caller_unwrapped(cls):
    """The callable also runs inside the compiled call (a host callback, whose errors the
    backends wrap in their own); it runs once on the host first, so the user sees theirs."""
    def broken(image):
        raise _UserError("my segmenter failed on purpose")
    kwargs = {"samples": 4} if cls is LIME else {"coalitions": 4}
    with pytest.raises(_UserError, match="on purpose"):
        cls(linear_model(0), segments=broken, **kwargs)(images(2, 3))
    with pytest.raises(ValueError, match="must return integer labels of the input's spatial shape"):
        cls(linear_model(0), segments=lambda im: np.zeros(3, int), **kwargs)(images(2, 3))


def test_bad_callable_segments_are_clear_errors():
    model = linear_model(0)
    x = images(1, 94)
    with pytest.raises(Exception, match="spatial shape"):
        KernelSHAP(model, segments=lambda im: np.zeros(3, int), coalitions=4).superpixels(x)
    with pytest.raises(Exception, match="n_segments=4"):
        KernelSHAP(model, segments=lambda im: np.arange(H * W).reshape(H, W), n_segments=4).superpixels(x)


# ---------------------------------------------------------------- the peer: shap's KernelExplainer

def test_kernelshap_equals_shaps_kernel_explainer_with_all_coalitions(seed=1, k=5):
    """A tabular-like model (a tanh MLP on 12 features), each superpixel a group of features;
    shap explains the same game (the features of kept groups from x, the others from b)
    with its coalitions enumerated (nsamples >= 2^k - 2), so both are exact."""
    shap = pytest.importorskip("shap")
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 1))
    hidden = L.Dense(6, activation="tanh")(L.Flatten()(inp))
    model = keras.Model(inp, L.Dense(2)(hidden))
    groups = np.arange(12) * k // 12
    rng = np.random.default_rng(seed)
    x, b = rng.normal(size=(12, 1)).astype(np.float32), rng.normal(size=(12, 1)).astype(np.float32)

    def game(z):  # z (n, k) in {0, 1}: shap's coalitions of groups
        return scores(model, masked(x, b, groups, z), 1)

    explainer = shap.KernelExplainer(game, np.zeros((1, k)))
    expected = np.asarray(explainer.shap_values(np.ones((1, k)), nsamples=2 ** k, silent=True)).reshape(-1)
    got = KernelSHAP(model, segments=groups, coalitions=2 ** k, baseline=b)(x, targets=1, normalize=False)
    np.testing.assert_allclose(per_segment(got, groups), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())

"""Concepts: the NMF, Deep Feature Factorization, CRAFT and its Sobol estimator, Audit.concepts.

Every number is held to an independent computation: the NMF's loss against
numpy, recovered factors against the ones the data was built from, DFF's
maps and class scores against activations read by a second Keras model and a
head applied by hand, the Sobol estimator against the Ishigami function's
closed-form indices, CRAFT's importance against the estimator fed by a head
written by hand.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import keras_cam as kc
from keras_cam._compat import keras, to_host
from keras_cam.concepts import CRAFT, DeepFeatureFactorization, nmf, sobol_design, sobol_total_indices


def _model(seed=0, size=12, channels=6, classes=3, activation="relu"):
    """conv (the layer read) -> GAP -> Dense(softmax)."""
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation=activation, name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs)


def _images(n=5, size=12, seed=1):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)


def _head(model):
    kernel, bias = (np.asarray(v, np.float64) for v in model.get_layer("head").get_weights())
    return kernel, bias


def _features(model, images, layer="conv2"):
    """The layer's activations read by a second Keras model (not the library's capture)."""
    probe = keras.Model(model.inputs, model.get_layer(layer).output)
    return np.asarray(to_host(probe([images], training=False)), np.float64)


# --- the NMF ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (2, 5)])
def test_nmf_loss_never_increases_and_is_the_numpy_loss(seed, k):
    v = np.random.default_rng(seed).gamma(0.5, size=(60, 9)).astype(np.float32)
    found = nmf(v, k, iterations=40, seed=seed, history=True, tol=0)
    assert found.iterations == 40 and len(found.errors) == 40
    assert np.all(np.diff(found.errors) <= 1e-6 * found.errors[0])
    assert found.errors[-1] < found.errors[0]
    h, w = found.coefficients.astype(np.float64), found.basis.astype(np.float64)
    assert h.min() >= 0 and w.min() >= 0
    direct = np.linalg.norm(v - h @ w) / np.linalg.norm(v)
    assert found.errors[-1] == pytest.approx(direct, rel=1e-3)


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (2, 4), (3, 3)])
def test_nmf_recovers_known_factors_up_to_permutation_and_scale(seed, k):
    rng = np.random.default_rng(seed)
    features = 12
    w0 = rng.uniform(0, 0.2, (k, features))
    w0[np.arange(k), rng.permutation(features)[:k]] = 1.0     # one anchor channel per concept: identifiable
    h0 = rng.gamma(0.4, size=(300, k))
    h0[:k] = np.eye(k) * 3                                      # pure samples: identifiable
    found = nmf((h0 @ w0).astype(np.float32), k, iterations=1500, seed=seed, tol=0)
    w = found.basis.astype(np.float64)
    cos = (w0 / np.linalg.norm(w0, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    rows, cols = linear_sum_assignment(-cos)
    assert cos[rows, cols].min() > 0.99, cos
    assert found.errors[-1] < 0.02
    # the coefficients follow the same permutation, up to each concept's scale
    h = found.coefficients.astype(np.float64)[:, cols]
    for j in range(k):
        assert np.corrcoef(h[:, j], h0[:, j])[0, 1] > 0.99


def test_nmf_batched_equals_one_problem_at_a_time_and_rows_reorder():
    rng = np.random.default_rng(4)
    v = rng.gamma(0.5, size=(3, 40, 7)).astype(np.float32)
    batched = nmf(v, 3, iterations=60, seed=2, tol=0)
    for b in range(3):
        alone = nmf(v[b], 3, iterations=60, seed=2, tol=0)
        np.testing.assert_allclose(batched.basis[b], alone.basis, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batched.coefficients[b], alone.coefficients, rtol=1e-4, atol=1e-5)
    order = rng.permutation(40)
    shuffled = nmf(v[0][order], 3, iterations=60, seed=2, tol=0)
    alone = nmf(v[0], 3, iterations=60, seed=2, tol=0)
    np.testing.assert_allclose(shuffled.coefficients, alone.coefficients[order], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(shuffled.basis, alone.basis, rtol=1e-3, atol=1e-5)


def test_nmf_fixed_basis_and_the_sklearn_path_agree_on_exact_data():
    rng = np.random.default_rng(5)
    w0 = rng.uniform(0, 1, (3, 8))
    h0 = rng.gamma(1.0, size=(50, 3))
    v = (h0 @ w0).astype(np.float32)
    fixed = nmf(v, 3, basis=w0.astype(np.float32), iterations=800, tol=0)
    np.testing.assert_allclose(fixed.basis, w0, rtol=1e-6)          # the basis is not touched
    np.testing.assert_allclose(fixed.coefficients, h0, rtol=0.02, atol=0.02)
    sk = nmf(v, 3, solver="sklearn", iterations=2000, tol=1e-8)
    assert sk.errors[-1] < 0.01


def test_nmf_is_scale_free():
    """An untrained deep network's activations can be 1e-11 (MobileNetV2's last layer): the factors scale
    with the data, the coefficients and the errors do not."""
    v = np.random.default_rng(6).gamma(0.5, size=(40, 9)).astype(np.float32)
    one = nmf(v, 3, iterations=50, tol=0)
    tiny = nmf(v * np.float32(1e-11), 3, iterations=50, tol=0)
    np.testing.assert_allclose(tiny.errors, one.errors, rtol=1e-4)
    np.testing.assert_allclose(tiny.coefficients, one.coefficients, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(tiny.basis * 1e11, one.basis, rtol=1e-3, atol=1e-6)
    assert one.errors[-1] < 0.6


def test_nmf_errors():
    v = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="`k` is 4, more parts than the data's 3 features"):
        nmf(v, 4)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="`k` must be an int >= 1"):
            nmf(v, bad)
    with pytest.raises(ValueError, match="`iterations` must be an int >= 1"):
        nmf(v, 2, iterations=0)
    with pytest.raises(ValueError, match="negative values"):
        nmf(-v, 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        nmf(v * np.nan, 2)
    with pytest.raises(ValueError, match="`solver` must be"):
        nmf(v, 2, solver="als")


# --- Deep Feature Factorization ----------------------------------------------------------------------


@pytest.mark.parametrize("seed,k,activation", [(0, 2, "relu"), (1, 3, "relu"), (2, 3, None)])
def test_dff_maps_and_class_scores_against_a_hand_computation(seed, k, activation):
    model = _model(seed, activation=activation)
    images = _images(5, seed=seed + 1)
    concepts = DeepFeatureFactorization(model, "conv2", k=k, seed=seed, iterations=120, tol=0)(images, upsample=False)

    a = _features(model, images)                                 # (5, 6, 6, 6) read by a second model
    flat = a.reshape(-1, a.shape[-1])
    offset = np.minimum(flat.min(axis=0), 0)
    np.testing.assert_allclose(concepts.offset, offset, atol=1e-5)
    hand = nmf((flat - offset).astype(np.float32), k, iterations=120, seed=seed, tol=0)
    h, w = hand.coefficients.astype(np.float64), hand.basis.astype(np.float64)
    peak = h.max(axis=0)
    h, w = h / peak, w * peak[:, None]
    order = np.argsort(-(h.sum(axis=0) * w.sum(axis=1)))
    h, w = h[:, order], w[order]
    np.testing.assert_allclose(concepts.maps, np.moveaxis(h.reshape(5, 6, 6, k), -1, 1), atol=2e-3)
    np.testing.assert_allclose(concepts.basis, w + offset, rtol=2e-3, atol=2e-3)
    kernel, bias = _head(model)
    scores = (w + offset) @ kernel + bias                        # the Dense on each concept vector, by hand
    np.testing.assert_allclose(concepts.class_scores, scores, rtol=2e-3, atol=2e-3)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(concepts.probabilities, e / e.sum(axis=1, keepdims=True), atol=2e-3)
    mass = h.reshape(5, -1, k).sum(axis=1) * w.sum(axis=1)
    np.testing.assert_allclose(concepts.shares, mass / mass.sum(axis=1, keepdims=True), atol=2e-3)
    assert concepts.error == pytest.approx(np.linalg.norm(flat - offset - h @ w) / np.linalg.norm(flat - offset),
                                           rel=1e-3)
    np.testing.assert_array_equal(concepts.top_classes(2), np.argsort(-scores, axis=1)[:, :2])


def test_dff_upsampled_maps_are_the_bilinear_resize_and_the_figure_draws():
    model = _model(3)
    images = _images(4, seed=3)
    dff = DeepFeatureFactorization(model, "conv2", k=3, iterations=60)
    small, big = dff(images, upsample=False), dff(images)
    assert big.maps.shape == (4, 3, 12, 12)
    for i in range(4):
        for j in range(3):
            expected = cv2.resize(small.maps[i, j], (12, 12), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(big.maps[i, j], expected, atol=1e-5)
    normalized = dff(images, normalize=True).maps
    assert np.allclose(normalized.reshape(12, -1).max(axis=1), 1, atol=1e-6) or normalized.max() <= 1
    fig = big.plot(images, class_names=["a", "b", "c"], n_images=3)
    assert len([ax for ax in fig.axes if ax.images]) == 3
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0].startswith(f"concept 0: {'abc'[int(np.argmax(big.class_scores[0]))]}")


def test_dff_is_invariant_to_batch_order_and_deterministic_per_seed():
    model = _model(4)
    images = _images(6, seed=5)
    dff = DeepFeatureFactorization(model, "conv2", k=3, iterations=80, tol=0, batch_size=4)
    first = dff(images, upsample=False)
    again = dff(images, upsample=False)
    np.testing.assert_array_equal(first.maps, again.maps)
    order = np.array([3, 0, 5, 1, 4, 2])
    shuffled = dff(images[order], upsample=False)
    np.testing.assert_allclose(shuffled.maps, first.maps[order], atol=1e-4)
    np.testing.assert_allclose(shuffled.basis, first.basis, rtol=1e-3, atol=1e-4)
    other = DeepFeatureFactorization(model, "conv2", k=3, iterations=80, tol=0, seed=9)(images, upsample=False)
    assert not np.allclose(other.basis, first.basis, atol=1e-4)


def test_dff_errors_name_the_argument():
    model = _model(0)
    with pytest.raises(ValueError, match="`k` is 7, more concepts than layer 'conv2'.s 6 channels"):
        DeepFeatureFactorization(model, "conv2", k=7)(_images(2))
    with pytest.raises(ValueError, match="`k` must be an int >= 1"):
        DeepFeatureFactorization(model, "conv2", k=0)
    with pytest.raises(ValueError, match="`iterations` must be an int >= 1"):
        DeepFeatureFactorization(model, "conv2", iterations=-3)
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1"):
        DeepFeatureFactorization(model, "conv2", batch_size=0)
    mixed = [np.zeros((12, 12, 3), np.float32), np.zeros((10, 12, 3), np.float32)]
    with pytest.raises(ValueError, match="`images` holds images of different shapes"):
        DeepFeatureFactorization(model, "conv2", k=2)(mixed)
    with pytest.raises(ValueError, match="`images` is one image"):
        DeepFeatureFactorization(model, "conv2", k=2)(_images(1)[0])


def test_dff_of_a_model_without_classes_has_maps_and_says_it_has_no_scores():
    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 3))
    features = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="features")(x)
    segmenter = keras.Model(x, keras.layers.Conv2D(3, 1, activation="softmax")(features))
    images = _images(3)
    before = images.copy()
    with pytest.warns(UserWarning, match="does not output class scores"):
        concepts = DeepFeatureFactorization(segmenter, "features", k=5)(images)
    assert concepts.class_scores is None and concepts.maps.shape == (3, 5, 12, 12)
    np.testing.assert_array_equal(images, before)                  # the caller's images are untouched
    with pytest.raises(ValueError, match="no class scores"):
        concepts.top_classes()


# --- Sobol indices and CRAFT --------------------------------------------------------------------------


def _ishigami_total(a=7.0, b=0.1):
    """The Ishigami function's total indices in closed form (Ishigami and Homma 1990)."""
    v1 = 0.5 * (1 + b * math.pi ** 4 / 5) ** 2
    v2 = a * a / 8
    v13 = b * b * math.pi ** 8 * (1 / 18 - 1 / 50)
    var = v1 + v2 + v13
    return np.array([(v1 + v13) / var, v2 / var, v13 / var])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sobol_total_indices_of_the_ishigami_function(seed):
    x = sobol_design(3, 4096, seed) * 2 * np.pi - np.pi
    f = np.sin(x[:, 0]) + 7 * np.sin(x[:, 1]) ** 2 + 0.1 * x[:, 2] ** 4 * np.sin(x[:, 0])
    np.testing.assert_allclose(sobol_total_indices(f, 3), _ishigami_total(), atol=0.03)


def test_sobol_design_and_linear_functions():
    design = sobol_design(4, 8, seed=3)
    a, b = design[:8], design[8:16]
    for i in range(4):
        c = design[16 + 8 * i:24 + 8 * i]
        np.testing.assert_array_equal(np.delete(c, i, axis=1), np.delete(a, i, axis=1))
        np.testing.assert_array_equal(c[:, i], b[:, i])
    coef = np.array([3.0, 1.0, 0.0, 2.0])
    x = sobol_design(4, 2048, seed=1)
    st = sobol_total_indices(x @ coef + 5, 4)                    # additive: ST_i = c_i^2 / sum c^2
    np.testing.assert_allclose(st, coef ** 2 / np.sum(coef ** 2), atol=0.02)
    assert st[2] == 0
    np.testing.assert_array_equal(sobol_total_indices(np.ones(len(x)), 4), 0)
    with pytest.raises(ValueError, match="`values` must hold f at the n"):
        sobol_total_indices(np.ones(7), 4)


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3)])
def test_craft_importance_is_the_estimator_on_the_head_by_hand(seed, k):
    """With a GAP + Dense head, the class score of masked coefficients is linear in the mask:
    f(M) = b_c + sum_j M_j mean_p(u_j(p)) (W_j . w_c), so CRAFT's indices equal the estimator's on that
    function, and approach a_j^2 / sum a^2."""
    model = _model(seed)
    images = _images(3, seed=seed + 7)
    craft = CRAFT(model, "conv2", k=k, crop_size=6, n_designs=128, seed=seed, iterations=200, batch_size=64)
    found = craft.fit(images, target=1)
    assert found.crops.shape == (12, 6, 6, 3) and len(found.crop_boxes) == 12
    i, y, x = found.crop_boxes[5]
    np.testing.assert_array_equal(found.crops[5], images[i, y:y + 6, x:x + 6])
    coefficients = craft.maps(images, upsample=False)            # (3, k, 6, 6)
    kernel, bias = _head(model)
    a = coefficients.mean(axis=(2, 3)) * (found.basis.astype(np.float64) @ kernel[:, 1])   # (3, k)
    design = sobol_design(k, 128, seed)
    for n in range(3):
        by_hand = sobol_total_indices(bias[1] + design @ a[n], k)
        np.testing.assert_allclose(found.importance_per_image[n], by_hand, atol=5e-3)   # float32 scores
        np.testing.assert_allclose(by_hand, a[n] ** 2 / np.sum(a[n] ** 2), atol=0.06)
    assert np.all(np.diff(found.importance) <= 0)                 # the most important first
    fig = found.plot(n_concepts=2, n_crops=3)
    assert len([ax for ax in fig.axes if ax.images]) == 6


def test_craft_maps_on_new_images_and_errors():
    model = _model(2)
    images = _images(2, seed=3)
    craft = CRAFT(model, "conv2", k=3, crop_size=6, n_designs=8)
    with pytest.raises(ValueError, match="call fit first"):
        craft.maps(images)
    found = craft.fit(images, 0)
    maps = craft.maps(_images(3, seed=9))
    assert maps.shape == (3, 3, 12, 12) and maps.min() >= 0
    one = _images(3, seed=9)[1]
    # one image: (k, H, W), as in the batch up to float32 rounding of a batched convolution
    np.testing.assert_allclose(craft.maps(one), maps[1], rtol=1e-4, atol=1e-5 * float(maps.max()))
    reconstructed = np.einsum("nkhw,kc->nhwc", craft.maps(images, upsample=False), found.basis)
    features = _features(model, images)
    assert np.linalg.norm(reconstructed - features) < 0.6 * np.linalg.norm(features)
    with pytest.raises(ValueError, match="`k` is 7, more concepts than layer 'conv2'.s 6 channels"):
        CRAFT(model, "conv2", k=7, crop_size=6).fit(images, 0)
    with pytest.raises(ValueError, match="`crop_size` is 13, larger than the 12x12 images"):
        CRAFT(model, "conv2", k=2, crop_size=13).fit(images, 0)
    with pytest.raises(ValueError, match="`n_designs` must be an int >= 2"):
        CRAFT(model, "conv2", n_designs=1)
    with pytest.raises(ValueError, match="`target` is 5; the model has 3 classes"):
        CRAFT(model, "conv2", k=2, crop_size=6, n_designs=4).fit(images, 5)
    with pytest.raises(ValueError, match="negative activations"):
        CRAFT(_model(2, activation=None), "conv2", k=2, crop_size=6).fit(images, 0)


# --- the audit --------------------------------------------------------------------------------------


def test_audit_concepts_are_dff_over_the_cluster_members(tmp_path):
    model = _model(6)
    rng = np.random.default_rng(8)
    images = rng.uniform(size=(24, 12, 12, 3)).astype(np.float32)
    labels = np.arange(24) % 2
    result = kc.audit(kc.GradCAM(model, layer="conv2"), images, labels, n_neighbors=3, batch_size=8, verbose=0)
    cluster = result.clusters[0]
    summary = result.concepts(cluster, k=3, n_members=6, seed=1)
    assert summary.cluster == 0 and len(summary.members) == min(6, cluster.size)
    assert set(summary.members) <= set(cluster.indices)
    direct = DeepFeatureFactorization(model, "conv2", k=3, seed=1)(images[summary.members])
    np.testing.assert_allclose(summary.concepts.shares, direct.shares, atol=1e-5)
    np.testing.assert_allclose(summary.mean_shares, direct.shares.mean(axis=0), atol=1e-5)
    assert summary.mean_shares[summary.ranking[0]] == summary.mean_shares.max()
    top = summary.top(2)
    assert top[0][0] == summary.ranking[0] and top[0][2] == int(np.argmax(direct.class_scores[summary.ranking[0]]))
    assert result.concepts(0, k=3, n_members=6, seed=1).members.tolist() == summary.members.tolist()
    page = result.save_html(tmp_path / "audit.html")
    text = page.read_text(encoding="utf-8") if hasattr(page, "read_text") else open(page).read()
    assert "Top concepts (DFF at conv2" in text
    with pytest.raises(ValueError, match="not a cluster position"):
        result.concepts(99)
    with pytest.raises(ValueError, match="`k` is 7, more concepts"):
        result.concepts(0, k=7)

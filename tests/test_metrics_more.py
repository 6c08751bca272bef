"""ROAD, imputation, map properties, randomization, stability and the evaluation table.

Closed forms and toy models: a linear image is its own imputation; a model
whose class-0 logit is the mean of a bright patch shows what MoRF and LeRF
must say; the Gini index and the entropy of one-hot, uniform and ramp maps
are known; a model whose classes read the same evidence has one map for all
classes. Then invariances: batch size, channels first, and 1-D / 2-D / 3-D
inputs that hold the same numbers.
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend, metrics, sanity
from keras_cam._compat import keras

# --- impute -----------------------------------------------------------------------------------


def ramp(shape, channels=2, seed=0):
    """A linear image ``a_c + sum_k b_ck * position_k`` of spatial ``shape``, per channel."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    out = np.empty(tuple(shape) + (channels,))
    for c in range(channels):
        out[..., c] = rng.uniform(-1, 1) + sum(rng.uniform(-0.2, 0.2) * g for g in grids)
    return out


def test_neighbour_weights_are_the_tensor_product_of_1_2_1_without_its_centre():
    offsets, w = metrics.neighbour_weights(2)
    edge = np.abs(offsets).sum(axis=1) == 1
    np.testing.assert_allclose(w[edge], 1 / 6)
    np.testing.assert_allclose(w[~edge], 1 / 12)
    offsets, w = metrics.neighbour_weights(1)
    assert offsets.tolist() == [[-1], [1]] and w.tolist() == [0.5, 0.5]
    offsets, w = metrics.neighbour_weights(3)
    moved = np.abs(offsets).sum(axis=1)
    for k, expected, count in ((1, 1 / 14, 6), (2, 1 / 28, 12), (3, 1 / 56, 8)):
        assert (moved == k).sum() == count
        np.testing.assert_allclose(w[moved == k], expected)
    assert w.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(40,), (9, 11), (6, 7, 8)])
def test_impute_reproduces_a_linear_image_inside(shape):
    image = ramp(shape)
    removed = np.zeros(shape, bool)
    inner = tuple(slice(2, s - 2) for s in shape)
    removed[inner] = True                                   # an interior block
    removed[(1,) * len(shape)] = True                       # and a lone interior pixel
    batch = np.stack([image, image[::-1].copy()]).astype(np.float32)
    out = metrics.impute(batch, np.stack([removed, removed]), noise=0.0)
    np.testing.assert_allclose(out, batch, atol=1e-5)
    assert out.dtype == np.float32


def test_impute_one_pixel_is_the_renormalized_mean_of_its_neighbours():
    """A lone removed pixel needs no system: its value is the weighted mean of its kept neighbours,
    at a corner over the three inside the image, weights 1/6, 1/6, 1/12 renormalized."""
    image = np.random.default_rng(1).random((1, 5, 6, 3)).astype(np.float32)
    removed = np.zeros((1, 5, 6), bool)
    removed[0, 2, 3] = removed[0, 0, 0] = True
    out = metrics.impute(image, removed, noise=0.0)
    im = image[0].astype(np.float64)
    centre = sum(im[2 + dy, 3 + dx] * (1 / 6 if abs(dy) + abs(dx) == 1 else 1 / 12)
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
    corner = (im[0, 1] / 6 + im[1, 0] / 6 + im[1, 1] / 12) / (1 / 6 + 1 / 6 + 1 / 12)
    np.testing.assert_allclose(out[0, 2, 3], centre, rtol=1e-5)
    np.testing.assert_allclose(out[0, 0, 0], corner, rtol=1e-5)
    kept = ~removed[0]
    np.testing.assert_array_equal(out[0][kept], image[0][kept])


def test_impute_two_adjacent_pixels_solve_the_joint_system():
    """Two removed neighbours in 1-D: ``x1 = (v0 + x2) / 2``, ``x2 = (x1 + v3) / 2`` gives
    ``x1 = (2 v0 + v3) / 3``, ``x2 = (v0 + 2 v3) / 3``."""
    v = np.array([[[1.0], [50.0], [-7.0], [4.0]]], np.float32)
    out = metrics.impute(v, np.array([[False, True, True, False]]), noise=0.0)
    np.testing.assert_allclose(out[0, 1:3, 0], [(2 * 1 + 4) / 3, (1 + 2 * 4) / 3], rtol=1e-6)


def test_impute_noise_has_the_requested_std_on_imputed_pixels_only():
    image = ramp((48, 48), channels=3).astype(np.float32)[None]
    removed = np.zeros((1, 48, 48), bool)
    removed[0, 4:44, 4:44] = True
    out = metrics.impute(image, removed, noise=0.05, seed=3)
    residual = (out - image)[0][removed[0]]
    assert residual.std() == pytest.approx(0.05, rel=0.03)
    assert abs(residual.mean()) < 0.003
    np.testing.assert_array_equal(out[0][~removed[0]], image[0][~removed[0]])
    np.testing.assert_array_equal(out, metrics.impute(image, removed, noise=0.05, seed=3))
    assert not np.array_equal(out, metrics.impute(image, removed, noise=0.05, seed=4))


def test_impute_axes_of_size_one_drop_out():
    """A signal (T, C), an image (T, 1, C) and a volume (T, 1, 1, C) holding it impute alike."""
    rng = np.random.default_rng(2)
    signal = rng.random((3, 30, 2)).astype(np.float32)
    removed = rng.random((3, 30)) < 0.4
    one = metrics.impute(signal, removed, noise=0.02, seed=5)
    two = metrics.impute(signal[:, :, None], removed[:, :, None], noise=0.02, seed=5)
    three = metrics.impute(signal[:, :, None, None], removed[:, :, None, None], noise=0.02, seed=5)
    np.testing.assert_allclose(two[:, :, 0], one, atol=1e-6)
    np.testing.assert_allclose(three[:, :, 0, 0], one, atol=1e-6)


def test_impute_rejects_bad_masks():
    image = np.zeros((2, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="every pixel"):
        metrics.impute(image, np.ones((2, 4, 4), bool))
    with pytest.raises(ValueError, match=r"\(N, \*S\) = \(2, 4, 4\)"):
        metrics.impute(image, np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError, match="noise"):
        metrics.impute(image, np.zeros((2, 4, 4), bool), noise=-1)


# --- ROAD -------------------------------------------------------------------------------------

H = W = 12
PATCH = 4          # the bright patch: rows and columns 0..3
A = 6.0


def patch_model():
    """Class-0 logit ``A * mean(top-left patch)``, class-1 logit 0, softmax."""
    inp = keras.Input((H, W, 1))
    x = keras.layers.Cropping2D(((0, H - PATCH), (0, W - PATCH)))(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inp, dense(x))
    dense.set_weights([np.array([[A, 0.0]], np.float32), np.zeros(2, np.float32)])
    return model


def patch_probability(images):
    r = images[:, :PATCH, :PATCH, 0].astype(np.float64).mean(axis=(1, 2))
    return 1.0 / (1.0 + np.exp(-A * r))


@pytest.fixture(scope="module")
def patch_data():
    rng = np.random.default_rng(7)
    images = 0.05 * rng.random((5, H, W, 1)).astype(np.float32)   # dark, faintly textured
    images[:, :PATCH, :PATCH] += 1.0                              # the bright patch
    right = np.zeros((5, H, W), np.float32)
    right[:, :PATCH, :PATCH] = 1.0
    right += 0.01 * rng.random((5, H, W)).astype(np.float32)      # no ties
    return images, right, 1.0 - right


def test_road_on_the_patch_model(patch_data):
    model = patch_model()
    images, right, inverted = patch_data
    kw = dict(targets=0, percentages=(10, 30, 50, 70))
    morf_right, morf_wrong = (metrics.road(model, images, m, order="morf", **kw) for m in (right, inverted))
    lerf_right, lerf_wrong = (metrics.road(model, images, m, order="lerf", **kw) for m in (right, inverted))
    assert morf_right < morf_wrong - 0.1
    assert lerf_right > lerf_wrong + 0.1
    combined = metrics.road(model, images, right, order="combined", **kw)
    assert combined == pytest.approx((lerf_right - morf_right) / 2, abs=1e-7)


def test_road_equals_the_hand_computation(patch_data):
    """Without noise: remove the top / bottom round(p P / 100) pixels, impute, read p by hand."""
    model = patch_model()
    images, right, _ = patch_data
    pcts = (20, 55)
    ranks = metrics.saliency_ranks(right)
    pixels = H * W
    for order in ("morf", "lerf"):
        curve = []
        for p in pcts:
            k = round(p * pixels / 100)
            removed = ranks < k if order == "morf" else ranks >= pixels - k
            curve.append(patch_probability(metrics.impute(images, removed, noise=0.0)))
        expected = np.mean(curve)
        got = metrics.road(model, images, right, targets=0, percentages=pcts, order=order, noise=0.0)
        assert got == pytest.approx(expected, rel=1e-5)


def test_road_is_batch_size_invariant(patch_data):
    model = patch_model()
    images, right, _ = patch_data
    values = [metrics.road(model, images, right, percentages=(25, 50, 75), order="combined", batch_size=b)
              for b in (1, 4, 64)]
    np.testing.assert_allclose(values, values[0], rtol=1e-5)


def test_road_rejects_bad_arguments(patch_data):
    model = patch_model()
    images, right, _ = patch_data
    with pytest.raises(ValueError, match="order"):
        metrics.road(model, images, right, order="both")
    with pytest.raises(ValueError, match="between 0 and 100"):
        metrics.road(model, images, right, percentages=(10, 100))


T = 24


def signal_models():
    """One signal model and the same computation on a (T, 1) image and a (T, 1, 1) volume."""
    keras.utils.set_random_seed(1)
    dense1 = keras.layers.Dense(5, activation="tanh")
    dense2 = keras.layers.Dense(3, activation="softmax")

    def head(x):
        return dense2(dense1(keras.layers.Flatten()(x)))

    models = []
    for shape in ((T, 2), (T, 1, 2), (T, 1, 1, 2)):
        inp = keras.Input(shape)
        x = inp if len(shape) == 2 else keras.layers.Reshape((T, 2))(inp)
        models.append(keras.Model(inp, head(x)))
    return models


def test_road_1d_2d_3d_agree():
    one, two, three = signal_models()
    rng = np.random.default_rng(0)
    signals = rng.normal(size=(4, T, 2)).astype(np.float32)
    maps = rng.random((4, T)).astype(np.float32)
    kw = dict(percentages=(20, 60), order="combined", noise=0.05, seed=2)
    expected = metrics.road(one, signals, maps, **kw)
    assert metrics.road(two, signals[:, :, None], maps[:, :, None], **kw) == pytest.approx(expected, rel=1e-5)
    assert metrics.road(three, signals[:, :, None, None], maps[:, :, None, None], **kw) == pytest.approx(
        expected, rel=1e-5)


# --- channels first ---------------------------------------------------------------------------

CH, CW = 10, 12


def channels_first_pair():
    """The same convolutions and head, one model taking (N, 3, H, W) (a channels-first pooling marks
    it so; the convolutions run channels-last between Permutes), one taking (N, H, W, 3)."""
    keras.utils.set_random_seed(5)
    c1 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")
    c2 = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="target")
    head = keras.layers.Dense(3, activation="softmax")
    first = keras.Input((3, CH, CW))
    x = keras.layers.Permute((3, 1, 2), name="nchw")(c2(c1(keras.layers.Permute((2, 3, 1))(first))))
    cf = keras.Model(first, head(keras.layers.GlobalAveragePooling2D(data_format="channels_first")(x)))
    last = keras.Input((CH, CW, 3))
    cl = keras.Model(last, head(keras.layers.GlobalAveragePooling2D()(c2(c1(last)))))
    return cf, cl


@pytest.fixture(scope="module")
def pair():
    cf, cl = channels_first_pair()
    images = np.random.default_rng(4).random((5, CH, CW, 3)).astype(np.float32)
    return cf, cl, images, np.transpose(images, (0, 3, 1, 2))


def test_channels_first_model_scores_like_channels_last(pair):
    cf, cl, images, nchw = pair
    maps = kc.GradCAM(cl, "target")(images)
    kw = dict(percentages=(30, 60), order="combined", seed=1)
    assert metrics.road(cf, nchw, maps, **kw) == pytest.approx(metrics.road(cl, images, maps, **kw), rel=1e-5)
    first, last = kc.GradCAM(cf, "target", data_format="channels_first"), kc.GradCAM(cl, "target")
    assert metrics.random_logit(first, nchw) == pytest.approx(metrics.random_logit(last, images), abs=1e-5)
    assert metrics.max_sensitivity(first, nchw, radius=0.05, samples=3) == pytest.approx(
        metrics.max_sensitivity(last, images, radius=0.05, samples=3), rel=1e-4, abs=1e-6)


# --- sparseness and complexity ---------------------------------------------------------------


def hand_maps(shape=(6, 7)):
    n = int(np.prod(shape))
    one_hot = np.zeros(n)
    one_hot[17] = 3.0
    uniform = np.full(n, 0.4)
    ramp_ = -np.arange(1, n + 1, dtype=np.float64)       # absolute values 1..n, negative on purpose
    return n, [m.reshape(shape) for m in (one_hot, uniform, ramp_)]


def test_sparseness_is_the_gini_index():
    n, (one_hot, uniform, ramp_) = hand_maps()
    assert metrics.sparseness(one_hot[None]) == pytest.approx((n - 1) / n)
    assert metrics.sparseness(uniform[None]) == pytest.approx(0.0, abs=1e-12)
    # Gini of 1..n: sum_i (2i - n - 1) i / (n * n (n + 1) / 2) = (n - 1) / (3 n)
    assert metrics.sparseness(ramp_[None]) == pytest.approx((n - 1) / (3 * n))
    assert metrics.sparseness(np.zeros((1, 6, 7))) == 0.0
    batch = np.stack([one_hot, uniform, ramp_])
    assert metrics.sparseness(batch) == pytest.approx(((n - 1) / n + (n - 1) / (3 * n)) / 3)


def test_complexity_is_the_entropy():
    n, (one_hot, uniform, ramp_) = hand_maps()
    assert metrics.complexity(one_hot[None]) == pytest.approx(0.0, abs=1e-12)
    assert metrics.complexity(uniform[None]) == pytest.approx(np.log(n))
    p = np.arange(1, n + 1) / (n * (n + 1) / 2)
    assert metrics.complexity(ramp_[None]) == pytest.approx(-(p * np.log(p)).sum())
    assert metrics.complexity(np.zeros((1, 6, 7))) == pytest.approx(np.log(n))


def test_map_properties_ignore_the_layout_and_the_batching():
    maps = np.random.default_rng(0).random((4, 3, 4, 5))
    for fn in (metrics.sparseness, metrics.complexity):
        value = fn(maps)
        assert fn(maps.reshape(4, 60)) == pytest.approx(value)                 # as signals
        assert fn(maps.reshape(4, 12, 5)) == pytest.approx(value)              # as images
        assert np.mean([fn(m[None]) for m in maps]) == pytest.approx(value)    # one at a time


# --- SSIM and random logit --------------------------------------------------------------------


def test_ssim_matches_scikit_image_and_tensorflow_in_2d_and_works_in_1d_3d():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a, b = rng.random((3, 20, 16)), rng.random((3, 20, 16))
    b[0] = a[0]
    expected = [structural_similarity(a[i], b[i], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False) for i in range(3)]
    np.testing.assert_allclose(metrics.ssim(a, b), expected, atol=1e-6)
    np.testing.assert_array_equal(sanity.ssim(a, b), metrics.ssim(a, b))
    if backend.is_tensorflow():   # TensorFlow's own SSIM, where it is the backend
        import tensorflow as tf

        tf_ssim = tf.image.ssim(a[..., None].astype(np.float32), b[..., None].astype(np.float32), max_val=1.0,
                                filter_size=11, filter_sigma=1.5).numpy()
        np.testing.assert_allclose(metrics.ssim(a, b), tf_ssim, atol=1e-5)
    assert metrics.ssim(a, b)[0] == pytest.approx(1.0)
    for shape in ((3, 30), (3, 12, 13, 14)):
        x = rng.random(shape)
        assert metrics.ssim(x, x) == pytest.approx(np.ones(3))
        assert (metrics.ssim(x, rng.random(shape)) < 0.5).all()


def test_ssim_1d_by_hand():
    """The definition written out for one pair of signals, 11-sample Gaussian window."""
    rng = np.random.default_rng(1)
    a, b = rng.random(25), rng.random(25)
    t = np.arange(11) - 5.0
    g = np.exp(-t ** 2 / (2 * 1.5 ** 2))
    g /= g.sum()
    values = []
    for i in range(25 - 10):
        wa, wb = a[i:i + 11], b[i:i + 11]
        ma, mb = g @ wa, g @ wb
        va, vb, cov = g @ wa ** 2 - ma ** 2, g @ wb ** 2 - mb ** 2, g @ (wa * wb) - ma * mb
        values.append((2 * ma * mb + 1e-4) * (2 * cov + 9e-4) / ((ma ** 2 + mb ** 2 + 1e-4) * (va + vb + 9e-4)))
    assert metrics.ssim(a[None], b[None])[0] == pytest.approx(np.mean(values))


def same_evidence_model():
    """Every class reads the same evidence: identical Dense columns (and biases)."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="target")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(4, activation="softmax")
    model = keras.Model(inp, dense(x))
    column = np.random.default_rng(0).normal(size=(5, 1)).astype(np.float32)
    dense.set_weights([np.repeat(column, 4, axis=1), np.zeros(4, np.float32)])
    return model


def test_random_logit_is_one_when_classes_share_their_evidence():
    images = np.random.default_rng(3).random((4, 12, 12, 3)).astype(np.float32)
    cam = kc.GradCAM(same_evidence_model(), "target")
    assert metrics.random_logit(cam, images, targets=0) == pytest.approx(1.0, abs=1e-6)


@pytest.fixture(scope="module")
def demo():
    from keras_cam.demo import TARGET_LAYER, load_model, make_dataset

    images, labels, boxes = make_dataset(8, seed=1)
    return load_model(), images, labels.astype(np.int32), boxes, TARGET_LAYER


def test_random_logit_on_the_demo_model_is_clearly_below_one(demo):
    model, images, labels, _, layer = demo
    value = metrics.random_logit(kc.GradCAM(model, layer), images, labels)
    assert value < 0.6
    small = metrics.random_logit(kc.GradCAM(model, layer, batch_size=3), images, labels)
    assert small == pytest.approx(value, abs=1e-6)
    assert metrics.random_logit(kc.GradCAM(model, layer), images, labels, seed=1) != pytest.approx(value)


# --- max sensitivity --------------------------------------------------------------------------


def test_max_sensitivity(demo):
    model, images, labels, _, layer = demo
    cam = kc.GradCAM(model, layer)
    assert metrics.max_sensitivity(cam, images, labels, radius=0.0, samples=2) == 0.0
    value = metrics.max_sensitivity(cam, images, labels, radius=0.05, samples=3, seed=1)
    assert 0 < value < np.inf
    assert metrics.max_sensitivity(cam, images, labels, radius=0.05, samples=3, seed=1) == value
    assert metrics.max_sensitivity(cam, images, labels, radius=0.05, samples=3, seed=2) != value
    small = kc.GradCAM(model, layer, batch_size=3)
    assert metrics.max_sensitivity(small, images, labels, radius=0.05, samples=3, seed=1) == pytest.approx(
        value, rel=1e-5)
    # by hand, for the first sample of one image: the same draw, the relative change of its map
    x = images[:1]
    d = np.random.default_rng(1).uniform(-1, 1, x.shape) * 0.05 * (x.max() - x.min())
    m0, m1 = cam(x, labels[:1]), cam(x + d.astype(np.float32), labels[:1])
    one = metrics.max_sensitivity(cam, x, labels[:1], radius=0.05, samples=1, seed=1)
    assert one == pytest.approx(np.linalg.norm(m1 - m0) / np.linalg.norm(m0), rel=1e-5)
    with pytest.raises(ValueError, match="radius"):
        metrics.max_sensitivity(cam, images, radius=-1)


# --- evaluate ---------------------------------------------------------------------------------


def test_evaluate_table_equals_the_metrics_called_directly(demo):
    model, images, labels, boxes, layer = demo
    random_maps = np.random.default_rng(0).random(images.shape[:3]).astype(np.float32)
    chosen = {"average_drop": {}, "deletion_auc": {"steps": 8}, "road": {"percentages": (30, 70)},
              "energy_pointing_game": {}, "sparseness": {}, "random_logit": {}, "sanity_check": {}}
    table = metrics.evaluate({"Grad-CAM": lambda m: kc.GradCAM(m, layer), "random": random_maps},
                             model, images, labels, boxes=boxes, metrics=chosen, batch_size=5)
    assert [r["method"] for r in table.rows] == ["Grad-CAM", "random"]
    assert table.headers[:3] == ["method", "Avg Drop % ↓", "Deletion ↓"] and "ROAD combined ↑" in table.headers
    cam = kc.GradCAM(model, layer)
    maps = cam(images, labels)
    grad, rand = table.rows
    assert grad["average_drop"] == pytest.approx(metrics.average_drop(model, images, maps, labels), rel=1e-5)
    assert grad["deletion_auc"] == pytest.approx(metrics.deletion_auc(model, images, maps, labels, steps=8), rel=1e-5)
    assert grad["road"] == pytest.approx(
        metrics.road(model, images, maps, labels, percentages=(30, 70), order="combined"), rel=1e-5)
    assert grad["energy_pointing_game"] == pytest.approx(metrics.energy_pointing_game(maps, boxes), rel=1e-5)
    assert grad["random_logit"] == pytest.approx(metrics.random_logit(cam, images, labels), abs=1e-6)
    expected = kc.sanity_check(lambda m: kc.GradCAM(m, layer), model, images, labels).spearman[-1]
    assert grad["sanity_check"] == pytest.approx(expected, abs=1e-6)
    assert rand["sparseness"] == pytest.approx(metrics.sparseness(random_maps))
    assert rand["random_logit"] is None and rand["sanity_check"] is None
    text = table.to_markdown()
    lines = text.splitlines()
    assert len(lines) == 4 and lines[1].count("---") == len(table.headers)
    assert lines[3].startswith("| random |") and "| – |" in lines[3]
    assert f"| {grad['average_drop']:.1f} |" in lines[2] and str(table) == text
    assert table.column("average_drop") == [grad["average_drop"], rand["average_drop"]]


def test_evaluate_defaults_and_errors(demo):
    model, images, labels, boxes, layer = demo
    few = {"sparseness": {}, "complexity": {}}
    table = metrics.evaluate(["gradcam", kc.GradCAM(model, layer)], model, images[:3], metrics=few)
    assert [r["method"] for r in table.rows] == ["gradcam", "GradCAM"]
    assert table.rows[0]["sparseness"] == pytest.approx(table.rows[1]["sparseness"])   # both explain conv4
    with pytest.raises(ValueError, match="Unknown metric"):
        metrics.evaluate(["gradcam"], model, images[:2], metrics=["accuracy"])
    with pytest.raises(ValueError, match="boxes"):
        metrics.evaluate(["gradcam"], model, images[:2], metrics=["pointing_game"])
    with pytest.raises(ValueError, match="instance"):
        metrics.evaluate([kc.GradCAM(model, layer)], model, images[:2], metrics=["sanity_check"])
    assert "sanity_check" not in metrics.DEFAULT_METRICS
    # the defaults: every metric of one or a few model calls per image; those that explain or call the
    # model many times per image (focus, the new faithfulness and robustness metrics) only when named
    assert set(metrics.DEFAULT_METRICS) < set(metrics.METRICS)
    assert {"focus", "top_k_intersection"}.isdisjoint(metrics.DEFAULT_METRICS)
    assert {"average_drop", "deletion_auc", "road", "pointing_game", "energy_pointing_game", "sparseness",
            "relevance_rank_accuracy", "relevance_mass_accuracy", "mask_auc", "attribution_localization",
            "random_logit", "max_sensitivity"} <= set(metrics.DEFAULT_METRICS)


@pytest.mark.parametrize("form", ["dict", "list", "single", "tuple"])
def test_evaluate_takes_bare_explainer_classes(demo, form):
    """An explainer class (``kc.GradCAM``, not an instance) is a factory ``f(model)``: in a dict, a list,
    a tuple or alone, its row equals the metrics of ``kc.GradCAM(model)`` called directly (issue 26: a class
    was taken for an instance because it has an ``explain`` attribute)."""
    model, images, labels, _, _ = demo
    few = {"sparseness": {}, "average_drop": {}, "sanity_check": {}}
    given = {"dict": {"Grad-CAM": kc.GradCAM, "Layer-CAM": kc.LayerCAM}, "list": [kc.GradCAM, kc.LayerCAM],
             "tuple": (kc.GradCAM, "layercam"), "single": kc.GradCAM}[form]
    table = metrics.evaluate(given, model, images[:3], labels[:3], metrics=few)
    names = {"dict": ["Grad-CAM", "Layer-CAM"], "list": ["GradCAM", "LayerCAM"],
             "tuple": ["GradCAM", "layercam"], "single": ["GradCAM"]}[form]
    assert [r["method"] for r in table.rows] == names
    for row, cls in zip(table.rows, (kc.GradCAM, kc.LayerCAM)):
        maps = cls(model)(images[:3], labels[:3])
        assert row["sparseness"] == pytest.approx(metrics.sparseness(maps), rel=1e-5)
        assert row["average_drop"] == pytest.approx(metrics.average_drop(model, images[:3], maps, labels[:3]),
                                                    rel=1e-5)
        expected = kc.sanity_check(cls, model, images[:3], labels[:3]).spearman[-1]
        assert row["sanity_check"] == pytest.approx(expected, abs=1e-6)


def test_evaluate_refuses_a_factory_that_returns_a_class(demo):
    model, images, labels, _, _ = demo
    with pytest.raises(TypeError, match="not an explainer"):
        metrics.evaluate({"odd": lambda m: kc.GradCAM}, model, images[:2], metrics=["sparseness"])


def test_cli_evaluate_prints_the_table(tmp_path, capsys):
    import cv2

    from keras_cam import cli

    model = same_evidence_model()
    path = str(tmp_path / "model.keras")
    model.save(path)
    folder = tmp_path / "images"
    folder.mkdir()
    images = np.random.default_rng(5).integers(0, 256, (3, 12, 12, 3)).astype(np.uint8)
    for i, im in enumerate(images):
        cv2.imwrite(str(folder / f"{i}.png"), im[..., ::-1])
    status = cli.main(["evaluate", str(folder), "--model", path, "--preprocess", "scale", "--layer", "target",
                       "--metric", "sparseness", "--metric", "random_logit", "--quiet"])
    out = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    assert out[0] == "| method | Sparseness ↑ | Random logit ↓ |"
    maps = kc.GradCAM(model, "target")(images.astype(np.float32) / 255.0)
    assert out[2] == f"| gradcam | {metrics.sparseness(maps):.3f} | 1.000 |"
    assert cli.main(["evaluate", str(folder), "--model", path, "--metric", "accuracy"]) == 1


@pytest.mark.parametrize("seed", range(4))
def test_an_all_zero_map_scores_the_worst_complexity_and_sparseness(seed):
    """An all-zero map has no distribution: it gets the worst value of each property (complexity
    ``log n``, sparseness 0), never NaN, so emptying a map never improves a method's mean."""
    rng = np.random.default_rng(seed)
    shape = [(6, 7), (40,), (3, 4, 5)][seed % 3]
    n = int(np.prod(shape))
    maps = rng.random((5,) + shape) ** rng.uniform(1, 8)          # concentrated to different degrees
    maps[rng.integers(5)] = 0.0
    value = metrics.complexity(maps)
    assert np.isfinite(value)
    assert metrics.complexity(np.zeros((1,) + shape)) == pytest.approx(np.log(n))
    for i in range(5):                                             # zero one more map: never lower
        emptied = maps.copy()
        emptied[i] = 0.0
        assert metrics.complexity(emptied) >= value - 1e-12
        assert metrics.sparseness(emptied) <= metrics.sparseness(maps) + 1e-12
    per_map = [np.log(n) if not m.any() else -(p * np.log(p, where=p > 0, out=np.zeros_like(p))).sum()
               for m in maps for p in [np.abs(m).ravel() / np.abs(m).sum() if m.any() else None]]
    assert value == pytest.approx(np.mean(per_map))

"""XGrad-CAM, HiResCAM, element-wise Grad-CAM, Eigen-Grad-CAM, Smooth Grad-CAM++, FEM and
RandomCAM, each against an independent computation.

The references recompute the target activations and the logits with explicit tf.nn ops from
the layers' weights (no keras_cam code, no interception), take their own gradients with a
GradientTape, and apply each method's formula in numpy (float64). Every method is checked on
a 2-D CNN and on a 1-D signal model: raw maps at the layer's resolution (eager first call and
compiled calls), final maps (upsampled and min-max scaled), batch == single calls, one trace
per input shape, and the model left as it was.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_cam as kc
from keras_cam._compat import keras, to_host
from keras_cam.methods.activation import FEM, RandomCAM
from keras_cam.methods.gradient import (EigenGradCAM, GradCAMElementWise, HiResCAM, SmoothGradCAMPlusPlus,
                                        XGradCAM)
from keras_cam.random import normal_numpy
from test_gradcam import traces

H = W = 16
T = 32
CLASSES = 3


# ---------------------------------------------------------------- models and hand references


def cnn2d():
    """conv "target" (relu) -> conv "after" (relu) -> GAP -> dense softmax: the gradient at
    the target varies over the positions."""
    keras.utils.set_random_seed(7)
    x = keras.Input((H, W, 3))
    a = keras.layers.Conv2D(5, 3, activation="relu", name="target")(x)
    b = keras.layers.Conv2D(4, 3, activation="relu", name="after")(a)
    y = keras.layers.Dense(CLASSES, activation="softmax", name="logits")(keras.layers.GlobalAveragePooling2D()(b))
    return keras.Model(x, y)


def cnn1d():
    keras.utils.set_random_seed(8)
    x = keras.Input((T, 2))
    a = keras.layers.Conv1D(6, 5, padding="same", activation="relu", name="target")(x)
    b = keras.layers.Conv1D(4, 3, padding="same", activation="relu", name="after")(a)
    y = keras.layers.Dense(CLASSES, activation="softmax", name="logits")(keras.layers.GlobalAveragePooling1D()(b))
    return keras.Model(x, y)


def gap_cnn():
    """conv "target" -> GAP -> dense: dS/dA^k_ij = W[k, c] / (h w) everywhere."""
    keras.utils.set_random_seed(9)
    x = keras.Input((H, W, 3))
    a = keras.layers.Conv2D(6, 3, activation="relu", name="target")(x)
    y = keras.layers.Dense(CLASSES, activation="softmax", name="logits")(keras.layers.GlobalAveragePooling2D()(a))
    return keras.Model(x, y)


def _weights(model, name):
    """A layer's weights as TensorFlow constants (the references run on TensorFlow whatever Keras's backend)."""
    return [tf.constant(np.asarray(w, np.float32)) for w in model.get_layer(name).get_weights()]


def hand_conv1d(model, x):
    """(target activations, head: activations -> logits) of :func:`cnn1d`, from the weights with tf.nn."""
    k1, b1 = _weights(model, "target")
    k2, b2 = _weights(model, "after")
    wd, bd = _weights(model, "logits")
    a = tf.nn.relu(tf.nn.conv1d(x, k1, 1, "SAME") + b1)

    def head(a):
        h = tf.nn.relu(tf.nn.conv1d(a, k2, 1, "SAME") + b2)
        return tf.reduce_mean(h, axis=1) @ wd + bd
    return a, head


def hand2d(model, x):
    """(target activations, head: activations -> logits), from the weights with tf.nn."""
    k1, b1 = _weights(model, "target")
    k2, b2 = _weights(model, "after")
    wd, bd = _weights(model, "logits")
    a = tf.nn.relu(tf.nn.conv2d(x, k1, 1, "VALID") + b1)

    def head(a):
        h = tf.nn.relu(tf.nn.conv2d(a, k2, 1, "VALID") + b2)
        return tf.reduce_mean(h, axis=(1, 2)) @ wd + bd
    return a, head


def hand_gradients(hand, model, x, classes=None):
    """``(A, dS/dA, classes)`` in float64; ``classes`` None is the top-1 class of each input."""
    a, head = hand(model, tf.constant(x, tf.float32))
    with tf.GradientTape() as tape:
        tape.watch(a)
        logits = head(a)
        if classes is None:
            classes = np.argmax(logits.numpy(), axis=1)
        s = tf.gather(logits, np.asarray(classes), batch_dims=1)
    g = tape.gradient(s, a)
    return a.numpy().astype(np.float64), g.numpy().astype(np.float64), np.asarray(classes)


def spatial(x):
    return tuple(range(1, x.ndim - 1))


def relu(x):
    return np.maximum(x, 0)


def first_component(x):
    """numpy: per image, the positions' channel vectors centred and projected on the first
    right singular vector; the sign makes the projection agree with the centred channel sum."""
    n, k = x.shape[0], x.shape[-1]
    out = np.zeros(x.shape[:-1])
    for i in range(n):
        flat = x[i].reshape(-1, k)
        centred = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        if proj @ centred.sum(axis=1) < 0:
            proj = -proj
        out[i] = proj.reshape(x.shape[1:-1])
    return out


def weighted_sum(a, w):
    """``ReLU(sum_k w_k A^k)`` for weights ``(N, K)``."""
    return relu(np.einsum("n...k,nk->n...", a, w))


def ref_xgradcam(a, g):
    w = (a * g).sum(axis=spatial(a)) / (a.sum(axis=spatial(a)) + 1e-7)
    return weighted_sum(a, w)


def ref_hirescam(a, g):
    return relu((g * a).sum(-1))


def ref_elementwise(a, g):
    return relu(relu(g * a).sum(-1))


def ref_eigengradcam(a, g):
    return relu(first_component(g * a))


def fem_weights(a, k):
    axes = spatial(a)
    mu, sigma = a.mean(axis=axes, keepdims=True), a.std(axis=axes, keepdims=True)
    threshold = mu + k * sigma
    # No activation sits within rounding of its threshold (else float32 and float64 could disagree).
    live = np.broadcast_to(sigma > 1e-6 * np.abs(a).max(), a.shape)
    assert np.abs(a - threshold)[live].min() > 1e-4 * np.abs(a).max()
    return (a > threshold).mean(axis=axes)


def ref_gradcampp(a, g1, g2, g3):
    """Grad-CAM++ from gradient moments (g, g^2, g^3 for one gradient)."""
    total = a.sum(axis=spatial(a), keepdims=True)
    den = 2 * g2 + total * g3
    alpha = np.divide(g2, den, out=np.zeros_like(den), where=den != 0)
    w = (alpha * relu(g1)).sum(axis=spatial(a))
    return weighted_sum(a, w)


def ref_smooth_gradcampp(hand, model, x, classes, samples, noise, seed):
    """Smooth Grad-CAM++: A from the clean input, gradient moments over the noisy inputs
    x + noise (max x - min x) eps_j with eps_j = normal_numpy(seed, [j], one input)."""
    a, _, classes = hand_gradients(hand, model, x, classes)
    sigma = noise * (x.max(axis=tuple(range(1, x.ndim))) - x.min(axis=tuple(range(1, x.ndim))))
    moments = [np.zeros_like(a) for _ in range(3)]
    for j in range(samples):
        eps = normal_numpy(seed, [j], x.shape[1:])[0].astype(np.float32)
        noisy = (x + sigma.reshape((-1,) + (1,) * (x.ndim - 1)).astype(np.float32) * eps).astype(np.float32)
        _, g, _ = hand_gradients(hand, model, noisy, classes)
        for p in range(3):
            moments[p] += g ** (p + 1) / samples
    return ref_gradcampp(a, *moments)


# ---------------------------------------------------------------- helpers


def assert_close(actual, expected, rtol=1e-5):
    expected = np.asarray(expected, np.float64)
    scale = max(np.abs(expected).max(), 1e-12)
    err = np.abs(np.asarray(actual, np.float64) - expected).max()
    assert err <= rtol * scale + 1e-12, f"max error {err:.3g} against a largest value {scale:.3g}"


def minmax_np(m):
    axes = tuple(range(1, m.ndim))
    lo, hi = m.min(axis=axes, keepdims=True), m.max(axis=axes, keepdims=True)
    return np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1), 0)


def final_np(raw, size):
    """Upsampled (bilinear for images; a signal's target keeps its length) and min-max scaled."""
    if raw.ndim == 3:
        raw = tf.image.resize(raw[..., None].astype(np.float32), size, "bilinear")[..., 0].numpy()
    else:
        assert raw.shape[1:] == tuple(size)
    return minmax_np(raw.astype(np.float64))


def snapshot(model, x):
    return ([w.copy() for w in model.get_weights()], to_host(model(x, training=False)),
            {id(layer): sorted(vars(layer)) for _, layer in kc.layers.walk(model)})


def assert_unchanged(model, x, before):
    weights, outputs, attributes = before
    for w, w0 in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(to_host(model(x, training=False)), outputs)
    for _, layer in kc.layers.walk(model):
        assert "call" not in vars(layer) and sorted(vars(layer)) == attributes[id(layer)]


def check_explainer(cam, x, targets, expected, model, before):
    """Raw maps (eager first call, then traced and compiled: one trace), final maps, batch ==
    single calls, and the model unchanged."""
    for _ in range(3):
        assert_close(cam(x, targets=targets, upsample=False, normalize=False), expected)
    assert cam.tracing_count == traces(1)
    final = cam(x, targets=targets)
    assert final.shape == x.shape[:-1]
    assert_close(final, final_np(expected, x.shape[1:-1]))
    per_image = targets if isinstance(targets, list) else [targets] * len(x)
    for i in range(len(x)):
        np.testing.assert_allclose(cam(x[i], targets=per_image[i]), final[i], rtol=1e-5, atol=1e-6)
    assert_unchanged(model, x, before)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((3, H, W, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def signals():
    return np.random.default_rng(2).normal(size=(3, T, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def setups(images, signals):
    """layout -> (model, inputs, hand reference, targets, snapshot)."""
    m2, m1 = cnn2d(), cnn1d()
    return {"2d": (m2, images, hand2d, [2, 0, 2], snapshot(m2, images)),
            "1d": (m1, signals, hand_conv1d, None, snapshot(m1, signals))}


# ---------------------------------------------------------------- gradient methods

GRADIENT_METHODS = {
    "xgradcam": (XGradCAM, ref_xgradcam),
    "hirescam": (HiResCAM, ref_hirescam),
    "elementwise": (GradCAMElementWise, ref_elementwise),
    "eigengradcam": (EigenGradCAM, ref_eigengradcam),
}


@pytest.mark.parametrize("layout", ["2d", "1d"])
@pytest.mark.parametrize("name", list(GRADIENT_METHODS))
def test_gradient_methods_match_their_formula(setups, layout, name):
    model, x, hand, targets, before = setups[layout]
    method, formula = GRADIENT_METHODS[name]
    a, g, _ = hand_gradients(hand, model, x, targets)
    expected = formula(a, g)
    assert all(np.ptp(m) > 0 for m in expected)
    check_explainer(method(model, layer="target"), x, targets, expected, model, before)


def test_methods_differ_from_gradcam_where_the_gradient_varies(setups):
    """On the 2-D CNN the gradient varies within each channel, so the maps are not Grad-CAM's."""
    model, x, hand, targets, _ = setups["2d"]
    a, g, _ = hand_gradients(hand, model, x, targets)
    gradcam = weighted_sum(a, g.mean(axis=(1, 2)))
    for formula in (ref_xgradcam, ref_hirescam, ref_elementwise):
        assert np.abs(formula(a, g) - gradcam).max() > 1e-3 * gradcam.max()
    # Element-wise Grad-CAM clips each channel's contribution: never below HiResCAM.
    assert (ref_elementwise(a, g) >= ref_hirescam(a, g) - 1e-12).all()
    assert (ref_elementwise(a, g) > ref_hirescam(a, g) + 1e-6).any()


def test_hirescam_on_a_gap_dense_head_is_gradcam_and_cam(images):
    model = gap_cnn()
    hires = HiResCAM(model)(images, targets=2, upsample=False, normalize=False)
    grad = kc.GradCAM(model)(images, targets=2, upsample=False, normalize=False)
    cam = kc.CAM(model)(images, targets=2, upsample=False, normalize=False)
    assert np.ptp(hires) > 0
    # g^k = W[k, c] / (h w) at every position: HiResCAM's sum_k g^k A^k is Grad-CAM's map, and
    # CAM's sum_k W[k, c] A^k scaled by 1 / (h w).
    assert_close(hires, grad)
    assert_close(hires, cam / (hires.shape[1] * hires.shape[2]))
    assert_close(HiResCAM(model)(images, targets=2), kc.CAM(model)(images, targets=2))


def test_eigengradcam_depends_on_the_class_and_refuses_eigen_smooth(setups):
    model, x, _, _, _ = setups["2d"]
    cam = EigenGradCAM(model, layer="target")
    assert np.abs(cam(x, targets=0) - cam(x, targets=2)).max() > 1e-3
    with pytest.raises(ValueError, match="eigen_smooth"):
        EigenGradCAM(model, layer="target", eigen_smooth=True)


def test_eigen_smooth_on_the_new_gradient_methods(setups):
    """eigen_smooth: the principal component of what each method sums over the channels."""
    model, x, hand, targets, _ = setups["1d"]
    a, g, _ = hand_gradients(hand, model, x, targets)
    for method, weighted in ((XGradCAM, a * ((a * g).sum(axis=1) / (a.sum(axis=1) + 1e-7))[:, None]),
                             (HiResCAM, g * a), (GradCAMElementWise, relu(g * a))):
        raw = method(model, layer="target", eigen_smooth=True)(x, upsample=False, normalize=False)
        assert_close(raw, relu(first_component(weighted)))


# ---------------------------------------------------------------- Smooth Grad-CAM++


@pytest.mark.parametrize("layout", ["2d", "1d"])
def test_smooth_gradcampp_matches_its_formula(setups, layout):
    model, x, hand, targets, before = setups[layout]
    expected = ref_smooth_gradcampp(hand, model, x, targets, samples=3, noise=0.3, seed=5)
    assert all(np.ptp(m) > 0 for m in expected)
    a, g, _ = hand_gradients(hand, model, x, targets)
    assert np.abs(expected - ref_gradcampp(a, g, g ** 2, g ** 3)).max() > 1e-2 * expected.max()  # the noise counts
    cam = SmoothGradCAMPlusPlus(model, layer="target", samples=3, noise=0.3, seed=5, batch_size=4, verbose=0)
    check_explainer(cam, x, targets, expected, model, before)


@pytest.mark.parametrize("layout", ["2d", "1d"])
def test_smooth_gradcampp_without_noise_is_gradcampp(setups, layout):
    model, x, hand, targets, _ = setups[layout]
    smooth = SmoothGradCAMPlusPlus(model, layer="target", noise=0, verbose=0)
    raw = smooth(x, targets=targets, upsample=False, normalize=False)
    assert_close(raw, kc.GradCAMPlusPlus(model, layer="target")(x, targets=targets, upsample=False,
                                                                normalize=False))
    a, g, _ = hand_gradients(hand, model, x, targets)
    assert_close(raw, ref_gradcampp(a, g, g ** 2, g ** 3))
    assert_close(smooth(x, targets=targets), kc.GradCAMPlusPlus(model, layer="target")(x, targets=targets))


def test_smooth_gradcampp_seeds_and_batch_size(setups):
    model, x, _, _, _ = setups["1d"]

    def run(seed=0, batch_size=32):
        cam = SmoothGradCAMPlusPlus(model, layer="target", samples=4, seed=seed, batch_size=batch_size, verbose=0)
        return cam(x, upsample=False, normalize=False)

    first = run()
    np.testing.assert_array_equal(run(), first)                        # seeded: reproducible
    assert np.abs(run(seed=1) - first).max() > 1e-3 * first.max()      # another seed: other noise
    assert_close(run(batch_size=3), first)                             # chunking changes nothing


def test_smooth_gradcampp_top1_is_chosen_on_the_clean_input(setups):
    model, x, hand, _, _ = setups["2d"]
    expected = ref_smooth_gradcampp(hand, model, x, None, samples=2, noise=0.5, seed=3)
    cam = SmoothGradCAMPlusPlus(model, layer="target", samples=2, noise=0.5, seed=3, verbose=0)
    explanation = cam.explain(x, upsample=False, normalize=False)
    _, _, top = hand_gradients(hand, model, x)
    np.testing.assert_array_equal(explanation.targets, top)
    assert_close(explanation.maps, expected)


def test_smooth_gradcampp_callable_target_and_multi_input():
    """A callable target is scored on every noisy copy; a multi-input model's other input goes
    with each noisy copy of its image (batch == single, any chunking)."""
    keras.utils.set_random_seed(11)
    x = keras.Input((T, 2))
    aux = keras.Input((4,))
    a = keras.layers.Conv1D(6, 5, padding="same", activation="relu", name="target")(x)
    b = keras.layers.Conv1D(4, 3, padding="same", activation="relu", name="after")(a)
    mixed = keras.layers.Multiply()([keras.layers.GlobalAveragePooling1D()(b), keras.layers.Dense(4, name="gate")(aux)])
    model = keras.Model([x, aux], keras.layers.Dense(CLASSES, name="logits")(mixed))
    rng = np.random.default_rng(3)
    signals, extra = rng.normal(size=(3, T, 2)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    cam = SmoothGradCAMPlusPlus(model, layer="target", samples=3, batch_size=4, verbose=0)
    batch = cam([signals, extra], targets=1, upsample=False, normalize=False)
    assert np.ptp(batch) > 0
    for i in range(3):
        assert_close(cam([signals[i], extra[i]], targets=1, upsample=False, normalize=False), batch[i])
    other = cam([signals, extra[::-1]], targets=1, upsample=False, normalize=False)
    assert np.abs(other[0] - batch[0]).max() > 1e-3 * batch.max()  # the other input matters
    assert_close(cam([signals, extra], targets=lambda out: out[:, 1], upsample=False, normalize=False), batch)


# ---------------------------------------------------------------- FEM, RandomCAM


@pytest.mark.parametrize("layout, k", [("2d", 2.0), ("1d", 1.0)])
def test_fem_matches_its_formula(setups, layout, k):
    model, x, hand, targets, before = setups[layout]
    a, _, _ = hand_gradients(hand, model, x, targets)
    w = fem_weights(a, k)
    assert (w > 0).any(axis=1).all()
    expected = weighted_sum(a, w)
    assert all(np.ptp(m) > 0 for m in expected)
    cam = FEM(model, layer="target") if k == 2.0 else FEM(model, layer="target", k=k)
    check_explainer(cam, x, targets, expected, model, before)
    np.testing.assert_array_equal(cam(x, targets=0), cam(x, targets=1))  # class-independent
    explanation = cam.explain(x, targets=1)
    np.testing.assert_array_equal(explanation.targets, [1] * len(x))


@pytest.mark.parametrize("layout", ["2d", "1d"])
def test_random_cam_matches_its_formula(setups, layout):
    model, x, hand, targets, before = setups[layout]
    a, _, _ = hand_gradients(hand, model, x, targets)
    w = np.random.default_rng(4).uniform(-1.0, 1.0, a.shape[-1])  # RandomCAM's documented draw
    expected = weighted_sum(a, np.tile(w, (len(x), 1)))
    assert all(np.ptp(m) > 0 for m in expected)
    check_explainer(RandomCAM(model, layer="target", seed=4), x, targets, expected, model, before)


def test_random_cam_seeds(setups):
    model, x, _, _, _ = setups["2d"]
    first = RandomCAM(model, layer="target")(x)
    np.testing.assert_array_equal(RandomCAM(model, layer="target", seed=0)(x), first)
    assert np.abs(RandomCAM(model, layer="target", seed=1)(x) - first).max() > 1e-3


def test_eigen_smooth_on_fem_and_random_cam(setups):
    model, x, hand, _, _ = setups["1d"]
    a, _, _ = hand_gradients(hand, model, x)
    w = np.random.default_rng(0).uniform(-1.0, 1.0, a.shape[-1])  # RandomCAM's documented draw
    for cam, weighted in ((FEM(model, layer="target", k=1, eigen_smooth=True), a * fem_weights(a, 1.0)[:, None]),
                          (RandomCAM(model, layer="target", eigen_smooth=True), a * w)):
        assert_close(cam(x, upsample=False, normalize=False), relu(first_component(weighted)))


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize("method, kwargs, words", [
    (SmoothGradCAMPlusPlus, {"samples": 0}, "`samples` must be a positive int.*received 0"),
    (SmoothGradCAMPlusPlus, {"samples": 2.5}, "`samples` must be a positive int.*received 2.5"),
    (SmoothGradCAMPlusPlus, {"noise": -1}, "`noise` must be a number >= 0.*received -1"),
    (SmoothGradCAMPlusPlus, {"seed": 1.5}, "`seed` must be an int; received 1.5"),
    (SmoothGradCAMPlusPlus, {"batch_size": 0}, "`batch_size` must be a positive int.*received 0"),
    (FEM, {"k": -1}, "`k` must be a number >= 0.*received -1"),
    (FEM, {"k": "2"}, "`k` must be a number >= 0.*received '2'"),
    (RandomCAM, {"seed": 1.5}, "`seed` must be an int; received 1.5"),
])
def test_bad_arguments(setups, method, kwargs, words):
    with pytest.raises(ValueError, match=words):
        method(setups["1d"][0], layer="target", **kwargs)

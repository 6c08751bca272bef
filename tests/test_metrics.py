"""Metrics against hand computations on a toy model whose answer is known.

The toy model's class-1 logit is ``A * r`` and its class-0 logit ``-A * r``,
where ``r`` is the mean of a fixed image region: so
``p1 = sigmoid(2 A r)``, which numpy computes directly. Only the region
matters, so the map that covers the region is the right explanation.
"""

import numpy as np
import pytest
from scipy import ndimage

import keras_cam as kc
from keras_cam import metrics
from keras_cam.metrics import _scoring
from keras_cam._compat import keras

H, W = 12, 10
Y0, X0, Y1, X1 = 3, 2, 7, 8
A = 4.0


def region_model(head):
    inp = keras.Input((H, W, 1))
    x = keras.layers.Cropping2D(((Y0, H - Y1), (X0, W - X1)))(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(2, activation="softmax" if head == "softmax" else None)
    out = dense(x)
    if head == "activation":
        out = keras.layers.Activation("softmax")(out)
    model = keras.Model(inp, out)
    dense.set_weights([np.array([[-A, A]], np.float32), np.zeros(2, np.float32)])
    return model


def probs(images):
    """(N, 2) class probabilities of the toy model, by hand."""
    r = images[:, Y0:Y1, X0:X1, 0].astype(np.float64).mean(axis=(1, 2))
    p1 = 1.0 / (1.0 + np.exp(-2 * A * r))
    return np.stack([1 - p1, p1], axis=1)


def region_mask():
    m = np.zeros((H, W), np.float32)
    m[Y0:Y1, X0:X1] = 1
    return m


@pytest.fixture(scope="module", params=["softmax", "activation", "logits"])
def model(request):
    return region_model(request.param)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(-0.3, 1.0, (6, H, W, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def maps(images):
    """Random maps; for the first three images, maps that keep only the pixels
    agreeing with the predicted class, which raises its probability."""
    m = np.random.default_rng(4).random((6, H, W)).astype(np.float32)
    sign = np.where(probs(images).argmax(axis=1) == 1, 1.0, -1.0)[:, None, None]
    m[:3] = np.where(images[:3, ..., 0] * sign[:3] > 0, 1.0, m[:3] * 0.1)
    return m


@pytest.mark.parametrize("head", ["softmax", "activation", "logits"])
def test_toy_model_is_what_the_hand_computation_says(head, images):
    out = region_model(head).predict(images, verbose=0).astype(np.float64)
    if head == "logits":
        out = np.exp(out) / np.exp(out).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, probs(images), rtol=1e-5)


def test_average_drop_and_increase_in_confidence_by_hand(model, images, maps):
    p = probs(images)
    c = p.argmax(axis=1)
    y = p[np.arange(len(c)), c]
    o = probs(images * maps[..., None])[np.arange(len(c)), c]
    expected_drop = 100 * np.mean(np.maximum(0, y - o) / y)
    expected_increase = 100 * np.mean(o > y)
    assert 0 < expected_increase < 100, "the data must give both outcomes for the test to discriminate"
    np.testing.assert_allclose(metrics.average_drop(model, images, maps), expected_drop, rtol=1e-5)
    np.testing.assert_allclose(metrics.increase_in_confidence(model, images, maps), expected_increase)
    # An explicit class: the probability of class 0 everywhere.
    y0, o0 = p[:, 0], probs(images * maps[..., None])[:, 0]
    np.testing.assert_allclose(metrics.average_drop(model, images, maps, targets=0),
                               100 * np.mean(np.maximum(0, y0 - o0) / y0), rtol=1e-5)


def test_the_right_map_has_zero_drop(model, images):
    right = np.broadcast_to(region_mask(), (len(images), H, W))
    wrong = 1 - right
    assert metrics.average_drop(model, images, right) == pytest.approx(0.0, abs=1e-4)
    # The wrong map hides the region: r = 0, so p = 1/2 for both classes.
    y = probs(images).max(axis=1)
    np.testing.assert_allclose(metrics.average_drop(model, images, wrong), 100 * np.mean((y - 0.5) / y), rtol=1e-5)


def deletion_curve_by_hand(images, maps, steps, substrate, insert):
    n = len(images)
    c = probs(images).argmax(axis=1)
    order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")
    curves = np.zeros((n, steps + 1))
    for t in range(steps + 1):
        k = t * H * W // steps
        changed = np.zeros((n, H * W), bool)
        np.put_along_axis(changed, order[:, :k], True, axis=1)
        changed = changed.reshape(n, H, W, 1)
        x = np.where(changed, images, substrate) if insert else np.where(changed, substrate, images)
        curves[:, t] = probs(x)[np.arange(n), c]
    return curves


def auc(curves):
    return np.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), axis=1).mean()


@pytest.mark.parametrize("steps", [7, 30])
def test_deletion_and_insertion_auc_by_hand(model, images, maps, steps):
    zeros = np.zeros_like(images)
    expected = auc(deletion_curve_by_hand(images, maps, steps, zeros, insert=False))
    np.testing.assert_allclose(metrics.deletion_auc(model, images, maps, steps=steps), expected, rtol=1e-5)
    expected = auc(deletion_curve_by_hand(images, maps, steps, zeros, insert=True))
    np.testing.assert_allclose(metrics.insertion_auc(model, images, maps, steps=steps), expected, rtol=1e-5)


def test_mean_and_array_substrates_by_hand(model, images, maps):
    mean = np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape)
    expected = auc(deletion_curve_by_hand(images, maps, 10, mean, insert=False))
    np.testing.assert_allclose(metrics.deletion_auc(model, images, maps, steps=10, substrate="mean"), expected, rtol=1e-5)
    grey = np.full_like(images, 0.25)
    expected = auc(deletion_curve_by_hand(images, maps, 10, grey, insert=True))
    np.testing.assert_allclose(metrics.insertion_auc(model, images, maps, steps=10, substrate=grey), expected, rtol=1e-5)
    np.testing.assert_allclose(metrics.insertion_auc(model, images, maps, steps=10, substrate=0.25), expected, rtol=1e-5)


def test_blur_substrate_is_a_gaussian_blur():
    x = np.random.default_rng(5).random((2, 64, 48, 3)).astype(np.float32)
    sigma = 5.0 * 64 / 224
    radius = int(np.ceil(3 * sigma))
    expected = np.stack([
        np.stack([ndimage.gaussian_filter(im[..., ch].astype(np.float64), sigma, mode="mirror",
                                          truncate=radius / sigma) for ch in range(3)], axis=-1)
        for im in x
    ])
    np.testing.assert_allclose(metrics.substrate_images(x, "blur"), expected, atol=1e-5)


def test_the_right_map_has_the_best_curves(model, images):
    """The region ranked first, strongest pixels first, is the best order for the
    positive images of class 1: no other map deletes faster or inserts faster."""
    pos = np.abs(images) + 0.05
    right = pos[..., 0] * region_mask()
    rng = np.random.default_rng(6)
    others = {
        "random": rng.random(right.shape).astype(np.float32),
        "inverted": 1 - region_mask()[None].repeat(len(pos), 0),
        "constant": np.ones_like(right),
    }
    best_del = metrics.deletion_auc(model, pos, right, steps=20)
    best_ins = metrics.insertion_auc(model, pos, right, steps=20)
    for name, other in others.items():
        assert best_del < metrics.deletion_auc(model, pos, other, steps=20), name
        assert best_ins > metrics.insertion_auc(model, pos, other, steps=20), name


def test_batch_size_does_not_change_the_result(model, images, maps):
    for fn in (metrics.average_drop, metrics.deletion_auc):
        np.testing.assert_allclose(fn(model, images, maps, batch_size=4), fn(model, images, maps), rtol=1e-6)


def test_pointing_game_by_hand():
    maps = np.zeros((4, 5, 6), np.float32)
    maps[0, 1, 1] = 1.0             # max inside the box (1, 1)-(3, 3)
    maps[1, 4, 5] = 1.0             # max outside
    maps[2, 1, 2] = maps[2, 4, 0] = 2.0   # two equal maxima, one inside: a hit
    # maps[3] is constant: points nowhere, a miss
    boxes = np.array([[1, 1, 3, 3]] * 4)
    assert metrics.pointing_game(maps, boxes) == 50.0
    # end exclusive: a maximum at row 3 is outside a box ending at y1 = 3
    maps[0] = 0
    maps[0, 3, 1] = 1.0
    assert metrics.pointing_game(maps[:1], boxes[:1]) == 0.0


def test_energy_pointing_game_by_hand():
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0] = 1.0                   # uniform: 4 of 16 pixels inside a 2x2 box
    maps[1, 0, 0], maps[1, 3, 3] = 3.0, 1.0   # 3 of 4 inside
    boxes = np.array([[0, 0, 2, 2]] * 3)      # maps[2] is all zeros: energy 0
    assert metrics.energy_pointing_game(maps, boxes) == pytest.approx(100 * (0.25 + 0.75 + 0) / 3)


def test_bad_inputs_say_what_is_wrong(images, maps):
    model = region_model("softmax")
    with pytest.raises(ValueError, match="one map per image"):
        metrics.average_drop(model, images, maps[:, :5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.average_drop(model, images, maps * 2)
    with pytest.raises(TypeError, match="callable"):
        metrics.deletion_auc(model, images, maps, targets=lambda out: out[:, 0])
    with pytest.raises(ValueError, match="substrate"):
        metrics.deletion_auc(model, images, maps, substrate="noise")
    with pytest.raises(ValueError, match="steps"):
        metrics.insertion_auc(model, images, maps, steps=0)
    with pytest.raises(ValueError, match="out of range"):
        metrics.average_drop(model, images, maps, targets=5)
    with pytest.raises(ValueError, match="empty"):
        metrics.pointing_game(maps, np.array([[0, 0, 0, 3]] * len(maps)))
    with pytest.raises(ValueError, match="leave"):
        metrics.energy_pointing_game(maps, np.array([[0, 0, H + 1, 3]] * len(maps)))
    with pytest.raises(ValueError, match="non-negative"):
        metrics.energy_pointing_game(-maps, np.array([[0, 0, 2, 3]] * len(maps)))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_an_explainer_maps_plug_in():
    """End to end: Grad-CAM maps of a conv model go straight into every metric."""
    inp = keras.Input((H, W, 1))
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu")(inp)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    x = np.random.default_rng(7).random((3, H, W, 1)).astype(np.float32)
    maps = kc.GradCAM(model)(x)
    p = softmax(model.predict(x, verbose=0))
    c = p.argmax(axis=1)
    o = softmax(model.predict(x * maps[..., None], verbose=0))[np.arange(3), c]
    y = p[np.arange(3), c]
    np.testing.assert_allclose(metrics.average_drop(model, x, maps), 100 * np.mean(np.maximum(0, y - o) / y), rtol=1e-4)
    assert 0 <= metrics.deletion_auc(model, x, maps, steps=5) <= 1


def test_a_model_is_compiled_once_and_few_are_kept(images, maps):
    model = region_model("softmax")
    metrics.average_drop(model, images, maps)
    scorer = _scoring.get_scorer(model)
    traces = scorer.probabilities.experimental_get_tracing_count()
    metrics.average_drop(model, images, maps)
    metrics.increase_in_confidence(model, images, maps)
    assert _scoring.get_scorer(model) is scorer
    assert scorer.probabilities.experimental_get_tracing_count() == traces
    for _ in range(_scoring._KEEP + 1):  # the cache of compiled scorers keeps the last few models
        _scoring.get_scorer(region_model("logits"))
    assert len(_scoring._scorers) == _scoring._KEEP

"""Target objects (Segmentation, Regression, Similarity; Detection is in test_keras_hub.py)
against hand computations from their definitions."""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend, layout
from keras_cam import targets as T
from keras_cam._compat import keras, ops, to_host
from test_gradcam import resize_np, traces

L = keras.layers
TOL = 1e-5


def _feature_model(head, size=8, strides=1, name="m"):
    """Input (size, size, 2) -> Conv2D(4, 3, relu) "feat" -> head."""
    x = keras.Input((size, size, 2))
    a = L.Conv2D(4, 3, strides=strides, padding="same", activation="relu", name="feat")(x)
    return keras.Model(x, head(a), name=name)


def _features(model, x):
    """The "feat" activations recomputed by hand from its weights (not through the model)."""
    conv = model.get_layer("feat")
    kernel, bias = (ops.convert_to_tensor(np.asarray(w, np.float32)) for w in conv.get_weights())
    z = ops.conv(ops.convert_to_tensor(np.asarray(x, np.float32)), kernel, conv.strides[0], "same") + bias
    return to_host(ops.relu(z)).astype(np.float64)


def _gradcam(a, g):
    """Grad-CAM from activations and gradients (N, h, w, K): ReLU(sum_k mean_ij(g_k) A_k)."""
    return np.maximum((a * g.mean(axis=(1, 2), keepdims=True)).sum(-1), 0)


@pytest.fixture(scope="module")
def segmenter():
    """A strided segmentation CNN: 8x8 input, 4x4 map of 3 classes with a softmax (removed when linearized)."""
    model = _feature_model(lambda a: L.Conv2D(3, 1, activation="softmax", name="logits")(a), strides=2, name="seg")
    kernel = np.random.default_rng(0).normal(size=(1, 1, 4, 3))
    kernel[..., 2] = np.abs(kernel[..., 2]) * [1, -1, 1, 1]  # class 2 mostly raised by the features: maps not all 0
    model.get_layer("logits").set_weights([kernel.astype(np.float32), np.array([0.1, -0.2, 0.3], np.float32)])
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).normal(size=(3, 8, 8, 2)).astype(np.float32)


def _segmentation_by_hand(model, x, c, mask):
    """``S = sum_ij mask_ij z_c,ij`` with ``z = A W + b`` (the 1x1 conv): dS/dA_ij^k = mask_ij W_kc."""
    a = _features(model, x)
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("logits").get_weights())
    w = w[0, 0]  # (K, classes)
    z = a @ w + b
    s = (mask * z[..., c]).sum(axis=(1, 2))
    g = mask[..., None] * w[:, c]
    return _gradcam(a, g), s


@pytest.mark.parametrize("where", ["output", "input", "none", "per_image"])
def test_segmentation_gradcam_by_hand(segmenter, images, where):
    rng = np.random.default_rng(2)
    if where == "none":
        mask, mask_out = None, np.ones((4, 4))
    elif where == "output":
        mask = rng.random((4, 4)) > 0.5
        mask_out = mask.astype(np.float64)
    elif where == "input":
        mask = rng.random((8, 8)) > 0.5
        mask_out = mask[1::2, 1::2].astype(np.float64)  # nearest, half-pixel centres: rows 1, 3, 5, 7
    else:
        mask = rng.random((3, 4, 4)) * (rng.random((3, 4, 4)) > 0.3)  # weights, one mask per image
        mask_out = mask
    cam = kc.GradCAM(segmenter, "feat", batch_size=2)  # chunks of 2 and 1: per-image masks are split too
    ex = cam.explain(images, targets=T.Segmentation(2, mask), upsample=False, normalize=False)
    maps, s = _segmentation_by_hand(segmenter, images, 2, np.broadcast_to(mask_out, (3, 4, 4)))
    np.testing.assert_allclose(ex.scores, s, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(ex.maps, maps, rtol=TOL, atol=TOL)
    assert ex.targets is None and ex.probabilities is None
    assert maps.std() > 0  # not a trivially constant case


def test_segmentation_binary_sigmoid_channel(images):
    """One sigmoid channel z: class 1 is z, class 0 is -z (as for classification)."""
    model = _feature_model(lambda a: L.Conv2D(1, 1, activation="sigmoid", name="logits")(a), name="binseg")
    a = _features(model, images)
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("logits").get_weights())
    z = (a @ w[0, 0] + b)[..., 0]
    cam = kc.GradCAM(model, "feat")
    for c, sign in ((1, 1.0), (0, -1.0)):
        ex = cam.explain(images, targets=T.Segmentation(c), upsample=False, normalize=False)
        np.testing.assert_allclose(ex.scores, sign * z.sum(axis=(1, 2)), rtol=TOL, atol=TOL)
        np.testing.assert_allclose(ex.maps, _gradcam(a, np.broadcast_to(sign * w[0, 0, :, 0], a.shape)),
                                   rtol=TOL, atol=TOL)


def test_segmentation_batch_equals_single_calls_and_no_retrace(segmenter, images):
    rng = np.random.default_rng(3)
    masks = rng.random((3, 8, 8)) > 0.4
    for cam in (kc.GradCAM(segmenter, "feat", batch_size=2), kc.ScoreCAM(segmenter, "feat", batch_size=5, verbose=0)):
        batch = cam(images, targets=T.Segmentation(2, masks))
        single = np.stack([cam(images[i], targets=T.Segmentation(2, masks[i])) for i in range(3)])
        np.testing.assert_allclose(batch, single, atol=1e-5)
        assert (batch.max(axis=(1, 2)) > 0).all()
    cam = kc.GradCAM(segmenter, "feat")
    cam(images, targets=T.Segmentation(1, masks))
    cam(images, targets=T.Segmentation(1, ~masks))  # a new mask of the same shape: same compiled graph
    assert cam.tracing_count == traces(1)


def test_every_class_shares_one_compiled_call(segmenter, images):
    """The class travels with the batch as a value: a segmenter's classes, asked in any order, share
    one compiled call, and each gives its own maps and scores (the hand computation), on Grad-CAM and
    on Score-CAM's streamed masked passes."""
    mask = np.random.default_rng(5).random((3, 4, 4)) > 0.3
    cam = kc.GradCAM(segmenter, "feat")
    score_cam = kc.ScoreCAM(segmenter, "feat", batch_size=3, verbose=0)
    for c in (2, 0, 1, 2, 0):
        ex = cam.explain(images, targets=T.Segmentation(c, mask), upsample=False, normalize=False)
        maps, s = _segmentation_by_hand(segmenter, images, c, mask.astype(np.float64))
        np.testing.assert_allclose(ex.scores, s, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(ex.maps, maps, rtol=TOL, atol=TOL)
        # Score-CAM's weights read the class from the same values: a fresh explainer, compiled for
        # this class alone, gives the same maps.
        alone = kc.ScoreCAM(segmenter, "feat", batch_size=3, verbose=0)
        np.testing.assert_allclose(score_cam(images, targets=T.Segmentation(c, mask)),
                                   alone(images, targets=T.Segmentation(c, mask)), rtol=TOL, atol=TOL)
    assert cam.tracing_count == traces(1)
    assert score_cam.tracing_count == traces(1)


def test_a_model_without_a_static_graph_checks_classes_against_its_probed_output(images):
    """A subclassed model has no static output shape: the probe run that finds its head gives it,
    and an out-of-range class is refused before anything runs (it was read silently past the end
    on JAX and PyTorch, and failed inside TensorFlow's gather), for class targets and Segmentation."""

    class Subclassed(keras.Model):
        def __init__(self, head):
            super().__init__()
            self.feat = L.Conv2D(4, 3, padding="same", activation="relu", name="feat")
            self.head = head

        def call(self, x):
            return self.head(self.feat(x))

    segmenter = Subclassed(L.Conv2D(3, 1, name="logits"))
    classifier = Subclassed(keras.Sequential([L.GlobalAveragePooling2D(), L.Dense(3)]))
    for model in (segmenter, classifier):
        model(images)
    with pytest.raises(ValueError, match=r"`category=3` is out of range for an output with 3 classes"):
        kc.GradCAM(segmenter, "feat")(images, targets=T.Segmentation(3))
    # Scored on bare outputs, the class is checked against them; in range, it is z_c summed.
    z = segmenter(images)
    with pytest.raises(ValueError, match=r"`category=3` is out of range for an output with 3 classes"):
        T.Segmentation(3)(z)
    np.testing.assert_allclose(to_host(T.Segmentation(2)(z)), to_host(z).astype(np.float64)[..., 2].sum(axis=(1, 2)),
                               rtol=TOL, atol=1e-4)
    with pytest.raises(ValueError, match=r"`targets` \[3, 3, 3\] is out of range for a model with 3 classes"):
        kc.GradCAM(classifier, "feat")(images, targets=3)
    # In range, the same explainer's classes share one compiled call and equal their definition.
    cam = kc.GradCAM(segmenter, "feat")
    a = to_host(segmenter.feat(images)).astype(np.float64)
    w = np.asarray(segmenter.head.get_weights()[0], np.float64)[0, 0]
    for c in (1, 2, 0):
        ex = cam.explain(images, targets=T.Segmentation(c), upsample=False, normalize=False)
        np.testing.assert_allclose(ex.maps, _gradcam(a, np.broadcast_to(w[:, c], a.shape)), rtol=TOL, atol=TOL)
    assert cam.tracing_count == traces(1)


def test_segmentation_scorecam_weights_are_masked_scores(segmenter, images):
    """Score-CAM with a target object: w_k = S(X * M_k), the target's score of each masked image."""
    mask = np.random.default_rng(4).random((3, 4, 4)) > 0.5
    target = T.Segmentation(2, mask)
    cam = kc.ScoreCAM(segmenter, "feat", batch_size=3, verbose=0)
    got = cam.explain(images, targets=target, upsample=False, normalize=False).maps
    a = _features(segmenter, images)
    w, b = (np.asarray(v, np.float64) for v in segmenter.get_layer("logits").get_weights())
    expected = []
    for i in range(3):
        weights = []
        for k in range(4):
            up = resize_np(a[i:i + 1, :, :, k], (8, 8))[0]
            span = up.max() - up.min()
            if span <= 1e-6 * max(abs(up.max()), abs(up.min())):
                weights.append(0.0)
                continue
            masked = images[i:i + 1] * ((up - up.min()) / span)[None, :, :, None]
            z = _features(segmenter, masked) @ w[0, 0] + b
            weights.append(float((mask[i] * z[0, ..., 2]).sum()))
        expected.append(np.maximum((a[i] * np.array(weights)).sum(-1), 0))
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-4, atol=1e-4)
    assert got.max() > 0


@pytest.fixture(scope="module")
def regressor():
    return _feature_model(lambda a: L.Dense(2, name="out")(L.GlobalAveragePooling2D()(a)), name="reg")


def test_regression_by_hand(regressor, images):
    """S = y_j = mean_ij(A) W_:j + b_j, so dS/dA_ij^k = W_kj / (h w)."""
    a = _features(regressor, images)
    w, b = (np.asarray(v, np.float64) for v in regressor.get_layer("out").get_weights())
    cam = kc.GradCAM(regressor, "feat")
    for j in (0, 1):
        ex = cam.explain(images, targets=T.Regression(j), upsample=False, normalize=False)
        np.testing.assert_allclose(ex.scores, a.mean(axis=(1, 2)) @ w[:, j] + b[j], rtol=TOL, atol=TOL)
        np.testing.assert_allclose(ex.maps, _gradcam(a, np.broadcast_to(w[:, j] / 64, a.shape)), rtol=TOL, atol=TOL)


def test_regression_with_several_feature_axes_shares_one_compiled_call(images):
    """An output (N, 3, 2): ``Regression((i, j))`` scores y[:, i, j]; every index shares one compiled
    call, and its maps equal a callable target's that indexes by hand."""
    model = _feature_model(lambda a: L.Reshape((3, 2))(L.Dense(6, name="out")(L.GlobalAveragePooling2D()(a))))
    y = to_host(model(images)).astype(np.float64)
    cam = kc.GradCAM(model, "feat")
    for i, j in ((2, 1), (0, 0), (1, 1), (0, 1)):
        ex = cam.explain(images, targets=T.Regression((i, j)), normalize=False)
        np.testing.assert_allclose(ex.scores, y[:, i, j], rtol=TOL, atol=TOL)
        by_hand = kc.GradCAM(model, "feat").explain(images, targets=lambda out, i=i, j=j: out[:, i, j], normalize=False)
        np.testing.assert_allclose(ex.maps, by_hand.maps, rtol=TOL, atol=1e-6)
    assert cam.tracing_count == traces(1)
    # Called on outputs with no model to check against (as CAMCallback does), a negative index counts
    # from the end, as in Python; with the model, it is out of range.
    np.testing.assert_allclose(to_host(T.Regression((1, -1))(model(images))), y[:, 1, 1], rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match=r"`index=3` is out of range for an output of shape \(3, 3, 2\)"):
        T.Regression((3, 0))(model(images))
    with pytest.raises(ValueError, match=r"`index=-1` is out of range for an output of shape \(None, 3, 2\)"):
        cam(images, targets=T.Regression((1, -1)))


def test_regression_reads_the_logit_before_a_sigmoid(images):
    model = _feature_model(lambda a: L.Dense(1, activation="sigmoid", name="out")(L.GlobalAveragePooling2D()(a)))
    a = _features(model, images)
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("out").get_weights())
    logit = a.mean(axis=(1, 2)) @ w[:, 0] + b[0]
    np.testing.assert_allclose(kc.GradCAM(model, "feat").explain(images, targets=T.Regression()).scores, logit,
                               rtol=TOL, atol=TOL)
    raw = kc.GradCAM(model, "feat", linearize=False).explain(images, targets=T.Regression()).scores
    np.testing.assert_allclose(raw, 1 / (1 + np.exp(-logit)), rtol=TOL, atol=TOL)


@pytest.fixture(scope="module")
def embedder():
    return _feature_model(lambda a: L.Dense(3, name="emb")(L.GlobalAveragePooling2D()(a)), name="emb")


@pytest.mark.parametrize("per_image", [False, True])
def test_similarity_by_hand(embedder, images, per_image):
    """S = cos(e, r); dS/de = (r/|r| - S e/|e|) / |e|; dS/dA_ij^k = sum_d dS/de_d W_kd / (h w)."""
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(3, 3) if per_image else (3,))
    a = _features(embedder, images)
    w, b = (np.asarray(v, np.float64) for v in embedder.get_layer("emb").get_weights())
    e = a.mean(axis=(1, 2)) @ w + b
    r = np.broadcast_to(ref, e.shape)
    ne, nr = np.linalg.norm(e, axis=1, keepdims=True), np.linalg.norm(r, axis=1, keepdims=True)
    s = (e * r).sum(1, keepdims=True) / (ne * nr)
    de = (r / nr - s * e / ne) / ne
    g = np.broadcast_to((de @ w.T)[:, None, None, :] / 64, a.shape)
    ex = kc.GradCAM(embedder, "feat", batch_size=2).explain(images, targets=T.Similarity(ref), upsample=False,
                                                            normalize=False)
    np.testing.assert_allclose(ex.scores, s[:, 0], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(ex.maps, _gradcam(a, g), rtol=TOL, atol=1e-6)


def test_callable_targets_still_work_and_share_a_trace(regressor, images):
    cam = kc.GradCAM(regressor, "feat")
    fn = lambda out: out[:, 1]  # noqa: E731
    np.testing.assert_allclose(cam(images, targets=fn), cam(images, targets=T.Regression(1)), atol=1e-6)
    # The first call of each runs eagerly, the second traces, later ones reuse the trace.
    for _ in range(3):
        cam(images, targets=fn)
        cam(images, targets=T.Regression(1))
    assert cam.tracing_count == traces(2)  # one per target kind
    # The index travels with the batch: another feature reuses the trace, with its own maps.
    np.testing.assert_allclose(cam(images, targets=T.Regression(0)),
                               kc.GradCAM(regressor, "feat")(images, targets=lambda out: out[:, 0]), atol=1e-6)
    assert cam.tracing_count == traces(2)
    # Targets are equal when they share one compiled computation.
    assert T.Function(fn) == T.as_target(fn) and T.Regression(1) == T.Regression(0) != T.Regression((0, 0))


def test_segmentation_without_mask_takes_aug_smooth(segmenter, images):
    """With no mask the score is the same on flipped and shifted copies: aug_smooth applies."""
    cam = kc.GradCAM(segmenter, "feat", aug_smooth=True)
    np.testing.assert_allclose(cam(images, targets=T.Segmentation(2)),
                               cam(images, targets=lambda z: ops.sum(z[..., 2], axis=(1, 2))), atol=1e-6)


@pytest.mark.parametrize("source", ["list", pytest.param("tf.data", marks=pytest.mark.tensorflow_only)])
def test_target_objects_in_explain_dataset(regressor, images, source):
    """A target object is a callable target too: explain_dataset takes those needing no input arrays."""
    if source == "tf.data":
        import tensorflow as tf
        ds = tf.data.Dataset.from_tensor_slices(images).batch(2)
    else:
        ds = [images[:2], images[2:]]  # any iterable of batches, on every backend
    cam = kc.GradCAM(regressor, "feat")
    got = np.concatenate([e.maps for e in kc.explain_dataset(cam, ds, targets=T.Regression(1))])
    np.testing.assert_allclose(got, cam(images, targets=T.Regression(1)), atol=1e-6)
    with pytest.raises(ValueError, match="Detection needs the detector and the input batch"):
        list(kc.explain_dataset(cam, ds, targets=T.Detection([0, 0, 4, 4], 0)))


# ---------------------------------------------------------------- errors, before any tracing

def _rejects(cam, x, target, match, error=ValueError):
    with pytest.raises(error, match=match):
        cam(x, targets=target)
    assert cam.tracing_count == 0


def test_target_errors_name_what_fits(segmenter, regressor, embedder, images):
    seg, reg, emb = (kc.GradCAM(m, "feat") for m in (segmenter, regressor, embedder))
    _rejects(seg, images, T.Segmentation(3), r"out of range for an output with 3 classes")
    _rejects(seg, images, T.Segmentation(0, np.ones((5, 5))), r"fits neither the output's resolution \(4, 4\) "
                                                              r"nor the input's \(8, 8\)")
    _rejects(seg, images, T.Segmentation(0, np.ones((2, 4, 4))), r"2 rows for 3 inputs")
    _rejects(seg, images, T.Segmentation(0, np.ones(4)), r"must be 2-D \(4, 4\)")
    empty = np.ones((3, 4, 4))
    empty[1] = 0
    _rejects(seg, images, T.Segmentation(0, empty), r"selects no pixel for inputs \[1\]")
    _rejects(reg, images, T.Segmentation(0), r"per-pixel class scores .* outputs shape \(None, 2\)")
    _rejects(reg, images, T.Regression(2), r"out of range for an output of shape \(None, 2\)")
    _rejects(reg, images, T.Regression((0, 1)), r"give 1 index")
    _rejects(emb, images, T.Similarity(np.ones(4)), r"embedding \(N, 4\) .* outputs shape \(None, 3\)")
    _rejects(emb, images, T.Similarity(np.ones((2, 3))), r"2 rows for 3 inputs")
    _rejects(reg, images, T.Detection([0, 0, 4, 4], 0), r"RetinaNetObjectDetector")
    _rejects(kc.GradCAM(segmenter, "feat", aug_smooth=True), images, T.Segmentation(0, np.ones((4, 4))),
             r"aug_smooth.*no longer sits on the same pixels")
    with pytest.raises(ValueError, match="zero embedding"):
        T.Similarity(np.zeros(3))
    with pytest.raises(TypeError, match="`category` must be an int"):
        T.Segmentation(1.5)
    with pytest.raises(ValueError, match=r"`iou` must be a number in \(0, 1\]"):
        T.Detection([0, 0, 4, 4], 0, iou=0)
    with pytest.raises(ValueError, match=r"one box \(4,\)"):
        T.Detection([0, 0, 4], 0)
    with pytest.raises(ValueError, match="NaN"):
        T.Segmentation(0, np.full((4, 4), np.nan))


def test_nearest_resize_matches_tf_image_resize():
    """Half-pixel nearest neighbours (output ``i`` reads ``floor((i + 0.5) in / out)``), the convention
    of ``tf.image.resize``: against the numpy formula everywhere, and against TensorFlow itself there."""
    rng = np.random.default_rng(6)
    for src, dst in (((8, 8), (4, 4)), ((5, 7), (3, 9)), ((4, 6), (8, 12)), ((7, 3), (7, 2))):
        x = rng.random((2,) + src)
        got = layout.nearest_resize(x, dst)
        np.testing.assert_array_equal(got, resize_np(x, dst, method="nearest"))
        if backend.name() == "tensorflow":
            import tensorflow as tf
            np.testing.assert_array_equal(got, tf.image.resize(x[..., None], dst, method="nearest").numpy()[..., 0])


# --- booleans are not classes -------------------------------------------------------------------


@pytest.mark.parametrize("given", [True, False, np.True_, [True, False, True], [2, True, 0], (False, 1, 2),
                                   np.array([True, False, True]), ops.convert_to_tensor([True, True, False])],
                         ids=["True", "False", "np.True_", "list", "mixed-list", "mixed-tuple", "array", "tensor"])
def test_boolean_targets_are_refused_everywhere(images, given):
    """``targets=True`` was read as class 1 (issue 26). Every entry point that takes classes refuses
    booleans with a TypeError that says why, and the ints that a boolean equals still work."""
    model = _feature_model(lambda a: L.Dense(3)(L.GlobalAveragePooling2D()(a)), name="clf")
    cam = kc.GradCAM(model, "feat")
    calls = {
        "call": lambda: cam(images, targets=given),
        "explain": lambda: cam.explain(images, targets=given),
        "average_drop": lambda: kc.metrics.average_drop(model, images, np.ones(images.shape[:3]), given),
        "evaluate": lambda: kc.metrics.evaluate({"g": cam}, model, images, given, metrics=["sparseness"]),
        "callback": lambda: kc.CAMCallback(images, targets=given, save_png=False, tensorboard=False),
    }
    for where, call in calls.items():
        with pytest.raises(TypeError, match="not booleans") as info:
            call()
        assert "class 0 or 1" in str(info.value) or "index the images" in str(info.value), where
    as_ints = np.asarray(given).astype(np.int64)
    as_ints = as_ints if as_ints.ndim else int(as_ints)
    expected = cam(images, targets=np.broadcast_to(as_ints, (3,)).astype(np.int64))
    np.testing.assert_allclose(cam(images, targets=as_ints), expected, atol=1e-6)

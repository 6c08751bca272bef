"""Unusual models and numerical edge cases (issue: hardening)."""

import warnings

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend
from keras_cam.methods import create, names
from keras_cam._compat import LEGACY, keras, ops, to_host
from slow import each_method

H = W = 12


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).random((3, H, W, 3), dtype=np.float32)


def conv_trunk(inp, name="target"):
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    return keras.layers.Conv2D(6, 3, padding="same", activation="relu", name=name)(x)


def test_multi_output_model_explains_the_chosen_output(images):
    inp = keras.Input((H, W, 3))
    a = conv_trunk(inp)
    pooled = keras.layers.GlobalAveragePooling2D()(a)
    first = keras.layers.Dense(3, activation="softmax", name="first")(pooled)
    second = keras.layers.Dense(4, name="second")(pooled)
    model = keras.Model(inp, [first, second])
    single = keras.Model(inp, second)  # the same layers, one output
    expected = kc.GradCAM(single, layer="target")(images, targets=2)
    by_index = kc.GradCAM(model, layer="target", output=1)(images, targets=2)
    by_name = kc.GradCAM(model, layer="target", output="second")(images, targets=2)
    np.testing.assert_allclose(by_index, expected, atol=1e-6)
    np.testing.assert_allclose(by_name, expected, atol=1e-6)
    with pytest.raises(ValueError, match="not an output"):
        kc.GradCAM(model, output="third")


def test_batchnorm_and_dropout_are_explained_in_inference_mode(images):
    inp = keras.Input((H, W, 3))
    x = keras.layers.BatchNormalization()(conv_trunk(inp))
    x = keras.layers.Dropout(0.5)(x)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    # Non-trivial moving statistics, so training-mode normalization would differ.
    bn = model.layers[3]
    bn.set_weights([np.full(6, 2.0), np.full(6, 0.5), np.full(6, 0.3), np.full(6, 4.0)])
    cam = kc.GradCAM(model, layer="target")
    first = cam(images)  # eager
    second = cam(images)  # compiled
    np.testing.assert_array_equal(cam(images), second)  # no dropout noise: compiled calls agree to the bit
    # Eager and compiled: the same maps up to float32 rounding (XLA fuses ops differently on JAX).
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-5)
    # Inference-mode BN is a per-channel affine map: gamma / sqrt(var + eps) scales dS/dA.
    acts = to_host(keras.Model(inp, model.get_layer("target").output)(images))
    kernel = model.layers[-1].get_weights()[0]
    scale = 2.0 / np.sqrt(4.0 + bn.epsilon)
    logits = to_host(model(images, training=False))
    c = logits.argmax(axis=1)
    w = scale * kernel[:, c].T / (H * W)
    raw = np.maximum(np.einsum("nhwk,nk->nhw", acts, w), 0)
    np.testing.assert_allclose(cam(images, upsample=False, normalize=False), raw, rtol=1e-4, atol=1e-7)


def test_saturated_softmax_still_has_a_logit_map(images):
    inp = keras.Input((H, W, 3))
    a = conv_trunk(inp)
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inp, dense(keras.layers.GlobalAveragePooling2D()(a)))
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 1e4, bias + np.array([1e4, 0, 0])])
    assert (model.predict(images, verbose=0)[:, 0] == 1.0).all()  # probability exactly 1
    maps = kc.GradCAM(model, layer="target")(images)
    assert np.isfinite(maps).all() and (maps.max(axis=(1, 2)) == 1).all()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flat = kc.GradCAM(model, layer="target", linearize=False)(images)
    assert (flat == 0).all()
    assert any("all zeros" in str(w.message) and "linearize=True" in str(w.message) for w in caught)


def test_target_layer_feeding_several_branches(images):
    inp = keras.Input((H, W, 3))
    a = conv_trunk(inp)
    left = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 1, name="left")(a))
    right = keras.layers.GlobalMaxPooling2D()(a)
    out = keras.layers.Dense(3)(keras.layers.Concatenate()([left, right]))
    model = keras.Model(inp, out)
    acts = to_host(keras.Model(inp, a)(images)).astype(np.float64)
    # dS/dA in closed form (S = logit 1 of Dense([GAP(conv1x1(A)), GMP(A)])): the 1x1 conv branch
    # gives lk[k, :] @ dk[:3, 1] / (h w) at every pixel; the max branch dk[3 + k, 1] at the argmax
    # pixel of channel k (random activations: no ties).
    lk = model.get_layer("left").get_weights()[0][0, 0]  # (6, 3)
    dk = model.layers[-1].get_weights()[0]               # (3 + 6, 3)
    n, h, w, k = acts.shape
    g = np.broadcast_to(lk @ dk[:3, 1] / (h * w), acts.shape).copy()
    flat = acts.reshape(n, h * w, k)
    assert (np.sort(flat, axis=1)[:, -1] > np.sort(flat, axis=1)[:, -2]).all()  # a unique max per channel
    top = flat.argmax(axis=1)                            # (n, k)
    for i in range(n):
        for c in range(k):
            g[i, top[i, c] // w, top[i, c] % w, c] += dk[3 + c, 1]
    raw = np.maximum(np.einsum("nhwk,nk->nhw", acts, g.mean(axis=(1, 2))), 0)
    np.testing.assert_allclose(kc.GradCAM(model, layer="target")(images, targets=1, upsample=False, normalize=False),
                               raw, rtol=1e-4, atol=1e-7)


def test_mixed_precision_maps_are_float32_and_finite(images):
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((H, W, 3))
        a = conv_trunk(inp)
        out = keras.layers.Dense(3, activation="softmax", dtype="float32")(keras.layers.GlobalAveragePooling2D()(a))
        model = keras.Model(inp, out)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert model.get_layer("target").compute_dtype == "float16"
    for method in (kc.GradCAM, kc.GradCAMPlusPlus, kc.LayerCAM):
        maps = method(model, layer="target")(images)
        assert maps.dtype == np.float32 and np.isfinite(maps).all() and maps.max() == 1


def test_single_pixel_map_upsamples_to_a_constant(images):
    inp = keras.Input((H, W, 3))
    a = keras.layers.Conv2D(5, H, activation="relu", name="target")(inp)  # a 1x1 map
    out = keras.layers.Dense(3)(keras.layers.Flatten()(a))
    cam = kc.GradCAM(keras.Model(inp, out), layer="target")
    raw = cam(images, upsample=False, normalize=False)
    assert raw.shape == (3, 1, 1)
    up = cam(images, normalize=False)
    np.testing.assert_allclose(up, np.broadcast_to(raw, up.shape), rtol=1e-6)


def test_input_that_the_model_cannot_take(images):
    inp = keras.Input((H, W, 3))
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(conv_trunk(inp)))
    cam = kc.GradCAM(keras.Model(inp, out))
    with pytest.raises(ValueError, match="channels is 1, the model's is 3"):
        cam(images[..., :1])
    with pytest.raises(ValueError, match="axis 1 is 6"):
        cam(images[:, :6])
    with pytest.raises(ValueError, match="different shapes"):
        cam([images[0], images[0, :6]])
    with pytest.raises(ValueError, match="empty batch"):
        cam(images[:0])
    bad = images.copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf \(images \[1\]\)"):
        cam(bad)
    with pytest.warns(UserWarning, match="raw 0-255 pixels"):
        cam((images * 255).astype(np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # standardized input (negative values) is not raw pixels
        cam(np.random.default_rng(0).normal(0, 3, images.shape).astype(np.float32))


class HoldGate(keras.Model):
    """A second code path for the gated model: a one-input model that supplies the gate."""

    def __init__(self, inner, gate):
        super().__init__()
        self.inner = inner
        self.gate = np.asarray(gate, np.float32)

    def call(self, images):
        return self.inner({"rgb": images, "gate_values": ops.convert_to_tensor(self.gate)})


def gated_model(name_inputs=False):
    """Two inputs: images, and a per-image gate on the 6 pooled features (so the other input
    changes the map: dS/dA^k_ij = gate_k W[k, c] / (h w))."""
    a = keras.Input((H, W, 3), name="rgb" if name_inputs else None)
    b = keras.Input((6,), name="gate_values" if name_inputs else None)
    pooled = keras.layers.GlobalAveragePooling2D()(conv_trunk(a))
    out = keras.layers.Dense(3)(keras.layers.Multiply()([pooled, b]))
    if name_inputs:  # a dict in another order than the sorted keys of model.inputs
        return keras.Model({"rgb": a, "gate_values": b}, out), a
    return keras.Model([b, a], out), a  # the image second: found by its rank


def test_multi_input_model_is_explained_with_the_other_inputs_held(images):
    model, a = gated_model()
    gates = np.random.default_rng(0).normal(size=(len(images), 6)).astype(np.float32)
    cam = kc.GradCAM(model, layer="target")
    raw = cam([gates, images], targets=1, upsample=False, normalize=False)
    acts = to_host(keras.Model(a, model.get_layer("target").output)(images))
    kernel = model.layers[-1].get_weights()[0]
    expected = np.maximum(np.einsum("nhwk,nk->nhw", acts, gates * kernel[:, 1] / (H * W)), 0)
    np.testing.assert_allclose(raw, expected, rtol=1e-5, atol=1e-7)
    # One example without a batch axis, and the automatic layer, see through the other input.
    np.testing.assert_allclose(kc.GradCAM(model)([gates[2], images[2]], targets=1, upsample=False,
                                                 normalize=False), expected[2], rtol=1e-5, atol=1e-7)
    assert [path for path, shape in kc.list_layers(model) if len(shape) == 4] == ["c1", "target"]
    with pytest.raises(ValueError, match="CAMCallback, explain_dataset and the metrics take single-input"):
        kc.CAMCallback([gates, images])
    with pytest.raises(ValueError, match=r"2 inputs .*as a list in that order or a dict"):
        cam(images)
    with pytest.raises(ValueError, match=r"'.*' has shape \(2, 6\), but there are 3 images"):
        cam([gates[:2], images])
    with pytest.raises(ValueError, match="has shape .*not a batch with 1 to 3 spatial axes"):
        kc.GradCAM(model, image_input=0)


def test_score_cam_runs_each_image_with_its_own_other_inputs(images):
    """Score-CAM's masked batches mix images; each masked copy must get its image's gate."""
    model, _ = gated_model(name_inputs=True)
    gates = np.random.default_rng(1).uniform(0.2, 2.0, size=(len(images), 6)).astype(np.float32)
    together = kc.ScoreCAM(model, layer="target", batch_size=5, verbose=0)(
        {"gate_values": gates, "rgb": images}, targets=[0, 1, 2], upsample=False, normalize=False)
    for i in range(len(images)):
        alone = kc.ScoreCAM(HoldGate(model, gates[i:i + 1]), layer="target", verbose=0)
        one = alone(images[i:i + 1], targets=i, upsample=False, normalize=False)
        np.testing.assert_allclose(together[i], one[0], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"dict with keys \['rgb'\]"):
        kc.GradCAM(model)({"rgb": images})


def film_model():
    """Two inputs: images, and a per-image scale of their three channels (a head CAM applies to).
    It ends in logits: a subclassed wrapper around it has no static head to linearize."""
    a, b = keras.Input((H, W, 3), name="rgb"), keras.Input((3,), name="gate_values")
    scaled = keras.layers.Multiply()([a, keras.layers.Reshape((1, 1, 3))(b)])
    pooled = keras.layers.GlobalAveragePooling2D()(conv_trunk(scaled))
    return keras.Model({"rgb": a, "gate_values": b}, keras.layers.Dense(3)(pooled))


@pytest.mark.parametrize("method", each_method(names(attention=False) + ["guidedbackprop", "guidedgradcam"]))
def test_every_method_holds_the_other_inputs_of_each_image(images, method):
    """A second code path per method: the maps of a multi-input model's batch equal each
    image's maps through a one-input model that supplies that image's gate."""
    model = film_model()
    gates = np.random.default_rng(2).uniform(0.2, 2.0, size=(len(images), 3)).astype(np.float32)

    def build(m, **kwargs):
        if method == "guidedbackprop":
            return kc.GuidedBackprop(m, **kwargs)
        if method == "guidedgradcam":
            return kc.GuidedGradCAM(m, layer="target", **kwargs)
        return create(method, m, layer="target", **FEWER_SAMPLES.get(method, {}), **kwargs)

    together = build(model, image_input="rgb", batch_size=2).explain(
        {"rgb": images, "gate_values": gates}, targets=[0, 1, 2]).maps
    for i in range(len(images)):
        one = build(HoldGate(model, gates[i:i + 1])).explain(images[i:i + 1], targets=i).maps
        # The black-box maps are differences of scores, min-max scaled: float32 rounding of the two
        # batchings reaches a few 1e-6 of the range (3.4e-6 measured for Occlusion on JAX).
        atol = 1e-5 if method in BLACK_BOX else 1e-6
        np.testing.assert_allclose(together[i], one[0], rtol=1e-4, atol=atol)
    assert np.abs(together).max() > 0


BLACK_BOX = {"occlusion", "rise", "sobolattribution", "hsicattribution", "lime", "kernelshap"}
# The sampling methods with fewer draws than their defaults: the batch and the single images must
# agree whatever the count (the same seeded draws on both paths), and the defaults cost minutes here.
FEWER_SAMPLES = {"rise": {"masks": 400}, "sobolattribution": {"designs": 8}, "hsicattribution": {"designs": 300},
                 "lime": {"samples": 300}, "kernelshap": {"coalitions": 300}}


def channels_first_pair():
    """The same layers as a channels-first model (NCHW in, an NCHW map, a channels-first
    pooling; TensorFlow's CPU convolutions need NHWC, so the convolutions run between
    Permutes) and as a plain channels-last model."""
    first = keras.Input((3, H, W))
    x = keras.layers.Permute((2, 3, 1))(first)
    c1 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")
    c2 = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="target")
    head = keras.layers.Dense(3, activation="softmax", name="head")
    x = keras.layers.Permute((3, 1, 2), name="nchw")(c2(c1(x)))
    cf = keras.Model(first, head(keras.layers.GlobalAveragePooling2D(data_format="channels_first")(x)))
    last = keras.Input((H, W, 3))
    cl = keras.Model(last, head(keras.layers.GlobalAveragePooling2D()(c2(c1(last)))))
    return cf, cl


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "layercam", "eigencam"])
def test_channels_first_model_gives_the_channels_last_maps(images, method):
    cf, cl = channels_first_pair()
    nchw = np.transpose(images, (0, 3, 1, 2))
    expected = create(method, cl, layer="target")(images, targets=[0, 1, 2])
    for layer in ("nchw", "target", None):  # an NCHW map, an NHWC conv inside, the automatic choice
        cam = create(method, cf, layer=layer, data_format="channels_first" if layer else None)
        assert cam.graph.data_format == "channels_first"
        np.testing.assert_allclose(cam(nchw, targets=[0, 1, 2]), expected, rtol=1e-4, atol=1e-5)
    assert cam.layer_path == "nchw"


def test_channels_first_input_is_checked_and_measured(images):
    cf, cl = channels_first_pair()
    nchw = np.transpose(images, (0, 3, 1, 2))
    with pytest.raises(ValueError, match="its channels is 12, the model's is 3"):
        kc.GradCAM(cf)(images)  # channels-last images for a channels-first model
    maps = kc.GradCAM(cl, layer="target")(images)
    for metric in (kc.metrics.average_drop, kc.metrics.deletion_auc):
        np.testing.assert_allclose(metric(cf, nchw, maps), metric(cl, images, maps), rtol=1e-5)
    with pytest.raises(ValueError, match="data_format"):
        kc.GradCAM(cf, data_format="NCHW")


class BranchOnValues(keras.Model):
    """A model whose call branches on a tensor's value in Python: it needs AutoGraph."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="target")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        a = self.conv(x)
        if ops.mean(x) > 100.0:  # never true for these images: the dense path is taken
            a = a * 0.0
        return self.dense(self.pool(a))


def test_a_model_that_needs_autograph_is_compiled_with_it(images):
    """tf-keras converts a layer's call with AutoGraph when the caller has it on, so the
    explainer retries with it. Keras 3 never converts a layer's call: such a model fails
    in `model.predict`, and the explainer runs it eagerly (on TensorFlow its first call of a
    shape is eager anyway), with a warning when the compiled call fails (on JAX: the first)."""
    model = BranchOnValues()
    model(images)
    cam = kc.GradCAM(model, layer="target")
    acts = to_host(model.conv(images))
    w = model.dense.get_weights()[0][:, 1] / (H * W)
    expected = np.maximum(np.einsum("nhwk,k->nhw", acts, w), 0)
    raw = dict(targets=1, upsample=False, normalize=False)
    if backend.name() == "jax":  # JAX compiles from the first call: its trace fails, it warns, runs eagerly
        with pytest.warns(UserWarning, match="cannot be compiled"):
            first = cam(images, **raw)
    else:
        first = cam(images, **raw)  # eager
    if LEGACY:
        second = cam(images, **raw)  # compiled, with AutoGraph
    elif backend.name() == "torch":
        second = cam(images, **raw)  # PyTorch runs every call eagerly: nothing to compile
    elif backend.name() == "jax":
        # (Keras's own jitted model.predict cannot run such a model on JAX either.)
        second = cam(images, **raw)  # eager from now on, without a second warning
    else:
        import tensorflow as tf
        with pytest.raises(tf.errors.OperatorNotAllowedInGraphError):
            model.predict(images, verbose=0)
        with pytest.warns(UserWarning, match="cannot be compiled, even with AutoGraph"):
            second = cam(images, **raw)
    traced = cam.tracing_count
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        for maps in (first, second, cam(images, **raw)):
            np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-7)
    assert cam.tracing_count == traced  # no trace after the first compiled call


class SubclassedClassifier(keras.Model):
    """No static graph: the softmax is found by running the model, fused in a Dense or as a
    Softmax layer, or not at all when it is a plain function in `call`."""

    def __init__(self, head="dense"):
        super().__init__()
        self.head = head
        self.c1 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")
        self.conv = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="target")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.dense = keras.layers.Dense(3, activation="softmax" if head == "dense" else None)
        self.softmax = keras.layers.Softmax()

    def call(self, x):
        z = self.dense(self.pool(self.conv(self.c1(x))))
        if self.head == "layer":
            return self.softmax(z)
        return ops.softmax(z) if self.head == "function" else z


def test_subclassed_model_softmax_is_found_by_running_it(images):
    """Maps, scores and probabilities equal those of the same layers as a logits model
    (a second code path) when the softmax is a layer; a softmax function gets a warning."""
    logits = SubclassedClassifier("logits")
    logits(images)
    expected = kc.GradCAM(logits, layer="target").explain(images, targets=[0, 1, 2])
    for head in ("dense", "layer"):
        model = SubclassedClassifier(head)
        model(images)
        model.set_weights(logits.get_weights())
        got = kc.GradCAM(model, layer="target").explain(images, targets=[0, 1, 2])
        np.testing.assert_allclose(got.maps, expected.maps, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5)
        np.testing.assert_allclose(got.probabilities, expected.probabilities, rtol=1e-5)  # one softmax
        maps = kc.ScoreCAM(model, layer="target", verbose=0)(images)
        np.testing.assert_allclose(maps, kc.ScoreCAM(logits, layer="target", verbose=0)(images), atol=1e-5)
        np.testing.assert_allclose(kc.metrics.average_drop(model, images, maps),
                                   kc.metrics.average_drop(logits, images, maps), rtol=1e-5)
    hidden = SubclassedClassifier("function")
    hidden(images)
    hidden.set_weights(logits.get_weights())
    with pytest.warns(UserWarning, match="look like softmax probabilities"):
        got = kc.GradCAM(hidden, layer="target").explain(images, targets=[0, 1, 2])
    # The probabilities are the model's own (one softmax, not a second one on top).
    np.testing.assert_allclose(got.probabilities, expected.probabilities, rtol=1e-5)


def test_logits_that_happen_to_sum_to_1_still_get_their_softmax():
    """A Dense head of logits: a row of logits that is non-negative and sums to 1 is still logits, so its
    probabilities are their softmax (by hand), in the explainer and in the metrics alike."""
    inputs = keras.Input((2, 1))
    model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False)(keras.layers.Flatten()(inputs)))
    model.set_weights([np.eye(2, dtype="float32")])
    x = np.array([[[0.3], [0.7]], [[0.3], [0.8]]], "float32")
    z = x[..., 0].astype(np.float64)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    masks = np.array([[1.0, 0.5], [1.0, 0.5]], "float32")
    masked = np.exp(z * masks) / np.exp(z * masks).sum(axis=1, keepdims=True)
    expected = 100 * np.maximum(0, p[:, 1] - masked[:, 1]) / p[:, 1]
    np.testing.assert_allclose(kc.metrics.average_drop(model, x, masks, reduce=None), expected, rtol=1e-4)


def test_a_softmax_keras_cam_cannot_see_in_a_functional_model_is_named_once(images):
    """A functional model whose softmax is inside a Lambda: the maps explain its probabilities, which
    the first call says once; the probabilities reported are the model's own, not a softmax of them (a
    second code path: the logits model's)."""
    inputs = keras.Input((H, W, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="target")(inputs)
    z = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    logits = keras.Model(inputs, z)
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: keras.activations.softmax(t))(z))
    expected = kc.GradCAM(logits, layer="target").explain(images, targets=[0, 1, 2])
    cam = kc.GradCAM(model, layer="target")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = cam.explain(images, targets=[0, 1, 2])
        cam.explain(images)
    named = [w for w in caught if "look like softmax probabilities" in str(w.message)]
    assert len(named) == 1 and "Lambda" in str(named[0].message)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, rtol=1e-5)
    np.testing.assert_allclose(got.scores, expected.probabilities, rtol=1e-5)       # it explains probabilities
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kc.GradCAM(logits, layer="target")(images)
    assert not [w for w in caught if "softmax" in str(w.message)]


@pytest.mark.skipif(backend.name() == "tensorflow", reason="on TensorFlow SavedModels are explained "
                    "(tests/test_saved_model.py)")
def test_saved_model_off_tensorflow_names_the_backend(images, tmp_path):
    """A frozen SavedModel graph, loaded with TensorFlow beside Keras on JAX or PyTorch, is a clear
    error naming KERAS_BACKEND=tensorflow, not a failure deep inside; so is a Keras model holding
    a SavedModel layer (Keras itself refuses to build a TFSMLayer off TensorFlow)."""
    import tensorflow as tf  # installed beside the other backends; a pure TensorFlow module

    class Net(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype(np.float32))
            self.dense = tf.Variable(np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec((None, H, W, 3), tf.float32)])
        def __call__(self, x):
            a = tf.nn.relu(tf.nn.conv2d(x, self.kernel, 1, "SAME"))
            return tf.reduce_mean(a, axis=(1, 2)) @ self.dense

    tf.saved_model.save(Net(), str(tmp_path / "net"))
    loaded = tf.saved_model.load(str(tmp_path / "net"))
    with pytest.raises(RuntimeError, match=r"SavedModel .*KERAS_BACKEND=tensorflow"):
        kc.GradCAM(loaded)(images)
    with pytest.raises(NotImplementedError, match="TensorFlow backend"):
        keras.layers.TFSMLayer(str(tmp_path / "net"), call_endpoint="serving_default")


@pytest.mark.parametrize("metric", ["faithfulness_estimate", "completeness"])
def test_a_logit_metric_on_a_softmax_keras_cam_cannot_see_says_it_scored_probabilities(images, metric):
    """Faithfulness estimate (``softmax=False``) and completeness (``output="score"``) read logits. On a
    model whose softmax sits in a Lambda they can only read its probabilities: the value is the one the
    logits model gives with probabilities asked for (a second code path), and the call says so once,
    pointing at the caller's line. Probabilities asked for, or a model of logits: no such warning."""
    inputs = keras.Input((H, W, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="target")(inputs)
    z = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    logits = keras.Model(inputs, z)
    model, fresh = (keras.Model(inputs, keras.layers.Lambda(lambda t: keras.activations.softmax(t))(z))
                    for _ in range(2))
    maps = np.random.default_rng(0).random(images.shape[:-1]).astype("float32")
    fn = getattr(kc.metrics, metric)
    as_logits, as_probabilities = ({"softmax": False}, {"softmax": True}) if metric != "completeness" else \
        ({"output": "score"}, {"output": "probability"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = fn(model, images, maps, reduce=None, **as_logits)
        fn(model, images, maps, reduce=None, **as_logits)
    named = [w for w in caught if "scores probabilities" in str(w.message)]
    assert len(named) == 1 and named[0].filename == __file__, [str(w.message) for w in caught]
    np.testing.assert_allclose(got, fn(logits, images, maps, reduce=None, **as_probabilities), rtol=1e-4, atol=1e-6)
    for m, kwargs in ((fresh, as_probabilities), (logits, as_logits)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn(m, images, maps, reduce=None, **kwargs)
        assert not [w for w in caught if "softmax" in str(w.message)], [str(w.message) for w in caught]

"""FullGrad against an independent computation from the formula.

The references recompute every layer with explicit TensorFlow ops from the
layers' weights (convolutions, batch normalization from its moving statistics,
pooling, dense layers; no keras_cam code and no interception), take their own
gradients of the pre-softmax logit with respect to the input and to each
bias layer's pre-activation output, and build the map in numpy: each channel
of ``|x dS/dx|`` and of ``|b dS/dz|`` min-max scaled over its positions,
resized bilinearly to the input size with ``tf.image.resize``, all summed and
min-max scaled.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_cam as kc
from keras_cam._compat import keras, to_host
from keras_cam.methods.fullgrad import FullGrad, bias_kind
from test_gradcam import traces

H = W = 16
T = 32
CLASSES = 4


def assert_close(actual, expected, rtol=1e-5):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.abs(expected).max(), 1e-12)
    np.testing.assert_array_less(np.abs(actual - expected).max(), rtol * scale + 1e-12)


def randomize(model, seed):
    """Non-zero biases (Keras initializes them to zeros) and non-trivial moving statistics,
    gamma and beta for every BatchNormalization."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None and not isinstance(layer, keras.layers.BatchNormalization):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape).astype(np.float32)])
        if isinstance(layer, keras.layers.BatchNormalization):
            k = layer.get_weights()[-1].shape[0]
            values = []
            if layer.scale:
                values.append(rng.uniform(0.5, 1.5, k))
            if layer.center:
                values.append(rng.normal(0, 0.5, k))
            values += [rng.normal(0, 0.5, k), rng.uniform(0.3, 2.0, k)]
            layer.set_weights([v.astype(np.float32) for v in values])


def bn_params(layer):
    """(gamma, beta, mean, var, eps) from the weights; gamma 1 / beta 0 when absent."""
    w = [np.asarray(v, np.float64) for v in layer.get_weights()]
    k = w[-1].shape[0]
    gamma = w.pop(0) if layer.scale else np.ones(k)
    beta = w.pop(0) if layer.center else np.zeros(k)
    return gamma, beta, w[0], w[1], layer.epsilon


def bn_apply(z, layer, axis):
    gamma, beta, mean, var, eps = bn_params(layer)
    shape = [1] * z.shape.rank
    shape[axis] = -1
    c = lambda v: tf.constant(v.reshape(shape), tf.float32)  # noqa: E731
    return (z - c(mean)) / tf.sqrt(c(var) + eps) * c(gamma) + c(beta)


def bn_bias(layer):
    gamma, beta, mean, var, eps = bn_params(layer)
    return beta - mean * gamma / np.sqrt(var + eps)


def weights(model, name):
    return [tf.constant(w) for w in model.get_layer(name).get_weights()]


def minmax_np(m):
    """Per-row min-max of (M, *s); constant rows become zeros."""
    axes = tuple(range(1, m.ndim))
    lo, hi = m.min(axis=axes, keepdims=True), m.max(axis=axes, keepdims=True)
    return np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1), 0)


def resize_np(maps, size):
    """Bilinear resize of (M, *s) maps with tf.image.resize; a signal is a (T, 1) image."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim == 2:
        return tf.image.resize(maps[:, :, None, None], (size[0], 1), "bilinear").numpy()[:, :, 0, 0]
    if maps.ndim == 3:
        return tf.image.resize(maps[..., None], size, "bilinear").numpy()[..., 0]
    assert maps.shape[1:] == tuple(size)  # volumes: the references stay at the input size
    return maps


def reference_map(x, gx, terms):
    """FullGrad's map from the formula: ``terms`` are (bias (K,), dS/dz (N, *s, K)) of the
    spatial bias layers."""
    x, gx = np.asarray(x, np.float64), np.asarray(gx, np.float64)
    size = x.shape[1:-1]
    total = sum(minmax_np(np.abs(x[..., c] * gx[..., c])) for c in range(x.shape[-1]))
    for b, g in terms:
        g = np.asarray(g, np.float64)
        for k in range(g.shape[-1]):
            total = total + resize_np(minmax_np(np.abs(b[k] * g[..., k])), size)
    return minmax_np(total)


def assert_informative(expected, x, gx):
    """Every reference map varies, and the bias parts change it (not the input part alone)."""
    flat = expected.reshape(len(expected), -1)
    assert (flat.max(axis=1) == 1).all() and (flat.min(axis=1) == 0).all()
    assert np.abs(expected - reference_map(x, gx, [])).max() > 0.1


def completeness_np(x, gx, biases):
    """``sum(dS/dx x) + sum_b sum_k (sum over positions of dS/dz^k) b_k`` per image."""
    x, gx = np.asarray(x, np.float64), np.asarray(gx, np.float64)
    total = (x * gx).reshape(len(x), -1).sum(axis=1)
    for b, g in biases:
        g = np.asarray(g, np.float64)
        total = total + (g.reshape(len(g), -1, g.shape[-1]).sum(axis=1) * b).sum(axis=1)
    return total


# ---------------------------------------------------------------------------
# Models and their references


@pytest.fixture(scope="module")
def cnn():
    """conv (bias, linear) -> BN -> max pool -> ReLU -> conv (fused ReLU) -> conv (no bias, ReLU)
    -> BN (center=False) -> flatten -> dense ReLU -> dense softmax. The max pooling sees
    continuous values (before the ReLU): no ties."""
    keras.utils.set_random_seed(5)
    x = keras.Input((H, W, 3))
    z = keras.layers.Conv2D(4, 3, padding="same", name="c1")(x)
    z = keras.layers.BatchNormalization(name="bn1")(z)
    z = keras.layers.MaxPooling2D(2, name="pool")(z)
    z = keras.layers.ReLU(name="r1")(z)
    z = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="c2")(z)
    z = keras.layers.Conv2D(4, 1, use_bias=False, activation="relu", name="nobias")(z)
    z = keras.layers.BatchNormalization(center=False, name="bn2")(z)
    z = keras.layers.Flatten(name="flat")(z)
    z = keras.layers.Dense(6, activation="relu", name="d1")(z)
    model = keras.Model(x, keras.layers.Dense(CLASSES, activation="softmax", name="head")(z))
    randomize(model, 1)
    return model


def cnn_reference(model, x, targets=None):
    """Independent forward/backward pass: (logits, S, dS/dx, {name: (bias, dS/dz channels last)})."""
    k1, b1 = weights(model, "c1")
    k2, b2 = weights(model, "c2")
    (k3,) = weights(model, "nobias")
    wd, bd = weights(model, "d1")
    wh, bh = weights(model, "head")
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        z1 = tf.nn.conv2d(x, k1, 1, "SAME") + b1
        z2 = bn_apply(z1, model.get_layer("bn1"), -1)
        a = tf.nn.relu(tf.nn.max_pool2d(z2, 2, 2, "VALID"))
        z3 = tf.nn.conv2d(a, k2, 1, "SAME") + b2
        a = tf.nn.relu(tf.nn.conv2d(tf.nn.relu(z3), k3, 1, "SAME"))
        z4 = bn_apply(a, model.get_layer("bn2"), -1)
        z5 = tf.reshape(z4, (len(x), -1)) @ wd + bd
        logits = tf.nn.relu(z5) @ wh + bh
        cls = np.argmax(logits.numpy(), axis=1) if targets is None else np.asarray(targets)
        s = tf.gather(logits, cls, batch_dims=1)
    gx, *gz = tape.gradient(s, [x, z1, z2, z3, z4, z5])
    biases = [b1.numpy(), bn_bias(model.get_layer("bn1")), b2.numpy(), bn_bias(model.get_layer("bn2")),
              bd.numpy(), bh.numpy()]
    gz.append(tf.one_hot(cls, CLASSES))  # dS/dlogits
    terms = dict(zip(["c1", "bn1", "c2", "bn2", "d1", "head"], zip(biases, [g.numpy() for g in gz])))
    return logits.numpy(), s.numpy(), gx.numpy(), terms


SPATIAL_2D = ["c1", "bn1", "c2", "bn2"]


@pytest.fixture(scope="module")
def signal_model():
    """A 1-D model with channels-first layers: conv (linear) -> max pool -> to (N, K, T) ->
    BN(axis=1, scale=False) -> ReLU -> channels-first conv (fused ReLU) -> GAP -> dense softmax."""
    keras.utils.set_random_seed(6)
    x = keras.Input((T, 2))
    z = keras.layers.Conv1D(4, 5, padding="same", name="c1")(x)
    z = keras.layers.MaxPooling1D(2, name="pool")(z)
    z = keras.layers.Permute((2, 1), name="to_cf")(z)
    z = keras.layers.BatchNormalization(axis=1, scale=False, name="bn1")(z)
    z = keras.layers.ReLU(name="r1")(z)
    z = keras.layers.Conv1D(5, 3, padding="same", activation="relu", data_format="channels_first", name="c2")(z)
    z = keras.layers.GlobalAveragePooling1D(data_format="channels_first", name="gap")(z)
    model = keras.Model(x, keras.layers.Dense(CLASSES, activation="softmax", name="head")(z))
    randomize(model, 2)
    return model


def signal_reference(model, x, targets=None):
    k1, b1 = weights(model, "c1")
    k2, b2 = weights(model, "c2")
    wh, bh = weights(model, "head")
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        z1 = tf.nn.conv1d(x, k1, 1, "SAME") + b1                                   # (N, T, 4)
        z2 = bn_apply(tf.nn.max_pool1d(z1, 2, 2, "VALID"), model.get_layer("bn1"), -1)  # (N, T/2, 4)
        z3 = tf.nn.conv1d(tf.nn.relu(z2), k2, 1, "SAME") + b2                      # (N, T/2, 5)
        logits = tf.reduce_mean(tf.nn.relu(z3), axis=1) @ wh + bh
        cls = np.argmax(logits.numpy(), axis=1) if targets is None else np.asarray(targets)
        s = tf.gather(logits, cls, batch_dims=1)
    gx, *gz = tape.gradient(s, [x, z1, z2, z3])
    biases = [b1.numpy(), bn_bias(model.get_layer("bn1")), b2.numpy(), bh.numpy()]
    gz.append(tf.one_hot(cls, CLASSES))
    terms = dict(zip(["c1", "bn1", "c2", "head"], zip(biases, [g.numpy() for g in gz])))
    return logits.numpy(), s.numpy(), gx.numpy(), terms


@pytest.fixture(scope="module")
def volume_model():
    """conv3d (fused ReLU) -> BN -> GAP -> dense: every map at the input size."""
    keras.utils.set_random_seed(7)
    x = keras.Input((4, 6, 6, 1))
    z = keras.layers.Conv3D(3, 3, padding="same", activation="relu", name="c1")(x)
    z = keras.layers.BatchNormalization(name="bn1")(z)
    z = keras.layers.GlobalAveragePooling3D(name="gap")(z)
    model = keras.Model(x, keras.layers.Dense(CLASSES, name="head")(z))
    randomize(model, 3)
    return model


def volume_reference(model, x):
    k1, b1 = weights(model, "c1")
    wh, bh = weights(model, "head")
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        z1 = tf.nn.conv3d(x, k1, [1] * 5, "SAME") + b1
        z2 = bn_apply(tf.nn.relu(z1), model.get_layer("bn1"), -1)
        logits = tf.reduce_mean(z2, axis=(1, 2, 3)) @ wh + bh
        cls = np.argmax(logits.numpy(), axis=1)
        s = tf.gather(logits, cls, batch_dims=1)
    gx, g1, g2 = tape.gradient(s, [x, z1, z2])
    terms = {"c1": (b1.numpy(), g1.numpy()), "bn1": (bn_bias(model.get_layer("bn1")), g2.numpy()),
             "head": (bh.numpy(), tf.one_hot(cls, CLASSES).numpy())}
    return logits.numpy(), s.numpy(), gx.numpy(), terms


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(11).normal(size=(3, H, W, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def signals():
    return np.random.default_rng(12).normal(size=(3, T, 2)).astype(np.float32)


# ---------------------------------------------------------------------------
# Maps


def test_2d_maps_match_the_formula_eager_and_compiled_one_trace(cnn, images):
    _, _, gx, terms = cnn_reference(cnn, images)
    expected = reference_map(images, gx, [terms[n] for n in SPATIAL_2D])
    assert_informative(expected, images, gx)
    fg = FullGrad(cnn)
    for _ in range(3):  # the first call runs eagerly, the next ones compiled
        assert_close(fg(images), expected)
    assert fg.tracing_count == traces(1)
    # A chosen class, per image.
    targets = [2, 0, 3]
    _, _, gx, terms = cnn_reference(cnn, images, targets)
    expected = reference_map(images, gx, [terms[n] for n in SPATIAL_2D])
    assert_close(fg(images, targets=targets), expected)
    assert fg.tracing_count == traces(1)  # class targets are values, not a new signature


def test_1d_maps_with_channels_first_layers_match_the_formula(signal_model, signals):
    _, _, gx, terms = signal_reference(signal_model, signals)
    expected = reference_map(signals, gx, [terms[n] for n in ("c1", "bn1", "c2")])
    assert_informative(expected, signals, gx)
    fg = FullGrad(signal_model, data_format="channels_last")  # its input is (N, T, C)
    for _ in range(3):
        maps = fg(signals)
        assert maps.shape == (3, T)
        assert_close(maps, expected)
    assert fg.tracing_count == traces(1)


def test_3d_maps_match_the_formula(volume_model):
    x = np.random.default_rng(13).normal(size=(2, 4, 6, 6, 1)).astype(np.float32)
    _, _, gx, terms = volume_reference(volume_model, x)
    expected = reference_map(x, gx, [terms["c1"], terms["bn1"]])
    assert_informative(expected, x, gx)
    fg = FullGrad(volume_model)
    for _ in range(2):
        assert_close(fg(x), expected)


def test_batch_equals_single(cnn, images):
    fg = FullGrad(cnn)
    together = fg(images, targets=[1, 2, 0])
    for i in range(len(images)):
        one = fg(images[i], targets=[1, 2, 0][i])
        assert one.shape == (H, W)
        assert_close(one, together[i])
    again = FullGrad(cnn, batch_size=2)(images, targets=[1, 2, 0])  # chunked
    assert_close(again, together)


# ---------------------------------------------------------------------------
# The decomposition


@pytest.mark.parametrize("which", ["cnn", "signal"])
def test_parts_match_the_reference_and_complete_the_score(which, cnn, signal_model, images, signals):
    model, x, reference, names = {
        "cnn": (cnn, images, cnn_reference, ["c1", "bn1", "c2", "bn2", "d1", "head"]),
        "signal": (signal_model, signals, signal_reference, ["c1", "bn1", "c2", "head"]),
    }[which]
    logits, s, gx, terms = reference(model, x)
    parts = FullGrad(model, data_format="channels_last").parts(x)
    assert_close(parts.scores, s)
    assert_close(parts.scores, logits.max(axis=1))  # the pre-softmax logit of the top class
    np.testing.assert_array_equal(parts.targets, logits.argmax(axis=1))
    assert_close(parts.inputs, x)
    assert_close(parts.input_gradient, gx)
    assert [t.path for t in parts.biases] == names  # call order; the layer without a bias absent
    for term in parts.biases:
        b, g = terms[term.path]
        assert_close(term.bias, b)
        assert_close(term.gradient, g)
        assert term.in_map == (term.path != "head" and term.path != "d1")
    # Completeness, from the reference's own gradients and from the parts.
    assert_close(completeness_np(x, gx, terms.values()), s, rtol=1e-4)
    assert_close(completeness_np(parts.inputs, parts.input_gradient,
                                 [(t.bias, t.gradient) for t in parts.biases]), s, rtol=1e-4)
    assert_close(parts.completeness(), parts.scores, rtol=1e-4)
    # The bias terms carry a real share of the score.
    share = np.abs(completeness_np(x, gx, terms.values()) - completeness_np(x, gx, []))
    assert share.min() > 1e-2 * np.abs(s).max()


def test_a_layer_without_bias_contributes_nothing(cnn, images):
    assert bias_kind(cnn.get_layer("nobias")) is None
    assert bias_kind(cnn.get_layer("c2")) == "conv"
    assert bias_kind(cnn.get_layer("bn2")) == "batchnorm"
    assert bias_kind(cnn.get_layer("pool")) is None
    fg = FullGrad(cnn)
    assert "nobias" not in [p for p, _, _ in fg.bias_layers]
    # The same model with a zero bias on that layer gives the same map (|0 * dS/dz| is
    # constant, so each of its channels scales to zeros).
    config = cnn.get_config()
    for layer in config["layers"]:
        if layer["name"] == "nobias":
            layer["config"]["use_bias"] = True
    biased = keras.Model.from_config(config)
    for layer in cnn.layers:
        w = layer.get_weights()
        if layer.name == "nobias":
            w = w + [np.zeros(w[0].shape[-1], np.float32)]
        biased.get_layer(layer.name).set_weights(w)
    with_zero = FullGrad(biased)
    assert "nobias" in [t.path for t in with_zero.parts(images).biases]
    assert_close(with_zero(images), fg(images))


# ---------------------------------------------------------------------------
# The model is left as it was


def snapshot(model):
    return {path: (sorted(vars(layer)), vars(layer).get("activation"), type(layer).call)
            for path, layer in kc.layers.walk(model)}


def test_model_unchanged(cnn, images):
    before_out = to_host(cnn(images, training=False))
    before_w = [w.copy() for w in cnn.get_weights()]
    before = snapshot(cnn)
    activations = {p: getattr(l, "activation", None) for p, l in kc.layers.walk(cnn)}
    fg = FullGrad(cnn)
    fg(images)
    fg(images)
    fg.parts(images, targets=1)
    assert snapshot(cnn) == before
    assert all("call" not in vars(layer) for _, layer in kc.layers.walk(cnn))
    assert {p: getattr(l, "activation", None) for p, l in kc.layers.walk(cnn)} == activations
    assert cnn.get_layer("head").activation.__name__ == "softmax"  # the linearization undone too
    for a, b in zip(cnn.get_weights(), before_w):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(to_host(cnn(images, training=False)), before_out)


# ---------------------------------------------------------------------------
# Arguments


def test_bad_arguments(cnn, images):
    with pytest.raises(ValueError, match="takes no target layer.*layer='c2'"):
        FullGrad(cnn, layer="c2")
    with pytest.raises(TypeError):
        FullGrad(cnn, eigen_smooth=True)
    with pytest.raises(ValueError, match="batch_size"):
        FullGrad(cnn, batch_size=0)
    fg = FullGrad(cnn)
    with pytest.raises(ValueError, match="shape"):
        fg(images[..., :2])
    with pytest.raises(ValueError):
        fg.parts(images, targets=[0, 1])  # one class per image

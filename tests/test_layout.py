"""Layouts: 1-D signals, 3-D volumes and ViT token grids, against computations written here.

Every map is compared with an independent computation from the method's
definition: the activations are recomputed from the layers' weights with
plain ``keras.ops`` (not the model), the layers after the target are
re-implemented by hand, and the gradient is taken by the backend's own autodiff
on that re-implementation (``native_grad``, never keras-cam's gradient path).
Upsampling is checked against a numpy implementation of
separable linear interpolation with half-pixel centres.
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import layout
from keras_cam._compat import keras, ops, to_host
from test_gradcam import native_grad

CLASSES = 3


# ---------------------------------------------------------------------------
# Interpolation


def _linear_1d(x, out, axis):
    """numpy: resize ``x`` along ``axis`` to ``out`` samples, half-pixel centres, edges clamped."""
    n = x.shape[axis]
    pos = np.clip((np.arange(out) + 0.5) * n / out - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = (pos - lo).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def numpy_resize(maps, size):
    out = np.asarray(maps, np.float64)
    for axis, s in enumerate(size, start=1):
        out = _linear_1d(out, s, axis)
    return out


@pytest.mark.parametrize("shape, size", [
    ((2, 7), (19,)), ((2, 9), (4,)),
    ((2, 5, 6), (13, 11)), ((1, 8, 8), (3, 5)),
    ((2, 3, 4, 5), (7, 9, 6)), ((1, 6, 5, 4), (2, 11, 8)), ((2, 4, 5, 6), (4, 9, 3)), ((1, 8, 8, 8), (64, 64, 64)),
])
def test_resize_is_separable_linear_interpolation(shape, size):
    maps = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    got = to_host(layout.resize(ops.convert_to_tensor(maps), size))
    np.testing.assert_allclose(got, numpy_resize(maps, size), rtol=1e-5, atol=1e-5)


def test_minmax_any_rank_and_constant_maps():
    maps = np.stack([np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.full((2, 3, 4), 5.0, np.float32)])
    out = to_host(layout.minmax(ops.convert_to_tensor(maps)))
    np.testing.assert_allclose(out[0], maps[0] / 23.0, rtol=1e-6)
    assert (out[1] == 0).all()


# ---------------------------------------------------------------------------
# Token grids


@pytest.mark.parametrize("length, size, expected", [
    (197, (224, 224), (1, (14, 14))),    # ViT-B/16: a class token
    (196, (224, 224), (0, (14, 14))),    # no class token
    (198, (224, 224), (2, (14, 14))),    # DeiT: class and distillation tokens
    (201, (224, 224), (5, (14, 14))),    # a class token and 4 registers
    (17, (16, 16), (1, (4, 4))),
    (33, (32, 64), (1, (4, 8))),         # the aspect ratio of the input
    (50, (224, 224), (1, (7, 7))),       # ViT-B/32
])
def test_token_grid(length, size, expected):
    assert layout.token_grid(length, size) == expected


def test_token_grid_none_when_nothing_fits():
    # 152..160 tokens hold no square grid, and a square image has square grids only.
    assert layout.token_grid(160, (224, 224)) is None
    assert layout.token_grid(35, (16, 16)) is None


# ---------------------------------------------------------------------------
# Models


def conv1d_model():
    keras.utils.set_random_seed(3)
    x = keras.Input((32, 2))
    a = keras.layers.Conv1D(6, 5, padding="same", activation="relu", name="target")(x)
    b = keras.layers.Conv1D(4, 3, padding="same", activation="relu", name="after")(a)
    g = keras.layers.GlobalAveragePooling1D()(b)
    y = keras.layers.Dense(CLASSES, activation="softmax", name="logits")(g)
    return keras.Model(x, y)


def conv3d_model():
    # The target is linear: a ReLU before the max pooling makes ties (zeros) in its windows, and
    # TensorFlow's eager and compiled (oneDNN) MaxPool3D gradients route ties differently.
    keras.utils.set_random_seed(4)
    x = keras.Input((6, 8, 8, 1))
    a = keras.layers.Conv3D(5, 3, padding="same", name="target")(x)
    p = keras.layers.MaxPooling3D(2)(a)
    b = keras.layers.Conv3D(4, 3, padding="same", activation="relu", name="after")(p)
    g = keras.layers.GlobalAveragePooling3D()(b)
    y = keras.layers.Dense(CLASSES, activation="softmax", name="logits")(g)
    return keras.Model(x, y)


def _weights(model, name):
    return [ops.convert_to_tensor(np.asarray(w, np.float32)) for w in model.get_layer(name).get_weights()]


def hand_conv1d(model, x):
    """(target activations, a function target -> logits), written with keras.ops from the weights."""
    k1, b1 = _weights(model, "target")
    k2, b2 = _weights(model, "after")
    wd, bd = _weights(model, "logits")
    a = ops.relu(ops.conv(x, k1, 1, "same") + b1)

    def head(a):
        h = ops.relu(ops.conv(a, k2, 1, "same") + b2)
        return ops.matmul(ops.mean(h, axis=1), wd) + bd
    return a, head


def hand_conv3d(model, x):
    k1, b1 = _weights(model, "target")
    k2, b2 = _weights(model, "after")
    wd, bd = _weights(model, "logits")
    a = ops.conv(x, k1, 1, "same") + b1

    def head(a):
        p = ops.max_pool(a, 2, 2, "valid")
        h = ops.relu(ops.conv(p, k2, 1, "same") + b2)
        return ops.matmul(ops.mean(h, axis=(1, 2, 3)), wd) + bd
    return a, head


def hand_gradients(hand, model, x, c):
    a, head = hand(model, ops.convert_to_tensor(x))
    a = to_host(a)
    g = native_grad(lambda a: head(a)[:, c], a)
    return a.astype(np.float64), g.astype(np.float64)


def hand_gradcam(a, g):
    axes = tuple(range(1, a.ndim - 1))
    w = g.mean(axis=axes, keepdims=True)
    return np.maximum((a * w).sum(-1), 0)


def hand_gradcampp(a, g):
    axes = tuple(range(1, a.ndim - 1))
    total = a.sum(axis=axes, keepdims=True)
    num, den = g ** 2, 2 * g ** 2 + total * g ** 3
    alpha = np.divide(num, den, out=np.zeros_like(g), where=den != 0)
    w = (alpha * np.maximum(g, 0)).sum(axis=axes, keepdims=True)
    return np.maximum((a * w).sum(-1), 0)


@pytest.fixture(scope="module")
def signals():
    return np.random.default_rng(0).normal(size=(3, 32, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def volumes():
    return np.random.default_rng(0).uniform(size=(2, 6, 8, 8, 1)).astype(np.float32)


def test_gradcam_on_a_conv1d_model(signals):
    model = conv1d_model()
    cam = kc.GradCAM(model, layer="target")
    for c in range(CLASSES):
        a, g = hand_gradients(hand_conv1d, model, signals, c)
        raw = cam(signals, targets=c, upsample=False, normalize=False)
        assert raw.shape == (3, 32) and np.ptp(raw) > 0
        np.testing.assert_allclose(raw, hand_gradcam(a, g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, formula", [(kc.GradCAM, hand_gradcam), (kc.GradCAMPlusPlus, hand_gradcampp)])
def test_gradcam_family_on_a_conv3d_model(volumes, method, formula):
    model = conv3d_model()
    a, g = hand_gradients(hand_conv3d, model, volumes, 1)
    expected = formula(a, g)
    assert np.ptp(expected) > 0
    raw = method(model, layer="target")(volumes, targets=1, upsample=False, normalize=False)
    assert raw.shape == (2, 6, 8, 8)
    np.testing.assert_allclose(raw, expected, rtol=1e-5, atol=1e-6)
    # Upsampled and normalized: the same map, trilinear at the input size (here equal), scaled.
    full = method(model, layer="target")(volumes, targets=1)
    np.testing.assert_allclose(full, to_host(layout.minmax(ops.convert_to_tensor(expected.astype(np.float32)))), atol=1e-5)


def test_upsampled_1d_maps_are_linear_interpolation(signals):
    keras.utils.set_random_seed(5)
    x = keras.Input((32, 2))
    a = keras.layers.Conv1D(4, 3, strides=4, padding="same", activation="relu", name="target")(x)
    y = keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling1D()(a))
    model = keras.Model(x, y)
    cam = kc.GradCAM(model, layer="target")
    raw = cam(signals, targets=0, upsample=False, normalize=False)
    assert raw.shape == (3, 8)
    np.testing.assert_allclose(cam(signals, targets=0, normalize=False), numpy_resize(raw, (32,)),
                               rtol=1e-5, atol=1e-6)


def _hand_scorecam(model, images, a, c):
    """Score-CAM ("reference" weighting) from the definition, one masked input at a time."""
    size = images.shape[1:-1]
    maps = np.zeros(a.shape[:-1])
    for i in range(len(images)):
        weights = np.zeros(a.shape[-1])
        for k in range(a.shape[-1]):
            m = numpy_resize(a[i:i + 1, ..., k], size)[0]
            if m.max() - m.min() <= 1e-6 * max(abs(m.max()), abs(m.min())):
                continue
            m = (m - m.min()) / (m.max() - m.min())
            logits = model(images[i:i + 1] * m[..., None].astype(np.float32), training=False)
            weights[k] = to_host(logits)[0, c]  # the model ends in softmax: a probability
        maps[i] = np.maximum((a[i] * weights).sum(-1), 0)
    return maps


@pytest.mark.parametrize("build, hand, data", [(conv1d_model, hand_conv1d, "signals"),
                                               (conv3d_model, hand_conv3d, "volumes")])
def test_scorecam_on_1d_and_3d(build, hand, data, request):
    images = request.getfixturevalue(data)
    model = build()
    a = to_host(hand(model, ops.convert_to_tensor(images))[0]).astype(np.float64)
    raw = kc.ScoreCAM(model, layer="target", verbose=0, batch_size=4)(images, targets=2, upsample=False,
                                                                      normalize=False)
    np.testing.assert_allclose(raw, _hand_scorecam(model, images, a, 2), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("build, data", [(conv1d_model, "signals"), (conv3d_model, "volumes")])
def test_automatic_layer_choice_on_1d_and_3d(build, data, request):
    images = request.getfixturevalue(data)
    cam = kc.GradCAM(build())
    assert cam.layer_path == "after"  # the last feature map, never the pooled vector
    assert cam(images).shape == images.shape[:-1]


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "layercam", "eigencam", "scorecam"])
@pytest.mark.parametrize("build, data", [(conv1d_model, "signals"), (conv3d_model, "volumes")])
def test_batch_equals_single_calls(build, data, method, request):
    images = request.getfixturevalue(data)
    cam = kc.methods.create(method, build(), layer="target")
    batch = cam(images, targets=1)
    for i in range(len(images)):
        np.testing.assert_allclose(cam(images[i], targets=1), batch[i], rtol=1e-5, atol=1e-6)


def test_aug_smooth_on_a_signal_averages_shifted_maps(signals):
    """aug_smooth on signals: the identity and shifts by one step each way (no time reversal);
    each shifted signal repeats its edge value, its map is shifted back, and a position is
    averaged over the transforms that still see it."""
    model = conv1d_model()
    cam = kc.GradCAM(model, layer="target")
    smooth = kc.GradCAM(model, layer="target", aug_smooth=True)(signals, targets=0, normalize=False)
    assert [flip for flip, _ in kc.base.augmentations((32,))] == [False] * 3
    total, count = np.zeros(signals.shape[:2]), np.zeros(signals.shape[:2])
    for d in (0, 1, -1):
        x = np.concatenate([signals[:, :1]] * d + [signals[:, :32 - d]], axis=1) if d >= 0 else \
            np.concatenate([signals[:, -d:]] + [signals[:, -1:]] * -d, axis=1)
        m = cam(x, targets=0, normalize=False)
        back, seen = np.zeros_like(m), np.zeros_like(m)
        if d >= 0:
            back[:, :32 - d], seen[:, :32 - d] = m[:, d:], 1
        else:
            back[:, -d:], seen[:, -d:] = m[:, :32 + d], 1
        total, count = total + back, count + seen
    np.testing.assert_allclose(smooth, total / count, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# Vision transformer tokens


class ClassToken(keras.layers.Layer):
    """Prepends one learned token to a sequence."""

    def build(self, shape):
        self.token = self.add_weight(name="token", shape=(1, 1, int(shape[-1])), initializer="random_normal")

    def call(self, x):
        return ops.concatenate([ops.zeros_like(x[:, :1]) + self.token, x], axis=1)


def tiny_vit():
    """16x16 images, 4x4 patches of 4 px, a class token, one attention read by the class token."""
    keras.utils.set_random_seed(6)
    x = keras.Input((16, 16, 3))
    p = keras.layers.Conv2D(8, 4, strides=4, name="patches")(x)
    t = ClassToken(name="cls")(keras.layers.Reshape((16, 8))(p))
    n = keras.layers.LayerNormalization(name="target")(t)
    q = keras.layers.Dense(8, name="q")(keras.layers.Cropping1D((0, 16))(n))
    k = keras.layers.Dense(8, name="k")(n)
    v = keras.layers.Dense(8, name="v")(n)
    o = keras.layers.Attention(name="attention")([q, v, k])
    y = keras.layers.Dense(CLASSES, name="logits")(keras.layers.Flatten()(o))
    return keras.Model(x, y)


def hand_vit(model, x):
    """The target tokens from the weights, and the head after them, by hand."""
    kp, bp = _weights(model, "patches")
    token = _weights(model, "cls")[0]
    gamma, beta = _weights(model, "target")
    eps = model.get_layer("target").epsilon
    p = ops.conv(x, kp, 4, "valid") + bp
    t = ops.concatenate([ops.tile(token, (x.shape[0], 1, 1)), ops.reshape(p, (-1, 16, 8))], axis=1)
    mean, var = ops.mean(t, axis=-1, keepdims=True), ops.var(t, axis=-1, keepdims=True)
    n = (t - mean) / ops.sqrt(var + eps) * gamma + beta
    (wq, bq), (wk, bk), (wv, bv) = (_weights(model, k) for k in "qkv")
    wd, bd = _weights(model, "logits")

    def head(n):
        q = ops.matmul(n[:, :1], wq) + bq
        k, v = ops.matmul(n, wk) + bk, ops.matmul(n, wv) + bv
        attn = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 2, 1))), axis=-1)
        return ops.matmul(ops.matmul(attn, v)[:, 0], wd) + bd
    return n, head


def test_gradcam_on_vit_tokens_equals_hand_computation():
    model = tiny_vit()
    images = np.random.default_rng(2).uniform(size=(3, 16, 16, 3)).astype(np.float32)
    n, head = hand_vit(model, ops.convert_to_tensor(images))
    n = to_host(n)
    g = native_grad(lambda n: head(n)[:, 2], n)
    # The patch tokens, dropping the class token, laid out row by row on the 4x4 grid.
    a_grid = n[:, 1:].reshape(3, 4, 4, 8).astype(np.float64)
    g_grid = g[:, 1:].reshape(3, 4, 4, 8).astype(np.float64)
    expected = hand_gradcam(a_grid, g_grid)
    assert np.ptp(expected) > 0
    for reshape in (None, (4, 4), lambda t: ops.reshape(t[:, 1:], (-1, 4, 4, t.shape[-1]))):
        cam = kc.GradCAM(model, layer="target", reshape=reshape)
        np.testing.assert_allclose(cam(images, targets=2, upsample=False, normalize=False), expected,
                                   rtol=1e-5, atol=1e-6)
    full = kc.GradCAM(model, layer="target")(images, targets=2, normalize=False)
    np.testing.assert_allclose(full, numpy_resize(expected, (16, 16)), rtol=1e-5, atol=1e-6)


def test_scorecam_on_vit_tokens_uses_the_grid():
    model = tiny_vit()
    images = np.random.default_rng(3).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    n = to_host(hand_vit(model, ops.convert_to_tensor(images))[0])[:, 1:].reshape(2, 4, 4, 8).astype(np.float64)
    got = kc.ScoreCAM(model, layer="target", verbose=0)(images, targets=0, upsample=False, normalize=False)
    probs = keras.Sequential([model, keras.layers.Softmax()])
    np.testing.assert_allclose(got, _hand_scorecam(probs, images, n, 0), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# Bad input


def test_wrong_rank_names_the_layout(signals):
    cam = kc.GradCAM(conv1d_model(), layer="target")
    with pytest.raises(ValueError, match=r"one example, a signal \(T, C\), or a batch of them .*\(1, 3, 32, 2\)"):
        cam(signals[None])
    with pytest.raises(ValueError, match=r"takes \(N,\) \+ \(6, 8, 8, 1\): its channels is 3, the model's is 1"):
        kc.GradCAM(conv3d_model(), layer="target")(np.zeros((2, 6, 8, 8, 3), np.float32))


def test_named_layer_that_is_no_feature_map_is_rejected_before_tracing():
    model = conv1d_model()
    gap = model.layers[-2].name
    with pytest.raises(ValueError) as err:
        kc.GradCAM(model, layer=gap)
    message = str(err.value)
    assert f"{gap!r} outputs shape (None, 4)" in message and "not a feature map" in message
    assert "'after'" in message  # the nearest feature-map layer
    # A 2-D model: the Dense output, with the nearest convolutions named.
    vit = tiny_vit()
    with pytest.raises(ValueError, match=r"'logits' outputs shape \(None, 3\).*nearest layers that are: \['patches'\]"):
        kc.GradCAM(vit, layer="logits")


def test_token_layer_without_a_grid_names_reshape():
    keras.utils.set_random_seed(7)
    x = keras.Input((16, 16, 3))
    t = keras.layers.Reshape((35, 2))(keras.layers.Dense(70)(keras.layers.Flatten()(x)))
    n = keras.layers.Dense(4, name="tokens")(t)  # 35 tokens: no patch grid of a square image
    model = keras.Model(x, keras.layers.Dense(CLASSES)(keras.layers.Flatten()(n)))
    with pytest.raises(ValueError, match=r"'tokens' outputs shape \(None, 35, 4\).*pass `reshape=\(h, w\)`"):
        kc.GradCAM(model, layer="tokens")
    # With the grid given, it explains.
    maps = kc.GradCAM(model, layer="tokens", reshape=(5, 7))(np.ones((1, 16, 16, 3), np.float32), upsample=False)
    assert maps.shape == (1, 5, 7)
    with pytest.raises(TypeError, match="`reshape` must be None"):
        kc.GradCAM(model, layer="tokens", reshape=(4, "6"))

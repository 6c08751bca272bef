"""The many-pass, attribution, FullGrad and guided methods against numpy, on the suite's backend.

One tiny network (valid convolutions, a batch normalization, ReLU layers, global
average pooling, a Dense softmax head) gets fixed numpy weights, so it is the same
function on TensorFlow, JAX and PyTorch. Everything the methods compute is then
computed again here in float64 numpy from those weights: the forward pass, the
backward pass written out by hand (transposed convolutions; the guided rule
``dz = [z > 0] ReLU(dy)`` for Guided Backpropagation), the bilinear resize with
half-pixel centres, and the noise from :func:`keras_cam.random.normal_numpy`.
Nothing here calls keras-cam's own computation, nor the backend's gradients.

Run the suite with ``KERAS_BACKEND=jax`` or ``torch`` and the same file proves the
methods there; no test starts another process.
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend
from keras_cam._compat import keras, to_host
from keras_cam.random import normal_numpy

N, S, C, K1, K = 3, 9, 2, 3, 4      # images, input side, input channels, conv1 and target channels
CLASSES = 3
DEAD = 1                            # a target channel that is zero everywhere
EPS = 1e-3                          # the batch normalization's epsilon (the default of both Kerases)
L = keras.layers


def weights():
    rng = np.random.default_rng(7)
    w = {
        "k1": rng.normal(0, 0.5, (3, 3, C, K1)), "b1": rng.normal(0, 0.3, K1),
        "gamma": rng.uniform(0.5, 1.5, K1), "beta": rng.normal(0, 0.3, K1),
        "mean": rng.normal(0, 0.2, K1), "var": rng.uniform(0.5, 2.0, K1),
        "k2": rng.normal(0, 0.5, (3, 3, K1, K)), "b2": rng.normal(0, 0.3, K),
        "w": rng.normal(0, 2.0, (K, CLASSES)), "c": rng.normal(0, 0.1, CLASSES),
    }
    w["k2"][..., DEAD], w["b2"][DEAD] = 0.0, -1.0  # ReLU(-1) everywhere: a dead channel
    return w


W = weights()


@pytest.fixture(scope="module")
def model():
    inp = keras.Input((S, S, C))
    x = L.Conv2D(K1, 3, name="c1")(inp)
    x = L.BatchNormalization(epsilon=EPS, name="bn")(x)
    x = L.ReLU(name="r1")(x)
    x = L.Conv2D(K, 3, name="c2")(x)
    x = L.ReLU(name="target")(x)
    x = L.GlobalAveragePooling2D()(x)
    m = keras.Model(inp, L.Dense(CLASSES, activation="softmax", name="head")(x))
    f32 = {k: v.astype(np.float32) for k, v in W.items()}
    m.get_layer("c1").set_weights([f32["k1"], f32["b1"]])
    m.get_layer("bn").set_weights([f32["gamma"], f32["beta"], f32["mean"], f32["var"]])
    m.get_layer("c2").set_weights([f32["k2"], f32["b2"]])
    m.get_layer("head").set_weights([f32["w"], f32["c"]])
    return m


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(-1, 1, (N, S, S, C)).astype(np.float32)


# ----------------------------------------------------------------------------- numpy network

def conv(x, k):
    """Valid convolution ``(n, h, w, c) * (3, 3, c, o)``."""
    h, w = x.shape[1] - k.shape[0] + 1, x.shape[2] - k.shape[1] + 1
    out = np.zeros((len(x), h, w, k.shape[3]))
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            out += np.einsum("nhwc,co->nhwo", x[:, i:i + h, j:j + w], k[i, j])
    return out


def conv_back(dz, k, shape):
    """The gradient with respect to the input of :func:`conv` (a transposed convolution)."""
    dx = np.zeros(shape)
    h, w = dz.shape[1:3]
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            dx[:, i:i + h, j:j + w] += np.einsum("nhwo,co->nhwc", dz, k[i, j])
    return dx


BN_SCALE = W["gamma"] / np.sqrt(W["var"] + EPS)
BN_BIAS = W["beta"] - W["mean"] * BN_SCALE


def forward(x):
    x = np.asarray(x, np.float64)
    f = {"x": x, "z1": conv(x, W["k1"]) + W["b1"]}
    f["u"] = f["z1"] * BN_SCALE + BN_BIAS
    f["z2"] = conv(np.maximum(f["u"], 0), W["k2"]) + W["b2"]
    f["a"] = np.maximum(f["z2"], 0)
    f["logits"] = f["a"].mean(axis=(1, 2)) @ W["w"] + W["c"]
    return f


def logits(x):
    return forward(x)["logits"]


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def backward(f, classes, guided=False):
    """``dS/d`` every tensor of :func:`forward`, ``S`` the logit of ``classes``; with ``guided``
    each ReLU passes ``[z > 0] ReLU(dy)``."""
    def relu_back(z, dy):
        return (z > 0) * (np.maximum(dy, 0) if guided else dy)

    n = len(f["x"])
    g = {"a": np.broadcast_to(W["w"][:, classes].T[:, None, None, :] / 25.0, f["a"].shape)}
    g["z2"] = relu_back(f["z2"], g["a"])
    g["u"] = relu_back(f["u"], conv_back(g["z2"], W["k2"], (n,) + f["u"].shape[1:]))
    g["z1"] = g["u"] * BN_SCALE
    g["x"] = conv_back(g["z1"], W["k1"], f["x"].shape)
    return g


def input_gradient(x, classes, guided=False):
    return backward(forward(x), classes, guided)["x"]


def resize(m, size):
    """Bilinear resize of ``(n, h, w)`` with half-pixel centres, clamped at the edges."""
    for axis, out in ((1, size[0]), (2, size[1])):
        n_in = m.shape[axis]
        src = np.clip((np.arange(out) + 0.5) * n_in / out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        t = (src - lo).reshape((-1, 1) if axis == 1 else (1, -1))
        m = np.take(m, lo, axis=axis) * (1 - t) + np.take(m, hi, axis=axis) * t
    return m


def minmax(m):
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def top1(x):
    return logits(x).argmax(axis=1)


def assert_close(got, want, rtol=1e-4):
    want = np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max()), 1e-12)
    err = float(np.abs(np.asarray(got, np.float64) - want).max())
    assert err <= rtol * scale, f"max error {err:.3g} against a largest value {scale:.3g}"


def test_the_numpy_network_is_the_model(model, images):
    np.testing.assert_allclose(to_host(model(images)), softmax(logits(images)),
                               rtol=1e-5, atol=1e-6)
    a = forward(images)["a"]
    assert (a[..., DEAD] == 0).all()
    assert (np.ptp(a, axis=(1, 2)) > 0).sum() == 7  # the live (image, channel) pairs
    assert len(set(top1(images))) > 1  # the images do not all explain one class


# ----------------------------------------------------------------------------- Score-CAM family

def score_cam(x, classes, vary=lambda m, k, r: m, repeats=1, weighting="reference", max_channels=None):
    """Score-CAM from its definition: one masked forward pass per (image, channel, repeat)."""
    f = forward(x)
    maps = []
    for n in range(len(x)):
        a, c = f["a"][n], classes[n]
        live = [k for k in range(K) if np.ptp(a[..., k]) > 0]
        if max_channels is not None:
            live = sorted(live, key=lambda k: -a[..., k].var())[:max_channels]
        w = np.zeros(K)
        for k in live:
            mask = minmax(resize(a[None, ..., k], (S, S))[0])
            values = []
            for r in range(repeats):
                z = logits(x[n:n + 1] * vary(mask, k, r)[None, :, :, None])[0]
                values.append(softmax(z)[c] if weighting == "reference" else z[c])
            w[k] = np.mean(values)
        if weighting == "paper" and live:
            w[live] = softmax(w[live])
        maps.append(np.maximum((a * w).sum(-1), 0))
    return np.stack(maps)


@pytest.mark.parametrize("weighting, max_channels", [("reference", None), ("paper", 2)])
def test_scorecam(model, images, weighting, max_channels):
    # 7 live (image, channel) pairs in passes of 4: a full pass and a remainder.
    cam = kc.ScoreCAM(model, "target", batch_size=4, weighting=weighting, max_channels=max_channels)
    classes = np.array([2, 0, 1])
    got = cam(images, targets=classes, upsample=False, normalize=False)
    want = score_cam(images, classes, weighting=weighting, max_channels=max_channels)
    assert want.max() > 0
    assert_close(got, want)
    cam(images[::-1].copy(), targets=classes, upsample=False, normalize=False)  # the same signature
    assert cam.tracing_count == (0 if backend.name() == "torch" else 1)  # PyTorch runs eagerly


def test_iscam(model, images):
    steps = 3
    got = kc.ISCAM(model, "target", steps=steps, batch_size=4)(images, upsample=False, normalize=False)
    want = score_cam(images, top1(images), vary=lambda m, k, r: (r + 1) / steps * m, repeats=steps)
    assert_close(got, want)


def test_sscam(model, images):
    samples, noise, seed = 2, 0.3, 11

    def vary(m, k, r):
        return m + noise * normal_numpy(seed, [k * samples + r], m.shape)[0].astype(np.float32)

    cam = kc.SSCAM(model, "target", samples=samples, noise=noise, seed=seed, batch_size=5)
    got = cam(images, targets=1, upsample=False, normalize=False)
    want = score_cam(images, [1] * N, vary=vary, repeats=samples)
    assert want.max() > 0
    assert_close(got, want)


def test_ablationcam(model, images):
    f = forward(images)
    classes = top1(images)
    maps = []
    for n in range(N):
        a, c = f["a"][n], classes[n]
        y = f["logits"][n, c]
        w = np.zeros(K)
        for k in range(K):
            if (a[..., k] != 0).any():
                ablated = a.copy()
                ablated[..., k] = 0
                w[k] = (y - (ablated.mean(axis=(0, 1)) @ W["w"] + W["c"])[c]) / max(abs(y), 1e-7)
        maps.append(np.maximum((a * w).sum(-1), 0))
    want = np.stack(maps)
    cam = kc.AblationCAM(model, "target", batch_size=4)
    assert_close(cam(images, upsample=False, normalize=False), want)
    assert_close(cam(images[2], upsample=False, normalize=False), want[2])


# ----------------------------------------------------------------------------- input attributions

def test_saliency(model, images):
    classes = np.array([0, 2, 1])
    want = np.abs(input_gradient(images, classes)).max(axis=-1)
    assert_close(kc.Saliency(model)(images, targets=classes, normalize=False), want)


def test_smoothgrad(model, images):
    samples, noise, seed = 3, 0.2, 5
    classes = top1(images)
    maps = []
    for n in range(N):
        sigma = np.float32(noise) * (images[n].max() - images[n].min())
        noisy = np.stack([images[n] + sigma * normal_numpy(seed, [j], images.shape[1:])[0].astype(np.float32)
                          for j in range(samples)])
        g = input_gradient(noisy, np.full(samples, classes[n]))
        maps.append(np.abs(g.mean(axis=0)).max(axis=-1))
    cam = kc.SmoothGrad(model, samples=samples, noise=noise, seed=seed, batch_size=4)
    assert_close(cam(images, normalize=False), np.stack(maps))


def test_integrated_gradients(model, images):
    steps = 5
    classes = np.array([1, 1, 2])
    path = [input_gradient((j + 0.5) / steps * images, classes) for j in range(steps)]
    want = images * np.mean(path, axis=0)
    ig = kc.IntegratedGradients(model, steps=steps, batch_size=4)
    got = ig(images, targets=classes, normalize=False)
    assert got.shape == images.shape
    assert_close(got, want)


# ----------------------------------------------------------------------------- FullGrad and the guided methods

def channel_sum(parts):
    """``sum_k minmax(P^k)`` over each channel's positions, per image."""
    return np.stack([sum(minmax(p[..., k]) for k in range(p.shape[-1])) for p in parts])


def test_fullgrad(model, images):
    f = forward(images)
    classes = top1(images)
    g = backward(f, classes)
    want = channel_sum(np.abs(images * g["x"]))
    for grad, bias in ((g["z1"], W["b1"]), (g["u"], BN_BIAS), (g["z2"], W["b2"])):
        want = want + resize(channel_sum(np.abs(grad * bias)), (S, S))
    assert_close(kc.FullGrad(model)(images, normalize=False), want)


def test_guided_backprop(model, images):
    classes = np.array([2, 1, 0])
    want = input_gradient(images, classes, guided=True)
    assert np.abs(want - input_gradient(images, classes)).max() > 0  # the guided rule changes something
    got = kc.GuidedBackprop(model)(images, targets=classes)
    assert got.shape == images.shape
    assert_close(got, want)


def test_guided_gradcam(model, images):
    classes = top1(images)
    f = forward(images)
    cam = np.maximum((f["a"] * (W["w"][:, classes].T / 25.0)[:, None, None, :]).sum(-1), 0)
    cam = np.stack([minmax(m) for m in resize(cam, (S, S))])
    want = input_gradient(images, classes, guided=True) * cam[..., None]
    assert_close(kc.GuidedGradCAM(model, "target")(images), want)


def test_gradient_image():
    g = np.random.default_rng(3).normal(size=(2, 4, 5, 3)).astype(np.float32)
    g[1] = 0.0
    got = kc.gradient_image(g, contrast=0.2)
    one = g[0].astype(np.float64)
    want = np.clip(0.5 + 0.2 * (one - one.mean()) / one.std(), 0, 1)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[1], np.full((4, 5, 3), 0.5, np.float32))

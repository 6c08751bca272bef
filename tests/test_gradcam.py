"""Grad-CAM and Grad-CAM++ against an independent computation.

The reference recomputes the target activation ``A`` and the logits with
explicit ``keras.ops`` from the layers' weights (no keras_cam code, no layer
interception), takes ``dS/dA`` with the backend's own autodiff (``native_grad``:
``tf.GradientTape``, ``jax.grad``, ``torch.autograd.grad``, never keras-cam's
``backend.tapped_gradients``), and applies the papers' formulas and the resize
in numpy. The same file runs on every backend.
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend
from keras_cam._compat import keras, ops, to_host

H = W = 16
CLASSES = 5


def build(head="fused", sequential=False):
    """conv1 -> target conv -> after conv -> flatten -> dense (-> softmax)."""
    dense_act = "softmax" if head == "fused" else None
    layers = [
        keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
        keras.layers.Conv2D(6, 3, activation="relu", name="target"),
        keras.layers.Conv2D(3, 3, activation="relu", name="after"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(CLASSES, activation=dense_act, name="dense"),
    ]
    if head == "activation":
        layers.append(keras.layers.Activation("softmax", name="probs"))
    if sequential:
        return keras.Sequential([keras.Input((H, W, 3))] + layers)
    x = inp = keras.Input((H, W, 3))
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x)


# ----------------------------------------------------------------------------- backend-neutral references
# (also used by the other test files)

def native_grad(fn, *xs):
    """``d sum(fn(*xs)) / dx`` for each ``x`` (numpy), by the backend's own autodiff on ``fn`` in ``keras.ops``.

    ``tf.GradientTape`` on TensorFlow, ``jax.grad`` on JAX, ``torch.autograd.grad`` on PyTorch: a
    second code path, independent of keras-cam's interception and ``backend.tapped_gradients``.
    One array for one input, a list for several.
    """
    xs = [np.asarray(x, np.float32) for x in xs]
    name = backend.name()
    if name == "jax":
        import jax
        grads = jax.grad(lambda vs: ops.sum(fn(*vs)))([ops.convert_to_tensor(x) for x in xs])
        grads = [np.asarray(g) for g in grads]
    elif name == "torch":
        import torch
        vs = [torch.tensor(x, requires_grad=True) for x in xs]
        grads = [g.detach().cpu().numpy() for g in torch.autograd.grad(ops.sum(fn(*vs)), vs)]
    else:
        import tensorflow as tf  # the TensorFlow backend's autodiff
        vs = [tf.constant(x) for x in xs]
        with tf.GradientTape() as tape:
            tape.watch(vs)
            s = ops.sum(fn(*vs))
        grads = [g.numpy() for g in tape.gradient(s, vs)]
    return grads[0] if len(xs) == 1 else grads


def traces(n):
    """The tracing count after ``n`` compiled signatures: one ``tf.function`` trace (TensorFlow) or
    ``jax.jit`` trace (JAX) each; PyTorch runs eagerly and reports none."""
    return 0 if backend.name() == "torch" else n


def first_call_traces():
    """The tracing count after an explainer's first call with class targets: 0 where that call runs
    eagerly (TensorFlow; PyTorch never traces), 1 on JAX, which compiles from the first call."""
    return 1 if backend.name() == "jax" else 0


def resize_np(m, size, method="bilinear"):
    """Resize ``(n, h, w)`` maps with half-pixel centres (``tf.image.resize``'s convention), in numpy.

    Bilinear: output ``i`` reads the input at ``(i + 0.5) in / out - 0.5``, clamped to the edges;
    nearest: input ``floor((i + 0.5) in / out)``.
    """
    m = np.asarray(m, np.float64)
    for axis, out in ((1, size[0]), (2, size[1])):
        n_in = m.shape[axis]
        if method == "nearest":
            m = np.take(m, np.minimum(np.floor((np.arange(out) + 0.5) * n_in / out).astype(int), n_in - 1), axis=axis)
            continue
        src = np.clip((np.arange(out) + 0.5) * n_in / out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        t = (src - lo).reshape([-1 if a == axis else 1 for a in range(1, m.ndim)])
        m = np.take(m, lo, axis=axis) * (1 - t) + np.take(m, hi, axis=axis) * t
    return m


def minmax_np(m):
    """Per-map min-max scaling over all axes but the first; a constant map becomes zeros."""
    axes = tuple(range(1, m.ndim))
    lo, hi = m.min(axis=axes, keepdims=True), m.max(axis=axes, keepdims=True)
    return np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1), 0)


def tensors(layer):
    """A layer's weights as tensors of the backend (numpy and torch tensors do not mix)."""
    return [ops.convert_to_tensor(np.asarray(w, np.float32)) for w in layer.get_weights()]


def conv(x, layer, padding="valid", strides=1):
    """ReLU(conv(x) + b) with the layer's weights, in keras.ops."""
    kernel, bias = tensors(layer)
    return ops.relu(ops.conv(x, kernel, strides, padding) + bias)


def reference(model, x, targets=None, method="gradcam", probability=False):
    """(raw maps at the layer's resolution, final maps) computed from the definitions."""
    x = ops.convert_to_tensor(np.asarray(x, np.float32))
    a = to_host(conv(conv(x, model.get_layer("conv1")), model.get_layer("target")))
    kernel, bias = tensors(model.get_layer("dense"))

    def logits_of(a):
        return ops.matmul(ops.reshape(conv(a, model.get_layer("after")), (a.shape[0], -1)), kernel) + bias

    logits = to_host(logits_of(ops.convert_to_tensor(a)))
    idx = np.argmax(logits, axis=1) if targets is None else np.broadcast_to(targets, (x.shape[0],))
    onehot = np.eye(logits.shape[1], dtype=np.float32)[idx]

    def score(a):
        z = logits_of(a)
        return (ops.softmax(z) if probability else z) * ops.convert_to_tensor(onehot)

    g = native_grad(score, a).astype(np.float64)
    a = a.astype(np.float64)
    if method == "gradcam":
        w = g.mean(axis=(1, 2))
    else:
        g2, g3 = g**2, g**3
        denom = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
        alpha = np.where(denom != 0, g2 / np.where(denom != 0, denom, 1), 0)
        w = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    raw = np.maximum(np.einsum("nhwk,nk->nhw", a, w), 0)
    return raw, minmax_np(resize_np(raw, (H, W)))


def assert_maps_close(actual, expected, rtol=1e-5):
    scale = max(np.abs(expected).max(), 1e-12)
    np.testing.assert_array_less(np.abs(actual - expected).max(), rtol * scale + 1e-12)


METHODS = {"gradcam": kc.GradCAM, "gradcampp": kc.GradCAMPlusPlus}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((4, H, W, 3), dtype=np.float32)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("head,sequential", [("fused", False), ("activation", False), ("logits", False), ("fused", True)])
def test_matches_definition(method, head, sequential, images):
    model = build(head, sequential)
    cam = METHODS[method](model, layer="target")
    raw_ref, final_ref = reference(model, images, method=method)
    assert raw_ref.max() > 0, "the reference map is all zeros: the test would not discriminate"
    assert_maps_close(cam(images, upsample=False, normalize=False), raw_ref)
    maps = cam(images)
    assert maps.shape == (len(images), H, W) and maps.dtype == np.float32
    assert_maps_close(maps, final_ref)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_per_image_targets(method, images):
    model = build("fused")
    cam = METHODS[method](model, layer="target")
    targets = [0, 3, 1, 4]
    expected = np.stack([reference(model, images[i:i + 1], t, method)[1][0] for i, t in enumerate(targets)])
    result = cam.explain(images, targets=targets)
    assert_maps_close(result.maps, expected)
    np.testing.assert_array_equal(result.targets, targets)
    # The same class for all: an int.
    assert_maps_close(cam(images, targets=2), reference(model, images, 2, method)[1])


def test_probability_gradients_are_a_different_map(images):
    """linearize=False differentiates the softmax output; the default the logit."""
    model = build("fused")
    logit_maps = kc.GradCAM(model, layer="target")(images, upsample=False, normalize=False)
    prob_maps = kc.GradCAM(model, layer="target", linearize=False)(images, upsample=False, normalize=False)
    assert_maps_close(prob_maps, reference(model, images, method="gradcam", probability=True)[0])
    assert not np.allclose(logit_maps, prob_maps, rtol=1e-3)


def test_cam_identity_for_gap_dense_head(images):
    """With GAP + Dense, dS/dA^k_ij = W[k, c] / (h w): Grad-CAM weights are the Dense weights."""
    inp = keras.Input((H, W, 3))
    a = keras.layers.Conv2D(8, 3, activation="relu", name="target")(inp)
    out = keras.layers.Dense(CLASSES, activation="softmax")(keras.layers.GlobalAveragePooling2D()(a))
    model = keras.Model(inp, out)
    kernel = model.layers[-1].get_weights()[0]
    acts = to_host(conv(ops.convert_to_tensor(images), model.get_layer("target")))
    h, w = acts.shape[1:3]
    for c in range(CLASSES):
        expected = np.maximum(np.einsum("nhwk,k->nhw", acts, kernel[:, c] / (h * w)), 0)
        assert_maps_close(kc.GradCAM(model)(images, targets=c, upsample=False, normalize=False), expected)
    # The weight function alone, on the exact gradient of the identity.
    grads = np.broadcast_to(kernel[:, 1] / (h * w), acts.shape).astype(np.float32)
    np.testing.assert_allclose(kc.GradCAM.channel_weights(acts, grads), np.tile(kernel[:, 1] / (h * w), (len(images), 1)), rtol=1e-6)


def test_gradcampp_weights_by_hand():
    """One channel, two pixels: alpha = g^2 / (2 g^2 + (sum A) g^3), by hand."""
    a = np.array([[[[1.0]], [[3.0]]]], np.float32)       # (1, 2, 1, 1): A = [1, 3]
    g = np.array([[[[0.5]], [[-2.0]]]], np.float32)      # g = [0.5, -2]
    # pixel 1: 0.25 / (0.5 + 4 * 0.125) = 0.25; ReLU(g) = 0.5 -> 0.125
    # pixel 2: ReLU(g) = 0 -> 0;   w = 0.125
    np.testing.assert_allclose(kc.GradCAMPlusPlus.channel_weights(a, g), [[0.125]], rtol=1e-6)
    # A zero denominator gives alpha = 0, not NaN.
    zero = np.zeros_like(g)
    np.testing.assert_array_equal(kc.GradCAMPlusPlus.channel_weights(a, zero), [[0.0]])


def test_callable_target_is_a_second_path_to_the_same_map(images):
    model = build("fused")
    cam = kc.GradCAM(model, layer="target")
    assert_maps_close(cam(images, targets=lambda out: out[:, 3]), cam(images, targets=3))


def test_single_sigmoid_unit_reads_as_two_classes(images):
    inp = keras.Input((H, W, 3))
    a = keras.layers.Conv2D(6, 3, activation="relu", name="target")(inp)
    z = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(a))
    model = keras.Model(inp, z)
    cam = kc.GradCAM(model)
    raw = dict(upsample=False, normalize=False)
    assert_maps_close(cam(images, targets=1, **raw), cam(images, targets=lambda out: out[:, 0], **raw))
    assert_maps_close(cam(images, targets=0, **raw), cam(images, targets=lambda out: -out[:, 0], **raw))
    p = model.predict(images, verbose=0)[:, 0]
    result = cam.explain(images)
    np.testing.assert_array_equal(result.targets, (p > 0.5).astype(int))
    np.testing.assert_allclose(result.probabilities, np.maximum(p, 1 - p), rtol=1e-5)


def test_batch_equals_single_calls(images):
    model = build("fused")
    for cls in METHODS.values():
        cam = cls(model, layer="target")
        together = cam(images)
        alone = np.stack([cam(image) for image in images])
        assert_maps_close(together, alone)
        assert_maps_close(cls(model, layer="target", batch_size=3)(images), together)


def test_model_is_left_unchanged(images):
    model = build("fused")
    before_out = model.predict(images, verbose=0)
    before_weights = [w.copy() for w in model.get_weights()]
    dense = model.get_layer("dense")
    activation = dense.activation
    for cls in METHODS.values():
        cls(model)(images)
    np.testing.assert_array_equal(model.predict(images, verbose=0), before_out)
    for w0, w1 in zip(before_weights, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    assert dense.activation is activation
    assert all("call" not in layer.__dict__ for layer in model.layers)
    np.testing.assert_allclose(before_out.sum(axis=1), 1.0, rtol=1e-5)  # still a softmax model


def test_traced_once_and_no_memory_growth(images):
    model = build("fused")
    cam = kc.GradCAM(model, layer="target")
    one = images[:1]
    for _ in range(20):  # warm up allocator pools
        cam(one)
    rss0 = _rss_mb()
    for _ in range(200):
        cam(one)
    growth = _rss_mb() - rss0
    assert cam.tracing_count == traces(1)
    assert growth < 25, f"memory grew by {growth:.1f} MB over 200 calls"


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_constant_map_is_zeros_not_nan(images):
    inp = keras.Input((H, W, 3))
    dead = keras.layers.Conv2D(4, 3, activation="relu", bias_initializer=keras.initializers.Constant(-1e3), name="dead")(inp)
    out = keras.layers.Dense(3)(keras.layers.Flatten()(dead))
    maps = kc.GradCAM(keras.Model(inp, out), layer="dead")(images)
    assert np.isfinite(maps).all() and (maps == 0).all()
    # minmax on its own: constant and all-zero maps, and a rounding-level ripple.
    m = np.stack([np.zeros((3, 3)), np.full((3, 3), 5.0), 5 + 1e-9 * np.eye(3)]).astype(np.float32)
    assert (to_host(kc.base.minmax(ops.convert_to_tensor(m))) == 0).all()


def test_auto_layer_skips_pooling_and_one_pixel_maps():
    inp = keras.Input((H, W, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(x)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    x = keras.layers.Activation("relu", name="c2_relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="gap")(x)
    x = keras.layers.Conv2D(3, 1, name="classifier")(x)
    out = keras.layers.Flatten()(x)
    cam = kc.GradCAM(keras.Model(inp, out))
    assert cam.layer_path == "c2_relu"


def test_unknown_layer_lists_close_names():
    with pytest.raises(ValueError, match=r"No layer 'targt'.*Closest names: \['target'"):
        kc.GradCAM(build("fused"), layer="targt")


def test_an_input_layer_is_refused_by_name_as_an_input():
    """The model's InputLayer exists (``get_layer`` finds it) but holds the images: the error says so,
    rather than that no such layer exists."""
    model = build("fused")
    name = next(l.name for l in model.layers if type(l).__name__ == "InputLayer")
    assert model.get_layer(name) is not None
    with pytest.raises(ValueError, match=rf"Layer '{name}' is an input of model .*InputLayer.*Saliency"):
        kc.GradCAM(model, layer=name)


def test_layer_object_and_foreign_layer():
    model = build("fused")
    assert kc.GradCAM(model, layer=model.get_layer("after")).layer_path == "after"
    with pytest.raises(ValueError, match="not part of model"):
        kc.GradCAM(model, layer=build("fused").get_layer("after"))


def test_list_layers_reports_shapes():
    listed = dict(kc.list_layers(build("fused")))
    assert listed["target"] == (1, 12, 12, 6)
    assert listed["dense"] == (1, CLASSES)


def test_bad_targets_are_explained(images):
    cam = kc.GradCAM(build("fused"), layer="target")
    with pytest.raises(ValueError, match="4 images"):
        cam(images, targets=[1, 2])
    with pytest.raises(ValueError, match="out of range.*5 classes"):
        cam(images, targets=7)
    with pytest.raises(ValueError, match=">= 0"):
        cam(images, targets=-1)
    with pytest.raises(ValueError, match="one score per image"):
        cam(images, targets=lambda out: out)

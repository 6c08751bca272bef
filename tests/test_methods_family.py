"""CAM, Layer-CAM, Eigen-CAM, counterfactual Grad-CAM, the smoothing options and
the guided maps, each against an independent computation.

The references recompute activations and logits with explicit ``keras.ops``
from the layers' weights (no keras_cam code, no interception), take their own
gradients with the backend's autodiff (``native_grad``, never keras-cam's
gradient path), and apply the definitions in numpy.
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam._compat import keras, ops, to_host
from test_gradcam import native_grad, resize_np
from keras_cam.methods.activation import CAM, EigenCAM
from keras_cam.methods.gradient import LayerCAM
from keras_cam.methods.guided import GuidedBackprop, GuidedGradCAM, gradient_image

H = W = 16
CLASSES = 4


def tensor(x):
    return ops.convert_to_tensor(np.asarray(x, np.float32))


def conv(x, layer, relu=True, padding="valid"):
    kernel, bias = (tensor(w) for w in layer.get_weights())
    z = ops.conv(x, kernel, 1, padding) + bias
    return ops.relu(z) if relu else z


def upsample_np(maps, size=(H, W)):
    return resize_np(maps, size)


def minmax_np(m):
    lo, hi = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
    return np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1), 0)


def assert_close(actual, expected, rtol=1e-5):
    scale = max(np.abs(expected).max(), 1e-12)
    np.testing.assert_array_less(np.abs(np.asarray(actual) - expected).max(), rtol * scale + 1e-12)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((3, H, W, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def gap_model():
    """conv1 -> pool -> conv2 (target) -> GAP -> dropout -> dense softmax."""
    inp = keras.Input((H, W, 3))
    x = keras.layers.Conv2D(5, 3, activation="relu", name="conv1")(inp)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(x)
    x = keras.layers.Dropout(0.5)(keras.layers.GlobalAveragePooling2D(name="gap")(x))
    return keras.Model(inp, keras.layers.Dense(CLASSES, activation="softmax", name="dense")(x))


def gap_reference(model, x):
    """(a1, a2, logits, grad) as numpy, a1 = conv1, a2 = conv2; ``grad(name, classes)`` is
    ``dS/da1`` or ``dS/da2`` (S: the logit of each image's class)."""
    kernel, bias = (tensor(w) for w in model.get_layer("dense").get_weights())

    def to_a2(a1):
        return conv(ops.max_pool(a1, 2, 2, "valid"), model.get_layer("conv2"))

    def head(a2):
        return ops.matmul(ops.mean(a2, axis=(1, 2)), kernel) + bias

    a1 = to_host(conv(tensor(x), model.get_layer("conv1")))
    a2 = to_host(to_a2(tensor(a1)))
    logits = to_host(head(tensor(a2)))

    def grad(name, classes):
        onehot = tensor(np.eye(CLASSES)[np.broadcast_to(classes, (len(x),))])
        if name == "conv1":
            return native_grad(lambda a: head(to_a2(a)) * onehot, a1)
        return native_grad(lambda a: head(a) * onehot, a2)
    return a1, a2, logits, grad


# ---------------------------------------------------------------- CAM


def test_cam_is_the_dense_weighted_sum_and_gradcam_up_to_scale(gap_model, images):
    _, a2, logits, _ = gap_reference(gap_model, images)
    kernel = gap_model.get_layer("dense").get_weights()[0]
    cam = CAM(gap_model)
    assert cam.layer_path == "conv2"
    top = logits.argmax(axis=1)
    for targets, cls in ((None, top), (2, np.full(3, 2))):
        expected = np.maximum(np.einsum("nhwk,kn->nhw", a2, kernel[:, cls]), 0)
        assert expected.max() > 0
        assert_close(cam(images, targets=targets, upsample=False, normalize=False), expected)
    # Grad-CAM's weights on this head are W[k, c] / (h w): the same map, scaled.
    grad = kc.GradCAM(gap_model)(images, targets=1, upsample=False, normalize=False)
    assert_close(cam(images, targets=1, upsample=False, normalize=False) / (a2.shape[1] * a2.shape[2]), grad)
    assert_close(cam(images, targets=1), kc.GradCAM(gap_model)(images, targets=1))


def test_cam_through_a_nested_model_and_a_sigmoid_unit(images):
    inner_in = keras.Input((H, W, 3))
    base = keras.Model(inner_in, keras.layers.Conv2D(6, 3, activation="relu", name="feat")(inner_in), name="base")
    inp = keras.Input((H, W, 3))
    z = keras.layers.Dense(1, activation="sigmoid", name="unit")(keras.layers.GlobalAveragePooling2D()(base(inp)))
    model = keras.Model(inp, z)
    cam = CAM(model)
    assert cam.layer_path == "base/feat"
    a = to_host(conv(tensor(images), base.get_layer("feat")))
    w = model.get_layer("unit").get_weights()[0][:, 0]
    assert_close(cam(images, targets=1, upsample=False, normalize=False), np.maximum(np.einsum("nhwk,k->nhw", a, w), 0))
    assert_close(cam(images, targets=0, upsample=False, normalize=False), np.maximum(np.einsum("nhwk,k->nhw", a, -w), 0))


def test_cam_fully_convolutional_channel_per_class(images):
    inp = keras.Input((H, W, 3))
    a = keras.layers.Conv2D(CLASSES, 3, name="classes")(inp)
    out = keras.layers.Activation("softmax")(keras.layers.GlobalAveragePooling2D()(a))
    model = keras.Model(inp, out)
    acts = to_host(conv(tensor(images), model.get_layer("classes"), relu=False))
    assert_close(CAM(model)(images, targets=3, upsample=False, normalize=False), np.maximum(acts[..., 3], 0))


def test_cam_other_heads_point_to_gradcam(gap_model):
    inp = keras.Input((H, W, 3))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, name="c")(inp))
    flat = keras.Model(inp, keras.layers.Dense(CLASSES)(x))
    with pytest.raises(ValueError, match="GradCAM"):
        CAM(flat)
    with pytest.raises(ValueError, match="GradCAM"):
        CAM(gap_model, layer="conv1")          # conv1 feeds pooling, not GAP
    with pytest.raises(ValueError, match="callable"):
        CAM(gap_model)(np.zeros((1, H, W, 3), np.float32), targets=lambda out: out[:, 0])


# ---------------------------------------------------------------- Layer-CAM


def layercam_reference(model, x, layers, cls):
    a1, a2, logits, grad = gap_reference(model, x)
    out = {}
    for name, a in (("conv1", a1), ("conv2", a2)):
        if name in layers:
            g = grad(name, cls)
            out[name] = np.maximum((np.maximum(g, 0) * a).sum(-1), 0)
    return out, logits.argmax(axis=1)


def test_layercam_by_definition_on_a_shallow_layer(gap_model, images):
    refs, top = layercam_reference(gap_model, images, ["conv1", "conv2"], np.full(3, 1))
    assert refs["conv1"].max() > 0
    assert_close(LayerCAM(gap_model, layer="conv1")(images, targets=1, upsample=False, normalize=False), refs["conv1"])
    deep = LayerCAM(gap_model)(images, targets=1, upsample=False, normalize=False)
    assert_close(deep, refs["conv2"])


def test_layercam_fuses_layers(gap_model, images):
    refs, top = layercam_reference(gap_model, images, ["conv1", "conv2"], np.full(3, 0))
    size = refs["conv1"].shape[1:3]
    scaled = [upsample_np(np.tanh(2.0 * m / m.max(axis=(1, 2), keepdims=True)), size) for m in refs.values()]
    expected = np.maximum(*scaled)
    fused = LayerCAM(gap_model, layers=["conv2", "conv1"])
    assert fused.layer_paths == ["conv2", "conv1"]
    assert_close(fused(images, targets=0, upsample=False, normalize=False), expected)
    assert_close(fused(images, targets=0), minmax_np(upsample_np(expected)))
    with pytest.raises(ValueError, match="not both"):
        LayerCAM(gap_model, layer="conv1", layers=["conv2"])
    with pytest.raises(TypeError, match="list"):
        LayerCAM(gap_model, layers="conv1")


# ---------------------------------------------------------------- Eigen-CAM, eigen_smooth


def first_component(x):
    """numpy: projection on the first principal axis, sign agreeing with the channel sum."""
    n, h, w, k = x.shape
    out = np.zeros((n, h, w))
    for i in range(n):
        flat = x[i].reshape(-1, k).astype(np.float64)
        centred = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        if np.corrcoef(proj, flat.mean(axis=1))[0, 1] < 0:
            proj = -proj
        out[i] = proj.reshape(h, w)
    return out


def test_eigencam_is_the_first_principal_component(gap_model, images):
    _, a2, _, _ = gap_reference(gap_model, images)
    expected = np.maximum(first_component(a2), 0)
    eigen = EigenCAM(gap_model)
    assert_close(eigen(images, upsample=False, normalize=False), expected, rtol=1e-4)
    # class-agnostic
    np.testing.assert_allclose(eigen(images, targets=0), eigen(images, targets=3), atol=1e-6)
    with pytest.raises(ValueError, match="eigen_smooth"):
        EigenCAM(gap_model, eigen_smooth=True)


def test_eigen_smooth_is_the_component_of_the_weighted_channels(gap_model, images):
    _, a2, logits, grad = gap_reference(gap_model, images)
    g = grad("conv2", 2)
    weighted = a2 * g.mean(axis=(1, 2))[:, None, None, :]
    expected = np.maximum(first_component(weighted), 0)
    smooth = kc.GradCAM(gap_model, eigen_smooth=True)(images, targets=2, upsample=False, normalize=False)
    assert_close(smooth, expected, rtol=1e-4)


# ---------------------------------------------------------------- counterfactual


def test_counterfactual_negates_the_gradient(gap_model, images):
    # Dense weights of both signs, drawn by numpy (the same on every backend), so that some
    # position has evidence against a class; restored afterwards (a module fixture).
    dense = gap_model.get_layer("dense")
    saved = dense.get_weights()
    dense.set_weights([np.random.default_rng(5).normal(0, 1, saved[0].shape).astype(np.float32), saved[1]])
    try:
        _check_counterfactual(gap_model, images)
    finally:
        dense.set_weights(saved)


def _check_counterfactual(gap_model, images):
    _, a2, logits, grad = gap_reference(gap_model, images)
    negative = 0
    for c in range(CLASSES):
        g = grad("conv2", c)
        pre = np.einsum("nhwk,nk->nhw", a2, g.mean(axis=(1, 2)))
        against = kc.GradCAM(gap_model, counterfactual=True)(images, targets=c, upsample=False, normalize=False)
        negative += np.maximum(-pre, 0).max() > 0
        assert_close(against, np.maximum(-pre, 0))
        assert_close(kc.GradCAM(gap_model)(images, targets=c, upsample=False, normalize=False), np.maximum(pre, 0))
    assert negative > 0  # some counterfactual map is not all zeros


# ---------------------------------------------------------------- aug_smooth


def shift_np(x, dy, dx, mode):
    pads = [(0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))] + [(0, 0)] * (x.ndim - 3)
    p = np.pad(x, pads, mode="symmetric" if mode == "edge" else "constant")
    return p[:, max(-dy, 0):max(-dy, 0) + x.shape[1], max(-dx, 0):max(-dx, 0) + x.shape[2]]


def test_aug_smooth_averages_the_untransformed_maps(gap_model, images):
    plain = kc.GradCAM(gap_model)
    cls = plain.explain(images).targets
    d = 1  # 16 px / 32, at least one pixel
    total, count = 0, 0
    for flip in (False, True):
        for dy, dx in ((0, 0), (d, d), (-d, -d)):
            x = shift_np(images[:, :, ::-1] if flip else images, dy, dx, "edge")
            m = shift_np(plain(x, targets=cls, normalize=False), -dy, -dx, "zeros")
            seen = shift_np(np.ones_like(m), -dy, -dx, "zeros")
            if flip:
                m, seen = m[:, :, ::-1], seen[:, :, ::-1]
            total, count = total + m, count + seen
    smooth = kc.GradCAM(gap_model, aug_smooth=True)
    result = smooth.explain(images, normalize=False)
    assert_close(result.maps, total / count)
    np.testing.assert_array_equal(result.targets, cls)
    assert_close(smooth(images), minmax_np(total / count))
    with pytest.raises(ValueError, match="upsample=True"):
        smooth(images, upsample=False)


# ---------------------------------------------------------------- guided


@pytest.fixture(scope="module")
def relu_model():
    """Every kind of ReLU: a ReLU layer, Activation("relu"), relu fused into a Dense."""
    inp = keras.Input((8, 8, 2))
    x = keras.layers.ReLU(name="relu1")(keras.layers.Conv2D(3, 3, name="c1")(inp))
    x = keras.layers.Activation("relu", name="act2")(keras.layers.Conv2D(4, 3, name="c2")(x))
    x = keras.layers.Dense(6, activation="relu", name="d3")(keras.layers.Flatten()(x))
    return keras.Model(inp, keras.layers.Dense(CLASSES, activation="softmax", name="out")(x))


def guided_reference(model, x, cls):
    """Guided backprop by hand: each ReLU passes ReLU(upstream) where its input was > 0."""
    w3, b3 = model.get_layer("d3").get_weights()
    w4, _ = model.get_layer("out").get_weights()
    c1, c2 = model.get_layer("c1"), model.get_layer("c2")
    z1 = to_host(conv(tensor(x), c1, relu=False))
    h1 = np.maximum(z1, 0)
    z2 = to_host(conv(tensor(h1), c2, relu=False))
    h2 = np.maximum(z2, 0)
    z3 = h2.reshape(len(x), -1) @ w3 + b3
    d_z3 = np.maximum(w4[:, cls].T, 0) * (z3 > 0)
    d_z2 = np.maximum((d_z3 @ w3.T).reshape(h2.shape), 0) * (z2 > 0)
    # The convolutions' transposes: d sum(conv(h) * d) / dh, the backend's autodiff of a linear map.
    d_h1 = native_grad(lambda h: conv(h, c2, relu=False) * tensor(d_z2), h1)
    d_z1 = np.maximum(d_h1, 0) * (z1 > 0)
    return native_grad(lambda v: conv(v, c1, relu=False) * tensor(d_z1), x), h2


def test_guided_backprop_by_hand_and_the_model_is_untouched(relu_model):
    x = np.random.default_rng(2).uniform(-1, 1, (3, 8, 8, 2)).astype(np.float32)
    act = relu_model.get_layer("act2").activation

    def plain_gradient():
        return native_grad(lambda v: relu_model(v)[:, 1], x)

    def attributes():
        return [(vars(layer).get("activation"), vars(layer).get("call")) for layer in relu_model.layers]

    before, attrs = plain_gradient(), attributes()
    guided = GuidedBackprop(relu_model)
    result = guided(x, targets=1)
    expected, _ = guided_reference(relu_model, x, np.full(3, 1))
    assert result.shape == x.shape and np.abs(expected).max() > 0
    assert_close(result, expected)
    assert_close(guided(x[0], targets=1), expected[0])
    # The user's model keeps its ordinary gradients and its layers.
    np.testing.assert_array_equal(plain_gradient(), before)
    assert not np.allclose(before, result)
    assert relu_model.get_layer("act2").activation is act
    assert all(a is b and c is d for (a, c), (b, d) in zip(attributes(), attrs))


def test_guided_gradcam_is_guided_gradients_times_gradcam(relu_model):
    x = np.random.default_rng(3).uniform(-1, 1, (2, 8, 8, 2)).astype(np.float32)
    guided, _ = guided_reference(relu_model, x, np.full(2, 2))
    # Grad-CAM at act2 with ordinary gradients
    w3, b3 = (tensor(w) for w in relu_model.get_layer("d3").get_weights())
    w4, b4 = (tensor(w) for w in relu_model.get_layer("out").get_weights())
    h1 = ops.relu(conv(tensor(x), relu_model.get_layer("c1"), relu=False))
    h2 = to_host(conv(h1, relu_model.get_layer("c2")))
    g = native_grad(lambda h: (ops.matmul(ops.relu(ops.matmul(ops.reshape(h, (2, -1)), w3) + b3), w4) + b4)[:, 2], h2)
    cam = np.maximum(np.einsum("nhwk,nk->nhw", h2, g.mean(axis=(1, 2))), 0)
    expected = guided * minmax_np(upsample_np(cam, (8, 8)))[..., None]
    assert np.abs(expected).max() > 0
    assert_close(GuidedGradCAM(relu_model, layer="act2")(x, targets=2), expected)


def test_gradient_image_by_hand():
    g = np.array([[[1.0], [-1.0]], [[1.0], [-1.0]]], np.float32)   # mean 0, std 1
    np.testing.assert_allclose(gradient_image(g)[..., 0], [[0.65, 0.35], [0.65, 0.35]], rtol=1e-6)
    np.testing.assert_allclose(gradient_image(g, contrast=1.0)[..., 0], [[1.0, 0.0], [1.0, 0.0]])
    assert np.all(gradient_image(np.zeros((2, 3, 3, 3))) == 0.5)
    with pytest.raises(ValueError, match="shape"):
        gradient_image(np.zeros((3, 3)))

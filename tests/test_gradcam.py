"""Grad-CAM and Grad-CAM++ against an independent computation.

The reference recomputes the target activation ``A`` and the logits with
explicit TensorFlow ops from the layers' weights (no keras_cam code, no layer
interception), takes ``dS/dA`` with its own tape, and applies the papers'
formulas in numpy.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_cam as kc
from keras_cam._compat import keras

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


def conv(x, layer):
    kernel, bias = layer.get_weights()
    return tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "VALID") + bias)


def reference(model, x, targets=None, method="gradcam", probability=False):
    """(raw maps at the layer's resolution, final maps) computed from the definitions."""
    x = tf.constant(x)
    a = conv(conv(x, model.get_layer("conv1")), model.get_layer("target"))
    kernel, bias = model.get_layer("dense").get_weights()
    with tf.GradientTape() as tape:
        tape.watch(a)
        flat = tf.reshape(conv(a, model.get_layer("after")), (x.shape[0], -1))
        logits = flat @ kernel + bias
        scores = tf.nn.softmax(logits) if probability else logits
        idx = np.argmax(logits.numpy(), axis=1) if targets is None else np.broadcast_to(targets, (x.shape[0],))
        s = tf.reduce_sum(tf.gather(scores, idx, batch_dims=1))
    g = tape.gradient(s, a).numpy().astype(np.float64)
    a = a.numpy().astype(np.float64)
    if method == "gradcam":
        w = g.mean(axis=(1, 2))
    else:
        g2, g3 = g**2, g**3
        denom = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
        alpha = np.where(denom != 0, g2 / np.where(denom != 0, denom, 1), 0)
        w = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    raw = np.maximum(np.einsum("nhwk,nk->nhw", a, w), 0)
    up = tf.image.resize(raw[..., None].astype(np.float32), (H, W), "bilinear")[..., 0].numpy()
    lo = up.min(axis=(1, 2), keepdims=True)
    hi = up.max(axis=(1, 2), keepdims=True)
    final = np.where(hi > lo, (up - lo) / np.where(hi > lo, hi - lo, 1), 0)
    return raw, final


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
    acts = conv(tf.constant(images), model.get_layer("target")).numpy()
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
    assert cam.tracing_count == 1
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
    assert (kc.base.minmax(tf.constant(m)).numpy() == 0).all()


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

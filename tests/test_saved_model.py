"""SavedModel and TF-Hub: explaining ops inside a frozen graph.

The tests save their own small Keras models (no downloads), reload them the
ways users do, and compare every map with Grad-CAM computed by hand on the
original Keras model (same weights): ``A`` is a layer's output, ``S`` the
logit of the explained class, ``w = mean dS/dA``, ``map = ReLU(sum_k w_k A^k)``.

TensorFlow by nature: frozen SavedModel graphs run only on the TensorFlow backend.
On JAX and PyTorch, explaining one is a clear error naming ``KERAS_BACKEND=tensorflow``
(tests/test_hardening.py, ``test_saved_model_off_tensorflow_names_the_backend``).
"""

import gc
import re
import warnings
import weakref

import numpy as np
import pytest
import tensorflow as tf

import keras_cam as kc
from keras_cam import layers as L
from keras_cam._compat import LEGACY, keras
from keras_cam.saved_model import FrozenModel, GraphOp

pytestmark = pytest.mark.tensorflow_only

H = 16


def classifier(spatial=(H, H)):
    """conv c1 -> BatchNorm -> conv c2 -> GAP -> dense softmax, with non-trivial BN statistics."""
    keras.utils.set_random_seed(5)
    inp = keras.Input(spatial + (3,))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head")(x))
    rng = np.random.default_rng(0)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4),
                                       rng.uniform(0.5, 2, 4)])
    return model


def save(model, path):
    """``model.export`` under Keras 3 (the `serve` endpoint), ``tf.saved_model.save`` under tf-keras."""
    if LEGACY:
        tf.saved_model.save(model, str(path))
    else:
        model.export(str(path), verbose=False)
    return str(path)


def reference(model, layer, x, targets=None):
    """Grad-CAM by hand on the Keras model: ``(maps, classes, logits)``."""
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    features = keras.Model(model.inputs, model.get_layer(layer).output)
    rest = keras.Model(model.get_layer(layer).output, model.get_layer("gap").output) if layer != "c2" else None
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        a = features(x)
        tape.watch(a)
        pooled = rest(a) if rest is not None else tf.reduce_mean(a, axis=(1, 2))
        logits = pooled @ kernel + bias
        idx = tf.argmax(logits, -1, output_type=tf.int32) if targets is None else tf.constant(targets)
        s = tf.gather(logits, idx, batch_dims=1)
    w = tf.reduce_mean(tape.gradient(s, a), axis=(1, 2))
    return tf.nn.relu(tf.einsum("nhwk,nk->nhw", a, w)).numpy(), idx.numpy(), logits.numpy()


def assert_maps_equal(actual, expected, tol=1e-5):
    assert np.asarray(expected).max() > 0, "degenerate reference: all-zero maps"
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())


def op_named(model, layer_op):
    """The one candidate op of a Keras layer: "c1/Relu" matches ".../c1/Relu" and ".../c1_1/Relu"."""
    layer, op = layer_op.split("/")
    hits = [p for p, _ in kc.list_layers(model) if re.search(rf"(^|/){layer}(_\d+)?/{op}$", p)]
    assert len(hits) == 1, hits
    return hits[0]


@pytest.fixture(scope="module")
def model():
    return classifier()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    return save(model, tmp_path_factory.mktemp("sm") / "classifier")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((4, H, H, 3), dtype=np.float32)


# ---------------------------------------------------------------- tf.saved_model.load


def test_loaded_saved_model_is_explained_like_the_keras_model(model, saved, images):
    loaded = tf.saved_model.load(saved)
    cam = kc.GradCAM(loaded)
    assert isinstance(cam.model, FrozenModel) and cam.model.source is loaded
    assert cam.layer_path.endswith("c2/Relu") or cam.layer_path.endswith("c2_1/Relu")
    assert cam.graph.output_activation == "softmax"

    ref, classes, logits = reference(model, "c2", images)
    out = cam.explain(images, upsample=False, normalize=False)
    assert_maps_equal(out.maps, ref)
    np.testing.assert_array_equal(out.targets, classes)
    # The Softmax op was bypassed: scores are logits; probabilities are the model's.
    np.testing.assert_allclose(out.scores, logits[np.arange(4), classes], rtol=1e-5, atol=1e-6)
    probs = model(images).numpy()[np.arange(4), classes]
    np.testing.assert_allclose(out.probabilities, probs, rtol=1e-5, atol=1e-6)
    # Explaining again at the same shape (and options) does not retrace.
    traced = cam.tracing_count
    cam(images)
    cam(images[::-1] * 0.5)
    assert cam.tracing_count == traced + 1


def test_an_inner_op_by_name_and_other_classes(model, saved, images):
    loaded = tf.saved_model.load(saved)
    name = op_named(loaded, "c1/Relu")
    cam = kc.GradCAM(loaded, layer=name)
    assert isinstance(cam.layer, GraphOp)
    ref, _, _ = reference(model, "c1", images, targets=[2, 0, 1, 2])
    assert_maps_equal(cam(images, targets=[2, 0, 1, 2], upsample=False, normalize=False), ref)
    # A unique tail of the op name resolves too; an unknown name lists close ones.
    assert kc.GradCAM(loaded, layer="/".join(name.split("/")[-2:])).layer is cam.layer
    with pytest.raises(ValueError, match="Closest names"):
        kc.GradCAM(loaded, layer=name + "_typo")


def test_list_layers_shows_the_ops_with_their_shapes(model, saved):
    loaded = tf.saved_model.load(saved)
    listed = dict(kc.list_layers(loaded))
    assert listed[op_named(loaded, "c1/Relu")] == (1, H, H, 4)
    assert listed[op_named(loaded, "c2/Relu")] == (1, H, H, 6)
    assert all(len(shape) == 4 for shape in listed.values())  # only spatial ops are candidates
    paths = list(listed)
    assert paths.index(op_named(loaded, "c1/Relu")) < paths.index(op_named(loaded, "c2/Relu"))


def test_not_linearized_explains_the_probability(model, saved, images):
    loaded = tf.saved_model.load(saved)
    out = kc.GradCAM(loaded, linearize=False).explain(images, upsample=False, normalize=False)
    ref = kc.GradCAM(model, layer="c2", linearize=False).explain(images, upsample=False, normalize=False)
    np.testing.assert_allclose(out.scores, model(images).numpy().max(axis=1), rtol=1e-5, atol=1e-7)
    assert_maps_equal(out.maps, ref.maps)


def test_signature_of_tf_saved_model_save(model, images, tmp_path):
    """`tf.saved_model.save` of a Keras model: a `serving_default` signature returning a dict."""
    path = str(tmp_path / "sig")
    tf.saved_model.save(model, path)
    loaded = tf.saved_model.load(path)
    cam = kc.GradCAM(loaded)
    assert "serving_default" in cam.model.endpoint or "serve" in cam.model.endpoint
    ref, classes, _ = reference(model, "c2", images)
    out = cam.explain(images, upsample=False, normalize=False)
    assert_maps_equal(out.maps, ref)
    np.testing.assert_array_equal(out.targets, classes)


def test_unknown_spatial_size(images, tmp_path):
    """A fully convolutional SavedModel (None x None input) explained at two sizes."""
    fcn = classifier(spatial=(None, None))
    loaded = tf.saved_model.load(save(fcn, tmp_path / "fcn"))
    cam = kc.GradCAM(loaded)  # the layer is chosen at the first call
    for size in (H, 24):
        x = np.resize(images, (2, size, size, 3)).astype("float32")
        ref, _, _ = reference(fcn, "c2", x)
        assert_maps_equal(cam(x, upsample=False, normalize=False), ref)
    assert dict(kc.list_layers(loaded, sample=np.zeros((1, 24, 24, 3), "float32")))[cam.layer_path] == (1, 24, 24, 6)


# ---------------------------------------------------------------- inside a Keras model


def wrapper(path):
    """The SavedModel as a Keras layer: hub.KerasLayer (tf-keras) or TFSMLayer (Keras 3)."""
    if LEGACY:
        import tensorflow_hub as hub
        return hub.KerasLayer(path, trainable=False)
    return keras.layers.TFSMLayer(path, call_endpoint="serve")


def test_saved_classifier_as_a_layer(model, saved, images):
    layer = wrapper(saved)
    outer = keras.Sequential([keras.Input((H, H, 3)), layer])
    cam = kc.GradCAM(outer)
    assert cam.layer_path.startswith(layer.name + "/") and cam.layer_path.endswith("/Relu")
    assert cam.graph.output_activation == "softmax"  # the Softmax op inside the SavedModel
    ref, classes, logits = reference(model, "c2", images)
    out = cam.explain(images, upsample=False, normalize=False)
    assert_maps_equal(out.maps, ref)
    np.testing.assert_allclose(out.scores, logits[np.arange(4), classes], rtol=1e-5, atol=1e-6)
    assert "call" not in vars(layer)  # the interception is undone
    np.testing.assert_allclose(outer(images), model(images), rtol=1e-5, atol=1e-6)


def test_saved_feature_extractor_with_a_keras_head(model, images, tmp_path):
    """The TF-Hub recipe: a feature-vector SavedModel, then a Dense head trained in Keras."""
    features = keras.Model(model.input, model.get_layer("gap").output)
    layer = wrapper(save(features, tmp_path / "features"))
    keras.utils.set_random_seed(6)
    head = keras.layers.Dense(5, activation="softmax")
    inp = keras.Input((H, H, 3))
    outer = keras.Model(inp, head(layer(inp)))
    kernel, bias = head.get_weights()
    c2 = keras.Model(model.inputs, model.get_layer("c2").output)

    x = tf.constant(images)
    with tf.GradientTape() as tape:
        a = c2(x)
        tape.watch(a)
        logits = tf.reduce_mean(a, axis=(1, 2)) @ kernel + bias
        s = tf.gather(logits, tf.argmax(logits, -1, output_type=tf.int32), batch_dims=1)
    w = tf.reduce_mean(tape.gradient(s, a), axis=(1, 2))
    ref = tf.nn.relu(tf.einsum("nhwk,nk->nhw", a, w)).numpy()

    cam = kc.GradCAM(outer)
    assert cam.graph.output_activation == "softmax" and cam.graph.head is head
    assert_maps_equal(cam(images, upsample=False, normalize=False), ref)
    c1 = op_named(outer, "c1/Relu")
    assert c1.startswith(layer.name + "/")
    assert isinstance(L.resolve(outer, c1)[1], GraphOp)


def test_a_function_with_two_inputs_is_refused(tmp_path):
    class TwoInputs(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 3]), tf.TensorSpec([None, 4, 4, 3])])
        def serve(self, a, b):
            return tf.reduce_mean(a + b, axis=(1, 2))

    tf.saved_model.save(TwoInputs(), str(tmp_path / "two"))
    with pytest.raises(ValueError, match="no function of one image tensor"):
        kc.GradCAM(tf.saved_model.load(str(tmp_path / "two")))


def test_swish_custom_gradient_is_differentiated(images, tmp_path):
    """tf.nn.silu's custom gradient is not in a loaded graph: the explainer differentiates its ops."""
    keras.utils.set_random_seed(7)
    inp = keras.Input((H, H, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="swish", name="c2")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head")(x))
    loaded = tf.saved_model.load(save(model, tmp_path / "swish"))
    cam = kc.GradCAM(loaded)
    assert re.search(r"(^|/)c2(_1)?/mul(_1)?$", cam.layer_path)  # x * sigmoid(x)
    ref, _, _ = reference(model, "c2", images)
    assert_maps_equal(cam(images, upsample=False, normalize=False), ref)


def test_frozen_model_is_released_with_its_explainer(saved, images):
    def explain_once():  # in a function: its frame (and anything that looked at it) is gone after
        loaded = tf.saved_model.load(saved)
        cam = kc.GradCAM(loaded)
        assert kc.GradCAM(loaded).model is cam.model  # frozen once while in use
        cam(images)
        return weakref.ref(cam.model)

    frozen = explain_once()
    gc.collect()
    assert frozen() is None


def test_raw_pixel_warning_sees_a_rescaling_inside_a_saved_model(images, tmp_path):
    keras.layers.Rescaling(1.0)  # so the layer's name is numbered, as in a session: "rescaling_1_1/mul"
    inp = keras.Input((H, H, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(keras.layers.Rescaling(1 / 255)(inp))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    rescaling = tf.saved_model.load(save(model, tmp_path / "rescaling"))
    pixels = np.round(images * 255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kc.GradCAM(rescaling)(pixels)
    with pytest.warns(UserWarning, match="raw 0-255 pixels"):
        kc.GradCAM(tf.saved_model.load(save(classifier(), tmp_path / "plain")))(pixels)

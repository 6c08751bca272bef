"""Reaching any layer: nested models, EfficientNet, subclassed models, flatten_model, defaults.

Every map is compared with Grad-CAM computed by hand in this file on the same
weights without nesting: the backbone run by itself (a flat model) and the
head applied from its weights (``A -> S``, ``w = mean dS/dA``,
``map = ReLU(sum_k w_k A^k)``).

The gradient ``dS/dA`` of the hand-applied head is the backend's own autodiff
(``native_grad``), never keras-cam's.

EfficientNet tests run the explainer's function eagerly on TensorFlow
(``tf.config.run_functions_eagerly``): it is the same Python code, and
tracing an EfficientNet takes ten times longer than running it once; the
compiled path is exercised on the small nested models. (Each EfficientNet
explainer is called once, and a signature's first call runs op by op on
every backend anyway.)
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend
from keras_cam import layers as L
from keras_cam._compat import LEGACY, keras, keras_of, ops, producer, to_host
from test_gradcam import first_call_traces, native_grad, traces

S = 64  # EfficientNet input size: its top_activation is 2x2


# ---------------------------------------------------------------- helpers


def gradcam_reference(features, head, x, targets=None):
    """Grad-CAM by hand: ``(maps, classes, logits)`` for ``head(features(x))``."""
    a = to_host(features(ops.convert_to_tensor(np.asarray(x, np.float32))))
    logits = to_host(head(ops.convert_to_tensor(a)))
    idx = np.argmax(logits, axis=-1) if targets is None else np.asarray(targets)
    onehot = ops.convert_to_tensor(np.eye(logits.shape[-1], dtype=np.float32)[idx])
    g = native_grad(lambda a: head(a) * onehot, a)
    w = g.mean(axis=(1, 2))
    maps = np.maximum(np.einsum("nhwk,nk->nhw", a, w), 0)
    return maps, idx, logits


def dense_head(dense, bn=None):
    """GAP -> (BatchNorm in inference) -> Dense logits, from the layers' weights."""
    kernel, bias = (ops.convert_to_tensor(np.asarray(w, np.float32)) for w in dense.get_weights())

    def head(a):
        p = ops.mean(a, axis=(1, 2))
        if bn is not None:
            gamma, beta, mean, var = (np.asarray(w, np.float32) for w in bn.get_weights())
            scale = ops.convert_to_tensor(gamma / np.sqrt(var + bn.epsilon))
            p = (p - ops.convert_to_tensor(mean)) * scale + ops.convert_to_tensor(beta)
        return ops.matmul(p, kernel) + bias
    return head


def assert_maps_equal(actual, expected, tol=1e-5):
    expected = np.asarray(expected)
    assert expected.max() > 0, "degenerate reference: all-zero maps"
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())


def explain_raw(model, x, layer=None, **kw):
    cam = kc.GradCAM(model, layer=layer)
    return cam, cam.explain(x, upsample=False, normalize=False, **kw)


def untouched(model):
    """No layer of ``model`` keeps an instance ``call`` (the interception is undone)."""
    return all("call" not in vars(layer) for _, layer in L.walk(model))


@pytest.fixture
def eager():
    if backend.name() != "tensorflow":
        yield  # JAX and PyTorch: nothing to switch (JAX compiles, PyTorch runs eagerly)
        return
    import tensorflow as tf
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.fixture(scope="module")
def b0():
    return keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(S, S, 3))


@pytest.fixture(scope="module")
def photos():
    return np.random.default_rng(3).uniform(0, 255, size=(2, S, S, 3)).astype("float32")


# ---------------------------------------------------------------- EfficientNet nested as one layer


def test_efficientnet_in_a_never_called_sequential_and_in_a_functional_model(b0, photos, eager):
    keras.utils.set_random_seed(1)
    gap, dense = keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5, activation="softmax")
    seq = keras.Sequential([b0, gap, dense])  # never called, no Input
    inp = keras.Input((S, S, 3))
    fun = keras.Model(inp, dense(gap(b0(inp, training=False))))

    ref, classes, logits = gradcam_reference(lambda x: b0(x, training=False), dense_head(dense), photos)
    for model in (seq, fun):
        cam, out = explain_raw(model, photos)
        assert cam.layer_path == "efficientnetb0/top_activation"
        assert_maps_equal(out.maps, ref)
        np.testing.assert_array_equal(out.targets, classes)
        np.testing.assert_allclose(out.scores, logits[np.arange(2), classes], rtol=1e-4, atol=1e-5)
        assert untouched(model)


def test_efficientnet_with_batchnorm_and_dropout_head_and_flatten_model(b0, photos, eager):
    keras.utils.set_random_seed(2)
    inp = keras.Input((S, S, 3))
    bn = keras.layers.BatchNormalization()
    dense = keras.layers.Dense(4, activation="softmax")
    x = keras.layers.GlobalAveragePooling2D()(b0(inp, training=False))
    model = keras.Model(inp, dense(keras.layers.Dropout(0.3)(bn(x))))
    # Non-trivial BatchNorm statistics, so an ignored or train-mode BN would show.
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 2, 1280), rng.normal(size=1280), rng.normal(size=1280),
                    rng.uniform(0.5, 2, 1280)])
    ref, classes, _ = gradcam_reference(lambda x: b0(x, training=False), dense_head(dense, bn), photos)

    cam, out = explain_raw(model, photos)
    assert cam.layer_path == "efficientnetb0/top_activation"
    assert_maps_equal(out.maps, ref)
    np.testing.assert_array_equal(out.targets, classes)

    flat = kc.flatten_model(model)
    assert flat.get_layer("top_activation") is b0.get_layer("top_activation")
    np.testing.assert_allclose(to_host(flat(photos, training=False)), to_host(model(photos, training=False)),
                               rtol=1e-5, atol=1e-6)
    cam_flat, out_flat = explain_raw(flat, photos)
    assert cam_flat.layer_path == "top_activation"
    assert_maps_equal(out_flat.maps, ref)


@pytest.mark.tensorflow_only  # the efficientnet package builds with tf.keras
def test_efficientnet_package_colab_recipe(photos, eager):
    import efficientnet.tfkeras as efn  # in the test extras
    keras.utils.set_random_seed(3)
    base = efn.EfficientNetB0(weights=None, include_top=False, input_shape=(S, S, 3))
    # efficientnet.tfkeras builds with tf.keras: tf-keras under TF_USE_LEGACY_KERAS=1, Keras 3 otherwise.
    assert keras_of(base) is keras
    gap, dense = keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")
    seq = keras.Sequential([base, gap, dense])
    x = photos / 127.5 - 1.0
    ref, classes, _ = gradcam_reference(lambda t: base(t, training=False), dense_head(dense), x)

    cam, out = explain_raw(seq, x)
    assert cam.layer_path == f"{base.name}/top_activation"
    assert_maps_equal(out.maps, ref)
    np.testing.assert_array_equal(out.targets, classes)
    flat = keras.Model(base.input, dense(gap(base.output)))  # the other Colab recipe
    cam_flat, out_flat = explain_raw(flat, x)
    assert cam_flat.layer_path == "top_activation"
    assert_maps_equal(out_flat.maps, ref)


def test_efficientnet_two_levels_down_after_preprocessing(b0):
    """Where layer=None lands and how names resolve (the maps: the small two-level test below)."""
    inner_in = keras.Input((S, S, 3))
    backbone = keras.Model(inner_in, b0(inner_in), name="backbone")
    model = keras.Sequential([keras.Input((S, S, 3)), keras.layers.Rescaling(2.0), backbone,
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    assert kc.GradCAM(model).layer_path == "backbone/efficientnetb0/top_activation"
    # the same layer by its path, a tail of the path, and its bare name
    for name in ("backbone/efficientnetb0/top_activation", "efficientnetb0/top_activation", "top_activation"):
        assert kc.GradCAM(model, layer=name).layer is b0.get_layer("top_activation")


# ---------------------------------------------------------------- small nested models (compiled)


def small_backbone(name, size=12, prefix=None):
    prefix = prefix or name
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name=f"{prefix}_c1")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name=f"{prefix}_c2")(x)
    return keras.Model(inp, x, name=name)


def test_auto_layer_looks_through_two_levels_after_normalization(rng):
    inner = small_backbone("inner")
    mid_in = keras.Input((12, 12, 3))
    mid = keras.Model(mid_in, inner(keras.layers.Conv2D(3, 1, name="mid_mix")(mid_in)), name="mid")
    norm = keras.layers.Normalization(mean=[0.5, 0.4, 0.3], variance=[0.04, 0.09, 0.01])
    dense = keras.layers.Dense(4, activation="softmax")
    model = keras.Sequential([keras.Input((12, 12, 3)), norm, mid, keras.layers.GlobalAveragePooling2D(), dense])
    x = rng.random((4, 12, 12, 3)).astype("float32")

    mix = mid.get_layer("mid_mix")
    ref, classes, _ = gradcam_reference(lambda t: inner(mix(norm(t))), dense_head(dense), x)
    cam, out = explain_raw(model, x)
    assert cam.layer_path == "mid/inner/inner_c2"  # no table entry: found by the probe
    assert_maps_equal(out.maps, ref)
    np.testing.assert_array_equal(out.targets, classes)
    assert cam.tracing_count == first_call_traces()  # eager on TensorFlow, compiled on JAX
    assert_maps_equal(cam.explain(x, upsample=False, normalize=False).maps, ref)  # the compiled call
    assert cam.tracing_count == traces(1)
    paths = [p for p, _ in kc.list_layers(model)]
    assert paths.index("mid/mid_mix") < paths.index("mid/inner/inner_c1") < paths.index("mid/inner/inner_c2")


def test_subclassed_model_works_and_cannot_be_flattened(rng):
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.body = small_backbone("body")
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.out = keras.layers.Dense(3)

        def call(self, x):
            return self.out(self.pool(self.body(x)))

    net = Net()
    x = rng.random((2, 12, 12, 3)).astype("float32")
    net(x)  # builds the head's weights
    ref, _, _ = gradcam_reference(net.body, dense_head(net.out), x)
    for layer in (None, "body/body_c2", "body_c2"):
        cam, out = explain_raw(net, x, layer=layer)
        assert cam.layer_path == "body/body_c2"
        assert_maps_equal(out.maps, ref)
    # an earlier layer, by name, against the same computation by hand
    c1, c2 = net.body.get_layer("body_c1"), net.body.get_layer("body_c2")
    ref1, _, _ = gradcam_reference(c1, lambda a: dense_head(net.out)(c2(a)), x)
    assert_maps_equal(explain_raw(net, x, layer="body_c1")[1].maps, ref1)
    with pytest.raises(TypeError, match="subclassed.*Explain it directly"):
        kc.flatten_model(net)
    with pytest.raises(ValueError, match="No layer 'body_c3'.*body_c2"):
        kc.GradCAM(net, layer="body_c3")


def test_layer_returning_several_tensors_is_refused(rng):
    class Split(keras.layers.Layer):
        def call(self, x):
            return x[..., :2], x[..., 2:]

    inp = keras.Input((6, 6, 3))
    a, b = Split(name="split")(keras.layers.Conv2D(4, 3, padding="same", name="c")(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Concatenate()([a, b]))))
    with pytest.raises(ValueError, match="'split' returns a tuple"):
        kc.GradCAM(model, layer="split")(rng.random((1, 6, 6, 3)).astype("float32"))


# ---------------------------------------------------------------- the automatic choice


def test_auto_layer_skips_what_follows_global_pooling(rng):
    """MobileNetV3's head: GAP(keepdims) -> 1x1 conv -> activation -> 1x1 logits conv."""
    for size in (8, 2):  # at 2x2 input the backbone itself ends 1x1 and must still win
        inp = keras.Input((size, size, 3))
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="early")(inp)
        x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="last_map")(x)
        x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x) if not LEGACY else \
            keras.layers.Reshape((1, 1, 6))(keras.layers.GlobalAveragePooling2D()(x))
        x = keras.layers.Conv2D(5, 1, activation="relu", name="head_conv")(x)
        x = keras.layers.Conv2D(3, 1, name="logits")(x)
        model = keras.Model(inp, keras.layers.Flatten()(x))
        info = L.auto_layer(model, rng.random((1, size, size, 3)).astype("float32"))
        assert info.path == "last_map", (size, info.path)


def test_squeeze_excitation_gate_does_not_stop_the_choice(rng):
    inp = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    se = keras.layers.GlobalAveragePooling2D(name="squeeze")(x)
    se = keras.layers.Reshape((1, 1, 4))(se)
    se = keras.layers.Conv2D(4, 1, activation="sigmoid", name="excite_conv")(se)
    x = keras.layers.Multiply(name="excite")([x, se])
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    infos = {i.path: i for i in L.trace_layers(model, rng.random((1, 6, 6, 3)).astype("float32"))}
    assert infos["excite_conv"].pooled and not infos["excite"].pooled
    assert L.auto_layer(model, rng.random((1, 6, 6, 3)).astype("float32")).path == "excite"


class _ValueBranch(keras.layers.Layer):
    """A layer whose ``call`` branches on a value: an abstract trace cannot run it."""

    def call(self, x):
        return x * 2.0 if float(to_host(ops.max(x))) > 0 else x


class _Probed(keras.Model):
    """A subclassed model (a functional one cannot hold a layer that branches on a value:
    building it runs ``call`` symbolically)."""

    def __init__(self, value_branch):
        super().__init__()
        self.stack = [keras.layers.Conv2D(4, 3, padding="same", name="conv"),
                      keras.layers.Conv2D(5, 3, name="last_map"),
                      keras.layers.GlobalAveragePooling2D(name="pool"),
                      keras.layers.Dense(2, name="head")]
        if value_branch:
            self.stack.insert(1, _ValueBranch(name="branch"))

    def call(self, x):
        for layer in self.stack:
            x = layer(x)
        return x


def _records(infos):
    return [(i.path, i.output_shape, i.pooled, i.calls, i.from_tokens) for i in infos]


@pytest.mark.parametrize("value_branch", [False, True], ids=["traceable", "branches-on-a-value"])
def test_the_probe_of_a_built_model_reads_the_shapes_by_hand(rng, value_branch):
    """Two code paths of ``trace_layers``: an unbuilt model is run for real (the run builds it);
    once built, it goes through the backend's ``run_for_shapes`` (on JAX an abstract trace, and
    a real run where the model branches on a value). Both record the layers and shapes worked
    out by hand, the weights are left as they were, and on JAX the abstract trace compiles
    nothing."""
    model = _Probed(value_branch)
    x = rng.random((1, 8, 8, 3)).astype("float32")
    by_hand = [("conv", (1, 8, 8, 4), False), ("last_map", (1, 6, 6, 5), False),
               ("pool", (1, 5), True), ("head", (1, 2), True)]
    if value_branch:
        by_hand.insert(1, ("branch", (1, 8, 8, 4), False))
    assert not model.built
    assert [r[:3] for r in _records(L.trace_layers(model, x))] == by_hand   # the real run that builds it
    weights = [w.copy() for w in model.get_weights()]
    compiles = []

    def listen(event, secs, **kwargs):
        if event.endswith("backend_compile_duration"):
            compiles.append(event)

    if backend.name() == "jax":
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(listen)
    bigger = rng.random((1, 10, 10, 3)).astype("float32")    # new shapes: nothing compiled before serves them
    try:
        probed = _records(L.trace_layers(model, bigger))
    finally:
        if backend.name() == "jax":
            jax.monitoring.unregister_event_duration_listener(listen)
    grown = {(1, 8, 8, 4): (1, 10, 10, 4), (1, 6, 6, 5): (1, 8, 8, 5)}
    assert probed == [(p, grown.get(shape, shape), pooled, 1, False) for p, shape, pooled in by_hand]
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    if backend.name() == "jax" and not value_branch:
        assert compiles == []
    assert L.auto_layer(model, x).path == "last_map"


def test_keras3_operations_are_layers_too(rng):
    inp = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="branch")(inp)
    y = x + keras.layers.Conv2D(4, 1, name="skip")(inp)  # an op (Keras 3) or a TFOpLambda (tf-keras)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(y)))
    x_ = rng.random((2, 6, 6, 3)).astype("float32")
    cam, out = explain_raw(model, x_)
    assert cam.layer_path not in ("branch", "skip")  # the residual sum comes last
    branch, skip = model.get_layer("branch"), model.get_layer("skip")
    ref, _, _ = gradcam_reference(lambda t: branch(t) + skip(t), dense_head(model.layers[-1]), x_)
    assert_maps_equal(out.maps, ref)


# ---------------------------------------------------------------- flatten_model


def test_flatten_model_shares_layers_and_weights(rng):
    inner = small_backbone("deep")
    mid_in = keras.Input((12, 12, 3))
    mid = keras.Model(mid_in, keras.layers.BatchNormalization(name="mid_bn")(inner(mid_in)), name="mid")
    seq_head = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="cls")],
                                name="seq_head")
    inp = keras.Input((12, 12, 3))
    model = keras.Model(inp, seq_head(mid(inp, training=False)))
    layers_before = [l.name for l in model.layers]
    x = rng.random((3, 12, 12, 3)).astype("float32")

    flat = kc.flatten_model(model)
    assert flat.name == f"{model.name}_flat"
    names = [l.name for l in flat.layers]
    for name in ("deep_c1", "deep_c2", "mid_bn", "cls"):
        assert name in names
    assert not any(L.is_container(l) for l in flat.layers)
    assert {id(w) for w in flat.weights} == {id(w) for w in model.weights}  # shared, not copied
    np.testing.assert_allclose(to_host(flat(x, training=False)), to_host(model(x, training=False)),
                               rtol=1e-6, atol=1e-6)
    # The classic two-output model of a hand-written Grad-CAM, on an inner layer.
    acts, preds = kc.flatten_model(model, outputs=["mid/deep/deep_c2"])(x)
    np.testing.assert_allclose(to_host(acts), to_host(inner(x)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_host(preds), to_host(model(x)), rtol=1e-6, atol=1e-6)
    assert [l.name for l in model.layers] == layers_before
    # The nested call's `training=False` means what it means in the original: tf-keras keeps the
    # BatchNorm inside in inference mode when the model is called in training mode, Keras 3
    # lets the outer `training=True` override it.
    np.testing.assert_allclose(to_host(flat(x, training=True)), to_host(model(x, training=True)),
                               rtol=1e-5, atol=1e-6)
    a = explain_raw(model, x)[1].maps
    b = explain_raw(flat, x)[1].maps
    assert_maps_equal(b, a)


def test_flatten_model_errors():
    seq = keras.Sequential([keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="never built.*input_shape="):
        kc.flatten_model(seq)
    flat = kc.flatten_model(seq, input_shape=(5, 5, 1))
    assert flat.output.shape[-1] == 2
    inp = keras.Input((8, 8, 3))
    a, b = small_backbone("twin_a", 8, prefix="twin"), small_backbone("twin_b", 8, prefix="twin")
    model = keras.Model(inp, keras.layers.Concatenate()([a(inp), b(inp)]))
    with pytest.raises(ValueError, match="share a name"):
        kc.flatten_model(model)
    with pytest.raises(TypeError, match="Keras model"):
        kc.flatten_model(object())


# ---------------------------------------------------------------- per-architecture defaults


def test_default_table_agrees_with_the_probe_on_real_models(b0):
    """Real keras.applications models at their smallest input (a subset: see the README)."""
    A = keras.applications
    cases = [
        (A.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)), "block5_conv3"),
        (A.MobileNetV3Small(weights=None, include_top=True, classes=7, input_shape=(32, 32, 3)), None),
        (b0, "top_activation"),
    ]
    for model, expected in cases:
        path, layer, entry = L.default_layer(model)
        probed = L.auto_layer(model, np.zeros((1,) + tuple(model.input.shape[1:]), "float32"))
        assert layer is probed.layer, (model.name, path, probed.path)
        if expected:
            assert path == expected
        assert kc.GradCAM(model).layer is layer


# The last layers of each family as the real models name them (Keras 3 / tf-keras),
# rebuilt cheaply: (model name, [(layer name, kind)], head). The target is marked "*".
def _families():
    k3 = not LEGACY
    v3_tail = ([("conv_1", "conv"), ("conv_1_bn", "bn"), ("activation_9*", "act")] if k3 else
               [("Conv_1", "conv"), ("Conv_1/BatchNorm", "bn"), ("re_lu_9", "act"), ("multiply_9*", "mul")])
    return [
        ("vgg16", [("block5_conv2", "conv"), ("block5_conv3*", "conv"), ("block5_pool", "pool")]),
        ("vgg19", [("block5_conv3", "conv"), ("block5_conv4*", "conv"), ("block5_pool", "pool")]),
        ("resnet101", [("conv5_block2_out", "act"), ("conv5_block3_3_conv", "conv"), ("conv5_block3_out*", "act")]),
        ("resnet152v2", [("post_bn", "bn"), ("post_relu*", "act")]),
        ("densenet201", [("conv5_block32_concat", "conv"), ("bn", "bn"), ("relu*", "act")]),
        ("mobilenet_1.00_32", [("conv_pw_13", "conv"), ("conv_pw_13_bn", "bn"), ("conv_pw_13_relu*", "act")]),
        ("mobilenetv2_1.00_32", [("Conv_1", "conv"), ("Conv_1_bn", "bn"), ("out_relu*", "act")]),
        ("MobileNetV3Large" if k3 else "MobilenetV3large", v3_tail),
        ("efficientnetb7", [("top_conv", "conv"), ("top_bn", "bn"), ("top_activation*", "act")]),
        ("efficientnetv2-s", [("top_conv", "conv"), ("top_bn", "bn"), ("top_activation*", "act")]),
        ("efficientnet-b3", [("top_conv", "conv"), ("top_bn", "bn"), ("top_activation*", "act")]),
        ("xception", [("block14_sepconv2", "conv"), ("block14_sepconv2_bn", "bn"), ("block14_sepconv2_act*", "act")]),
        ("inception_v3", [("mixed9", "conv"), ("mixed10*", "act")]),
        ("inception_resnet_v2", [("conv_7b", "conv"), ("conv_7b_bn", "bn"), ("conv_7b_ac*", "act")]),
        # The residual sum `x + y` is an op that Keras names itself.
        ("convnext_tiny", [("convnext_tiny_stage_3_block_2_depthwise_conv", "conv"),
                           ("convnext_tiny_stage_3_block_2_identity", "act"), ("*", "add")]),
    ]


def _representative(name, tail):
    inp = keras.Input((6, 6, 3))
    x = skip = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inp)
    target = None
    for layer_name, kind in tail:
        clean = layer_name.rstrip("*")
        if kind == "add":
            x = x + skip
            clean = producer(x).name
        elif kind == "mul":
            x = keras.layers.Multiply(name=clean)([x, x])
        elif kind == "pool":
            x = keras.layers.MaxPooling2D(name=clean)(x)
        else:
            layer = {"conv": lambda: keras.layers.Conv2D(4, 1, name=clean),
                     "bn": lambda: keras.layers.BatchNormalization(name=clean),
                     "act": lambda: keras.layers.Activation("relu", name=clean)}[kind]()
            x = layer(x)
        if layer_name.endswith("*"):
            target = clean
    head = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, head, name=name), target


@pytest.mark.parametrize("name,tail", _families(), ids=[f[0] for f in _families()])
def test_default_table_covers_every_family(name, tail):
    model, target = _representative(name, tail)
    found = L.default_layer(model)
    assert found is not None, f"{name} not recognized"
    path, layer, entry = found
    assert layer.name == target
    assert layer is L.auto_layer(model, np.zeros((1, 6, 6, 3), "float32")).layer
    # Nested as a backbone with a classifier head, the table still applies, through the path.
    outer = keras.Sequential([keras.Input((6, 6, 3)), model])
    assert L.default_layer(outer)[0] == f"{name}/{layer.name}"


def test_table_is_not_used_when_layers_follow_the_backbone(b0):
    inp = keras.Input((S, S, 3))
    x = keras.layers.Conv2D(8, 1, name="extra_conv")(b0(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    assert L.default_layer(model) is None
    assert kc.GradCAM(model).layer_path == "extra_conv"
    renamed = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(2, 3, name="top_activation")],
                               name="vgg16")  # a name alone does not make a VGG16
    assert L.default_layer(renamed) is None

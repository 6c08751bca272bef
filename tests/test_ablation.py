"""Ablation-CAM against an independent implementation written here from the definition.

The reference recomputes the target layer and everything after it from the
layers' weights with plain ``tf.nn`` ops and matmuls in float64 (not the
model), zeroes one channel of the target's output at a time, and forms
``w_k = (y - y^(k)) / max(|y|, 1e-7)``, ``map = ReLU(sum_k w_k A^k)`` in numpy.
It shares no code with ``keras_cam.methods.ablation`` (which streams the
(image, channel) pairs through the model from the target layer on, replaying
the recorded outputs of the layers before it).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_cam as kc
from keras_cam import backend
from keras_cam import graph as G
from keras_cam import layers as L
from keras_cam._compat import LEGACY, keras, ops, to_host
from keras_cam.compiled import Compiled
from keras_cam.methods.ablation import AblationCAM
from test_gradcam import traces
from test_layout import ClassToken

SIZE = 16
CLASSES = 3
DEAD = 1  # a target channel forced to zero everywhere
N = 3


class Counter(keras.layers.Layer):
    """Identity that counts the inputs it sees (how many forward passes ran through it).

    The count lives on the host and is added to by a host callback
    (``backend.host_callback``: ``tf.py_function``, ``jax.debug.callback``, a plain call on
    PyTorch), so it counts the rows that actually run, also inside a compiled call, on every
    backend (a variable assigned inside ``call`` would not be kept by JAX's stateless calls).
    Reset ``count`` to 0 before the run it counts: building a model may run ``call`` on
    placeholder inputs (PyTorch's shape inference does).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "count", 0)

    def _add(self, rows):
        object.__setattr__(self, "count", self.count + rows)

    def call(self, x):
        backend.host_callback(self._add, ops.shape(x)[0])
        return x


class Block(keras.layers.Layer):
    """A custom layer that wraps the target: early conv -> (target conv, skip conv)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.early = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="early")
        self.target = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="target")
        self.skip = keras.layers.Conv2D(4, 1, strides=2, name="skip")

    def call(self, x):
        e = self.early(x)
        return self.target(e), self.skip(e)


def _tail(t, s):
    """The layers after the target: a counter, a conv added to the skip branch, the head."""
    t = Counter(name="post")(t)
    h = keras.layers.Add(name="merge")([keras.layers.Conv2D(4, 3, padding="same", name="late")(t), s])
    h = keras.layers.ReLU(name="merge_relu")(h)
    return keras.layers.Dense(CLASSES, activation="softmax", name="head")(
        keras.layers.GlobalAveragePooling2D(name="gap")(h))


def cnn(kind="flat"):
    """early conv -> target conv (stride 2) -> late conv + 1x1 skip conv of ``early`` -> GAP -> softmax.

    ``kind``: "flat" (one functional model), "nested" (the layers up to the
    target in a sub-model ``backbone``) or "wrapped" (in a custom layer
    ``block``). Counters before and after the target count the passes.
    """
    inp = keras.Input((SIZE, SIZE, 3))
    x = Counter(name="pre")(inp)
    if kind == "flat":
        e = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="early")(x)
        t = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="target")(e)
        s = keras.layers.Conv2D(4, 1, strides=2, name="skip")(e)
    elif kind == "nested":
        b_in = keras.Input((SIZE, SIZE, 3))
        e = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="early")(b_in)
        t = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="target")(e)
        s = keras.layers.Conv2D(4, 1, strides=2, name="skip")(e)
        t, s = keras.Model(b_in, [t, s], name="backbone")(x)
    else:
        t, s = Block(name="block")(x)
    return keras.Model(inp, _tail(t, s), name=kind)


def conv_layers(model):
    """The model's weighted layers by short name, wherever they are nested."""
    return {path.split("/")[-1]: layer for path, layer in L.walk(model) if layer.get_weights()
            and not isinstance(layer, Counter) and not L.is_container(layer)}


@pytest.fixture(scope="module")
def flat():
    keras.utils.set_random_seed(1)
    model = cnn("flat")
    layers = conv_layers(model)
    k, b = layers["target"].get_weights()
    b[DEAD] = -1e3  # ReLU of a large negative number: exactly zero everywhere
    layers["target"].set_weights([k, b])
    w, c = layers["head"].get_weights()
    layers["head"].set_weights([8.0 * w, c])  # classes differ clearly
    return model


def same_weights(model, source):
    layers = conv_layers(model)
    for name, layer in conv_layers(source).items():
        layers[name].set_weights(layer.get_weights())
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(-1, 2, size=(N, SIZE, SIZE, 3)).astype("float32")


# ----------------------------------------------------------------------------- the reference

def _w(model, name):
    return [tf.constant(v.astype(np.float64)) for v in conv_layers(model)[name].get_weights()]


def hand_cnn(model, x):
    """``(A (N, 8, 8, 6), head)``: the target's output from the weights, and
    ``head(copies of one image's A, image index) -> logits``."""
    (ke, be), (kt, bt), (ks, bs) = _w(model, "early"), _w(model, "target"), _w(model, "skip")
    (kl, bl), (wd, bd) = _w(model, "late"), _w(model, "head")
    x = tf.constant(x, tf.float64)
    e = tf.nn.relu(tf.nn.conv2d(x, ke, 1, "SAME") + be)
    a = tf.nn.relu(tf.nn.conv2d(e, kt, 2, "SAME") + bt)
    s = tf.nn.conv2d(e, ks, 2, "VALID") + bs

    def head(copies, n):
        h = tf.nn.relu(tf.nn.conv2d(copies, kl, 1, "SAME") + bl + s[n:n + 1])
        return (tf.reduce_mean(h, axis=(1, 2)) @ wd + bd).numpy()
    return a.numpy(), head


def reference(a, head, classes=None, score=None):
    """``(maps (N, *s), weights (N, K), clean scores)`` by the definition, one channel at a time.

    ``a``: the target's feature maps ``(N, *s, K)``; ``head(copies, n)`` the
    logits of copies of image ``n``'s feature map; ``score(logits)`` the
    explained score (default: the logit of ``classes``, top-1 when None).
    """
    maps, weights, ys = [], [], []
    for n in range(len(a)):
        k_count = a.shape[-1]
        copies = np.repeat(a[n:n + 1], k_count + 1, axis=0)
        for k in range(k_count):
            copies[k + 1, ..., k] = 0.0
        logits = head(tf.constant(copies), n)
        if score is not None:
            s = np.asarray(score(logits), np.float64)
        else:
            c = logits[0].argmax() if classes is None else classes[n]
            s = logits[:, c]
        y, yk = s[0], s[1:]
        w = (y - yk) / max(abs(y), 1e-7)
        maps.append(np.maximum((a[n] * w).sum(-1), 0.0))
        weights.append(w)
        ys.append(y)
    return np.stack(maps), np.stack(weights), np.array(ys)


def assert_close_to_max(actual, expected, rtol=1e-4):
    """Agreement to ``rtol`` relative to each map's largest value."""
    assert np.asarray(actual).shape == np.asarray(expected).shape
    for got, want in zip(actual, expected):
        scale = max(np.abs(want).max(), 1e-12)
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


_CAMS = {}


def cam_of(model, layer="target", **kw):
    """One silent explainer per model and options, shared by the tests (each traces once)."""
    kw.setdefault("verbose", 0)
    key = (id(model), layer, tuple(sorted(kw.items())))
    if key not in _CAMS:
        _CAMS[key] = AblationCAM(model, layer, **kw)
    return _CAMS[key]


# ----------------------------------------------------------------------------- agreement

def test_matches_the_definition_on_a_cnn_with_a_skip_connection(flat, images):
    a, head = hand_cnn(flat, images)
    assert (a[..., DEAD] == 0).all() and (a.reshape(-1, 6) != 0).any(axis=0).sum() == 5
    want, w, y = reference(a, head)
    assert want.max() > 0 and (w[:, DEAD] == 0).all()
    result = cam_of(flat).explain(images, upsample=False, normalize=False)
    assert result.maps.shape == (N, 8, 8)
    assert_close_to_max(result.maps, want)
    np.testing.assert_allclose(result.scores, y, rtol=1e-5)
    # Explicit classes; and the final maps: upsampled bilinearly, min-max scaled.
    classes = [2, 0, 1]
    want, _, _ = reference(a, head, classes=classes)
    up = tf.image.resize(want[..., None], (SIZE, SIZE), method="bilinear").numpy()[..., 0]
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    assert_close_to_max(cam_of(flat)(images, targets=classes), (up - lo) / (hi - lo))


def conv1d_model():
    keras.utils.set_random_seed(3)
    x = keras.Input((32, 2))
    e = keras.layers.Conv1D(4, 3, padding="same", activation="relu", name="early")(x)
    a = keras.layers.Conv1D(6, 5, padding="same", activation="relu", name="target")(e)
    b = keras.layers.Conv1D(4, 3, padding="same", activation="relu", name="after")(a)
    y = keras.layers.Dense(CLASSES, activation="softmax", name="head")(keras.layers.GlobalAveragePooling1D()(b))
    return keras.Model(x, y)


def test_matches_the_definition_on_a_signal_model():
    model = conv1d_model()
    x = np.random.default_rng(0).normal(size=(N, 32, 2)).astype(np.float32)
    (ke, be), (kt, bt), (ka, ba), (wd, bd) = (_w(model, n) for n in ("early", "target", "after", "head"))
    e = tf.nn.relu(tf.nn.conv1d(tf.constant(x, tf.float64), ke, 1, "SAME") + be)
    a = tf.nn.relu(tf.nn.conv1d(e, kt, 1, "SAME") + bt).numpy()

    def head(copies, n):
        h = tf.nn.relu(tf.nn.conv1d(copies, ka, 1, "SAME") + ba)
        return (tf.reduce_mean(h, axis=1) @ wd + bd).numpy()
    want, _, _ = reference(a, head, classes=[1, 1, 1])
    assert want.max() > 0
    got = cam_of(model, batch_size=5)(x, targets=1, upsample=False, normalize=False)
    assert got.shape == (N, 32)
    assert_close_to_max(got, want)


def tiny_vit():
    """4x4 patches of 4 px and a class token; the class token attends to all tokens."""
    keras.utils.set_random_seed(6)
    x = keras.Input((SIZE, SIZE, 3))
    p = keras.layers.Conv2D(8, 4, strides=4, name="patches")(x)
    t = ClassToken(name="cls")(keras.layers.Reshape((16, 8))(p))
    n = keras.layers.Dense(8, activation="relu", name="target")(t)
    q = keras.layers.Dense(8, name="q")(keras.layers.Cropping1D((0, 16))(n))
    k = keras.layers.Dense(8, name="k")(n)
    v = keras.layers.Dense(8, name="v")(n)
    o = keras.layers.Attention(name="attention")([q, v, k])
    return keras.Model(x, keras.layers.Dense(CLASSES, name="logits")(keras.layers.Flatten()(o)))


def test_matches_the_definition_on_vit_tokens():
    """A token layer: channel k of the patch tokens (on their 4x4 grid) is zeroed; the class
    token, which is no position of the map, is kept."""
    model = tiny_vit()
    x = np.random.default_rng(2).uniform(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    weights = {n: [tf.constant(v.astype(np.float64)) for v in model.get_layer(n).get_weights()]
               for n in ("patches", "cls", "target", "q", "k", "v", "logits")}
    (kp, bp), (token,), (wt, bt) = weights["patches"], weights["cls"], weights["target"]
    p = tf.nn.conv2d(tf.constant(x, tf.float64), kp, 4, "VALID") + bp
    t = tf.concat([tf.tile(token, [2, 1, 1]), tf.reshape(p, (2, 16, 8))], axis=1)
    tokens = tf.nn.relu(t @ wt + bt).numpy()
    (wq, bq), (wk, bk), (wv, bv), (wd, bd) = (weights[n] for n in ("q", "k", "v", "logits"))

    def head(grids, n):  # copies of image n's patch grid, with its own class token
        seq = tf.concat([tf.tile(tokens[n:n + 1, :1], [grids.shape[0], 1, 1]),
                         tf.reshape(grids, (-1, 16, 8))], axis=1)
        q, k, v = seq[:, :1] @ wq + bq, seq @ wk + bk, seq @ wv + bv
        attn = tf.nn.softmax(q @ tf.transpose(k, (0, 2, 1)), axis=-1)
        return ((attn @ v)[:, 0] @ wd + bd).numpy()
    want, _, _ = reference(tokens[:, 1:].reshape(2, 4, 4, 8), head, classes=[2, 2])
    assert want.max() > 0
    for reshape in (None, (4, 4)):
        got = cam_of(model, reshape=reshape)(x, targets=2, upsample=False, normalize=False)
        assert_close_to_max(got, want)


# ----------------------------------------------------------------------------- from the target on

def _counter(model, name):
    return next(layer for _, layer in L.walk(model) if isinstance(layer, Counter) and layer.name == name)


def _reset(*counters):
    for c in counters:
        c._add(-c.count)


def streamed_rows(live, batch_size):
    """The model inputs the ablated (masked) passes run for ``live`` (image, channel) pairs: exactly those on
    TensorFlow and PyTorch; on JAX, whose shapes are static, the last pass is a full batch whose
    extra rows are discarded (``methods.score.stream_selected``)."""
    if backend.name() == "jax":
        return -(-live // batch_size) * batch_size
    return live


@pytest.mark.parametrize("batch_size", [1, 4])
def test_layers_before_the_target_run_once_per_image(flat, images, batch_size):
    a, _ = hand_cnn(flat, images)
    live = int((a != 0).any(axis=(1, 2)).sum())
    assert live == N * 5
    cam = cam_of(flat, batch_size=batch_size)
    pre, post = _counter(flat, "pre"), _counter(flat, "post")
    for _ in range(2):  # the first call traces, the second runs the compiled function
        _reset(pre, post)
        cam(images)
        assert pre.count == N                                       # the clean pass only
        assert post.count == N + streamed_rows(live, batch_size)     # the clean pass, one per live channel


def test_replay_without_a_replacement_gives_the_model_outputs(flat, images):
    graph = G.ActivationGraph(flat, ["target"], linearize=False)
    pre = _counter(flat, "pre")

    def both(x):
        _, _, clean, recording = graph.capture(x, record=True)
        rows = ops.convert_to_tensor(np.array([2, 0, 0, 1], np.int32))
        replayed = graph.run(ops.take(x, rows, axis=0), rows=rows, recording=recording)
        return clean, replayed, ops.convert_to_tensor(recording.replayed)
    _reset(pre)
    clean, replayed, count = Compiled(both, model=flat)(ops.convert_to_tensor(images))
    assert pre.count == N and int(to_host(count)) >= 2  # "pre" and "early" at least return recorded outputs
    np.testing.assert_allclose(to_host(replayed), to_host(clean)[[2, 0, 0, 1]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(to_host(clean), to_host(flat(images)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["nested", "wrapped"])
def test_a_nested_or_wrapped_target_equals_the_flat_model(flat, images, kind):
    """The target inside a sub-model, or inside a custom layer (which runs in the ablated
    passes, its sub-layers before the target replayed): the flat model's maps."""
    keras.utils.set_random_seed(9)
    model = same_weights(cnn(kind), flat)
    np.testing.assert_allclose(to_host(model(images)), to_host(flat(images)), rtol=1e-5, atol=1e-6)
    layer = {"nested": "backbone/target", "wrapped": "block/target"}[kind]
    cam = cam_of(model, layer=layer, batch_size=4)
    pre, post = _counter(model, "pre"), _counter(model, "post")
    _reset(pre, post)
    got = cam(images, upsample=False, normalize=False)
    want = cam_of(flat)(images, upsample=False, normalize=False)
    assert_close_to_max(got, want, rtol=1e-5)
    assert pre.count == N and post.count == N + streamed_rows(N * 5, 4)
    assert all("call" not in vars(layer) for _, layer in L.walk(model))


def test_a_layer_called_twice_is_explained_at_its_last_call(images):
    """The target runs twice (shared weights): its first call is replayed, its last one ablated."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((SIZE, SIZE, 3))
    e = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="early")(Counter(name="pre")(inp))
    shared = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="shared")
    h = keras.layers.GlobalAveragePooling2D()(Counter(name="post")(shared(shared(e))))
    model = keras.Model(inp, keras.layers.Dense(CLASSES, name="head")(h))
    (ke, be), (ks, bs), (wd, bd) = (_w(model, n) for n in ("early", "shared", "head"))
    x = tf.constant(images, tf.float64)
    e = tf.nn.relu(tf.nn.conv2d(x, ke, 1, "SAME") + be)
    a = tf.nn.relu(tf.nn.conv2d(tf.nn.relu(tf.nn.conv2d(e, ks, 1, "SAME") + bs), ks, 1, "SAME") + bs).numpy()
    want, _, _ = reference(a, lambda copies, n: (tf.reduce_mean(copies, axis=(1, 2)) @ wd + bd).numpy())
    assert want.max() > 0
    pre, post = _counter(model, "pre"), _counter(model, "post")
    _reset(pre, post)
    got = cam_of(model, layer="shared", batch_size=4)(images, upsample=False, normalize=False)
    assert_close_to_max(got, want)
    live = int((a != 0).any(axis=(1, 2)).sum())
    assert pre.count == N and post.count == N + streamed_rows(live, 4)


# ----------------------------------------------------------------------------- execution

# A weight is a difference of two scores, ``y - y^(k)``: float32 rounding that depends on the batch
# size is amplified by that cancellation. PyTorch's CPU convolutions choose their kernel by batch
# size, which moves a map by up to ~1.5e-6 of its largest value (TensorFlow and JAX: below 1e-6).
BATCH_RTOL = 5e-6 if backend.name() == "torch" else 1e-6


def test_batch_equals_single_calls_and_batch_size_changes_nothing(flat, images):
    maps = [cam_of(flat, batch_size=b)(images, upsample=False, normalize=False) for b in (1, 4, 64)]
    for other in maps[1:]:
        assert_close_to_max(other, maps[0], rtol=BATCH_RTOL)
    cam = cam_of(flat, batch_size=4)
    for i in range(N):
        assert_close_to_max(cam(images[i], upsample=False, normalize=False)[None], maps[0][i:i + 1],
                            rtol=BATCH_RTOL)


def test_one_trace_per_input_shape(flat, images):
    cam = AblationCAM(flat, "target", verbose=0, batch_size=4)
    cam(images)
    cam(images, targets=[0, 1, 2])
    cam(images[::-1].copy(), targets=2)
    assert cam.tracing_count == traces(1)
    cam(images[:2])
    assert cam.tracing_count == traces(2)


def test_callable_target_and_a_negative_score(flat, images):
    """A callable is the score y. With y < 0 the weight is (y - y_k) / |y|: positive when
    removing the channel lowers the score."""
    a, head = hand_cnn(flat, images)
    for shift in (0.0, -50.0):
        def score(z, shift=shift):
            return z[:, 1] - 2.0 * z[:, 0] + shift
        want, w, y = reference(a, head, score=score)
        if shift:
            assert (y < 0).all() and want.max() > 0
        result = cam_of(flat).explain(images, targets=score, upsample=False, normalize=False)
        np.testing.assert_allclose(result.scores, y, rtol=1e-5)
        assert_close_to_max(result.maps, want)


def test_eigen_smooth_is_the_principal_component_of_the_weighted_channels(flat, images):
    a, head = hand_cnn(flat, images)
    _, w, _ = reference(a, head)
    want = []
    for wa in a * w[:, None, None, :]:
        flat_wa = wa.reshape(-1, wa.shape[-1])
        centred = flat_wa - flat_wa.mean(axis=0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        proj = u[:, 0] * s[0]
        proj = proj if (proj * centred.sum(axis=1)).sum() >= 0 else -proj
        want.append(np.maximum(proj, 0).reshape(wa.shape[:2]))
    got = cam_of(flat, eigen_smooth=True)(images, upsample=False, normalize=False)
    assert_close_to_max(got, np.stack(want), rtol=1e-4)


def test_aug_smooth_is_accepted(flat, images):
    plain = cam_of(flat)(images)
    smooth = cam_of(flat, aug_smooth=True)(images)
    assert smooth.shape == plain.shape and np.isfinite(smooth).all()
    assert smooth.min() >= 0 and smooth.max() <= 1 and not np.allclose(smooth, plain)


def test_model_left_unchanged(flat, images):
    before = to_host(flat(images))
    weights = [w.copy() for w in flat.get_weights()]
    activation = flat.get_layer("head").activation
    AblationCAM(flat, "target", verbose=0)(images)
    np.testing.assert_array_equal(to_host(flat(images)), before)
    for got, want in zip(flat.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    assert flat.get_layer("head").activation is activation
    assert all("call" not in vars(layer) for _, layer in L.walk(flat))


def test_progress_bar_only_when_verbose(flat, images, capsys):
    AblationCAM(flat, "target", verbose=0, batch_size=4)(images)
    assert capsys.readouterr().out == ""
    AblationCAM(flat, "target", verbose=1, batch_size=4)(images)
    assert f"{N * 5}/{N * 5}" in capsys.readouterr().out  # the dead channel is not run


@pytest.mark.tensorflow_only  # a SavedModel is TensorFlow's format
def test_saved_model_target_runs_the_whole_model(flat, images, tmp_path):
    """An op inside a loaded SavedModel: no replay (every ablated pass is a full pass), same maps."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((SIZE, SIZE, 3))
    e = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="early")(inp)
    t = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="target")(e)
    s = keras.layers.Conv2D(4, 1, strides=2, name="skip")(e)
    h = keras.layers.Add(name="merge")([keras.layers.Conv2D(4, 3, padding="same", name="late")(t), s])
    h = keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.ReLU(name="merge_relu")(h))
    plain = same_weights(keras.Model(inp, keras.layers.Dense(CLASSES, activation="softmax", name="head")(h)), flat)
    if LEGACY:
        tf.saved_model.save(plain, str(tmp_path))
    else:
        plain.export(str(tmp_path), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path))
    name = [p for p, _ in kc.list_layers(loaded) if p.endswith("target/Relu") or p.endswith("target_1/Relu")]
    assert len(name) == 1, name
    cam = AblationCAM(loaded, name[0], verbose=0, batch_size=4)
    got = cam(images, targets=[2, 0, 1], upsample=False, normalize=False)
    a, head = hand_cnn(flat, images)
    assert_close_to_max(got, reference(a, head, classes=[2, 0, 1])[0])


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, word", [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": None}, "batch_size"),
    ({"verbose": 2}, "verbose"),
    ({"reshape": lambda t: t}, r"reshape=\(h, w\)"),
])
def test_bad_arguments(flat, kwargs, word):
    with pytest.raises(ValueError, match=word):
        AblationCAM(flat, "target", **kwargs)


def test_layer_without_a_spatial_map(flat):
    with pytest.raises(ValueError, match=r"'gap' outputs shape \(None, \d+\), which is not a feature map"):
        AblationCAM(flat, "gap", verbose=0)

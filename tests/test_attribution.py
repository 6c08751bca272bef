"""Saliency, SmoothGrad and Integrated Gradients against computations written here.

The references run the models' computation again with ``tf.nn.convolution``
from the layers' weights (the logits, without the softmax), take the input
gradient with their own ``GradientTape`` and do the rest in numpy: noise
drawn here with ``keras_cam.random.normal_numpy(seed, [j], shape)`` (the counter-based
draw computed in numpy, independently of the backend's ops), path
points of the midpoint rule built here. They share no code with
``keras_cam.methods.attribution``, which streams (input, sample) and
(input, path point) pairs through the model inside one compiled function.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_cam as kc
from keras_cam._compat import keras, ops
from keras_cam.methods.attribution import IntegratedGradients, Saliency, SmoothGrad
from keras_cam.random import normal_numpy
from test_gradcam import traces

CLASSES = 3
SHAPES = {1: (32, 2), 2: (16, 16, 3), 3: (6, 8, 8, 1)}
CONV = {1: "Conv1D", 2: "Conv2D", 3: "Conv3D"}
GAP = {1: "GlobalAveragePooling1D", 2: "GlobalAveragePooling2D", 3: "GlobalAveragePooling3D"}


def build(rank, seed=1, linear=False):
    """conv (ReLU) -> strided conv (ReLU) -> global average -> Dense softmax; ``linear``: no ReLUs."""
    keras.utils.set_random_seed(seed)
    act = None if linear else "relu"
    # Non-zero biases: without them a ReLU network is positively homogeneous, its gradient is
    # constant on the path from 0, and every quadrature rule would give the same IG.
    bias = keras.initializers.RandomNormal(stddev=0.3, seed=seed)
    conv = getattr(keras.layers, CONV[rank])
    inp = keras.Input(SHAPES[rank])
    x = conv(4, 3, padding="same", activation=act, bias_initializer=bias, name="c1")(inp)
    x = conv(5, 3, strides=2, padding="same", activation=act, bias_initializer=bias, name="c2")(x)
    x = getattr(keras.layers, GAP[rank])(name="gap")(x)
    out = keras.layers.Dense(CLASSES, activation="softmax", name="head")(x)
    model = keras.Model(inp, out)
    w, b = model.get_layer("head").get_weights()
    model.get_layer("head").set_weights([8.0 * w, b + np.array([0.3, -0.2, 0.1], "float32")])
    return model


def logits(model, x):
    """The model's pre-softmax scores, from its weights with tf.nn (an independent path)."""
    k1, b1 = (tf.constant(v) for v in model.get_layer("c1").get_weights())
    k2, b2 = (tf.constant(v) for v in model.get_layer("c2").get_weights())
    w, b = (tf.constant(v) for v in model.get_layer("head").get_weights())
    relu = tf.nn.relu if model.get_layer("c1").activation.__name__ == "relu" else tf.identity
    rank = x.shape.rank - 2
    conv = {1: lambda h, k, s: tf.nn.conv1d(h, k, s, "SAME"),
            2: lambda h, k, s: tf.nn.conv2d(h, k, s, "SAME"),
            3: lambda h, k, s: tf.nn.conv3d(h, k, [1, s, s, s, 1], "SAME", data_format="NDHWC")}[rank]
    h = relu(conv(x, k1, 1) + b1)
    h = relu(conv(h, k2, 2) + b2)
    return tf.reduce_mean(h, axis=tuple(range(1, rank + 1))) @ w + b


def score_fn(classes=None, fn=None):
    """``z -> (N,)``: the logit of each row's class, or a callable's score."""
    if fn is not None:
        return fn
    return lambda z: tf.gather(z, tf.constant(classes), batch_dims=1)


def grads_of(model, x, score):
    x = tf.constant(np.asarray(x, "float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        s = score(logits(model, x))
    return tape.gradient(s, x).numpy().astype(np.float64)


def top1(model, x):
    return logits(model, tf.constant(x)).numpy().argmax(axis=1)


def ref_saliency(model, x, classes=None, fn=None):
    classes = top1(model, x) if classes is None and fn is None else classes
    return np.abs(grads_of(model, x, score_fn(classes, fn))).max(axis=-1)


def ref_smoothgrad(model, x, samples, noise, seed, classes=None, fn=None):
    """mean_i of dS/dx at x + sigma eps_i, eps_i = normal_numpy(seed, [i], one input), per image."""
    classes = top1(model, x) if classes is None and fn is None else classes
    out = []
    for n in range(len(x)):
        sigma = np.float32(noise) * (x[n].max() - x[n].min())
        noisy = np.stack([x[n] + sigma * normal_numpy(seed, [i], x.shape[1:])[0].astype(np.float32)
                          for i in range(samples)])
        rows = None if classes is None else np.full(samples, classes[n])
        g = grads_of(model, noisy, score_fn(rows, fn))
        out.append(np.abs(g.mean(axis=0)).max(axis=-1))
    return np.stack(out)


def ref_ig(model, x, baseline, steps, classes=None):
    """(x - x') * (1/m) sum_j dS/dx(x' + ((j + 0.5) / m)(x - x')), the midpoint rule, per image."""
    classes = top1(model, x) if classes is None else classes
    out = []
    for n in range(len(x)):
        alphas = ((np.arange(steps) + 0.5) / steps).reshape((-1,) + (1,) * x[n].ndim)
        path = (baseline[n] + alphas * (x[n] - baseline[n])).astype("float32")
        g = grads_of(model, path, score_fn(np.full(steps, classes[n])))
        out.append((x[n].astype(np.float64) - baseline[n]) * g.mean(axis=0))
    return np.stack(out)


def assert_close_to_max(actual, expected, rtol=1e-5):
    """Agreement to ``rtol`` relative to each map's largest value."""
    assert actual.shape == expected.shape
    for got, want in zip(actual, expected):
        scale = max(np.abs(want).max(), 1e-12)
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


def np_minmax(maps):
    axes = tuple(range(1, maps.ndim))
    lo, hi = maps.min(axis=axes, keepdims=True), maps.max(axis=axes, keepdims=True)
    return (maps - lo) / (hi - lo)


def inputs(rank, n=3, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=(n,) + SHAPES[rank]).astype("float32")


@pytest.fixture(scope="module")
def models():
    return {rank: build(rank) for rank in (1, 2, 3)}


# ----------------------------------------------------------------------------- Saliency, SmoothGrad

@pytest.mark.parametrize("rank", [2, 1, 3])
def test_saliency_matches_the_input_gradient(models, rank):
    model, x = models[rank], inputs(rank)
    sal = Saliency(model)
    result = sal.explain(x, normalize=False)
    want = ref_saliency(model, x)
    np.testing.assert_array_equal(result.targets, top1(model, x))
    np.testing.assert_allclose(result.scores, logits(model, tf.constant(x)).numpy()[np.arange(3), result.targets],
                               rtol=1e-5)
    assert want.max() > 0
    assert_close_to_max(result.maps, want)
    assert_close_to_max(sal(x), np_minmax(want))  # normalize=True: min-max per map
    assert_close_to_max(sal(x, upsample=False), np_minmax(want))  # upsample is ignored


def test_saliency_targets(models):
    model, x = models[2], inputs(2)
    sal = Saliency(model)
    assert_close_to_max(sal(x, targets=[2, 0, 1], normalize=False), ref_saliency(model, x, classes=[2, 0, 1]))
    fn = lambda z: z[:, 1] - z[:, 0]  # noqa: E731
    assert_close_to_max(sal(x, targets=fn, normalize=False), ref_saliency(model, x, fn=fn))


@pytest.mark.parametrize("rank", [2, 1])
def test_smoothgrad_matches_noisy_gradients_drawn_here(models, rank):
    model, x = models[rank], inputs(rank)
    sg = SmoothGrad(model, samples=6, noise=0.2, seed=7, batch_size=5, verbose=0)
    want = ref_smoothgrad(model, x, 6, 0.2, 7)
    got = sg(x, normalize=False)
    assert_close_to_max(got, want)
    assert_close_to_max(sg(x), np_minmax(want))
    # The class stays the clean input's, and explicit targets and callables are scored on every copy.
    assert_close_to_max(sg(x, targets=[1, 2, 0], normalize=False),
                        ref_smoothgrad(model, x, 6, 0.2, 7, classes=[1, 2, 0]))
    fn = lambda z: z[:, 2]  # noqa: E731
    assert_close_to_max(sg(x, targets=fn, normalize=False), ref_smoothgrad(model, x, 6, 0.2, 7, fn=fn))


def test_smoothgrad_without_noise_is_saliency_and_seeds(models):
    model, x = models[2], inputs(2)
    sal = Saliency(model)(x, normalize=False)
    assert_close_to_max(SmoothGrad(model, noise=0, samples=4, verbose=0)(x, normalize=False), sal)
    a = SmoothGrad(model, samples=4, seed=3, verbose=0)(x, normalize=False)
    b = SmoothGrad(model, samples=4, seed=3, verbose=0)(x, normalize=False)
    c = SmoothGrad(model, samples=4, seed=4, verbose=0)(x, normalize=False)
    np.testing.assert_array_equal(a, b)  # reproducible
    assert np.abs(a - c).max() > 0.05 * np.abs(a).max()  # another seed, other noise
    assert np.abs(a - sal).max() > 0.05 * np.abs(a).max()  # the noise does something


# ----------------------------------------------------------------------------- Integrated Gradients

@pytest.mark.parametrize("rank", [2, 3])
def test_integrated_gradients_completeness(models, rank):
    """sum IG = S(x) - S(0) within 1% at 256 steps (a ReLU network: the error is O(1/steps))."""
    model = models[rank]
    # Scaled by 3: the models' initial weights are drawn by each backend's own generator, and at
    # 2x one image's score changes by only 0.46 on JAX's 3-D model (3x: at least 0.9 everywhere).
    x = 3.0 * inputs(rank, n=2, seed=1)
    z = logits(model, tf.constant(x)).numpy()
    z0 = logits(model, tf.zeros_like(x)).numpy()
    c = np.abs(z - z0).argmax(axis=1)  # the class whose score changes most along the path
    delta = z[np.arange(2), c] - z0[np.arange(2), c]
    assert (np.abs(delta) > 0.5).all(), delta  # a difference that is not tiny
    ig = IntegratedGradients(model, steps=256, batch_size=128, verbose=0)
    result = ig.explain(x, targets=c, normalize=False)
    np.testing.assert_allclose(result.scores, z[np.arange(2), c], rtol=1e-5)
    total = result.maps.reshape(2, -1).sum(axis=1)
    np.testing.assert_allclose(total, delta, rtol=0.01)
    assert result.maps.shape == x.shape


def test_integrated_gradients_on_a_linear_model_is_input_times_gradient():
    model = build(2, seed=5, linear=True)
    x = inputs(2)
    ig = IntegratedGradients(model, steps=7, verbose=0)
    got = ig(x, targets=1, normalize=False)
    g = grads_of(model, x, score_fn([1, 1, 1]))
    assert_close_to_max(got, x * g)


@pytest.mark.parametrize("rank", [2, 1])
def test_integrated_gradients_matches_the_midpoint_rule(models, rank):
    model, x = models[rank], inputs(rank)
    ig = IntegratedGradients(model, steps=16, batch_size=20, verbose=0)
    want = ref_ig(model, x, np.zeros_like(x), 16)
    got = ig(x, normalize=False)
    assert_close_to_max(got, want)
    # normalize=True: minmax(|sum_c IG|) of the attributions.
    assert_close_to_max(ig(x), np_minmax(np.abs(got.astype(np.float64).sum(axis=-1))))
    assert_close_to_max(ig(x, upsample=False), np_minmax(np.abs(want.sum(axis=-1))))


def test_integrated_gradients_baselines(models):
    model, x = models[2], inputs(2)
    # An array broadcastable to one input: one value per channel.
    per_channel = np.array([0.2, -0.3, 0.5], "float32")
    got = IntegratedGradients(model, baseline=per_channel, steps=16, verbose=0)(x, normalize=False)
    assert_close_to_max(got, ref_ig(model, x, np.broadcast_to(per_channel, x.shape), 16))
    # A whole input.
    one = inputs(2, n=1, seed=9)[0] * 0.5
    got = IntegratedGradients(model, baseline=one, steps=16, verbose=0)(x, normalize=False)
    assert_close_to_max(got, ref_ig(model, x, np.broadcast_to(one, x.shape), 16))
    # A callable: a blur of each input (in keras.ops: the explainer calls it on the backend's
    # tensors, inside its compiled function); the reference blurs with tf.nn (the same mean
    # over the window's positions inside the image).
    blur = lambda images: ops.average_pool(images, 5, 1, "same")  # noqa: E731
    blurred = tf.nn.avg_pool2d(x, 5, 1, "SAME").numpy()
    ig = IntegratedGradients(model, baseline=blur, steps=16, verbose=0)
    got = ig(x, normalize=False)
    want = ref_ig(model, x, blurred, 16)
    assert_close_to_max(got, want)
    # Completeness from that baseline, at 256 steps.
    z, zb = logits(model, tf.constant(x)).numpy(), logits(model, tf.constant(blurred)).numpy()
    c = np.abs(z - zb).argmax(axis=1)
    delta = z[np.arange(3), c] - zb[np.arange(3), c]
    assert (np.abs(delta) > 0.5).all(), delta
    fine = IntegratedGradients(model, baseline=blur, steps=256, batch_size=128, verbose=0).explain(
        x, targets=c, normalize=False)
    np.testing.assert_allclose(fine.maps.reshape(3, -1).sum(axis=1), delta, rtol=0.01)


def test_batch_size_does_not_change_integrated_gradients(models):
    model, x = models[2], inputs(2)
    big = IntegratedGradients(model, steps=10, batch_size=64, verbose=0)(x, normalize=False)
    small = IntegratedGradients(model, steps=10, batch_size=3, verbose=0)(x, normalize=False)
    assert_close_to_max(small, big, rtol=1e-6)
    sg_big = SmoothGrad(model, samples=5, batch_size=64, verbose=0)(x, normalize=False)
    sg_small = SmoothGrad(model, samples=5, batch_size=2, verbose=0)(x, normalize=False)
    assert_close_to_max(sg_small, sg_big, rtol=1e-6)


def test_channels_first_model_gives_channels_last_attributions(models):
    """A model that takes (N, C, H, W): gradients are taken on the channels-last input, and a
    callable baseline gets the batch as the model takes it."""
    inner = models[2]
    inp = keras.Input((3, 16, 16))
    first = keras.Model(inp, inner(keras.layers.Permute((2, 3, 1))(inp)))
    x = inputs(2)
    xf = np.transpose(x, (0, 3, 1, 2))
    assert_close_to_max(Saliency(first, data_format="channels_first")(xf, normalize=False),
                        ref_saliency(inner, x))
    half = lambda images: 0.5 * images  # noqa: E731
    got = IntegratedGradients(first, baseline=half, steps=8, verbose=0, data_format="channels_first")(
        xf, normalize=False)
    assert got.shape == x.shape
    assert_close_to_max(got, ref_ig(inner, x, 0.5 * x, 8))


# ----------------------------------------------------------------------------- contract

def _state(model):
    return {path: (sorted(vars(layer)), vars(layer).get("activation"), type(layer).call)
            for path, layer in kc.layers.walk(model)}


EXPLAINERS = {
    "saliency": lambda m: Saliency(m),
    "smoothgrad": lambda m: SmoothGrad(m, samples=3, batch_size=4, verbose=0),
    "ig": lambda m: IntegratedGradients(m, steps=5, batch_size=4, verbose=0),
}


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_batch_equals_single_one_trace_and_model_unchanged(name):
    model = build(1, seed=2)
    x = inputs(1, n=3)
    before, weights, prediction = _state(model), model.get_weights(), model.predict(x, verbose=0)
    explainer = EXPLAINERS[name](model)
    normalize = name != "ig"  # IG's attributions (N, T, C); the others' maps
    batch = explainer(x, targets=[0, 2, 1], normalize=normalize)
    for _ in range(2):
        again = explainer(x, targets=[0, 2, 1], normalize=normalize)
    np.testing.assert_array_equal(again, batch)
    assert explainer.tracing_count == traces(1)
    for i, c in enumerate([0, 2, 1]):
        assert_close_to_max(explainer(x[i], targets=c, normalize=normalize)[None], batch[i:i + 1], rtol=1e-5)
    assert explainer.tracing_count == traces(2)  # one more input shape: (1, T, C)
    assert _state(model) == before
    assert all("call" not in vars(layer) for _, layer in kc.layers.walk(model))
    for w, v in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(w, v)
    np.testing.assert_array_equal(model.predict(x, verbose=0), prediction)


def test_bad_arguments(models):
    model = models[2]
    with pytest.raises(ValueError, match=r"`steps` must be a positive int.*received 0"):
        IntegratedGradients(model, steps=0)
    with pytest.raises(ValueError, match=r"`samples` must be a positive int.*received 0"):
        SmoothGrad(model, samples=0)
    with pytest.raises(ValueError, match=r"`noise` must be a number >= 0.*received -1"):
        SmoothGrad(model, noise=-1)
    with pytest.raises(ValueError, match=r"`seed` must be an int.*received 'a'"):
        SmoothGrad(model, seed="a")
    with pytest.raises(ValueError, match=r"`baseline` has shape \(5, 5, 3\).*\(16, 16, 3\)"):
        IntegratedGradients(model, baseline=np.zeros((5, 5, 3)))
    with pytest.raises(ValueError, match=r"`baseline` has shape \(2, 16, 16, 3\).*callable"):
        IntegratedGradients(model, baseline=np.zeros((2, 16, 16, 3)))
    with pytest.raises(TypeError, match=r"`baseline` must be None.*received str"):
        IntegratedGradients(model, baseline="zeros")
    with pytest.raises(ValueError, match="NaN"):
        IntegratedGradients(model, baseline=np.nan)
    wrong = IntegratedGradients(model, baseline=lambda images: images[:, :8], verbose=0)
    with pytest.raises(ValueError, match=r"returned by the `baseline` callable have shape \(3, 8, 16, 3\)"):
        wrong(inputs(2))
    for cls in (Saliency, SmoothGrad, IntegratedGradients):
        with pytest.raises(ValueError, match=r"no target layer.*received layer='c1'"):
            cls(model, "c1")
        with pytest.raises(ValueError, match="`aug_smooth` does not apply"):
            cls(model, aug_smooth=True)
        with pytest.raises(ValueError, match="`eigen_smooth`.*does not apply"):
            cls(model, eigen_smooth=True)

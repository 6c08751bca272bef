"""The first call of a shape runs eagerly, later ones compiled; VizGradCAM's explainer cache.

Every explainer goes through ``keras_cam.base.Compiled``: on TensorFlow the first
call of an input signature runs the method's Python code eagerly, the second
traces it, later calls reuse the trace. JAX compiles (``jax.jit``) from the first
call, except for a callable target made per call, whose first call runs op by
op; PyTorch runs every call eagerly and counts no trace. The eager and the compiled maps are compared
here for every method, against an explainer that compiles from its first
call. The cache of :func:`keras_cam.VizGradCAM` is checked for its rules:
weak on the model, rebuilt when the layers change, live weights.
"""

import gc
import weakref

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend, methods
from keras_cam._compat import keras, ops, to_host
from keras_cam.compiled import Compiled
from slow import each_method
from test_gradcam import first_call_traces, resize_np, traces
from keras_cam.viz import colorize
from keras_cam.vizgradcam import ExplainerCache, VizGradCAM, last_conv_layer

L = keras.layers
H = W = 16
CLASSES = 3


def build(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((H, W, 3))
    x = L.Conv2D(6, 3, activation="relu", name="conv1")(inp)
    x = L.Conv2D(8, 3, activation="relu", name="target")(x)
    out = L.Dense(CLASSES, activation="softmax", name="head")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def model():
    return build()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((4, H, W, 3)).astype(np.float32)


# Fewer passes for the methods that make a thousand by default (the eager/compiled equality does not depend on it).
FEW = {"lime": {"samples": 8}, "kernelshap": {"coalitions": 8}, "rise": {"masks": 16}, "sobolattribution": {"designs": 4},
       "hsicattribution": {"designs": 16}}


# KPCA-CAM's map is an eigenvector of a kernel matrix built from squared distances in float32: JAX's
# fused (jitted) and op-by-op runs round it differently, by about 1e-6 of the map's range.
RTOL = {"kpcacam": 1e-5}


def explainers(model):
    """``(name, factory)`` for every registered method and the guided ones."""
    made = [(name, lambda n=name: methods.create(n, model, layer="target", **FEW.get(n, {})))
            for name in methods.names(attention=False)]
    made.append(("guidedbackprop", lambda: kc.GuidedBackprop(model)))
    made.append(("guidedgradcam", lambda: kc.GuidedGradCAM(model, layer="target")))
    return made


def assert_close(got, want, rtol=1e-6):
    """Equal up to ``rtol`` of the largest magnitude (float32 rounding of the two paths)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max()), 1e-30)
    assert np.abs(got - want).max() <= rtol * scale, np.abs(got - want).max() / scale


# ---------------------------------------------------------------- Compiled


def _eager(x):
    """Whether ``x`` is a concrete value (an eager run), not a symbolic one of a trace: a
    ``tf.function`` graph on TensorFlow, a ``jax.jit`` tracer on JAX; PyTorch is always eager."""
    if backend.name() == "tensorflow":
        import tensorflow as tf
        return tf.executing_eagerly()
    if backend.name() == "jax":
        import jax
        return not isinstance(x, jax.core.Tracer)
    return True


def test_compiled_runs_a_new_signature_eagerly_then_traces_it_once():
    runs = []

    def fn(x, flag):
        runs.append(_eager(x))
        return x * 2.0 if flag else x

    # On JAX only a function marked `once` runs op by op first (backend/jax.py); TensorFlow ignores `once`.
    f = Compiled(fn, eager_first=True, once=True)
    a, b = ops.ones((2, 3)), ops.ones((5, 3))
    if backend.name() == "torch":  # nothing to trace: every call runs the Python function eagerly
        for x, flag in ((a, True), (a, True), (a * 3.0, True), (b, True), (a, False), (b, True)):
            np.testing.assert_array_equal(to_host(f(x, flag)), 2 * to_host(x) if flag else to_host(x))
        assert runs == [True] * 6 and f.experimental_get_tracing_count() == 0
        Compiled(fn)(a, True)
        assert runs == [True] * 7
        return
    np.testing.assert_array_equal(to_host(f(a, True)), 2 * np.ones((2, 3)))
    assert runs == [True] and f.experimental_get_tracing_count() == 0  # eager: no trace
    np.testing.assert_array_equal(to_host(f(a, True)), 2 * np.ones((2, 3)))
    assert runs == [True, False] and f.experimental_get_tracing_count() == 1  # traced
    f(a, True)
    f(a * 3.0, True)  # other values, same signature: the trace is reused
    assert runs == [True, False] and f.experimental_get_tracing_count() == 1
    f(b, True)  # a new shape: eager again
    f(a, False)  # a new Python value: a new signature too
    assert runs == [True, False, True, True] and f.experimental_get_tracing_count() == 1
    f(b, True)
    assert runs[-1] is False and f.experimental_get_tracing_count() == 2

    # Inside another tf.function (jax.jit) the compiled function is traced in, never run eagerly.
    if backend.name() == "tensorflow":
        import tensorflow as tf
        outer = tf.function(lambda x: f(x, True))
    else:
        import jax
        outer = jax.jit(lambda x: f(x, True))
    np.testing.assert_array_equal(to_host(outer(ops.ones((7, 3)))), 2 * np.ones((7, 3)))
    assert runs[-1] is False

    # By default (eager_first=False) it compiles from the first call.
    g = Compiled(fn)
    g(a, True)
    assert runs[-1] is False and g.experimental_get_tracing_count() == 1
    # JAX compiles from the first call unless the function is marked `once` too; TensorFlow runs it eagerly.
    h = Compiled(fn, eager_first=True)
    h(a, True)
    jax_backend = backend.name() == "jax"
    assert runs[-1] is not jax_backend and h.experimental_get_tracing_count() == int(jax_backend)


# ---------------------------------------------------------------- every method


@pytest.mark.parametrize("name", each_method([n for n, _ in explainers(None)]))
def test_eager_first_call_equals_the_compiled_one(model, images, name):
    make = dict(explainers(model))[name]
    eager, compiled = make(), make()
    eager._eager_first = True  # Score-CAM compiles from its first call by default
    compiled._eager_first = False
    guided = name.startswith("guided")
    options = [{}] if guided else [{}, {"upsample": False, "normalize": False}]
    # With the shared finisher, the explainer's own call is the same for every upsample/normalize option.
    shared = eager.shares_finisher
    for kw in options:
        ref = compiled.explain(images, **kw)
        before = eager.tracing_count
        new = not shared or kw is options[0]  # a signature the explainer has not met
        first = eager.explain(images, **kw)  # eager (compiled on JAX)
        traced = eager.tracing_count
        assert traced == before + (first_call_traces() if new else 0)
        second = eager.explain(images, **kw)  # traced now
        assert eager.tracing_count == before + (traces(1) if new else 0)
        for got in (first, second):
            assert_close(got.maps, ref.maps, rtol=RTOL.get(name, 1e-6))
            np.testing.assert_array_equal(got.targets, ref.targets)
            assert_close(got.scores, ref.scores)
        third = eager.explain(images[::-1].copy(), **kw)  # same shape: no new trace
        assert eager.tracing_count == before + (traces(1) if new else 0)
        assert_close(third.maps, compiled.explain(images[::-1].copy(), **kw).maps, rtol=RTOL.get(name, 1e-6))
    assert compiled.tracing_count == traces(1 if shared else len(options))


def test_eager_calls_with_smoothing_and_callable_targets_equal_compiled(model, images):
    for make in (lambda: kc.GradCAM(model, layer="target", aug_smooth=True),
                 lambda: kc.GradCAMPlusPlus(model, layer="target", eigen_smooth=True)):
        eager, compiled = make(), make()
        compiled._eager_first = False
        assert_close(eager(images), compiled(images))
        assert eager.tracing_count == first_call_traces()
    cam = kc.GradCAM(model, layer="target")
    target = lambda out: out[:, 2]  # noqa: E731
    assert_close(cam(images, targets=target), cam(images, targets=2))
    assert_close(cam(images, targets=target), cam(images, targets=2))  # both compiled now
    assert cam.tracing_count == traces(2)


def test_one_trace_per_shape_counted_from_the_second_call(model, images):
    cam = kc.GradCAM(model, layer="target")
    counts = []
    for batch in (images, images, images[:1], images, images[:1], images[:1], images[2]):
        cam(batch)
        counts.append(cam.tracing_count)
    # (4,) eager, traced; (1,) eager; (4,) compiled; (1,) traced, compiled; one image is (1,) too.
    # JAX compiles each shape at its first call: (4,) traced, compiled; (1,) traced; then compiled.
    expected = (1, 1, 2, 2, 2, 2, 2) if backend.name() == "jax" else (0, 1, 1, 1, 2, 2, 2)
    assert counts == [traces(n) for n in expected]


def _state(model):
    """Every layer's own attributes: names, and the objects of the patched ones."""
    return {path: (sorted(vars(layer)), vars(layer).get("activation"), type(layer).call)
            for path, layer in kc.layers.walk(model)}


@pytest.mark.parametrize("name", each_method([n for n, _ in explainers(None)]))
def test_eager_calls_restore_the_model_exactly(images, name):
    model = build(seed=3)
    model(images)
    before, prediction = _state(model), model.predict(images, verbose=0)
    cam = dict(explainers(model))[name]()
    cam._eager_first = True
    cam(images)  # eager
    assert _state(model) == before
    cam(images)  # traced
    assert _state(model) == before

    def failing(outputs):
        raise RuntimeError("a target that fails mid-call")

    if name not in ("cam", "finercam"):  # CAM and FinerCAM refuse callable targets before running
        with pytest.raises(RuntimeError, match="fails mid-call"):
            cam(images[:2], targets=failing)  # eager, raising inside the patched forward pass
    assert _state(model) == before
    assert all("call" not in vars(layer) for _, layer in kc.layers.walk(model))
    np.testing.assert_array_equal(model.predict(images, verbose=0), prediction)


def test_eager_calls_do_not_grow_memory(model, images):
    """A new callable per call gets a new function: every call is a first call, eager."""
    cam = kc.GradCAM(model, layer="target")
    one = images[:1]
    for _ in range(20):
        cam(one, targets=lambda out: out[:, 1])
    rss0 = _rss_mb()
    for _ in range(200):
        cam(one, targets=lambda out: out[:, 1])
    growth = _rss_mb() - rss0
    assert cam.tracing_count == 0 and len(cam._functions) <= 9
    assert growth < 25, f"memory grew by {growth:.1f} MB over 200 eager calls"


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


# ---------------------------------------------------------------- VizGradCAM's cache


def jet_levels(rgb):
    """The uint8 level of each jet colour (256 distinct colours)."""
    codes = colorize(np.arange(256, dtype=np.uint8)[None])[0].astype(np.int64) @ [65536, 256, 1]
    order = np.argsort(codes)
    wanted = np.asarray(rgb).astype(np.int64) @ [65536, 256, 1]
    pos = np.searchsorted(codes[order], wanted)
    assert (codes[order][pos] == wanted).all(), "not a jet colour"
    return order[pos]


def hand_gradcam(model, image):
    """Grad-CAM at ``target`` (after ``conv1``) by the closed form of a GAP + Dense head: the logit of
    class c is ``mean_ij sum_k W_kc A^k_ij + b_c``, so ``w_k = W_kc / (h w)``."""
    a = to_host(model.get_layer("target")(model.get_layer("conv1")(image[None])))[0]
    kernel = model.get_layer("head").get_weights()[0]
    c = int(np.argmax(model.predict(image[None], verbose=0)))
    cam = np.maximum(a @ (kernel[:, c] / (a.shape[0] * a.shape[1])), 0)
    up = resize_np(cam[None], image.shape[:2])[0]
    return (up - up.min()) / (up.max() - up.min())


def assert_heatmap_is(heat, ref):
    assert np.abs(jet_levels(heat) - 255 * ref).max() <= 0.5 + 1e-3  # jet colour of round(255 * map)


def cached(model):
    return kc.vizgradcam._EXPLAINERS.cached(model, None)


def test_vizgradcam_reuses_its_explainer_and_reads_live_weights(images):
    model = build(seed=1)
    first = VizGradCAM(model, images[0], plot_results=False)
    cam = cached(model)
    assert cam is not None and cam.layer_path == "target" and cam.model is None  # holds no model
    for image in images[1:]:
        assert_heatmap_is(VizGradCAM(model, image, plot_results=False), hand_gradcam(model, image))
    assert cached(model) is cam and cam.tracing_count == traces(1)  # one explainer, traced once

    # One training step between two calls: the map follows the new weights.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=5.0), loss="sparse_categorical_crossentropy")
    kernel = model.get_layer("head").get_weights()[0].copy()
    model.train_on_batch(images, np.array([0, 1, 2, 0]))
    assert not np.allclose(model.get_layer("head").get_weights()[0], kernel)
    after = VizGradCAM(model, images[0], plot_results=False)
    assert_heatmap_is(after, hand_gradcam(model, images[0]))
    assert (jet_levels(after) != jet_levels(first)).mean() > 0.1  # the map changed with the model
    assert cached(model) is cam and cam.tracing_count == traces(1)  # same explainer, no retrace


def test_vizgradcam_cache_never_keeps_a_model_alive(images):
    model = build(seed=2)
    for _ in range(3):  # eager, traced, compiled
        VizGradCAM(model, images[0], plot_results=False)
    alive = weakref.ref(model)
    cam = weakref.ref(cached(model))
    gc.collect()  # models of earlier tests
    gc.collect()
    size = len(kc.vizgradcam._EXPLAINERS._entries)
    del model
    gc.collect()  # the model, then (its entry gone) the explainer: both are in reference cycles
    gc.collect()
    assert alive() is None and cam() is None
    assert len(kc.vizgradcam._EXPLAINERS._entries) == size - 1  # its entry went with it


def test_vizgradcam_rebuilds_for_a_model_whose_layers_changed(images):
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((H, W, 3)), L.Conv2D(6, 3, activation="relu", name="conv1"),
                              L.Conv2D(8, 3, activation="relu", name="target"), L.GlobalAveragePooling2D(),
                              L.Dense(CLASSES, activation="softmax", name="head")])
    VizGradCAM(model, images[0], plot_results=False)
    VizGradCAM(model, images[0], plot_results=False)
    old = cached(model)
    model.pop()
    model.add(L.Dense(5, name="head"))  # a new head: another layer object, 5 classes
    heat = VizGradCAM(model, images[0], plot_results=False)
    assert cached(model) is not old and cached(model).graph.num_classes == 5
    assert_heatmap_is(heat, hand_gradcam(model, images[0]))


def test_explainer_cache_rules():
    cache = ExplainerCache(max_models=2, max_layers=3)
    models = [build(seed=s) for s in (5, 6, 7)]
    built = []

    def use(model, layer):
        def make():
            built.append((model, layer))
            return kc.GradCAM(model, layer=layer)
        with cache.use(model, layer, make) as cam:
            assert cam.model is model  # lent for the call
            return cam

    a = use(models[0], "target")
    assert use(models[0], "target") is a and len(built) == 1
    layer = models[0].get_layer("conv1")
    b = use(models[0], layer)  # a layer object: its own key
    assert b is not a and use(models[0], layer) is b and b.layer_path == "conv1"
    assert use(models[0], "conv1") is not b  # a name is another key than the object
    assert cache.cached(models[0], "target") is a and a.model is None
    use(models[0], models[0].get_layer("target"))  # a fourth key: the least recently used ("target") goes
    assert cache.cached(models[0], "target") is None and cache.cached(models[0], layer) is b
    use(models[1], "target")
    use(models[2], "target")  # a third model: the least recently used one is dropped
    assert cache.cached(models[0], "target") is None and len(cache) == 2
    assert cache.cached(build(seed=5), "target") is None  # another model with the same layout
    with pytest.raises(ValueError, match="No layer"):
        use(models[1], "nope")
    assert cache.cached(models[1], "nope") is None  # a failed build is not kept


def test_last_conv_layer_is_still_found_once_per_model(images, monkeypatch):
    model = build(seed=8)
    calls = []
    real = kc.vizgradcam.last_conv_layer

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(kc.vizgradcam, "last_conv_layer", counting)
    for image in images:
        VizGradCAM(model, image, plot_results=False)
    assert len(calls) == 1 and last_conv_layer(model, images[:1]) == "target"

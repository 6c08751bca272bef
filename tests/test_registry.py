"""Every registered method, the same checks: batch == single calls, one trace per input
shape, no memory growth over 200 calls, the model unchanged, 1-D and 3-D layouts and
a ViT's token grid.

The definitions are checked number by number in each family's own test file
(test_gradcam.py, test_methods_family.py, test_methods_more.py, test_scorecam.py,
test_score_variants.py, test_ablation.py, test_attribution.py, test_fullgrad.py);
here every name of ``keras_cam.methods`` goes through the same invariances, so a
method registered later is covered by the line that registers it. Outside the reference mode
(Keras 3 on TensorFlow) they run on one method per code path (tests/slow.py).
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend, methods
from keras_cam._compat import keras, ops, to_host
from test_gradcam import _rss_mb, native_grad, traces
from slow import each_method
from test_layout import CLASSES, hand_vit, tiny_vit

H = W = 12
L = keras.layers

# Cheap settings for the methods that run many passes (the invariances do not depend on them).
CHEAP = {"sscam": {"samples": 2}, "iscam": {"steps": 2}, "smoothgradcampp": {"samples": 2},
         "smoothgrad": {"samples": 3}, "integratedgradients": {"steps": 4}}
CHEAP.update(lime={"samples": 8}, kernelshap={"coalitions": 8})
CHEAP.update(rise={"masks": 8}, sobolattribution={"designs": 2}, hsicattribution={"designs": 8})
# Methods without a layer give input-size maps with upsample=False, except those that score a grid
# of cells: their maps are the grid (8 cells per axis by default, at most the axis).
GRID_MAPS = {"sobolattribution": (8, 8), "hsicattribution": (8, 8)}
# Methods on superpixels: SLIC needs 2-D or 3-D inputs, so a signal takes `segments=` (windows here).
SUPERPIXELS = {"lime", "kernelshap"}


def create(name, model, **kw):
    return methods.create(name, model, layer="target", **{**CHEAP.get(name, {}), **kw})


def build(shape):
    """conv -> target conv -> GAP -> Dense softmax, at the spatial rank of ``shape``."""
    keras.utils.set_random_seed(3)
    conv, gap = {2: (L.Conv1D, L.GlobalAveragePooling1D), 3: (L.Conv2D, L.GlobalAveragePooling2D),
                 4: (L.Conv3D, L.GlobalAveragePooling3D)}[len(shape)]
    inp = keras.Input(shape)
    x = conv(4, 3, padding="same", activation="relu", name="conv1")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = conv(6, 3, strides=2, padding="same", activation="relu", name="target")(x)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="head")(gap()(x)))


@pytest.fixture(scope="module")
def model():
    return build((H, W, 3))


# The token-grid tests share one ViT and one explainer per method (``vit_cam``): on JAX each new
# explainer compiles its calls anew, and test_every_method_takes_reshape_and_is_quiet_by_default calls
# the default explainer on the same (2, 16, 16, 3) inputs as test_every_method_on_a_token_grid. No test
# changes the ViT's weights or an explainer's options; the tests that count traces or watch memory
# build their own explainer. (Sharing the models alone saves nothing: JAX's initializer compiles are
# already cached per shape.)
_MODELS = {}


def shared(make, *args, seed):
    """``make(*args)``, built once per module; the global seed is left as building it leaves it
    (``seed``), so what a test builds next draws as it did with a model of its own."""
    key = (make.__name__,) + args
    if key not in _MODELS:
        _MODELS[key] = make(*args)
    keras.utils.set_random_seed(seed)
    return _MODELS[key]


_VIT_CAMS = {}


def vit_cam(name, model):
    """``create(name, model)`` on the shared ViT, one per method: the token-grid tests call it on
    the same (2, 16, 16, 3) inputs, so its compiled calls serve them all."""
    if name not in _VIT_CAMS:
        _VIT_CAMS[name] = create(name, model)
    return _VIT_CAMS[name]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(-1, 1, (3, H, W, 3)).astype(np.float32)


NAMES = methods.names(attention=False)  # the attention methods: tests/test_attention.py


@pytest.mark.parametrize("name", each_method(NAMES))
def test_batch_equals_single_calls_and_one_trace_per_shape(model, images, name):
    cam = create(name, model, batch_size=2)
    batch = cam(images, targets=[0, 1, 2])
    assert batch.shape == images.shape[:-1] and np.isfinite(batch).all()
    for i in range(len(images)):
        np.testing.assert_allclose(cam(images[i], targets=i), batch[i], atol=2e-5)
    cam(images, targets=[2, 1, 0])  # the batch shape's second call: traced now (see base.Compiled)
    assert cam.tracing_count == traces(2)  # one trace per input shape
    for _ in range(3):
        cam(images, targets=[2, 1, 0])
        cam(images[0], targets=1)
    assert cam.tracing_count == traces(2)


@pytest.mark.parametrize("shape", [(16, 2), (6, 8, 8, 1)], ids=["signal", "volume"])
@pytest.mark.parametrize("name", each_method(NAMES))
def test_other_layouts(name, shape):
    """1-D signals and 3-D volumes: maps at the input's size, batch == single."""
    model = build(shape)
    x = np.random.default_rng(1).uniform(-1, 1, (2,) + shape).astype(np.float32)
    kw = {}
    if name in SUPERPIXELS and len(shape) == 2:
        with pytest.raises(ValueError, match="segments="):
            create(name, model)
        kw = {"segments": np.arange(shape[0]) // 4}
    cam = create(name, model, **kw)
    batch = cam(x, targets=1)
    assert batch.shape == x.shape[:-1] and np.isfinite(batch).all()
    assert 0 <= batch.min() and batch.max() <= 1
    for i in range(len(x)):
        np.testing.assert_allclose(cam(x[i], targets=1), batch[i], atol=2e-5)


@pytest.mark.parametrize("name", each_method(NAMES))
def test_no_memory_growth_and_model_unchanged(model, images, name):
    before = to_host(model(images))
    weights = [w.copy() for w in model.get_weights()]
    activations = {path: getattr(layer, "activation", None) for path, layer in kc.layers.walk(model)}
    cam = create(name, model)
    one = images[:1]
    for _ in range(20):  # warm up allocator pools
        cam(one)
    rss0 = _rss_mb()
    for _ in range(200):
        cam(one)
    growth = _rss_mb() - rss0
    assert cam.tracing_count <= 1
    assert growth < 25, f"{name}: memory grew by {growth:.1f} MB over 200 calls"
    np.testing.assert_array_equal(to_host(model(images)), before)
    for w0, w1 in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    for path, layer in kc.layers.walk(model):
        assert "call" not in vars(layer), path
        assert getattr(layer, "activation", None) is activations[path], path


# ---------------------------------------------------------------- token grids (a vision transformer)

TOKEN_FORMULAS = {  # raw maps from the patch tokens A and g = dS/dA laid on their grid
    "xgradcam": lambda a, g: np.maximum(
        (a * ((a * g).sum(axis=(1, 2), keepdims=True) / (a.sum(axis=(1, 2), keepdims=True) + 1e-7))).sum(-1), 0),
    "hirescam": lambda a, g: np.maximum((g * a).sum(-1), 0),
    "gradcamelementwise": lambda a, g: np.maximum(g * a, 0).sum(-1),
}


@pytest.mark.parametrize("name", sorted(TOKEN_FORMULAS))
def test_gradient_methods_on_vit_tokens_equal_the_hand_computation(name):
    model = shared(tiny_vit, seed=6)
    x = np.random.default_rng(2).uniform(size=(3, 16, 16, 3)).astype(np.float32)
    n, head = hand_vit(model, ops.convert_to_tensor(x))
    n = to_host(n)
    a = n[:, 1:].reshape(3, 4, 4, 8).astype(np.float64)  # the class token dropped
    cam = vit_cam(name, model)
    varied = 0
    for c in range(CLASSES):
        g = native_grad(lambda n: head(n)[:, c], n)[:, 1:].reshape(3, 4, 4, 8).astype(np.float64)
        expected = TOKEN_FORMULAS[name](a, g)
        varied += np.ptp(expected) > 0
        got = cam(x, targets=c, upsample=False, normalize=False)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * max(np.abs(expected).max(), 1e-6))
    assert varied  # not only all-zero maps


@pytest.mark.parametrize("name", each_method(NAMES))
def test_every_method_on_a_token_grid(name):
    """Every method explains a ViT at its token layer (the patch tokens on their 4 x 4 grid),
    batch == single; CAM, whose head must be pooling + Dense, says to use Grad-CAM."""
    model = shared(tiny_vit, seed=6)
    x = np.random.default_rng(3).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    if name == "cam":
        with pytest.raises(ValueError, match="GradCAM"):
            create(name, model)
        return
    cam = vit_cam(name, model)
    raw = cam(x, targets=1, upsample=False, normalize=False)
    assert raw.shape[1:] == (GRID_MAPS.get(name, (16, 16)) if not cam.uses_layer else (4, 4)) + (() if raw.ndim == 3 else (3,))
    batch = cam(x, targets=1)
    assert batch.shape == (2, 16, 16) and np.isfinite(batch).all()
    for i in range(len(x)):
        np.testing.assert_allclose(cam(x[i], targets=1), batch[i], atol=2e-5)


@pytest.mark.parametrize("name", each_method(NAMES))
def test_every_method_takes_reshape_and_is_quiet_by_default(name, capsys):
    """`reshape=` is an option of every explainer (docs/layouts.md): on a ViT's token layer
    the grid given as (h, w) gives the maps of the inferred grid, and another grid lays the
    tokens out as asked. Built directly (not through methods.create), no method draws a
    progress bar unless told to (verbose=0 by default)."""
    model = shared(tiny_vit, seed=6)
    x = np.random.default_rng(5).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    cls = methods.get(name)

    def build(**kw):
        kw = {**CHEAP.get(name, {}), **kw}
        return cls(model, **kw) if not cls.uses_layer else cls(model, "target", **kw)

    if name == "cam":  # its head must be pooling + Dense, whatever the grid
        for reshape in (None, (4, 4)):
            with pytest.raises(ValueError, match="GradCAM"):
                build(reshape=reshape)
        return
    cam = build(reshape=(4, 4))
    assert getattr(cam, "verbose", 0) == 0
    given = cam(x, targets=1, upsample=False, normalize=False)
    assert capsys.readouterr().out == ""
    inferred = vit_cam(name, model)(x, targets=1, upsample=False, normalize=False)
    np.testing.assert_allclose(given, inferred, rtol=1e-6, atol=1e-7)
    other = build(reshape=(2, 8))(x[:1], targets=1, upsample=False, normalize=False)
    assert other.shape[1:3] == (GRID_MAPS.get(name, (16, 16)) if not cls.uses_layer else (2, 8))


def test_create_builds_every_method_silent(model, images, capsys):
    """Methods that draw a progress bar are built with verbose=0 by the registry, also
    when their own __init__ passes the option on through **kwargs (ISCAM, SSCAM)."""
    for name in NAMES:
        cam = create(name, model)
        assert getattr(cam, "verbose", 0) == 0, name
        cam(images[:1])
    assert capsys.readouterr().out == ""
    assert methods.create("iscam", model, layer="target", verbose=1).verbose == 1


@pytest.mark.parametrize("name", each_method(NAMES))
def test_explain_dataset_equals_the_explainer(model, name):
    """Every method through explain_dataset (its compute, compiled per batch shape, with a
    partial last batch) gives the explainer's own maps for the labelled classes."""
    from keras_cam.dataset import explain_dataset

    x = np.random.default_rng(4).uniform(-1, 1, (5, H, W, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0])
    cam = create(name, model)
    if backend.name() == "tensorflow":
        import tensorflow as tf
        data = tf.data.Dataset.from_tensor_slices((x, y))
    else:
        data = list(zip(x, y))  # single (image, label) pairs, as the tf.data one yields
    results = list(explain_dataset(cam, data, batch_size=2, verbose=0))
    assert [len(r.maps) for r in results] == [2, 2, 1]
    np.testing.assert_allclose(np.concatenate([r.maps for r in results]), cam(x, targets=y), atol=2e-5)

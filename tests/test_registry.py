"""Every registered method, the same checks: batch == single calls, one trace per input
shape, no memory growth over 200 calls, the model unchanged, and a second layout.

The definitions are checked number by number in each family's own test file
(test_gradcam.py, test_methods_family.py, test_methods_more.py, test_scorecam.py,
test_score_variants.py, test_ablation.py, test_attribution.py, test_fullgrad.py);
here every name of ``keras_cam.methods`` goes through the same invariances, so a
method registered later is covered by the line that registers it.
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import methods
from keras_cam._compat import keras

H = W = 12
L = keras.layers

# Cheap settings for the methods that run many passes (the invariances do not depend on them).
CHEAP = {"sscam": {"samples": 2}, "iscam": {"steps": 2}, "smoothgradcampp": {"samples": 2},
         "smoothgrad": {"samples": 3}, "integratedgradients": {"steps": 4}}


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


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(-1, 1, (3, H, W, 3)).astype(np.float32)


NAMES = methods.names()


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_single_calls_and_one_trace_per_shape(model, images, name):
    cam = create(name, model, batch_size=2)
    batch = cam(images, targets=[0, 1, 2])
    assert batch.shape == images.shape[:-1] and np.isfinite(batch).all()
    for i in range(len(images)):
        np.testing.assert_allclose(cam(images[i], targets=i), batch[i], atol=2e-5)
    cam(images, targets=[2, 1, 0])  # the batch shape's second call: traced now (see base.Compiled)
    assert cam.tracing_count == 2  # one trace per input shape
    for _ in range(3):
        cam(images, targets=[2, 1, 0])
        cam(images[0], targets=1)
    assert cam.tracing_count == 2


@pytest.mark.parametrize("shape", [(16, 2), (6, 8, 8, 1)], ids=["signal", "volume"])
@pytest.mark.parametrize("name", NAMES)
def test_other_layouts(name, shape):
    """1-D signals and 3-D volumes: maps at the input's size, batch == single."""
    model = build(shape)
    x = np.random.default_rng(1).uniform(-1, 1, (2,) + shape).astype(np.float32)
    cam = create(name, model)
    batch = cam(x, targets=1)
    assert batch.shape == x.shape[:-1] and np.isfinite(batch).all()
    assert 0 <= batch.min() and batch.max() <= 1
    for i in range(len(x)):
        np.testing.assert_allclose(cam(x[i], targets=1), batch[i], atol=2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_no_memory_growth_and_model_unchanged(model, images, name):
    before = np.asarray(model(images))
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
    np.testing.assert_array_equal(np.asarray(model(images)), before)
    for w0, w1 in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    for path, layer in kc.layers.walk(model):
        assert "call" not in vars(layer), path
        assert getattr(layer, "activation", None) is activations[path], path


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

"""The built-in demo: the generated dataset, the shipped model, the method registry.

The dataset is checked from its pixels alone (each box holds exactly the
flat-coloured object; each class's shape has its closed-form fill ratio), the
model by its accuracy on images it never saw, by agreeing between Keras 3
and tf-keras and with a NumPy forward pass of the shipped weights (on every
backend), the registry by building every method on the demo model.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import methods
from keras_cam._compat import keras, to_host
from keras_cam.demo import CLASS_NAMES, IMAGE_SIZE, TARGET_LAYER, build_model, load_model, make_dataset
from keras_cam.demo.model import SHORTCUT_WEIGHTS_PATH, WEIGHTS_PATH, load_shortcut_model, save_weights, weights_of
from keras_cam.demo.run import box_share, one_per_class
from slow import each_method

N = 160


@pytest.fixture(scope="module")
def data():
    return make_dataset(N, seed=123)  # the model was trained on seed 0


@pytest.fixture(scope="module")
def model():
    return load_model()


def object_mask(image, box):
    """The pixels of the flat colour that is most frequent inside ``box``."""
    y0, x0, y1, x1 = box
    colours, counts = np.unique(image[y0:y1, x0:x1].reshape(-1, 3), axis=0, return_counts=True)
    return (image == colours[counts.argmax()]).all(axis=-1)


def test_dataset_is_determined_by_its_seed():
    a, b = make_dataset(6, seed=3), make_dataset(6, seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], make_dataset(6, seed=4)[0])


def test_dataset_shapes_types_and_balance(data):
    images, labels, boxes = data
    assert images.shape == (N, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.float32
    assert labels.shape == (N,) and boxes.shape == (N, 4) and boxes.dtype == np.int32
    assert 0.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(labels), [N // len(CLASS_NAMES)] * len(CLASS_NAMES))
    y0, x0, y1, x1 = boxes.T
    assert (0 <= y0).all() and (y0 < y1).all() and (y1 <= IMAGE_SIZE).all()
    assert (0 <= x0).all() and (x0 < x1).all() and (x1 <= IMAGE_SIZE).all()


def test_each_box_is_the_tight_box_of_the_drawn_object(data):
    images, _, boxes = data
    for image, box in zip(images, boxes):
        y0, x0, y1, x1 = box
        mask = object_mask(image, box)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        # Nothing of the object's colour outside the box, and it touches all four edges.
        assert (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) == tuple(box)
        inside = mask[y0:y1, x0:x1]
        assert inside.mean() > 0.4
        colour = image[mask][0]
        background = image[~mask].mean(axis=0)
        assert np.linalg.norm(colour - background) > 0.3  # the object is visible


def test_each_class_has_its_shape(data):
    """Fill ratio of the box (area / box area) and 180-degree symmetry, per class."""
    images, labels, boxes = data
    fill, symmetry = {k: [] for k in range(4)}, {k: [] for k in range(4)}
    for image, label, box in zip(images, labels, boxes):
        y0, x0, y1, x1 = box
        m = object_mask(image, box)[y0:y1, x0:x1]
        turned = m[::-1, ::-1]
        fill[label].append(m.mean())
        symmetry[label].append((m & turned).sum() / (m | turned).sum())
    circle, square, triangle, cross = (CLASS_NAMES.index(c) for c in ("circle", "square", "triangle", "cross"))
    # A disc fills pi/4 of its box.
    assert abs(np.mean(fill[circle]) - np.pi / 4) < 0.03
    # A square turned by t <= 20 degrees fills 1 / (cos t + sin t)^2 >= 0.62 of its box.
    assert min(fill[square]) > 1 / (np.cos(np.radians(20)) + np.sin(np.radians(20))) ** 2 - 0.05
    # Upright equilateral triangle: half its box. Plus of arm a = 0.813 R, half-bar b = R / 4:
    # (8ab - 4b^2) / (2a)^2 = 0.52.
    assert abs(np.mean(fill[triangle]) - 0.5) < 0.04
    assert abs(np.mean(fill[cross]) - 0.52) < 0.04
    # Only the triangle changes under a half turn.
    assert max(symmetry[triangle]) < 0.6
    assert min(min(symmetry[k]) for k in (circle, square, cross)) > 0.65


def test_make_dataset_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`n`"):
        make_dataset(0)
    with pytest.raises(ValueError, match="`size`"):
        make_dataset(2, size=16)


def test_shipped_model_is_accurate_on_fresh_images(model, data):
    images, labels, _ = data
    probs = to_host(model(images, training=False))
    accuracy = float(np.mean(probs.argmax(-1) == labels))
    assert accuracy >= 0.95, accuracy
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_shipped_model_is_small_and_cam_ready(model):
    assert model.count_params() < 100_000
    # GAP + Dense after the target layer: the CAM architecture.
    names = [layer.name for layer in model.layers]
    assert names[-3:] == [TARGET_LAYER, "gap", "predictions"]
    assert kc.GradCAM(model).layer_path == TARGET_LAYER  # the automatic choice agrees


@pytest.mark.tensorflow_only
def test_keras3_and_tf_keras_load_the_same_model(data):
    import keras as keras3
    import tf_keras

    images = data[0][:16]
    p3 = to_host(load_model(keras=keras3)(images, training=False))
    p2 = np.asarray(load_model(keras=tf_keras)(images, training=False))
    np.testing.assert_allclose(p3, p2, atol=1e-5)


def test_gradcam_on_the_demo_model_points_into_the_boxes(model, data):
    images, _, boxes = data
    maps = kc.GradCAM(model)(images)
    peaks = np.array([np.unravel_index(m.argmax(), m.shape) for m in maps])
    hit = ((peaks[:, 0] >= boxes[:, 0]) & (peaks[:, 0] < boxes[:, 2])
           & (peaks[:, 1] >= boxes[:, 1]) & (peaks[:, 1] < boxes[:, 3]))
    assert hit.mean() >= 0.8, hit.mean()


def test_weights_round_trip(tmp_path):
    fresh = build_model(keras)
    path = str(tmp_path / "w.npz")
    save_weights(fresh, path)
    loaded = load_model(path)
    for key, value in weights_of(fresh).items():
        np.testing.assert_array_equal(weights_of(loaded)[key], value)
    x = make_dataset(2, seed=9)[0]
    np.testing.assert_allclose(to_host(loaded(x)), to_host(fresh(x)), atol=1e-6)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(str(tmp_path / "missing.npz"))
    bad = dict(weights_of(build_model(keras)))
    bad["conv1/0"] = np.zeros((5, 5, 3, 16), np.float32)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="conv1/0 has shape"):
        load_model(str(tmp_path / "bad.npz"))
    bad["conv1/0"] = weights_of(build_model(keras))["conv1/0"]
    del bad["predictions/1"]
    np.savez(tmp_path / "short.npz", **bad)
    with pytest.raises(ValueError, match="lack"):
        load_model(str(tmp_path / "short.npz"))
    # A torn file (half of a good one, as an interrupted copy leaves it) and an extra array.
    good = (tmp_path / "short.npz").read_bytes()
    (tmp_path / "torn.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cannot be read .*damaged"):
        load_model(str(tmp_path / "torn.npz"))
    np.savez(tmp_path / "extra.npz", **weights_of(build_model(keras)), stray=np.zeros(3))
    with pytest.raises(ValueError, match="1 arrays the Demo architecture does not have"):
        load_model(str(tmp_path / "extra.npz"))


def test_demo_helpers():
    labels = np.array([2, 0, 0, 1, 2, 1, 0])
    np.testing.assert_array_equal(one_per_class(labels, 5), [1, 3, 0, 2, 5])
    np.testing.assert_array_equal(one_per_class(labels, 9), [1, 3, 0, 2, 5, 4, 6])
    boxes = np.array([[0, 0, 2, 4], [1, 1, 3, 3]])  # areas 8 and 4 in a 4x4 image
    assert box_share(boxes, (4, 4)) == pytest.approx((8 / 16 + 4 / 16) / 2)


def test_registry_names_and_spellings():
    assert methods.names()[:2] == ["gradcam", "gradcampp"]
    for spelling in ("Grad-CAM++", "grad_cam_pp", "GRADCAMPP", "gradcam++"):
        assert methods.get(spelling) is kc.GradCAMPlusPlus
    assert methods.get("Score-CAM") is kc.ScoreCAM
    with pytest.raises(ValueError, match="Unknown method 'nope'.*gradcam"):
        methods.get("nope")
    with pytest.raises(TypeError):
        methods.get(3)


@pytest.mark.parametrize("name", each_method(methods.names(attention=False)))  # the demo model is a CNN
def test_every_registered_method_explains_the_demo_model(model, data, name):
    images = data[0][:2]
    explainer = methods.create(name, model, layer=TARGET_LAYER)
    assert isinstance(explainer, kc.Explainer)
    maps = explainer(images)
    assert maps.shape == (2, IMAGE_SIZE, IMAGE_SIZE)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() == pytest.approx(1.0)


# ---------------------------------------------------------------- every backend

def numpy_forward(weights, images):
    """The demo architecture (``build_model``'s docstring) in NumPy, float64, from a weights file."""
    def conv_bn_relu(x, name):
        kernel = weights[f"{name}/0"]
        pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        h, w = x.shape[1:3]
        y = sum(pad[:, i:i + h, j:j + w] @ kernel[i, j] for i in range(3) for j in range(3))
        gamma, beta, mean, var = (weights[f"{name}_bn/{k}"] for k in range(4))
        return np.maximum((y - mean) / np.sqrt(var + 1e-3) * gamma + beta, 0)

    def pool(x, reduce):
        n, h, w, c = x.shape
        return reduce(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))

    x = images.astype(np.float64)
    mean, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    x = pool((x - mean) / np.sqrt(var + 1e-3), np.mean)           # LayerNormalization(axis=(1, 2)), eps 1e-3
    x = pool(conv_bn_relu(x, "conv1"), np.max)
    for name in ("conv2", "conv3", "conv4"):
        x = conv_bn_relu(x, name)
    logits = x.mean(axis=(1, 2)) @ weights["predictions/0"] + weights["predictions/1"]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("path, load", [(WEIGHTS_PATH, load_model), (SHORTCUT_WEIGHTS_PATH, load_shortcut_model)])
def test_shipped_weights_give_the_numpy_predictions_on_this_backend(data, path, load):
    """Both shipped files load on the running backend and predict what NumPy computes
    from the same arrays (a second code path, independent of any backend)."""
    images = data[0][:24]
    with np.load(path) as stored:
        weights = {k: v.astype(np.float64) for k, v in stored.items()}
    expected = numpy_forward(weights, images)
    model = load()
    np.testing.assert_allclose(np.asarray(model.predict(images, verbose=0)), expected, atol=2e-5)
    np.testing.assert_allclose(to_host(model(images, training=False)), expected, atol=2e-5)
    assert expected.max(-1).mean() > 0.5   # confident predictions, not a flat softmax


_TRAIN = """
import sys
from keras_cam.demo.model import save_weights
from keras_cam.demo.train import accuracy, main, train
main(["--n-train", "48", "--epochs", "1", "--out", sys.argv[1]])
model, wall, cpu = train(48, 1, verbose=0)
save_weights(model, sys.argv[2])
print("accuracy", accuracy(model, n=40))
"""


def test_training_helpers_run_and_repeat_on_this_backend(tmp_path):
    """``python -m keras_cam.demo.train`` (its ``main``) and ``train`` on the running backend,
    in a subprocess (training sets global seeds): the same seed gives the same weights,
    which load back and predict as the trained model did."""
    first, second = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    proc = subprocess.run([sys.executable, "-c", _TRAIN, first, second], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert "accuracy on 1000 fresh images" in lines[-2] and first in lines[-2]
    a, b = np.load(first), np.load(second)
    assert sorted(a.files) == sorted(weights_of(build_model(keras)))
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["conv1/0"], np.load(WEIGHTS_PATH)["conv1/0"])
    printed = float(lines[-1].split()[-1])
    images, labels, _ = make_dataset(40, seed=1)
    predicted = load_model(first).predict(images, verbose=0).argmax(-1)
    assert printed == pytest.approx(float(np.mean(predicted == labels)))

"""The built-in demo: the generated dataset, the shipped model, the method registry.

The dataset is checked from its pixels alone (each box holds exactly the
flat-coloured object; each class's shape has its closed-form fill ratio), the
model by its accuracy on images it never saw and by agreeing between Keras 3
and tf-keras, the registry by building every method on the demo model.
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import methods
from keras_cam._compat import keras
from keras_cam.demo import CLASS_NAMES, IMAGE_SIZE, TARGET_LAYER, build_model, load_model, make_dataset
from keras_cam.demo.model import save_weights, weights_of
from keras_cam.demo.run import box_share, one_per_class

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
    probs = np.asarray(model(images, training=False))
    accuracy = float(np.mean(probs.argmax(-1) == labels))
    assert accuracy >= 0.95, accuracy
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_shipped_model_is_small_and_cam_ready(model):
    assert model.count_params() < 100_000
    # GAP + Dense after the target layer: the CAM architecture.
    names = [layer.name for layer in model.layers]
    assert names[-3:] == [TARGET_LAYER, "gap", "predictions"]
    assert kc.GradCAM(model).layer_path == TARGET_LAYER  # the automatic choice agrees


def test_keras3_and_tf_keras_load_the_same_model(data):
    import keras as keras3
    import tf_keras

    images = data[0][:16]
    p3 = np.asarray(load_model(keras=keras3)(images, training=False))
    p2 = load_model(keras=tf_keras)(images, training=False).numpy()
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
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(fresh(x)), atol=1e-6)


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


def test_every_registered_method_explains_the_demo_model(model, data):
    images = data[0][:2]
    for name in methods.names():
        explainer = methods.create(name, model, layer=TARGET_LAYER)
        assert isinstance(explainer, kc.Explainer)
        maps = explainer(images)
        assert maps.shape == (2, IMAGE_SIZE, IMAGE_SIZE), name
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() == pytest.approx(1.0), name

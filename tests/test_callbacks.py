"""CAMCallback: maps of the model as it trains, written as PNG and TensorBoard images.

Expected values come from a fresh explainer built on the trained model after
``fit`` (the callback must have used the live weights), from
``keras_cam.metrics`` called directly, and from the PNG files themselves
(the TensorBoard image must be the same picture).
"""

import glob
import os
import warnings

import cv2
import numpy as np
import pytest
import tensorflow as tf

import keras_cam as kc
from keras_cam._compat import keras
from keras_cam.callbacks import CAMCallback, grid
from keras_cam.viz import overlay

SIZE, CLASSES = 32, 3


def make_model(with_input=True):
    layers = [
        keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES, activation="softmax", name="head"),
    ]
    if with_input:
        layers.insert(0, keras.Input((SIZE, SIZE, 3)))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    y = rng.integers(0, CLASSES, 48)
    x = rng.random((48, SIZE, SIZE, 3), dtype=np.float32) * 0.3
    for i, k in enumerate(y):  # a patch at a random place, pure colour k = the class
        r, c = rng.integers(0, SIZE - 8, 2)
        x[i, r:r + 8, c:c + 8] = 0.0
        x[i, r:r + 8, c:c + 8, k] = 1.0
    return x, y


def read_events(log_dir):
    """``{tag: {step: value}}``: PNG bytes for images, floats for scalars."""
    found = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                is_image = value.tensor.dtype == tf.string.as_datatype_enum
                assert value.metadata.plugin_data.plugin_name == ("images" if is_image else "scalars")
                array = tf.make_ndarray(value.tensor)
                found.setdefault(value.tag, {})[event.step] = (
                    array[2] if array.dtype == object else float(array))
    return found


def decode(png_bytes):
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(png_bytes, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_every_epoch_png_tensorboard_and_live_weights(data, tmp_path):
    x, y = data
    keras.utils.set_random_seed(0)
    model = make_model()
    images = x[:5]
    cb = CAMCallback(images, log_dir=tmp_path, class_names=["top", "middle", "bottom"])
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[cb])

    assert sorted(os.listdir(tmp_path)) == ["epoch_001.png", "epoch_002.png", "epoch_003.png"] + sorted(
        p for p in os.listdir(tmp_path) if p.startswith("events"))
    assert [r["epoch"] for r in cb.records] == [1, 2, 3] and not cb.errors
    assert cb.explainer.tracing_count == 1          # one explainer, traced once, for all epochs
    assert cb.records[0]["probabilities"] != cb.records[2]["probabilities"]  # the weights moved

    # The last picture is what a fresh explainer on the trained model shows.
    fresh = kc.GradCAM(model).explain(images)
    assert (fresh.maps.max(axis=(1, 2)) > 0).all()   # maps with something to show
    assert cb.records[-1]["targets"] == fresh.targets.tolist()
    np.testing.assert_allclose(cb.records[-1]["probabilities"], fresh.probabilities, atol=1e-5)
    expected = grid(images, fresh, ["top", "middle", "bottom"], title="epoch 3  GradCAM  conv2")
    png = cv2.cvtColor(cv2.imread(str(tmp_path / "epoch_003.png")), cv2.COLOR_BGR2RGB)
    assert png.shape == expected.shape
    assert np.mean(png != expected) < 1e-3   # equal up to float rounding in a few overlay pixels

    # Faithfulness scalars equal the metrics computed directly on those maps.
    events = read_events(str(tmp_path))
    assert set(events["cam/GradCAM"]) == {1, 2, 3}
    np.testing.assert_array_equal(decode(events["cam/GradCAM"][3]), png)
    drop = kc.metrics.average_drop(model, images, fresh.maps, fresh.targets)
    rise = kc.metrics.increase_in_confidence(model, images, fresh.maps, fresh.targets)
    assert events["cam/average_drop"][3] == pytest.approx(drop, abs=1e-3)
    assert events["cam/increase_in_confidence"][3] == pytest.approx(rise, abs=1e-3)
    assert cb.records[-1]["average_drop"] == pytest.approx(drop, abs=1e-3)

    # Training again goes on with the same explainer: no rebuild, no retrace.
    explainer = cb.explainer
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    assert cb.explainer is explainer and explainer.tracing_count == 1


def test_grid_layout():
    rng = np.random.default_rng(0)
    images = rng.random((10, 16, 16, 3), dtype=np.float32)
    maps = rng.random((10, 16, 16), dtype=np.float32)
    result = kc.Explanation(maps=maps, targets=np.arange(10) % 3, scores=np.zeros(10),
                            probabilities=np.full(10, 0.5))
    picture = grid(images, result, columns=4, title="t")
    tile_h, tile_w = 128 * 2 + 18 + 4, 128 + 4   # 16 px enlarged 8x: image, overlay, caption, border
    assert picture.shape == (20 + 3 * tile_h, 4 * tile_w, 3)
    # Image 5 is in row 1, column 1: its enlarged picture, then its overlay below.
    top, left = 20 + tile_h + 2, tile_w + 2
    big = np.kron((images[5] * 255).round().astype(np.uint8), np.ones((8, 8, 1), np.uint8))
    np.testing.assert_array_equal(picture[top:top + 128, left:left + 128], big)
    np.testing.assert_array_equal(picture[top + 128:top + 256, left:left + 128], overlay(big, maps[5]))
    assert (picture[20 + 2 * tile_h:, 2 * tile_w:] == 255).all()   # the last row is padded blank


def test_every_and_train_end(data, tmp_path):
    x, y = data
    keras.utils.set_random_seed(0)
    model = make_model()
    cb = CAMCallback(x[:2], every=2, log_dir=tmp_path / "a", tensorboard=False, metrics=())
    model.fit(x[:16], y[:16], batch_size=16, epochs=5, verbose=0, callbacks=[cb])
    assert [r["epoch"] for r in cb.records] == [2, 4, 5]
    assert sorted(os.listdir(tmp_path / "a")) == ["epoch_002.png", "epoch_004.png", "epoch_005.png"]
    cb = CAMCallback(x[:2], every=2, log_dir=tmp_path / "b", save_png=False, at_train_end=False)
    model.fit(x[:16], y[:16], batch_size=16, epochs=5, verbose=0, callbacks=[cb])
    assert [r["epoch"] for r in cb.records] == [2, 4]
    assert not glob.glob(str(tmp_path / "b" / "*.png")) and glob.glob(str(tmp_path / "b" / "events*"))


def test_unbuilt_model_tf_data_validation_and_callable_target(data, tmp_path):
    x, y = data
    keras.utils.set_random_seed(0)
    model = make_model(with_input=False)           # built by fit, after the callback exists
    assert not model.built
    cb = CAMCallback(x[:3], targets=lambda out: out[:, 1], method="gradcam++", log_dir=tmp_path)
    train = tf.data.Dataset.from_tensor_slices((x[:32], y[:32])).batch(8)
    val = tf.data.Dataset.from_tensor_slices((x[32:], y[32:])).batch(8)
    history = model.fit(train, validation_data=val, epochs=2, verbose=0, callbacks=[cb])
    assert "val_loss" in history.history and not cb.errors
    assert isinstance(cb.explainer, kc.GradCAMPlusPlus) and cb.explainer.layer_path == "conv2"
    assert [r["epoch"] for r in cb.records] == [1, 2]
    assert cb.records[-1]["targets"] is None and "average_drop" not in cb.records[-1]
    events = read_events(str(tmp_path))
    assert set(events) == {"cam/GradCAMPlusPlus"}   # no class, so no faithfulness scalars


def test_inside_a_strategy_scope(data, tmp_path):
    x, y = data
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = make_model()
        cb = CAMCallback(x[:4], targets=[0, 1, 2, 0], log_dir=tmp_path, metrics=["average_drop"])
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb])
    assert not cb.errors and [r["epoch"] for r in cb.records] == [1, 2]
    fresh = kc.GradCAM(model).explain(x[:4], targets=[0, 1, 2, 0])
    np.testing.assert_allclose(cb.records[-1]["probabilities"], fresh.probabilities, atol=1e-5)
    assert set(read_events(str(tmp_path))) == {"cam/GradCAM", "cam/average_drop"}


def test_errors_warn_once_and_training_goes_on(data, tmp_path):
    x, y = data
    keras.utils.set_random_seed(0)
    model = make_model()
    cb = CAMCallback(x[:2], layer="no_such_layer", log_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x[:16], y[:16], batch_size=8, epochs=3, verbose=0, callbacks=[cb])
    ours = [w for w in caught if "CAMCallback" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning)
    assert "after epoch 1" in str(ours[0].message) and "no_such_layer" in str(ours[0].message)
    assert len(history.history["loss"]) == 3
    assert [e for e, _ in cb.errors] == [1, 2, 3] and not cb.records


def test_interrupted_write_leaves_no_partial_png(data, tmp_path, monkeypatch):
    x, y = data
    keras.utils.set_random_seed(0)
    model = make_model()
    cb = CAMCallback(x[:2], log_dir=tmp_path, tensorboard=False, metrics=())

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.warns(RuntimeWarning, match="disk full"):
        model.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert os.listdir(tmp_path) == []               # neither a half PNG nor a temporary file
    monkeypatch.undo()
    model.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert os.listdir(tmp_path) == ["epoch_001.png"]
    assert cv2.imread(str(tmp_path / "epoch_001.png")) is not None


def test_bad_arguments(data):
    x, _ = data
    with pytest.raises(ValueError, match="every"):
        CAMCallback(x[:2], every=0)
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        CAMCallback(x[:2], method="nope")
    with pytest.raises(TypeError, match="method"):
        CAMCallback(x[:2], method=3)
    with pytest.raises(ValueError, match="metrics"):
        CAMCallback(x[:2], metrics=["accuracy"])
    with pytest.raises(ValueError, match="2 entries for 3 images"):
        CAMCallback(x[:3], targets=[0, 1])
    # A 2-D array could be one (T, C) signal: it is read against the model's layout when
    # Keras hands the callback its model, before the first epoch.
    with pytest.raises(ValueError, match=r"must be one example, an image \(H, W, C\), or a batch"):
        CAMCallback(x[0, :, :, 0]).set_model(make_model())

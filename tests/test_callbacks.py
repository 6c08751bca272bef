"""CAMCallback: maps of the model as it trains, written as PNG and TensorBoard images.

Expected values come from a fresh explainer built on the trained model after
``fit`` (the callback must have used the live weights), from
``keras_cam.metrics`` called directly, and from the PNG files themselves
(the TensorBoard image must be the same picture). The event files are read
by TensorFlow's own reader (in a TensorFlow subprocess when the backend is
JAX or PyTorch), and the maps of every epoch are checked against Grad-CAM's
closed form for a pooled linear head, computed in NumPy.
"""

import base64
import glob
import importlib.util
import json
import os
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend
from keras_cam._compat import keras, to_host
from keras_cam.callbacks import CAMCallback, EventFileWriter, crc32c, grid
from keras_cam.viz import overlay, resize_linear

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


_READER = """
import base64, glob, json, os, sys


def read(log_dir):
    import tensorflow as tf

    found = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                is_image = value.tensor.dtype == tf.string.as_datatype_enum
                plugin = value.metadata.plugin_data.plugin_name
                assert plugin == ("images" if is_image else "scalars"), plugin
                array = tf.make_ndarray(value.tensor)
                if is_image:
                    assert array.shape == (3,), array.shape
                    entry = [int(array[0]), int(array[1]), base64.b64encode(array[2]).decode()]
                else:
                    assert array.shape == (), array.shape
                    entry = float(array)
                found.setdefault(value.tag, {})[str(event.step)] = entry
    return found


if __name__ == "__main__":
    print(json.dumps(read(sys.argv[1])))
"""


def read_events(log_dir):
    """``{tag: {step: value}}`` as TensorFlow reads the event files: PNG bytes for images
    (whose stored width and height must be the PNG's), floats for scalars. On JAX and
    PyTorch, TensorFlow reads them in a subprocess."""
    if backend.is_tensorflow():
        namespace = {"__name__": "reader"}
        exec(_READER, namespace)  # noqa: S102 (the reader above)
        raw = namespace["read"](str(log_dir))
    else:
        if importlib.util.find_spec("tensorflow") is None:
            pytest.skip("reading TensorBoard event files needs TensorFlow's reader")
        env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TF_USE_LEGACY_KERAS")}
        proc = subprocess.run([sys.executable, "-c", _READER, str(log_dir)], capture_output=True, text=True,
                              timeout=300, env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        raw = json.loads(proc.stdout.strip().splitlines()[-1])
    found = {}
    for tag, steps in raw.items():
        for step, entry in steps.items():
            if isinstance(entry, list):
                width, height, png = entry[0], entry[1], base64.b64decode(entry[2])
                assert decode(png).shape[:2] == (height, width)
                entry = png
            found.setdefault(tag, {})[int(step)] = entry
    return found


def traces(n):
    """The tracing count after ``n`` compiled signatures (``tf.function`` or ``jax.jit``);
    PyTorch runs eagerly and reports none."""
    return 0 if backend.name() == "torch" else n


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
    assert cb.explainer.tracing_count == traces(1)  # one explainer, traced once, for all epochs
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
    assert cb.explainer is explainer and explainer.tracing_count == traces(1)


@pytest.mark.parametrize("output", [None, 0, 1, "second"])
def test_a_multi_output_model_explains_and_scores_the_chosen_output(data, tmp_path, output):
    """A model with two classifier heads (as a dict when ``output`` is a key): the callback explains the
    output it is given (the first without one), and its metrics score that output, equal to the metrics
    of a model of that output alone, computed directly after training."""
    x, y = data
    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 3))
    a = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(a)
    heads = [keras.layers.Dense(CLASSES, activation="softmax", name=name)(pooled) for name in ("first", "second")]
    keyed = isinstance(output, str)
    model = keras.Model(inputs, {"first": heads[0], "second": heads[1]} if keyed else heads)
    labels = {"first": y, "second": (y + 1) % CLASSES} if keyed else (y, (y + 1) % CLASSES)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=["sparse_categorical_crossentropy"] * 2
                  if not keyed else {"first": "sparse_categorical_crossentropy",
                                     "second": "sparse_categorical_crossentropy"})
    images = x[:4]
    cb = CAMCallback(images, log_dir=tmp_path, tensorboard=False, save_png=False, output=output)
    model.fit(x, labels, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    assert not cb.errors and len(cb.records) == 1
    index = {None: 0, 0: 0, 1: 1, "second": 1}[output]
    fresh = kc.GradCAM(model, layer="conv", output=output).explain(images)
    np.testing.assert_allclose(cb.last.maps, fresh.maps, atol=1e-5)
    alone = keras.Model(inputs, heads[index])
    np.testing.assert_allclose(cb.last.probabilities,
                               to_host(alone(images))[np.arange(4), fresh.targets], atol=1e-5)
    drop = kc.metrics.average_drop(alone, images, fresh.maps, fresh.targets)
    assert cb.records[0]["average_drop"] == pytest.approx(drop, abs=1e-4)
    assert len(model.outputs) == 2   # the user's model is as it was
    if output == 1:    # an output the model does not have fails before the first epoch, naming the outputs
        weights = [w.copy() for w in model.get_weights()]
        wrong = CAMCallback(images, log_dir=tmp_path, tensorboard=False, save_png=False, output=2)
        with pytest.raises(ValueError, match="output"):
            model.fit(x, labels, batch_size=16, epochs=1, verbose=0, callbacks=[wrong])
        assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


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


class Batches(getattr(keras.utils, "PyDataset", None) or keras.utils.Sequence):
    """Batches of 8 as a Keras dataset (``PyDataset``; tf-keras's ``Sequence``)."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return -(-len(self.x) // 8)

    def __getitem__(self, i):
        return self.x[8 * i:8 * i + 8], self.y[8 * i:8 * i + 8]


def batches(kind, x, y):
    if kind == "tf.data":
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    return Batches(x, y)


@pytest.mark.parametrize("kind", [pytest.param("tf.data", marks=pytest.mark.tensorflow_only), "dataset"])
def test_unbuilt_model_datasets_validation_and_callable_target(data, tmp_path, kind):
    x, y = data
    keras.utils.set_random_seed(0)
    model = make_model(with_input=False)           # built by fit, after the callback exists
    assert not model.built
    cb = CAMCallback(x[:3], targets=lambda out: out[:, 1], method="gradcam++", log_dir=tmp_path)
    train, val = batches(kind, x[:32], y[:32]), batches(kind, x[32:], y[32:])
    history = model.fit(train, validation_data=val, epochs=2, verbose=0, callbacks=[cb])
    assert "val_loss" in history.history and not cb.errors
    assert isinstance(cb.explainer, kc.GradCAMPlusPlus) and cb.explainer.layer_path == "conv2"
    assert [r["epoch"] for r in cb.records] == [1, 2]
    assert cb.records[-1]["targets"] is None and "average_drop" not in cb.records[-1]
    events = read_events(str(tmp_path))
    assert set(events) == {"cam/GradCAMPlusPlus"}   # no class, so no faithfulness scalars


@pytest.mark.tensorflow_only
def test_inside_a_strategy_scope(data, tmp_path):
    import tensorflow as tf

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


# ---------------------------------------------------------------- every backend: maps and event files

def closed_form_gradcam(model, images):
    """Grad-CAM at ``conv2`` of each image's top logit, in NumPy: after ``conv2`` come
    global average pooling and ``Dense`` (kernel ``W``), so the logit of class c is
    ``sum_k W_kc mean_ij A^k_ij + b_c`` and its gradient is ``W_kc / (h w)`` everywhere:
    the map is ``relu(sum_k W_kc A^k)``, resized (half-pixel bilinear) and min-max
    normalized. ``A`` comes from a plain forward pass of the first two layers."""
    acts = to_host(model.get_layer("conv2")(model.get_layer("conv1")(images))).astype(np.float64)
    probs = to_host(model(images, training=False)).astype(np.float64)
    kernel, bias = (w.astype(np.float64) for w in model.get_layer("head").get_weights())
    top = probs.argmax(-1)
    maps = []
    for a, c in zip(acts, top):
        up = resize_linear(np.maximum(a @ kernel[:, c], 0), images.shape[1:3])
        span = up.max() - up.min()
        maps.append((up - up.min()) / span if span > 0 else np.zeros_like(up))
    return np.stack(maps), top, probs


class Probe(keras.callbacks.Callback):
    """After the CAMCallback (later in the list), at each epoch's end: what it showed,
    and the closed form computed on the model as it is at that moment."""

    def __init__(self, cb, images):
        super().__init__()
        self.cb, self.images, self.seen = cb, images, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append((self.cb.last, closed_form_gradcam(self.model, self.images)))


def test_maps_during_fit_equal_the_closed_form_after_each_epoch(data, tmp_path):
    """On the running backend: the callback explains the live weights of every epoch
    (compared with a second code path: NumPy on activations read by a plain forward pass)."""
    x, y = data
    model = make_model()
    rng = np.random.default_rng(0)   # the same start on every backend (not the backend's initializers)
    model.set_weights([rng.normal(0, np.sqrt(2 / np.prod(w.shape[:-1])), w.shape).astype(np.float32)
                       if w.ndim > 1 else np.zeros(w.shape, np.float32) for w in model.get_weights()])
    images = x[:6]
    cb = CAMCallback(images, log_dir=tmp_path, tensorboard=False, save_png=False, metrics=())
    probe = Probe(cb, images)
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False, callbacks=[cb, probe])
    assert len(probe.seen) == 3 and not cb.errors
    previous = None
    for shown, (maps, top, probs) in probe.seen:
        assert shown is not previous      # a new explanation each epoch
        previous = shown
        np.testing.assert_array_equal(shown.targets, top)
        np.testing.assert_allclose(shown.probabilities, probs[np.arange(len(top)), top], atol=1e-5)
        assert (maps.max(axis=(1, 2)) == 1).mean() >= 0.5   # maps with something to show
        np.testing.assert_allclose(shown.maps, maps, atol=2e-4)
    assert not np.allclose(probe.seen[0][0].maps, probe.seen[-1][0].maps, atol=1e-2)  # training moved them


def test_crc32c_check_values():
    assert crc32c(b"123456789") == 0xE3069283       # the CRC-32C check value
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA            # RFC 3720, B.4: 32 bytes of zeros
    assert crc32c(b"\xff" * 32) == 0x62A8AB43         # ... and of 0xFF


def test_event_file_writer_is_read_by_tensorflow(tmp_path):
    """The plain-Python writer (JAX and PyTorch) writes what TensorFlow's reader reads."""
    rng = np.random.default_rng(5)
    pictures = {step: rng.integers(0, 256, (9 + step, 13, 3), dtype=np.uint8) for step in (1, 4)}
    writer = EventFileWriter(tmp_path / "logs")
    for step, picture in pictures.items():
        ok, encoded = cv2.imencode(".png", picture[..., ::-1])
        writer.image("cam/Test", picture.shape[1], picture.shape[0], encoded.tobytes(), step)
        writer.scalar("cam/value", 0.1 * step - 1, step)
    writer.flush()
    writer.scalar("cam/value", 2.5, 7)
    writer.close()
    assert os.path.basename(writer.path).startswith("events.out.tfevents.")
    events = read_events(tmp_path / "logs")
    assert set(events) == {"cam/Test", "cam/value"}
    for step, picture in pictures.items():
        np.testing.assert_array_equal(decode(events["cam/Test"][step]), picture)
    assert events["cam/value"] == {1: pytest.approx(-0.9), 4: pytest.approx(-0.6), 7: 2.5}


@pytest.mark.skipif(backend.name() == "tensorflow", reason="the TensorFlow backend writes with tf.summary "
                    "(test_every_epoch_png_tensorboard_and_live_weights)")
def test_callback_event_files_without_tensorflow(data, tmp_path):
    """On JAX and PyTorch the callback writes its event files with :class:`EventFileWriter`."""
    x, y = data
    keras.utils.set_random_seed(0)
    model = make_model()
    cb = CAMCallback(x[:2], targets=[1, 2], log_dir=tmp_path, metrics=["average_drop"])
    model.fit(x[:16], y[:16], batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    assert not cb.errors
    events = read_events(tmp_path)
    png = cv2.cvtColor(cv2.imread(str(tmp_path / "epoch_002.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decode(events["cam/GradCAM"][2]), png)
    assert set(events["cam/average_drop"]) == {1, 2}
    assert events["cam/average_drop"][2] == pytest.approx(cb.records[-1]["average_drop"], abs=1e-6)

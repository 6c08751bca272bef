"""What a reader of each documentation page is assumed to have, declared once.

The Python blocks of README.md and docs/*.md use names they do not define
(``model``, ``images``, ``boxes``, ...): the reader brings them.
``tests/test_docs_run.py`` runs each page's blocks in order in a fresh
namespace holding :func:`prelude` of that page, built here from tiny seeded
models (``weights=None``, built with the Keras under test, so the pages also
run under legacy tf-keras) and generated data: no network, no download.

A prelude is ``(names, symbols)``: ``names`` are the objects, ``symbols`` the
values of the letters that the pages' comments use in shapes (``(N, H, W)``),
so that ``# (N, H, W)`` is checked against real sizes. Every non-empty
prelude also holds ``kc`` (keras_cam) and ``np`` (numpy), the usual imports. A page that is not
listed is an error: every page with Python blocks has an entry, empty
when its blocks define all they use.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

N, SIZE, CLASSES = 2, 32, 10      # two images: the pages write ``targets=[3, 7]``
SYMBOLS = {"N": N, "H": SIZE, "W": SIZE, "C": 3}


def _keras():
    from keras_cam._compat import keras

    return keras


def classifier(classes=CLASSES, size=SIZE, seed=0):
    """A tiny CNN classifier: conv1..conv4 (ReLU), global average pooling, ``Dense(softmax)``."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((size, size, 3))
    for i, (filters, strides) in enumerate([(8, 1), (8, 2), (16, 1), (16, 1)], start=1):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", activation="relu", name=f"conv{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="classifier")


def images_of(n=N, size=SIZE, seed=1, channels=3):
    return np.random.default_rng(seed).uniform(size=(n, size, size, channels)).astype("float32")


def class_names(classes=CLASSES):
    return [f"class {i}" for i in range(classes)]


def _kc():
    import keras_cam

    return keras_cam


def _backend_name():
    from keras_cam import backend

    return backend.name()


def _reader():
    """The quickstart's reader: a classifier, two images, the class names."""
    return {"kc": _kc(), "model": classifier(), "images": images_of(), "names": class_names()}


def _tasks():
    """The README's "beyond 2-D" reader: a 1-D, a 3-D, a token and a segmentation model, labels."""
    from keras import ops

    keras = _keras()
    keras.utils.set_random_seed(2)
    L = keras.layers
    x = keras.Input((64, 2))
    signal_model = keras.Model(x, L.Dense(3)(L.GlobalAveragePooling1D()(L.Conv1D(8, 5, padding="same",
                                                                                 activation="relu")(x))))
    x = keras.Input((8, SIZE, SIZE, 1))
    volume_model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling3D()(L.Conv3D(4, 3, strides=2, padding="same",
                                                                                 activation="relu")(x))))

    class ClassToken(L.Layer):   # in keras.ops: the same layer on every backend
        def build(self, shape):
            self.token = self.add_weight(name="token", shape=(1, 1, shape[-1]), initializer="random_normal")

        def call(self, t):
            token = ops.broadcast_to(ops.cast(self.token, t.dtype), (ops.shape(t)[0], 1, t.shape[-1]))
            return ops.concatenate([token, t], axis=1)

    x = keras.Input((SIZE, SIZE, 3))
    t = ClassToken()(L.Reshape((16, 16))(L.Conv2D(16, 8, strides=8)(x)))     # 4x4 patches and a class token
    n = L.LayerNormalization(name="block_norm")(t)
    t = L.Add()([t, L.MultiHeadAttention(2, 8)(n, n)])
    vit = keras.Model(x, L.Dense(3)(L.Flatten()(L.Cropping1D((0, 16))(L.LayerNormalization()(t)))))

    x = keras.Input((SIZE, SIZE, 3))
    features = L.Conv2D(8, 3, padding="same", activation="relu", name="features")(x)
    segmenter = keras.Model(x, L.Conv2D(3, 1, activation="softmax", name="classes")(features))
    mask = np.zeros((N, SIZE, SIZE), bool)
    mask[:, 8:24, 8:24] = True
    return {"signal_model": signal_model, "signals": np.random.default_rng(3).normal(size=(N, 64, 2)).astype("float32"),
            "volume_model": volume_model, "volumes": np.random.default_rng(4).uniform(
                size=(N, 8, SIZE, SIZE, 1)).astype("float32"),
            "vit": vit, "segmenter": segmenter, "mask": mask, "labels": np.array([3, 7])}


def _demo(n=8):
    from keras_cam.demo import load_model, make_dataset

    images, labels, boxes = make_dataset(n, seed=1)
    return {"kc": _kc(), "model": load_model(), "images": images, "labels": labels, "boxes": boxes}


def _readme():
    return {**_reader(), **_tasks()}, {**SYMBOLS, "T": 64, "D": 8}


def _getting_started():
    names = _reader()
    del names["names"]
    return {**names, "image": names["images"][0]}, SYMBOLS


def _layers(workdir):
    """A transfer-learning model (an EfficientNetB0 base nested in it) and a SavedModel folder."""
    import os

    import tensorflow as tf

    keras = _keras()
    keras.utils.set_random_seed(0)
    base = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    x = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(x, keras.layers.Dense(CLASSES, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(base(x))))
    path = os.path.join(workdir, "savedmodel")
    if _backend_name() == "tensorflow":                  # the page loads it only there (TENSORFLOW_ONLY)
        small = classifier()
        with contextlib.redirect_stdout(io.StringIO()):     # Keras 3's export prints a signature summary
            small.export(path) if hasattr(small, "export") else tf.saved_model.save(small, path)
    return {"kc": _kc(), "tf": tf, "model": model, "path": path}, SYMBOLS


def _methods():
    import matplotlib.pyplot as plt

    names = _reader()
    del names["names"]
    return {**names, "plt": plt}, SYMBOLS


def _metrics():
    names = _demo(4)
    del names["labels"]
    return names, {"N": 4, "H": 64, "W": 64}


def _models():
    """A model with an image and a metadata input, and one with rgb, depth (both 4-D) and meta inputs."""
    keras = _keras()
    keras.utils.set_random_seed(5)
    L = keras.layers
    image, metadata = keras.Input((SIZE, SIZE, 3)), keras.Input((4,))
    h = L.GlobalAveragePooling2D()(L.Conv2D(8, 3, padding="same", activation="relu")(image))
    model = keras.Model([image, metadata], L.Dense(3)(L.Concatenate()([h, L.Dense(8)(metadata)])))
    rgb = keras.Input((SIZE, SIZE, 3), name="rgb")
    depth = keras.Input((SIZE, SIZE, 1), name="depth")
    meta = keras.Input((4,), name="meta")
    h = L.Conv2D(8, 3, padding="same", activation="relu")(L.Concatenate()([rgb, depth]))
    rgbd_model = keras.Model([rgb, depth, meta],
                             L.Dense(3)(L.Concatenate()([L.GlobalAveragePooling2D()(h), meta])))
    rng = np.random.default_rng(6)
    return {"kc": _kc(), "model": model, "rgbd_model": rgbd_model, "images": images_of(),
            "metadata": rng.normal(size=(N, 4)).astype("float32"),
            "depth": images_of(seed=7, channels=1), "meta": rng.normal(size=(N, 4)).astype("float32")}, SYMBOLS


def _pictures():
    names = _reader()
    maps = names["kc"].GradCAM(names["model"])(names["images"])
    return {**names, "image": names["images"][0], "maps": maps, "y": np.array([3, 7])}, SYMBOLS


def _callback():
    import tensorflow as tf

    names = _reader()
    model = names["model"]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = images_of(16, seed=8), np.arange(16) % CLASSES
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    return {"kc": names["kc"], "model": model, "names": names["names"], "x_val": x[8:],
            "train_ds": data.take(1), "val_ds": data.skip(1)}, SYMBOLS


def _datasets():
    import tensorflow as tf

    names = _reader()
    x, y = images_of(10, seed=9), np.arange(10) % CLASSES
    return {"kc": names["kc"], "tf": tf, "cam": names["kc"].GradCAM(names["model"]),
            "dataset": tf.data.Dataset.from_tensor_slices((x, y))}, SYMBOLS


def _model_and_images():
    names = _reader()
    del names["names"]
    return names, SYMBOLS


def _model_only():
    names = _reader()
    return {"kc": names["kc"], "model": names["model"]}, SYMBOLS


PRELUDES = {
    "README.md": _readme,
    "docs/index.md": lambda: (_reader(), SYMBOLS),
    "docs/getting-started.md": _getting_started,
    "docs/layers.md": _layers,
    "docs/methods.md": _methods,
    "docs/metrics.md": _metrics,
    "docs/models.md": _models,
    "docs/pictures.md": _pictures,
    "docs/callback.md": _callback,
    "docs/datasets.md": _datasets,
    "docs/sanity.md": _model_and_images,
    "docs/scorecam.md": _model_and_images,
    "docs/smoothing.md": _model_only,
    "docs/backends.md": _model_and_images,
    "docs/targets.md": lambda: ({}, {"N": 2, "T": 200, "C": 1}),
    "docs/layouts.md": lambda: ({}, {"N": 2}),   # N: the batch of the symbolic inputs
    "docs/compilation.md": lambda: ({}, {}),
    "docs/audit.md": lambda: ({}, {}),
    "docs/vizgradcam.md": lambda: ({}, {"H": 64, "W": 64}),
    "docs/concepts.md": lambda: ({}, {"N": 32, "H": 64, "W": 64}),
    "docs/transformers.md": lambda: ({}, {"N": 2, "H": 32, "W": 32}),
}


# Statements that are TensorFlow by nature: run in the TensorFlow test modes; under JAX and PyTorch
# they are compiled, not run. {(page, the statement's first line as written, comment stripped): why}.
# Every entry must meet a statement of its page (tests/test_docs_run.py checks).
TENSORFLOW_ONLY = {
    ("docs/datasets.md", 'kc.explain_dataset(cam, dataset, out="maps_mirrored/", strategy=tf.distribute.MirroredStrategy())'):
        "tf.distribute",
    ("docs/layers.md", "cam = kc.GradCAM(tf.saved_model.load(path))"): "a SavedModel",
}

# Pages whose examples hold only on some backends: {page: (backends, why)}; the other modes skip them.
PAGE_BACKENDS = {
    "docs/compilation.md": (("tensorflow",), "the page counts tf.function's traces after an eager first call; "
                                             "JAX compiles the first call (1 trace), PyTorch never traces (0)"),
}


def prelude(page, workdir):
    """``(names, symbols)`` for ``page`` (a path relative to the repository root), freshly built;
    files it needs (a SavedModel) are written under ``workdir``."""
    if page not in PRELUDES:
        raise KeyError(f"{page} has Python blocks but no prelude: add it to tests/doc_preludes.py PRELUDES "
                       f"(an empty one if its blocks define everything they use)")
    build = PRELUDES[page]
    names, symbols = build(workdir) if build is _layers else build()
    if names:      # a page that relies on a reader's setup also has the reader's usual imports
        names = {"kc": _kc(), "np": np, **names}
    return dict(names), dict(symbols)


# Names every non-empty prelude holds, whether or not the page uses them.
COMMON = ("kc", "np")

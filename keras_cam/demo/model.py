"""The demo model: a small CNN ending in global average pooling + Dense.

The architecture is built in code and the trained weights ship as a plain
``.npz`` (one array per layer weight, keyed ``"<layer>/<index>"``), so the
same file loads under Keras 3 and under legacy tf-keras (a ``.keras`` file
written by Keras 3 cannot be read by tf-keras). ``train.py`` in this package
produces the file.

Because the last convolution feeds ``GlobalAveragePooling2D`` and one
``Dense``, every method applies, CAM included.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from keras_cam.demo.data import CLASS_NAMES, IMAGE_SIZE

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_weights.npz")
# The same architecture trained on data with a planted shortcut (a corner mark
# on every image of one class, see keras_cam.demo.data): the audit's ground truth.
SHORTCUT_WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shortcut_weights.npz")
TARGET_LAYER = "conv4_relu"


def build_model(keras=None):
    """The demo architecture, freshly initialized.

    ``(64, 64, 3)`` RGB in [0, 1] -> per-image, per-channel standardization
    over height and width, ``(x - mean) / sqrt(var + 1e-3)`` (a
    ``GroupNormalization`` with one channel per group, no weights: removes the
    background's tint) -> 2 x 2 average pooling -> four 3 x 3 convolutions
    with batch normalization and ReLU (16, 32, 32, 64 channels; one max
    pooling after the first) -> ``"conv4_relu"``, a 16 x 16 x 64 map ->
    global average pooling -> ``Dense(4, softmax)`` (``"predictions"``).

    Args:
        keras: the Keras package to build with (``keras`` or ``tf_keras``);
            by default the one in use (:mod:`keras_cam._compat`).
    """
    if keras is None:
        from keras_cam._compat import keras
    layers = keras.layers

    def conv_block(x, channels, name):
        x = layers.Conv2D(channels, 3, padding="same", use_bias=False, name=name)(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    # Per image and channel over height and width: a group normalization with one channel
    # per group (LayerNormalization(axis=(1, 2)) computes the same, but Keras's PyTorch
    # backend refuses normalized axes that are not the last ones).
    x = layers.GroupNormalization(groups=3, center=False, scale=False, epsilon=1e-3, name="standardize")(inputs)
    x = layers.AveragePooling2D(2, name="downsample")(x)
    x = conv_block(x, 16, "conv1")
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = conv_block(x, 32, "conv2")
    x = conv_block(x, 32, "conv3")
    x = conv_block(x, 64, "conv4")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(len(CLASS_NAMES), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="keras_cam_demo")


def weights_of(model):
    """The model's weights as a flat dict ``{"<layer>/<index>": array}``."""
    return {
        f"{layer.name}/{i}": np.asarray(w)
        for layer in model.layers
        for i, w in enumerate(layer.get_weights())
    }


def save_weights(model, path):
    """Write the model's weights as a compressed ``.npz`` (see :func:`weights_of`)."""
    import io

    from keras_cam.files import write_atomic

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **weights_of(model))
    write_atomic(path, buffer.getvalue())

def load_weights_into(model, path, what, retrain):
    """Set ``model``'s weights from a ``.npz`` of :func:`save_weights`; returns ``model``.

    Every layer's arrays must be in the file with the architecture's shapes,
    and the file must hold nothing else. ``what`` names the model and
    ``retrain`` the command that writes the file, in the errors.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is damaged, or holds other arrays than the architecture's.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} weights {path!r} not found. Reinstall keras-cam, or train them with "
                                f"`{retrain}`.")
    try:
        with np.load(path) as stored:
            stored = dict(stored)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{what} weights {path!r} cannot be read ({type(err).__name__}: {err}): the file is "
                         f"damaged or not a .npz of weights. Reinstall keras-cam, or train them again with "
                         f"`{retrain}`.") from None
    used = set()
    for layer in model.layers:
        expected = layer.get_weights()
        keys = [f"{layer.name}/{i}" for i in range(len(expected))]
        missing = [k for k in keys if k not in stored]
        if missing:
            raise ValueError(f"{what} weights {path!r} lack {missing[:4]}; they do not match the {what} "
                             f"architecture (retrain with `{retrain}`).")
        for key, want in zip(keys, expected):
            if tuple(want.shape) != tuple(stored[key].shape):
                raise ValueError(f"{what} weights {path!r}: {key} has shape {tuple(stored[key].shape)}, the "
                                 f"architecture needs {tuple(want.shape)} (retrain with `{retrain}`).")
        layer.set_weights([stored[k] for k in keys])
        used.update(keys)
    extra = sorted(set(stored) - used)
    if extra:
        raise ValueError(f"{what} weights {path!r} hold {len(extra)} arrays the {what} architecture does not have "
                         f"({extra[:4]}); the file is for another model (retrain with `{retrain}`).")
    return model


def load_model(path=None, keras=None):
    """The trained demo model, ready to explain.

    Args:
        path: a weights ``.npz`` written by :func:`save_weights`; by default
            the one shipped with the package.
        keras: the Keras package to build with; by default the one in use.

    Returns:
        A new functional model with the trained weights (not compiled).

    Example:
        >>> from keras_cam.demo import load_model, make_dataset, CLASS_NAMES
        >>> model = load_model()
        >>> images, labels, boxes = make_dataset(8, seed=1)
        >>> model.predict(images).argmax(-1)
    """
    path = WEIGHTS_PATH if path is None else path
    return load_weights_into(build_model(keras), path, "Demo", "python -m keras_cam.demo.train")


def load_shortcut_model(keras=None):
    """The demo model trained on data with a planted shortcut.

    Same architecture as :func:`load_model`, trained by
    ``python -m keras_cam.demo.train --shortcut`` on images where every
    image of class :data:`~keras_cam.demo.data.WATERMARK_CLASS` carries a
    small corner mark (``make_dataset(..., watermark=True)``). It learned
    that class from the mark: marked images of any class tend to be called
    that class, and its own images without the mark are missed. A known
    "Clever Hans" model for :func:`keras_cam.audit` to find.

    Args:
        keras: the Keras package to build with; by default the one in use.

    Returns:
        A new functional model with the trained weights (not compiled).

    Example:
        >>> from keras_cam.demo import load_shortcut_model, make_dataset
        >>> model = load_shortcut_model()
        >>> images, labels, boxes, marked = make_dataset(64, seed=5, watermark=0.5)
    """
    return load_model(SHORTCUT_WEIGHTS_PATH, keras)

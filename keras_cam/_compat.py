"""Keras 3 and legacy tf-keras in one place.

``keras`` is the Keras the user works with: ``tf_keras`` when the
environment sets ``TF_USE_LEGACY_KERAS=1`` (the same rule TensorFlow uses for
``tf.keras``), Keras 3 otherwise. The predicates below recognise objects from
either package, so a model built with one works whichever is the default.
"""

from __future__ import annotations

import os
import sys

import numpy as np

LEGACY = os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes")

if LEGACY:
    import tf_keras as keras  # noqa: F401
else:
    import keras  # noqa: F401

# The array library above the backends: Keras 3's ``keras.ops`` (also under
# legacy tf-keras, where Keras 3 is installed beside it and runs on TensorFlow).
from keras import ops  # noqa: E402,F401

if LEGACY:
    import keras as _keras3  # noqa: E402

    if _keras3.backend.backend() != "tensorflow":
        raise ImportError(
            f"Legacy tf-keras (TF_USE_LEGACY_KERAS=1) is TensorFlow's own Keras 2 and runs only on "
            f"TensorFlow, but KERAS_BACKEND is {_keras3.backend.backend()!r}. Unset TF_USE_LEGACY_KERAS "
            f"to use Keras 3 on that backend, or set KERAS_BACKEND=tensorflow."
        )


def _packages():
    """The Keras packages that are already imported (never imports one)."""
    mods = []
    for name in ("keras", "tf_keras"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "layers"):
            mods.append(mod)
    return mods


def is_layer(obj) -> bool:
    """True for a layer (or model) of Keras 3 or of tf-keras."""
    return any(isinstance(obj, m.layers.Layer) for m in _packages())


def is_model(obj) -> bool:
    """True for a ``Model`` (functional, Sequential or subclassed) of either Keras."""
    return any(isinstance(obj, m.Model) for m in _packages())


def keras_of(obj):
    """The Keras package ``obj`` belongs to (Keras 3 or tf-keras)."""
    for m in _packages():
        if isinstance(obj, m.layers.Layer):
            return m
    return keras


def copy_model(model, purpose):
    """A copy of ``model`` with its weights (``clone_model`` of its own Keras), for ``purpose``
    (e.g. "The sanity check randomizes a copy of the model"): a ValueError that says so when
    the model cannot be rebuilt (a subclassed model without get_config/from_config)."""
    try:
        copy = keras_of(model).models.clone_model(model)
        # tf-keras "clones" a subclassed model without a config into an unbuilt one: its
        # set_weights fails then, with a message that prints every array
        copy.set_weights(model.get_weights())
    except Exception as err:  # clone_model raises several types for models it cannot rebuild
        reason = " ".join(str(err).split())
        raise ValueError(
            f"{purpose}, and keras.models.clone_model could not copy {model.name!r} "
            f"({type(err).__name__}: {reason[:200]}{'...' if len(reason) > 200 else ''}). "
            f"Subclassed models need get_config/from_config to be cloned."
        ) from err
    return copy


def producer(tensor):
    """The layer or operation that produced a symbolic Keras tensor, or None."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    # Keras 3 names it ``operation``, tf-keras ``layer``.
    return getattr(history, "operation", None) or getattr(history, "layer", None)


def set_attr(obj, name, value):
    """Set an attribute without Keras's attribute tracking."""
    object.__setattr__(obj, name, value)


def del_attr(obj, name):
    object.__delattr__(obj, name)


def progbar(target, verbose=1):
    """A Keras progress bar (the one ``model.fit`` draws)."""
    return keras.utils.Progbar(target, verbose=verbose)


def to_host(x):
    """A tensor of any backend (or anything array-like) as a numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def variable_value(v):
    """A variable's value as a numpy array, from a Keras 3 ``Variable`` on any backend, a
    ``tf.Variable`` (tf-keras, SavedModel) or anything array-like. Each backend's tensor is
    read its own way: ``np.array`` on a PyTorch parameter or a ``tf.Variable`` warns under
    numpy 2 (their ``__array__`` takes no ``copy``)."""
    import keras as _k3

    if isinstance(v, _k3.Variable):
        v = v.value  # the backend's own tensor or variable
    if hasattr(v, "detach"):  # torch
        return v.detach().cpu().numpy()
    return v.numpy() if hasattr(v, "numpy") else np.asarray(v)


def dtype_name(dtype) -> str:
    """``"float32"`` for a dtype of numpy, Keras 3 (a string) or TensorFlow."""
    return getattr(dtype, "name", None) or str(dtype)

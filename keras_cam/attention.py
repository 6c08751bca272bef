"""Attention capture: each attention block's probabilities, recorded as the model runs.

A transformer's attention layer turns scores into probabilities
``A = softmax(Q K^T / sqrt(d))`` of shape ``(N, heads, L_q, L_k)`` and mixes
the values with them. The attention methods (:mod:`keras_cam.methods.attention`)
need ``A`` of every block, and for some ``dS/dA``. Like activation capture
(:mod:`keras_cam.graph`), capture intercepts the layers while the model runs
(:mod:`keras_cam._patch`: thread-local, undone on exit and on error); the
model is never modified.

What is captured: every ``MultiHeadAttention`` of Keras 3 or tf-keras, and
its subclasses (KerasHub's ViT, DeiT, DINOv2, CLIP and SigLIP encoders are
built from it). Two of the layer's documented extension points are
intercepted for the duration of a pass:

- ``_compute_attention`` is asked for the scores (``return_attention_scores``),
  so that Keras 3 takes its explicit path instead of a fused
  ``dot_product_attention`` that never forms ``A``;
- ``_masked_softmax``'s output, the probabilities, goes through ``tap`` (the
  backends' ``tapped_gradients`` make it differentiable: ``A + delta``,
  ``delta = 0`` on JAX) and is recorded; the tapped tensor is the one the
  layer then multiplies with the values, so ``dS/dA`` is the true gradient.

The probabilities are the same either way (the fused kernel computes the
same softmax), so the model's outputs do not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect

from keras_cam import _compat
from keras_cam import layers as _layers
from keras_cam._patch import intercepted


def is_attention_layer(layer) -> bool:
    """Whether ``layer`` is a ``MultiHeadAttention`` (Keras 3 or tf-keras) or a subclass of one."""
    return _compat.is_layer(layer) and any(
        c.__name__ == "MultiHeadAttention" for c in type(layer).__mro__) and hasattr(layer, "_masked_softmax")


def attention_layers(model):
    """``[(path, layer)]``: the model's attention layers (:func:`is_attention_layer`), depth first."""
    return [(path, layer) for path, layer in _layers.walk(model) if is_attention_layer(layer)]


def list_attention_layers(model):
    """The attention layers that the attention methods capture, for humans.

    Args:
        model: a Keras model (functional, subclassed, KerasHub); not run.

    Returns:
        A list of ``(path, num_heads)``, depth first (KerasHub's blocks in
        order); an empty list when the model has none.

    Example:
        >>> for path, heads in keras_cam.list_attention_layers(model):
        ...     print(path, heads)
    """
    if not _compat.is_model(model):
        raise TypeError(f"`model` must be a Keras model; received {type(model).__name__}.")
    return [(path, int(getattr(layer, "num_heads", 0) or getattr(layer, "_num_heads", 0)))
            for path, layer in attention_layers(model)]


def resolve_attention_layers(model, layers=None, method="This method"):
    """``[(path, layer)]`` for ``layers`` (None: every attention layer of ``model``).

    Raises:
        ValueError: the model has no attention layer, or a named layer is none.
    """
    found = attention_layers(model)
    if layers is None:
        if not found:
            raise ValueError(
                f"{method} reads the attention probabilities of a transformer, but model "
                f"{model.name!r} has no attention layer (keras.layers.MultiHeadAttention or a "
                f"subclass, as in KerasHub's ViT, DeiT, DINOv2, CLIP and SigLIP). For a CNN use a "
                f"CAM method such as keras_cam.GradCAM; keras_cam.list_attention_layers(model) "
                f"lists what can be captured."
            )
        return found
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers:
        raise TypeError(f"`layers` must be a non-empty list of attention layers (paths, names or layers); "
                        f"received {layers!r}.")
    out = []
    for spec in layers:
        path, layer = _layers.resolve(model, spec)
        if not is_attention_layer(layer):
            raise ValueError(
                f"Layer {path!r} ({type(layer).__name__}) is not an attention layer; "
                f"keras_cam.list_attention_layers(model) lists those of this model: "
                f"{[p for p, _ in found][:8]}."
            )
        out.append((path, layer))
    return out


@dataclasses.dataclass
class AttentionRecord:
    """One attention call: the layer's path, the probabilities ``(N, heads, L_q, L_k)``
    (the tapped tensor the layer used), and the tap's key."""

    path: str
    probabilities: object
    key: tuple


def _takes(fn, name):
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class AttentionCapture:
    """A context manager that records the attention of ``layers`` while a model runs.

    Args:
        layers: ``[(path, layer)]`` (see :func:`resolve_attention_layers`).
        tap: ``tap(key, probabilities) -> probabilities``, or None; the key of the
            ``k``-th attention call of the pass is ``("attention", k)``.

    After the block, ``records`` holds one :class:`AttentionRecord` per call,
    in the order the calls ran (a layer called twice appears twice).
    """

    def __init__(self, layers, tap=None):
        self.layers = list(layers)
        self.tap = tap
        self.records = []
        self._stack = None

    def __enter__(self):
        self.records = []
        self._stack = contextlib.ExitStack()
        try:
            for path, layer in self.layers:
                if getattr(layer, "_flash_attention", False):
                    raise ValueError(
                        f"Attention layer {path!r} uses flash attention, which never forms the attention "
                        f"probabilities; build it with flash_attention=False (or call "
                        f"keras.config.disable_flash_attention() before building the model)."
                    )
                self._stack.enter_context(intercepted(layer, "_masked_softmax", self._recorder(path)))
                if _takes(type(layer)._compute_attention, "return_attention_scores"):
                    self._stack.enter_context(intercepted(layer, "_compute_attention", _with_scores))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    def _recorder(self, path):
        def make(inner):
            def masked_softmax(*args, **kwargs):
                p = inner(*args, **kwargs)
                key = ("attention", len(self.records))
                if self.tap is not None:
                    p = self.tap(key, p)
                self.records.append(AttentionRecord(path, p, key))
                return p
            return masked_softmax
        return make


def _with_scores(inner):
    """``_compute_attention`` asked for its scores (Keras 3's explicit path)."""
    def compute(query, key, value, attention_mask=None, training=None, return_attention_scores=False, **kwargs):
        return inner(query, key, value, attention_mask, training, True, **kwargs)
    return compute

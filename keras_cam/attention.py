"""Attention capture: each attention block's probabilities, recorded as the model runs.

A transformer's attention layer turns scores into probabilities
``A = softmax(Q K^T / sqrt(d))`` of shape ``(N, heads, L_q, L_k)`` and mixes
the values with them. The attention methods (:mod:`keras_cam.methods.attention`)
need ``A`` of every block, and for some ``dS/dA``. Like activation capture
(:mod:`keras_cam.graph`), capture intercepts the layers while the model runs
(:mod:`keras_cam._patch`: thread-local, undone on exit and on error); the
model is never modified.

What is captured (:data:`SITES`, one interception point per kind of layer):

- every ``MultiHeadAttention`` of Keras 3 or tf-keras, and its subclasses
  (KerasHub's ViT, DeiT, DINOv2, CLIP and SigLIP encoders are built from
  it): ``_compute_attention`` is asked for the scores
  (``return_attention_scores``), so that Keras 3 takes its explicit path
  instead of a fused ``dot_product_attention`` that never forms ``A``, and
  ``_masked_softmax``'s output is recorded;
- KerasHub's own layers, which call a softmax inside ``call``: the
  sublayer that sees the probabilities is intercepted instead. Swin's
  ``WindowAttention`` and the vision towers of PaliGemma and Gemma 3 pass
  ``A`` to a dropout (its input is recorded); Gemma's decoder attention
  (``CachedGemmaAttention``, ``CachedGemma3Attention``) computes it with a
  ``Softmax`` sublayer (its output is recorded, and
  ``_use_fused_attention_op`` answers False for the pass).

The recorded tensor goes through ``tap`` (the backends' ``tapped_gradients``
make it differentiable: ``A + delta``, ``delta = 0`` on JAX), and the tapped
tensor is the one the layer then multiplies with the values, so ``dS/dA``
is the true gradient. A windowed layer's records are
``(N * windows, heads, w*w, w*w)`` (:func:`per_image` splits them per image);
every other record is ``(N, heads, L_q, L_k)``.

The probabilities are the same either way (a fused kernel computes the
same softmax), so the model's outputs do not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect

from keras_cam import _compat
from keras_cam import layers as _layers
from keras_cam._compat import ops
from keras_cam._patch import intercepted


@dataclasses.dataclass(frozen=True)
class AttentionSite:
    """Where one kind of attention layer forms its probabilities.

    Attributes:
        name: the class name, matched along the layer's MRO.
        method: the method intercepted while the model runs (on ``sublayer``
            when given, else on the layer itself).
        sublayer: None, or the attribute of the layer holding the sublayer
            whose ``method`` sees the probabilities.
        reads: ``"output"`` (the method returns the probabilities) or
            ``"input"`` (its first argument is them, e.g. the dropout applied
            to them).
        explicit: ``((method, make, parameter), ...)``: methods of the layer
            intercepted for the pass so that it takes its explicit path (a
            fused kernel never forms ``A``); each only when the method exists
            and, if ``parameter`` is not None, takes that parameter.
        windowed: the layer attends within local windows: its first axis is
            ``N * windows``, not the batch (Swin).
        decoder: the layer is a causal language model's self-attention
            over image and text tokens (Gemma's, in PaliGemma and Gemma 3).
    """

    name: str
    method: str
    sublayer: str | None = None
    reads: str = "output"
    explicit: tuple = ()
    windowed: bool = False
    decoder: bool = False


def _with_scores(inner):
    """``_compute_attention`` asked for its scores (Keras 3's explicit path)."""
    def compute(query, key, value, attention_mask=None, training=None, return_attention_scores=False, **kwargs):
        return inner(query, key, value, attention_mask, training, True, **kwargs)
    return compute


def _never_fused(inner):
    """``_use_fused_attention_op`` answering False (Gemma's explicit softmax path)."""
    return lambda *args, **kwargs: False


#: The interception points, one per kind of attention layer (first match along the MRO wins).
SITES = (
    # Keras 3 / tf-keras, and its KerasHub subclasses (ViT, DeiT, DINOv2, CLIP, SigLIP).
    AttentionSite("MultiHeadAttention", "_masked_softmax",
                  explicit=(("_compute_attention", _with_scores, "return_attention_scores"),)),
    # Swin: A goes through the attention dropout right after its softmax.
    AttentionSite("WindowAttention", "call", sublayer="attention_dropout_layer", reads="input", windowed=True),
    # PaliGemma's and Gemma 3's vision towers: the same, through their dropout.
    AttentionSite("PaliGemmaVitAttention", "call", sublayer="dropout_layer", reads="input"),
    AttentionSite("Gemma3VisionAttention", "call", sublayer="dropout_layer", reads="input"),
    # Gemma's decoders (PaliGemma, Gemma 2 and 3): a Softmax sublayer, probabilities
    # (N, key-value heads, groups, L_q, L_k), reshaped to (N, heads, L_q, L_k).
    AttentionSite("CachedGemmaAttention", "call", sublayer="softmax",
                  explicit=(("_use_fused_attention_op", _never_fused, None),), decoder=True),
    AttentionSite("CachedGemma3Attention", "call", sublayer="softmax",
                  explicit=(("_use_fused_attention_op", _never_fused, None),), decoder=True),
)


def attention_site(layer):
    """The :class:`AttentionSite` of ``layer``, or None when it is no attention layer capture knows.

    Args:
        layer: any layer (or object).
    """
    if not _compat.is_layer(layer):
        return None
    for cls in type(layer).__mro__:
        for site in SITES:
            if cls.__name__ == site.name:
                owner = layer if site.sublayer is None else getattr(layer, site.sublayer, None)
                return site if owner is not None and hasattr(owner, site.method) else None
    return None


def is_attention_layer(layer) -> bool:
    """Whether capture knows ``layer``: a ``MultiHeadAttention`` (Keras 3 or tf-keras) or a
    subclass, or one of KerasHub's own attention layers in :data:`SITES` (Swin's windows,
    PaliGemma's and Gemma 3's vision towers, Gemma's decoders).

    Args:
        layer: any layer (or object).
    """
    return attention_site(layer) is not None


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
    return [(path, num_heads(layer)) for path, layer in attention_layers(model)]


def num_heads(layer):
    """The number of (query) heads of an attention layer (0 when it does not say).

    Args:
        layer: an attention layer.
    """
    for name in ("num_heads", "_num_heads", "num_query_heads"):
        value = getattr(layer, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0


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
    (the tapped tensor the layer used; ``(N * windows, heads, w*w, w*w)`` for a
    windowed layer, see :func:`per_image`), and the tap's key."""

    path: str
    probabilities: object
    key: tuple
    windowed: bool = False


def per_image(probabilities, batch):
    """A windowed layer's ``(N * windows, heads, w*w, w*w)`` probabilities as
    ``(N, windows, heads, w*w, w*w)`` (KerasHub's Swin partitions each image's
    grid into windows image-major, windows in raster order).

    Args:
        probabilities: a windowed :class:`AttentionRecord`'s probabilities.
        batch: ``N``, the number of images.
    """
    shape = tuple(int(d) for d in probabilities.shape)
    if shape[0] % batch:
        raise ValueError(f"{shape[0]} windows do not split over a batch of {batch}.")
    return ops.reshape(probabilities, (batch, shape[0] // batch) + shape[1:])


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
    in the order the calls ran (a layer called twice appears twice). Each
    layer is intercepted where its :class:`AttentionSite` says; the tapped
    ``(N, heads, L_q, L_k)`` tensor is the one the layer goes on with (a
    Gemma decoder's grouped ``(N, kv heads, groups, L_q, L_k)`` is reshaped
    to it and back, a linear map, so ``dS/dA`` is exact).
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
                site = attention_site(layer)
                if site is None:
                    raise ValueError(f"Layer {path!r} ({type(layer).__name__}) is no attention layer that "
                                     f"capture knows; keras_cam.list_attention_layers(model) lists them.")
                owner = layer if site.sublayer is None else getattr(layer, site.sublayer)
                self._stack.enter_context(intercepted(owner, site.method, self._recorder(path, site)))
                for method, make, parameter in site.explicit:
                    if hasattr(layer, method) and (parameter is None or _takes(getattr(type(layer), method),
                                                                               parameter)):
                        self._stack.enter_context(intercepted(layer, method, make))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    def _record(self, path, site, p):
        key = ("attention", len(self.records))
        grouped = site.decoder and len(p.shape) == 5  # Gemma: (N, kv heads, groups, L_q, L_k)
        if grouped:
            shape = tuple(int(d) for d in p.shape[1:])
            p = ops.reshape(p, (-1, shape[0] * shape[1]) + shape[2:])
        if self.tap is not None:
            p = self.tap(key, p)
        self.records.append(AttentionRecord(path, p, key, site.windowed))
        return ops.reshape(p, (-1,) + shape) if grouped else p

    def _recorder(self, path, site):
        def make(inner):
            if site.reads == "output":
                def on_output(*args, **kwargs):
                    return self._record(path, site, inner(*args, **kwargs))
                return on_output

            def on_input(*args, **kwargs):
                if args:
                    return inner(self._record(path, site, args[0]), *args[1:], **kwargs)
                kwargs = dict(kwargs)
                kwargs["inputs"] = self._record(path, site, kwargs["inputs"])
                return inner(**kwargs)
            return on_input
        return make

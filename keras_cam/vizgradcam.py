"""``VizGradCAM``: the one-call Grad-CAM helper, on keras-cam's machinery.

A drop-in for the well-known ``VizGradCAM(model, image, interpolant,
plot_results)`` function: same arguments, same outputs. It finds the last
convolution, explains the top-1 class with Grad-CAM and either draws
``image * interpolant + heatmap * (1 - interpolant)`` on the current
matplotlib axes or returns the coloured heatmap.

Where it differs from the original, on purpose: the gradient is taken of the
top class's logit, not of its softmax probability (:mod:`keras_cam.graph`);
the last convolution is found inside nested models too (a
``keras.applications`` base used as a layer); a batch of one image is
accepted; and matplotlib's global ``rcParams`` are left alone.
"""

from __future__ import annotations

import collections
import contextlib
import numbers
import threading
import weakref

import numpy as np

from keras_cam import _compat
from keras_cam._compat import to_host
from keras_cam import layers as _layers
from keras_cam.base import as_batch
from keras_cam.methods.gradient import GradCAM
from keras_cam.viz import colorize, overlay

_CONVOLUTIONS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose")


def _is_convolution(layer):
    classes = tuple(
        getattr(m.layers, name) for m in _compat._packages() for name in _CONVOLUTIONS
        if hasattr(m.layers, name)
    )
    return isinstance(layer, classes)


def last_conv_layer(model, sample):
    """Path of the last 2-D convolution that runs on ``sample``, nested models included.

    Convolutions whose output is a single pixel are passed over when a larger
    one exists (as for the automatic layer choice).
    """
    convs = [i for i in _layers.trace_layers(model, sample) if _is_convolution(i.layer) and i.is_spatial]
    if not convs:
        raise ValueError(
            f"Model {model.name!r} has no 2-D convolution for VizGradCAM to explain. Use "
            f"keras_cam.GradCAM(model, layer=...) with the layer you want."
        )
    larger = [i for i in convs if i.spatial_size > 1]
    return (larger or convs)[-1].path


def _weak(obj):
    """A weak reference to ``obj``; ``obj`` itself when it cannot have one."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _structure(model):
    """What a cached explainer depends on: the model's layers (nested models
    walked, in order) and its variables, as weak references, in that order."""
    return tuple(_weak(layer) for _, layer in _layers.walk(model)) + (None,) + tuple(
        _weak(v) for v in model.weights)


def _same_structure(refs, model):
    """Whether ``model`` still has exactly the layers and variables of ``refs``
    (the same objects, in the same order; a dead reference never matches)."""
    now = [layer for _, layer in _layers.walk(model)] + [None] + list(model.weights)
    return len(now) == len(refs) and all((r is None and o is None) or (r is not None and r() is o)
                                         for r, o in zip(refs, now))


class ExplainerCache:
    """Explainers reused across the calls of a one-call helper, per model and layer.

    A helper such as :func:`VizGradCAM` is called once per image; building an
    explainer each time (choosing the layer, a probe run) and never reusing
    its compiled computation is most of its cost. This cache keeps one
    explainer per ``(model, layer)``:

    - The model is held through a weak reference, and between calls the cached
      explainer holds no reference to it (:meth:`use` lends it the model for
      the duration of a call), so the cache never keeps a model alive: its
      entry goes when the model is garbage-collected.
    - An entry is served only while the model has the same layers (the same
      objects, in the same order, nested models walked) and the same variables
      as when it was built; a model whose layers or variables changed gets a
      new explainer. Weights that changed *values* (training, ``load_weights``)
      are fine: the explainer reads the variables live.
    - ``layer`` is part of the key: a name or path, a layer object (by
      identity; the explainer holds it), or None for the helper's own choice.
    - At most ``max_models`` models, and ``max_layers`` layers per model, are
      kept; the least recently used are dropped.

    Args:
        max_models: how many models' explainers to keep.
        max_layers: how many explainers (layers) to keep per model.

    Example:
        >>> cache = ExplainerCache()
        >>> with cache.use(model, None, lambda: GradCAM(model)) as cam:
        ...     maps = cam(images)
    """

    def __init__(self, max_models=8, max_layers=8):
        self.max_models = int(max_models)
        self.max_layers = int(max_layers)
        self._entries = collections.OrderedDict()  # id(model) -> entry
        self._lock = threading.RLock()

    def __len__(self):
        with self._lock:
            return sum(1 for e in self._entries.values() if e["model"]() is not None)

    @staticmethod
    def key(layer):
        """The cache key of a ``layer`` argument."""
        if layer is None or isinstance(layer, (str, int, np.integer)):
            return layer
        return ("object", id(layer))  # alive while cached: the explainer holds the layer

    def _entry(self, model):
        ident = id(model)
        entry = self._entries.get(ident)
        if entry is not None and (entry["model"]() is not model or not _same_structure(entry["structure"], model)):
            entry = None
        if entry is None:
            def forget(_, ident=ident):
                with self._lock:
                    if ident in self._entries and self._entries[ident]["model"]() is None:
                        del self._entries[ident]
            entry = {"model": weakref.ref(model, forget), "structure": _structure(model),
                     "explainers": {}, "lock": threading.RLock()}
            self._entries[ident] = entry
            while len(self._entries) > self.max_models:
                self._entries.popitem(last=False)
        self._entries.move_to_end(ident)
        return entry

    def cached(self, model, layer=None):
        """The explainer :meth:`use` would serve for ``(model, layer)`` (without the
        model lent to it), or None when it would build one."""
        with self._lock:
            entry = self._entries.get(id(model))
            if entry is None or entry["model"]() is not model or not _same_structure(entry["structure"], model):
                return None
            return entry["explainers"].get(self.key(layer))

    @contextlib.contextmanager
    def use(self, model, layer, build):
        """The cached explainer of ``(model, layer)``, built by ``build()`` when
        there is none, with the model lent to it inside the block."""
        with self._lock:
            entry = self._entry(model)
        key = self.key(layer)
        with entry["lock"]:
            explainer = entry["explainers"].get(key)
            if explainer is None:
                explainer = build()
            else:
                explainer.graph.model = model
            try:
                yield explainer
            finally:
                explainer.graph.model = None  # the cache must not keep the model alive
            explainers = entry["explainers"]
            explainers.pop(key, None)
            explainers[key] = explainer  # the most recently used last
            while len(explainers) > self.max_layers:
                del explainers[next(iter(explainers))]


_EXPLAINERS = ExplainerCache()


def _display_image(image):
    """The original helper's display scaling: min-max of the image to 0..255."""
    x = to_host(image).astype(np.float64)
    lo, hi = x.min(), x.max()
    scaled = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return np.rint(scaled * 255.0).astype(np.uint8)


def VizGradCAM(model, img, interpolant=0.5, plot_results=True, *, layer=None):  # noqa: N802 (the original's name)
    """Grad-CAM of the top class at the last convolution, drawn or returned.

    Args:
        model: a Keras classifier (flat, or with a nested base such as
            ``keras.applications.EfficientNetB0``); never modified.
        img: one image ``(H, W, C)`` or a batch of one ``(1, H, W, C)``, as the
            model takes it.
        interpolant: the image's weight in the drawn blend, in [0, 1]
            (``image * interpolant + heatmap * (1 - interpolant)``).
        plot_results: True draws the blend on matplotlib's current axes (shown
            inline in a notebook; call ``plt.show()`` in a script) and returns
            None; False returns the heatmap instead.
        layer: the layer to explain (a name, a nested path or a layer); None
            takes the last 2-D convolution of any kind (see
            ``docs/vizgradcam.md`` for how that differs from the original
            helper, and how to pass its choice here).

    Returns:
        None when plotting; otherwise the heatmap coloured with OpenCV's jet
        colormap, ``(H, W, 3)`` uint8 RGB at the image's size.

    The explainer is built on the first call for a model (finding the layer)
    and reused by later calls for the same model, as long as its layers are
    the same objects (:class:`ExplainerCache`); it reads the weights live, so
    training between calls shows. As for any explainer, the first call of an
    image size runs eagerly and later ones are compiled
    (``docs/compilation.md``).

    Example:
        >>> heatmap = keras_cam.VizGradCAM(model, image, plot_results=False)
    """
    if isinstance(interpolant, bool) or not isinstance(interpolant, numbers.Real) or not 0 <= interpolant <= 1:
        raise ValueError(f"`interpolant` is the image's weight, a number in [0, 1]; received {interpolant!r}.")
    if not _compat.is_model(model):
        raise TypeError(f"`model` must be a Keras model; received {type(model).__name__}.")
    batch, _ = as_batch(img)
    if batch.shape[0] != 1:
        raise ValueError(
            f"VizGradCAM explains one image; received a batch of {batch.shape[0]}. Call it per "
            f"image, or use keras_cam.GradCAM(model)(images) for a batch."
        )
    # The same model and layer as a previous call: its explainer, already
    # compiled for this image size from the second call on (see ExplainerCache).
    choose = (lambda: last_conv_layer(model, batch)) if layer is None else (lambda: layer)
    with _EXPLAINERS.use(model, layer, lambda: GradCAM(model, layer=choose())) as cam:
        result = cam.explain(batch)
    heatmap, idx, prob = result.maps[0], result.targets, result.probabilities
    if not plot_results:
        return colorize(heatmap, "jet")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (pyplot only when drawing)

    picture = overlay(_display_image(batch[0]), heatmap, alpha=1.0 - float(interpolant), colormap="jet")
    ax = plt.gca()
    ax.imshow(picture)
    ax.set_title(f"Grad-CAM: class {int(idx[0])} (p={float(prob[0]):.2f})")
    return None

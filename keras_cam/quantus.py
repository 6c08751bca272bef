"""keras-cam as Quantus's explanation function for Keras models.

Quantus (Hedström et al., JMLR 2023) computes the explanations it evaluates
through an ``explain_func(model, inputs, targets, **kwargs) ->
attributions``. :func:`explain_func` returns one that explains with any
keras-cam method, batched and compiled, on the Keras model Quantus passes:

    >>> import quantus, keras_cam.quantus
    >>> metric = quantus.MaxSensitivity(nr_samples=10, disable_warnings=True)
    >>> scores = metric(model=model, x_batch=x, y_batch=y, a_batch=None,
    ...                 explain_func=keras_cam.quantus.explain_func("gradcam"))

Channel order. Quantus keeps its images channels first ``(N, C, H, W)``
and scores attributions in that order; before calling ``explain_func`` it
puts the images back in the model's order (``(N, H, W, C)`` for a
channels-last model) on most paths, but not on every one (a user's own
``explain_func(model, x_batch, y_batch)`` call passes the channels-first
batch as it is; Quantus's own TensorFlow path reshapes such a batch, which
scrambles its pixels). The returned function reads either order: ``inputs``
with the model's input shape are taken as they are, inputs with the other
order's shape are transposed (never reshaped), and ``channel_first`` decides
when both would fit (a square image with as many channels as pixels per
side). The attributions always come back in Quantus's order, channels first
with one channel, ``(N, 1, *S)``, which Quantus broadcasts over the
channels (a channels-last ``(N, H, W, 1)`` would fail its
``broadcast_to(a, x.shape)`` in faithfulness correlation).

This module does not import Quantus: it only needs to be called the way
Quantus calls it.
"""

from __future__ import annotations

import collections

import numpy as np

from keras_cam._compat import to_host

# Explainers kept per explanation function: Quantus passes the same model on each call, and
# randomized copies of it in the randomization metrics.
_KEEP = 4


def explain_func(method="gradcam", *, channel_first=None, normalize=True, **options):
    """A Quantus ``explain_func`` that explains with a keras-cam method.

    Args:
        method: a registry name (``"gradcam"``, ``"scorecam"``..., see
            :func:`keras_cam.methods.names`), an explainer class
            (``keras_cam.GradCAM``) or a factory ``f(model) -> explainer``.
        channel_first: how to read ``inputs`` whose shape fits both orders:
            None (the model's own order), True (``(N, C, *S)``) or False
            (``(N, *S, C)``). Quantus's ``explain_func_kwargs`` may override it
            per call.
        normalize: scale each map to [0, 1] (keras-cam's default; Quantus
            normalises again by default).
        **options: the explainer's options (``layer=``, ``batch_size=``...),
            as for :func:`keras_cam.methods.create`.

    Returns:
        ``explain(model, inputs, targets, **kwargs) -> attributions``: numpy
        float32 maps ``(N, 1, *S)``, Quantus's channels-first order. ``kwargs`` may hold ``channel_first`` and
        Quantus's ``device`` (ignored: keras-cam runs where Keras runs).

    Raises:
        ValueError: for an unknown method name (now), or inputs whose shape
            fits the model in neither channel order (at the call).
        TypeError: for a ``method`` that is neither a name nor callable.
    """
    from keras_cam import methods

    if isinstance(method, str):
        methods.get(method)   # an unknown name fails here, not inside Quantus's loop

        def build(model):
            return methods.create(method, model, **options)
    elif callable(method):
        def build(model):
            return method(model, **options) if isinstance(method, type) else method(model)
        if options and not isinstance(method, type):
            raise TypeError(f"Options {sorted(options)} are for a method name or class; a factory builds its "
                            f"explainer itself: put them in the factory.")
    else:
        raise TypeError(f"`method` must be a method name such as 'gradcam', an explainer class or a factory "
                        f"f(model) -> explainer; received {type(method).__name__}.")
    _check_order(channel_first)
    explainers = collections.OrderedDict()

    def explainer_of(model):
        key = id(model)
        if key not in explainers or explainers[key][0] is not model:
            explainers[key] = (model, build(model))
            while len(explainers) > _KEEP:
                explainers.popitem(last=False)
        explainers.move_to_end(key)
        return explainers[key][1]

    def explain(model, inputs, targets, **kwargs):
        kwargs.pop("device", None)
        order = kwargs.pop("channel_first", channel_first)
        if kwargs:
            raise TypeError(f"keras_cam.quantus.explain_func: unexpected keyword(s) {sorted(kwargs)} in "
                            f"Quantus's explain_func_kwargs (it takes channel_first and device); pass the "
                            f"method's options to keras_cam.quantus.explain_func(...) instead.")
        _check_order(order)
        explainer = explainer_of(model)
        x = np.asarray(to_host(inputs), dtype=np.float32)
        layout = explainer.graph.inputs
        transposed = _read_order(x, model, layout, order)
        if transposed:
            x = _move_channels(x, layout.channels_first)
        y = np.asarray(to_host(targets)).reshape(-1)
        if y.size == 1 and len(x) > 1:
            y = np.repeat(y, len(x))
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"`targets` must be one integer class per input ({len(x)}); received shape "
                             f"{np.shape(targets)} and dtype {y.dtype}.")
        maps = np.asarray(to_host(explainer(x, y.astype(np.int32), normalize=normalize)), np.float32)
        return maps[:, None]

    explain.__name__ = f"keras_cam_{method if isinstance(method, str) else getattr(method, '__name__', 'method')}"
    return explain


def _check_order(order):
    if order is not None and not isinstance(order, (bool, np.bool_)):
        raise ValueError(f"`channel_first` must be None, True or False; received {order!r}.")


def _fits(shape, expected):
    return len(shape) == len(expected) and all(e is None or int(e) == int(s) for s, e in zip(shape, expected))


def _move_channels(x, to_first):
    return np.moveaxis(x, -1, 1) if to_first else np.moveaxis(x, 1, -1)


def _read_order(x, model, layout, order):
    """Whether ``x`` is in the order other than the model's (and must be transposed)."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list):
        raise ValueError(f"keras_cam.quantus explains single-input models; model {model.name!r} has "
                         f"{len(shape)} inputs.")
    if shape is None or x.ndim != len(shape):
        raise ValueError(f"`inputs` must be a batch of rank {None if shape is None else len(shape)} for model "
                         f"{model.name!r} (input shape {shape}); received shape {x.shape}.")
    expected = tuple(shape[1:])
    other = (expected[-1],) + expected[:-1] if not layout.channels_first else expected[1:] + (expected[0],)
    native, swapped = _fits(x.shape[1:], expected), _fits(x.shape[1:], other)
    if order is not None:
        wanted_first = bool(order)
        transposed = wanted_first != layout.channels_first
        if not (swapped if transposed else native):
            raise ValueError(f"`inputs` of shape {x.shape} are not {'channels first' if wanted_first else 'channels last'}"
                             f" for model {model.name!r} (input shape {shape}).")
        return transposed
    if native:
        return False
    if swapped:
        return True
    raise ValueError(f"`inputs` of shape {x.shape} fit model {model.name!r} (input shape {shape}) in neither "
                     f"channel order; Quantus passes (N, C, H, W) or the model's own order.")

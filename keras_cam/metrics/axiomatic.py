"""Axioms: does the map have the properties an attribution is asked to have?

- :func:`completeness` (Sundararajan et al. 2017): the attributions add up to
  the change of the score between the image and a baseline;
- :func:`non_sensitivity` (Nguyen and Martínez 2020): features the model
  ignores get no attribution, and features with no attribution do not move
  the prediction;
- :func:`input_invariance` (Kindermans et al. 2017): a constant shift of the
  input, absorbed by the first layer's bias so that the model computes the
  same function, leaves the map unchanged.

``completeness`` and ``non_sensitivity`` take ``(model, images, maps)``;
``input_invariance`` rebuilds the explainer on a shifted copy of the model
(the user's model and weights are never modified). Perturbed inputs are
built on the device (``keras.ops``), ``batch_size`` per compiled model call,
pairs of several images sharing a call.
"""

from __future__ import annotations

import collections
import math
import numbers

import numpy as np

from keras_cam import _compat
from keras_cam._compat import ops, to_host
from keras_cam.compiled import Compiled
from keras_cam.inputs import as_batch
from keras_cam.metrics._scoring import (
    check_batch_size,
    check_logits,
    explained_classes,
    checked_inputs,
    get_scorer,
    check_reduce,
    reduced,
)

_BASELINES = ("black", "white", "mean")
_compiled = collections.OrderedDict()


def _baseline_values(x_last, baseline):
    """One fill value per image ``(N,)``: its minimum ("black", Quantus's default), maximum, mean, or a number."""
    axes = tuple(range(1, len(x_last.shape)))
    if isinstance(baseline, str):
        if baseline == "black":
            return ops.min(x_last, axis=axes)
        if baseline == "white":
            return ops.max(x_last, axis=axes)
        if baseline == "mean":
            return ops.mean(x_last, axis=axes)
    elif isinstance(baseline, numbers.Real) and not isinstance(baseline, bool) and math.isfinite(baseline):
        return ops.full((int(x_last.shape[0]),), float(baseline), dtype="float32")
    raise ValueError(f"`baseline` must be one of {_BASELINES} (per image) or a finite number; received {baseline!r}.")


def _score_fn(model, scorer):
    """The explained class's score ``(b,)`` (logit or probability), compiled once per model."""
    key = id(model)
    if key not in _compiled or _compiled[key][0] is not model:
        graph = scorer.graph

        def scores(images, idx, probability):
            _, outputs = graph.forward(images)
            s = graph.scores(outputs)
            if probability:
                s = graph.probabilities(s)
            return ops.take_along_axis(s, ops.cast(idx, "int32")[:, None], axis=1)[:, 0]

        _compiled[key] = (model, {p: Compiled(lambda i, c, p=p: scores(i, c, p), model=model) for p in (False, True)})
        while len(_compiled) > 4:
            _compiled.popitem(last=False)
    _compiled.move_to_end(key)
    return _compiled[key][1]


def _output(output):
    if output not in ("score", "probability"):
        raise ValueError(f"`output` must be \"score\" (the logit the explainers differentiate) or \"probability\"; "
                         f"received {output!r}.")
    return output == "probability"


def completeness(model, images, maps, targets=None, *, baseline="black", output="score", batch_size=32,
                 reduce="mean"):
    """Completeness (Sundararajan et al., ICML 2017): how far the attributions are from adding up to the score's change.

    ``gap(x) = | sum_p E_p(x) - (f_c(x) - f_c(x_0)) |``

    with ``f_c`` the explained class's score (the logit, as the explainers
    differentiate it; ``output="probability"`` for the softmax probability)
    and ``x_0`` the baseline image, every pixel and channel set to the
    image's minimum ("black", Quantus's default), maximum ("white"), mean, or
    a number. Integrated Gradients from that baseline has gap 0 (up to its
    Riemann sum). Lower is better (↓); the map's values are used as given (a
    map scaled to [0, 1] sums to no score change: explain with
    ``normalize=False``). Quantus: ``Completeness`` returns the boolean
    ``gap == 0`` (with ``output_func`` applied to the change); this is the
    gap itself. Cost: 2 model calls per image.

    Args:
        model: the Keras model.
        images: ``(N, *S, C)`` as the model takes it.
        maps: ``(N, *S)`` attributions (summed over channels).
        targets: None (top-1), an int, or one int per image.
        baseline: ``"black"``, ``"white"``, ``"mean"`` or a number.
        output: ``"score"`` (logit) or ``"probability"``.
        batch_size: images per model call.
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean gap, a float >= 0; with ``reduce=None`` the ``(N,)`` gaps.
    """
    check_batch_size(batch_size)
    check_reduce(reduce)
    probability = _output(output)
    scorer = get_scorer(model)
    x, m = checked_inputs(images, maps, scorer)
    _, idx = explained_classes(scorer, x, targets, batch_size)
    fn = _score_fn(model, scorer)[probability]
    fill = _baseline_values(x, baseline)
    base = ops.broadcast_to(ops.reshape(fill, (-1,) + (1,) * (len(x.shape) - 1)), x.shape)
    change, first = [], None
    for i in range(0, len(m), batch_size):
        c = ops.convert_to_tensor(idx[i:i + batch_size].astype(np.int32))
        scores = np.asarray(to_host(fn(x[i:i + batch_size], c)), np.float64)
        change.append(scores - np.asarray(to_host(fn(base[i:i + batch_size], c)), np.float64))
        first = scores if first is None else first
    if not probability and scorer.graph.opaque_head:  # logits asked for: are they probabilities? (one batch)
        c = ops.convert_to_tensor(idx[:batch_size].astype(np.int32))
        check_logits(scorer.graph, first, to_host(_score_fn(model, scorer)[True](x[:batch_size], c)), stacklevel=5)
    total = m.reshape(len(m), -1).astype(np.float64).sum(axis=1)
    return reduced(np.abs(total - np.concatenate(change)), reduce)


def non_sensitivity(model, images, maps, targets=None, *, eps=1e-5, features_in_step=1, baseline="black",
                    batch_size=32, reduce="mean"):
    """Non-sensitivity (Nguyen and Martínez 2020): features where attribution and effect disagree, counted.

    The pixels are split, in raster order, into groups of
    ``features_in_step``; each group in turn is set to the baseline (every
    channel; the image's minimum by default) and the explained class's
    probability ``f_c`` read again. A group *has no effect* when
    ``|f_c(x_g) - f_c(x)| < eps``, and *no attribution* when every ``|E_p| <
    eps`` in it;

    ``NS(x) = #{g : no effect(g) XOR no attribution(g)}``,

    0 when the map is zero exactly where the model does not look. Lower is
    better (↓). Quantus: ``NonSensitivity`` (defaults ``eps=1e-5``,
    ``features_in_step=1``, black baseline; pass it ``normalise=False``: the
    map's values are compared with ``eps`` as given, keras-cam maps lie in
    [0, 1]). Quantus's features are single channel values; here a pixel's
    channels move together, which is the same for one channel. Cost:
    ``ceil(pixels / features_in_step)`` model calls per image, ``batch_size``
    per compiled call.

    Args:
        model: the Keras model.
        images: ``(N, *S, C)`` as the model takes it.
        maps: ``(N, *S)`` maps.
        targets: None (top-1), an int, or one int per image.
        eps: the threshold of both tests.
        features_in_step: pixels per group.
        baseline: ``"black"``, ``"white"``, ``"mean"`` or a number.
        batch_size: perturbed images per model call.
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean count, a float in [0, groups]; with ``reduce=None`` the ``(N,)`` counts.
    """
    check_batch_size(batch_size)
    check_reduce(reduce)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"`eps` must be a finite number > 0; received {eps!r}.")
    if isinstance(features_in_step, bool) or not isinstance(features_in_step, (int, np.integer)) \
            or features_in_step < 1:
        raise ValueError(f"`features_in_step` must be a positive int; received {features_in_step!r}.")
    scorer = get_scorer(model)
    x, m = checked_inputs(images, maps, scorer)
    probs, idx = explained_classes(scorer, x, targets, batch_size)
    n, pixels = len(m), int(np.prod(m.shape[1:]))
    groups = -(-pixels // features_in_step)
    group_of = np.arange(pixels) // features_in_step
    quiet = np.ones((n, groups), bool)
    np.logical_and.at(quiet, (slice(None), group_of), np.abs(m.reshape(n, -1)) < eps)
    flat = ops.reshape(x, (n, pixels, -1))
    fill = _baseline_values(x, baseline)
    group_t = ops.convert_to_tensor(group_of.astype(np.int32))
    fn = _score_fn(model, scorer)[True]
    moved = np.zeros((n, groups), bool)
    total = n * groups
    for start in range(0, total, batch_size):
        k = np.arange(start, min(total, start + batch_size))
        rows, g = k // groups, k % groups
        rows_t = ops.convert_to_tensor(rows.astype(np.int32))
        hit = ops.expand_dims(group_t[None, :] == ops.convert_to_tensor(g.astype(np.int32))[:, None], -1)
        fills = ops.reshape(ops.take(fill, rows_t, axis=0), (-1, 1, 1))
        perturbed = ops.reshape(ops.where(hit, fills, ops.take(flat, rows_t, axis=0)), (len(k),) + tuple(x.shape[1:]))
        p = np.asarray(to_host(fn(perturbed, ops.convert_to_tensor(idx[rows].astype(np.int32)))), np.float64)
        moved[rows, g] = np.abs(p - probs[rows]) >= eps
    count = ((~moved) ^ quiet).sum(axis=1)
    return reduced(count, reduce)


# ----------------------------------------------------------------------------- input invariance

_SHIFTABLE = ("Dense", "Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D")


def shifted_copy(model, shift):
    """A copy of ``model`` computing on ``x + shift`` what ``model`` computes on ``x``.

    The first layer with weights (a ``Dense`` or ``ConvND`` with a bias, fed
    by the input) gets the bias ``b - shift * sum of its kernel over every
    axis but the output one``, so that its pre-activation is unchanged at
    every position its kernel sees no padding (everywhere for ``Dense`` and
    ``padding="valid"``). ``model`` and its weights are not modified.

    Args:
        model: the Keras model to copy (it must be clonable by ``keras.models.clone_model``).
        shift: the constant (a number) added to every input element of the copy.

    Returns:
        The shifted copy, a new Keras model with the same weights but that first bias.

    Raises:
        ValueError: when the model cannot be copied, or its first layer with
            weights is not a biased Dense/Conv layer.
    """
    copy = _compat.copy_model(model, "input_invariance shifts a copy of the model")
    first = next((layer for layer in copy.layers if layer.weights), None)
    kind = type(first).__name__ if first is not None else None
    if first is None or _compat.is_model(first) or kind not in _SHIFTABLE or not getattr(first, "use_bias", False):
        raise ValueError(
            f"input_invariance absorbs the input shift into the bias of the model's first layer with weights, "
            f"which must be a Dense or Conv1D/2D/3D layer with use_bias=True; {model.name!r} has {kind}."
        )
    kernel, bias = first.get_weights()[:2]
    delta = shift * np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1]).sum(axis=0)
    first.set_weights([kernel, (bias - delta).astype(bias.dtype)] + first.get_weights()[2:])
    return copy


def input_invariance(explainer_cls, model, images, targets=None, *, explainer_kwargs=None, shift=-1.0, atol=1e-4,
                     reduce="mean"):
    """Input invariance (Kindermans et al. 2017): is the map unchanged by a constant input shift the model absorbs?

    A copy of the model whose first layer's bias absorbs the shift
    (:func:`shifted_copy`) computes on ``x + shift`` what the model computes
    on ``x``; the method explains ``x`` on the model and ``x + shift`` on
    the copy, the same classes (top-1 of the model by default);

    ``II(x) = 1`` if every pixel satisfies ``|E(x) - E'(x + shift)| <= atol + 1e-5 |E'(x + shift)|`` (``numpy.isclose``), else 0.

    Gradients and Grad-CAM are invariant; gradient times input and
    Integrated Gradients from a zero baseline are not. Higher is better
    (↑). Quantus: ``InputInvariance`` (defaults ``input_shift=-1``,
    ``atol=1e-4``), which returns booleans. Cost: 2 explainer calls per
    image, and one copy of the model. With ``padding="same"`` the borders
    are not compensated (the shift is not absorbed where the kernel reads
    padding), as in Quantus.

    Args:
        explainer_cls: an explainer class (``keras_cam.GradCAM``...) or a
            callable ``f(model, **explainer_kwargs)`` returning an explainer.
        model: the Keras model; it is not modified.
        images: a batch as the model takes it.
        targets: None (top-1), an int, or one int per image.
        explainer_kwargs: keyword arguments for ``explainer_cls``.
        shift: the constant added to every input value.
        atol: the tolerance of the comparison.
        reduce: ``"mean"`` (the share of invariant images) or None (1.0 or 0.0 per image).

    Returns:
        The share of images whose map is unchanged, a float in [0, 1]; with
        ``reduce=None`` the ``(N,)`` values.
    """
    check_reduce(reduce)
    if not _compat.is_model(model):
        raise TypeError(f"`model` must be a Keras model; received {type(model).__name__}.")
    if not callable(explainer_cls):
        raise TypeError(f"`explainer_cls` must be an explainer class such as keras_cam.GradCAM; received "
                        f"{type(explainer_cls).__name__}.")
    for value, name in ((shift, "shift"), (atol, "atol")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"`{name}` must be a finite number; received {value!r}.")
    if atol < 0:
        raise ValueError(f"`atol` must be >= 0; received {atol!r}.")
    kwargs = dict(explainer_kwargs or {})
    copy = shifted_copy(model, float(shift))
    original = explainer_cls(model, **kwargs)
    x, _ = as_batch(images, original.graph.inputs)
    x = np.asarray(to_host(x), np.float32)
    first = original.explain(x, targets)
    fixed = targets if first.targets is None else np.asarray(first.targets)
    moved = np.asarray(explainer_cls(copy, **kwargs)(x + np.float32(shift), fixed), np.float64)
    a = np.asarray(first.maps, np.float64)
    same = np.isclose(a, moved, atol=atol).reshape(len(a), -1).all(axis=1)
    return reduced(same.astype(np.float64), reduce)


__all__ = ["completeness", "input_invariance", "non_sensitivity", "shifted_copy"]

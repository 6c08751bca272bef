"""Robustness: does the map stay put when the input barely moves?

Explainer-based (they explain perturbed or shifted copies of each image again):

- :func:`avg_sensitivity` (Yeh et al. 2019): the mean relative change of
  the map under small uniform noise (:func:`keras_cam.metrics.max_sensitivity`
  is its maximum);
- :func:`local_lipschitz_estimate` (Alvarez-Melis and Jaakkola 2018): the
  largest ratio of the map's change to the input's change under Gaussian noise;
- :func:`continuity` (Montavon et al. 2018): the same ratio for the image
  translated along its last spatial axis;
- :func:`relative_input_stability`, :func:`relative_output_stability`,
  :func:`relative_representation_stability` (Agarwal et al. 2022): the
  relative change of the map over the relative change of the input, of the
  logits, or of a layer's activations.

Map-based: :func:`consistency` (Dasgupta et al. 2022), how often images
whose maps look alike (the same discretized map) get the same prediction.

Every perturbed input is built on the device (``keras.ops``) from the
counter-based draws of :mod:`keras_cam.random` (the same on every backend,
each draw depending only on the seed, the image's position and the sample),
``batch_size`` (image, perturbation) pairs per explainer call, pairs of
several images sharing a call: memory is flat in the number of
perturbations. Where the papers leave a choice open (noise kind and level,
number of samples, norms), the defaults are those of Quantus 0.6; noise
levels are fractions of each image's value range ``max x - min x`` (over
all pixels and channels), which for images in [0, 1] is Quantus's absolute
level. Maps are compared as the explainer returns them (Quantus's
``abs=False, normalise=False``; keras-cam explainers scale each map to
[0, 1] already). Quantus can mark an image NaN when a perturbation changes
its prediction; these functions keep every perturbation, so no value is NaN.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from keras_cam import random as _random
from keras_cam import targets as _targets
from keras_cam._compat import ops, to_host
from keras_cam.compiled import Compiled
from keras_cam.graph import ActivationGraph
from keras_cam.metrics._scoring import (
    check_batch_size,
    check_reduce,
    check_seed,
    checked_inputs,
    explained_classes,
    explainer_batch,
    get_scorer,
    positive_int,
    reduced,
)


# ----------------------------------------------------------------------------- checks and the shared loop



def _nonnegative(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0; received {value!r}.")
    return float(value)




def _clean_maps(explainer, x, targets):
    """``(maps (N, P) float64, the classes to hold)`` of the unperturbed images.

    Computed twice: an explainer runs the first call of an input shape eagerly
    and the next ones compiled, and every perturbed map comes from the compiled
    computation (eager and compiled kernels round differently, ~1e-7)."""
    explainer.explain(x, targets)
    first = explainer.explain(x, targets)
    fixed = targets if first.targets is None else np.asarray(first.targets)
    return np.asarray(first.maps, np.float64).reshape(len(x), -1), fixed


def _take(classes, rows):
    if isinstance(classes, np.ndarray) and classes.ndim == 1:
        return classes[rows]
    return classes


def _value_range(x_last):
    axes = tuple(range(1, len(x_last.shape)))
    return ops.max(x_last, axis=axes) - ops.min(x_last, axis=axes)


def _pairs(n, samples, batch_size):
    """``(images, samples)`` index arrays of each chunk of ``batch_size`` pairs, image by image."""
    total = n * samples
    for start in range(0, total, batch_size):
        k = np.arange(start, min(total, start + batch_size))
        yield k // samples, k % samples


def _explain_chunks(explainer, x, classes, samples, batch_size, perturb):
    """Explain ``perturb(images, samples)`` (channels-last ``(b, *S, C)`` tensors) chunk by chunk.

    Yields ``(images, samples, perturbed inputs as host float64 (b, -1), maps (b, P) float64)``.
    """
    layout = explainer.graph.inputs
    for rows, steps in _pairs(len(x), samples, batch_size):
        moved = perturb(rows, steps)
        maps = explainer(layout.to_model_format(moved), _take(classes, rows))
        yield (rows, steps, np.asarray(to_host(moved), np.float64).reshape(len(rows), -1),
               np.asarray(to_host(maps), np.float64).reshape(len(rows), -1))


def _noise(x_last, seed, samples, kind, low, high):
    """``perturb(rows, steps)``: the images plus noise drawn for (image, sample) ids ``rows * samples + steps``.

    ``kind="uniform"``: ``U(low, high)`` times the image's value range;
    ``kind="normal"``: ``N(0, high^2)`` times the value range."""
    seed = check_seed(seed)
    shape = tuple(int(d) for d in x_last.shape[1:])
    span = _value_range(x_last)

    def perturb(rows, steps):
        ids = ops.convert_to_tensor((rows * samples + steps).astype(np.int32))
        rows_t = ops.convert_to_tensor(rows.astype(np.int32))
        if kind == "uniform":
            draw = low + (high - low) * _random.uniform(seed, ids, shape)
        else:
            draw = high * _random.normal(seed, ids, shape)
        scale = ops.reshape(ops.take(span, rows_t, axis=0), (-1,) + (1,) * len(shape))
        return ops.take(x_last, rows_t, axis=0) + draw * scale

    return perturb


def _prepare(explainer, images, targets, what, samples, batch_size, reduce):
    check_batch_size(batch_size)
    check_reduce(reduce)
    samples = positive_int(samples, "samples")
    x = explainer_batch(explainer, images, what)
    base, classes = _clean_maps(explainer, x, targets)
    x_last = explainer.graph.inputs.to_channels_last(ops.convert_to_tensor(x))
    return x, x_last, base, classes, samples


def _ratio(num, den):
    """``num / den`` with ``0 / 0 = 0`` and ``a / 0 = inf``."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.where(num > 0, np.inf, 0.0), where=den > 0)


# ----------------------------------------------------------------------------- sensitivity and Lipschitz

def avg_sensitivity(explainer, images, targets=None, radius=0.2, samples=200, seed=0, *, batch_size=32,
                    reduce="mean"):
    """Average sensitivity (Yeh et al., NeurIPS 2019): the mean relative change of the map under small noise.

    ``AvgSENS(x) = (1/K) sum_k ||E(x + d_k) - E(x)||_F / ||E(x)||_F`` over
    ``K = samples`` perturbations ``d_k`` drawn uniformly in the L-infinity
    ball of radius ``radius * (max x - min x)``, ``E`` the map, the class held
    at the one explained on ``x``. Lower is better (↓); 0 at ``radius=0``. An
    image whose map is all zeros scores 0 if every perturbed map is all zeros
    too, and infinity otherwise. Quantus: ``AvgSensitivity`` (defaults
    ``nr_samples=200``, ``lower_bound=0.2`` absolute, the same for images in
    [0, 1]). Cost: ``samples`` explainer calls per image, ``batch_size``
    perturbed images per call.

    Args:
        explainer: a keras-cam explainer (``keras_cam.GradCAM(model)``...).
        images: a batch as the explainer's model takes it.
        targets: None (top-1), an int, one int per image, or a callable target.
        radius: the noise's half-width, a fraction of each image's value range.
        samples: perturbations per image.
        seed: the seed of the perturbations (:mod:`keras_cam.random`).
        batch_size: (image, perturbation) pairs per explainer call.
        reduce: ``"mean"`` (the mean over images) or None (one value per image).

    Returns:
        The mean over images, a float >= 0; with ``reduce=None`` the ``(N,)`` values.

    Example:
        >>> keras_cam.metrics.avg_sensitivity(keras_cam.GradCAM(model), images, samples=20)
    """
    radius = _nonnegative(radius, "radius")
    x, x_last, base, classes, samples = _prepare(explainer, images, targets, "avg_sensitivity", samples,
                                                 batch_size, reduce)
    total = np.zeros(len(x))
    norm = np.linalg.norm(base, axis=1)
    perturb = _noise(x_last, seed, samples, "uniform", -radius, radius)
    for rows, _, _, maps in _explain_chunks(explainer, x, classes, samples, batch_size, perturb):
        np.add.at(total, rows, _ratio(np.linalg.norm(maps - base[rows], axis=1), norm[rows]))
    return reduced(total / samples, reduce)


def local_lipschitz_estimate(explainer, images, targets=None, std=0.1, samples=200, seed=0, *, batch_size=32,
                             reduce="mean"):
    """Local Lipschitz estimate (Alvarez-Melis and Jaakkola 2018): the largest ratio of map change to input change.

    ``L(x) = max_k ||E(x + d_k) - E(x)||_2 / (||d_k||_2 + 1e-10)`` over
    ``K = samples`` Gaussian perturbations ``d_k ~ N(0, (std (max x - min x))^2)``
    per element (the paper maximizes over a ball; sampling it is Quantus's
    estimate), ``E`` the map, the class held. Lower is better (↓). Quantus:
    ``LocalLipschitzEstimate`` (defaults ``nr_samples=200``,
    ``perturb_std=0.1`` absolute, Euclidean norms, ``eps=1e-10``; pass it
    ``normalise=False`` to compare maps as given). Cost: ``samples``
    explainer calls per image.

    Args:
        explainer: a keras-cam explainer.
        images: a batch as the explainer's model takes it.
        targets: None (top-1), an int, one int per image, or a callable target.
        std: the noise's standard deviation, a fraction of each image's value range.
        samples: perturbations per image.
        seed: the seed of the perturbations.
        batch_size: (image, perturbation) pairs per explainer call.
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean over images, a float >= 0; with ``reduce=None`` the ``(N,)`` values.
    """
    std = _nonnegative(std, "std")
    x, x_last, base, classes, samples = _prepare(explainer, images, targets, "local_lipschitz_estimate",
                                                 samples, batch_size, reduce)
    flat = np.asarray(to_host(x_last), np.float64).reshape(len(x), -1)
    worst = np.zeros(len(x))
    perturb = _noise(x_last, seed, samples, "normal", 0.0, std)
    for rows, _, moved, maps in _explain_chunks(explainer, x, classes, samples, batch_size, perturb):
        value = np.linalg.norm(maps - base[rows], axis=1) / (np.linalg.norm(moved - flat[rows], axis=1) + 1e-10)
        np.maximum.at(worst, rows, value)
    return reduced(worst, reduce)


def _shifts(width, steps):
    """Quantus's translations: ``-W + t (2W + 1) // steps`` for ``t = 1..steps``, without the null one."""
    dx = (2 * width + 1) // steps
    if dx == 0:
        raise ValueError(f"`steps` must be at most 2 W + 1 = {2 * width + 1} for a last spatial axis of "
                         f"{width} positions (each step moves the image by (2 W + 1) // steps); received {steps}.")
    shifts = -width + dx * np.arange(1, steps + 1)
    return shifts[shifts != 0]


def continuity(explainer, images, targets=None, steps=None, *, batch_size=32, reduce="mean"):
    """Continuity (Montavon et al. 2018): the largest ratio of map change to input change under translation.

    The image is translated by ``t`` positions along its last spatial axis
    (width; time for a signal), the uncovered positions filled with the
    image's minimum ("black"), for Quantus's ``steps`` translations ``t = -W +
    k floor((2W + 1) / steps)``, ``k = 1..steps`` (a null translation, which
    changes nothing, is skipped);

    ``C(x) = max_t ||E(x_t) - E(x)||_1 / (||x_t - x||_2 + 1e-9)``,

    ``E`` the map, the class held. Lower is better (↓). Quantus:
    ``Continuity`` (defaults ``nr_steps=28``, black padding; pass it
    ``abs=False, normalise=False`` to compare maps as given). Deterministic.
    Cost: ``steps`` explainer calls per image.

    Args:
        explainer: a keras-cam explainer.
        images: a batch as the explainer's model takes it.
        targets: None (top-1), an int, one int per image, or a callable target.
        steps: the number of translations, at most ``2 W + 1``; None:
            Quantus's 28, or ``2 W + 1`` for an axis shorter than 14.
        batch_size: (image, translation) pairs per explainer call.
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean over images, a float >= 0; with ``reduce=None`` the ``(N,)`` values.
    """
    x, x_last, base, classes, _ = _prepare(explainer, images, targets, "continuity", 1, batch_size, reduce)
    shape = tuple(int(d) for d in x_last.shape)
    width, channels = shape[-2], shape[-1]
    steps = min(28, 2 * width + 1) if steps is None else positive_int(steps, "steps")
    shifts = _shifts(width, steps)
    grid = ops.reshape(x_last, (shape[0], -1, width, channels))
    fill = ops.min(ops.reshape(x_last, (shape[0], -1)), axis=1)
    j = np.arange(width)

    def perturb(rows, which):
        t = shifts[which]
        move = (j[None, None, :] == (j[None, :, None] - t[:, None, None])).astype(np.float32)  # (b, W_out, W_in)
        covered = move.sum(axis=2)                                                            # (b, W_out)
        rows_t = ops.convert_to_tensor(rows.astype(np.int32))
        moved = ops.einsum("bjk,brkc->brjc", ops.convert_to_tensor(move), ops.take(grid, rows_t, axis=0))
        pad = ops.reshape(ops.take(fill, rows_t, axis=0), (-1, 1, 1, 1)) * \
            ops.convert_to_tensor((1.0 - covered)[:, None, :, None])
        return ops.reshape(moved + pad, (len(rows),) + shape[1:])

    flat = np.asarray(to_host(x_last), np.float64).reshape(len(x), -1)
    worst = np.zeros(len(x))
    for rows, _, moved, maps in _explain_chunks(explainer, x, classes, len(shifts), batch_size, perturb):
        value = np.abs(maps - base[rows]).sum(axis=1) / (np.linalg.norm(moved - flat[rows], axis=1) + 1e-9)
        np.maximum.at(worst, rows, value)
    return reduced(worst, reduce)


# ----------------------------------------------------------------------------- relative stability

def _relative(a, b, eps):
    """``||(a - b) / (a + eps [a == 0])||_2`` per row."""
    return np.linalg.norm((a - b) / (a + (a == 0) * eps), axis=1)


class _Forward:
    """Logits or one layer's activations of an explainer's model, compiled, on channels-last batches."""

    def __init__(self, explainer, layer):
        graph = explainer.graph
        self.graph = ActivationGraph(graph.model, layers=[] if layer is None else [layer], output=graph.output,
                                     data_format=graph.data_format)
        self.layer = layer
        self.run = Compiled(self._run, model=graph.model)

    def _run(self, images):
        features, outputs = self.graph.forward(images)
        if self.layer is None:
            return self.graph.scores(outputs)
        return ops.reshape(ops.cast(features[0], "float32"), (int(images.shape[0]), -1))

    def __call__(self, images):
        return np.asarray(to_host(self.run(images)), np.float64)


def _relative_stability(kind, explainer, images, targets, samples, low, high, seed, eps, layer, batch_size,
                        reduce):
    what = f"relative_{kind}_stability"
    low, high = _nonnegative(low, "low"), _nonnegative(high, "high")
    if high < low:
        raise ValueError(f"`high` must be >= `low`; received low={low!r}, high={high!r}.")
    eps = _nonnegative(eps, "eps")
    if eps == 0:
        raise ValueError("`eps` must be > 0: it replaces the zeros that the relative changes divide by.")
    x, x_last, base, classes, samples = _prepare(explainer, images, targets, what, samples, batch_size, reduce)
    if kind == "input":
        reference = np.asarray(to_host(x_last), np.float64).reshape(len(x), -1)
        forward = None
    else:
        forward = _Forward(explainer, layer if kind == "representation" else None)
        x_t = ops.convert_to_tensor(x_last)
        reference = np.concatenate([forward(x_t[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    worst = np.zeros(len(x))
    perturb = _noise(x_last, seed, samples, "uniform", low, high)
    for rows, steps, moved, maps in _explain_chunks(explainer, x, classes, samples, batch_size, perturb):
        num = _relative(base[rows], maps, eps)
        if kind == "input":
            den = _relative(reference[rows], moved, eps)
        else:
            shape = (len(rows),) + tuple(int(d) for d in x_last.shape[1:])
            out = forward(ops.convert_to_tensor(moved.reshape(shape).astype(np.float32)))
            den = (np.linalg.norm(reference[rows] - out, axis=1) if kind == "output"
                   else _relative(reference[rows], out, eps))
        den = den + (den == 0) * eps
        np.maximum.at(worst, rows, num / den)
    return reduced(worst, reduce)


def relative_input_stability(explainer, images, targets=None, samples=200, low=0.02, high=0.2, seed=0, *,
                             eps=1e-6, batch_size=32, reduce="mean"):
    """Relative input stability (Agarwal et al. 2022): the map's relative change over the input's.

    ``RIS(x) = max_k ||(E(x) - E(x'_k)) / E(x)||_2 / max(||(x - x'_k) / x||_2, eps)``
    over ``K = samples`` perturbed inputs ``x'_k = x + d_k``, ``d_k`` uniform in
    ``[low, high]`` times the image's value range per element (Quantus's
    uniform noise in [0.02, 0.2]), the divisions elementwise, a zero divisor
    replaced by ``eps`` (Quantus's ``eps_min=1e-6``), ``E`` the map with the
    class held. Lower is better (↓). Quantus: ``RelativeInputStability``
    (pass it ``return_nan_when_prediction_changes=False``: these functions
    keep every perturbation). Cost: ``samples`` explainer calls per image,
    ``batch_size`` pairs per call.

    Args:
        explainer: a keras-cam explainer (``keras_cam.GradCAM(model)``...).
        images: a batch as the explainer's model takes it.
        targets: None (top-1), an int, one int per image, or a callable target.
        samples: perturbations per image.
        low: the noise's lower end, a fraction of each image's value range.
        high: the noise's upper end (at least ``low``), a fraction of each image's value range.
        seed: the seed of the perturbations (:mod:`keras_cam.random`).
        eps: what a zero divisor becomes (> 0).
        batch_size: (image, perturbation) pairs per call.
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean over images, a float >= 0; with ``reduce=None`` the ``(N,)`` values.
    """
    return _relative_stability("input", explainer, images, targets, samples, low, high, seed, eps, None,
                               batch_size, reduce)


def relative_output_stability(explainer, images, targets=None, samples=200, low=0.02, high=0.2, seed=0, *,
                              eps=1e-6, batch_size=32, reduce="mean"):
    """Relative output stability (Agarwal et al. 2022): the map's relative change over the logits' change.

    ``ROS(x) = max_k ||(E(x) - E(x'_k)) / E(x)||_2 / max(||h(x) - h(x'_k)||_2, eps)``
    over ``K = samples`` perturbed inputs ``x'_k = x + d_k``, ``d_k`` uniform in
    ``[low, high]`` times the image's value range per element (Quantus's
    uniform noise in [0.02, 0.2]), the divisions elementwise, a zero divisor
    replaced by ``eps`` (Quantus's ``eps_min=1e-6``), ``E`` the map with the
    class held, ``h`` the logits (the class scores before a final softmax).
    Lower is better (↓). Quantus: ``RelativeOutputStability`` (pass it
    ``return_nan_when_prediction_changes=False``: these functions keep every
    perturbation). Cost: ``samples`` explainer calls per image and one
    forward pass per perturbation, ``batch_size`` pairs per call.

    Args:
        explainer: a keras-cam explainer (``keras_cam.GradCAM(model)``...).
        images: a batch as the explainer's model takes it.
        targets: None (top-1), an int, one int per image, or a callable target.
        samples: perturbations per image.
        low: the noise's lower end, a fraction of each image's value range.
        high: the noise's upper end (at least ``low``), a fraction of each image's value range.
        seed: the seed of the perturbations (:mod:`keras_cam.random`).
        eps: what a zero divisor becomes (> 0).
        batch_size: (image, perturbation) pairs per call.
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean over images, a float >= 0; with ``reduce=None`` the ``(N,)`` values.
    """
    return _relative_stability("output", explainer, images, targets, samples, low, high, seed, eps, None,
                               batch_size, reduce)


def relative_representation_stability(explainer, images, targets=None, samples=200, low=0.02, high=0.2, seed=0,
                                      *, layer=None, eps=1e-6, batch_size=32, reduce="mean"):
    """Relative representation stability (Agarwal et al. 2022): the map's relative change over a layer's.

    ``RRS(x) = max_k ||(E(x) - E(x'_k)) / E(x)||_2 / max(||(L(x) - L(x'_k)) / L(x)||_2, eps)``
    over ``K = samples`` perturbed inputs ``x'_k = x + d_k``, ``d_k`` uniform in
    ``[low, high]`` times the image's value range per element (Quantus's
    uniform noise in [0.02, 0.2]), the divisions elementwise, a zero divisor
    replaced by ``eps`` (Quantus's ``eps_min=1e-6``), ``E`` the map with the
    class held, ``L`` the activations of ``layer``. Lower is better (↓).
    Quantus: ``RelativeRepresentationStability`` with ``layer_names=[layer]``
    (pass it ``return_nan_when_prediction_changes=False``: these functions
    keep every perturbation). Cost: ``samples`` explainer calls per image and
    one forward pass per perturbation, ``batch_size`` pairs per call.

    Args:
        explainer: a keras-cam explainer (``keras_cam.GradCAM(model)``...).
        images: a batch as the explainer's model takes it.
        targets: None (top-1), an int, one int per image, or a callable target.
        samples: perturbations per image.
        low: the noise's lower end, a fraction of each image's value range.
        high: the noise's upper end (at least ``low``), a fraction of each image's value range.
        seed: the seed of the perturbations (:mod:`keras_cam.random`).
        layer: the layer name whose activations ``L`` are compared; None: the explainer's
            (first) target layer.
        eps: what a zero divisor becomes (> 0).
        batch_size: (image, perturbation) pairs per call.
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean over images, a float >= 0; with ``reduce=None`` the ``(N,)`` values.
    """
    if layer is None:
        if getattr(explainer, "graph", None) is None:  # a model, not an explainer: the TypeError that says so
            explainer_batch(explainer, images, "relative_representation_stability")
        paths = [p for p in getattr(explainer.graph, "paths", []) if p is not None]
        if not paths:
            raise ValueError("relative_representation_stability compares a layer's activations: pass `layer=` "
                             "(a layer name); this explainer has no target layer to default to.")
        layer = paths[0]
    return _relative_stability("representation", explainer, images, targets, samples, low, high, seed, eps, layer,
                               batch_size, reduce)


# ----------------------------------------------------------------------------- consistency

def _labels(maps, discretize, n):
    flat = maps.reshape(len(maps), -1)
    if callable(discretize):
        return [discretize(row) for row in flat]
    if discretize == "sign":
        return [np.sign(row[:n]).tobytes() for row in flat]
    if discretize == "top":
        return [np.sort(np.argsort(-row, kind="stable")[:n]).tobytes() for row in flat]
    raise ValueError(f"`discretize` must be \"sign\", \"top\" or a callable map -> hashable; received {discretize!r}.")


def consistency(model, images, maps, targets=None, *, discretize="sign", n=5, batch_size=32, reduce="mean"):
    """Consistency (Dasgupta et al., ICML 2022): do images with the same discretized map get the same prediction?

    Each map is discretized to a label ``D(E_i)``; with ``y_i`` the model's
    top-1 class,

    ``C_i = |{j != i : D(E_j) = D(E_i), y_j = y_i}| / |{j != i : D(E_j) = D(E_i)}|``

    over the other images of the batch (0 when no other image shares the
    label). Higher is better (↑). The paper leaves ``D`` open; the default is
    Quantus's: the signs of the map's first ``n = 5`` values (raster order),
    which for non-negative maps only tells which of them are zero;
    ``discretize="top"`` uses the positions of the ``n`` largest values.
    Quantus: ``Consistency`` (pass it ``abs=False, normalise=False``). Cost:
    one model call per image.

    Args:
        model: the Keras model.
        images: ``(N, *S, C)`` as the model takes it.
        maps: ``(N, *S)`` maps.
        targets: not used (the definition compares the model's top-1
            predictions); accepted so that every ``(model, images, maps)``
            metric is called alike.
        discretize: ``"sign"``, ``"top"``, or a callable ``f(flat map) -> hashable``.
        n: how many values the discretization reads.
        batch_size: images per model call.
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean over images, a float in [0, 1]; with ``reduce=None`` the ``(N,)`` values.
    """
    check_batch_size(batch_size)
    check_reduce(reduce)
    n = positive_int(n, "n")
    scorer = get_scorer(model)
    x, m = checked_inputs(images, maps, scorer)
    if not callable(targets):  # not used, but a wrong one is a caller's bug: refuse it as every metric does
        _targets.class_indices(targets, len(m), scorer.graph.num_classes)
    _, predicted = explained_classes(scorer, x, None, batch_size)
    labels = _labels(m, discretize, n)
    same = np.array([[a == b for b in labels] for a in labels])
    np.fill_diagonal(same, False)
    agree = same & (predicted[:, None] == predicted[None, :])
    count = same.sum(axis=1)
    return reduced(np.divide(agree.sum(axis=1), count, out=np.zeros(len(count)), where=count > 0), reduce)

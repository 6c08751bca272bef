"""Randomization: does the map change when the model's learned weights are destroyed?

Beside the cascading :func:`keras_cam.sanity_check` (Adebayo et al. 2018)
and :func:`keras_cam.metrics.random_logit`, the two variants of Hedström et
al. ("Sanity checks revisited", TMLR 2023/2024):

- :func:`smooth_mprt`: the Spearman rank correlation between the
  *denoised* maps (averaged over noisy copies of the image, as SmoothGrad)
  of the trained model and of the fully randomized one; lower is better;
- :func:`efficient_mprt`: the relative rise of the map's discrete entropy
  from the trained to the fully randomized model; higher is better.

Both run on a copy of the model (``keras.models.clone_model`` with the
user's weights copied into it); the user's model and weights are never
touched, also when an error is raised midway. The randomization is
Quantus's for Keras: every layer that has weights, each weight array
permuted along its first axis by ``numpy.random.RandomState(seed + 1)``
(``randomize="permute"``), or ``randomize="gaussian"``:
:func:`keras_cam.sanity_check`'s re-initialization, Gaussian with each
array's own mean and standard deviation. The cascade from the output
(or the input) down ends with every layer randomized whatever the order,
so only the trained and the fully randomized models are explained.
(Quantus's Keras wrapper clones the model without copying its weights, so
its "randomized" model permutes fresh initial weights; the two agree for a
model whose weights are its seeded initial values.)
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from keras_cam import _compat
from keras_cam import random as _random
from keras_cam._compat import ops, to_host
from keras_cam.inputs import as_batch
from keras_cam.metrics._scoring import check_batch_size, check_reduce, check_seed, reduced

RANDOMIZATIONS = ("permute", "gaussian")


def randomized_copy(model, seed=42, randomize="permute"):
    """A copy of ``model`` with every layer's weights randomized; ``model`` is not modified.

    Args:
        model: a Keras model.
        seed: the seed of the randomization.
        randomize: ``"permute"`` (each weight array of each layer with
            weights permuted along its first axis by
            ``numpy.random.RandomState(seed + 1)``, Quantus's rule) or
            ``"gaussian"`` (trainable arrays redrawn from a Gaussian with
            their own mean and standard deviation, one generator seeded with
            ``seed``; constant arrays and non-trainable state kept).

    Returns:
        The randomized copy.
    """
    if randomize not in RANDOMIZATIONS:
        raise ValueError(f"`randomize` must be one of {RANDOMIZATIONS}; received {randomize!r}.")
    _check_seed(seed)
    copy = _compat.copy_model(model, "MPRT randomizes a copy of the model")
    rng = np.random.default_rng(seed)
    for layer in [layer for layer in copy.layers if layer.get_weights()]:
        values = layer.get_weights()
        if randomize == "permute":
            state = np.random.RandomState(seed + 1)
            values = [state.permutation(v) for v in values]
        else:
            trainable = {id(w) for w in layer.trainable_weights}
            for k, w in enumerate(layer.weights):
                value = np.asarray(values[k], np.float64)
                if id(w) in trainable and value.std() > 0:
                    values[k] = rng.normal(value.mean(), value.std(), value.shape).astype(values[k].dtype)
        layer.set_weights(values)
    return copy


def _check_seed(seed):
    return check_seed(seed, below=2 ** 32 - 1, why=" (RandomState(seed + 1) permutes the weights)")


def _check(explainer_cls, model, explainer_kwargs, seed):
    if not _compat.is_model(model):
        raise TypeError(f"`model` must be a Keras model; received {type(model).__name__}.")
    if not callable(explainer_cls) or hasattr(explainer_cls, "explain") and not isinstance(explainer_cls, type):
        raise TypeError(
            f"`explainer_cls` must be an explainer class such as keras_cam.GradCAM, or a factory "
            f"f(model, **explainer_kwargs) (the method is rebuilt on a randomized copy of the model); "
            f"received {type(explainer_cls).__name__}."
        )
    if explainer_kwargs is not None and not isinstance(explainer_kwargs, dict):
        raise TypeError(f"`explainer_kwargs` must be a dict or None; received {type(explainer_kwargs).__name__}.")
    _check_seed(seed)


def spearman(a, b):
    """The Spearman rank correlation of each pair of rows ``(N, P)`` (ties share their average rank);
    0 where either row is constant (it has no ranking)."""
    from scipy.stats import rankdata

    ra = rankdata(np.asarray(a, np.float64), axis=1)
    rb = rankdata(np.asarray(b, np.float64), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1))
    return np.divide((ra * rb).sum(axis=1), den, out=np.zeros(len(ra)), where=den > 0)


def _flat(maps, n):
    return np.asarray(to_host(maps), np.float64).reshape(n, -1)


def _smoothed(explainer, x, classes, samples, noise, seed, batch_size):
    """``(N, P)`` mean of the maps of ``samples - 1`` noisy copies and the clean image, per image."""
    n = len(x)
    layout = explainer.graph.inputs
    x_last = layout.to_channels_last(ops.convert_to_tensor(x))
    shape = tuple(int(d) for d in x_last.shape[1:])
    axes = tuple(range(1, len(shape) + 1))
    std = (ops.max(x_last, axis=axes) - ops.min(x_last, axis=axes)) * noise
    total = None
    pairs = n * samples
    for start in range(0, pairs, batch_size):
        k = np.arange(start, min(pairs, start + batch_size))
        rows, steps = k // samples, k % samples
        rows_t = ops.convert_to_tensor(rows.astype(np.int32))
        draw = _random.normal(seed, ops.convert_to_tensor(k.astype(np.int32)), shape)
        clean = ops.convert_to_tensor((steps < samples - 1).astype(np.float32))          # the last sample is clean
        scale = ops.reshape(ops.take(std, rows_t, axis=0) * clean, (-1,) + (1,) * len(shape))
        moved = ops.take(x_last, rows_t, axis=0) + draw * scale
        maps = _flat(explainer(layout.to_model_format(moved), classes[rows]), len(k))
        if total is None:
            total = np.zeros((n, maps.shape[1]))
        np.add.at(total, rows, maps)
    return total / samples


def smooth_mprt(explainer_cls, model, images, targets=None, *, explainer_kwargs=None, samples=50, noise=0.1,
                seed=42, randomize="permute", batch_size=32, reduce="mean"):
    """Smooth MPRT (Hedström et al. 2023): rank correlation of denoised maps before and after randomizing the model.

    With ``S(x) = (1/K) (E(x) + sum_{k<K} E(x + d_k))``, ``d_k ~ N(0, (noise
    (max x - min x))^2)`` per element (``K = samples``; the last sample is
    the clean image, as in Quantus), for the trained model and for the
    fully randomized copy (:func:`randomized_copy`), the class held at the
    trained model's,

    ``sMPRT(x) = spearman(|S_trained(x)|, |S_random(x)|)``

    over the pixels (ties ranked by their average; a constant map has no
    ranking and scores 0). A method that depends on the learned weights
    scores near 0; near 1 it ignores them. Lower is better (↓). Quantus:
    ``SmoothMPRT`` with ``return_last_correlation=True`` (defaults
    ``nr_samples=50``, ``noise_magnitude=0.1``, ``seed=42``, ``abs=True``,
    Spearman). Cost: ``2 samples`` explainer calls per image, ``batch_size``
    noisy images per call.

    Args:
        explainer_cls: an explainer class (``keras_cam.GradCAM``...) or a
            callable ``f(model, **explainer_kwargs)`` returning an explainer.
        model: the trained Keras model; it is not modified.
        images: a batch as the model takes it.
        targets: None (top-1 of the trained model), an int, or one int per image.
        explainer_kwargs: keyword arguments for ``explainer_cls``.
        samples: maps averaged per image (``samples - 1`` noisy and the clean one).
        noise: the noise's standard deviation, a fraction of each image's value range.
        seed: the seed of the randomization and of the noise.
        randomize: ``"permute"`` or ``"gaussian"`` (:func:`randomized_copy`).
        batch_size: noisy images per explainer call.
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean correlation, a float in [-1, 1]; with ``reduce=None`` the ``(N,)`` values.
    """
    _check(explainer_cls, model, explainer_kwargs, seed)
    check_batch_size(batch_size)
    check_reduce(reduce)
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"`samples` must be a positive int; received {samples!r}.")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"`noise` must be a finite number >= 0; received {noise!r}.")
    kwargs = dict(explainer_kwargs or {})
    trained = explainer_cls(model, **kwargs)
    x, _ = as_batch(images, trained.graph.inputs)
    x = np.asarray(to_host(x), np.float32)
    first = trained.explain(x, targets)
    if first.targets is None:
        raise TypeError("smooth_mprt holds one class per image: `targets` must be None, an int or one int per image.")
    classes = np.asarray(first.targets)
    before = _smoothed(trained, x, classes, samples, noise, seed, batch_size)
    random = explainer_cls(randomized_copy(model, seed, randomize), **kwargs)
    after = _smoothed(random, x, classes, samples, noise, seed, batch_size)
    return reduced(spearman(np.abs(before), np.abs(after)), reduce)


def _entropy(maps, bins):
    """The entropy (nats) of each map's histogram over ``bins`` equal bins of its own range."""
    out = np.empty(len(maps))
    for i, row in enumerate(maps):
        counts, _ = np.histogram(row, bins=bins)
        p = counts[counts > 0] / counts.sum()
        out[i] = float(-(p * np.log(p)).sum())
    return out


def efficient_mprt(explainer_cls, model, images, targets=None, *, explainer_kwargs=None, bins=100, seed=42,
                   randomize="permute", reduce="mean"):
    """Efficient MPRT (Hedström et al. 2023): how much more complex the map gets when the model is randomized.

    With ``H(E)`` the discrete entropy of a map's values in ``bins`` equal
    bins over its own range (``-sum_b p_b log p_b``, ``p_b`` the share of
    pixels in bin ``b``), for the trained model and the fully randomized
    copy (:func:`randomized_copy`), the class held at the trained model's,

    ``eMPRT(x) = (H(E_random(x)) - H(E_trained(x))) / H(E_trained(x))``.

    A method that depends on the weights gives noisier (higher entropy)
    maps on a random model. Higher is better (↑). A constant trained map
    (``H = 0``) scores 0 if the random one is constant too, else infinity.
    Quantus: ``EfficientMPRT`` (defaults ``seed=42``, ``skip_layers=True``,
    discrete entropy with 100 bins, ``abs=False``, ``normalise=False``).
    Deterministic. Cost: 2 explainer calls per image and one model copy.

    Args:
        explainer_cls: an explainer class or a factory ``f(model, **explainer_kwargs)``.
        model: the trained Keras model; it is not modified.
        images: a batch as the model takes it.
        targets: None (top-1 of the trained model), an int, or one int per image.
        explainer_kwargs: keyword arguments for ``explainer_cls``.
        bins: the histogram's bins.
        seed: the seed of the randomization.
        randomize: ``"permute"`` or ``"gaussian"`` (:func:`randomized_copy`).
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean relative rise, a float >= -1; with ``reduce=None`` the ``(N,)`` values.
    """
    _check(explainer_cls, model, explainer_kwargs, seed)
    check_reduce(reduce)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"`bins` must be a positive int; received {bins!r}.")
    kwargs = dict(explainer_kwargs or {})
    trained = explainer_cls(model, **kwargs)
    x, _ = as_batch(images, trained.graph.inputs)
    x = np.asarray(to_host(x), np.float32)
    first = trained.explain(x, targets)
    fixed = targets if first.targets is None else np.asarray(first.targets)
    random = explainer_cls(randomized_copy(model, seed, randomize), **kwargs)
    before = _entropy(_flat(first.maps, len(x)), bins)
    after = _entropy(_flat(random(x, fixed), len(x)), bins)
    rise = np.divide(after - before, before, out=np.where(after > 0, np.inf, 0.0), where=before > 0)
    return reduced(rise, reduce)

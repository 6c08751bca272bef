"""Is a map faithful to the model? Change the image as the map says, and watch the class.

Each function runs the model on images changed according to the map and reads
the probability of the explained class (the model's softmax, or sigmoid,
applied once; a model that outputs logits gets a softmax):

- :func:`average_drop` and :func:`increase_in_confidence` (Chattopadhyay et
  al., WACV 2018, section 5.2): the image is multiplied by its map.
- :func:`deletion_auc` and :func:`insertion_auc` (Petsiuk et al., BMVC 2018,
  "RISE", section 4.1): pixels are removed from, or inserted into, the image
  in order of decreasing saliency.
- :func:`road` (Rong et al., ICML 2022, "ROAD"): a share of the pixels is
  removed and filled in from its neighbours by :func:`impute`, so that the
  shape of what was removed does not itself tell the model anything.

Images are scored ``batch_size`` at a time by one compiled function per
model (:mod:`keras_cam.metrics._scoring`); the changed images of the deletion
and insertion curves are built on the device, inside it. Every function
returns the mean over images, or with ``reduce=None`` one value per image
(an ``(N,)`` float64 array whose mean is the default result).
"""

from __future__ import annotations

import itertools
import math
import numbers

import numpy as np

from keras_cam._compat import ops, to_host
from keras_cam.metrics._scoring import (
    check_batch_size,
    explained_classes,
    checked_inputs,
    class_probabilities,
    get_scorer,
    check_reduce,
    check_seed,
    reduced,
)

SUBSTRATES = ("zeros", "blur", "mean")


def _masked_scores(model, images, maps, targets, batch_size):
    """``(Y, O)``: the class probability on each image and on ``image * map``."""
    check_batch_size(batch_size)
    scorer = get_scorer(model)
    x, m = checked_inputs(images, maps, scorer)
    if m.min() < 0 or m.max() > 1:
        raise ValueError(
            f"`maps` must lie in [0, 1] to mask the images (they range over [{m.min():.3g}, "
            f"{m.max():.3g}]); explain with normalize=True (the default)."
        )
    y, idx = explained_classes(scorer, x, targets, batch_size)
    o, _ = class_probabilities(scorer, x * ops.convert_to_tensor(m[..., None]), idx, batch_size)
    return y.astype(np.float64), o.astype(np.float64)


def average_drop(model, images, maps, targets=None, *, batch_size=32, reduce="mean"):
    """Average Drop, in percent (lower is better).

    ``100 * mean_i max(0, Y_i - O_i) / Y_i`` (Chattopadhyay et al. 2018, eq. 23),
    where ``Y_i`` is the probability of the explained class on image ``i`` and
    ``O_i`` the probability of the same class on ``image_i * map_i``: how much
    confidence is lost when only what the map shows is kept.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, H, W, C)``, as the model takes them.
        maps: ``(N, H, W)`` in [0, 1] at the image size.
        targets: None (top-1), an int, or one int per image.
        batch_size: images per compiled model call.
        reduce: ``"mean"`` (the mean over images) or None (one value per image).

    Returns:
        The percentage, a float in [0, 100]; with ``reduce=None`` the ``(N,)``
        per-image drops ``100 max(0, Y_i - O_i) / Y_i``.

    Raises:
        ValueError: for maps that are not ``(N, H, W)`` in [0, 1] at the image
            size, invalid targets or an unknown ``reduce``.
    """
    check_reduce(reduce)
    y, o = _masked_scores(model, images, maps, targets, batch_size)
    return reduced(100.0 * np.maximum(0.0, y - o) / np.maximum(y, 1e-12), reduce)


def increase_in_confidence(model, images, maps, targets=None, *, batch_size=32, reduce="mean"):
    """Increase in Confidence, in percent (higher is better).

    ``100 * mean_i [Y_i < O_i]`` (Chattopadhyay et al. 2018, eq. 24): the share of
    images whose class probability rises when only what the map shows is kept
    (``Y``, ``O`` as in :func:`average_drop`).

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, H, W, C)``, as the model takes them.
        maps: ``(N, H, W)`` in [0, 1] at the image size.
        targets: None (top-1), an int, or one int per image.
        batch_size: images per compiled model call.
        reduce: ``"mean"`` (the mean over images) or None (one value per image).

    Returns:
        The percentage, a float in [0, 100]; with ``reduce=None`` the ``(N,)``
        per-image values, 100 where the probability rose and 0 elsewhere.
    """
    check_reduce(reduce)
    y, o = _masked_scores(model, images, maps, targets, batch_size)
    return reduced(100.0 * (y < o), reduce)


def _gaussian_blur(x, sigma):
    """A separable Gaussian blur of a numpy ``(N, *S, C)`` along every spatial axis (reflected
    edges), in float64 on the host: the substrate is made once per call, the same on every backend."""
    radius = max(1, math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    out = np.asarray(x, np.float64)
    for axis in range(1, out.ndim - 1):
        size = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if radius < size else "symmetric")
        # The window slides along the axis; the kernel is symmetric, so correlation is convolution.
        out = np.lib.stride_tricks.sliding_window_view(padded, len(k), axis=axis) @ k
    return out


def substrate_images(images, substrate="zeros"):
    """What removed pixels become: ``"zeros"``; ``"mean"`` (each image's
    per-channel mean); ``"blur"`` (a Gaussian blur with sigma 5 px at 224 px,
    scaled with the image size, as in RISE); or an array broadcastable to
    ``images``.

    Args:
        images: a channels-last batch ``(N, *S, C)``: ``(N, H, W, C)`` images,
            ``(N, T, C)`` signals or ``(N, D, H, W, C)`` volumes (numpy or a tensor).
        substrate: ``"zeros"``, ``"mean"``, ``"blur"`` or an array.

    Returns:
        A float32 numpy array of the images' shape.

    Raises:
        ValueError: for an unknown name or an array that does not broadcast.
    """
    x = np.asarray(to_host(images), np.float32)
    if x.ndim not in (3, 4, 5):
        raise ValueError(f"`images` must be a batch (N, *S, C); received shape {x.shape}.")
    if isinstance(substrate, str):
        if substrate == "zeros":
            return np.zeros_like(x)
        if substrate == "mean":
            axes = tuple(range(1, x.ndim - 1))
            return np.broadcast_to(x.mean(axis=axes, keepdims=True, dtype=np.float64), x.shape).astype(np.float32)
        if substrate == "blur":
            return _gaussian_blur(x, 5.0 * max(x.shape[1:-1]) / 224.0).astype(np.float32)
        raise ValueError(f"`substrate` must be one of {SUBSTRATES} or an array; received {substrate!r}.")
    return _broadcast_substrate(substrate, x.shape)


def _broadcast_substrate(substrate, shape):
    try:
        return np.array(np.broadcast_to(np.asarray(to_host(substrate), np.float32), shape))
    except ValueError as err:
        raise ValueError(
            f"A `substrate` array must broadcast to the images' shape {tuple(shape)}; received "
            f"shape {np.shape(substrate)}."
        ) from err


def saliency_ranks(maps):
    """Each pixel's rank in its map: 0 for the most salient pixel, 1 for the next...

    Args:
        maps: ``(N, *S)`` maps (``(N, H, W)`` for images).

    Returns:
        ``(N, *S)`` int32 ranks (ties in row-major order).
    """
    m = np.asarray(maps)
    flat = m.reshape(len(m), -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None], axis=1)
    return ranks.reshape(m.shape).astype(np.int32)


def _auc_curve(model, images, maps, targets, steps, substrate, batch_size, insert):
    """``(N, steps + 1)`` probabilities along the deletion / insertion path."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`steps` must be a positive int; received {steps!r}.")
    check_batch_size(batch_size)
    scorer = get_scorer(model)
    x, m = checked_inputs(images, maps, scorer)
    _, idx = explained_classes(scorer, x, targets, batch_size)
    if not isinstance(substrate, str) and scorer.graph.data_format == "channels_first":
        full = _broadcast_substrate(substrate, tuple(scorer.graph.to_model_format(x).shape))
        substrate = to_host(scorer.graph.to_channels_last(full))  # given like the images, used channels-last
    base = ops.convert_to_tensor(substrate_images(x, substrate))
    ranks = ops.convert_to_tensor(saliency_ranks(m))
    pixels = int(np.prod(m.shape[1:]))
    counts = (np.arange(steps + 1) * pixels) // steps           # pixels changed after step t
    n_chunk = min(batch_size, len(m))
    t_chunk = max(1, batch_size // n_chunk)
    padded = np.concatenate([counts, np.full((-len(counts)) % t_chunk, counts[-1])]).astype(np.int32)
    curves = []
    for i in range(0, len(m), n_chunk):
        s = slice(i, i + n_chunk)
        rows = [
            scorer.curve(x[s], ranks[s], base[s], ops.convert_to_tensor(idx[s]),
                         ops.convert_to_tensor(padded[t:t + t_chunk]), insert)
            for t in range(0, len(padded), t_chunk)
        ]
        curves.append(np.concatenate([np.asarray(to_host(r)) for r in rows])[: len(counts)].T)
    return np.concatenate(curves).astype(np.float64)


def _trapezoid(curves):
    """Normalized trapezoid area of curves sampled at ``t / steps``, ``t = 0..steps``."""
    steps = curves.shape[1] - 1
    return (curves.sum(axis=1) - 0.5 * (curves[:, 0] + curves[:, -1])) / steps


def deletion_auc(model, images, maps, targets=None, steps=100, substrate="zeros", *, batch_size=32,
                 reduce="mean"):
    """Deletion AUC (Petsiuk et al. 2018), mean over images; lower is better.

    The pixels of each image are replaced by the substrate in order of
    decreasing saliency, ``H W / steps`` more (all positions / steps) at each of ``steps`` steps (all
    channels of a pixel at once; ties in the map in row-major order). The
    probability of the explained class after ``t`` steps is ``p(t / steps)``
    and the result is the area under ``p`` on [0, 1] by the trapezoid rule.
    A faithful map removes what the model needs first, so the probability
    falls early and the area is small.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, H, W, C)``, as the model takes them.
        maps: ``(N, H, W)`` at the image size (only their order matters).
        targets: None (top-1), an int, or one int per image.
        steps: number of removal steps (``steps + 1`` model evaluations per image).
        substrate: ``"zeros"``, ``"blur"``, ``"mean"`` or an array; see
            :func:`substrate_images`.
        batch_size: images per compiled model call.
        reduce: ``"mean"`` (the mean over images) or None (one area per image).

    Returns:
        The mean area, a float in [0, 1]; with ``reduce=None`` the ``(N,)`` areas.
    """
    check_reduce(reduce)
    curves = _auc_curve(model, images, maps, targets, steps, substrate, batch_size, insert=False)
    return reduced(_trapezoid(curves), reduce)


def insertion_auc(model, images, maps, targets=None, steps=100, substrate="zeros", *, batch_size=32,
                  reduce="mean"):
    """Insertion AUC (Petsiuk et al. 2018), mean over images; higher is better.

    Starts from the substrate and puts the image's pixels back in order of
    decreasing saliency; the area under the class probability, as in
    :func:`deletion_auc`. A faithful map restores what the model needs first,
    so the probability rises early. The paper inserts into a blurred image
    (``substrate="blur"``); zeros are the default here, as for deletion.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, H, W, C)``, as the model takes them.
        maps: ``(N, H, W)`` at the image size (only their order matters).
        targets: None (top-1), an int, or one int per image.
        steps: number of insertion steps (``steps + 1`` model evaluations per image).
        substrate: what the pixels are inserted into; see :func:`substrate_images`.
        batch_size: images per compiled model call.
        reduce: ``"mean"`` (the mean over images) or None (one area per image).

    Returns:
        The mean area, a float in [0, 1]; with ``reduce=None`` the ``(N,)`` areas.
    """
    check_reduce(reduce)
    curves = _auc_curve(model, images, maps, targets, steps, substrate, batch_size, insert=True)
    return reduced(_trapezoid(curves), reduce)


# --- ROAD: remove and debias ------------------------------------------------------------------

PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_ORDERS = ("morf", "lerf", "combined")

# Unknowns per sparse factorization: images are solved in groups of about this size.
_MAX_UNKNOWNS = 20_000


def neighbour_weights(rank):
    """The neighbours of a position at spatial ``rank`` and their imputation weights.

    The weights are the tensor product of the kernel ``(1, 2, 1)`` over the
    ``rank`` axes with its centre removed, normalized to sum 1: an offset
    ``d`` in ``{-1, 0, 1}^rank \\ {0}`` weighs ``2^(rank - |d|_1)``, where
    ``|d|_1`` is how many axes it moves along.

    - 1-D: the 2 neighbours, 1/2 each.
    - 2-D: the 4 edge neighbours 1/6, the 4 diagonal ones 1/12 (ROAD's weights).
    - 3-D: the 6 face neighbours 1/14, the 12 edge ones 1/28, the 8 corners 1/56.

    The weights are symmetric (``w(d) = w(-d)``), so the weighted mean of a
    linear function over the neighbours is its value at the centre; and an
    axis of size 1 drops out exactly: a ``(T, 1)`` image or a ``(T, 1, 1)``
    volume gets the 1-D weights after renormalization.

    Args:
        rank: the number of spatial axes, 1, 2 or 3.

    Returns:
        ``(offsets, weights)``: ``(3^rank - 1, rank)`` int offsets and their
        float64 weights, summing to 1.
    """
    if rank not in (1, 2, 3):
        raise ValueError(f"`rank` must be 1, 2 or 3 spatial axes; received {rank!r}.")
    offsets = np.array([d for d in itertools.product((-1, 0, 1), repeat=rank) if any(d)])
    weights = 2.0 ** (rank - np.abs(offsets).sum(axis=1))
    return offsets, weights / weights.sum()


def _linear_fill(x, removed):
    """The noiseless imputation: ``x`` ``(N, *S, C)`` float64 with the ``removed``
    ``(N, *S)`` positions solved for, every image and channel at once (the
    system is block diagonal: neighbours never cross images)."""
    sizes = removed.shape[1:]
    offsets, weights = neighbour_weights(len(sizes))
    channels = x.shape[-1]
    values = x.reshape(-1, channels)
    unknown = np.flatnonzero(removed.reshape(-1))
    out = values.copy()
    if unknown.size == 0:
        return out.reshape(x.shape)
    index = np.full(removed.size, -1, np.int64)
    index[unknown] = np.arange(unknown.size)
    where = np.unravel_index(unknown, removed.shape)
    diagonal = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, channels))
    rows, cols, vals = [], [], []
    for d, w in zip(offsets, weights):
        moved = [where[a + 1] + d[a] for a in range(len(sizes))]
        inside = np.ones(unknown.size, bool)
        for a, size in enumerate(sizes):
            inside &= (moved[a] >= 0) & (moved[a] < size)
        k = np.flatnonzero(inside)
        j = np.ravel_multi_index((where[0][k],) + tuple(m[k] for m in moved), removed.shape)
        diagonal[k] += w
        col = index[j]
        free = col >= 0
        rows.append(k[free])
        cols.append(col[free])
        vals.append(np.full(int(free.sum()), -w))
        rhs[k[~free]] += w * values[j[~free]]
    import scipy.sparse
    import scipy.sparse.linalg

    rows = np.concatenate(rows + [np.arange(unknown.size)])
    cols = np.concatenate(cols + [np.arange(unknown.size)])
    vals = np.concatenate(vals + [diagonal])
    system = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(unknown.size, unknown.size))
    solution = scipy.sparse.linalg.splu(system).solve(rhs)
    out[unknown] = solution
    return out.reshape(x.shape)


def _fill(x, removed):
    """:func:`_linear_fill` in groups of images of at most about ``_MAX_UNKNOWNS`` unknowns."""
    out = np.empty(x.shape, np.float64)
    per_image = removed.reshape(len(removed), -1).sum(axis=1)
    start = 0
    while start < len(x):
        stop = start + 1
        while stop < len(x) and per_image[start:stop + 1].sum() <= _MAX_UNKNOWNS:
            stop += 1
        out[start:stop] = _linear_fill(x[start:stop], removed[start:stop])
        start = stop
    return out


def _check_removed(removed, shape):
    """``removed`` as a bool ``(N, *S)`` array for images of ``shape`` ``(N, *S, C)``."""
    r = np.asarray(removed)
    if r.shape != tuple(shape[:-1]) or not (r.dtype == bool or np.isin(r, (0, 1)).all()):
        raise ValueError(
            f"`removed` must be a boolean mask (N, *S) = {tuple(shape[:-1])}, True where a pixel is "
            f"imputed; received shape {r.shape} and dtype {r.dtype}."
        )
    r = r.astype(bool)
    full = r.reshape(len(r), -1).all(axis=1)
    if full.any():
        raise ValueError(
            f"`removed` removes every pixel of images {np.flatnonzero(full)[:10].tolist()}: "
            f"imputation needs at least one kept pixel to fill in from."
        )
    return r


def impute(images, removed, noise=0.01, seed=None):
    """ROAD's noisy linear imputation (Rong et al. 2022, section 4): fill removed pixels from their neighbours.

    Every removed pixel ``i`` takes the weighted mean of its neighbours ``j``
    (removed or not), with the weights ``w_d`` of
    :func:`neighbour_weights` (in 2-D: 1/6 for the 4 edge neighbours, 1/12
    for the 4 diagonal ones), neighbours outside the image dropped and the
    rest renormalized:

    ``x_i = sum_j w_(j-i) x_j / sum_j w_(j-i)``.

    These equations, one per removed pixel, are solved jointly as one sparse
    linear system per image and channel (symmetric positive definite once
    each row is multiplied by its ``sum_j w``: every group of removed pixels
    touches a kept one). Gaussian noise of standard deviation ``noise`` is
    then added to the imputed pixels only; kept pixels are returned as they
    are. With ``noise=0`` a linear image ``a + b . position`` is reproduced
    exactly at every removed pixel whose neighbours are all inside the image
    (at the border the renormalized weights are no longer symmetric).

    Args:
        images: a channels-last batch ``(N, *S, C)``: ``(N, H, W, C)`` images,
            ``(N, T, C)`` signals or ``(N, D, H, W, C)`` volumes.
        removed: a boolean mask ``(N, *S)``, True at the pixels to impute (all
            channels of a pixel at once); each image must keep a pixel.
        noise: the standard deviation of the Gaussian noise added to the
            imputed pixels, in the images' units (0 for none).
        seed: the seed of the noise (None: fresh entropy).

    Returns:
        The imputed images, float32, of the images' shape.

    Raises:
        ValueError: for a mask of the wrong shape, a mask that removes a
            whole image, or a negative ``noise``.

    Example:
        >>> removed = keras_cam.metrics.saliency_ranks(maps) < 0.3 * maps[0].size  # the top 30 %
        >>> filled = keras_cam.metrics.impute(images, removed, noise=0.0)
    """
    x = np.asarray(images, np.float64)
    if x.ndim not in (3, 4, 5):
        raise ValueError(
            f"`images` must be a channels-last batch (N, *S, C) with 1 to 3 spatial axes; received "
            f"shape {x.shape}."
        )
    if not isinstance(noise, numbers.Real) or noise < 0:
        raise ValueError(f"`noise` is a standard deviation, a number >= 0; received {noise!r}.")
    r = _check_removed(removed, x.shape)
    out = _fill(x, r)
    if noise > 0:
        out += r[..., None] * np.random.default_rng(seed).normal(0.0, noise, x.shape)
    return out.astype(np.float32)


def _road_masks(ranks, count, order):
    """The removed pixels: the ``count`` most (``"morf"``) or least (``"lerf"``) relevant."""
    if order == "morf":
        return ranks < count
    return ranks >= ranks.size - count


def _check_percentages(percentages):
    try:
        pcts = [float(p) for p in percentages]
    except TypeError:
        pcts = None
    if not pcts or any(not (0 < p < 100) for p in pcts):
        raise ValueError(
            f"`percentages` must be a non-empty sequence of percentages strictly between 0 and 100 "
            f"(at 100 nothing is left to impute from); received {percentages!r}."
        )
    return pcts


def road(model, images, maps, targets=None, percentages=PERCENTAGES, order="morf", *, noise=0.01, seed=0,
         batch_size=32, reduce="mean"):
    """ROAD, RemOve And Debias (Rong et al. 2022): the class probability with pixels removed and imputed.

    For each percentage ``p``, the ``round(p P / 100)`` pixels of the ``P``
    pixels of an image that its map ranks most relevant (``order="morf"``,
    most relevant first) or least relevant (``"lerf"``) are removed and
    filled in by :func:`impute` (noisy linear imputation, so the removed
    shape leaks no class information), and the probability of the explained
    class is read on the result. An image's score is the mean over the
    percentages, and the result is the mean over the images:

    - ``"morf"``: lower is better (removing what the map points at hurts);
    - ``"lerf"``: higher is better (removing what it ignores does not);
    - ``"combined"``: ``(lerf - morf) / 2``, higher is better.

    Ties in the map are broken in row-major order, as in
    :func:`saliency_ranks`. The noise of image ``i``, percentage ``j`` and
    order (MoRF, LeRF) is drawn from its own generator seeded with
    ``(seed, i, j, order)``, so the result does not depend on ``batch_size``.
    The imputed copies of several images and percentages are scored
    together, ``batch_size`` per compiled model call.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, H, W, C)`` (or ``(N, T, C)``, ``(N, D, H, W, C)``), as
            the model takes them (channels first for a channels-first model).
        maps: ``(N, H, W)`` (``(N, *S)``) at the image size (only their order matters).
        targets: None (top-1 on the unchanged image), an int, or one int per image.
        percentages: the shares of pixels removed, in percent, each in (0, 100).
        order: ``"morf"``, ``"lerf"`` or ``"combined"``.
        noise: the imputation noise's standard deviation (see :func:`impute`).
        seed: the seed of the imputation noise.
        batch_size: images per compiled model call.
        reduce: ``"mean"`` (the mean over images) or None (one value per image).

    Returns:
        The mean probability (``"morf"``, ``"lerf"``, in [0, 1]) or the
        half-difference (``"combined"``, in [-0.5, 0.5]), a float; with
        ``reduce=None`` the ``(N,)`` per-image values.

    Raises:
        ValueError: for an unknown order, percentages outside (0, 100),
            maps that are not one per image at the image size, or an unknown ``reduce``.

    Example:
        >>> keras_cam.metrics.road(model, images, maps, order="combined")   # higher is better
    """
    if order not in ROAD_ORDERS:
        raise ValueError(f"`order` must be one of {ROAD_ORDERS}; received {order!r}.")
    check_reduce(reduce)
    pcts = _check_percentages(percentages)
    check_batch_size(batch_size)
    if isinstance(noise, (bool, np.bool_)) or not isinstance(noise, numbers.Real) or not 0 <= noise < math.inf:
        raise ValueError(f"`noise` is a standard deviation, a finite number >= 0; received {noise!r}.")
    seed = check_seed(seed)  # int(seed) below would truncate a float silently
    curves = _road_curves(model, images, maps, targets, pcts, order, noise, seed, batch_size)
    per_image = {o: c.mean(axis=1) for o, c in curves.items()}
    if order == "combined":
        return reduced((per_image["lerf"] - per_image["morf"]) / 2, reduce)
    return reduced(per_image[order], reduce)


def _road_curves(model, images, maps, targets, pcts, order, noise, seed, batch_size):
    """``{order: (N, len(pcts)) probabilities}`` for MoRF and/or LeRF."""
    scorer = get_scorer(model)
    x, m = checked_inputs(images, maps, scorer)
    _, idx = explained_classes(scorer, x, targets, batch_size)
    orders = ("morf", "lerf") if order == "combined" else (order,)
    ranks = saliency_ranks(m)
    pixels = int(np.prod(m.shape[1:]))
    counts = [min(int(round(p * pixels / 100.0)), pixels - 1) for p in pcts]  # keep a pixel to impute from
    combos = [(o, j) for o in orders for j in range(len(pcts))]
    values = np.asarray(to_host(x), np.float64)
    n = len(values)
    probs = np.empty((n, len(combos)))
    per_chunk = max(1, batch_size // len(combos))
    for start in range(0, n, per_chunk):
        rows = range(start, min(n, start + per_chunk))
        removed = np.stack([_road_masks(ranks[i], counts[j], o) for i in rows for o, j in combos])
        filled = _fill(np.repeat(values[rows.start:rows.stop], len(combos), axis=0), removed)
        if noise > 0:
            for k, (i, (o, j)) in enumerate((i, c) for i in rows for c in combos):
                rng = np.random.default_rng((int(seed), i, j, ROAD_ORDERS.index(o)))
                filled[k] += removed[k][..., None] * rng.normal(0.0, noise, filled.shape[1:])
        filled = ops.convert_to_tensor(filled.astype(np.float32))
        cls = np.repeat(idx[rows.start:rows.stop], len(combos))
        p, _ = class_probabilities(scorer, filled, cls, batch_size)
        probs[rows.start:rows.stop] = p.reshape(len(rows), len(combos))
    return {o: probs[:, [k for k, (oo, _) in enumerate(combos) if oo == o]] for o in orders}

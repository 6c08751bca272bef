"""Does the map point at the object? Localization against ground truth: boxes or masks.

- :func:`pointing_game` (Zhang et al., ECCV 2016 / IJCV 2018): is the map's
  maximum inside the object?
- :func:`energy_pointing_game` (Wang et al., CVPR-W 2020, "Score-CAM",
  section 5.2): the share of the map's energy inside the object, in percent.
- :func:`attribution_localization` (Kohlbrenner et al., IJCNN 2020): the
  share of the absolute (or positive) attribution inside the object.
- :func:`top_k_intersection` (Theiner et al. 2021): the share of the ``k``
  most relevant positions that lie on the object.
- :func:`relevance_rank_accuracy`, :func:`relevance_mass_accuracy` (Arras
  et al., Information Fusion 2022): the share of the ``K`` most relevant
  positions on an object of ``K`` positions; the share of the relevance on it.
- :func:`mask_auc`: the area under the ROC curve of the map as a detector of
  the object's positions.
- :func:`focus` (Arias-Duart et al., FUZZ-IEEE 2022): on 2x2 mosaics that it
  builds (:func:`focus_mosaics`), the share of positive relevance on the two
  tiles of the explained class.

The ground truth is either ``boxes``, ``(N, 4)`` ``(y0, x0, y1, x1)`` pixel
coordinates, end exclusive (``(N, 2 r)`` with the ``r`` starts then the
``r`` ends for ``r`` spatial axes: ``(t0, t1)`` for a signal,
``(z0, y0, x0, z1, y1, x1)`` for a volume), or ``masks=``, boolean ``(N, *S)``
at the maps' size (any shape of object). Each returns the mean over images,
or with ``reduce=None`` one value per image (numpy on the host, the same on
every backend). Where positions tie, a ranking metric counts the tied
positions at the cut as drawn in random order: its expected value (so a
constant map scores the chance level, never NaN); Quantus breaks ties by
``numpy.argsort``'s order instead.
"""

from __future__ import annotations

import numpy as np

import numbers

from keras_cam._compat import to_host
from keras_cam.metrics._scoring import checked_maps, check_reduce, check_seed, reduced


def _boxes(boxes, shape):
    """The boxes' masks ``(N, *S)`` from ``(N, 2 r)`` integer boxes: ``r`` starts, then ``r`` ends."""
    n, sizes = shape[0], shape[1:]
    r = len(sizes)
    b = np.asarray(boxes)
    names = {1: "(t0, t1)", 2: "(y0, x0, y1, x1)", 3: "(z0, y0, x0, z1, y1, x1)"}[r]
    if b.shape != (n, 2 * r) or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(
            f"`boxes` must be (N, {2 * r}) = ({n}, {2 * r}) integer pixel coordinates {names}, end "
            f"exclusive; received shape {b.shape} and dtype {b.dtype}."
        )
    starts, ends = b[:, :r], b[:, r:]
    bad = ((starts < 0) | (ends > np.array(sizes)) | (ends <= starts)).any(axis=1)
    if bad.any():
        raise ValueError(
            f"`boxes` {b[bad].tolist()} are empty or leave the {'x'.join(map(str, sizes))} maps; each "
            f"must satisfy 0 <= start < end <= size on every axis."
        )
    inside = np.ones((n,) + tuple(sizes), dtype=bool)
    for axis in range(r):
        pos = np.arange(sizes[axis]).reshape((1,) + tuple(-1 if a == axis else 1 for a in range(r)))
        lo = starts[:, axis].reshape((n,) + (1,) * r)
        hi = ends[:, axis].reshape((n,) + (1,) * r)
        inside &= (pos >= lo) & (pos < hi)
    return inside


def regions(maps, boxes=None, masks=None, metric="this metric"):
    """The ground truth as boolean masks ``(N, *S)``, from ``boxes`` or ``masks`` (exactly one).

    Args:
        maps: ``(N, *S)`` maps (numpy, float64), whose shape the masks must have.
        boxes: ``(N, 2 r)`` integer boxes, ``r`` starts then ``r`` ends, end exclusive.
        masks: ``(N, *S)`` boolean masks (or 0/1 numbers).
        metric: the metric's name, for the error messages.

    Returns:
        A boolean numpy ``(N, *S)`` array, each row with at least one position.
    """
    if boxes is None and masks is None:
        raise ValueError(f"{metric} compares maps with the object's ground truth: pass `boxes=` (N, 2r) "
                         f"integer boxes or `masks=` (N, *S) boolean masks at the maps' size.")
    if boxes is not None and masks is not None:
        raise ValueError(f"{metric}: pass either `boxes=` or `masks=`, not both.")
    if boxes is not None:
        return _boxes(boxes, maps.shape)
    m = np.asarray(to_host(masks))
    if m.shape != maps.shape:
        hint = " (drop the channel axis of size 1)" if m.size == maps.size else ""
        raise ValueError(f"`masks` must be (N, *S) = {maps.shape}, one mask per map at the map's size{hint}; "
                         f"received shape {m.shape}.")
    if m.dtype != bool:
        if not (np.issubdtype(m.dtype, np.number) and np.isin(m, (0, 1)).all()):
            raise ValueError(f"`masks` must be boolean (or 0/1 numbers); received dtype {m.dtype} with values "
                             f"other than 0 and 1.")
        m = m.astype(bool)
    empty = np.flatnonzero(~m.reshape(len(m), -1).any(axis=1))
    if empty.size:
        raise ValueError(f"{metric}: the masks of images {empty[:10].tolist()}{' ...' if empty.size > 10 else ''} "
                         f"are empty (no object); leave those images out.")
    return m


def pointing_game(maps, boxes=None, *, masks=None, reduce="mean"):
    """Pointing game accuracy, in percent (higher is better).

    A hit when the map's maximum is inside the object (with several equal maxima:
    when one of them is); a constant map points nowhere and is a miss.

    Args:
        maps: ``(N, H, W)`` maps.
        boxes: ``(N, 4)`` integer ``(y0, x0, y1, x1)``, end exclusive.
        masks: instead of ``boxes``, ``(N, H, W)`` boolean masks.
        reduce: ``"mean"`` (the share of hits) or None (one value per image).

    Returns:
        The percentage of hits, a float in [0, 100]; with ``reduce=None`` the
        ``(N,)`` per-image values, 100 for a hit and 0 for a miss.

    Raises:
        ValueError: for boxes that are not integers, are empty or leave the
            maps, masks of another size, neither, or an unknown ``reduce``.
    """
    check_reduce(reduce)
    m = checked_maps(maps)
    inside = regions(m, boxes, masks, "pointing_game")
    axes = tuple(range(1, m.ndim))
    top = m.max(axis=axes, keepdims=True)
    peaks = m == top
    hit = (peaks & inside).any(axis=axes) & ~peaks.all(axis=axes)
    return reduced(100.0 * hit, reduce)


def energy_pointing_game(maps, boxes=None, *, masks=None, reduce="mean"):
    """Energy-based pointing game, in percent (higher is better).

    ``100 * mean_i sum_{box} M_i / sum M_i`` (Wang et al. 2020): the share of
    each map's total energy that falls inside the object. Maps must be
    non-negative; an all-zero map has no energy and scores 0.

    Args:
        maps: ``(N, H, W)`` non-negative maps.
        boxes: ``(N, 4)`` integer ``(y0, x0, y1, x1)``, end exclusive.
        masks: instead of ``boxes``, ``(N, H, W)`` boolean masks.
        reduce: ``"mean"`` (the mean over images) or None (one value per image).

    Returns:
        The mean share, in percent, a float in [0, 100]; with ``reduce=None``
        the ``(N,)`` per-image shares.
    """
    check_reduce(reduce)
    m = checked_maps(maps)
    if m.min() < 0:
        raise ValueError("`maps` must be non-negative for the energy pointing game (energy is a mass).")
    inside = regions(m, boxes, masks, "energy_pointing_game")
    return reduced(100.0 * _share(m, inside), reduce)


def _flat(m, inside):
    return m.reshape(len(m), -1), inside.reshape(len(m), -1)


def _share(m, inside):
    """``sum_{inside} m / sum m`` per image; 0 where the sum is 0."""
    a, s = _flat(m, inside)
    total = a.sum(axis=1)
    return np.divide((a * s).sum(axis=1), total, out=np.zeros_like(total), where=total != 0)


def _top_share(a, s, k):
    """The expected number of object positions among the ``k[i]`` largest of ``a[i]``
    (ties at the cut taken in random order), per image."""
    order = -np.sort(-a, axis=1)
    cut = np.take_along_axis(order, (k - 1)[:, None], axis=1)           # the k-th largest value
    above, tied = a > cut, a == cut
    slots = k - above.sum(axis=1)                                          # places left for the tied
    tied_in = (tied & s).sum(axis=1) / tied.sum(axis=1)
    return (above & s).sum(axis=1) + slots * tied_in


def attribution_localization(maps, boxes=None, *, masks=None, positive=False, reduce="mean"):
    """Attribution localization (Kohlbrenner et al. 2020), higher is better.

    ``mu_i = sum_{object} a_i / sum a_i`` with ``a = |M|`` (Quantus's default,
    ``abs=True``) or, with ``positive=True``, ``a = max(M, 0)`` (the paper's
    positive relevance). In [0, 1]; an all-zero map has no attribution and
    scores 0, the worst value. Quantus: ``AttributionLocalisation``
    (``weighted=False``, its default).

    Args:
        maps: ``(N, *S)`` maps.
        boxes: ``(N, 2 r)`` integer boxes, or
        masks: ``(N, *S)`` boolean masks.
        positive: count the positive part of the maps instead of their absolute value.
        reduce: ``"mean"`` or None (one value per image).
    """
    check_reduce(reduce)
    m = checked_maps(maps)
    inside = regions(m, boxes, masks, "attribution_localization")
    a = np.maximum(m, 0) if positive else np.abs(m)
    return reduced(_share(a, inside), reduce)


def top_k_intersection(maps, boxes=None, *, masks=None, k=1000, concept_influence=False, reduce="mean"):
    """Top-k intersection (Theiner et al. 2021), higher is better.

    ``|top_k(M_i) ∩ object_i| / k``: the share of the ``k`` most relevant
    positions that lie on the object (Quantus's default ``k = 1000``; maps
    must have at least ``k`` positions). With ``concept_influence=True`` it is
    divided by the object's share of the positions, ``|object_i| / n`` (1:
    chance). Ties at the cut count as drawn in random order, so a constant
    map scores ``|object| / n``. Quantus: ``TopKIntersection``.

    Args:
        maps: ``(N, *S)`` maps.
        boxes: ``(N, 2 r)`` integer boxes, or
        masks: ``(N, *S)`` boolean masks.
        k: the number of top positions, ``1 <= k <= n``.
        concept_influence: divide by the object's share of the positions.
        reduce: ``"mean"`` or None (one value per image).
    """
    check_reduce(reduce)
    m = checked_maps(maps)
    inside = regions(m, boxes, masks, "top_k_intersection")
    a, s = _flat(m, inside)
    n = a.shape[1]
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or not 1 <= k <= n:
        raise ValueError(f"`k` must be an int in [1, {n}] (the maps' {n} positions); received {k!r}. "
                         f"Quantus's default k=1000 needs maps of at least 1000 positions: pass a smaller k.")
    values = _top_share(a, s, np.full(len(a), int(k))) / k
    if concept_influence:
        values = values * n / s.sum(axis=1)
    return reduced(values, reduce)


def relevance_rank_accuracy(maps, boxes=None, *, masks=None, reduce="mean"):
    """Relevance rank accuracy (Arras et al. 2022), higher is better.

    With ``K_i = |object_i|``: ``|top_{K_i}(M_i) ∩ object_i| / K_i``, the
    share of the ``K`` most relevant positions on an object of ``K``
    positions. In [0, 1]; ties at the cut count as drawn in random order, so
    a constant map scores ``K / n`` (chance). Quantus:
    ``RelevanceRankAccuracy``.

    Args:
        maps: ``(N, *S)`` maps.
        boxes: ``(N, 2 r)`` integer boxes, or
        masks: ``(N, *S)`` boolean masks.
        reduce: ``"mean"`` or None (one value per image).
    """
    check_reduce(reduce)
    m = checked_maps(maps)
    inside = regions(m, boxes, masks, "relevance_rank_accuracy")
    a, s = _flat(m, inside)
    k = s.sum(axis=1)
    return reduced(_top_share(a, s, k) / k, reduce)


def relevance_mass_accuracy(maps, boxes=None, *, masks=None, reduce="mean"):
    """Relevance mass accuracy (Arras et al. 2022), higher is better.

    ``sum_{object} M_i / sum M_i``: the share of the relevance on the object,
    in [0, 1] for non-negative maps (signed maps are taken as they are, as
    Quantus does; pass ``abs(maps)`` to count both signs). A map summing to 0
    (all zeros) scores 0. Quantus: ``RelevanceMassAccuracy``.

    Args:
        maps: ``(N, *S)`` maps.
        boxes: ``(N, 2 r)`` integer boxes, or
        masks: ``(N, *S)`` boolean masks.
        reduce: ``"mean"`` or None (one value per image).
    """
    check_reduce(reduce)
    m = checked_maps(maps)
    inside = regions(m, boxes, masks, "relevance_mass_accuracy")
    return reduced(_share(m, inside), reduce)


def mask_auc(maps, boxes=None, *, masks=None, reduce="mean"):
    """Area under the ROC curve of the map as a detector of the object, higher is better.

    Every position is a sample, labelled by the mask, scored by the map: the
    AUC equals ``P(M_in > M_out) + P(M_in = M_out) / 2`` over a position
    inside and one outside (the Mann-Whitney statistic, ties counting one
    half), computed from average ranks. 1: every object position outranks
    every other; 0.5: chance, and the value of a constant map. The object
    must leave at least one position outside. Quantus: ``AUC`` (scikit-learn's
    ``roc_curve`` and ``auc``).

    Args:
        maps: ``(N, *S)`` maps.
        boxes: ``(N, 2 r)`` integer boxes, or
        masks: ``(N, *S)`` boolean masks.
        reduce: ``"mean"`` or None (one value per image).
    """
    check_reduce(reduce)
    m = checked_maps(maps)
    inside = regions(m, boxes, masks, "mask_auc")
    a, s = _flat(m, inside)
    n = a.shape[1]
    full = np.flatnonzero(s.all(axis=1))
    if full.size:
        raise ValueError(f"mask_auc: the objects of images {full[:10].tolist()} cover the whole map, so no "
                         f"position is outside to compare with; leave those images out.")
    ranks = _average_ranks(a)
    pos = s.sum(axis=1)
    u = (ranks * s).sum(axis=1) - pos * (pos + 1) / 2
    return reduced(u / (pos * (n - pos)), reduce)


def _average_ranks(a):
    """Ranks 1..n of each row's values, tied values sharing their average rank."""
    order = np.argsort(a, axis=1, kind="stable")
    sorted_a = np.take_along_axis(a, order, axis=1)
    n = a.shape[1]
    ranks = np.empty_like(a)
    for i in range(len(a)):
        v = sorted_a[i]
        starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
        ends = np.r_[starts[1:], n]
        mean_rank = (starts + ends + 1) / 2.0                              # ranks start+1 .. end
        ranks[i, order[i]] = np.repeat(mean_rank, ends - starts)
    return ranks


def focus_mosaics(images, labels, *, seed=0, channels_first=False):
    """The 2x2 mosaics of :func:`focus`, one per image.

    Mosaic ``i`` holds image ``i`` and another image of the same label
    (the explained class, ``labels[i]``) on two tiles drawn at random, and two
    images of other labels on the other two; each tile is its image halved
    (the mean of each 2x2 block), so a mosaic has the images' size and any
    model takes it. Seeded with ``numpy.random.default_rng(seed)``.

    Args:
        images: ``(N, H, W, C)`` (``(N, C, H, W)`` with ``channels_first``),
            ``H`` and ``W`` even; at least one label must have two images and
            another label must exist.
        labels: ``(N,)`` integer labels (the true classes).
        seed: the seed of the partners and tile positions.
        channels_first: the images' channel axis is the second.

    Returns:
        ``(mosaics, targets, positions)``: the mosaics in the images' layout,
        ``targets`` ``(N,)`` the explained class of each, and ``positions``
        ``(N, 4)`` 0/1, which tiles (top left, top right, bottom left, bottom
        right) hold the explained class (Quantus's ``custom_batch``).
    """
    x = np.asarray(to_host(images), dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"Focus builds 2-D mosaics: `images` must be (N, H, W, C) or (N, C, H, W); received "
                         f"shape {x.shape}.")
    if channels_first:
        x = np.moveaxis(x, 1, -1)
    n, h, w = x.shape[:3]
    y = np.asarray(to_host(labels))
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`labels` must be ({n},) integers, one class per image; received shape {y.shape} "
                         f"and dtype {y.dtype}.")
    if h % 2 or w % 2:
        raise ValueError(f"Focus halves each image into a tile of a 2x2 mosaic: the images' height and width "
                         f"must be even; received {h}x{w}.")
    rng = np.random.default_rng(check_seed(seed))
    tiles = x.reshape(n, h // 2, 2, w // 2, 2, x.shape[-1]).mean(axis=(2, 4))
    mosaics = np.empty_like(x)
    positions = np.zeros((n, 4), np.int32)
    lonely = [i for i in range(n) if (y == y[i]).sum() < 2 or (y != y[i]).sum() < 1]
    if lonely:
        raise ValueError(f"Focus needs, for each image, another image of its label and images of other labels; "
                         f"images {lonely[:10]} have none (labels {sorted(set(y[lonely].tolist()))[:10]}). Leave "
                         f"them out or add images.")
    for i in range(n):
        same = np.flatnonzero((y == y[i]) & (np.arange(n) != i))
        other = np.flatnonzero(y != y[i])
        chosen = [i, rng.choice(same), *rng.choice(other, 2, replace=len(other) < 2)]
        slots = rng.permutation(4)                          # slots[j]: the tile of chosen[j]
        positions[i, slots[:2]] = 1
        for j, slot in enumerate(slots):
            r, c = divmod(int(slot), 2)
            mosaics[i, r * h // 2:(r + 1) * h // 2, c * w // 2:(c + 1) * w // 2] = tiles[chosen[j]]
    if channels_first:
        mosaics = np.moveaxis(mosaics, -1, 1)
    return mosaics, y.astype(np.int32), positions


def focus(explainer, images, labels, *, seed=0, batch_size=None, reduce="mean"):
    """Focus (Arias-Duart et al. 2022), higher is better.

    On each mosaic of :func:`focus_mosaics` (image ``i``, a second image of
    its class and two of other classes, tiles at random), the explainer
    explains the class ``labels[i]``; Focus is the share of the map's
    positive relevance on the two tiles of that class:
    ``sum_{class tiles} max(M, 0) / sum max(M, 0)``. 1: all on the class;
    0.5: a constant map (chance). An all-zero map (or one without positive
    relevance) scores 0. One explanation per image. Quantus: ``Focus``.

    Args:
        explainer: a keras-cam explainer (``keras_cam.GradCAM(model)``).
        images: the batch, as the model takes it (2-D images with even height and width).
        labels: ``(N,)`` integer classes; each must occur twice, with another class present.
        seed: the seed of the mosaics.
        batch_size: explain this many mosaics per call (None: all at once).
        reduce: ``"mean"`` or None (one value per image).
    """
    check_reduce(reduce)
    from keras_cam.inputs import as_batch

    layout = explainer.graph.inputs
    if getattr(layout, "rank", 2) != 2:
        raise ValueError("Focus builds 2x2 mosaics of 2-D images; this explainer's model takes "
                         f"{layout.rank}-D inputs.")
    x, _ = as_batch(images, layout)
    x = np.asarray(to_host(x))
    channels_first = bool(getattr(layout, "channels_first", False))
    mosaics, targets, positions = focus_mosaics(x, labels, seed=seed, channels_first=channels_first)
    step = len(mosaics) if batch_size is None else int(batch_size)
    maps = np.concatenate([np.asarray(to_host(explainer(mosaics[i:i + step], targets[i:i + step])))
                           for i in range(0, len(mosaics), step)])
    return reduced(focus_scores(maps, positions), reduce)


def focus_scores(maps, positions):
    """Focus of precomputed maps of mosaics, per mosaic.

    ``sum_{marked tiles} max(M, 0) / sum max(M, 0)``, 0 where the map has no
    positive relevance (Quantus's ``Focus`` on ``a_batch`` and ``custom_batch``).

    Args:
        maps: ``(N, H, W)`` maps of mosaics (a tile is a quarter, split at ``H // 2`` and ``W // 2``).
        positions: ``(N, 4)`` 0/1, the tiles of the explained class (top left,
            top right, bottom left, bottom right), as :func:`focus_mosaics` returns.

    Returns:
        A float64 ``(N,)`` array in [0, 1].
    """
    m = checked_maps(maps)
    if m.ndim != 3:
        raise ValueError(f"Focus scores 2-D maps (N, H, W); received shape {m.shape}.")
    p = np.asarray(positions)
    if p.shape != (len(m), 4):
        raise ValueError(f"`positions` must be ({len(m)}, 4), one 0/1 per tile; received shape {p.shape}.")
    h, w = m.shape[1] // 2, m.shape[2] // 2
    inside = np.zeros(m.shape, bool)
    for k, (rows, cols) in enumerate([(slice(0, h), slice(0, w)), (slice(0, h), slice(w, None)),
                                      (slice(h, None), slice(0, w)), (slice(h, None), slice(w, None))]):
        inside[:, rows, cols] = p[:, k:k + 1, None].astype(bool)
    return _share(np.maximum(m, 0), inside)

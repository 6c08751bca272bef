"""Does the map point at the object? Localization against ground-truth boxes.

- :func:`pointing_game` (Zhang et al., ECCV 2016 / IJCV 2018): is the map's
  maximum inside the box?
- :func:`energy_pointing_game` (Wang et al., CVPR-W 2020, "Score-CAM",
  section 5.2): the share of the map's energy inside the box.

``boxes`` are ``(N, 4)`` ``(y0, x0, y1, x1)`` pixel coordinates, end
exclusive (``(N, 2 r)`` with the ``r`` starts then the ``r`` ends for ``r``
spatial axes: ``(t0, t1)`` for a signal, ``(z0, y0, x0, z1, y1, x1)`` for a
volume). Each returns the percentage over images, or with ``reduce=None``
one value per image (numpy on the host, the same on every backend).
"""

from __future__ import annotations

import numpy as np

from keras_cam.metrics._scoring import _maps, check_reduce, reduced


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


def pointing_game(maps, boxes, *, reduce="mean"):
    """Pointing game accuracy, in percent (higher is better).

    A hit when the map's maximum is inside the box (with several equal maxima:
    when one of them is); a constant map points nowhere and is a miss.

    Args:
        maps: ``(N, H, W)`` maps.
        boxes: ``(N, 4)`` integer ``(y0, x0, y1, x1)``, end exclusive.
        reduce: ``"mean"`` (the share of hits) or None (one value per image).

    Returns:
        The percentage of hits, a float in [0, 100]; with ``reduce=None`` the
        ``(N,)`` per-image values, 100 for a hit and 0 for a miss.

    Raises:
        ValueError: for boxes that are not integers, are empty or leave the
            maps, or an unknown ``reduce``.
    """
    check_reduce(reduce)
    m = _maps(maps)
    inside = _boxes(boxes, m.shape)
    axes = tuple(range(1, m.ndim))
    top = m.max(axis=axes, keepdims=True)
    peaks = m == top
    hit = (peaks & inside).any(axis=axes) & ~peaks.all(axis=axes)
    return reduced(100.0 * hit, reduce)


def energy_pointing_game(maps, boxes, *, reduce="mean"):
    """Energy-based pointing game, in percent (higher is better).

    ``100 * mean_i sum_{box} M_i / sum M_i`` (Wang et al. 2020): the share of
    each map's total energy that falls inside the object's box. Maps must be
    non-negative; an all-zero map has no energy and scores 0.

    Args:
        maps: ``(N, H, W)`` non-negative maps.
        boxes: ``(N, 4)`` integer ``(y0, x0, y1, x1)``, end exclusive.
        reduce: ``"mean"`` (the mean over images) or None (one value per image).

    Returns:
        The mean share, in percent, a float in [0, 100]; with ``reduce=None``
        the ``(N,)`` per-image shares.
    """
    check_reduce(reduce)
    m = _maps(maps)
    if m.min() < 0:
        raise ValueError("`maps` must be non-negative for the energy pointing game (energy is a mass).")
    inside = _boxes(boxes, m.shape)
    axes = tuple(range(1, m.ndim))
    total = m.sum(axis=axes)
    share = np.divide((m * inside).sum(axis=axes), total, out=np.zeros_like(total), where=total > 0)
    return reduced(100.0 * share, reduce)

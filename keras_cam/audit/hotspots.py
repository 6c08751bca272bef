"""Shared hotspots: the groups of a class whose maps look at the same place, and how sure that is.

A shortcut such as a watermark, a border or a tag is evidence at a place that
many images of one class share, and that the other classes' images do not.
An object that moves around the image is not: its maps spread over all
places, in every class alike. So instead of comparing the maps of one class
with each other (where the object's position dominates the distances, and a
clustering cuts the class by position), each class is compared with the
*other* classes, place by place:

1. **Shares.** Each map's grid vector (see :mod:`keras_cam.audit.spray`) is
   scaled to sum 1: ``q_i(c)`` is the share of image ``i``'s map energy in
   grid cell ``c``.
2. **Windows.** For every square window ``H`` of ``s x s`` cells
   (``s`` in :data:`SIDES`, every position), ``e_i(H) = sum_{c in H} q_i(c)``
   (box sums of the cumulative sums).
3. **Enrichment.** For class ``k`` (``n_k`` images) against the other
   classes' images (``n_o``), per window, the two-sample statistic

       ``z_k(H) = (mean_k e(H) - mean_o e(H)) / (sd e(H) * sqrt(1/n_k + 1/n_o))``

   with ``sd`` the standard deviation over all images; the class's
   **score** is ``z_k = max_H z_k(H)`` and ``H*`` its window.
4. **Level.** ``z_k`` is compared with the same maximum computed after
   giving ``n_k`` images drawn at random from all of them the class's name
   (``B`` = :data:`PERMUTATIONS` draws, seeded): the level is
   ``(1 + #{b : z^(b) >= z_k}) / (1 + B)``. When the class's maps share no
   place beyond what the other classes' maps do, the class's images are
   exchangeable with the others, so the level is uniform on [0, 1]; a level
   at most :data:`ALPHA` marks the class's group as suspicious.
5. **Region.** With ``d(c) = mean_k q(c) - mean_o q(c)``, the group's
   region is ``R = {c : d(c) >= d_max(H*) / 2}``, ``d_max(H*)`` the largest
   ``d`` in ``H*``: the cells the class looks at more than the others, as
   much as half its strongest cell (a frame keeps its whole border).
6. **Group.** The class's images with ``e_i(R)`` above Otsu's threshold of
   the class's ``e(R)`` values (the split of largest between-group variance)
   form the group; the others are the rest of the class.

Every step is a few matrix products on the grid vectors (``n x g^2``
floats), so it costs little next to the maps themselves.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SIDES = (1, 2, 3)
PERMUTATIONS = 49
ALPHA = 0.02
# A group is suspicious when its level is at most ALPHA and its score at least MIN_SCORE: its
# hotspot holds at least twice the tail energy the null puts there.
MIN_SCORE = 1.0
# The level is computed on a seeded sample of at most this many images of the class.
LEVEL_IMAGES = 300
# The baseline of each class's window energies (step 3).
BASE_QUANTILE = 0.2
# The least share of a class's images a hotspot must be shared by to count in full (step 3).
SHARED = 0.1


def shares(x):
    """Grid vectors ``(n, d)`` (nonnegative, see ``spray.to_grid``) scaled to sum 1 per row."""
    x = np.asarray(x, np.float64)
    total = x.sum(axis=1, keepdims=True)
    return np.where(total > 0, x / np.maximum(total, 1e-30), 1.0 / x.shape[1])


def region_masks(grid, sides=SIDES):
    """The candidate regions as ``(W, gh * gw)`` 0/1 rows, and a name for each: every square window
    of ``s x s`` cells (``s`` in ``sides``, every position)."""
    gh, gw = grid
    rows, names = [], []
    for s in sides:
        if s > min(gh, gw):
            continue
        for y in range(gh - s + 1):
            for x in range(gw - s + 1):
                m = np.zeros(grid, bool)
                m[y:y + s, x:x + s] = True
                rows.append(m.ravel())
                names.append(f"window {s}x{s} at ({y}, {x})")
    return np.array(rows, np.float64), names


def window_energies(q, grid, sides=SIDES):
    """``(n, W)``: each image's share of energy in each region of :func:`region_masks`, in its order.

    Box sums of the 2-D cumulative sums ``S``: ``e(H) = S[y1, x1] - S[y0, x1] - S[y1, x0] + S[y0, x0]``,
    4 reads per window instead of a product with the ``(W, g^2)`` masks (about 60x fewer operations
    at a 16 x 16 grid, the audit's largest cost beside the maps before)."""
    gh, gw = grid
    q = np.asarray(q, np.float64).reshape(len(q), gh, gw)
    total = np.zeros((len(q), gh + 1, gw + 1))
    total[:, 1:, 1:] = q.cumsum(axis=1).cumsum(axis=2)
    out = []
    for s in sides:
        if s > min(gh, gw):
            continue
        box = total[:, s:, s:] - total[:, :-s, s:] - total[:, s:, :-s] + total[:, :-s, :-s]
        out.append(box.reshape(len(q), -1))
    return np.concatenate(out, axis=1)


_MASKS = {}


def _masks(grid, sides):
    if (grid, sides) not in _MASKS:
        _MASKS[(grid, sides)] = region_masks(grid, sides)
    return _MASKS[(grid, sides)]


def tails(e, quantile=BASE_QUANTILE, shared=SHARED):
    """Step 3: ``(n, W)`` each image's window energy above the class's ``quantile`` of that window,
    capped at the ``1 - shared`` quantile of those excesses (a spot must be shared by at least a
    share ``shared`` of the class to count in full: a few odd maps cannot make a hotspot)."""
    t = np.maximum(e - np.quantile(e, quantile, axis=0), 0.0)
    return np.minimum(t, np.quantile(t, 1.0 - shared, axis=0))


def profile(a):
    """Step 4: the mean tail ``(W,)`` of rows ``a``, relative to its mean over the windows."""
    t = a.mean(axis=0)
    return t / max(float(t.mean()), 1e-30)


def otsu(values):
    """The threshold of largest between-group variance of 1-D ``values``: the groups are
    ``values > t`` and ``values <= t`` (``t`` a midpoint between two sorted values)."""
    v = np.sort(np.asarray(values, np.float64))
    n = len(v)
    if n < 2 or v[0] == v[-1]:
        return np.inf
    k = np.arange(1, n)                      # k values in the low group
    low = np.cumsum(v)[:-1]
    mean_low, mean_high = low / k, (v.sum() - low) / (n - k)
    between = k * (n - k) * (mean_high - mean_low) ** 2
    between[v[1:] == v[:-1]] = -1            # no split between equal values
    j = int(np.argmax(between))
    return 0.5 * (v[j] + v[j + 1])


@dataclasses.dataclass
class Hotspot:
    """What :func:`find` found for one class.

    Attributes:
        score: ``z_k``, the largest enrichment over the windows (step 3).
        level: its permutation level (step 4), or None without other classes.
        window: ``(y0, x0, side)`` of ``H*`` in grid cells.
        region: ``(gh, gw)`` bool, the group's region ``R`` (step 5).
        members: bool over the class's images, True for the group (step 6).
        threshold: Otsu's threshold on ``e(R)``.
        energy: ``(n_k,)`` each class image's share of energy in ``R``.
    """

    score: float
    level: float | None
    window: tuple
    region: np.ndarray
    members: np.ndarray
    threshold: float
    energy: np.ndarray


def find(x, grid, seed=0, permutations=PERMUTATIONS, sides=SIDES):
    """Steps 1-6 on the grid vectors ``x`` ``(n, d)`` of one class's images.

    Returns:
        A :class:`Hotspot`.
    """
    from threadpoolctl import threadpool_limits

    # One BLAS thread: beside a deep-learning runtime's threads, a multi-threaded BLAS oversubscribes
    # the cores (measured: 0.55 s per window product instead of 8 ms, most of an audit's own time).
    with threadpool_limits(limits=1):
        return _find(x, grid, seed, permutations, sides)


def _find(x, grid, seed, permutations, sides):
    q = shares(x)
    n = len(q)
    gh, gw = grid
    rng = np.random.default_rng([int(seed), 0x407])
    masks, names = _masks(tuple(grid), tuple(sides))
    maps = q.reshape(n, gh, gw)
    yy, xx = np.mgrid[0:gh, 0:gw]
    centre = np.stack([(maps * yy).sum(axis=(1, 2)), (maps * xx).sum(axis=(1, 2))], axis=1)
    sample = np.sort(rng.choice(n, size=min(n, LEVEL_IMAGES), replace=False))
    maps, centre = maps[sample], centre[sample]
    qs = q[sample]
    observed = profile(tails(window_energies(qs, grid, sides)))
    cells_observed = profile(tails(qs))
    nulls, cells_null = [], []
    for _ in range(max(int(permutations), 1)):
        moved = _recentred(maps, centre, rng).reshape(len(qs), -1)
        nulls.append(profile(tails(window_energies(moved, grid, sides))))
        cells_null.append(profile(tails(moved)))
    nulls = np.array(nulls)
    expected = nulls.mean(axis=0)
    excess = observed - expected
    best = int(np.argmax(excess))
    level = None
    if permutations:
        beaten = int(np.count_nonzero((nulls - expected).max(axis=1) >= excess[best]))
        level = (1.0 + beaten) / (1.0 + len(nulls)) if excess[best] > 0 else 1.0
    dc = (cells_observed - np.mean(cells_null, axis=0)).reshape(grid)
    chosen = masks[best].reshape(grid) > 0
    peak = float(dc[chosen].max())
    region = (dc >= 0.5 * peak) & _near(chosen, 2) if peak > 0 else np.zeros(grid, bool)
    if not region.any():
        region = chosen.copy()
    energy = q @ region.ravel().astype(np.float64)
    t = otsu(energy)
    return Hotspot(score=float(excess[best]), level=level, window=names[best], region=region,
                   members=energy > t, threshold=float(t), energy=energy)


def _recentred(maps, centre, rng):
    """Step 4's null: each map moved (whole cells, zero fill) so that its centre of mass lands on the
    centre of mass of another map of the class drawn at random, then rescaled to sum 1."""
    n, gh, gw = maps.shape
    other = rng.permutation(n)
    dy, dx = np.rint(centre[other] - centre).astype(np.int64).T
    rows = np.arange(gh)[None, :] - dy[:, None]
    cols = np.arange(gw)[None, :] - dx[:, None]
    valid = ((rows >= 0) & (rows < gh))[:, :, None] & ((cols >= 0) & (cols < gw))[:, None, :]
    out = maps[np.arange(n)[:, None, None], np.clip(rows, 0, gh - 1)[:, :, None], np.clip(cols, 0, gw - 1)[:, None, :]]
    out = np.where(valid, out, 0.0)
    total = out.sum(axis=(1, 2), keepdims=True)
    return np.where(total > 0, out / np.maximum(total, 1e-30), 1.0 / (gh * gw))


def _near(mask, distance):
    """The cells within ``distance`` cells (Chebyshev) of ``mask``."""
    out = mask.copy()
    for dy in range(-distance, distance + 1):
        for dx in range(-distance, distance + 1):
            shifted = np.zeros_like(mask)
            ys = slice(max(dy, 0), mask.shape[0] + min(dy, 0))
            yd = slice(max(-dy, 0), mask.shape[0] + min(-dy, 0))
            xs = slice(max(dx, 0), mask.shape[1] + min(dx, 0))
            xd = slice(max(-dx, 0), mask.shape[1] + min(-dx, 0))
            shifted[ys, xs] = mask[yd, xd]
            out |= shifted
    return out

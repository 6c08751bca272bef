"""Shared evidence: the group of a class whose maps share a place ("where") or a feature ("what").

A shortcut such as a watermark, a border, a moving tag or a colour cast is
evidence that a *part* of a class's images carries and the rest lacks. Two
statistics look for such a part, each with its own calibrated null, and the
class's group is the one of the more significant statistic (see
:func:`combined_level`).

**Where** (:func:`find`): a spot fixed in place in the maps.

1. **Shares.** Each map's grid vector (see :mod:`keras_cam.audit.spray`) is
   scaled to sum 1: ``q_i(c)`` is the share of image ``i``'s map energy in
   grid cell ``c``.
2. **Windows.** For every square window ``H`` of ``s x s`` cells
   (``s`` in :data:`SIDES`), ``e_i(H) = sum_{c in H} q_i(c)`` (box sums).
3. **Tails.** ``t_i(H) = min((e_i(H) - Q_0.2(H))^+, Q_0.9(t(H)))``: the
   energy above the class's 20th percentile at ``H``, capped at the 90th
   percentile of those excesses.
4. **Profile.** ``P(H) = mean_i t_i(H) / mean_H mean_i t_i(H)``.
5. **Null.** Each map is moved (whole cells, zero fill) so that its centre
   of mass lands on another map's of the class, drawn at random: that keeps
   the maps' shapes and the class's spread of positions and destroys only
   what is fixed in place. ``B`` = :data:`PERMUTATIONS` draws give ``P^(b)``.
6. **Score, place level.** ``S = max_H (P(H) - mean_b P^(b)(H))``; the
   place level is ``p_place = (1 + #{b : max_H (P^(b) - mean P) >= S}) / (1 + B)``.
7. **Region, group.** The cells near ``H*`` whose excess is at least half
   the largest in ``H*``; the group is the images whose energy share there is
   above Otsu's threshold.
8. **A part, not a continuum.** The energy shares ``e_i(R)`` must split into
   two parts: the ``eta2`` of their square roots (as "what", step 1) against
   the uniform null of one column gives ``p_split``. (Shares are right-skewed
   with many near 0; the square root stabilizes their spread, so a part
   whose shares are wide, such as 0.12-0.30 against 0, is not taken for a
   continuum.) The level of "where" is ``p_where = max(p_place, p_split)``
   (an intersection-union test: the class shares a fixed place *and* a part
   of it, not all of it by degrees, looks there).

**What** (:func:`find_what`): a feature detector that fires in a part of the
class only, wherever in the image (a moving tag, a border, a colour cast).
The columns ``a_i(k)`` are the target layer's channels pooled over positions
two ways, both shift-invariant: each channel's mean (with a
global-average-pooling linear head, Grad-CAM's per-channel contribution
``alpha_k sum_xy A_k`` is the mean times a constant, and the statistic below
is scale-free, so both give the same), then each channel's maximum (a small
feature, such as a moving tag, barely moves a channel's mean over the
positions but sets its maximum wherever it sits):

1. **Split.** Per channel, the split of the class's sorted ``a(k)`` into a
   low and a high part, each holding at least :data:`WHAT_LEAST` of the
   images, of largest between-part variance (Otsu):
   ``eta2(k) = max_split n_lo n_hi (mean_hi - mean_lo)^2 / (n^2 var a(k))``,
   in [0, 1] (1: two point masses).
2. **Score.** ``S = max_k eta2(k)`` at channel ``k*``.
3. **Null.** The same maximum over ``d`` independent columns of ``n``
   uniform draws (:data:`WHAT_DRAWS` draws, seeded). Among unimodal
   distributions the uniform is the least favourable for a two-part split
   (its ``eta2`` tends to 3/4, a Gaussian's to 2/pi), and a maximum over
   correlated channels is smaller than over independent ones, so the level
   ``(1 + #{b : S^(b) >= S}) / (1 + B)`` is conservative: a class whose
   channels are unimodal scores a level of mostly near 1, a class with a part
   that carries extra evidence on some channel a small one.
4. **Group.** The part of the split at ``k*`` whose members have the larger
   mean explained class score (the part the model scores higher with that
   evidence). (``d`` counts both poolings of every channel: the mean and the
   maximum of one channel are strongly correlated, so the null stays
   conservative.)

**Combined level.** ``min(1, 2 min(p_where, p_what))`` (Bonferroni over the
two statistics). The class's group is the "what" group when ``p_what`` is the
smaller and at most ``ALPHA / 2``, the "where" group otherwise. Where the
audit also verifies the candidate groups by intervention, their levels join
the two (``min(1, m min_t p_t)`` over ``m`` tests, :func:`combined_level`;
see :func:`keras_cam.audit`).

Everything is a few array operations on the grid vectors and the pooled
activations, little next to the maps themselves.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SIDES = (1, 2, 3)
# 99 draws: the smallest "where" level is 0.01, so that the Bonferroni combination with "what" can
# reach ALPHA = 0.02.
PERMUTATIONS = 99
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
# "What": each part of a channel's split holds at least this share of the class's images, and the
# number of uniform null draws.
WHAT_LEAST = 0.3
WHAT_DRAWS = 199


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
    share ``shared`` of the class to count in full: a few odd maps cannot make a hotspot).

    ``x -> max(x - Q_quantile, 0)`` is nondecreasing and linear above ``Q_quantile``, where both order
    statistics of the upper quantile lie (``1 - shared > quantile``, three or more images), so the cap
    is ``Q_(1-shared)(e) - Q_quantile(e)``: both quantiles come from one partition."""
    low, high = quantiles(e, (quantile, 1.0 - shared))
    if len(e) < 3 or 1.0 - shared <= quantile:
        t = np.maximum(e - low, 0.0)
        return np.minimum(t, quantiles(t, (1.0 - shared,))[0])
    return np.minimum(np.maximum(e - low, 0.0), np.maximum(high - low, 0.0))


def quantiles(e, levels):
    """``np.quantile(e, levels, axis=0)`` (its default, linear method) from one sort of ``e`` ``(n, W)``.

    With ``v`` the columns sorted and ``h = (n - 1) q``, ``j = floor h``, ``g = h - j``:
    ``Q_q = v[j] + g (v[j+1] - v[j])``, or ``v[j+1] - (1 - g)(v[j+1] - v[j])`` when ``g >= 1/2``
    (numpy's interpolation, operation for operation, so the numbers are the same bits), and
    ``v[n-1]`` when ``h >= n - 1``. One sort of the columns costs less than numpy's partition
    along the first axis (measured: 2 ms against 30 ms for ``(300, 677)``)."""
    v = np.sort(np.asarray(e, np.float64), axis=0)
    n = len(v)
    out = []
    for q in levels:
        h = (n - 1) * np.float64(q)
        j = int(np.floor(h))
        if h >= n - 1:
            out.append(v[-1].copy())
            continue
        g = h - j
        a, b = v[j], v[j + 1]
        diff = b - a
        out.append(b - diff * (1 - g) if g >= 0.5 else a + diff * g)
    return out


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
        score: ``S``, the largest excess over the null (step 6).
        level: ``p_where = max(p_place, p_split)`` (steps 6 and 8), or None without null draws.
        place_level: ``p_place`` (step 6), or None.
        split: ``eta2`` of the square roots of the class's energy shares in the region (step 8).
        split_level: ``p_split`` (step 8).
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
    place_level: float | None = None
    split: float = 0.0
    split_level: float = 1.0


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
        beaten = int(np.count_nonzero((nulls - expected).max(axis=1) >= excess[best] - 1e-9))
        # An excess at round-off size (maps whose tails are all but empty) is no excess.
        level = (1.0 + beaten) / (1.0 + len(nulls)) if excess[best] > 1e-9 else 1.0
    dc = (cells_observed - np.mean(cells_null, axis=0)).reshape(grid)
    chosen = masks[best].reshape(grid) > 0
    peak = float(dc[chosen].max())
    region = (dc >= 0.5 * peak) & near(chosen, 2) if peak > 0 else np.zeros(grid, bool)
    if not region.any():
        region = chosen.copy()
    energy = q @ region.ravel().astype(np.float64)
    t = otsu(energy)
    eta, _ = channel_splits(np.sqrt(energy[sample])[:, None], WHAT_LEAST)
    null = uniform_null(len(sample), 1, WHAT_LEAST)
    split_level = float((1 + np.count_nonzero(null >= eta[0])) / (1 + len(null)))
    return Hotspot(score=float(excess[best]), level=None if level is None else max(level, split_level),
                   window=names[best], region=region, members=energy > t, threshold=float(t), energy=energy,
                   place_level=level, split=float(eta[0]), split_level=split_level)


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


def near(mask, distance):
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


def channel_splits(a, least=WHAT_LEAST):
    """"What" step 1 on ``a`` ``(n, d)``: per column, ``eta2`` (the largest between-part share of the
    variance over the splits of the sorted column with at least ``ceil(least * n)`` (>= 1) values on
    each side) and the threshold of that split (a midpoint of two sorted values; the high part is
    ``a > threshold``). A constant column gets 0 and threshold inf."""
    a = np.asarray(a, np.float64)
    n, d = a.shape
    m = max(1, int(np.ceil(least * n)))
    if n < 2 * m:
        return np.zeros(d), np.full(d, np.inf)
    v = np.sort(a, axis=0)
    k = np.arange(m, n - m + 1)                       # values in the low part
    low = np.cumsum(v, axis=0)[k - 1]
    total = v.sum(axis=0)
    kk = k[:, None].astype(np.float64)
    between = kk * (n - kk) * ((total - low) / (n - kk) - low / kk) ** 2 / n
    between[v[k] == v[k - 1]] = -1.0                  # no split between equal values
    j = np.argmax(between, axis=0)
    best = between[j, np.arange(d)]
    var = v.var(axis=0) * n
    eta = np.where(var > 1e-12 * np.maximum(1.0, np.abs(v).max(axis=0)) ** 2,
                   np.maximum(best, 0.0) / np.maximum(var, 1e-300), 0.0)
    threshold = 0.5 * (v[k[j] - 1, np.arange(d)] + v[k[j], np.arange(d)])
    return eta, np.where(eta > 0, threshold, np.inf)


_UNIFORM = {}


def uniform_null(n, d, least=WHAT_LEAST, draws=WHAT_DRAWS):
    """"What" step 3: ``(draws,)`` the largest ``eta2`` over ``d`` independent columns of ``n`` uniform
    draws (seeded by ``(n, d)``, the same in every process; cached)."""
    key = (int(n), int(d), float(least), int(draws))
    if key not in _UNIFORM:
        rng = np.random.default_rng([int(n), int(d), 0x3A7])
        chunk = max(1, 2_000_000 // max(1, n * d))
        out = []
        for start in range(0, draws, chunk):
            u = rng.uniform(size=(min(chunk, draws - start), n, d))
            out += [channel_splits(x, least)[0].max() for x in u]
        _UNIFORM[key] = np.array(out)
    return _UNIFORM[key]


@dataclasses.dataclass
class WhatGroup:
    """What :func:`find_what` found for one class.

    Attributes:
        score: ``S``, the largest ``eta2`` over the channels.
        level: its level against the uniform null.
        channel: ``k*``, the channel of the split.
        members: bool over the class's images, True for the group.
        threshold: the split's threshold on ``a(k*)``.
        high: whether the group is the high part (``a(k*) > threshold``).
    """

    score: float
    level: float
    channel: int
    members: np.ndarray
    threshold: float
    high: bool


def find_what(a, scores, seed=0, draws=WHAT_DRAWS, least=WHAT_LEAST):
    """"What" steps 1-4 on the pooled activations ``a`` ``(n, d)`` and the explained scores ``(n,)`` of
    one class's images. The score and level use a seeded sample of at most :data:`LEVEL_IMAGES`
    images (as :func:`find`); the group's split uses all of them.

    Returns:
        A :class:`WhatGroup`, or None when no channel varies.
    """
    a = np.asarray(a, np.float64)
    scores = np.asarray(scores, np.float64)
    keep = np.ptp(a, axis=0) > 1e-9 * np.maximum(1.0, np.abs(a).max(axis=0))
    if not keep.any() or len(a) < 4:
        return None
    columns = np.flatnonzero(keep)
    rng = np.random.default_rng([int(seed), 0x3A7])
    sample = np.sort(rng.choice(len(a), size=min(len(a), LEVEL_IMAGES), replace=False))
    eta, _ = channel_splits(a[sample][:, columns], least)
    best = int(np.argmax(eta))
    score = float(eta[best])
    null = uniform_null(len(sample), len(columns), least, draws)
    level = float((1 + np.count_nonzero(null >= score)) / (1 + len(null)))
    channel = int(columns[best])
    _, threshold = channel_splits(a[:, [channel]], least)
    threshold = float(threshold[0])
    high = a[:, channel] > threshold
    upper = not (high.all() or not high.any()) and scores[high].mean() >= scores[~high].mean()
    return WhatGroup(score=score, level=level, channel=channel, members=high if upper else ~high,
                     threshold=threshold, high=bool(upper))


def combined_level(*levels):
    """The Bonferroni level over the ``m = len(levels)`` tests: ``min(1, m * min_t p_t)``, e.g. the two
    statistics' ``min(1, 2 min(p_where, p_what))`` (a missing level counts as 1; None when all are missing)."""
    given = [p for p in levels if p is not None]
    if not given:
        return None
    return float(min(1.0, len(levels) * min(given)))

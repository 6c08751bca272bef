"""Verification by intervention: does the model depend on what a group's maps point at?

For a group of class ``k`` with region ``R`` (its members' maps' shared
hotspot, see :mod:`keras_cam.audit.hotspots`, scaled from grid cells to
pixels), with ``s_k(x)`` the model's class-``k`` score (the logit where the
explainer linearizes the head):

- **Remove.** Each member ``x_i`` (up to ``n_members``, a seeded sample) gets
  ``R`` filled in by ROAD's noisy linear imputation
  (:func:`keras_cam.metrics.impute`), and so does the same-size region moved
  to ``n_random`` random places (circular shifts of ``R`` overlapping it by
  less than half). With ``boxes`` or ``masks`` given to the audit, the random
  places are *matched to the object*: each covers as much of the member's
  object ``O_i`` as ``R`` does, ``| |R_j & O_i| - |R & O_i| | <= 0.1 |R|``
  (:func:`matched_regions`). A group whose region lies on its members' objects
  (images whose object sits in one place) then compares with other places on
  the object, and "depends" means ``R`` matters beyond the object pixels it
  covers. Per member,

      ``r_i = mean_j s_k(x_i without R_j) - s_k(x_i without R)``,

  how much more removing ``R`` lowers the class score than removing random
  regions of its size. With ``boxes`` or ``masks``, the members' own object
  regions are also removed whole, for comparison (``object_drop``).
- **Transplant.** Images of *other* classes ``y_j`` (up to ``n_others``)
  get the pixels of ``R`` from a member pasted in, and, for comparison,
  pixels of the random regions ``R_j`` (matched to that member's object, as
  above, where objects are given) pasted at the same places they come from.
  Per image,

      ``t_j = s_k(y_j with R of x_i) - mean_j s_k(y_j with R_j of x_i)``,

  and the shares of predictions that move to ``k``. A model that uses an
  artifact beside the object often keeps its other-class predictions while
  the score still rises, so the rise is reported, not only the flips.

**Image-wide groups.** A group whose members' images differ from the rest of
the class at no place (``Cluster.image_wide``: a global feature such as a
colour cast, which moves every pixel alike) has no region to remove or paste:
a region, and random places of its size, would carry the feature alike. Its
verification intervenes on the image-wide difference instead. With
``mu(x) = mean_p x(p)`` the per-channel mean of an image (a ``C``-vector),
``rho`` the mean of ``mu`` over the rest of the class (a seeded sample of up
to ``n_members`` images; the other classes' when the group is the whole
class), ``delta = mean_i mu(x_i) - rho`` the group's mean offset, ``u`` and
``v`` offsets of random directions (uniform on the sphere of ``R^C``) and
the stated norms, and ``[.]`` clipping to the range of the pixels used:

    ``r_i = mean_j s_k([x_i + u_ij]) - s_k([x_i + rho - mu(x_i)])``, ``|u_ij| = |rho - mu(x_i)|``,
    ``t_j = s_k([y_j + delta]) - mean_l s_k([y_j + v_jl])``,           ``|v_jl| = |delta|``:

removing moves each member's channel means to the rest's, pasting adds the
group's mean offset to other-class images, each against an offset of the
same size in a random direction; the same intervals and verdict follow.

An image-wide test alone cannot tell a feature the group *shares* from one
along which the group was *chosen*. A "what" group is the part of its class
where a channel fires more, and a channel that follows the image's
brightness splits any class into its brighter and darker images; an
untrained model's score rises with brightness, so removing and pasting the
offset "prove" a dependence on a class with no shortcut. So the members must
first be *distinct*:

    ``d = (median_i mu(x_i) . e - median_r mu(x_r) . e) / sd_j(mu(y_j) . e)``

(members ``x_i``, the rest ``x_r``, other-class images ``y_j``), how far the
typical member lies from the typical rest image along ``e``, in standard
deviations of how other images vary along it, must be at least
``MIN_DISTINCT`` (3). ``e ~ (S + lambda I)^-1 delta`` is the offset whitened
by the other images' covariance ``S`` of channel means (``lambda = 1e-3
trace(S) / C``): a cast that also brightens slightly is measured along its
colour, where images vary little, not along brightness, where they vary a
lot. Medians, because a group found by its maps is not pure: members
without the feature and rest images with it pull the means together, not
the medians. Cutting a one-humped feature puts less than 3
between the two parts' medians unless the group is a tiny tail: 1.35
standard deviations at the median of a normal feature, 1.73 (``sqrt(3)``)
at the median of a uniform one, 1.77 for a normal feature's top tenth and
2.6 for its top hundredth (a heavy-tailed feature's top hundredth can pass
3). A colour cast the other images do not carry lies many standard
deviations out. Below ``MIN_DISTINCT`` the
verdict is "no dependence shown" and the level 1, whatever the effects.

**A group's own region.** A group found through its maps (a "where" group's
hotspot, a "what" group's region, a SpRAy cluster's) was chosen *because*
its members' maps put their evidence in that region. Where the maps are
faithful, removing the region lowers those members' class score more than
removing random places, and pasting it into other images raises theirs,
whether or not the members share anything there: on uniform noise and an
untrained model, a "where" group's region verified with a level of 0.0017.
Holding members out of the choice of the region does not help while they
are picked by their maps too. What a shortcut adds is *shared content*: at
the region, the members' pixels stand out from other images' pixels. So
the verification of a group's own region (no ``region=`` given) first asks
whether any pixel of it stands out in the members against the other-class
images, :func:`pixels_that_differ` on the images the verification uses (a
robust z-score of at least :data:`PIXEL_CONTRAST` over the image's pixels).
Where none does, the verdict is "no dependence shown" and the level 1,
whatever the effects (``Verification.stands_out``). A region given by hand
is tested as it is.

Both effects come with 95 % confidence intervals over images (Student's t).
The **verdict** is "depends on the region (shortcut candidate)" when both
intervals lie above ``MIN_EFFECT * sigma``, and "no dependence shown"
otherwise, with ``sigma`` the standard deviation of the class score ``s_k``
pooled within the two sets of images the verification used, as they were
(the members ``i`` and the other-class images ``j``),

    ``sigma^2 = (sum_i (s_k(x_i) - mean_i s_k(x_i))^2 + sum_j (s_k(y_j) - mean_j s_k(y_j))^2) / (m + o)``:

an effect must be significant *and* at least a tenth of how much the class
score varies from image to image (a standardized effect of 0.1, Cohen's d
with the pooled spread), so a tiny but consistent effect (a model whose
class score barely moves) is not called a dependence. The gap between the
two sets' means (the class the model tells apart) is not part of ``sigma``:
a confident model separates its classes by tens of logits, and a floor on
that scale hid artifacts whose pasting moved a quarter of the predictions.

The verification's **level** is the p-value of that rule: with ``tau =
MIN_EFFECT * sigma`` and each effect's one-sided Student's t test of "the
effect is at most ``tau``", ``p_e = P(T_{n-1} >= (mean_e - tau) / se_e)``, the
level is ``max(p_removal, p_transplant)`` (both effects must exceed ``tau``:
an intersection-union test). "Depends" is exactly ``level < (1 - CONFIDENCE) / 2``.
The audit counts this level in a group's own level (see :func:`keras_cam.audit`).

Everything is drawn from ``seed`` and computed in batches. A verification
reuses the scores the audit already has: the members' explained scores, and
the other-class images' own class scores (``Audit.logits``, kept with
"what"'s features). So it costs ``1 + n_random`` forward passes per member
(one more with boxes or masks) and ``1 + n_random`` per other-class image
(one more where the audit kept no class scores).
"""

from __future__ import annotations

import dataclasses

import numpy as np

VERDICT_DEPENDS = "depends on the region (shortcut candidate)"
VERDICT_NONE = "no dependence shown"
CONFIDENCE = 0.95
# The smallest effect called a dependence, as a share of the class score's standard deviation (see above).
MIN_EFFECT = 0.1
# An image-wide group's members must lie this many standard deviations of the other images' channel means
# (along the offset) from the rest, or there is no distinct feature to test (see above).
MIN_DISTINCT = 3.0
# With objects given, a random region covers as much of the member's object as R does, to within this
# share of R's pixels.
MATCH_TOLERANCE = 0.1


@dataclasses.dataclass
class Effect:
    """One intervention's effect: the mean of per-image differences and its confidence interval.

    Attributes:
        mean, low, high: the mean difference and its 95 % t-interval.
        n: images it is averaged over.
        region, random: the mean change of the class score for the region
            and for the random regions (a drop for removal, a rise for
            transplant).
        flips_region, flips_random: transplant only, the share of
            other-class images whose top-1 class became the group's class.
        kept_region: transplant only, the share whose top-1 class stayed
            what it was.
    """

    mean: float
    low: float
    high: float
    n: int
    region: float
    random: float
    flips_region: float | None = None
    flips_random: float | None = None
    kept_region: float | None = None

    def to_dict(self):
        return {k: (None if v is None else (int(v) if k == "n" else float(v)))
                for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class Verification:
    """What :meth:`keras_cam.Audit.verify` measured for one group.

    Attributes:
        cluster: the group's position in :attr:`keras_cam.Audit.clusters`.
        target: its class ``k``.
        region: ``(H, W)`` bool, the pixels intervened on.
        members, others: the image indices used (members of the group, and
            images of other classes).
        removal, transplant: :class:`Effect` of each intervention.
        object_drop: the mean drop of the class score when the members'
            object regions are removed (with boxes or masks), else None.
        depends: whether both effects' intervals lie above
            ``MIN_EFFECT * spread``.
        spread: ``sigma``, the standard deviation of the class score pooled
            within the members and within the other-class images, as they
            were (see the module docstring).
        verdict: :data:`VERDICT_DEPENDS` or :data:`VERDICT_NONE`.
        level: the p-value of the verdict's rule (see the module docstring).
        seed: the seed it was drawn with.
        random_regions: ``(max(m, o), n_random, H, W)`` bool, the random
            regions used: row ``i`` for member ``i`` (removal) and for
            other-class image ``i`` (transplant, pasted from member
            ``i % m``).
        matched: whether the random regions were matched to the members'
            objects (boxes or masks given to the audit).
        stands_out: a group's own region only: whether any of its pixels
            stands out in the members against the other-class images
            (:func:`stands_out`; the verdict needs it); None for a region
            given by hand and for an image-wide group.
        example: images for the report: ``member``, ``removed``, ``other``,
            ``pasted`` (uint8 thumbnails) and the scores/predictions before
            and after.
        offset: image-wide verification only (``region`` all True): the
            group's mean per-channel offset ``delta`` (``(C,)``); else None.
        random_offsets: image-wide only, ``(u, v)``: the random offsets of
            the removal ``(m, n_random, C)`` (row ``i`` for member ``i``) and
            of the transplant ``(o, n_random, C)``.
        rest: image-wide only, the images whose channel means ``rho``
            averages.
        distinct: image-wide only, ``d``: how far the members' median lies
            from the rest's along the offset, in standard deviations of the
            other-class images' channel means along it (the verdict needs
            ``d >= MIN_DISTINCT``); else None.
    """

    cluster: int
    target: int
    region: np.ndarray
    members: np.ndarray
    others: np.ndarray
    removal: Effect
    transplant: Effect
    object_drop: float | None
    depends: bool
    verdict: str
    seed: int
    spread: float = 0.0
    example: dict = dataclasses.field(repr=False, default_factory=dict)
    random_regions: np.ndarray | None = dataclasses.field(repr=False, default=None)
    offset: np.ndarray | None = dataclasses.field(repr=False, default=None)
    random_offsets: np.ndarray | None = dataclasses.field(repr=False, default=None)
    rest: np.ndarray | None = dataclasses.field(repr=False, default=None)
    distinct: float | None = None
    matched: bool = False
    stands_out: bool | None = None
    level: float = 1.0
    options: tuple = dataclasses.field(repr=False, default=())

    def to_dict(self):
        """JSON-ready numbers (what ``clusters.json`` carries)."""
        return {
            "cluster": self.cluster, "target": self.target, "verdict": self.verdict, "depends": self.depends,
            "level": float(self.level),
            "threshold": threshold(self.spread), "spread": float(self.spread), "seed": self.seed,
            "region_pixels": int(self.region.sum()), "members": [int(i) for i in self.members],
            "others": [int(i) for i in self.others], "removal": self.removal.to_dict(),
            "transplant": self.transplant.to_dict(),
            "object_drop": None if self.object_drop is None else float(self.object_drop),
            "example": {k: v for k, v in self.example.items() if k != "images"},
            "intervention": "region" if self.offset is None else "image-wide channel means",
            "random_regions": (None if self.offset is not None else
                               "matched to the object" if self.matched else "random places"),
            "offset": None if self.offset is None else [float(v) for v in self.offset],
            "distinct": None if self.distinct is None else float(self.distinct),
            "stands_out": self.stands_out,
        }


def threshold(spread):
    """The verdict's rule, in words, with its number."""
    return (f"both {int(CONFIDENCE * 100)}% confidence intervals above {MIN_EFFECT:g} x the class score's "
            f"standard deviation within the images used ({MIN_EFFECT * spread:.3g})")


def dependence(removal, transplant, base, before, k):
    """``(depends, sigma)``: the verdict's rule (see the module docstring) on the two effects, with
    ``sigma`` the standard deviation of the class score pooled within the members' scores ``base`` and
    within the other-class images' ``before[:, k]``."""
    b, o = np.asarray(base, np.float64), np.asarray(before, np.float64)[:, k]
    sigma = float(np.sqrt((len(b) * b.var() + len(o) * o.var()) / (len(b) + len(o))))
    return bool(min(removal.low, transplant.low) > MIN_EFFECT * sigma), sigma


def effect_level(effect, floor):
    """The one-sided p-value of "``effect`` is at most ``floor``": ``P(T_{n-1} >= (mean - floor) / se)``,
    with ``se`` read back from the effect's t-interval (1 for fewer than two images)."""
    from scipy.stats import t

    if effect.n < 2 or not np.isfinite(effect.low):
        return 1.0
    se = (effect.mean - effect.low) / float(t.ppf(0.5 + CONFIDENCE / 2, effect.n - 1))
    if se <= 0:    # every image's difference alike
        return 0.0 if effect.mean > floor else 1.0
    return float(t.sf((effect.mean - floor) / se, effect.n - 1))


def level(removal, transplant, sigma, distinct=None, stands_out=None):
    """The verification's level: ``max(p_removal, p_transplant)`` against the floor ``MIN_EFFECT * sigma``;
    1 for an image-wide group whose offset is not distinct (``distinct < MIN_DISTINCT``), and for a
    group's own region where no pixel stands out (``stands_out`` False; see the module docstring)."""
    if distinct is not None and not distinct >= MIN_DISTINCT:
        return 1.0
    if stands_out is False:
        return 1.0
    floor = MIN_EFFECT * sigma
    return max(effect_level(removal, floor), effect_level(transplant, floor))


def interval(values):
    """``(mean, low, high)``: the mean of ``values`` and its two-sided t-interval at :data:`CONFIDENCE`."""
    from scipy.stats import t

    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, -np.inf, np.inf
    half = float(t.ppf(0.5 + CONFIDENCE / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return mean, mean - half, mean + half


def pixel_region(cells, size):
    """A grid ``(gh, gw)`` at ``size`` ``(H, W)``: each pixel takes the cell its top-left corner falls in;
    a bool region, on a grid finer than the pixels, is True at a pixel where any cell it covers is
    (cells ``floor(p g / n)`` to ``ceil((p + 1) g / n) - 1`` for pixel ``p`` of ``n`` on ``g`` cells:
    a region of a 16 x 16 grid on 8 x 8 images keeps every cell, where taking one cell per pixel
    dropped every other one)."""
    cells = np.asarray(cells)
    gh, gw = cells.shape
    h, w = (int(v) for v in size)
    rows = np.minimum((np.arange(h) * gh) // h, gh - 1)
    cols = np.minimum((np.arange(w) * gw) // w, gw - 1)
    if cells.dtype != bool or (gh <= h and gw <= w):
        return cells[rows][:, cols]
    total = np.zeros((gh + 1, gw + 1), np.int64)
    total[1:, 1:] = cells.astype(np.int64).cumsum(axis=0).cumsum(axis=1)
    r1 = np.maximum(rows + 1, -(-(np.arange(1, h + 1) * gh) // h))
    c1 = np.maximum(cols + 1, -(-(np.arange(1, w + 1) * gw) // w))
    count = (total[r1][:, c1] - total[rows][:, c1] - total[r1][:, cols] + total[rows][:, cols])
    return count > 0


def random_regions(region, count, rng):
    """``count`` circular shifts of ``region`` that overlap it by less than half its pixels."""
    h, w = region.shape
    area = int(region.sum())
    out = []
    for _ in range(100 * count):
        dy, dx = int(rng.integers(0, h)), int(rng.integers(0, w))
        moved = np.roll(region, (dy, dx), axis=(0, 1))
        if np.count_nonzero(moved & region) < 0.5 * area:
            out.append(moved)
            if len(out) == count:
                return np.stack(out)
    raise _no_room(area, h, w)


def _no_room(area, h, w):
    return ValueError(
        f"The region covers {area} of {h * w} pixels: there is no room for random regions of its size "
        f"elsewhere to compare with. Pass a smaller `region=`."
    )


def shift_overlaps(region, masks):
    """``(n, H, W)`` int: ``[i, dy, dx]`` is how many pixels of ``region`` circularly shifted by
    ``(dy, dx)`` (``np.roll``) fall in ``masks[i]``, ``sum_q R(q) O_i(q + d)``: the circular
    cross-correlation, by FFT."""
    h, w = region.shape
    f = np.conj(np.fft.rfft2(region.astype(np.float64)))
    return np.rint(np.fft.irfft2(f * np.fft.rfft2(np.asarray(masks, np.float64)), s=(h, w))).astype(np.int64)


def matched_regions(region, masks, rows, count, rng, tolerance=MATCH_TOLERANCE):
    """``(rows, count, H, W)``: for row ``r``, ``count`` circular shifts ``R_j`` of ``region`` that
    overlap it by less than half its pixels and cover as much of ``O = masks[r % n]`` as ``R`` does:
    drawn at random among the admissible shifts with ``| |R_j & O| - |R & O| | <= tolerance * |R|``
    (or, where fewer than ``count`` are that close, within the gap of the ``count``-th closest)."""
    h, w = region.shape
    area = int(region.sum())
    masks = np.asarray(masks, bool)
    candidates = np.flatnonzero(shift_overlaps(region, region[None])[0].ravel() < 0.5 * area)
    if len(candidates) == 0:
        raise _no_room(area, h, w)
    cover = shift_overlaps(region, masks).reshape(len(masks), -1)[:, candidates]
    target = (masks & region).reshape(len(masks), -1).sum(axis=1)
    out = np.empty((rows, count, h, w), bool)
    for r in range(rows):
        i = r % len(masks)
        gap = np.abs(cover[i] - target[i]) / area
        nearest = float(np.partition(gap, min(count, len(gap)) - 1)[min(count, len(gap)) - 1])
        pool = candidates[gap <= max(tolerance, nearest)]
        chosen = rng.choice(pool, size=count, replace=len(pool) < count)
        for j, shift in enumerate(chosen):
            out[r, j] = np.roll(region, divmod(int(shift), w), axis=(0, 1))
    return out


# A pixel stands out when its excess distance is this many robust standard deviations (1.4826 MAD)
# above the image's median (see pixels_that_differ).
PIXEL_CONTRAST = 6.0


def pixels_that_differ(members, rest):
    """``(H, W)`` bool: the pixels where the images ``members`` ``(m, H, W, C)`` stray from the mean
    ``mu`` of the images ``rest`` more than ``rest`` do themselves.

    ``P(p) = mean_i ||x_i(p) - mu(p)|| - mean_j ||y_j(p) - mu(p)||`` (norms over the colour channels),
    and a pixel stands out when ``P(p) > median P + PIXEL_CONTRAST * 1.4826 * MAD(P)`` (a robust
    z-score over the image's pixels; most pixels carry no artifact). A distance, not a difference of
    means: a moving black-and-white tag averages to the grey it sits on, but every member strays from
    the grey where it is. A change of every pixel alike (a colour cast) stands out nowhere."""
    mu = rest.mean(axis=0, dtype=np.float64)
    p = (np.linalg.norm(members - mu, axis=-1).mean(axis=0) - np.linalg.norm(rest - mu, axis=-1).mean(axis=0))
    median = float(np.median(p))
    return p > median + PIXEL_CONTRAST * 1.4826 * float(np.median(np.abs(p - median)))


def stands_out(region, members, others):
    """Whether any pixel of ``region`` ``(H, W)`` stands out in the channels-last images ``members``
    against ``others`` (:func:`pixels_that_differ`): the members share content there (see the module
    docstring, "A group's own region")."""
    return bool((pixels_that_differ(members, others) & np.asarray(region, bool)).any())


def _removal(s, m, n_random, base):
    """The removal :class:`Effect` from the class scores ``s``: the ``m`` members with the intervention,
    then ``n_random`` random interventions per member; and the members' scores with the intervention."""
    s_region, s_random = s[:m], s[m:].reshape(m, n_random).mean(axis=1)
    mean, low, high = interval(s_random - s_region)
    return Effect(mean, low, high, m, region=float(np.mean(base - s_region)),
                  random=float(np.mean(base - s_random))), s_region


def _transplant(every, o, n_random, k):
    """The transplant :class:`Effect` from the scores ``every`` of the ``o`` other-class images: as they
    are, with the intervention, then ``n_random`` random interventions each; and the first two."""
    before, after, after_random = every[:o], every[o:2 * o], every[2 * o:].reshape(o, n_random, -1)
    mean, low, high = interval(after[:, k] - after_random[:, :, k].mean(axis=1))
    moved = (after.argmax(axis=1) == k) & (before.argmax(axis=1) != k)
    moved_random = (after_random.argmax(axis=2) == k) & (before.argmax(axis=1) != k)[:, None]
    return Effect(mean, low, high, o, region=float(np.mean(after[:, k] - before[:, k])),
                  random=float(np.mean(after_random[:, :, k].mean(axis=1) - before[:, k])),
                  flips_region=float(moved.mean()), flips_random=float(moved_random.mean()),
                  kept_region=float(np.mean(after.argmax(axis=1) == before.argmax(axis=1)))), before, after


def _example(members, others, k, base, s_region, before, after, images):
    """The report's before/after picture of the first member and the first other-class image."""
    return {
        "member": int(members[0]), "other": int(others[0]),
        "member_score": float(base[0]), "removed_score": float(s_region[0]),
        "other_score": float(before[0, k]), "pasted_score": float(after[0, k]),
        "other_prediction": int(before[0].argmax()), "pasted_prediction": int(after[0].argmax()),
        "images": images,
    }


def run(scores_of, images_of, to_last, from_last, region, k, members, others, base_member_scores,
        n_random, seed, object_masks=None, noise=0.01, before=None, own=False):
    """The interventions (see the module docstring); ``scores_of(x) -> (n, C)`` scores of model-format
    images, ``images_of(indices) -> model-format images``; ``to_last``/``from_last`` convert between
    the model's format and channels-last; ``before``: the other-class images' scores ``(o, C)`` where
    they are known already (else they are scored here); ``own``: ``region`` is the group's own (its
    verdict then needs :func:`stands_out`, returned last; None otherwise)."""
    from keras_cam.metrics import impute

    rng = np.random.default_rng([int(seed), int(k), 0x7E5])
    m, o = len(members), len(others)
    xm = to_last(images_of(members))
    if object_masks is None:
        shifted = random_regions(region, n_random * max(m, o), rng).reshape(max(m, o), n_random, *region.shape)
    else:    # row i: member i's removal and the transplant from donor i % m (member i % m)
        shifted = matched_regions(region, object_masks, max(m, o), n_random, rng)
    # Removal: the region, then n_random random regions, per member; one imputation for all of them.
    masks = np.concatenate([np.broadcast_to(region, (m, *region.shape)),
                            shifted[:m].reshape(m * n_random, *region.shape)])
    stack = np.concatenate([xm, np.repeat(xm, n_random, axis=0)])
    filled = impute(stack, masks, noise=noise, seed=int(rng.integers(2 ** 31)))
    base = np.asarray(base_member_scores, np.float64)
    removal, s_region = _removal(scores_of(from_last(filled))[:, k], m, n_random, base)
    object_drop = None
    if object_masks is not None:
        keep = object_masks.reshape(m, -1).any(axis=1) & ~object_masks.reshape(m, -1).all(axis=1)
        if keep.any():
            gone = impute(xm[keep], object_masks[keep], noise=noise, seed=int(rng.integers(2 ** 31)))
            object_drop = float(np.mean(base[keep] - scores_of(from_last(gone))[:, k]))
    # Transplant: member pixels into other-class images, at the region and at random regions.
    xo = to_last(images_of(others))
    donors = xm[np.arange(o) % m]
    pasted = np.where(region[None, ..., None], donors, xo)
    random_pasted = np.where(shifted[:o, ..., None].reshape(o * n_random, *region.shape, 1),
                             np.repeat(donors, n_random, axis=0), np.repeat(xo, n_random, axis=0))
    every = _scored(scores_of, from_last, xo, before, pasted, random_pasted)
    transplant, before, after = _transplant(every, o, n_random, k)
    depends, sigma = dependence(removal, transplant, base, before, k)
    shared = stands_out(region, xm, xo) if own else None
    example = _example(members, others, k, base, s_region, before, after, (xm[0], filled[0], xo[0], pasted[0]))
    return removal, transplant, object_drop, (depends and shared is not False, sigma), example, shifted, shared


def _scored(scores_of, from_last, xo, before, pasted, random_pasted):
    """The transplant's scores ``[before; pasted; random pasted]``: one pass, with the other-class
    images' own scores reused where ``before`` gives them."""
    if before is None:
        return scores_of(from_last(np.concatenate([xo, pasted, random_pasted])))
    after = scores_of(from_last(np.concatenate([pasted, random_pasted])))
    return np.concatenate([np.asarray(before, after.dtype), after])


def random_offsets(norms, count, channels, rng):
    """``(len(norms), count, channels)``: offsets of uniformly random directions, row ``i`` of norm ``norms[i]``."""
    u = rng.standard_normal((len(norms), count, channels))
    u /= np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), 1e-12)
    return u * np.asarray(norms, np.float64)[:, None, None]


def channel_means(x):
    """``(n, C)``: the per-channel mean of each channels-last image ``(n, H, W, C)``."""
    return np.asarray(x, np.float64).mean(axis=(1, 2))


def run_image_wide(scores_of, images_of, to_last, from_last, k, members, rest, others, base_member_scores,
                   n_random, seed, before=None):
    """The image-wide interventions (see the module docstring, "Image-wide groups"); the arguments as for
    :func:`run`, with ``rest`` the images whose channel means ``rho`` averages. Returns ``run``'s values
    with the offset ``delta`` in place of the object drop and the random offsets ``(u, v)`` in place of
    the regions, then the offset's distinctness ``d`` (the verdict is "depends" only where
    ``d >= MIN_DISTINCT``)."""
    rng = np.random.default_rng([int(seed), int(k), 0x1A6E])
    m, o = len(members), len(others)
    xm, xr, xo = (to_last(images_of(i)) for i in (members, rest, others))
    lo = float(min(xm.min(), xr.min(), xo.min()))
    hi = float(max(xm.max(), xr.max(), xo.max()))
    channels = xm.shape[-1]

    def shifted(x, offsets):                    # x (n, H, W, C), offsets (n, C) -> [x + offset]
        return np.clip(x + offsets[:, None, None, :], lo, hi).astype(np.float32)

    mu_m, mu_r, mu_o = (channel_means(x) for x in (xm, xr, xo))
    rho = mu_r.mean(axis=0)
    own = rho - mu_m                                                           # (m, C)
    delta = mu_m.mean(axis=0) - rho
    u = random_offsets(np.linalg.norm(own, axis=1), n_random, channels, rng)          # (m, n_random, C)
    v = random_offsets(np.full(o, np.linalg.norm(delta)), n_random, channels, rng)   # (o, n_random, C)
    filled = np.concatenate([shifted(xm, own),
                             shifted(np.repeat(xm, n_random, axis=0), u.reshape(m * n_random, channels))])
    base = np.asarray(base_member_scores, np.float64)
    removal, s_region = _removal(scores_of(from_last(filled))[:, k], m, n_random, base)
    pasted = shifted(xo, np.broadcast_to(delta, (o, channels)))
    random_pasted = shifted(np.repeat(xo, n_random, axis=0), v.reshape(o * n_random, channels))
    every = _scored(scores_of, from_last, xo, before, pasted, random_pasted)
    transplant, before, after = _transplant(every, o, n_random, k)
    depends, sigma = dependence(removal, transplant, base, before, k)
    d = distinctness(delta, mu_m, mu_r, mu_o)
    example = _example(members, others, k, base, s_region, before, after, (xm[0], filled[0], xo[0], pasted[0]))
    return removal, transplant, delta, (depends and d >= MIN_DISTINCT, sigma), example, (u, v), d


def distinctness(delta, members, rest, others):
    """``d``: ``(median(members . e) - median(rest . e)) / sd(others . e)`` for the channel means ``(n, C)``
    of the members, the rest and the other-class images, along ``e``, the offset ``delta`` ``(C,)``
    whitened by the other images' covariance ``S`` of channel means: ``e ~ (S + lambda I)^-1 delta`` with
    ``lambda = 1e-3 trace(S) / C`` (see the module docstring). Inf where the other images do not vary
    along ``e`` and the members' median lies above the rest's; 0 for a zero offset or fewer than two
    other images."""
    others = np.asarray(others, np.float64)
    norm = float(np.linalg.norm(delta))
    if norm == 0 or len(others) < 2:
        return 0.0
    cov = np.atleast_2d(np.cov(others, rowvar=False))
    ridge = 1e-3 * float(np.trace(cov)) / len(cov)
    e = np.linalg.solve(cov + (ridge if ridge > 0 else 1.0) * np.eye(len(cov)), np.asarray(delta, np.float64))
    e /= np.linalg.norm(e)
    shift = float(np.median(np.asarray(members, np.float64) @ e) - np.median(np.asarray(rest, np.float64) @ e))
    spread = float(np.std(others @ e, ddof=1))
    if spread > 0:
        return shift / spread
    return float("inf") if shift > 0 else 0.0

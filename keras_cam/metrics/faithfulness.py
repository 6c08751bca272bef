"""Faithfulness at Quantus's breadth: do the pixels a map ranks high move the model's output?

Every function perturbs the images as the map says and reads the explained
class's output ``f_c``: its probability with ``softmax=True`` (the model's
softmax or sigmoid, or a softmax put on a model that outputs logits) or its
logit with ``softmax=False`` (the final softmax removed; a model without one
as it is). Each metric's default is Quantus 0.6's (logits for faithfulness
correlation, faithfulness estimate and infidelity, probabilities for the
others), so the values agree with Quantus on the same model.

- :func:`faithfulness_correlation` (Bhatt et al. 2020), :func:`faithfulness_estimate`
  (Alvarez-Melis and Jaakkola 2018), :func:`sensitivity_n` (Ancona et al. 2018):
  correlation of attribution sums with output drops;
- :func:`monotonicity` (Arya et al. 2019), :func:`monotonicity_correlation`
  (Nguyen and Martínez 2020);
- :func:`pixel_flipping` (Bach et al. 2015), :func:`region_perturbation`
  (Samek et al. 2017, AOPC), :func:`selectivity` (Montavon et al. 2018),
  :func:`irof` (Rieger and Hansen 2020): curves of cumulative removal;
- :func:`infidelity` (Yeh et al. 2019), :func:`sufficiency` (Dasgupta et al. 2022).

Conventions shared with :mod:`keras_cam.metrics.perturbation`: channels-last
``images`` ``(N, *S, C)`` as the model takes them, ``maps`` ``(N, *S)``; a
*feature* is one position (all its channels together; Quantus counts each
channel of a position separately, so the two agree on one-channel inputs);
``baseline`` ``"black"`` (each image's minimum, Quantus's default), ``"white"``
(maximum), ``"mean"`` or a number. Maps are used as given (Quantus first
divides by ``max |a|``, which leaves maps in [0, 1] with a maximum of 1, such
as Grad-CAM's, unchanged, and every correlation unchanged).

How it runs: every (image, perturbation) pair is one *item*; items of all
images fill the same batches of ``batch_size``; a compiled function gathers
each item's image and builds its perturbed copy on the device from an int map
of feature groups (``lo <= group < hi`` is replaced), so host memory and
device memory stay flat in the number of perturbations. Random subsets are
drawn from a counter-based hash of ``(seed, image position, draw)``: the same numbers
whatever ``batch_size`` and backend, but an image moved to another position in
the call gets that position's draws (see "Per image" in docs/metrics.md).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from keras_cam import targets as _targets
from keras_cam._compat import ops, to_host
from keras_cam.compiled import Compiled
from keras_cam.metrics._scoring import (
    check_batch_size,
    check_logits,
    check_reduce,
    check_seed,
    checked_inputs,
    input_graph,
    positive_int,
    reduced,
)

BASELINES = ("black", "white", "mean")
_BIG = 2 ** 30

_engines = {}
_KEEP = 4


class _Engine:
    """The explained-class output (as given) of perturbed copies of images, compiled once per model."""

    def __init__(self, model):
        self.model = model
        self.graph = input_graph(model)
        self.run = Compiled(self._run, model=model)

    def _run(self, images, fill, groups, rows, lo, hi, scale, shift, cls, softmax):
        shape = (-1,) + (1,) * (len(groups.shape) - 1)
        mask = ops.logical_and(groups >= ops.reshape(lo, shape), groups < ops.reshape(hi, shape))
        xi = ops.take(images, rows, axis=0)
        fi = ops.take(fill, rows, axis=0) * ops.reshape(scale, shape + (1,)) + ops.reshape(shift, shape + (1,))
        _, outputs = self.graph.forward(ops.where(mask[..., None], fi, xi))
        scores = self.graph.scores(outputs)
        values = self.graph.probabilities(scores) if softmax else scores
        return _targets.select(values, cls)


def _engine(model):
    key = id(model)
    if key not in _engines or _engines[key].model is not model:
        _engines[key] = _Engine(model)
        while len(_engines) > _KEEP:  # an engine holds its model: keep the last few
            del _engines[next(iter(_engines))]
    else:
        _engines[key] = _engines.pop(key)  # most recently used last
    return _engines[key]


class _Items:
    """Runs ``count`` items through the engine, ``batch_size`` at a time.

    ``spec(t)`` maps item ids ``t`` (int64 numpy) to ``(groups (b, *S) int32, rows,
    lo, hi, scale, shift)``; returns the ``(count,)`` outputs as float64.
    """

    def __init__(self, engine, x, fill, cls, batch_size, softmax):
        self.engine, self.x, self.fill, self.cls, self.batch_size = engine, x, fill, cls, batch_size
        self.softmax = bool(softmax)

    def __call__(self, count, spec):
        out = np.empty(count, np.float64)
        b = self.batch_size
        for start in range(0, count, b):
            t = np.arange(start, min(start + b, count), dtype=np.int64)
            real = len(t)
            if real < b:  # one shape for every call of every metric on these images: pad the last chunk
                t = np.concatenate([t, np.full(b - real, t[-1])])
            groups, rows, lo, hi, scale, shift = spec(t)
            v, _ = self.engine.run(
                self.x, self.fill, ops.convert_to_tensor(np.asarray(groups, np.int32)),
                ops.convert_to_tensor(np.asarray(rows, np.int32)),
                ops.convert_to_tensor(np.asarray(lo, np.int32)), ops.convert_to_tensor(np.asarray(hi, np.int32)),
                ops.convert_to_tensor(np.asarray(scale, np.float32)),
                ops.convert_to_tensor(np.asarray(shift, np.float32)),
                ops.convert_to_tensor(self.cls[np.asarray(rows)]), self.softmax)
            out[start:start + real] = np.asarray(to_host(v), np.float64)[:real]
        return out


def _setup(model, images, maps, targets, batch_size, reduce, softmax):
    """``(engine, x, maps (N, *S) float64, classes, outputs on the unchanged images, run)``."""
    check_reduce(reduce)
    check_batch_size(batch_size)
    engine = _engine(model)
    x, m = checked_inputs(images, maps, engine)
    if callable(targets):
        raise TypeError("These metrics read one class output per image, so `targets` must be None (top-1), "
                        "an int or one int per image; a callable target has no class.")
    n = int(x.shape[0])
    idx = _targets.class_indices(targets, n, engine.graph.num_classes)
    x = ops.convert_to_tensor(x)
    # The unchanged images (an empty group range), with the top-1 classes resolved, in the
    # batches of the perturbed ones (padded to batch_size: one compiled signature for all).
    groups = np.zeros((batch_size,) + m.shape[1:], np.int32)
    ones, zeros = np.ones(batch_size, np.float32), np.zeros(batch_size, np.int32)
    y, used = [], []
    t = ops.convert_to_tensor
    for i in range(0, n, batch_size):
        rows = np.minimum(np.arange(i, i + batch_size), n - 1).astype(np.int32)
        v, c = engine.run(x, x, t(groups), t(rows), t(zeros), t(zeros), t(ones), t(zeros.astype(np.float32)),
                          t(idx[rows]), bool(softmax))
        real = min(batch_size, n - i)
        y.append(np.asarray(to_host(v), np.float64)[:real])
        used.append(np.asarray(to_host(c), np.int32)[:real])
    cls = np.concatenate(used)
    if not softmax and engine.graph.opaque_head:  # logits asked for: are they probabilities? (one batch)
        rows = np.minimum(np.arange(batch_size), n - 1).astype(np.int32)
        p, _ = engine.run(x, x, t(groups), t(rows), t(zeros), t(zeros), t(ones), t(zeros.astype(np.float32)),
                          t(cls[rows]), True)
        real = min(batch_size, n)
        check_logits(engine.graph, y[0], np.asarray(to_host(p), np.float64)[:real])
    return engine, x, m.astype(np.float64), cls, np.concatenate(y)


def _baseline_values(x, baseline):
    """One fill value per image: ``"black"`` its minimum, ``"white"`` its maximum, ``"mean"``, or a number."""
    h = np.asarray(to_host(x), np.float64).reshape(int(x.shape[0]), -1)
    if isinstance(baseline, str):
        if baseline == "black":
            return h.min(axis=1)
        if baseline == "white":
            return h.max(axis=1)
        if baseline == "mean":
            return h.mean(axis=1)
    elif isinstance(baseline, numbers.Real) and not isinstance(baseline, bool) and math.isfinite(baseline):
        return np.full(len(h), float(baseline))
    raise ValueError(f"`baseline` must be one of {BASELINES} or a finite number; received {baseline!r}.")




def _order_groups(m, features_in_step, descending=True):
    """Each feature's step: its rank in the map (descending or ascending, ties in row-major
    order) divided by ``features_in_step``; ``(N, *S)`` int32 and the number of steps."""
    flat = m.reshape(len(m), -1)
    order = np.argsort(-flat if descending else flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None], axis=1)
    steps = math.ceil(flat.shape[1] / features_in_step)
    return (ranks // features_in_step).reshape(m.shape).astype(np.int32), steps


def _group_sums(values, groups, count):
    """``(N, count)``: the sum of ``values`` over each group of each image."""
    n = len(values)
    flat_g = groups.reshape(n, -1).astype(np.int64)
    out = np.zeros((n, count))
    np.add.at(out, (np.repeat(np.arange(n), flat_g.shape[1]), flat_g.ravel()), values.reshape(n, -1).ravel())
    return out


def _pearson(a, b):
    """Row-wise Pearson correlation; 0 where either row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    num = (a * b).sum(axis=1)
    ok = den > 1e-12 * np.maximum(1.0, np.abs(num))
    return np.where(ok, num / np.where(ok, den, 1.0), 0.0)


def _spearman(a, b):
    """Row-wise Spearman correlation (average ranks for ties); 0 where either row is constant."""
    from scipy.stats import rankdata

    return _pearson(rankdata(a, axis=1), rankdata(b, axis=1))


def _hash_uniform(seed, ids):
    """Uniform [0, 1) numbers from a counter-based hash (splitmix64) of ``(seed, ids)``."""
    with np.errstate(over="ignore"):  # the hash wraps around 2**64 on purpose (a seed > 1 warned before)
        z = (np.asarray(ids, np.uint64) + np.uint64(seed % (1 << 63)) * np.uint64(0x9E3779B97F4A7C15)) \
            * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(0x94D049BB133111EB)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _random_subsets(seed, draws, d, sizes):
    """``(b, d)`` bool: for each draw id, a uniformly random subset of ``sizes`` (one per draw, or
    one for all) of the ``d`` features: those with the smallest keys of a counter-based hash of
    ``(seed, draw, feature)``, the first ``size`` of a random permutation. ``argpartition`` finds
    them in ``O(d)`` per draw (a full sort costs ``O(d log d)``; 53-bit keys do not tie)."""
    keys = _hash_uniform(seed, draws[:, None].astype(np.uint64) * np.uint64(d) + np.arange(d, dtype=np.uint64)[None])
    sizes = np.broadcast_to(np.asarray(sizes, np.int64), (len(draws),))
    member = np.zeros(keys.shape, bool)
    for size in np.unique(sizes):
        rows = np.nonzero(sizes == size)[0]
        if size >= d:
            member[rows] = True
        elif size > 0:
            member[rows[:, None], np.argpartition(keys[rows], size - 1, axis=1)[:, :size]] = True
    return member




# ---------------------------------------------------------------------------------------------
# Correlations of attribution sums with output drops


def faithfulness_correlation(model, images, maps, targets=None, *, subset_size=224, runs=100, baseline="black",
                             softmax=False, batch_size=32, reduce="mean", seed=0):
    """Faithfulness correlation (Bhatt et al., IJCAI 2020), higher is better (↑), in [-1, 1].

    For ``runs`` random subsets ``S_j`` of ``subset_size`` features (uniform,
    without replacement), ``rho = Pearson_j(sum_{p in S_j} m_p, f_c(x) - f_c(x_{S_j}))``,
    ``x_S`` being the image with ``S`` set to the baseline. Quantus's defaults
    (``FaithfulnessCorrelation``): 100 runs, subsets of 224, black baseline,
    Pearson. Cost: ``runs + 1`` model calls per image. A constant map (or an
    output that never moves) has no correlation: 0.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, *S, C)`` as the model takes them.
        maps: ``(N, *S)`` at the image size.
        targets: None (top-1), an int, or one int per image.
        subset_size: features per subset, at most the number of features.
        runs: random subsets per image.
        baseline: what removed features become.
        batch_size: perturbed images per compiled call (items of all images share batches).
        reduce: ``"mean"`` or None (one value per image).
        seed: the seed of the subsets (the same subsets on every backend and batch size).
        softmax: probabilities (True) or logits (False, Quantus's default here).

    Returns:
        The mean correlation, a float; with ``reduce=None`` an ``(N,)`` float64 array.
    """
    engine, x, m, cls, y = _setup(model, images, maps, targets, batch_size, reduce, softmax)
    n, d = len(m), m[0].size
    subset_size, runs, seed = positive_int(subset_size, "subset_size"), positive_int(runs, "runs"), check_seed(seed)
    if subset_size > d:
        raise ValueError(f"`subset_size` ({subset_size}) must be at most the number of features per image ({d}).")
    b = _baseline_values(x, baseline)
    shape = m.shape[1:]

    flat = m.reshape(n, -1)
    sums = np.empty(n * runs)

    def spec(t):
        i = t // runs
        member = _random_subsets(seed, t, d, subset_size)
        sums[t] = (flat[i] * member).sum(axis=1)  # the attribution sums of the same subsets
        return (np.where(member, 0, 1).reshape((len(t),) + shape), i, np.zeros(len(t)), np.ones(len(t)),
                np.zeros(len(t)), b[i])

    out = _Items(engine, x, x, cls, batch_size, softmax)(n * runs, spec).reshape(n, runs)
    return reduced(_pearson(sums.reshape(n, runs), y[:, None] - out), reduce)


def faithfulness_estimate(model, images, maps, targets=None, *, features_in_step=1, baseline="black",
                          softmax=False, batch_size=32, reduce="mean"):
    """Faithfulness estimate (Alvarez-Melis and Jaakkola, NeurIPS 2018), higher is better (↑), in [-1, 1].

    Features are taken in order of decreasing map value, ``features_in_step``
    at a time (group ``k``); each group alone is set to the baseline:
    ``rho = Pearson_k(sum_{p in G_k} m_p, f_c(x) - f_c(x_{G_k}))``. Quantus's
    defaults (``FaithfulnessEstimate``): one feature per step, black baseline.
    Cost: ``ceil(F / features_in_step) + 1`` model calls per image (``F``
    features). Deterministic; a constant map gets 0.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, *S, C)`` as the model takes them.
        maps: ``(N, *S)`` at the image size.
        targets: None (top-1), an int, or one int per image.
        features_in_step: features per group ``G_k`` (1: one feature per step).
        baseline: what removed features become: ``"black"`` (each image's minimum), ``"white"``
            (its maximum), ``"mean"`` or a number.
        softmax: probabilities (True) or logits (False, Quantus's default here).
        batch_size: perturbed images per compiled call (items of all images share batches).
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean over images, a float; with ``reduce=None`` an ``(N,)`` float64 array.
    """
    engine, x, m, cls, y = _setup(model, images, maps, targets, batch_size, reduce, softmax)
    step = positive_int(features_in_step, "features_in_step")
    groups, k = _order_groups(m, step)
    b = _baseline_values(x, baseline)
    out = _Items(engine, x, x, cls, batch_size, softmax)(len(m) * k, lambda t: (
        groups[t // k], t // k, t % k, t % k + 1, np.zeros(len(t)), b[t // k])).reshape(len(m), k)
    return reduced(_pearson(_group_sums(m, groups, k), y[:, None] - out), reduce)


def sensitivity_n(model, images, maps, targets=None, *, sizes=None, subsets=100, baseline="black",
                  softmax=True, batch_size=32, reduce="mean", seed=0):
    """Sensitivity-n (Ancona et al., ICLR 2018), higher is better (↑), in [-1, 1].

    For each subset size ``n`` in ``sizes``, ``subsets`` random subsets ``S``
    of ``n`` features are set to the baseline, and
    ``rho_n = Pearson_S(sum_{p in S} m_p, f_c(x) - f_c(x_S))``; the value of
    an image is the mean of ``rho_n`` over ``sizes``. The paper leaves ``n``
    open (it plots a range): by default 5 sizes spaced geometrically from 1
    to 80% of the features (Quantus's ``n_max_percentage=0.8``). Quantus's
    ``SensitivityN`` returns one correlation per ``n`` *across the images of
    its batch*, of cumulative most-relevant-first removals, not a per-image
    value; ours follows the paper's per-image definition. Cost:
    ``len(sizes) * subsets + 1`` model calls per image.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, *S, C)`` as the model takes them.
        maps: ``(N, *S)`` at the image size.
        targets: None (top-1), an int, or one int per image.
        sizes: the subset sizes ``n`` (an int or a list of ints, each at most the number of
            features); None: 5 sizes spaced geometrically from 1 to 80% of the features.
        subsets: random subsets per size and image.
        baseline: what removed features become: ``"black"`` (each image's minimum), ``"white"``
            (its maximum), ``"mean"`` or a number.
        softmax: probabilities (True, Quantus's default here) or logits (False).
        batch_size: perturbed images per compiled call (items of all images share batches).
        reduce: ``"mean"`` or None (one value per image).
        seed: the seed of the random draws (the same on every backend and batch size).

    Returns:
        The mean over images, a float; with ``reduce=None`` an ``(N,)`` float64 array.
    """
    engine, x, m, cls, y = _setup(model, images, maps, targets, batch_size, reduce, softmax)
    n, d = len(m), m[0].size
    subsets, seed = positive_int(subsets, "subsets"), check_seed(seed)
    if sizes is None:
        sizes = sorted({int(round(v)) for v in np.geomspace(1, max(1.0, 0.8 * d), 5)})
    sizes = [positive_int(s, "sizes") for s in np.atleast_1d(sizes).tolist()]
    if max(sizes) > d:
        raise ValueError(f"`sizes` must be at most the number of features per image ({d}); received {sizes}.")
    sizes_arr, per = np.asarray(sizes), len(sizes) * subsets
    b = _baseline_values(x, baseline)
    shape = m.shape[1:]

    flat = m.reshape(n, -1)
    sums = np.empty(n * per)

    def spec(t):
        i = t // per
        member = _random_subsets(seed, t, d, sizes_arr[(t % per) // subsets])
        sums[t] = (flat[i] * member).sum(axis=1)  # the attribution sums of the same subsets
        return (np.where(member, 0, 1).reshape((len(t),) + shape), i, np.zeros(len(t)), np.ones(len(t)),
                np.zeros(len(t)), b[i])

    out = _Items(engine, x, x, cls, batch_size, softmax)(n * per, spec).reshape(n, len(sizes), subsets)
    sums = sums.reshape(n, len(sizes), subsets)
    rho = np.stack([_pearson(sums[i], y[i] - out[i]) for i in range(n)])
    return reduced(rho.mean(axis=1), reduce)


# ---------------------------------------------------------------------------------------------
# Monotonicity


def monotonicity(model, images, maps, targets=None, *, features_in_step=1, baseline="black",
                 softmax=True, batch_size=32, reduce="mean"):
    """Monotonicity (Arya et al. 2019, "One explanation does not fit all"), higher is better (↑), 0 or 1.

    Start from the baseline image and put the image's features back in order
    of *increasing* map value, ``features_in_step`` at a time: ``x^k`` shows
    groups ``0..k``. The map is monotonic (1) when ``f_c(x^k)`` never
    decreases with ``k``, else 0. Cost: ``ceil(F / features_in_step)`` model
    calls per image. Deterministic. Quantus 0.6's ``Monotonicity`` fills the
    baseline image with the baseline again instead of the image's features
    (it never reveals them), so it scores 1 whatever the map; we follow the paper.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, *S, C)`` as the model takes them.
        maps: ``(N, *S)`` at the image size.
        targets: None (top-1), an int, or one int per image.
        features_in_step: features per group ``G_k`` (1: one feature per step).
        baseline: the image the features are put back into: ``"black"`` (each image's minimum),
            ``"white"`` (its maximum), ``"mean"`` or a number.
        softmax: probabilities (True, Quantus's default here) or logits (False).
        batch_size: perturbed images per compiled call (items of all images share batches).
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The share of monotonic maps, a float in [0, 1]; with ``reduce=None`` an ``(N,)`` array of 0s and 1s.
    """
    engine, x, m, cls, _ = _setup(model, images, maps, targets, batch_size, reduce, softmax)
    step = positive_int(features_in_step, "features_in_step")
    groups, k = _order_groups(m, step, descending=False)
    b = _baseline_values(x, baseline)
    out = _Items(engine, x, x, cls, batch_size, softmax)(len(m) * k, lambda t: (
        groups[t // k], t // k, t % k + 1, np.full(len(t), _BIG), np.zeros(len(t)), b[t // k])).reshape(len(m), k)
    return reduced(np.all(np.diff(out, axis=1) >= 0, axis=1).astype(np.float64), reduce)


def monotonicity_correlation(model, images, maps, targets=None, *, features_in_step=1, samples=100, eps=1e-5,
                             baseline="uniform", softmax=True, batch_size=32, reduce="mean", seed=0):
    """Monotonicity correlation (Nguyen and Martínez 2020), higher is better (↑), in [-1, 1].

    Features in order of increasing map value, ``features_in_step`` at a time
    (group ``k``); group ``k`` alone is replaced ``samples`` times by one
    uniform [0, 1) value ``u_s`` (Quantus's default ``"uniform"`` baseline, one
    value per image and draw; or a fixed ``baseline`` as elsewhere, which makes
    one sample enough), giving the output's normalized variance
    ``v_k = mean_s (f_c(x_{G_k <- u_s}) - f_c(x))^2 / f_c(x)^2`` (no division
    when ``|f_c(x)| < eps``); ``rho = Spearman_k(sum_{p in G_k} m_p, v_k)``.
    Quantus's defaults (``MonotonicityCorrelation``): 100 samples, one feature
    per step. Cost: ``ceil(F / features_in_step) * samples + 1`` model calls
    per image; a constant map gets 0.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, *S, C)`` as the model takes them.
        maps: ``(N, *S)`` at the image size.
        targets: None (top-1), an int, or one int per image.
        features_in_step: features per group ``G_k`` (1: one feature per step).
        samples: replacements ``u_s`` of each group.
        eps: the output size ``|f_c(x)|`` below which ``v_k`` is not divided by ``f_c(x)^2``.
        baseline: ``"uniform"`` (a new uniform [0, 1) value per draw), or a fixed fill:
            ``"black"``, ``"white"``, ``"mean"`` or a number.
        softmax: probabilities (True, Quantus's default here) or logits (False).
        batch_size: perturbed images per compiled call (items of all images share batches).
        reduce: ``"mean"`` or None (one value per image).
        seed: the seed of the uniform draws (the same on every backend and batch size).

    Returns:
        The mean over images, a float; with ``reduce=None`` an ``(N,)`` float64 array.
    """
    engine, x, m, cls, y = _setup(model, images, maps, targets, batch_size, reduce, softmax)
    step, samples, seed = (positive_int(features_in_step, "features_in_step"),
                           positive_int(samples, "samples"), check_seed(seed))
    groups, k = _order_groups(m, step, descending=False)
    per = k * samples
    fixed = None if isinstance(baseline, str) and baseline == "uniform" else _baseline_values(x, baseline)
    out = _Items(engine, x, x, cls, batch_size, softmax)(len(m) * per, lambda t: (
        groups[t // per], t // per, (t % per) // samples, (t % per) // samples + 1, np.zeros(len(t)),
        _hash_uniform(seed, t) if fixed is None else fixed[t // per])).reshape(len(m), k, samples)
    inv = np.where(np.abs(y) >= eps, 1.0 / np.where(np.abs(y) >= eps, y, 1.0) ** 2, 1.0)
    v = ((out - y[:, None, None]) ** 2).mean(axis=2) * inv[:, None]
    return reduced(_spearman(_group_sums(m, groups, k), v), reduce)


# ---------------------------------------------------------------------------------------------
# Cumulative removal curves


def pixel_flipping(model, images, maps, targets=None, *, features_in_step=1, baseline="black",
                   softmax=True, batch_size=32, reduce="mean"):
    """Pixel flipping (Bach et al., PLoS ONE 2015), lower is better (↓).

    Features are set to the baseline cumulatively, in order of decreasing map
    value, ``features_in_step`` at a time; the value is the area under the
    curve ``f_c(x^1), ..., f_c(x^K)`` by the trapezoidal rule with unit steps
    (Quantus's ``PixelFlipping(return_auc_per_sample=True)``; divide by
    ``K - 1`` for a mean height). Cost: ``K = ceil(F / features_in_step)``
    model calls per image. Deterministic.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, *S, C)`` as the model takes them.
        maps: ``(N, *S)`` at the image size.
        targets: None (top-1), an int, or one int per image.
        features_in_step: features per group ``G_k`` (1: one feature per step).
        baseline: what removed features become: ``"black"`` (each image's minimum), ``"white"``
            (its maximum), ``"mean"`` or a number.
        softmax: probabilities (True, Quantus's default here) or logits (False).
        batch_size: perturbed images per compiled call (items of all images share batches).
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean over images, a float; with ``reduce=None`` an ``(N,)`` float64 array.
    """
    engine, x, m, cls, _ = _setup(model, images, maps, targets, batch_size, reduce, softmax)
    groups, k = _order_groups(m, positive_int(features_in_step, "features_in_step"))
    b = _baseline_values(x, baseline)
    out = _Items(engine, x, x, cls, batch_size, softmax)(len(m) * k, lambda t: (
        groups[t // k], t // k, np.zeros(len(t)), t % k + 1, np.zeros(len(t)), b[t // k])).reshape(len(m), k)
    return reduced(np.trapezoid(out, axis=1) if k > 1 else out[:, 0] * 0.0, reduce)


def _patch_groups(m, patch_size):
    """Quantus's patch grid: the feature axes padded evenly (``floor`` before, ``ceil`` after)
    to a multiple of ``patch_size``; each feature's patch index (row-major over the grid)."""
    shape = m.shape[1:]
    cells, counts = np.zeros(shape, np.int64), 1
    for axis, size in enumerate(shape):
        before = ((-size) % patch_size) // 2
        per = math.ceil(size / patch_size)
        index = (np.arange(size) + before) // patch_size
        cells = cells * per + index.reshape((-1,) + (1,) * (len(shape) - axis - 1))
        counts *= per
    return np.broadcast_to(cells, shape), counts


def _ranked_patches(m, patch_size, descending=True):
    """``(N, *S)`` int32: the rank of each feature's patch by the patch's map sum, and the patch count."""
    cells, count = _patch_groups(m, patch_size)
    sums = _group_sums(m, np.broadcast_to(cells, m.shape), count)
    order = np.argsort(-sums if descending else sums, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(count)[None], axis=1)
    return np.take_along_axis(rank, np.broadcast_to(cells, m.shape).reshape(len(m), -1), axis=1) \
        .reshape(m.shape).astype(np.int32), count


def region_perturbation(model, images, maps, targets=None, *, patch_size=8, order="morf", regions=100,
                        baseline="black", softmax=True, batch_size=32, reduce="mean"):
    """Region perturbation AOPC (Samek et al., IEEE TNNLS 2017), ↑ with ``order="morf"``, ↓ with ``"lerf"``.

    The features are cut into a grid of ``patch_size`` patches (1-D, 2-D or
    3-D; the axes padded evenly to a multiple, as in Quantus); patches are set
    to the baseline cumulatively, most relevant first (``"morf"``, by their
    map sum) or least relevant first (``"lerf"``), and
    ``AOPC = 1 / (L + 1) sum_{k=0}^{L} (f_c(x) - f_c(x^k))`` over the first
    ``L = min(regions, patches)`` steps (``x^0 = x``). Quantus's defaults
    (``RegionPerturbation``): patches of 8, 100 regions, black baseline, MoRF;
    Quantus returns the curve ``f_c(x) - f_c(x^k)``, whose sum over ``L + 1``
    is this value. Cost: ``L + 1`` model calls per image. Deterministic.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, *S, C)`` as the model takes them.
        maps: ``(N, *S)`` at the image size.
        targets: None (top-1), an int, or one int per image.
        patch_size: the side of the square (cube) patches, in features.
        order: ``"morf"`` (most relevant patch first) or ``"lerf"`` (least relevant first).
        regions: the most patches removed, ``L = min(regions, patches)``.
        baseline: what removed features become: ``"black"`` (each image's minimum), ``"white"``
            (its maximum), ``"mean"`` or a number.
        softmax: probabilities (True, Quantus's default here) or logits (False).
        batch_size: perturbed images per compiled call (items of all images share batches).
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean over images, a float; with ``reduce=None`` an ``(N,)`` float64 array.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"`order` must be \"morf\" or \"lerf\"; received {order!r}.")
    engine, x, m, cls, y = _setup(model, images, maps, targets, batch_size, reduce, softmax)
    groups, count = _ranked_patches(m, positive_int(patch_size, "patch_size"), descending=order == "morf")
    k = min(positive_int(regions, "regions"), count)
    b = _baseline_values(x, baseline)
    out = _Items(engine, x, x, cls, batch_size, softmax)(len(m) * k, lambda t: (
        groups[t // k], t // k, np.zeros(len(t)), t % k + 1, np.zeros(len(t)), b[t // k])).reshape(len(m), k)
    return reduced((y[:, None] - out).sum(axis=1) / (k + 1), reduce)


def selectivity(model, images, maps, targets=None, *, patch_size=8, baseline="black", softmax=True, batch_size=32,
                reduce="mean"):
    """Selectivity (Montavon et al., Digital Signal Processing 2018), lower is better (↓).

    Patches (as in :func:`region_perturbation`) are set to the baseline
    cumulatively, most relevant first, until none is left; the value is the
    area under ``f_c(x^1), ..., f_c(x^P)`` by the trapezoidal rule with unit
    steps (Quantus's ``Selectivity`` curve and its ``get_auc_score``). Quantus's
    defaults: patches of 8, black baseline. Cost: ``P`` model calls per image
    (the number of patches). Deterministic.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, *S, C)`` as the model takes them.
        maps: ``(N, *S)`` at the image size.
        targets: None (top-1), an int, or one int per image.
        patch_size: the side of the square (cube) patches, in features.
        baseline: what removed features become: ``"black"`` (each image's minimum), ``"white"``
            (its maximum), ``"mean"`` or a number.
        softmax: probabilities (True, Quantus's default here) or logits (False).
        batch_size: perturbed images per compiled call (items of all images share batches).
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean over images, a float; with ``reduce=None`` an ``(N,)`` float64 array.
    """
    engine, x, m, cls, _ = _setup(model, images, maps, targets, batch_size, reduce, softmax)
    groups, k = _ranked_patches(m, positive_int(patch_size, "patch_size"))
    b = _baseline_values(x, baseline)
    out = _Items(engine, x, x, cls, batch_size, softmax)(len(m) * k, lambda t: (
        groups[t // k], t // k, np.zeros(len(t)), t % k + 1, np.zeros(len(t)), b[t // k])).reshape(len(m), k)
    return reduced(np.trapezoid(out, axis=1) if k > 1 else out[:, 0] * 0.0, reduce)


def _segments(x, slic_kwargs):
    try:
        from skimage.segmentation import slic
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("irof needs scikit-image for its SLIC superpixels: pip install scikit-image.") from err
    segs = []
    for img in np.asarray(to_host(x), np.float64):
        s = slic(img, start_label=0, **slic_kwargs)
        _, s = np.unique(s, return_inverse=True)  # labels 0..K-1
        segs.append(s.reshape(img.shape[:-1]).astype(np.int32))
    return segs


def irof(model, images, maps, targets=None, *, softmax=True, batch_size=32, reduce="mean", **slic_kwargs):
    """IROF, iterative removal of features (Rieger and Hansen 2020), higher is better (↑).

    Each image is cut into SLIC superpixels (scikit-image's ``slic`` with its
    defaults, as in Quantus, or ``slic_kwargs``); superpixels are ranked by
    their mean map value and removed cumulatively, most relevant first, each
    filled with the mean of the image as it is at that step (Quantus's
    ``"mean"`` baseline, recomputed per step, over one image: Quantus takes
    the mean over its whole batch, so the two agree with ``batch_size=1`` in
    Quantus). With ``p_k = f_c(x^k) / f_c(x)``, ``IROF = K - trapz(p_1..p_K)``,
    the area over the curve (unit steps; Quantus's ``IROF``). 2-D and 3-D
    layouts (SLIC needs a grid). Cost: ``K + 1`` model calls per image
    (``K`` superpixels, ~100 by SLIC's default).

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, *S, C)`` as the model takes them.
        maps: ``(N, *S)`` at the image size.
        targets: None (top-1), an int, or one int per image.
        softmax: probabilities (True, Quantus's default here) or logits (False).
        batch_size: perturbed images per compiled call (items of all images share batches).
        reduce: ``"mean"`` or None (one value per image).
        **slic_kwargs: passed on to ``skimage.segmentation.slic`` (``n_segments``, ``compactness``...).

    Returns:
        The mean over images, a float; with ``reduce=None`` an ``(N,)`` float64 array.
    """
    engine, x, m, cls, y = _setup(model, images, maps, targets, batch_size, reduce, softmax)
    if m.ndim == 2:
        raise ValueError("irof segments images into superpixels (SLIC), which needs 2-D or 3-D features; "
                         f"received maps of shape {m.shape} (1-D signals).")
    h = np.asarray(to_host(x), np.float64)
    segs = _segments(h, slic_kwargs)
    n, counts = len(m), [int(s.max()) + 1 for s in segs]
    kmax = max(counts)
    groups = np.empty(m.shape, np.int32)
    fill = np.empty(h.shape, np.float32)
    for i, s in enumerate(segs):
        means = _group_sums(m[i:i + 1], s[None], counts[i])[0] / np.bincount(s.ravel(), minlength=counts[i])
        order = np.argsort(-means, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(counts[i])
        groups[i] = rank[s]
        # The fill of step k is the mean of the image with steps 0..k-1 already filled.
        current = h[i].copy()
        values = np.empty(counts[i])
        for k, seg in enumerate(order):
            values[k] = current.mean()
            current[s == seg] = values[k]
        fill[i] = np.broadcast_to(values[groups[i]][..., None], h[i].shape)
    out = _Items(engine, x, ops.convert_to_tensor(fill), cls, batch_size, softmax)(n * kmax, lambda t: (
        groups[t // kmax], t // kmax, np.zeros(len(t)), t % kmax + 1, np.ones(len(t)), np.zeros(len(t))))
    out = out.reshape(n, kmax)
    values = np.empty(n)
    for i in range(n):
        p = out[i, :counts[i]] / y[i]
        values[i] = counts[i] - (np.trapezoid(p) if counts[i] > 1 else 0.0)
    return reduced(values, reduce)


def infidelity(model, images, maps, targets=None, *, patch_sizes=(4,), baseline="black", softmax=False, batch_size=32,
               reduce="mean"):
    """Infidelity (Yeh et al., NeurIPS 2019), lower is better (↓), 0 for a perfect map.

    ``INFD = E_I[(I^T m - (f_c(x) - f_c(x - I)))^2]`` with ``I = x - x~`` the
    perturbation summed over channels. The paper leaves the distribution of
    ``I`` open; as Quantus's ``Infidelity`` by default, ``x~^k`` sets the
    first ``k`` squares of a ``patch_size`` grid (row-major) to the baseline,
    for every ``k``, and the mean squared error is averaged over the steps and
    then over ``patch_sizes`` (Quantus repeats this deterministic sequence
    ``n_perturb_samples`` times, which does not change it). ``I^T m`` pairs the
    map with the change of the input, so a gradient (``m = w`` for
    ``f_c = w . x``) is exact: 0. Cost: ``sum(patches per size) + 1`` model
    calls per image. Deterministic.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, *S, C)`` as the model takes them.
        maps: ``(N, *S)`` at the image size.
        targets: None (top-1), an int, or one int per image.
        patch_sizes: the sides of the square patches (an int or a sequence); the errors are
            averaged over the sizes.
        baseline: what removed features become: ``"black"`` (each image's minimum), ``"white"``
            (its maximum), ``"mean"`` or a number.
        softmax: probabilities (True) or logits (False, Quantus's default here).
        batch_size: perturbed images per compiled call (items of all images share batches).
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean over images, a float >= 0; with ``reduce=None`` an ``(N,)`` float64 array.
    """
    engine, x, m, cls, y = _setup(model, images, maps, targets, batch_size, reduce, softmax)
    sizes = [positive_int(p, "patch_sizes") for p in np.atleast_1d(patch_sizes).tolist()]
    b = _baseline_values(x, baseline)
    h = np.asarray(to_host(x), np.float64)
    change = (h - b.reshape((-1,) + (1,) * (h.ndim - 1))).sum(axis=-1) * m  # m_p sum_c (x_pc - baseline)
    losses = []
    for size in sizes:
        cells, k = _patch_groups(m, size)
        groups = np.broadcast_to(cells, m.shape).astype(np.int32)
        out = _Items(engine, x, x, cls, batch_size, softmax)(len(m) * k, lambda t: (
            groups[t // k], t // k, np.zeros(len(t)), t % k + 1, np.zeros(len(t)), b[t // k])).reshape(len(m), k)
        explained = np.cumsum(_group_sums(change, groups, k), axis=1)
        losses.append((((y[:, None] - out) - explained) ** 2).mean(axis=1))
    return reduced(np.mean(losses, axis=0), reduce)


def sufficiency(model, images, maps, targets=None, *, threshold=0.6, softmax=True, batch_size=32, reduce="mean"):
    """Sufficiency (Dasgupta et al., ICML 2022), higher is better (↑), in [0, 1].

    Two images are neighbours when the distance of their maps, divided by the
    largest distance between two of the ``N`` maps, is at most ``threshold``;
    the distance is the standardized Euclidean one (each squared difference divided by the
    feature's variance, estimated as ``scipy.spatial.distance.cdist(maps, maps,
    "seuclidean")`` does, over the ``N`` maps stacked twice, ``ddof=1``;
    features that do not vary are left out). The value of image ``i`` is the
    share of its neighbours ``j != i`` with the same class (``targets``, or
    the model's top-1 class when None), 0 without neighbours. Quantus's
    defaults (``Sufficiency``): threshold 0.6, seuclidean; Quantus compares
    the images of one batch, so the two agree with Quantus's ``batch_size``
    at least ``N``. A property of the set of images: one image's value
    depends on the others. Cost: one model call per image.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, *S, C)`` as the model takes them.
        maps: ``(N, *S)`` at the image size.
        targets: the class of each image: None (the model's top-1), an int, or one int per image.
        threshold: the largest normalized map distance of two neighbours, in [0, 1].
        softmax: probabilities (True) or logits (False); the top-1 classes are the same either way.
        batch_size: perturbed images per compiled call (items of all images share batches).
        reduce: ``"mean"`` or None (one value per image).

    Returns:
        The mean over images, a float in [0, 1]; with ``reduce=None`` an ``(N,)`` float64 array.
    """
    check_reduce(reduce)
    if not (isinstance(threshold, numbers.Real) and not isinstance(threshold, bool) and 0 <= threshold <= 1):
        raise ValueError(f"`threshold` must be a number in [0, 1] (a share of the largest distance between "
                         f"two maps); received {threshold!r}.")
    _, _, m, cls, _ = _setup(model, images, maps, targets, batch_size, reduce, softmax)
    n = len(m)
    flat = m.reshape(n, -1)
    if n < 2:
        return reduced(np.zeros(n), reduce)
    var = np.vstack([flat, flat]).var(axis=0, ddof=1)  # as cdist(maps, maps, "seuclidean") estimates it
    keep = var > 0
    z = flat[:, keep] / np.sqrt(var[keep])
    from scipy.spatial.distance import cdist

    dist = cdist(z, z, "euclidean")
    if dist.max() > 0:
        dist = dist / dist.max()  # Quantus's normalise_func (by the maximum) on the distances
    near = (dist <= threshold) & ~np.eye(n, dtype=bool)
    same = cls[None] == cls[:, None]
    count = near.sum(axis=1)
    return reduced(np.where(count > 0, (near & same).sum(axis=1) / np.maximum(count, 1), 0.0), reduce)


FAITHFULNESS = (
    "faithfulness_correlation", "faithfulness_estimate", "monotonicity", "monotonicity_correlation",
    "pixel_flipping", "region_perturbation", "selectivity", "sensitivity_n", "irof", "infidelity", "sufficiency",
)

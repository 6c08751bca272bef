"""Every metric for every method in one call, as one table.

:func:`evaluate` explains the images once per method (every method for the
same classes: the top-1 class of the unchanged image, or the given
targets), scores the maps with each metric, one value per image, and
returns an :class:`EvaluationTable`: the mean per method and metric (the
rows), the per-image values, a seeded bootstrap confidence interval per
cell, paired comparisons of two methods on the same images
(:meth:`EvaluationTable.compare`), and a ``to_markdown()``, which the
documentation, the benchmark and ``keras-cam evaluate`` print.
"""

from __future__ import annotations

import dataclasses
import math

import numbers

import numpy as np

from keras_cam._compat import to_host
from keras_cam.inputs import as_batch
from keras_cam.metrics import axiomatic, faithfulness, localization, perturbation, properties, randomization, robustness
from keras_cam.metrics._scoring import explained_classes, get_scorer

# Resampled images per bootstrap chunk (resamples x images), to keep the memory bounded.
_BOOTSTRAP_CHUNK = 2_000_000


@dataclasses.dataclass(frozen=True)
class _Metric:
    fn: object
    label: str
    better: str            # "lower" or "higher"
    needs: str             # "model" (model, images, maps), "maps", "boxes" (boxes or masks), "explainer", "sanity",
                           # "factory" (f(model) -> explainer, model, images, targets)
    digits: int = 3
    default: bool = True   # computed by evaluate(metrics=None)


_METRICS = {
    "average_drop": _Metric(perturbation.average_drop, "Avg Drop %", "lower", "model", 1),
    "increase_in_confidence": _Metric(perturbation.increase_in_confidence, "Incr Conf %", "higher", "model", 1),
    "deletion_auc": _Metric(perturbation.deletion_auc, "Deletion", "lower", "model"),
    "insertion_auc": _Metric(perturbation.insertion_auc, "Insertion", "higher", "model"),
    "road": _Metric(perturbation.road, "ROAD", "higher", "model"),
    "faithfulness_correlation": _Metric(faithfulness.faithfulness_correlation, "Faith corr", "higher", "model",
                                        default=False),
    "faithfulness_estimate": _Metric(faithfulness.faithfulness_estimate, "Faith est", "higher", "model", default=False),
    "monotonicity": _Metric(faithfulness.monotonicity, "Monotonicity", "higher", "model", default=False),
    "monotonicity_correlation": _Metric(faithfulness.monotonicity_correlation, "Mono corr", "higher", "model",
                                        default=False),
    "pixel_flipping": _Metric(faithfulness.pixel_flipping, "Pixel flip", "lower", "model", default=False),
    "region_perturbation": _Metric(faithfulness.region_perturbation, "AOPC", "higher", "model", default=False),
    "selectivity": _Metric(faithfulness.selectivity, "Selectivity", "lower", "model", default=False),
    "sensitivity_n": _Metric(faithfulness.sensitivity_n, "Sens-n", "higher", "model", default=False),
    "irof": _Metric(faithfulness.irof, "IROF", "higher", "model", default=False),
    "infidelity": _Metric(faithfulness.infidelity, "Infidelity", "lower", "model", default=False),
    "sufficiency": _Metric(faithfulness.sufficiency, "Sufficiency", "higher", "model", default=False),
    "pointing_game": _Metric(localization.pointing_game, "Pointing %", "higher", "boxes", 1),
    "energy_pointing_game": _Metric(localization.energy_pointing_game, "Energy PG %", "higher", "boxes", 1),
    "attribution_localization": _Metric(localization.attribution_localization, "Attr loc", "higher", "boxes"),
    "top_k_intersection": _Metric(localization.top_k_intersection, "Top-k ∩", "higher", "boxes", default=False),
    "relevance_rank_accuracy": _Metric(localization.relevance_rank_accuracy, "Rank acc", "higher", "boxes"),
    "relevance_mass_accuracy": _Metric(localization.relevance_mass_accuracy, "Mass acc", "higher", "boxes"),
    "mask_auc": _Metric(localization.mask_auc, "Mask AUC", "higher", "boxes"),
    "focus": _Metric(localization.focus, "Focus", "higher", "explainer", default=False),
    "sparseness": _Metric(properties.sparseness, "Sparseness", "higher", "maps"),
    "complexity": _Metric(properties.complexity, "Complexity", "lower", "maps"),
    "random_logit": _Metric(properties.random_logit, "Random logit", "lower", "explainer"),
    "max_sensitivity": _Metric(properties.max_sensitivity, "Max sens", "lower", "explainer"),
    "effective_complexity": _Metric(properties.effective_complexity, "Eff complexity", "lower", "maps", 1, default=False),
    "avg_sensitivity": _Metric(robustness.avg_sensitivity, "Avg sens", "lower", "explainer", default=False),
    "local_lipschitz_estimate": _Metric(robustness.local_lipschitz_estimate, "Local Lipschitz", "lower", "explainer",
                                        default=False),
    "continuity": _Metric(robustness.continuity, "Continuity", "lower", "explainer", default=False),
    "consistency": _Metric(robustness.consistency, "Consistency", "higher", "model", default=False),
    "relative_input_stability": _Metric(robustness.relative_input_stability, "RIS", "lower", "explainer",
                                        default=False),
    "relative_output_stability": _Metric(robustness.relative_output_stability, "ROS", "lower", "explainer",
                                         default=False),
    "relative_representation_stability": _Metric(robustness.relative_representation_stability, "RRS", "lower",
                                                  "explainer", default=False),
    "smooth_mprt": _Metric(randomization.smooth_mprt, "sMPRT ρ", "lower", "factory", default=False),
    "efficient_mprt": _Metric(randomization.efficient_mprt, "eMPRT", "higher", "factory", default=False),
    "completeness": _Metric(axiomatic.completeness, "Completeness gap", "lower", "model", default=False),
    "non_sensitivity": _Metric(axiomatic.non_sensitivity, "Non-sensitivity", "lower", "model", 1, default=False),
    "input_invariance": _Metric(axiomatic.input_invariance, "Input inv", "higher", "factory", default=False),
    "sanity_check": _Metric(None, "Sanity ρ", "lower", "sanity"),
}

METRICS = tuple(_METRICS)
DEFAULT_METRICS = tuple(name for name in METRICS if name != "sanity_check" and _METRICS[name].default)


def needs_ground_truth(name):
    """Whether metric ``name`` (of :data:`METRICS`) compares maps with boxes or masks (the localization ones)."""
    return _METRICS[name].needs == "boxes"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two methods compared on one metric, image by image (:meth:`EvaluationTable.compare`).

    With ``a_i``, ``b_i`` the metric of the first and the second method on image ``i``:

    Attributes:
        metric: the metric name.
        first, second: the two methods' names.
        better: ``"lower"`` or ``"higher"``, the metric's direction.
        difference: ``mean_i (a_i - b_i)``, the mean paired difference (equal
            to the difference of the two rows' means).
        interval: the bootstrap confidence interval of ``difference`` at
            ``level`` (the same resampled images for both methods), or None
            when the table was built with ``ci=None``.
        level: the interval's confidence level (None without one).
        wins: the share of images where the first method is better (``a_i <
            b_i`` for a lower-is-better metric, ``a_i > b_i`` otherwise).
        losses: the share where the second one is better.
        ties: the share where they are equal (``wins + losses + ties = 1``).
        images: the number of images compared.
    """

    metric: str
    first: str
    second: str
    better: str
    difference: float
    interval: tuple | None
    level: float | None
    wins: float
    losses: float
    ties: float
    images: int


@dataclasses.dataclass
class EvaluationTable:
    """The result of :func:`evaluate`: one row per method, one column per metric.

    Attributes:
        metrics: the metric names, in column order (``"average_drop"``...).
        headers: the column titles, each with its direction (``↓`` lower is
            better, ``↑`` higher), after a first ``"method"`` column.
        rows: one dict per method: ``{"method": name, metric: mean}``, the
            mean over images; a value is None where the metric does not
            apply (a method given as fixed maps has no explainer to call again).
        digits: decimals per metric in :meth:`to_markdown`.
        per_image: one dict per method and image, method by method:
            ``{"method": name, "image": i, metric: value}`` (the values whose
            mean is the row's).
        intervals: one dict per row: ``{metric: (low, high)}``, the
            bootstrap confidence interval of the row's mean at level ``ci``
            (None where the metric does not apply, or with ``ci=None``).
        ci: the confidence level of :attr:`intervals` (None: not computed).
        better: ``{metric: "lower" or "higher"}``, each column's direction.
        resamples: the number of bootstrap resamples.
        seed: the seed of the bootstrap's resampled images.
    """

    metrics: list
    headers: list
    rows: list
    digits: dict
    per_image: list = dataclasses.field(default_factory=list)
    intervals: list = dataclasses.field(default_factory=list)
    ci: float | None = None
    better: dict = dataclasses.field(default_factory=dict)
    resamples: int = 1000
    seed: int = 0

    def column(self, metric):
        """The values of one metric, one per row (None where it does not apply).

        Args:
            metric: a metric name of :attr:`metrics`.

        Returns:
            A list of floats (or None), in row order.
        """
        self._check_metric(metric)
        return [row[metric] for row in self.rows]

    def values(self, method, metric):
        """One method's per-image values of one metric.

        Args:
            method: a method's name (as in the rows) or its row index.
            metric: a metric name of :attr:`metrics`.

        Returns:
            A float64 ``(N,)`` array, or None where the metric does not apply.
        """
        self._check_metric(metric)
        index = self._row(method)
        n = len(self.per_image) // max(1, len(self.rows))
        found = [r[metric] for r in self.per_image[index * n:(index + 1) * n]]
        if not found or found[0] is None:
            return None
        return np.array(found, np.float64)

    def compare(self, first, second, metric=None):
        """A paired comparison of two methods on the same images.

        For each image ``i``, ``d_i = a_i - b_i`` (the first method's value
        minus the second's). The result holds the mean difference, its
        bootstrap interval (percentile bootstrap over the images, the same
        resampled images as :attr:`intervals`) and the shares of images
        where each method is better, in the metric's direction.

        Args:
            first: a method's name or row index.
            second: another method's name or row index.
            metric: a metric name, or None for every metric both methods have.

        Returns:
            A :class:`Comparison`, or with ``metric=None`` a dict
            ``{metric: Comparison}``.

        Raises:
            KeyError: for an unknown method or metric.
            ValueError: for a metric that does not apply to one of the methods,
                or a name that several rows share (pass the row index).
        """
        names = [self.rows[self._row(m)]["method"] for m in (first, second)]
        if metric is None:
            return {m: self.compare(first, second, m) for m in self.metrics
                    if self.values(first, m) is not None and self.values(second, m) is not None}
        a, b = self.values(first, metric), self.values(second, metric)
        if a is None or b is None:
            missing = names[0] if a is None else names[1]
            raise ValueError(f"Metric {metric!r} does not apply to method {missing!r} (it has no per-image "
                             f"values): compare two methods that both have it.")
        better = self.better.get(metric, "higher")
        with np.errstate(invalid="ignore"):
            d = np.where(a == b, 0.0, a - b)   # equal values, infinite ones too, differ by 0
        first_better = (a < b) if better == "lower" else (a > b)
        second_better = (b < a) if better == "lower" else (b > a)
        interval = None
        if self.ci is not None:
            interval = bootstrap_interval(d, self.ci, self.resamples, self.seed)
        return Comparison(
            metric=metric, first=names[0], second=names[1], better=better,
            difference=float(np.mean(d)), interval=interval, level=self.ci,
            wins=float(np.mean(first_better)), losses=float(np.mean(second_better)),
            ties=float(np.mean(~first_better & ~second_better)), images=len(d),
        )

    def to_markdown(self, intervals=False):
        """The table in Markdown: percentages with one decimal, other values with three.

        Args:
            intervals: also print each cell's confidence interval, ``mean [low, high]``.

        Returns:
            A string, one line per method after the header and separator.
        """
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        for k, row in enumerate(self.rows):
            cells = [str(row["method"])]
            for m in self.metrics:
                cell = _cell(row[m], self.digits[m])
                span = self.intervals[k].get(m) if intervals and k < len(self.intervals) else None
                if span is not None:
                    cell += f" [{_cell(span[0], self.digits[m])}, {_cell(span[1], self.digits[m])}]"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self):
        return self.to_markdown()

    def _repr_markdown_(self):
        return self.to_markdown()

    def _check_metric(self, metric):
        if metric not in self.metrics:
            raise KeyError(f"No metric {metric!r} in this table; it has {self.metrics}.")

    def _row(self, method):
        names = [row["method"] for row in self.rows]
        if isinstance(method, (int, np.integer)) and not isinstance(method, bool):
            if not 0 <= method < len(names):
                raise KeyError(f"No row {method} in this table; it has {len(names)} rows.")
            return int(method)
        found = [i for i, n in enumerate(names) if n == method]
        if not found:
            raise KeyError(f"No method {method!r} in this table; it has {names}.")
        if len(found) > 1:
            raise ValueError(f"Several rows are named {method!r} (rows {found}): pass the row index.")
        return found[0]


def bootstrap_interval(values, level=0.95, resamples=1000, seed=0):
    """A percentile bootstrap confidence interval of the mean of ``values``.

    ``resamples`` times, ``n`` values are drawn with replacement from the
    ``n`` values (``numpy.random.default_rng(seed)``: the same resampled
    indices for every array of the same length, so the cells of a table and
    their paired differences use the same resampled images) and their mean
    taken; the interval runs from the ``(1 - level) / 2`` quantile of these
    means to the ``(1 + level) / 2`` quantile, each rounded outwards to a
    resampled mean (numpy's ``"lower"`` and ``"higher"`` quantile methods:
    never interpolated, so an infinite value gives an infinite bound, not NaN).

    Args:
        values: ``(n,)`` per-image values, ``n >= 1``.
        level: the confidence level, in (0, 1).
        resamples: the number of resamples, a positive int.
        seed: the seed of the resampled indices.

    Returns:
        ``(low, high)`` floats.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("A bootstrap interval needs at least one value.")
    n = v.size
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, _BOOTSTRAP_CHUNK // n)
    for start in range(0, resamples, step):
        k = min(step, resamples - start)
        with np.errstate(invalid="ignore"):
            means[start:start + k] = v[rng.integers(0, n, (k, n))].mean(axis=1)
    alpha = (1.0 - level) / 2
    return (float(np.quantile(means, alpha, method="lower")),
            float(np.quantile(means, 1.0 - alpha, method="higher")))


def _cell(value, digits):
    if value is None:
        return "–"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _direction(name, metric, kwargs):
    """``(column title, "lower" or "higher")``: ROAD's depend on its order."""
    label, better = metric.label, metric.better
    if name == "road":
        order = kwargs.get("order", "combined")
        label, better = f"ROAD {order}", ("lower" if order == "morf" else "higher")
    if name == "region_perturbation" and kwargs.get("order", "morf") == "lerf":
        label, better = "AOPC lerf", "lower"
    return label, better


def _label(name, metric, kwargs):
    """The column title with its direction."""
    label, better = _direction(name, metric, kwargs)
    return f"{label} {'↓' if better == 'lower' else '↑'}"


def _chosen(metrics, boxes, masks=None):
    """``{name: kwargs}`` of the metrics to compute, in the given order."""
    if metrics is None:
        truth = boxes is not None or masks is not None
        names = [m for m in DEFAULT_METRICS if truth or _METRICS[m].needs != "boxes"]
        chosen = {m: {} for m in names}
    elif isinstance(metrics, dict):
        chosen = {m: dict(kw or {}) for m, kw in metrics.items()}
    elif isinstance(metrics, str):
        chosen = {metrics: {}}
    else:
        chosen = {m: {} for m in metrics}
    unknown = [m for m in chosen if m not in _METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; choose among {list(METRICS)}.")
    needy = [m for m in chosen if _METRICS[m].needs == "boxes"]
    if boxes is None and masks is None and needy:
        raise ValueError(f"The localization metrics {needy} compare maps with the object's ground truth: pass "
                         f"`boxes=` (N, 2r) integer boxes or `masks=` (N, *S) boolean masks.")
    if boxes is not None and masks is not None:
        raise ValueError("Pass either `boxes=` or `masks=` for the localization metrics, not both.")
    if "road" in chosen:
        chosen["road"].setdefault("order", "combined")
    return chosen


def _methods(explainers):
    """``[(name, spec)]`` from a dict, a list or a single method."""
    if isinstance(explainers, dict):
        return list(explainers.items())
    if isinstance(explainers, (list, tuple)):
        return [(_name(spec, i), spec) for i, spec in enumerate(explainers)]
    return [(_name(explainers, 0), explainers)]


def _name(spec, i):
    if isinstance(spec, str):
        return spec
    if isinstance(spec, type):
        return spec.__name__
    if hasattr(spec, "explain"):
        return type(spec).__name__
    if callable(spec):
        return getattr(spec, "__name__", f"method {i}")
    return f"maps {i}"


def _build(name, spec, model):
    """``(explainer or None, factory or None, fixed maps or None)`` of one method."""
    from keras_cam import methods as registry

    if isinstance(spec, str):
        return registry.create(spec, model), (lambda m: registry.create(spec, m)), None
    if not isinstance(spec, type) and hasattr(spec, "explain"):   # an instance (a class has `explain` too)
        if spec.model is not model:
            same = " (another model object of the same name)" if spec.model.name == model.name else ""
            raise ValueError(f"Method {name!r} explains model {spec.model.name!r}{same}, not the evaluated model "
                             f"{model.name!r}: build it on the same model, or pass its class or a factory.")
        return spec, None, None
    if callable(spec):
        explainer = spec(model)
        if isinstance(explainer, type) or not hasattr(explainer, "explain"):
            raise TypeError(f"Method {name!r}: the factory returned {type(explainer).__name__}, not an explainer.")
        return explainer, spec, None
    maps = np.asarray(spec, np.float32)
    return None, None, maps


def evaluate(explainers, model, images, targets=None, boxes=None, metrics=None, *, masks=None, batch_size=32,
             ci=0.95, resamples=1000, seed=0, verbose=0) -> EvaluationTable:
    """Every metric for every method: one table.

    Each method explains ``images`` once, for the same classes (``targets``,
    or the model's top-1 class on each unchanged image), and its maps are
    scored by each metric with the metric's defaults (override them with a
    dict ``metrics={"deletion_auc": {"steps": 50}, ...}``), one value per
    image (``reduce=None``); a row holds their means, which equal the
    metrics called directly with their default ``reduce="mean"``:

    | metric | what | better |
    |---|---|---|
    | ``average_drop``, ``increase_in_confidence`` | :func:`average_drop`, :func:`increase_in_confidence` | lower, higher |
    | ``deletion_auc``, ``insertion_auc`` | :func:`deletion_auc`, :func:`insertion_auc` | lower, higher |
    | ``road`` | :func:`road`, ``order="combined"`` unless given | higher (``"morf"``: lower) |
    | ``pointing_game``, ``energy_pointing_game`` | with ``boxes`` only | higher |
    | ``sparseness``, ``complexity`` | :func:`sparseness`, :func:`complexity` | higher, lower |
    | ``random_logit``, ``max_sensitivity`` | explain again: other classes, perturbed images | lower |
    | ``sanity_check`` | :func:`keras_cam.sanity_check`: the Spearman correlation with every layer randomized (not computed unless asked) | lower |

    Args:
        explainers: the methods: a dict ``{name: method}``, a list or tuple
            of methods, or one method, a method being an explainer built on ``model``
            (``keras_cam.GradCAM(model)``), an explainer class (``keras_cam.GradCAM``,
            built on ``model`` with its defaults) or a factory
            ``f(model) -> explainer`` (needed for ``sanity_check``, which
            rebuilds the method on a randomized copy), a registry name
            (``"gradcam"``, see :mod:`keras_cam.methods`), or fixed maps
            ``(N, *S)`` (a reference such as random maps: the metrics that
            explain again are left empty).
        model: the Keras classifier (never modified).
        images: the batch, as the model takes it.
        targets: None (top-1), an int, or one int per image.
        boxes: ``(N, 2 r)`` integer ground-truth boxes (see
            :func:`pointing_game`); the localization metrics are computed when given.
        metrics: None (every metric but ``sanity_check``, ``focus``,
            ``top_k_intersection`` and the other metrics marked not default;
            the localization metrics when there are boxes or masks), a list
            of metric names (any of :data:`METRICS`), or a dict
            ``{name: keyword arguments}``.
        masks: instead of ``boxes``, ``(N, *S)`` boolean ground-truth masks
            at the maps' size.
        batch_size: images per compiled model call (the model metrics).
        ci: the confidence level of each cell's bootstrap interval
            (:func:`bootstrap_interval` over the images), in (0, 1), or None
            for no intervals.
        resamples: the number of bootstrap resamples.
        seed: the seed of the bootstrap (the metrics keep their own seeds).
        verbose: 1 draws a progress bar (one step per method and metric).

    Returns:
        :class:`EvaluationTable`: ``print(table.to_markdown())``, the
        per-image values ``table.per_image`` / ``table.values(method,
        metric)``, intervals ``table.intervals`` and ``table.compare(a, b)``.

    Raises:
        ValueError: for an unknown metric name, localization metrics without
            boxes or masks, fixed maps of another size than the images or
            with NaN, a ``sanity_check`` of a method given as an instance, or a
            ``ci`` outside (0, 1).

    Example:
        >>> table = keras_cam.metrics.evaluate({"Grad-CAM": keras_cam.GradCAM, "Score-CAM": "scorecam"},
        ...                                    model, images, boxes=boxes)
        >>> print(table.to_markdown(intervals=True))
        >>> table.compare("Grad-CAM", "Score-CAM", "deletion_auc").wins   # share of images
    """
    if ci is not None and (isinstance(ci, bool) or not isinstance(ci, numbers.Real) or not 0 < ci < 1):
        raise ValueError(f"`ci` is a confidence level in (0, 1), such as 0.95, or None; received {ci!r}.")
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"`resamples` must be a positive int; received {resamples!r}.")
    chosen = _chosen(metrics, boxes, masks)
    methods = _methods(explainers)
    scorer = get_scorer(model)
    x, _ = as_batch(images, scorer.graph.inputs)
    scorer.graph.prepare(x[:1])
    _, classes = explained_classes(scorer, scorer.graph.to_channels_last(x), targets, batch_size)
    classes = classes.astype(np.int32)
    x = np.asarray(to_host(x))
    n = len(x)
    expected = (n,) + tuple(int(d) for d in scorer.graph.to_channels_last(x[:1]).shape[1:-1])
    bar = None
    if verbose:
        from keras_cam._compat import progbar

        bar = progbar(len(methods) * (len(chosen) + 1))
    step = 0
    rows, per_image, intervals = [], [], []
    for name, spec in methods:
        explainer, factory, maps = _build(name, spec, model)
        if maps is None:
            maps = explainer(x, classes)
        elif maps.shape != expected or not np.isfinite(maps).all():
            raise ValueError(f"The maps of method {name!r} must be (N, *S) = {expected}, one finite map per image "
                             f"at the image size; received shape {maps.shape}"
                             f"{'' if maps.shape != expected else ' with NaN or infinite values'}.")
        step += 1
        if bar is not None:
            bar.update(step)
        row, spans = {"method": name}, {}
        images_rows = [{"method": name, "image": i} for i in range(n)]
        for metric, kwargs in chosen.items():
            values = _score(metric, kwargs, name, explainer, factory, model, x, maps, classes, (boxes, masks),
                            batch_size)
            row[metric] = None if values is None else float(np.mean(values))
            spans[metric] = None if values is None or ci is None else bootstrap_interval(values, ci, resamples, seed)
            for i, r in enumerate(images_rows):
                r[metric] = None if values is None else float(values[i])
            step += 1
            if bar is not None:
                bar.update(step)
        rows.append(row)
        per_image.extend(images_rows)
        intervals.append(spans)
    return EvaluationTable(
        metrics=list(chosen),
        headers=["method"] + [_label(m, _METRICS[m], kw) for m, kw in chosen.items()],
        rows=rows,
        digits={m: _METRICS[m].digits for m in chosen},
        per_image=per_image,
        intervals=intervals,
        ci=None if ci is None else float(ci),
        better={m: _direction(m, _METRICS[m], kw)[1] for m, kw in chosen.items()},
        resamples=int(resamples),
        seed=seed,
    )


def _score(metric, kwargs, name, explainer, factory, model, x, maps, classes, boxes, batch_size):
    """The ``(N,)`` per-image values of one metric for one method (None where it does not apply)."""
    spec = _METRICS[metric]
    if "reduce" in kwargs:
        raise ValueError(f"evaluate computes every metric per image and reduces itself: remove `reduce` "
                         f"from the options of {metric!r}.")
    if spec.needs == "model":
        return spec.fn(model, x, maps, classes, batch_size=batch_size, reduce=None, **kwargs)
    if spec.needs == "boxes":
        boxes, masks = boxes
        return spec.fn(maps, boxes, masks=masks, reduce=None, **kwargs)
    if spec.needs == "maps":
        return spec.fn(maps, reduce=None)
    if explainer is None:
        return None
    if spec.needs == "explainer":
        return spec.fn(explainer, x, classes, reduce=None, **kwargs)
    if factory is None:
        raise ValueError(
            f"{metric} rebuilds the method on a copy of the model; pass method {name!r} as "
            f"an explainer class, a registry name or a factory f(model) -> explainer, not as an instance."
        )
    if spec.needs == "factory":
        return spec.fn(factory, model, x, classes, reduce=None, **kwargs)
    from keras_cam.sanity import sanity_check

    return sanity_check(factory, model, x, classes, **kwargs).image_spearman[-1]

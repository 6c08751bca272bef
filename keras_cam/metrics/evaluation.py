"""Every metric for every method in one call, as one table.

:func:`evaluate` explains the images once per method (every method for the
same classes: the top-1 class of the unchanged image, or the given
targets), scores the maps with each metric and returns an
:class:`EvaluationTable`: a list of rows and a ``to_markdown()``, which the
documentation, the benchmark and ``keras-cam evaluate`` print.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from keras_cam.base import as_batch
from keras_cam.metrics import localization, perturbation, properties
from keras_cam.metrics._scoring import _classes, _scorer


@dataclasses.dataclass(frozen=True)
class _Metric:
    fn: object
    label: str
    better: str            # "lower" or "higher"
    needs: str             # "model" (model, images, maps), "maps", "boxes", "explainer", "sanity"
    digits: int = 3


_METRICS = {
    "average_drop": _Metric(perturbation.average_drop, "Avg Drop %", "lower", "model", 1),
    "increase_in_confidence": _Metric(perturbation.increase_in_confidence, "Incr Conf %", "higher", "model", 1),
    "deletion_auc": _Metric(perturbation.deletion_auc, "Deletion", "lower", "model"),
    "insertion_auc": _Metric(perturbation.insertion_auc, "Insertion", "higher", "model"),
    "road": _Metric(perturbation.road, "ROAD", "higher", "model"),
    "pointing_game": _Metric(localization.pointing_game, "Pointing %", "higher", "boxes", 1),
    "energy_pointing_game": _Metric(localization.energy_pointing_game, "Energy PG %", "higher", "boxes", 1),
    "sparseness": _Metric(properties.sparseness, "Sparseness", "higher", "maps"),
    "complexity": _Metric(properties.complexity, "Complexity", "lower", "maps"),
    "random_logit": _Metric(properties.random_logit, "Random logit", "lower", "explainer"),
    "max_sensitivity": _Metric(properties.max_sensitivity, "Max sens", "lower", "explainer"),
    "sanity_check": _Metric(None, "Sanity ρ", "lower", "sanity"),
}

METRICS = tuple(_METRICS)
DEFAULT_METRICS = tuple(name for name in METRICS if name != "sanity_check")


@dataclasses.dataclass
class EvaluationTable:
    """The result of :func:`evaluate`: one row per method, one column per metric.

    Attributes:
        metrics: the metric names, in column order (``"average_drop"``...).
        headers: the column titles, each with its direction (``↓`` lower is
            better, ``↑`` higher), after a first ``"method"`` column.
        rows: one dict per method: ``{"method": name, metric: value}``; a
            value is None where the metric does not apply (a method given
            as fixed maps has no explainer to call again).
        digits: decimals per metric in :meth:`to_markdown`.
    """

    metrics: list
    headers: list
    rows: list
    digits: dict

    def column(self, metric):
        """The values of one metric, one per row (None where it does not apply).

        Args:
            metric: a metric name of :attr:`metrics`.

        Returns:
            A list of floats (or None), in row order.
        """
        if metric not in self.metrics:
            raise KeyError(f"No metric {metric!r} in this table; it has {self.metrics}.")
        return [row[metric] for row in self.rows]

    def to_markdown(self):
        """The table in Markdown: percentages with one decimal, other values with three.

        Returns:
            A string, one line per method after the header and separator.
        """
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        for row in self.rows:
            cells = [str(row["method"])] + [_cell(row[m], self.digits[m]) for m in self.metrics]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self):
        return self.to_markdown()

    def _repr_markdown_(self):
        return self.to_markdown()


def _cell(value, digits):
    if value is None:
        return "–"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _label(name, metric, kwargs):
    """The column title: ROAD's depends on its order."""
    label, better = metric.label, metric.better
    if name == "road":
        order = kwargs.get("order", "combined")
        label, better = f"ROAD {order}", ("lower" if order == "morf" else "higher")
    return f"{label} {'↓' if better == 'lower' else '↑'}"


def _chosen(metrics, boxes):
    """``{name: kwargs}`` of the metrics to compute, in the given order."""
    if metrics is None:
        names = [m for m in DEFAULT_METRICS if boxes is not None or _METRICS[m].needs != "boxes"]
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
    if boxes is None and any(_METRICS[m].needs == "boxes" for m in chosen):
        raise ValueError("The pointing games compare maps with ground-truth boxes: pass `boxes=`.")
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
            raise ValueError(f"Method {name!r} explains model {spec.model.name!r}, not the evaluated model "
                             f"{model.name!r}: build it on the same model, or pass its class or a factory.")
        return spec, None, None
    if callable(spec):
        explainer = spec(model)
        if isinstance(explainer, type) or not hasattr(explainer, "explain"):
            raise TypeError(f"Method {name!r}: the factory returned {type(explainer).__name__}, not an explainer.")
        return explainer, spec, None
    maps = np.asarray(spec, np.float32)
    return None, None, maps


def evaluate(explainers, model, images, targets=None, boxes=None, metrics=None, *, batch_size=32,
             verbose=0) -> EvaluationTable:
    """Every metric for every method: one table.

    Each method explains ``images`` once, for the same classes (``targets``,
    or the model's top-1 class on each unchanged image), and its maps are
    scored by each metric with the metric's defaults (override them with a
    dict ``metrics={"deletion_auc": {"steps": 50}, ...}``):

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
        explainers: the methods: a dict ``{name: method}`` or a list of
            methods, a method being an explainer built on ``model``
            (``keras_cam.GradCAM(model)``), an explainer class or a factory
            ``f(model) -> explainer`` (needed for ``sanity_check``, which
            rebuilds the method on a randomized copy), a registry name
            (``"gradcam"``, see :mod:`keras_cam.methods`), or fixed maps
            ``(N, *S)`` (a reference such as random maps: the metrics that
            explain again are left empty).
        model: the Keras classifier (never modified).
        images: the batch, as the model takes it.
        targets: None (top-1), an int, or one int per image.
        boxes: ``(N, 2 r)`` integer ground-truth boxes (see
            :func:`pointing_game`); the pointing games are computed when given.
        metrics: None (every metric but ``sanity_check``; the pointing games
            when there are boxes), a list of metric names, or a dict
            ``{name: keyword arguments}``.
        batch_size: images per compiled model call (the model metrics).
        verbose: 1 draws a progress bar (one step per method and metric).

    Returns:
        :class:`EvaluationTable`; ``print(table.to_markdown())``.

    Raises:
        ValueError: for an unknown metric name, pointing games without
            boxes, or a ``sanity_check`` of a method given as an instance.

    Example:
        >>> table = keras_cam.metrics.evaluate({"Grad-CAM": keras_cam.GradCAM, "Score-CAM": "scorecam"},
        ...                                    model, images, boxes=boxes)
        >>> print(table.to_markdown())
    """
    chosen = _chosen(metrics, boxes)
    methods = _methods(explainers)
    scorer = _scorer(model)
    x, _ = as_batch(images, scorer.graph.inputs)
    scorer.graph.prepare(x[:1])
    _, classes = _classes(scorer, scorer.graph.to_channels_last(x), targets, batch_size)
    classes = classes.astype(np.int32)
    x = x.numpy()
    bar = None
    if verbose:
        from keras_cam._compat import progbar

        bar = progbar(len(methods) * (len(chosen) + 1))
    step = 0
    rows = []
    for name, spec in methods:
        explainer, factory, maps = _build(name, spec, model)
        if maps is None:
            maps = explainer(x, classes)
        step += 1
        if bar is not None:
            bar.update(step)
        row = {"method": name}
        for metric, kwargs in chosen.items():
            row[metric] = _score(metric, kwargs, name, explainer, factory, model, x, maps, classes, boxes,
                                 batch_size)
            step += 1
            if bar is not None:
                bar.update(step)
        rows.append(row)
    return EvaluationTable(
        metrics=list(chosen),
        headers=["method"] + [_label(m, _METRICS[m], kw) for m, kw in chosen.items()],
        rows=rows,
        digits={m: _METRICS[m].digits for m in chosen},
    )


def _score(metric, kwargs, name, explainer, factory, model, x, maps, classes, boxes, batch_size):
    spec = _METRICS[metric]
    if spec.needs == "model":
        return spec.fn(model, x, maps, classes, batch_size=batch_size, **kwargs)
    if spec.needs == "boxes":
        return spec.fn(maps, boxes)
    if spec.needs == "maps":
        return spec.fn(maps)
    if explainer is None:
        return None
    if spec.needs == "explainer":
        return spec.fn(explainer, x, classes, **kwargs)
    if factory is None:
        raise ValueError(
            f"sanity_check rebuilds the method on a randomized copy of the model; pass method {name!r} as "
            f"an explainer class, a registry name or a factory f(model) -> explainer, not as an instance."
        )
    from keras_cam.sanity import sanity_check

    return float(sanity_check(factory, model, x, classes, **kwargs).spearman[-1])

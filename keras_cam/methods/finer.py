"""Finer-CAM: the target class explained against its most similar classes.

Zhang et al. (CVPR 2025), "Finer-CAM: Spotting the difference reveals finer
details for visual explanation". A class's logit also rises on evidence that
similar classes share; the difference between the target's logit and the
similar classes' keeps what tells the target apart from them.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from keras_cam import layout as _layout
from keras_cam._compat import ops
from keras_cam.methods.gradient import GradientExplainer

DEFAULT_COMPARISON = 3


def similar_classes(scores, idx, k):
    """``(N, k)`` int32: per row, the ``k`` classes whose scores are closest to the
    score of class ``idx`` (``|y_d - y_c|`` smallest first), ``idx`` itself excluded."""
    classes = int(scores.shape[-1])
    y_c = ops.take_along_axis(scores, idx[:, None], axis=1)
    distance = ops.abs(scores - y_c)
    distance = ops.where(ops.one_hot(idx, classes) > 0, ops.full_like(distance, np.inf), distance)
    return ops.cast(ops.top_k(-distance, k)[1], "int32")


def finer_score(scores, idx, comparison, alpha):
    """``(N,)``: ``S = y_c - alpha sum_d w_d y_d``, ``w = softmax(y_D)`` over the comparison classes.

    Args:
        scores: ``(N, C)`` class scores ``y`` (logits).
        idx: ``(N,)`` int32, the explained class ``c`` of each row.
        comparison: ``(N, k)`` int classes ``D`` per row. A class equal to the
            row's ``c`` gets weight 0 (a row with no other class scores ``y_c``).
        alpha: the comparison strength.
    """
    y_c = ops.take_along_axis(scores, idx[:, None], axis=1)[:, 0]
    y_d = ops.take_along_axis(scores, comparison, axis=1)
    keep = ops.cast(comparison != idx[:, None], scores.dtype)
    top = ops.max(ops.where(keep > 0, y_d, ops.min(y_d, axis=-1, keepdims=True)), axis=-1, keepdims=True)
    e = ops.exp(y_d - top) * keep
    w = ops.divide_no_nan(e, ops.sum(e, axis=-1, keepdims=True))
    return y_c - alpha * ops.sum(w * y_d, axis=-1)


class FinerCAM(GradientExplainer):
    """Finer-CAM (Zhang et al., CVPR 2025): Grad-CAM of the target against similar classes.

    For the explained class ``c`` and comparison classes ``D``:
    ``S = y_c - alpha sum_{d in D} w_d y_d`` with ``w_d = p_d / sum_{D} p``
    (``p = softmax(y)``, so ``w = softmax(y_D)``), differentiated as written (the
    weights too); then Grad-CAM's weights ``w_k = mean_ij dS/dA^k_ij`` and the map
    ``ReLU(sum_k w_k A^k)``. With one comparison class ``S = y_c - alpha y_d``;
    ``alpha = 0`` is Grad-CAM.

    The comparison classes are, per image, the ``k`` classes whose logits are
    closest to the target's (``|y_d - y_c|`` smallest), or a list given once
    for every image. Targets are classes (None for the top class, ints); the
    explanation's ``scores`` are ``S``.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        comparison: an int ``k`` (the ``k`` most similar classes; None: 3, or
            every other class when the model has fewer), or a list of class indices.
        alpha: the comparison strength, a number >= 0 (the paper's ``gamma``).
        **kwargs: the options of :class:`keras_cam.Explainer`.

    Raises:
        ValueError: ``k`` not positive or not below the number of classes, a
            class list that is empty, out of range or contains the explained
            class, a negative or non-finite ``alpha``, a callable target.

    Example:
        >>> maps = keras_cam.FinerCAM(model)(images)                    # top class vs its 3 nearest
        >>> maps = keras_cam.FinerCAM(model, comparison=1, alpha=0.6)(images, targets=[2, 9])
        >>> maps = keras_cam.FinerCAM(model, comparison=[4, 5])(images, targets=3)
    """

    def __init__(self, model, layer=None, *, comparison=None, alpha=1.0, **kwargs):
        self.comparison = _check_comparison(comparison)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not np.isfinite(alpha) or alpha < 0:
            raise ValueError(
                f"`alpha` must be a finite number >= 0 (the comparison strength; 0 is Grad-CAM); "
                f"received {alpha!r}."
            )
        self.alpha = float(alpha)
        super().__init__(model, layer, **kwargs)

    @staticmethod
    def channel_weights(a, g):
        return ops.mean(g, axis=_layout.spatial_axes(g))

    def read_call(self, images, targets):
        read = super().read_call(images, targets)
        if read[3] is not None:
            raise ValueError(
                f"FinerCAM compares class logits; `targets` must be None (the top class), an int or "
                f"one int per image, not a {type(read[3]).__name__} target. Use keras_cam.GradCAM for "
                f"other targets."
            )
        classes = self.graph.num_classes
        if isinstance(self.comparison, tuple):
            if classes is not None and max(self.comparison) >= classes:
                raise ValueError(
                    f"`comparison` {list(self.comparison)} is out of range for a model with {classes} "
                    f"classes (valid: 0..{classes - 1})."
                )
            _check_not_compared(self.comparison, read[5])
        elif isinstance(self.comparison, int) and classes is not None and self.comparison > classes - 1:
            raise ValueError(_too_many(self.comparison, classes))
        return read

    def explain(self, images, targets=None, upsample=True, normalize=True):
        explanation = super().explain(images, targets, upsample, normalize)
        if isinstance(self.comparison, tuple):
            # The top class is known only once the model ran.
            _check_not_compared(self.comparison, np.atleast_1d(explanation.targets))
        return explanation

    def target_scores(self, outputs, class_idx, target_fn=None):
        if target_fn is not None:
            raise ValueError(
                "FinerCAM compares class logits; its targets are classes (None, an int or one int per "
                "image), not a callable or target object. Use keras_cam.GradCAM for other targets."
            )
        _, idx, probs = super().target_scores(outputs, class_idx, target_fn)
        scores = self.graph.scores(outputs)
        classes = int(scores.shape[-1])
        if isinstance(self.comparison, tuple):
            if max(self.comparison) >= classes:
                raise ValueError(
                    f"`comparison` {list(self.comparison)} is out of range for a model with {classes} "
                    f"classes (valid: 0..{classes - 1})."
                )
            others = ops.zeros_like(idx[:, None]) + ops.convert_to_tensor(np.asarray(self.comparison, np.int32))
        else:
            k = min(DEFAULT_COMPARISON, classes - 1) if self.comparison is None else self.comparison
            if not 1 <= k <= classes - 1:
                raise ValueError(_too_many(k, classes))
            others = similar_classes(scores, idx, k)
        return finer_score(scores, idx, others, self.alpha), idx, probs


def _check_comparison(comparison):
    if comparison is None:
        return None
    if isinstance(comparison, (numbers.Integral, np.integer)) and not isinstance(comparison, bool):
        if comparison < 1:
            raise ValueError(
                f"`comparison` must be a positive int (how many similar classes to compare with) "
                f"or a list of class indices; received {comparison!r}."
            )
        return int(comparison)
    if isinstance(comparison, (Sequence, np.ndarray)) and not isinstance(comparison, str):
        listed = np.asarray(comparison)
        if listed.ndim != 1 or listed.size == 0 or listed.dtype == bool or not np.issubdtype(listed.dtype, np.integer):
            raise ValueError(
                f"`comparison` as a list must hold class indices (ints), at least one; received "
                f"{repr(comparison)[:60]}."
            )
        if (listed < 0).any():
            raise ValueError(f"`comparison` must hold class indices >= 0; received {listed.tolist()[:10]}.")
        if len(set(listed.tolist())) != listed.size:
            raise ValueError(f"`comparison` lists a class twice; received {listed.tolist()[:10]}.")
        return tuple(int(c) for c in listed)
    raise TypeError(
        f"`comparison` must be None, a positive int or a list of class indices; received "
        f"{type(comparison).__name__}."
    )


def _check_not_compared(comparison, classes):
    clash = sorted({int(c) for c in classes if int(c) in comparison})
    if clash:
        raise ValueError(
            f"`comparison` {list(comparison)[:10]} contains the explained class {clash[:5]}: a class "
            f"cannot be compared with itself. Leave it out of the list, or give `comparison` as an "
            f"int to pick the most similar classes per image."
        )


def _too_many(k, classes):
    return (f"`comparison={k}` asks for {k} similar classes, but a model with {classes} classes has "
            f"{classes - 1} besides the explained one; give at most {classes - 1}.")

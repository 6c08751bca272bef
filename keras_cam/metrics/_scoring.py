"""What the metric families share: the compiled scorer of a model and input checks.

A :class:`_Scorer` runs one model on channels-last batches and returns the
probability of the explained class, compiled once per model
(``tf.function``); the scorers of the last few models used are kept, so
calling metrics again on the same model does not recompile.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

from keras_cam import targets as _targets
from keras_cam.base import Compiled, as_batch
from keras_cam.graph import ActivationGraph

# The compiled scorers of the most recently used models (by identity). A
# scorer holds its model, so the cache is small rather than weak.
_scorers = collections.OrderedDict()
_KEEP = 4


class _Scorer:
    """The explained-class probabilities of one model, compiled once."""

    def __init__(self, model):
        self.model = model
        self.graph = ActivationGraph(model, layers=[], linearize=True)
        if self.graph.multi_input:
            raise ValueError(
                f"The faithfulness metrics perturb the input of single-input models; model "
                f"{model.name!r} has the inputs {self.graph.input_names}."
            )
        self.probabilities = Compiled(self._probabilities)
        self.curve = Compiled(self._curve)

    def _probabilities(self, images, class_idx):
        _, outputs = self.graph.forward(images)
        scores = self.graph.scores(outputs)
        _, idx = _targets.select(scores, class_idx)
        return tf.gather(self.graph.probabilities(scores), idx, batch_dims=1), idx

    def _curve(self, images, ranks, substrate, class_idx, counts, insert):
        """Probabilities ``(T, n)`` with the ``counts[t]`` most salient pixels
        replaced by the substrate (deletion) or taken from the image (insertion)."""
        counts = tf.reshape(counts, tf.concat([[-1], tf.ones([ranks.shape.rank], tf.int32)], axis=0))
        shown = ranks[None] < counts                                  # (T, n, *S)
        first, second = (images, substrate) if insert else (substrate, images)
        mixed = tf.where(shown[..., None], first[None], second[None])  # (T, n, *S, C)
        t, n = tf.shape(counts)[0], tf.shape(images)[0]
        flat = tf.reshape(mixed, tf.concat([[t * n], tf.shape(images)[1:]], axis=0))
        probs, _ = self._probabilities(flat, tf.tile(class_idx, [t]))
        return tf.reshape(probs, (t, n))


def _scorer(model):
    key = id(model)
    if key not in _scorers or _scorers[key].model is not model:
        _scorers[key] = _Scorer(model)
        while len(_scorers) > _KEEP:
            _scorers.popitem(last=False)
    _scorers.move_to_end(key)
    return _scorers[key]


def _check_batch_size(batch_size):
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")


def _inputs(images, maps, scorer):
    """Images as a float32 channels-last batch and maps as float32 ``(N, *S)``,
    checked against each other."""
    x, single = as_batch(images, scorer.graph.inputs)
    scorer.graph.prepare(x[:1])  # a model without a static graph: find its softmax/sigmoid once
    x = scorer.graph.to_channels_last(x)
    m = np.asarray(maps, dtype=np.float32)
    if single and m.ndim == x.shape.rank - 2:
        m = m[None]
    expected = tuple(int(d) for d in x.shape[:-1])
    if m.shape != expected:
        raise ValueError(
            f"`maps` must be (N, *S) = {expected}, one map per image at the image size; "
            f"received shape {m.shape}. Explain with upsample=True (the default)."
        )
    if not np.isfinite(m).all():
        raise ValueError("`maps` contains NaN or infinite values.")
    return x, m


def _classes(scorer, x, targets, batch_size):
    """The explained class per image (top-1 on the unchanged images when None)."""
    if callable(targets):
        raise TypeError(
            "These metrics score class probabilities, so `targets` must be None (top-1), an int "
            "or one int per image; a callable target has no class."
        )
    idx = _targets.class_indices(targets, int(x.shape[0]), scorer.graph.num_classes)
    probs, used = _probabilities(scorer, x, idx, batch_size)
    return probs, used


def _probabilities(scorer, x, idx, batch_size):
    parts = [
        scorer.probabilities(x[i:i + batch_size], tf.constant(idx[i:i + batch_size]))
        for i in range(0, int(x.shape[0]), batch_size)
    ]
    return (np.concatenate([p[k].numpy() for p in parts]) for k in range(2))


def _maps(maps):
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim not in (2, 3, 4):
        raise ValueError(f"`maps` must be (N, *S): (N, T), (N, H, W) or (N, D, H, W); received shape {m.shape}.")
    if not np.isfinite(m).all():
        raise ValueError("`maps` contains NaN or infinite values.")
    return m

"""What the metric families share: the compiled scorer of a model, input checks and ``reduce``.

A :class:`_Scorer` runs one model on channels-last batches and returns the
probability of the explained class, compiled once per model
(:class:`keras_cam.compiled.Compiled`: ``tf.function`` on TensorFlow,
``jax.jit`` with the weights as arguments on JAX, eager on PyTorch); the
scorers of the last few models used are kept, so calling metrics again on
the same model does not recompile. Everything here is ``keras.ops`` on the
device and numpy on the host: no backend is imported.
"""

from __future__ import annotations

import collections

import numpy as np

from keras_cam import targets as _targets
from keras_cam._compat import ops, to_host
from keras_cam.compiled import Compiled
from keras_cam.graph import ActivationGraph
from keras_cam.inputs import as_batch, check_images

# The compiled scorers of the most recently used models (by identity). A
# scorer holds its model, so the cache is small rather than weak.
_scorers = collections.OrderedDict()
_KEEP = 4

REDUCTIONS = ("mean", None)


def input_graph(model):
    """The model's graph with no layer captured (its input and scores only); a multi-input model is refused."""
    graph = ActivationGraph(model, layers=[], linearize=True)
    if graph.multi_input:
        raise ValueError(
            f"The model-based metrics perturb the input of single-input models; model "
            f"{model.name!r} has the inputs {graph.input_names}."
        )
    try:
        outputs = list(model.outputs or ())
    except (AttributeError, ValueError, RuntimeError):  # no static graph: one output assumed
        outputs = []
    if len(outputs) > 1:  # which one is the classifier? never guess (a dict's first key in sorted order...)
        structure = model.output
        if isinstance(structure, dict):
            names, wrap = sorted(structure), 'model.output["<key>"]'
        else:
            names, wrap = list(getattr(model, "output_names", None) or range(len(outputs))), "model.outputs[i]"
        raise ValueError(
            f"The model-based metrics score one classifier output; model {model.name!r} has {len(outputs)} "
            f"outputs {names}. Pass a single-output model for the output your maps explain, e.g. "
            f"keras.Model(model.inputs, {wrap}) (the explainer-based metrics follow the explainer's "
            f"`output=`)."
        )
    return graph


class _Scorer:
    """The explained-class probabilities of one model, compiled once."""

    def __init__(self, model):
        self.model = model
        self.graph = input_graph(model)
        self.probabilities = Compiled(self._probabilities, model=model)
        self.curve = Compiled(self._curve, model=model)

    def _probabilities(self, images, class_idx):
        _, outputs = self.graph.forward(images)
        scores = self.graph.scores(outputs)
        _, idx = _targets.select(scores, class_idx)
        probs = self.graph.probabilities(scores)
        return ops.take_along_axis(probs, idx[:, None], axis=1)[:, 0], idx

    def _curve(self, images, ranks, substrate, class_idx, counts, insert):
        """Probabilities ``(T, n)`` with the ``counts[t]`` most salient pixels
        replaced by the substrate (deletion) or taken from the image (insertion)."""
        t, n = int(counts.shape[0]), int(images.shape[0])
        counts = ops.reshape(counts, (-1,) + (1,) * len(ranks.shape))
        shown = ops.expand_dims(ranks, 0) < counts                                # (T, n, *S)
        first, second = (images, substrate) if insert else (substrate, images)
        mixed = ops.where(shown[..., None], first[None], second[None])          # (T, n, *S, C)
        flat = ops.reshape(mixed, (-1,) + tuple(int(d) for d in images.shape[1:]))
        probs, _ = self._probabilities(flat, ops.tile(class_idx, [t]))
        return ops.reshape(probs, (t, n))


def get_scorer(model):
    key = id(model)
    if key not in _scorers or _scorers[key].model is not model:
        _scorers[key] = _Scorer(model)
        while len(_scorers) > _KEEP:
            _scorers.popitem(last=False)
    _scorers.move_to_end(key)
    return _scorers[key]


LOGITS_READ_PROBABILITIES = ("a metric asked for logits (softmax=False, the default of faithfulness correlation, "
                             "faithfulness estimate and infidelity; completeness with output=\"score\") scores "
                             "probabilities")


def check_logits(graph, scores, probabilities, stacklevel=6):
    """Warn once (per model) when a metric meant to read logits read probabilities: the model's softmax is
    one keras-cam cannot see (:attr:`ActivationGraph.opaque_head`), and the explained-class ``scores`` of a
    batch equal its ``probabilities`` (kept as they were, :meth:`ActivationGraph.probabilities`). ``stacklevel``
    points the warning at the user's call."""
    graph.check_probabilities(np.asarray(scores), np.asarray(probabilities),
                              consequence=LOGITS_READ_PROBABILITIES, stacklevel=stacklevel)


def check_reduce(reduce):
    """Refuse a ``reduce`` that is neither ``"mean"`` nor None."""
    if not (reduce is None or (isinstance(reduce, str) and reduce == "mean")):
        raise ValueError(
            f"`reduce` must be \"mean\" (the mean over images, a float) or None (one value per image, "
            f"an (N,) array); received {reduce!r}."
        )


def reduced(values, reduce):
    """Per-image ``values`` as the caller asked: their mean (a float) or a float64 ``(N,)`` copy."""
    values = np.asarray(values, np.float64).reshape(-1)
    if reduce is None:
        return values.copy()
    return float(np.mean(values))


def check_seed(seed, below=None, why=""):
    """The seed as an int, or a ValueError naming ``seed``: a bool (an int to Python), a float (which
    some generators truncate silently), a negative number (numpy's message names no argument) or, with
    ``below``, one at or above it (``why`` says which generator bounds it) is refused."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0 \
            or (below is not None and seed >= below):
        expected = "a non-negative int" if below is None else f"an int in [0, {below - 1}]{why}"
        raise ValueError(f"`seed` must be {expected}; received {seed!r}.")
    return int(seed)


def positive_int(value, name):
    """``value`` as an int >= 1, or a ValueError naming ``name`` (a bool is refused, though Python calls it an int)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; received {value!r}.")
    return int(value)


def explainer_batch(explainer, images, what):
    """The images as a host float32 batch in the model's layout, for a metric (``what``) that
    calls a single-input keras-cam ``explainer`` again on perturbed copies."""
    graph = getattr(explainer, "graph", None)
    if graph is None or not hasattr(explainer, "explain"):
        raise TypeError(
            f"`explainer` must be a keras-cam explainer such as keras_cam.GradCAM(model) (it is "
            f"called again by {what}); received {type(explainer).__name__}."
        )
    if graph.multi_input:
        raise ValueError(f"{what} perturbs the input of single-input models; this explainer's model has "
                         f"the inputs {graph.input_names}.")
    x, _ = as_batch(images, graph.inputs)
    return np.asarray(to_host(x), np.float32)


def check_batch_size(batch_size):
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")


def checked_inputs(images, maps, scorer):
    """Images as a float32 channels-last batch tensor and maps as float32 numpy ``(N, *S)``,
    checked against each other."""
    x, single = as_batch(images, scorer.graph.inputs)
    graph = scorer.graph
    # shape against the model, and finite: a NaN image would give a number, not an error
    check_images(np.asarray(to_host(x)), graph.model, graph.input_index, graph.data_format == "channels_first")
    scorer.graph.prepare(x[:1])  # a model without a static graph: find its softmax/sigmoid once
    x = scorer.graph.to_channels_last(x)
    m = np.asarray(to_host(maps), dtype=np.float32)
    if single and m.ndim == len(x.shape) - 2:
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


def explained_classes(scorer, x, targets, batch_size):
    """The explained class per image (top-1 on the unchanged images when None)."""
    if callable(targets):
        raise TypeError(
            "These metrics score class probabilities, so `targets` must be None (top-1), an int "
            "or one int per image; a callable target has no class."
        )
    idx = _targets.class_indices(targets, int(x.shape[0]), scorer.graph.num_classes)
    probs, used = class_probabilities(scorer, x, idx, batch_size)
    return probs, used


def class_probabilities(scorer, x, idx, batch_size):
    """``(probabilities, classes)`` as numpy ``(N,)``, ``batch_size`` images per compiled call."""
    x = ops.convert_to_tensor(x)
    idx = np.asarray(idx, np.int32)
    n = int(x.shape[0])
    parts = [
        scorer.probabilities(x if batch_size >= n else x[i:i + batch_size],
                             ops.convert_to_tensor(idx[i:i + batch_size]))
        for i in range(0, n, batch_size)
    ]
    return (np.concatenate([np.asarray(to_host(p[k])) for p in parts]) for k in range(2))


def checked_maps(maps):
    m = np.asarray(to_host(maps), dtype=np.float64)
    if m.ndim not in (2, 3, 4):
        raise ValueError(f"`maps` must be (N, *S): (N, T), (N, H, W) or (N, D, H, W); received shape {m.shape}.")
    if m.shape[0] == 0 or m.size == 0:  # a mean over no map is no score (numpy would say NaN or fail deep inside)
        raise ValueError(f"`maps` is empty (shape {m.shape}); pass at least one map with at least one position.")
    if not np.isfinite(m).all():
        raise ValueError("`maps` contains NaN or infinite values.")
    return m

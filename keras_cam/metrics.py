"""Is a map faithful to the model, and does it point at the object?

Faithfulness metrics run the model on images changed according to the map
and read the probability of the explained class (the model's softmax, or
sigmoid, applied once; a model that outputs logits gets a softmax):

- :func:`average_drop` and :func:`increase_in_confidence` (Chattopadhyay et
  al., WACV 2018, section 5.2): the image is multiplied by its map.
- :func:`deletion_auc` and :func:`insertion_auc` (Petsiuk et al., BMVC 2018,
  "RISE", section 4.1): pixels are removed from, or inserted into, the image
  in order of decreasing saliency.

Localization metrics compare a map with a ground-truth box:

- :func:`pointing_game` (Zhang et al., ECCV 2016 / IJCV 2018): is the map's
  maximum inside the box?
- :func:`energy_pointing_game` (Wang et al., CVPR-W 2020, "Score-CAM",
  section 5.2): the share of the map's energy inside the box.

Conventions: ``images`` ``(N, H, W, C)`` as the model takes them (or
``(N, T, C)`` signals, ``(N, D, H, W, C)`` volumes: every metric works in
each layout of :mod:`keras_cam.layout`, "pixel" meaning one position);
``maps`` ``(N, H, W)`` at the image size (an explainer's output; ``(N, T)``,
``(N, D, H, W)``); ``targets`` None for each image's top-1 class (on the
unchanged image), an int, or one int per image; ``boxes`` ``(N, 4)`` as
``(y0, x0, y1, x1)`` pixel coordinates, end exclusive (``(N, 2 r)`` with the
``r`` starts then the ``r`` ends for ``r`` spatial axes: ``(t0, t1)`` for a
signal, ``(z0, y0, x0, z1, y1, x1)`` for a volume). Images are scored ``batch_size`` at a time by one compiled
``tf.function`` per model; the functions of the last few models used are
kept, so calling metrics again on the same model does not recompile.

Example:
    >>> maps = keras_cam.GradCAM(model)(images)
    >>> keras_cam.metrics.average_drop(model, images, maps)        # percent, lower is better
    >>> keras_cam.metrics.deletion_auc(model, images, maps)        # lower is better
    >>> keras_cam.metrics.energy_pointing_game(maps, boxes)        # percent, higher is better
"""

from __future__ import annotations

import collections
import math

import numpy as np
import tensorflow as tf

from keras_cam import targets as _targets
from keras_cam.base import Compiled, as_batch
from keras_cam.graph import ActivationGraph

SUBSTRATES = ("zeros", "blur", "mean")

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


def _masked_scores(model, images, maps, targets, batch_size):
    """``(Y, O)``: the class probability on each image and on ``image * map``."""
    _check_batch_size(batch_size)
    scorer = _scorer(model)
    x, m = _inputs(images, maps, scorer)
    if m.min() < 0 or m.max() > 1:
        raise ValueError(
            f"`maps` must lie in [0, 1] to mask the images (they range over [{m.min():.3g}, "
            f"{m.max():.3g}]); explain with normalize=True (the default)."
        )
    y, idx = _classes(scorer, x, targets, batch_size)
    o, _ = _probabilities(scorer, x * m[..., None], idx, batch_size)
    return y.astype(np.float64), o.astype(np.float64)


def average_drop(model, images, maps, targets=None, *, batch_size=32) -> float:
    """Average Drop, in percent (lower is better).

    ``100 * mean_i max(0, Y_i - O_i) / Y_i`` (Chattopadhyay et al. 2018, eq. 23),
    where ``Y_i`` is the probability of the explained class on image ``i`` and
    ``O_i`` the probability of the same class on ``image_i * map_i``: how much
    confidence is lost when only what the map shows is kept.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, H, W, C)``, as the model takes them.
        maps: ``(N, H, W)`` in [0, 1] at the image size.
        targets: None (top-1), an int, or one int per image.
        batch_size: images per compiled model call.

    Returns:
        The percentage, a float in [0, 100].

    Raises:
        ValueError: for maps that are not ``(N, H, W)`` in [0, 1] at the image
            size, or invalid targets.
    """
    y, o = _masked_scores(model, images, maps, targets, batch_size)
    return float(100.0 * np.mean(np.maximum(0.0, y - o) / np.maximum(y, 1e-12)))


def increase_in_confidence(model, images, maps, targets=None, *, batch_size=32) -> float:
    """Increase in Confidence, in percent (higher is better).

    ``100 * mean_i [Y_i < O_i]`` (Chattopadhyay et al. 2018, eq. 24): the share of
    images whose class probability rises when only what the map shows is kept
    (``Y``, ``O`` as in :func:`average_drop`).

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, H, W, C)``, as the model takes them.
        maps: ``(N, H, W)`` in [0, 1] at the image size.
        targets: None (top-1), an int, or one int per image.
        batch_size: images per compiled model call.

    Returns:
        The percentage, a float in [0, 100].
    """
    y, o = _masked_scores(model, images, maps, targets, batch_size)
    return float(100.0 * np.mean(y < o))


def _gaussian_blur(x, sigma):
    """A separable Gaussian blur of ``(N, *S, C)`` along every spatial axis (reflected edges)."""
    radius = max(1, math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k = tf.constant((k / k.sum()).astype(np.float32))
    rank = x.shape.rank - 2
    out = x
    for axis in range(1, rank + 1):
        size = int(x.shape[axis])
        # Move the axis last, blur it as a 1-D convolution over every other index.
        perm = [a for a in range(x.shape.rank) if a != axis] + [axis]
        moved = tf.transpose(out, perm)
        shape = tf.shape(moved)
        rows = tf.reshape(moved, (-1, size, 1))
        mode = "REFLECT" if radius < size else "SYMMETRIC"
        rows = tf.pad(rows, [[0, 0], [radius, radius], [0, 0]], mode=mode)
        rows = tf.nn.conv1d(rows, tf.reshape(k, (-1, 1, 1)), 1, "VALID")
        out = tf.transpose(tf.reshape(rows, shape), np.argsort(perm))
    return out


def substrate_images(images, substrate="zeros"):
    """What removed pixels become: ``"zeros"``; ``"mean"`` (each image's
    per-channel mean); ``"blur"`` (a Gaussian blur with sigma 5 px at 224 px,
    scaled with the image size, as in RISE); or an array broadcastable to
    ``images``.

    Args:
        images: a channels-last batch ``(N, *S, C)``: ``(N, H, W, C)`` images,
            ``(N, T, C)`` signals or ``(N, D, H, W, C)`` volumes.
        substrate: ``"zeros"``, ``"mean"``, ``"blur"`` or an array.

    Returns:
        A float32 tensor of the images' shape.

    Raises:
        ValueError: for an unknown name or an array that does not broadcast.
    """
    x = tf.convert_to_tensor(images, tf.float32)
    if x.shape.rank not in (3, 4, 5):
        raise ValueError(f"`images` must be a batch (N, *S, C); received shape {tuple(x.shape)}.")
    if isinstance(substrate, str):
        if substrate == "zeros":
            return tf.zeros_like(x)
        if substrate == "mean":
            axes = tuple(range(1, x.shape.rank - 1))
            return tf.broadcast_to(tf.reduce_mean(x, axis=axes, keepdims=True), tf.shape(x))
        if substrate == "blur":
            return _gaussian_blur(x, 5.0 * max(int(d) for d in x.shape[1:-1]) / 224.0)
        raise ValueError(f"`substrate` must be one of {SUBSTRATES} or an array; received {substrate!r}.")
    try:
        return tf.broadcast_to(tf.cast(substrate, tf.float32), tf.shape(x))
    except (ValueError, tf.errors.InvalidArgumentError) as err:
        raise ValueError(
            f"A `substrate` array must broadcast to the images' shape {tuple(x.shape)}; received "
            f"shape {np.shape(substrate)}."
        ) from err


def saliency_ranks(maps):
    """Each pixel's rank in its map: 0 for the most salient pixel, 1 for the next...

    Args:
        maps: ``(N, *S)`` maps (``(N, H, W)`` for images).

    Returns:
        ``(N, *S)`` int32 ranks (ties in row-major order).
    """
    m = np.asarray(maps)
    flat = m.reshape(len(m), -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None], axis=1)
    return ranks.reshape(m.shape).astype(np.int32)


def _auc_curve(model, images, maps, targets, steps, substrate, batch_size, insert):
    """``(N, steps + 1)`` probabilities along the deletion / insertion path."""
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`steps` must be a positive int; received {steps!r}.")
    _check_batch_size(batch_size)
    scorer = _scorer(model)
    x, m = _inputs(images, maps, scorer)
    _, idx = _classes(scorer, x, targets, batch_size)
    if not isinstance(substrate, str) and scorer.graph.data_format == "channels_first":
        full = tf.broadcast_to(tf.cast(substrate, tf.float32), tf.shape(scorer.graph.to_model_format(x)))
        substrate = scorer.graph.to_channels_last(full)  # given like the images, used channels-last
    base = substrate_images(x, substrate)
    ranks = tf.constant(saliency_ranks(m))
    pixels = int(np.prod(m.shape[1:]))
    counts = (np.arange(steps + 1) * pixels) // steps           # pixels changed after step t
    n_chunk = min(batch_size, len(m))
    t_chunk = max(1, batch_size // n_chunk)
    padded = np.concatenate([counts, np.full((-len(counts)) % t_chunk, counts[-1])]).astype(np.int32)
    curves = []
    for i in range(0, len(m), n_chunk):
        s = slice(i, i + n_chunk)
        rows = [
            scorer.curve(x[s], ranks[s], base[s], tf.constant(idx[s]), tf.constant(padded[t:t + t_chunk]), insert)
            for t in range(0, len(padded), t_chunk)
        ]
        curves.append(np.concatenate([r.numpy() for r in rows])[: len(counts)].T)
    return np.concatenate(curves).astype(np.float64)


def _trapezoid(curves):
    """Normalized trapezoid area of curves sampled at ``t / steps``, ``t = 0..steps``."""
    steps = curves.shape[1] - 1
    return (curves.sum(axis=1) - 0.5 * (curves[:, 0] + curves[:, -1])) / steps


def deletion_auc(model, images, maps, targets=None, steps=100, substrate="zeros", *, batch_size=32) -> float:
    """Deletion AUC (Petsiuk et al. 2018), mean over images; lower is better.

    The pixels of each image are replaced by the substrate in order of
    decreasing saliency, ``H W / steps`` more (all positions / steps) at each of ``steps`` steps (all
    channels of a pixel at once; ties in the map in row-major order). The
    probability of the explained class after ``t`` steps is ``p(t / steps)``
    and the result is the area under ``p`` on [0, 1] by the trapezoid rule.
    A faithful map removes what the model needs first, so the probability
    falls early and the area is small.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, H, W, C)``, as the model takes them.
        maps: ``(N, H, W)`` at the image size (only their order matters).
        targets: None (top-1), an int, or one int per image.
        steps: number of removal steps (``steps + 1`` model evaluations per image).
        substrate: ``"zeros"``, ``"blur"``, ``"mean"`` or an array; see
            :func:`substrate_images`.
        batch_size: images per compiled model call.

    Returns:
        The mean area, a float in [0, 1].
    """
    curves = _auc_curve(model, images, maps, targets, steps, substrate, batch_size, insert=False)
    return float(np.mean(_trapezoid(curves)))


def insertion_auc(model, images, maps, targets=None, steps=100, substrate="zeros", *, batch_size=32) -> float:
    """Insertion AUC (Petsiuk et al. 2018), mean over images; higher is better.

    Starts from the substrate and puts the image's pixels back in order of
    decreasing saliency; the area under the class probability, as in
    :func:`deletion_auc`. A faithful map restores what the model needs first,
    so the probability rises early. The paper inserts into a blurred image
    (``substrate="blur"``); zeros are the default here, as for deletion.

    Args:
        model: the Keras classifier (never modified).
        images: ``(N, H, W, C)``, as the model takes them.
        maps: ``(N, H, W)`` at the image size (only their order matters).
        targets: None (top-1), an int, or one int per image.
        steps: number of insertion steps (``steps + 1`` model evaluations per image).
        substrate: what the pixels are inserted into; see :func:`substrate_images`.
        batch_size: images per compiled model call.

    Returns:
        The mean area, a float in [0, 1].
    """
    curves = _auc_curve(model, images, maps, targets, steps, substrate, batch_size, insert=True)
    return float(np.mean(_trapezoid(curves)))


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


def _maps(maps):
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim not in (2, 3, 4):
        raise ValueError(f"`maps` must be (N, *S): (N, T), (N, H, W) or (N, D, H, W); received shape {m.shape}.")
    if not np.isfinite(m).all():
        raise ValueError("`maps` contains NaN or infinite values.")
    return m


def pointing_game(maps, boxes) -> float:
    """Pointing game accuracy, in percent (higher is better).

    A hit when the map's maximum is inside the box (with several equal maxima:
    when one of them is); a constant map points nowhere and is a miss.

    Args:
        maps: ``(N, H, W)`` maps.
        boxes: ``(N, 4)`` integer ``(y0, x0, y1, x1)``, end exclusive.

    Returns:
        The percentage of hits, a float in [0, 100].

    Raises:
        ValueError: for boxes that are not integers, are empty or leave the maps.
    """
    m = _maps(maps)
    inside = _boxes(boxes, m.shape)
    axes = tuple(range(1, m.ndim))
    top = m.max(axis=axes, keepdims=True)
    peaks = m == top
    hit = (peaks & inside).any(axis=axes) & ~peaks.all(axis=axes)
    return float(100.0 * hit.mean())


def energy_pointing_game(maps, boxes) -> float:
    """Energy-based pointing game, in percent (higher is better).

    ``100 * mean_i sum_{box} M_i / sum M_i`` (Wang et al. 2020): the share of
    each map's total energy that falls inside the object's box. Maps must be
    non-negative; an all-zero map has no energy and scores 0.

    Args:
        maps: ``(N, H, W)`` non-negative maps.
        boxes: ``(N, 4)`` integer ``(y0, x0, y1, x1)``, end exclusive.

    Returns:
        The mean share, in percent, a float in [0, 100].
    """
    m = _maps(maps)
    if m.min() < 0:
        raise ValueError("`maps` must be non-negative for the energy pointing game (energy is a mass).")
    inside = _boxes(boxes, m.shape)
    axes = tuple(range(1, m.ndim))
    total = m.sum(axis=axes)
    share = np.divide((m * inside).sum(axis=axes), total, out=np.zeros_like(total), where=total > 0)
    return float(100.0 * share.mean())

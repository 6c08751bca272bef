"""Score-CAM: each channel weighted by the score of the image it masks.

Notation (per image): ``X`` is the preprocessed input, ``A`` the activation
``(*s, K)`` of the target layer (``(h, w, K)`` for images), ``c`` the explained class. No gradients are
used; instead every channel ``A_k`` becomes a soft mask of the input, and the
model's score of the masked input is the channel's weight.

The masked inputs of all channels of all images in a call are one list of
``(image, channel)`` pairs (``(image, channel, step)`` for ISCAM,
``(image, channel, sample)`` for SSCAM), streamed through the model
``batch_size`` at a time inside the explainer's compiled function
(:class:`~keras_cam.methods.streaming.StreamingExplainer`). Only one batch of
masked inputs exists at any moment, so memory does not grow with the number
of channels.

Only the channels that are run cost a pass: the chosen ``(image, channel)``
pairs are put first (:func:`selected_items`) and :func:`stream_selected`
runs as many passes as they need, a number known only when the activations
are (a dynamic loop count on every backend). On JAX, whose shapes are
static, the last pass is padded to ``batch_size`` inputs whose results are
discarded.
"""

from __future__ import annotations

import numpy as np

from keras_cam import _compat
from keras_cam import backend as _backend
from keras_cam import layout as _layout
from keras_cam import targets as _targets
from keras_cam._compat import ops
from keras_cam.base import minmax, upsample
from keras_cam.methods.streaming import (StreamingExplainer, check_noise, check_positive_int, check_seed,
                                         seeded_normal)

WEIGHTINGS = ("reference", "paper")


class ScoreCAM(StreamingExplainer):
    """Score-CAM (Wang et al., CVPRW 2020) and Faster Score-CAM.

    For each image and each channel ``k`` of the target layer:
    ``M_k = minmax(Up(A_k))`` (bilinear resize to the input size, scaled to
    [0, 1]) and the masked input is ``X * M_k``. A constant channel has no
    mask: its weight is 0 and it is not run through the model.

    - ``weighting="reference"`` (default; the authors' code and tf-keras-vis):
      ``w_k = p_c(X * M_k)``, the target class's probability, with the
      model's own output activation applied once: a model ending in softmax
      gives its probabilities as they are, a logits model gets a softmax, and
      a single sigmoid unit gives ``p`` for class 1 and ``1 - p`` for class 0.
    - ``weighting="paper"`` (Algorithm 1): ``S_k = f^c(X * M_k) - f^c(X_b)`` on
      pre-softmax scores and ``w = softmax_k(S)`` over the channels that were
      run. ``f^c(X_b)`` is the same for every channel of an image, and a
      softmax does not change when all its inputs move by the same amount,
      so the baseline ``X_b`` cancels: no baseline pass is run and none needs
      to be chosen.

    The map is ``ReLU(sum_k w_k A_k)`` at the layer's resolution, then
    upsampled and normalized as for Grad-CAM (``eigen_smooth`` and
    ``aug_smooth`` apply as for Grad-CAM, see :class:`keras_cam.Explainer`).

    With ``max_channels=m`` only the ``m`` channels with the largest spatial
    variance of ``A_k`` are run, per image (Faster Score-CAM); the others get
    weight 0.

    A callable target ``f(outputs) -> (N,)`` is used as the score itself:
    ``w_k = f(outputs of X * M_k)`` ("reference") or ``softmax_k`` of it ("paper").

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        output: for multi-output models, the output holding the class scores.
        linearize: read scores before a final softmax/sigmoid (the
            probabilities used by ``"reference"`` are the same either way).
        batch_size: masked inputs per forward pass, and images per call.
            Lower it if the model runs out of memory.
        weighting: ``"reference"`` or ``"paper"``, see above.
        max_channels: None for all channels, or a positive int for Faster
            Score-CAM.
        verbose: 0 (the default) is silent, 1 draws a progress bar over the masked passes.
        aug_smooth: see :class:`keras_cam.Explainer`.
        eigen_smooth: see :class:`keras_cam.Explainer`.
        image_input: see :class:`keras_cam.Explainer`.
        data_format: see :class:`keras_cam.Explainer`.
        reshape: see :class:`keras_cam.Explainer` (a vision transformer's token layer).

    Example:
        >>> cam = keras_cam.ScoreCAM(model, batch_size=32)
        >>> maps = cam(images)                             # (N, H, W) in [0, 1]
        >>> fast = keras_cam.ScoreCAM(model, max_channels=64, verbose=0)
    """

    _weights_channels = True

    def __init__(self, model, layer=None, *, output=None, linearize=True, batch_size=32,
                 weighting="reference", max_channels=None, verbose=0, aug_smooth=False,
                 eigen_smooth=False, image_input=None, data_format=None, reshape=None):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"`weighting` must be one of {WEIGHTINGS}; received {weighting!r}.")
        if max_channels is not None and (
            not isinstance(max_channels, (int, np.integer)) or isinstance(max_channels, bool)
            or max_channels < 1
        ):
            raise ValueError(
                f"`max_channels` must be None (all channels) or a positive int; received "
                f"{max_channels!r}."
            )
        super().__init__(model, layer, output=output, linearize=linearize, batch_size=batch_size,
                         verbose=verbose, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth,
                         image_input=image_input, data_format=data_format, reshape=reshape)
        self.weighting = weighting
        self.max_channels = None if max_channels is None else int(max_channels)

    # Masked inputs per (image, channel): ISCAM's steps, SSCAM's samples.
    repeats = 1

    def vary_masks(self, masks, channels, repeat):
        """The masks of the ``repeat``-th pass of each channel; Score-CAM uses ``M_k`` as it is.

        Args:
            masks: ``(b, *S)`` masks ``M_k`` in [0, 1] at the input size.
            channels: ``(b,)`` int32, the channel ``k`` of each mask.
            repeat: ``(b,)`` int32 in ``[0, repeats)``.
        """
        return masks

    def raw_maps(self, images, class_idx, target_fn=None):
        acts, outputs = self.graph.forward(images)
        scored = self.target_scores(outputs, class_idx, target_fn)
        a = ops.cast(acts[0], "float32")
        chosen = self.channels(a, self.max_channels)
        values = self.masked_scores(images, a, chosen, scored[1], target_fn)
        if self.weighting == "paper":
            w = masked_softmax(values, chosen)
        else:
            w = values
        return self.reduce_channels(_layout.weigh_channels(a, w)), scored

    @staticmethod
    def channels(a, max_channels=None):
        """``(N, K)`` bool: the channels to run, per image.

        A channel is run when its map is not constant (``minmax`` does not
        turn it into zeros) and, with ``max_channels``, when it is among the
        ``max_channels`` of largest spatial variance.
        """
        k = int(a.shape[-1])
        flat = ops.transpose(_layout.flatten_spatial(a), (0, 2, 1))  # (N, K, positions)
        per_channel = ops.reshape(flat, (-1, int(flat.shape[-1])))
        live = ops.reshape(ops.max(minmax(per_channel), axis=1) > 0, (-1, k))
        if max_channels is None:
            return live
        var = ops.where(live, ops.var(a, axis=_layout.spatial_axes(a)), -1.0)
        _, top = ops.top_k(var, k=min(int(max_channels), k))
        keep = ops.any(top[:, :, None] == ops.arange(k, dtype=top.dtype)[None, None, :], axis=1)
        return ops.logical_and(live, keep)

    def masked_scores(self, images, a, chosen, idx, target_fn=None):
        """``(N, K)``: the score of ``X * M_k`` for every chosen pair (the mean over
        :attr:`repeats` varied masks, :meth:`vary_masks`), 0 elsewhere.

        The score is the target probability (``"reference"``), the
        pre-softmax score (``"paper"``) or the callable target's value.
        """
        rank = len(a.shape)
        maps = ops.transpose(a, (0, rank - 1) + tuple(range(1, rank - 1)))  # (N, K, *s)
        maps = ops.reshape(maps, (-1,) + tuple(int(d) for d in maps.shape[2:]))  # (N K, *s)
        size = tuple(int(d) for d in images.shape[1:-1])
        k = int(a.shape[-1])

        def scores(chunk):  # (b, 2 or 3): image, channel[, repeat]
            which, channel = chunk[:, 0], chunk[:, 1]
            masks = minmax(upsample(ops.take(maps, which * k + channel, axis=0), size))
            if self.repeats > 1:
                masks = self.vary_masks(masks, channel, chunk[:, 2])
            outputs = self.graph.run(ops.take(images, which, axis=0) * masks[..., None], rows=which)
            s, _, p = self.target_scores(outputs, ops.take(idx, which, axis=0), _targets.rows(target_fn, which))
            v = p if (self.weighting == "reference" and target_fn is None) else s
            return chunk[:, :2], v / self.repeats

        return stream_selected(self, chosen, self.repeats, scores, ops.zeros(tuple(chosen.shape), "float32"))


class ISCAM(ScoreCAM):
    """Integrated Score-CAM (Naidu et al. 2020).

    Score-CAM whose channel score integrates along the mask: with
    ``M_k = minmax(Up(A_k))`` as in :class:`ScoreCAM`, the score of channel
    ``k`` is the mean over ``i = 1..steps`` of the score of ``X * (i / steps) M_k``
    (probability or logit, as ``weighting`` says; ``"paper"`` takes the
    softmax over channels of these means). ``steps=1`` is Score-CAM. Costs
    ``steps`` times Score-CAM's forward passes.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        steps: points of the integral per channel.
        **kwargs: the options of :class:`ScoreCAM` (``weighting``,
            ``max_channels``, ``batch_size``, ``verbose``...).

    Example:
        >>> maps = keras_cam.ISCAM(model, steps=10, verbose=0)(images)
    """

    def __init__(self, model, layer=None, *, steps=10, **kwargs):
        self.steps = check_positive_int("steps", steps, "masks per channel")
        super().__init__(model, layer, **kwargs)

    @property
    def repeats(self):
        return self.steps

    def vary_masks(self, masks, channels, repeat):
        """``(i / steps) M_k`` with ``i = repeat + 1``."""
        scale = ops.cast(repeat + 1, masks.dtype) / self.steps
        return masks * ops.reshape(scale, (-1,) + (1,) * (len(masks.shape) - 1))


class SSCAM(ScoreCAM):
    """Smoothed Score-CAM (Wang et al. 2020, SS-CAM).

    Score-CAM whose channel score is the mean over ``samples`` noisy masks
    ``M_k + eps``, ``eps ~ N(0, noise^2)`` per position (``M_k`` in [0, 1] as in
    :class:`ScoreCAM`, so ``noise`` is a fraction of the mask's range): the
    score of channel ``k`` is the mean of the scores of ``X * (M_k + eps_j)``,
    ``j = 1..samples``. ``noise=0`` is Score-CAM. Costs ``samples`` times
    Score-CAM's forward passes.

    The draw ``eps_j`` of channel ``k`` depends only on ``(seed, k, j)``: an
    image explained alone or in any batch gets the same noise, and a seeded
    run is reproducible.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        samples: noisy masks per channel.
        noise: standard deviation of the noise added to the masks.
        seed: the seed of the noise.
        **kwargs: the options of :class:`ScoreCAM`.

    Example:
        >>> maps = keras_cam.SSCAM(model, samples=10, noise=0.2, verbose=0)(images)
    """

    def __init__(self, model, layer=None, *, samples=10, noise=0.2, seed=0, **kwargs):
        self.samples = check_positive_int("samples", samples, "noisy masks per channel")
        self.noise = check_noise(noise)
        self.seed = check_seed(seed)
        super().__init__(model, layer, **kwargs)

    @property
    def repeats(self):
        return self.samples

    def vary_masks(self, masks, channels, repeat):
        """``M_k + noise * eps``, the draw indexed by ``(seed, k * samples + j)``."""
        eps = seeded_normal(self.seed, channels * self.samples + repeat, tuple(masks.shape[1:]))
        return masks + self.noise * eps


def masked_softmax(values, chosen):
    """``softmax_k`` over the chosen entries of each row; 0 elsewhere (and for rows with none)."""
    s = ops.where(chosen, values, -np.inf)
    top = ops.max(s, axis=1, keepdims=True)
    top = ops.where(ops.isfinite(top), top, 0.0)
    e = ops.where(chosen, ops.exp(s - top), 0.0)
    return ops.divide_no_nan(e, ops.sum(e, axis=1, keepdims=True))


def selected_items(chosen, repeats=1, pad=0):
    """The chosen ``(image, channel)`` pairs first, as rows of one integer table.

    Args:
        chosen: ``(N, K)`` bool, the pairs to run.
        repeats: passes per pair; each chosen pair gives ``repeats`` rows
            ``(image, channel, r)``, ``r < repeats`` (two columns when 1).
        pad: rows appended after all ``N K repeats`` rows (copies of the
            last one), so that a window of ``pad`` rows fits from any chosen row.

    Returns:
        ``(table, count)``: ``table`` int32 ``(N K repeats + pad, 2 or 3)``, the
        chosen pairs' rows first in image-major order (each pair's repeats
        together), then the other pairs'; ``count`` the number of chosen
        rows (a scalar int32 tensor).
    """
    n, k = (int(d) for d in chosen.shape)
    flat = ops.reshape(chosen, (-1,))
    position = ops.arange(n * k, dtype="int32")
    # Unique keys: the order does not depend on the sort's stability.
    order = ops.cast(ops.argsort(ops.where(flat, position, position + n * k)), "int32")
    pairs = ops.stack([order // k, order % k], axis=1)
    count = ops.sum(ops.cast(flat, "int32")) * repeats
    if repeats > 1:
        pairs = ops.concatenate([ops.repeat(pairs, repeats, axis=0),
                                 ops.tile(ops.arange(repeats, dtype="int32"), (n * k,))[:, None]], axis=1)
    if pad:
        pairs = ops.concatenate([pairs, ops.repeat(pairs[-1:], pad, axis=0)], axis=0)
    return pairs, count


def stream_selected(explainer, chosen, repeats, fn, initial):
    """:meth:`StreamingExplainer.stream` over the chosen pairs only.

    Runs ``fn`` on the rows of :func:`selected_items` that are chosen,
    ``explainer.batch_size`` at a time: ``floor(count / batch_size)`` full
    passes (a loop whose count is a tensor), then one pass of the rest if
    there is one. On TensorFlow and PyTorch that pass has exactly the
    remaining rows; on JAX it has ``batch_size`` rows and the results of those
    past ``count`` are discarded (``backend.dynamic_rows``).

    Args:
        explainer: the :class:`StreamingExplainer` (its ``batch_size``, and ``verbose``:
            1 draws a bar over the model inputs that are run).
        chosen: ``(N, K)`` bool.
        repeats: passes per chosen pair.
        fn: ``fn(chunk) -> (indices, updates)`` as for ``stream``; a chunk is
            ``(b, 2)`` ``(image, channel)`` rows, ``(b, 3)`` with a repeat.
        initial: the tensor the updates are added to.
    """
    step = explainer.batch_size
    table, count = selected_items(chosen, repeats, pad=step)
    width = int(table.shape[1])
    full = count // step
    rest = count - full * step
    bar = {"bar": None, "done": 0}

    def progress(i, total):
        """On the host: the bar counts the model inputs run (masked or ablated copies). A
        compiled call may report its passes out of order (TensorFlow runs the remainder's
        callback as soon as its own inputs are ready), so passes are counted, not read from ``i``."""
        if bar["bar"] is None:
            bar["bar"] = _compat.progbar(max(total, 1), verbose=explainer.verbose)
        bar["done"] += 1
        bar["bar"].update(min(bar["done"] * step, total))
        if bar["done"] * step >= total:  # the call's last pass: the next call draws a new bar
            bar["bar"], bar["done"] = None, 0

    def add(chunk, valid, i, values):
        indices, updates = fn(chunk)
        if valid is not None:
            mask = ops.reshape(valid, (-1,) + (1,) * (len(updates.shape) - 1))
            updates = ops.where(mask, updates, ops.zeros_like(updates))
        if explainer.verbose:
            _backend.host_callback(progress, i, count)
        return _backend.scatter_add(values, ops.cast(indices, "int32"), updates)

    values = _backend.fori_loop(
        full, lambda i, v: add(ops.slice(table, (i * step, 0), (step, width)), None, i, v), initial)

    def remainder(_, v):
        chunk, valid = _backend.dynamic_rows(table, full * step, rest, step)
        return add(chunk, valid, full, v)

    return _backend.fori_loop(ops.minimum(rest, 1), remainder, values)

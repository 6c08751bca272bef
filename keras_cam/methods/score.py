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
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_cam import layout as _layout
from keras_cam import targets as _targets
from keras_cam.base import minmax, upsample
from keras_cam.methods.streaming import (StreamingExplainer, check_noise, check_positive_int, check_seed, grid,
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
        verbose: 1 draws a progress bar over the masked passes, 0 is silent.
        aug_smooth: see :class:`keras_cam.Explainer`.
        eigen_smooth: see :class:`keras_cam.Explainer`.
        image_input: see :class:`keras_cam.Explainer`.
        data_format: see :class:`keras_cam.Explainer`.

    Example:
        >>> cam = keras_cam.ScoreCAM(model, batch_size=32)
        >>> maps = cam(images)                             # (N, H, W) in [0, 1]
        >>> fast = keras_cam.ScoreCAM(model, max_channels=64, verbose=0)
    """

    _weights_channels = True

    def __init__(self, model, layer=None, *, output=None, linearize=True, batch_size=32,
                 weighting="reference", max_channels=None, verbose=1, aug_smooth=False,
                 eigen_smooth=False, image_input=None, data_format=None):
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
                         image_input=image_input, data_format=data_format)
        self.weighting = weighting
        self.max_channels = None if max_channels is None else int(max_channels)

    # Masked inputs per (image, channel): ISCAM's steps, SSCAM's samples.
    repeats = 1

    def vary_masks(self, masks, channels, repeat):
        """The masks of the ``repeat``-th pass of each channel; Score-CAM uses ``M_k`` as it is.

        Args:
            masks: ``(b, *S)`` masks ``M_k`` in [0, 1] at the input size.
            channels: ``(b,)`` int64, the channel ``k`` of each mask.
            repeat: ``(b,)`` int64 in ``[0, repeats)``.
        """
        return masks

    def raw_maps(self, images, class_idx, target_fn=None):
        acts, outputs = self.graph.forward(images)
        scored = self.target_scores(outputs, class_idx, target_fn)
        a = tf.cast(acts[0], tf.float32)
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
        n, k = tf.shape(a)[0], tf.shape(a)[-1]
        flat = tf.transpose(_layout.flatten_spatial(a), (0, 2, 1))  # (N, K, positions)
        per_channel = tf.reshape(flat, tf.stack([n * k, -1]))
        live = tf.reshape(tf.reduce_max(minmax(per_channel), axis=1) > 0, (n, k))
        if max_channels is None:
            return live
        var = tf.where(live, tf.math.reduce_variance(a, axis=_layout.spatial_axes(a)), -1.0)
        top = tf.math.top_k(var, k=tf.minimum(max_channels, k)).indices
        keep = tf.reduce_any(tf.equal(top[:, :, None], tf.range(k)[None, None, :]), axis=1)
        return live & keep

    def masked_scores(self, images, a, chosen, idx, target_fn=None):
        """``(N, K)``: the score of ``X * M_k`` for every chosen pair (the mean over
        :attr:`repeats` varied masks, :meth:`vary_masks`), 0 elsewhere.

        The score is the target probability (``"reference"``), the
        pre-softmax score (``"paper"``) or the callable target's value.
        """
        pairs = tf.where(chosen)  # (P, 2): image, channel
        if self.repeats > 1:  # (P * R, 3): image, channel, repeat
            which = grid(tf.shape(pairs)[0], self.repeats)
            pairs = tf.concat([tf.gather(pairs, which[:, 0]), which[:, 1:]], axis=1)
        rank = a.shape.rank
        maps = tf.transpose(a, (0, rank - 1) + tuple(range(1, rank - 1)))  # (N, K, *s)
        size = tf.shape(images)[1:-1]

        def scores(chunk):
            which = chunk[:, 0]
            masks = minmax(upsample(tf.gather_nd(maps, chunk[:, :2]), size))
            if self.repeats > 1:
                masks = self.vary_masks(masks, chunk[:, 1], chunk[:, 2])
            outputs = self.graph.run(tf.gather(images, which) * masks[..., None], rows=which)
            s, _, p = self.target_scores(outputs, tf.gather(idx, which), _targets.rows(target_fn, which))
            v = p if (self.weighting == "reference" and target_fn is None) else s
            return chunk[:, :2], v / self.repeats

        return self.stream(pairs, scores, tf.zeros(tf.shape(chosen)))


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
        scale = tf.cast(repeat + 1, masks.dtype) / self.steps
        return masks * tf.reshape(scale, [-1] + [1] * (masks.shape.rank - 1))


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
        eps = seeded_normal(self.seed, channels * self.samples + repeat, tf.shape(masks)[1:])
        return masks + self.noise * eps


def masked_softmax(values, chosen):
    """``softmax_k`` over the chosen entries of each row; 0 elsewhere (and for rows with none)."""
    s = tf.where(chosen, values, -np.inf)
    top = tf.reduce_max(s, axis=1, keepdims=True)
    top = tf.where(tf.math.is_finite(top), top, 0.0)
    e = tf.where(chosen, tf.exp(s - top), 0.0)
    return tf.math.divide_no_nan(e, tf.reduce_sum(e, axis=1, keepdims=True))

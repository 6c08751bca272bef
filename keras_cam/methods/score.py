"""Score-CAM: each channel weighted by the score of the image it masks.

Notation (per image): ``X`` is the preprocessed input, ``A`` the activation
``(*s, K)`` of the target layer (``(h, w, K)`` for images), ``c`` the explained class. No gradients are
used; instead every channel ``A_k`` becomes a soft mask of the input, and the
model's score of the masked input is the channel's weight.

The masked inputs of all channels of all images in a call are one list of
``(image, channel)`` pairs, streamed through the model ``batch_size`` at a
time inside the explainer's compiled function (a ``tf.while_loop`` around one
forward pass). Only one batch of masked inputs exists at any moment, so memory
does not grow with the number of channels.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_cam import _compat
from keras_cam import layout as _layout
from keras_cam import targets as _targets
from keras_cam.base import Explainer, minmax, upsample

WEIGHTINGS = ("reference", "paper")


class ScoreCAM(Explainer):
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
    # One call runs the model once per batch of masked inputs; compiled, those
    # passes run faster than eagerly by more than the trace costs.
    _eager_first = False

    def __init__(self, model, layer=None, *, output=None, linearize=True, batch_size=32,
                 weighting="reference", max_channels=None, verbose=1, aug_smooth=False,
                 eigen_smooth=False, image_input=None, data_format=None):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be a positive int (masked inputs per forward pass); "
                f"received {batch_size!r}."
            )
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
        if verbose not in (0, 1, False, True):
            raise ValueError(f"`verbose` must be 0 or 1; received {verbose!r}.")
        super().__init__(model, layer, output=output, linearize=linearize, batch_size=int(batch_size),
                         aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, image_input=image_input,
                         data_format=data_format)
        self.weighting = weighting
        self.max_channels = None if max_channels is None else int(max_channels)
        self.verbose = int(verbose)
        self._bar = None

    def explain(self, images, targets=None, upsample=True, normalize=True):
        try:
            return super().explain(images, targets, upsample=upsample, normalize=normalize)
        except tf.errors.ResourceExhaustedError as err:
            smaller = max(1, self.batch_size // 4)
            raise tf.errors.ResourceExhaustedError(
                err.node_def, err.op,
                f"Score-CAM ran out of memory running {self.batch_size} masked inputs per "
                f"forward pass. Pass a smaller batch_size, e.g. "
                f"ScoreCAM(model, batch_size={smaller}). (Original error: {err.message})",
            ) from err
        finally:
            self._bar = None

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
        """``(N, K)``: the score of ``X * M_k`` for every chosen pair, 0 elsewhere.

        The score is the target probability (``"reference"``), the
        pre-softmax score (``"paper"``) or the callable target's value.
        """
        pairs = tf.where(chosen)  # (P, 2): image, channel
        rank = a.shape.rank
        maps = tf.transpose(a, (0, rank - 1) + tuple(range(1, rank - 1)))  # (N, K, *s)
        size = tf.shape(images)[1:-1]
        step = self.batch_size
        total = tf.shape(pairs)[0]
        n_steps = (total + step - 1) // step

        def body(i, values):
            chunk = pairs[i * step:(i + 1) * step]
            which = chunk[:, 0]
            masks = minmax(upsample(tf.gather_nd(maps, chunk), size))
            outputs = self.graph.run(tf.gather(images, which) * masks[..., None], rows=which)
            s, _, p = self.target_scores(outputs, tf.gather(idx, which), _targets.rows(target_fn, which))
            v = p if (self.weighting == "reference" and target_fn is None) else s
            if self.verbose:
                tf.py_function(self._progress, [i, total], [])
            return i + 1, tf.tensor_scatter_nd_update(values, chunk, v)

        _, values = tf.while_loop(
            lambda i, _: i < n_steps, body, (tf.constant(0), tf.zeros(tf.shape(chosen))),
            parallel_iterations=1,  # one batch of masked inputs in memory at a time
        )
        return values

    def _progress(self, i, total):
        """Progress bar over the masked passes of one compiled call (runs eagerly)."""
        i, total = int(i), int(total)
        if i == 0 or self._bar is None:
            self._bar = _compat.progbar(total, verbose=self.verbose)
        self._bar.update(min((i + 1) * self.batch_size, total))


def masked_softmax(values, chosen):
    """``softmax_k`` over the chosen entries of each row; 0 elsewhere (and for rows with none)."""
    s = tf.where(chosen, values, -np.inf)
    top = tf.reduce_max(s, axis=1, keepdims=True)
    top = tf.where(tf.math.is_finite(top), top, 0.0)
    e = tf.where(chosen, tf.exp(s - top), 0.0)
    return tf.math.divide_no_nan(e, tf.reduce_sum(e, axis=1, keepdims=True))

"""The base of methods that run the model many times per image.

Score-CAM and its variants run one forward pass per (image, channel[, step
or sample]), Ablation-CAM one per (image, channel), SmoothGrad, Smooth
Grad-CAM++ and Integrated Gradients one per (image, sample or path point).
:class:`StreamingExplainer` gives them one mechanism: the work of a call is a
list of integer *items* (rows such as ``(image, channel, sample)``), and
:meth:`StreamingExplainer.stream` runs them ``batch_size`` at a time inside
the explainer's compiled function, in a ``tf.while_loop`` around one batched
pass. Each batch's results are scatter-added into one output tensor, so only
one batch of model inputs exists at any moment and memory does not grow with
the number of items.

Random draws (noise) depend only on ``(seed, id)``, where ``id`` is a
number the method derives from the item without the image's row (a sample
index, a channel and a sample): an image explained alone or in any batch,
at any ``batch_size``, sees the same noise (:func:`seeded_normal`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_cam import _compat
from keras_cam.base import Explainer


def check_positive_int(name, value, what):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int ({what}); received {value!r}.")
    return int(value)


def check_seed(seed):
    """``seed`` as an int (a random draw's seed); anything else is a ValueError."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an int; received {seed!r}.")
    return int(seed)


def check_noise(noise):
    """``noise`` as a non-negative float (a noise level); anything else is a ValueError."""
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)) or not noise >= 0:
        raise ValueError(f"`noise` must be a number >= 0 (0 adds no noise); received {noise!r}.")
    return float(noise)


def seeded_normal(seed, ids, shape):
    """Standard normal draws ``(len(ids), *shape)``; row ``r`` depends only on ``(seed, ids[r])``.

    Args:
        seed: an int.
        ids: ``(b,)`` integer tensor, one draw per entry.
        shape: the shape of one draw (a tensor or tuple).
    """
    ids = tf.cast(ids, tf.int64)
    seed = tf.constant(seed, tf.int64)
    return tf.map_fn(
        lambda i: tf.random.stateless_normal(shape, seed=tf.stack([seed, i])),
        ids, fn_output_signature=tf.float32,
    )


def input_range(images):
    """``(N,)``: ``max x - min x`` of each image (the scale of SmoothGrad's noise)."""
    axes = tuple(range(1, images.shape.rank))
    return tf.reduce_max(images, axis=axes) - tf.reduce_min(images, axis=axes)


def grid(*sizes):
    """``(prod(sizes), len(sizes))`` int64: every combination of ``range(s)`` for ``s`` in ``sizes``,
    the last index varying fastest (``grid(2, 3)`` is ``(0, 0), (0, 1), ..., (1, 2)``)."""
    axes = tf.meshgrid(*[tf.range(tf.cast(s, tf.int64)) for s in sizes], indexing="ij")
    return tf.stack([tf.reshape(a, [-1]) for a in axes], axis=1)


class StreamingExplainer(Explainer):
    """Base of the methods that run many forward passes per image, streamed in batches.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        batch_size: model inputs per forward pass (masked, ablated, noisy
            or interpolated copies), and images per call. Lower it if the
            model runs out of memory.
        verbose: 1 draws a progress bar over the passes of a call, 0 is silent.
        **kwargs: the options of :class:`keras_cam.Explainer`.
    """

    # One call runs the model once per batch of items; compiled, those passes
    # run faster than eagerly by more than the trace costs.
    _eager_first = False

    def __init__(self, model, layer=None, *, batch_size=32, verbose=1, **kwargs):
        batch_size = check_positive_int("batch_size", batch_size, "model inputs per forward pass")
        if verbose not in (0, 1, False, True):
            raise ValueError(f"`verbose` must be 0 or 1; received {verbose!r}.")
        super().__init__(model, layer, batch_size=batch_size, **kwargs)
        self.verbose = int(verbose)
        self._bar = None

    def explain(self, images, targets=None, upsample=True, normalize=True):
        try:
            return super().explain(images, targets, upsample=upsample, normalize=normalize)
        except tf.errors.ResourceExhaustedError as err:
            smaller = max(1, self.batch_size // 4)
            name = type(self).__name__
            raise tf.errors.ResourceExhaustedError(
                err.node_def, err.op,
                f"{name} ran out of memory running {self.batch_size} inputs per forward pass. "
                f"Pass a smaller batch_size, e.g. {name}(model, batch_size={smaller}). "
                f"(Original error: {err.message})",
            ) from err
        finally:
            self._bar = None

    def stream(self, items, fn, initial):
        """``initial`` plus every batch's scatter-added results, ``batch_size`` items per pass.

        Args:
            items: ``(P, d)`` int64 tensor, one row per unit of work.
            fn: ``fn(chunk) -> (indices, updates)`` for a ``(b, d)`` chunk of
                ``items``: ``indices`` ``(b, r)`` into ``initial`` and
                ``updates`` ``(b, *initial.shape[r:])`` to add there (as
                ``tf.tensor_scatter_nd_add``). Traced once.
            initial: the tensor the results are added to (usually zeros).

        Returns:
            ``initial`` with all updates added.
        """
        step = self.batch_size
        total = tf.shape(items)[0]
        n_steps = (total + step - 1) // step

        def body(i, values):
            indices, updates = fn(items[i * step:(i + 1) * step])
            if self.verbose:
                tf.py_function(self._progress, [i, total], [])
            return i + 1, tf.tensor_scatter_nd_add(values, indices, tf.cast(updates, values.dtype))

        _, values = tf.while_loop(
            lambda i, _: i < n_steps, body, (tf.constant(0), initial),
            parallel_iterations=1,  # one batch of model inputs in memory at a time
        )
        return values

    def _progress(self, i, total):
        """Progress bar over the passes of one compiled call (runs eagerly)."""
        i, total = int(i), int(total)
        if i == 0 or self._bar is None:
            self._bar = _compat.progbar(total, verbose=self.verbose)
        self._bar.update(min((i + 1) * self.batch_size, total))

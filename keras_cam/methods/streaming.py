"""The base of methods that run the model many times per image.

Score-CAM and its variants run one forward pass per (image, channel[, step
or sample]), Ablation-CAM one per (image, channel), SmoothGrad, Smooth
Grad-CAM++ and Integrated Gradients one per (image, sample or path point).
:class:`StreamingExplainer` gives them one mechanism: the work of a call is a
list of integer *items* (rows such as ``(image, channel, sample)``), and
:meth:`StreamingExplainer.stream` runs them ``batch_size`` at a time inside
the explainer's compiled function, in a loop around one batched pass
(``backend.fori_loop``: ``tf.while_loop``, ``jax.lax.fori_loop``, a Python
loop on PyTorch), followed by one pass for the remainder, so every pass has a
static shape and no padding work is done. Each batch's results are scatter-added into one output tensor, so only
one batch of model inputs exists at any moment and memory does not grow with
the number of items.

Random draws (noise) depend only on ``(seed, id)``, where ``id`` is a
number the method derives from the item without the image's row (a sample
index, a channel and a sample): an image explained alone or in any batch,
at any ``batch_size``, on any backend, sees the same noise (:func:`seeded_normal`).
"""

from __future__ import annotations

import numpy as np

from keras_cam import _compat
from keras_cam import backend as _backend
from keras_cam import random as _random
from keras_cam._compat import ops
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

    The same numbers on every backend (:func:`keras_cam.random.normal`).

    Args:
        seed: an int.
        ids: ``(b,)`` integer tensor, one draw per entry.
        shape: the shape of one draw (a tuple of ints).
    """
    return _random.normal(seed, ids, tuple(int(s) for s in shape))


def input_range(images):
    """``(N,)``: ``max x - min x`` of each image (the scale of SmoothGrad's noise)."""
    axes = tuple(range(1, len(images.shape)))
    return ops.max(images, axis=axes) - ops.min(images, axis=axes)


def grid(*sizes):
    """``(prod(sizes), len(sizes))`` int32 numpy: every combination of ``range(s)`` for ``s`` in ``sizes``,
    the last index varying fastest (``grid(2, 3)`` is ``(0, 0), (0, 1), ..., (1, 2)``)."""
    axes = np.meshgrid(*[np.arange(int(s), dtype=np.int32) for s in sizes], indexing="ij")
    return np.stack([a.reshape(-1) for a in axes], axis=1)


class StreamingExplainer(Explainer):
    """Base of the methods that run many forward passes per image, streamed in batches.

    Args:
        model: a Keras model; never modified.
        layer: the target layer (see :class:`keras_cam.Explainer`).
        batch_size: model inputs per forward pass (masked, ablated, noisy
            or interpolated copies), and images per call. Lower it if the
            model runs out of memory.
        verbose: 0 (the default) is silent, 1 draws a progress bar over the passes of a call.
        **kwargs: the options of :class:`keras_cam.Explainer`.
    """

    # One call runs the model once per batch of items; compiled, those passes
    # run faster than eagerly by more than the trace costs.
    _eager_first = False

    def __init__(self, model, layer=None, *, batch_size=32, verbose=0, **kwargs):
        batch_size = check_positive_int("batch_size", batch_size, "model inputs per forward pass")
        if verbose not in (0, 1, False, True):
            raise ValueError(f"`verbose` must be 0 or 1; received {verbose!r}.")
        super().__init__(model, layer, batch_size=batch_size, **kwargs)
        self.verbose = int(verbose)
        self._bar = None

    def explain(self, images, targets=None, upsample=True, normalize=True):
        try:
            return super().explain(images, targets, upsample=upsample, normalize=normalize)
        except Exception as err:
            if not _backend.is_out_of_memory(err):
                raise
            smaller = max(1, self.batch_size // 4)
            name = type(self).__name__
            raise MemoryError(
                f"{name} ran out of memory running {self.batch_size} inputs per forward pass. "
                f"Pass a smaller batch_size, e.g. {name}(model, batch_size={smaller}). "
                f"(Original error: {' '.join(str(err).split())[:300]})"
            ) from err
        finally:
            self._bar = None

    def stream(self, items, fn, initial):
        """``initial`` plus every batch's scatter-added results, ``batch_size`` items per pass.

        Args:
            items: ``(P, d)`` int numpy array (static: :func:`grid`), one row per unit of work.
            fn: ``fn(chunk) -> (indices, updates)`` for a ``(b, d)`` chunk of
                ``items``: ``indices`` ``(b, r)`` into ``initial`` and
                ``updates`` ``(b, *initial.shape[r:])`` to add there
                (duplicates summed). Traced once for full batches and once
                for the remainder.
            initial: the tensor the results are added to (usually zeros).

        Returns:
            ``initial`` with all updates added.
        """
        items = np.asarray(items, np.int32)
        step, total = self.batch_size, len(items)
        full, rest = divmod(total, step)
        n_steps = full + (1 if rest else 0)
        table = ops.convert_to_tensor(items)
        width = items.shape[1]

        def add(chunk, values, i):
            indices, updates = fn(chunk)
            if self.verbose:
                _backend.host_callback(self._progress, i, n_steps)
            return _backend.scatter_add(values, ops.cast(indices, "int32"), updates)

        values = initial
        if full:
            values = _backend.fori_loop(
                full, lambda i, v: add(ops.slice(table, (i * step, 0), (step, width)), v, i), values)
        if rest:
            values = add(table[full * step:], values, full)
        return values

    def _progress(self, i, n_steps):
        """Progress bar over the passes of one compiled call (runs on the host)."""
        if i == 0 or self._bar is None:
            self._bar = _compat.progbar(n_steps, verbose=self.verbose)
        self._bar.update(min(i + 1, n_steps))

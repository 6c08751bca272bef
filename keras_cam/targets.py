"""What to explain: which score ``S`` of each image the map is about.

A target is one of
- ``None``: each image's top-1 class;
- an ``int``: the same class for every image;
- a sequence of ints: one class per image;
- a callable ``f(outputs) -> (N,)``: any scalar per image, for models that
  are not plain classifiers (a regression output, one unit of a multi-label
  head, one output of a multi-output model). ``outputs`` is what the model
  returns, with the final softmax/sigmoid removed when the explainer
  linearizes (the default).

Class targets are passed to compiled code as an ``int32`` vector in which
``-1`` means "top-1", so changing the classes never retraces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

TOP1 = -1


def class_indices(targets, n, num_classes=None):
    """Validate class targets and return them as an ``int32`` vector of length ``n``.

    Args:
        targets: None (top-1), an int (one class for all), or a sequence of
            ints (one class per image).
        n: the number of images.
        num_classes: the model's number of classes, when known, to check the
            range.

    Returns:
        ``(n,)`` int32 class indices, ``TOP1`` (-1) meaning the top-1 class.

    Raises:
        ValueError: wrong length, negative, or (when ``num_classes`` is known)
            out of range.
        TypeError: anything that is not None, an int or a sequence of ints.
    """
    if targets is None:
        return np.full((n,), TOP1, dtype=np.int32)
    if isinstance(targets, (int, np.integer)):
        idx = np.full((n,), int(targets), dtype=np.int64)
    elif isinstance(targets, (Sequence, np.ndarray, tf.Tensor)) and not isinstance(targets, str):
        idx = np.asarray(targets)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(
                f"`targets` must be None, an int, a 1-D sequence of ints (one per image) or a "
                f"callable; received an array of shape {idx.shape} and dtype {idx.dtype}."
            )
        if len(idx) != n:
            raise ValueError(
                f"`targets` has {len(idx)} entries for {n} images; give one class per image, "
                f"or a single int for all of them."
            )
    else:
        raise TypeError(
            f"`targets` must be None, an int, a sequence of ints or a callable; received "
            f"{type(targets).__name__}."
        )
    if (idx < 0).any():
        raise ValueError(f"`targets` must be class indices >= 0; received {idx.tolist()}.")
    if num_classes is not None and (idx >= num_classes).any():
        raise ValueError(
            f"`targets` {idx.tolist()} is out of range for a model with {num_classes} classes "
            f"(valid: 0..{num_classes - 1})."
        )
    return idx.astype(np.int32)


def select(scores, class_idx):
    """Pick each image's target score.

    Args:
        scores: ``(N, C)`` class scores.
        class_idx: ``(N,)`` int32, ``-1`` meaning the top-1 class.

    Returns:
        ``(S, idx)``: the ``(N,)`` target scores and the classes used.
    """
    top1 = tf.argmax(scores, axis=-1, output_type=tf.int32)
    idx = tf.where(class_idx < 0, top1, class_idx)
    return tf.gather(scores, idx, batch_dims=1), idx


def call_target(fn: Callable, outputs, n):
    """Apply a callable target and check that it gives one score per image.

    Args:
        fn: the callable target ``f(outputs) -> (N,)`` (an ``(N, 1)`` result is
            accepted too).
        outputs: what the model returned (linearized when the explainer is).
        n: the number of images, or None when unknown.

    Returns:
        ``(N,)`` float32 scores.

    Raises:
        ValueError: when ``fn`` does not return one score per image.
    """
    s = fn(outputs)
    s = tf.convert_to_tensor(s)
    if s.shape.rank == 2 and s.shape[-1] == 1:
        s = s[:, 0]
    if s.shape.rank != 1 or (s.shape[0] is not None and n is not None and s.shape[0] != n):
        raise ValueError(
            f"A callable target must return one score per image, shape ({n},); it returned "
            f"shape {tuple(s.shape)}. Reduce the outputs to a scalar per image, e.g. "
            f"`lambda out: out[:, k]`."
        )
    return tf.cast(s, tf.float32)

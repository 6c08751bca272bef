"""What to explain: which score ``S`` of each input the map is about.

A target is one of

- ``None``: each input's top-1 class;
- an ``int``: the same class for every input;
- a sequence of ints: one class per input;
- a target object, for tasks beyond classification:
  :class:`Segmentation` (a class's logits summed over a region),
  :class:`Detection` (one box of a RetinaNet detector),
  :class:`Similarity` (cosine similarity of an embedding to a reference),
  :class:`Regression` (one raw output),
  :class:`ReST` (a logit plus its log-probability, ShapleyCAM's score);
- a callable ``f(outputs) -> (N,)``: any scalar per input (one unit of a
  multi-label head, one output of a multi-output model). ``outputs`` is what
  the model returns. An explainer wraps it in :class:`Function`.

Every score is read on what the model computes before a final softmax or
sigmoid when the explainer linearizes (the default): a logit, not a
probability.

Class targets are passed to compiled code as an ``int32`` vector in which
``-1`` means "top-1", so changing the classes never retraces. A target object
is checked against the model's output (and the input batch) before anything
is traced; its per-input arrays (a mask, a reference, a box) travel with the
batch as tensors, so a new mask of the same shape does not retrace either.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np

from keras_cam import _compat
from keras_cam import backend as _backend
from keras_cam import layout as _layout
from keras_cam._compat import ops

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
    if isinstance(targets, (bool, np.bool_)) or (
            isinstance(targets, Sequence) and not isinstance(targets, str)
            and any(isinstance(t, (bool, np.bool_)) for t in targets)):
        raise TypeError(
            f"`targets` must be class indices, not booleans; received {_short(targets)}. A boolean would "
            f"be read as class 0 or 1: give the class as an int (one, or one per image), or None for "
            f"each image's top class."
        )
    if isinstance(targets, (int, np.integer)):
        idx = np.full((n,), int(targets), dtype=np.int64)
    elif (isinstance(targets, (Sequence, np.ndarray)) or _backend.is_tensor(targets)) and not isinstance(targets, str):
        idx = np.asarray(_compat.to_host(targets))
        if idx.dtype == bool:
            raise TypeError(
                f"`targets` must be class indices, not booleans; received a boolean array of shape "
                f"{idx.shape}. To explain some images only, index the images (images[mask]); to "
                f"explain a class, give it as an int."
            )
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(
                f"`targets` must be None, an int, a 1-D sequence of ints (one per image), a "
                f"target object (keras_cam.targets) or a callable; received an array of shape "
                f"{idx.shape} and dtype {idx.dtype}."
            )
        if len(idx) != n:
            raise ValueError(
                f"`targets` has {len(idx)} entries for {n} images; give one class per image, "
                f"or a single int for all of them."
            )
    else:
        raise TypeError(
            f"`targets` must be None, an int, a sequence of ints, a target object "
            f"(keras_cam.targets) or a callable; received {type(targets).__name__}."
        )
    if (idx < 0).any():
        raise ValueError(f"`targets` must be class indices >= 0; received {idx.tolist()}.")
    if num_classes is not None and (idx >= num_classes).any():
        raise ValueError(
            f"`targets` {idx.tolist()} is out of range for a model with {num_classes} classes "
            f"(valid: 0..{num_classes - 1})."
        )
    return idx.astype(np.int32)


def _short(value, limit=60):
    """``repr(value)``, cut to ``limit`` characters (a message never prints a whole array)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


def select(scores, class_idx):
    """Pick each image's target score.

    Args:
        scores: ``(N, C)`` class scores.
        class_idx: ``(N,)`` int32, ``-1`` meaning the top-1 class.

    Returns:
        ``(S, idx)``: the ``(N,)`` target scores and the classes used.
    """
    top1 = ops.cast(ops.argmax(scores, axis=-1), "int32")
    idx = ops.where(class_idx < 0, top1, ops.cast(class_idx, "int32"))
    return ops.take_along_axis(scores, idx[:, None], axis=1)[:, 0], idx


# ---------------------------------------------------------------------------
# Target objects


class Target:
    """Base of the target objects: one scalar score ``S`` per input.

    A subclass defines :meth:`score` and, when it has arguments to check or
    arrays to carry, :meth:`values`. Explainers call ``values`` once per call,
    before tracing, and pass its arrays into the compiled computation with the
    batch (rows of per-input arrays are split and gathered with the inputs);
    ``score`` then runs inside it.

    Two target objects with the same settings (:meth:`_key`) compare equal,
    so they share one compiled computation.
    """

    #: ``score`` receives the model's whole outputs (True), or the
    #: explainer's selected output (``output=``, False).
    whole_outputs = False
    #: The score depends on where things are in the input's frame (a mask,
    #: a box), so it does not survive the flips and shifts of ``aug_smooth``.
    in_frame = False

    def values(self, graph, images):
        """Check the target against the model and return its arrays.

        Args:
            graph: the explainer's :class:`~keras_cam.graph.ActivationGraph`
                (the model, its selected output, its data format).
            images: the channels-last input batch ``(N, *spatial, C)``, or
                None when the inputs are not known yet (``explain_dataset``).

        Returns:
            A tuple of arrays whose first axis has length ``N`` (one row per
            input) or 1 (shared by all inputs).

        Raises:
            ValueError: the target does not fit the model's output or the inputs.
        """
        return ()

    def score(self, outputs, *values):
        """``(N,)`` float32 scores of ``outputs`` (traced); ``values`` as :meth:`values` made them."""
        raise NotImplementedError

    def _key(self):
        """The settings that define the computation (not the per-input arrays)."""
        return ()

    def __eq__(self, other):
        """Equal targets share one compiled computation (their values may differ)."""
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self):
        return hash((type(self), self._key()))

    def __call__(self, outputs):
        """The scores for a model's outputs, when the target needs no input arrays.

        (This makes a target object usable wherever a callable target is,
        e.g. ``explain_dataset``; explainers call :meth:`values` and
        :meth:`score` themselves.)
        """
        return self.score(outputs, *[ops.convert_to_tensor(v) for v in self.values(None, None)])


class Function(Target):
    """A callable ``f(outputs) -> (N,)`` as a target (explainers wrap callables in it).

    ``outputs`` is the model's whole output structure (logits when the
    explainer linearizes). ``(N, 1)`` results are accepted as ``(N,)``.

    Args:
        fn: the callable.
    """

    whole_outputs = True

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise TypeError(f"`fn` must be callable; received {type(fn).__name__}.")
        self.fn = fn

    def _key(self):
        return (self.fn,)

    def score(self, outputs, *values):
        s = ops.convert_to_tensor(self.fn(outputs))
        if len(s.shape) == 2 and s.shape[-1] == 1:
            s = s[:, 0]
        if len(s.shape) != 1:
            raise ValueError(
                f"A callable target must return one score per image, shape (N,); it returned "
                f"shape {tuple(s.shape)}. Reduce the outputs to a scalar per image, e.g. "
                f"`lambda out: out[:, k]`."
            )
        return ops.cast(s, "float32")


def as_target(targets):
    """``targets`` as a :class:`Target`, or None for class targets (None, ints).

    Args:
        targets: None, an int, ints, a callable or a :class:`Target`.

    Returns:
        A :class:`Target` (callables wrapped in :class:`Function`), or None.
    """
    if isinstance(targets, Target):
        return targets
    if callable(targets):
        return Function(targets)
    return None


class _Bound:
    """A target with its arrays for the rows being scored (inside a compiled call)."""

    def __init__(self, target, values):
        self.target, self.values = target, None if values is None else tuple(values)

    def rows(self, which):
        """The same target for the inputs ``which`` (e.g. Score-CAM's masked copies)."""
        if self.values is None:
            return self
        return _Bound(self.target, [v if v.shape[0] == 1 else ops.take(v, which, axis=0) for v in self.values])


def bind(target, values):
    """``target`` (a Target or a callable) with its arrays, for :func:`score`; None stays None.

    Args:
        target: a :class:`Target`, a callable, an already bound target or None.
        values: the arrays :meth:`Target.values` made (tensors inside compiled code).

    Returns:
        The bound target, or None.
    """
    if target is None:
        return None
    if isinstance(target, _Bound):
        return target
    return _Bound(as_target(target), values)


def rows(target, which):
    """``target`` for the inputs ``which``: the rows ``which`` of its per-input arrays.

    Args:
        target: a bound target (other targets are returned as they are).
        which: ``(n,)`` int indices of the inputs (e.g. Score-CAM's masked copies).

    Returns:
        The target for those inputs.
    """
    return target.rows(which) if isinstance(target, _Bound) else target


def score(target, outputs, graph):
    """The ``(N,)`` scores of a target (bound, a Target or a callable) on the model's outputs.

    Args:
        target: a bound target, a :class:`Target` or a callable.
        outputs: what the model returned (linearized when the explainer is).
        graph: the explainer's :class:`~keras_cam.graph.ActivationGraph`.

    Returns:
        ``(N,)`` float32 scores.
    """
    bound = target if isinstance(target, _Bound) else _Bound(as_target(target), None)
    t = bound.target
    values = bound.values if bound.values is not None else [ops.convert_to_tensor(v) for v in t.values(graph, None)]
    s = t.score(outputs if t.whole_outputs else graph.selected(outputs), *values)
    s = ops.convert_to_tensor(s)
    if len(s.shape) != 1:
        raise ValueError(f"{type(t).__name__}.score returned shape {tuple(s.shape)}; it must be (N,).")
    return ops.cast(s, "float32")


def _static_output_shape(graph):
    """The explainer's selected output's shape (batch axis included), or None when unknown
    (see ``ActivationGraph.output_shape``)."""
    return getattr(graph, "output_shape", None)


def _check_index(name, value, size, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int; received {value!r}.")
    if size is not None and not 0 <= int(value) < size:
        raise ValueError(f"`{name}={value}` is out of range for {what} (valid: 0..{size - 1}).")


def _rows(array, images, name):
    """Check that a per-input array has one row per input (or one shared row)."""
    if images is None or array.shape[0] in (1, int(images.shape[0])):
        return array
    raise ValueError(
        f"`{name}` has {array.shape[0]} rows for {int(images.shape[0])} inputs; give one per "
        f"input, or one for all of them."
    )


class Segmentation(Target):
    """The class-``c`` logits of a segmentation output summed over a region.

    For an output of per-pixel class logits ``z`` ``(N, *spatial, classes)``:
    ``S = sum_ij mask_ij * z_c,ij`` (pytorch-grad-cam's
    SemanticSegmentationTarget). ``mask`` holds weights (usually 0/1); None
    means the whole image. A model with a single sigmoid channel has the
    classes 0 (``-z``) and 1 (``z``), as for classification.

    Args:
        category: the class ``c``, an index into the output's last axis.
        mask: None, ``(*spatial)`` for every input or ``(N, *spatial)`` per
            input, at the output's resolution or at the input's (resized to
            the output's, nearest neighbour). Booleans or weights.

    Raises:
        ValueError: (when explaining) the output is not a per-pixel map, the
            class is out of range, the mask fits neither resolution or
            selects no pixel of some input.

    Example:
        >>> from keras_cam.targets import Segmentation
        >>> maps = keras_cam.GradCAM(segmenter)(images, targets=Segmentation(1))
        >>> road = keras_cam.GradCAM(segmenter)(images, targets=Segmentation(1, mask=pred == 1))
    """

    def __init__(self, category, mask=None):
        _check_index("category", category, None, "")
        if int(category) < 0:
            raise ValueError(f"`category` must be a class index >= 0; received {category}.")
        self.category = int(category)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype == bool:
                mask = mask.astype(np.float32)
            if not (np.issubdtype(mask.dtype, np.floating) or np.issubdtype(mask.dtype, np.integer)):
                raise TypeError(f"`mask` must hold booleans or numbers; received dtype {mask.dtype}.")
            mask = mask.astype(np.float32)
            if not np.isfinite(mask).all():
                raise ValueError("`mask` contains NaN or Inf.")
        self.mask = mask
        self.in_frame = mask is not None

    def _key(self):
        # The class travels with the batch as a value: every class of a segmenter shares one
        # compiled call (one with a mask, one without).
        return (self.mask is None,)

    def values(self, graph, images):
        shape = _static_output_shape(graph) if graph is not None else None
        if shape is not None:
            if graph.data_format == "channels_first":
                raise ValueError(
                    f"Segmentation reads the classes on the output's last axis; model "
                    f"{graph.model.name!r} is channels-first. Pass a callable target instead, e.g. "
                    f"`lambda z: keras.ops.sum(z[:, c] * mask, axis=(1, 2))`."
                )
            if len(shape) < 3:
                raise ValueError(
                    f"Segmentation needs an output of per-pixel class scores (N, *spatial, "
                    f"classes); model {graph.model.name!r} outputs shape {shape}. For a classifier "
                    f"pass a class index; for another task see keras_cam.targets."
                )
            classes = shape[-1]
            if classes == 1 and graph.output_activation == "sigmoid":
                classes = 2
            _check_index("category", self.category, classes, f"an output with {classes} classes")
        category = np.array([self.category], np.int32)
        if self.mask is None:
            return (category,)
        out_size = None if shape is None or None in shape[1:-1] else tuple(shape[1:-1])
        in_size = None if images is None else tuple(int(d) for d in images.shape[1:-1])
        rank = len(out_size) if out_size is not None else (len(in_size) if in_size is not None else None)
        mask = self.mask
        if rank is not None and mask.ndim == rank:
            mask = mask[None]
        if rank is not None and mask.ndim != rank + 1:
            raise ValueError(
                f"`mask` has shape {self.mask.shape}; for this model it must be {rank}-D "
                f"{out_size or in_size} for every input, or {rank + 1}-D with one mask per input."
            )
        sizes = [s for s in (out_size, in_size) if s is not None]
        if sizes and tuple(mask.shape[1:]) not in sizes:
            raise ValueError(
                f"`mask` has shape {self.mask.shape}, which fits neither the output's resolution "
                f"{out_size} nor the input's {in_size}."
            )
        if out_size is not None and tuple(mask.shape[1:]) != out_size:
            mask = _layout.nearest_resize(mask, out_size)
        mask = _rows(mask, images, "mask")
        empty = np.flatnonzero(~np.any(mask != 0, axis=tuple(range(1, mask.ndim))))
        if len(empty):
            raise ValueError(
                f"`mask` selects no pixel{'' if mask.shape[0] == 1 else f' for inputs {empty[:10].tolist()}'}"
                f" (at the output's resolution {tuple(mask.shape[1:])}): the score would be 0 and "
                f"the map empty. Give a mask with at least one nonzero pixel."
            )
        return (category, mask.astype(np.float32))

    def __call__(self, outputs):
        # Scored on bare outputs (no model for values() to check against): the class against them.
        classes = outputs.shape[-1] if len(outputs.shape) >= 3 else None
        if classes is not None:
            _check_index("category", self.category, max(int(classes), 2), f"an output with {int(classes)} classes")
        return super().__call__(outputs)

    def score(self, outputs, *values):
        z = ops.cast(outputs, "float32")
        rank = len(z.shape)
        if rank is None or rank < 3:
            raise ValueError(
                f"Segmentation needs an output of per-pixel class scores (N, *spatial, classes); "
                f"the model's output has shape {tuple(z.shape)}."
            )
        # The class c is a value (checked against the output's classes by values()): z_c by a
        # one-hot sum over the class axis, or for one sigmoid channel z (c = 1) and -z (c = 0).
        category = ops.reshape(ops.cast(values[0], "int32"), (-1,) + (1,) * (rank - 1))
        if z.shape[-1] == 1:
            zc = z[..., 0] * ops.cast(2 * category[..., 0] - 1, "float32")
        else:
            zc = ops.sum(z * ops.one_hot(category, int(z.shape[-1]), dtype="float32")[..., 0, :], axis=-1)
        if len(values) > 1:
            zc = zc * values[1]
        return ops.sum(ops.reshape(zc, (-1, int(np.prod(zc.shape[1:])))), axis=1)


class Regression(Target):
    """One raw output: ``S = y[index]`` (pre-activation when the explainer linearizes).

    Args:
        index: an int into the output's features (an output ``(N,)`` takes 0),
            or a tuple indexing an output with several feature axes.

    Example:
        >>> from keras_cam.targets import Regression
        >>> maps = keras_cam.GradCAM(regressor)(images, targets=Regression(0))
    """

    def __init__(self, index=0):
        index = tuple(index) if isinstance(index, (tuple, list)) else (index,)
        for i in index:
            _check_index("index", i, None, "")
        self.index = tuple(int(i) for i in index)

    def _key(self):
        # The index travels with the batch as a value: every feature of a regressor shares one
        # compiled call.
        return (len(self.index),)

    def values(self, graph, images):
        shape = _static_output_shape(graph) if graph is not None else None
        if shape is not None:
            features = shape[1:] or (1,)
            if len(self.index) != len(features):
                raise ValueError(
                    f"`index={self.index if len(self.index) > 1 else self.index[0]}` does not fit "
                    f"the output of shape {shape}: give {len(features)} index(es), one per feature axis."
                )
            for i, n in zip(self.index, features):
                _check_index("index", i, n, f"an output of shape {shape}")
        return (np.array([self.index], np.int32),)

    def __call__(self, outputs):
        # Scored on bare outputs (no model for values() to check against): the index against them,
        # a negative one counting from the end as in Python.
        features = tuple(outputs.shape[1:]) or (1,)
        if len(features) == len(self.index):
            for i, n in zip(self.index, features):
                if n is not None and not -int(n) <= i < int(n):
                    raise ValueError(f"`index={i}` is out of range for an output of shape {tuple(outputs.shape)}.")
        return super().__call__(outputs)

    def score(self, outputs, *values):
        y = ops.cast(outputs, "float32")
        if len(y.shape) == 1:
            y = y[:, None]
        features = tuple(int(d) for d in y.shape[1:])
        index = ops.cast(values[0], "int32")                                    # (1, k)
        if int(index.shape[-1]) != len(features):
            raise ValueError(
                f"`index` has {int(index.shape[-1])} entries for an output of shape {tuple(y.shape)}: give "
                f"{len(features)}, one per feature axis.")
        # y[:, i_1, ..., i_k] as a one-hot sum over the flattened features, the flat index being
        # sum_j i_j * stride_j (a negative i_j counts from the end, as in Python).
        sizes = ops.convert_to_tensor(np.array(features, np.int32))
        strides = ops.convert_to_tensor(np.cumprod((features[1:] + (1,))[::-1])[::-1].astype(np.int32))
        flat = ops.sum(ops.where(index < 0, index + sizes, index) * strides, axis=-1)
        y = ops.reshape(y, (-1, int(np.prod(features))))
        return ops.sum(y * ops.one_hot(flat, int(y.shape[1]), dtype="float32"), axis=-1)


class Similarity(Target):
    """Cosine similarity of an embedding output with a reference embedding.

    ``S = <e, r> / (|e| |r|)`` for the output ``e`` ``(N, D)`` and the
    reference ``r``; ``|e|`` is floored at ``1e-12`` so a zero embedding
    scores 0.

    Args:
        reference: ``(D,)`` for every input or ``(N, D)`` per input (e.g.
            the embeddings of other images: "what makes these look alike").

    Example:
        >>> from keras_cam.targets import Similarity
        >>> ref = embedder.predict(query_image[None])[0]
        >>> maps = keras_cam.GradCAM(embedder)(images, targets=Similarity(ref))
    """

    def __init__(self, reference):
        r = np.asarray(reference, dtype=np.float32)
        if r.ndim not in (1, 2) or r.size == 0:
            raise ValueError(f"`reference` must be one embedding (D,) or one per input (N, D); received shape {r.shape}.")
        if not np.isfinite(r).all():
            raise ValueError("`reference` contains NaN or Inf.")
        if (np.linalg.norm(r, axis=-1) == 0).any():
            raise ValueError("`reference` has a zero embedding: its cosine similarity is undefined.")
        self.reference = r if r.ndim == 2 else r[None]

    def values(self, graph, images):
        shape = _static_output_shape(graph) if graph is not None else None
        d = self.reference.shape[-1]
        if shape is not None and (len(shape) != 2 or shape[-1] not in (None, d)):
            raise ValueError(
                f"Similarity compares an embedding (N, {d}) with the reference; model "
                f"{graph.model.name!r} outputs shape {shape}."
            )
        return (_rows(self.reference, images, "reference"),)

    def score(self, outputs, *values):
        e = ops.cast(outputs, "float32")
        if len(e.shape) != 2:
            raise ValueError(f"Similarity needs an embedding output (N, D); the output has shape {tuple(e.shape)}.")
        r = values[0]
        e_unit = e / ops.maximum(ops.norm(e, axis=-1, keepdims=True), 1e-12)
        r_unit = r / ops.norm(r, axis=-1, keepdims=True)
        return ops.sum(e_unit * r_unit, axis=-1)


class ReST(Target):
    """The Residual Softmax Target-class score (Cai 2025, proposed with ShapleyCAM).

    For the logits ``y`` ``(N, C)`` of a softmax classifier and class ``c``:
    ``S = y_c + log softmax(y)_c = 2 y_c - log sum_j exp(y_j)``, the logit plus
    its log-probability (the logit minus the cross-entropy). Its gradient
    ``(2 e_c - softmax(y))`` raises the class's evidence and lowers the other
    classes' in proportion to their probability; it is not linear in ``y``, so
    :class:`keras_cam.ShapleyCAM`'s second-order term takes effect.

    Args:
        classes: None (each input's top class), an int (the same class for
            every input) or one int per input.

    Raises:
        ValueError: (when explaining) the output is not ``(N, classes)``
            logits of a softmax classifier, or a class is out of range.

    Example:
        >>> from keras_cam.targets import ReST
        >>> maps = keras_cam.ShapleyCAM(model)(images, targets=ReST())      # top class
        >>> maps = keras_cam.ShapleyCAM(model)(images, targets=ReST([3, 7]))
    """

    def __init__(self, classes=None):
        if classes is None:
            self.classes = np.full((1,), TOP1, np.int32)
        elif isinstance(classes, numbers.Integral) and not isinstance(classes, bool):
            self.classes = class_indices(int(classes), 1)
        elif isinstance(classes, (Sequence, np.ndarray)) and not isinstance(classes, str):
            if len(classes) == 0:
                raise ValueError("`classes` is empty; give None (the top class), an int, or one int per input.")
            self.classes = class_indices(classes, len(classes))
        else:
            raise TypeError(f"`classes` must be None, an int or a sequence of ints; received {_short(classes)}.")

    def values(self, graph, images):
        shape = _static_output_shape(graph) if graph is not None else None
        if graph is not None and graph.output_activation == "sigmoid":
            raise ValueError(
                "ReST is the score of a softmax classifier (a logit plus its log-probability); "
                f"model {graph.model.name!r} ends with a sigmoid. Pass a class index instead."
            )
        if graph is not None and graph.output_activation == "softmax" and not graph.linearize:
            raise ValueError(
                "ReST needs the logits, and this explainer scores probabilities (linearize=False). "
                "Build the explainer with linearize=True (the default)."
            )
        if shape is not None:
            if len(shape) != 2 or (shape[-1] is not None and shape[-1] < 2):
                raise ValueError(
                    f"ReST needs class logits (N, classes) with at least 2 classes; model "
                    f"{graph.model.name!r} outputs shape {shape}."
                )
            if shape[-1] is not None and (self.classes >= shape[-1]).any():
                raise ValueError(
                    f"ReST `classes` {self.classes.tolist()[:10]} is out of range for a model with "
                    f"{shape[-1]} classes (valid: 0..{shape[-1] - 1})."
                )
        return (_rows(self.classes, images, "classes"),)

    def score(self, outputs, *values):
        y = ops.cast(outputs, "float32")
        if len(y.shape) != 2:
            raise ValueError(f"ReST needs class logits (N, classes); the output has shape {tuple(y.shape)}.")
        classes = ops.cast(values[0], "int32") if values else ops.convert_to_tensor(self.classes)
        idx = ops.where(classes < 0, ops.cast(ops.argmax(y, axis=-1), "int32"), classes)
        y_c = ops.take_along_axis(y, idx[:, None], axis=1)[:, 0]
        return 2.0 * y_c - ops.logsumexp(y, axis=-1)


# ---------------------------------------------------------------------------
# Detection

_BOX_FORMATS = ("xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw",
                "rel_xyxy", "rel_yxyx", "rel_xywh", "rel_center_xywh")


def to_xyxy(boxes, box_format, height=None, width=None):
    """Boxes ``(..., 4)`` in a KerasHub/Keras ``bounding_box_format`` as corners ``(x1, y1, x2, y2)``.

    ``rel_*`` formats are fractions of the image's ``width`` and ``height``.

    Args:
        boxes: ``(..., 4)`` boxes.
        box_format: the format's name, e.g. ``"xyxy"``, ``"yxyx"``, ``"xywh"``,
            ``"center_xywh"``, ``"rel_xyxy"``.
        height: the image height, for ``rel_*`` formats.
        width: the image width, for ``rel_*`` formats.

    Returns:
        ``(..., 4)`` corner boxes ``(x1, y1, x2, y2)``.
    """
    if box_format not in _BOX_FORMATS:
        raise ValueError(f"Unknown `box_format` {box_format!r}; use one of {_BOX_FORMATS}.")
    b = np.asarray(boxes, dtype=np.float64)
    rel = box_format.startswith("rel_")
    fmt = box_format[4:] if rel else box_format
    a0, a1, a2, a3 = (b[..., i] for i in range(4))
    if fmt == "xyxy":
        x1, y1, x2, y2 = a0, a1, a2, a3
    elif fmt == "yxyx":
        y1, x1, y2, x2 = a0, a1, a2, a3
    elif fmt == "xywh":
        x1, y1, x2, y2 = a0, a1, a0 + a2, a1 + a3
    elif fmt == "center_xywh":
        x1, y1, x2, y2 = a0 - a2 / 2, a1 - a3 / 2, a0 + a2 / 2, a1 + a3 / 2
    else:  # center_yxhw
        x1, y1, x2, y2 = a1 - a3 / 2, a0 - a2 / 2, a1 + a3 / 2, a0 + a2 / 2
    out = np.stack([x1, y1, x2, y2], axis=-1)
    if rel:
        if height is None or width is None:
            raise ValueError(f"Relative boxes ({box_format!r}) need the image size.")
        out = out * np.array([width, height, width, height], dtype=np.float64)
    return out


def decode_boxes(anchors, deltas):
    """RetinaNet box decoding: anchors and deltas in ``center_xywh`` to corners ``(x1, y1, x2, y2)``.

    With the anchor's centre ``(ax, ay)`` and size ``(aw, ah)`` and the deltas
    ``(dx, dy, dw, dh)``: centre ``(ax + dx aw, ay + dy ah)``, size
    ``(aw e^dw, ah e^dh)`` (``decode_predictions`` of KerasHub's
    ``RetinaNetObjectDetector``: no variance).

    Args:
        anchors: ``(..., 4)`` anchors ``(ax, ay, aw, ah)``.
        deltas: ``(..., 4)`` predicted deltas ``(dx, dy, dw, dh)``.

    Returns:
        ``(..., 4)`` corner boxes.
    """
    cx = anchors[..., 0] + deltas[..., 0] * anchors[..., 2]
    cy = anchors[..., 1] + deltas[..., 1] * anchors[..., 3]
    w = anchors[..., 2] * ops.exp(deltas[..., 2])
    h = anchors[..., 3] * ops.exp(deltas[..., 3])
    return ops.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def box_iou(a, b):
    """Intersection over union of corner boxes ``(..., 4)`` (broadcast), 0 where the union is 0.

    Args:
        a: ``(..., 4)`` corner boxes ``(x1, y1, x2, y2)``.
        b: ``(..., 4)`` corner boxes, broadcast against ``a``.

    Returns:
        The IoU per pair of boxes.
    """
    ix = ops.maximum(ops.minimum(a[..., 2], b[..., 2]) - ops.maximum(a[..., 0], b[..., 0]), 0.0)
    iy = ops.maximum(ops.minimum(a[..., 3], b[..., 3]) - ops.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = ix * iy
    area_a = ops.maximum(a[..., 2] - a[..., 0], 0.0) * ops.maximum(a[..., 3] - a[..., 1], 0.0)
    area_b = ops.maximum(b[..., 2] - b[..., 0], 0.0) * ops.maximum(b[..., 3] - b[..., 1], 0.0)
    return ops.divide_no_nan(inter, area_a + area_b - inter)


class Detection(Target):
    """One detected box of a KerasHub ``RetinaNetObjectDetector``.

    The detector's outputs are, per anchor ``a``, box deltas ``d_a``
    (``"bbox_regression"``, ``(N, A, 4)``) and class logits ``z_a``
    (``"cls_logits"``, ``(N, A, classes)``). With ``b_a`` the anchor's box
    decoded from ``d_a`` (:func:`decode_boxes`, as the detector's own
    ``decode_predictions``), the score of the box ``B`` of class ``c`` is

    ``S = sum_a [IoU(b_a, B) >= iou] * z_a,c``

    the class logits of every anchor whose decoded box overlaps ``B`` by at
    least ``iou``. The selection is a step function and carries no gradient;
    the gradient flows through the logits. An input where no anchor's box
    overlaps enough scores 0 (its map is empty, and the explainer warns).

    Args:
        box: ``(4,)`` for every input or ``(N, 4)`` per input, e.g. a box the
            detector found (``detector.predict(images)["boxes"]``).
        category: the class ``c`` of the box.
        iou: the overlap threshold, in ``(0, 1]``.
        box_format: the format of ``box`` (``"yxyx"``, ``"xyxy"``, ``"xywh"``,
            ``"center_xywh"``, ``"center_yxhw"``, ``"rel_*"``); None takes
            the detector's ``bounding_box_format``.

    Example:
        >>> from keras_cam.targets import Detection
        >>> found = detector.predict(images)          # boxes, classes, confidence
        >>> box, cls = found["boxes"][0, 0], int(found["labels"][0, 0])
        >>> maps = keras_cam.GradCAM(detector)(images[:1], targets=Detection(box, cls))
    """

    whole_outputs = True
    in_frame = True
    BOXES, LOGITS = "bbox_regression", "cls_logits"

    def __init__(self, box, category, iou=0.5, box_format=None):
        b = np.asarray(box, dtype=np.float64)
        if b.ndim not in (1, 2) or b.shape[-1] != 4:
            raise ValueError(f"`box` must be one box (4,) or one per input (N, 4); received shape {b.shape}.")
        if not np.isfinite(b).all():
            raise ValueError("`box` contains NaN or Inf.")
        _check_index("category", category, None, "")
        if int(category) < 0:
            raise ValueError(
                f"`category` must be a class index >= 0; received {category}. (The detector's "
                f"`predict` pads its results with label -1 where it found no box.)"
            )
        if isinstance(iou, bool) or not isinstance(iou, numbers.Real) or not 0 < iou <= 1:
            raise ValueError(f"`iou` must be a number in (0, 1]; received {iou!r}.")
        if box_format is not None and box_format not in _BOX_FORMATS:
            raise ValueError(f"Unknown `box_format` {box_format!r}; use one of {_BOX_FORMATS}.")
        self.box = b if b.ndim == 2 else b[None]
        self.category = int(category)
        self.iou = float(iou)
        self.box_format = box_format

    def _key(self):
        # The class travels with the batch as a value: every class shares one compiled call.
        return (self.iou,)

    def values(self, graph, images):
        model = None if graph is None else graph.model
        generator = getattr(model, "anchor_generator", None)
        if model is None or images is None:
            raise ValueError(
                "Detection needs the detector and the input batch to place its anchors; explain "
                "batches with an explainer: `keras_cam.GradCAM(detector)(images, targets=Detection(...))`."
            )
        try:
            shapes = {k: tuple(v.shape) for k, v in zip(model.output_names, model.outputs)}
        except (AttributeError, ValueError, TypeError):
            shapes = {}
        if generator is None or self.BOXES not in shapes or self.LOGITS not in shapes:
            raise ValueError(
                f"Detection explains a KerasHub RetinaNetObjectDetector: a model with an "
                f"`anchor_generator` and the outputs {self.BOXES!r} (N, anchors, 4) and "
                f"{self.LOGITS!r} (N, anchors, classes); model {model.name!r} has "
                f"{'no anchor_generator and ' if generator is None else ''}the outputs {shapes or 'unknown'}."
            )
        classes = shapes[self.LOGITS][-1]
        _check_index("category", self.category, classes, f"a detector with {classes} classes")
        height, width = int(images.shape[1]), int(images.shape[2])
        fmt = self.box_format or getattr(model, "bounding_box_format", None) or "yxyx"
        box = _rows(to_xyxy(self.box, fmt, height, width), images, "box")
        if (box[:, 2] <= box[:, 0]).any() or (box[:, 3] <= box[:, 1]).any():
            raise ValueError(
                f"`box` {self.box.tolist()} read as {fmt!r} has no area (x2 <= x1 or y2 <= y1); "
                f"give its format with `box_format=` (the detector's is "
                f"{getattr(model, 'bounding_box_format', None)!r})."
            )
        anchors = generator(ops.zeros((1, height, width, int(images.shape[3]))))
        anchors = np.concatenate([_compat.to_host(a) for a in anchors.values()], axis=0)
        anchors = to_xyxy(anchors, generator.bounding_box_format, height, width)
        expected = shapes[self.BOXES][1]
        if expected is not None and anchors.shape[0] != expected:
            raise ValueError(
                f"The detector's anchor generator places {anchors.shape[0]} anchors on a "
                f"{height}x{width} input, but its outputs have {expected}."
            )
        centred = np.stack([(anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2,
                            anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]], axis=-1)
        return np.array([self.category], np.int32), box.astype(np.float32), centred[None].astype(np.float32)

    def score(self, outputs, *values):
        if not isinstance(outputs, dict) or self.BOXES not in outputs or self.LOGITS not in outputs:
            raise ValueError(
                f"Detection needs the detector's outputs {self.BOXES!r} and {self.LOGITS!r} (a dict); "
                f"received {type(outputs).__name__}."
            )
        category, box, anchors = values
        deltas = ops.cast(outputs[self.BOXES], "float32")
        raw = ops.cast(outputs[self.LOGITS], "float32")                         # (N, anchors, classes)
        onehot = ops.one_hot(ops.reshape(ops.cast(category, "int32"), (-1, 1)), int(raw.shape[-1]), dtype="float32")
        logits = ops.sum(raw * onehot, axis=-1)                                  # (N, anchors)
        decoded = decode_boxes(anchors, deltas)
        hit = box_iou(decoded, box[:, None, :]) >= self.iou
        return ops.sum(ops.where(hit, logits, 0.0), axis=1)


# Public names of the helpers the other target modules (keras_cam.multimodal) share.
BOX_FORMATS = _BOX_FORMATS
check_index = _check_index
per_input_rows = _rows
static_output_shape = _static_output_shape

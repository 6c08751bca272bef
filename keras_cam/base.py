"""The explainer contract shared by every method.

An explainer is built once per model and target layer, and called on batches:

    maps = explainer(images, targets=None, upsample=True, normalize=True)

Everything common lives here: turning the input into a batch, validating the
targets, chunking a large batch, compiling the whole computation once per
input shape (``tf.function``), upsampling to the input size and normalizing.
A method only defines :meth:`Explainer.raw_maps`, the map at the target
layer's resolution.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings

import numpy as np
import tensorflow as tf

from keras_cam import layers as _layers
from keras_cam import layout as _layout
from keras_cam import targets as _targets
from keras_cam.graph import ActivationGraph, input_shape
from keras_cam.saved_model import GraphOp

def upsample(maps, size):
    """Resize ``(N, *s)`` maps to ``size`` (linear, bilinear or trilinear; see :func:`keras_cam.layout.resize`)."""
    return _layout.resize(maps, size)


minmax = _layout.minmax


def principal_component(x):
    """Each position's channel vector projected on the first principal axis.

    Per image, the positions of ``x`` ``(N, *s, K)`` are the samples and the
    ``K`` channels the features: the vectors are centred over the positions
    and projected on their first principal axis (the first right singular
    vector). The axis's sign is arbitrary; it is chosen so that the
    projection correlates positively with the channel sum ``sum_k x_k``.

    Returns:
        ``(N, *s)`` projections (zero-mean per image).
    """
    flat = _layout.flatten_spatial(x)
    centred = flat - tf.reduce_mean(flat, axis=1, keepdims=True)
    s, u, _ = tf.linalg.svd(centred, full_matrices=False)
    proj = u[..., 0] * s[:, :1]
    total = tf.reduce_sum(centred, axis=-1)
    sign = tf.where(tf.reduce_sum(proj * total, axis=1, keepdims=True) < 0, -1.0, 1.0)
    return tf.reshape(proj * sign, tf.shape(x)[:-1])


def _shift(x, shifts, fill):
    """``out[:, i + d] = x[:, i]`` along each spatial axis (``shifts``, one per axis);
    positions shifted in take the edge value (``fill="edge"``) or zero (``fill="zeros"``)."""
    sizes = tf.shape(x)
    pads, begin = [[0, 0]], [0]
    for d in shifts:
        pads.append([max(d, 0), max(-d, 0)])
        begin.append(max(-d, 0))
    rest = x.shape.rank - 1 - len(shifts)
    pads += [[0, 0]] * rest
    begin += [0] * rest
    padded = tf.pad(x, pads, mode="SYMMETRIC" if fill == "edge" else "CONSTANT")
    return tf.slice(padded, begin, sizes)


def _flip(x, rank):
    """Mirror the last spatial axis (the width) of ``(N, *S, ...)``."""
    return tf.reverse(x, axis=[rank])


def augmentations(size):
    """The ``aug_smooth`` transforms of an input of spatial ``size``: ``(flip, shifts)``.

    The identity and diagonal shifts by 1/32 of the smallest side (at least
    one position) each way, on every spatial axis; for images and volumes
    each with and without a horizontal flip (the last spatial axis). A signal
    is not reversed in time, which changes what most signals mean.
    """
    d = max(1, round(min(size) / 32))
    flips = (False,) if len(size) == 1 else (False, True)
    return [(flip, tuple(s for _ in size)) for flip in flips for s in (0, d, -d)]


def as_batch(images, layout=None):
    """``(images as a float32 batch in the model's format, whether one example was given)``.

    ``layout`` is the model's :class:`~keras_cam.layout.InputLayout` (2-D
    images by default): an array of its rank is a batch, one rank less is
    one example.
    """
    return (layout or _layout.InputLayout()).batch(images)


def _as_input_list(graph, inputs):
    """The inputs of a multi-input model, in the order of ``model.inputs``."""
    names = graph.input_names
    if isinstance(inputs, dict):
        missing = [n for n in names if n not in inputs]
        if missing or len(inputs) != len(names):
            raise ValueError(
                f"`images` is a dict with keys {sorted(inputs)}; model {graph.model.name!r} takes "
                f"the inputs {names}. Pass one entry per input."
            )
        return [inputs[n] for n in names]
    if isinstance(inputs, (list, tuple)) and len(inputs) == len(names):
        return list(inputs)
    raise ValueError(
        f"Model {graph.model.name!r} has {len(names)} inputs {names}: pass them all, as a list "
        f"in that order or a dict by name, as for `model.predict` (the maps explain input "
        f"{names[graph.input_index]!r}; the others are held fixed). Received "
        f"{type(inputs).__name__}{'' if not hasattr(inputs, '__len__') else f' of length {len(inputs)}'}."
    )


def read_inputs(graph, inputs):
    """The user's input as an explainer computes on it.

    Returns:
        ``(images, others, single)``: the images as a checked float32
        channels-last ``(N, *S, C)`` tensor, the other inputs of a
        multi-input model (a tuple of tensors whose rows go with the images;
        empty otherwise) and whether one example without a batch axis was given.
    """
    if not graph.multi_input:
        batch, single = as_batch(inputs, graph.inputs)
        others = ()
    else:
        parts = _as_input_list(graph, inputs)
        batch, single = as_batch(parts[graph.input_index], graph.inputs)
        others = []
        for i, (name, part, spec) in enumerate(zip(graph.input_names, parts, graph.model.inputs)):
            if i == graph.input_index:
                continue
            t = tf.convert_to_tensor(part)
            t = t[None] if single else t
            if t.dtype != spec.dtype and (t.dtype.is_floating or tf.as_dtype(spec.dtype).is_floating):
                t = tf.cast(t, spec.dtype)
            if t.shape.rank == 0 or t.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"Input {name!r} has shape {tuple(t.shape)}, but there are {int(batch.shape[0])} "
                    f"images: every input needs one row per image."
                )
            others.append(t)
        others = tuple(others)
    check_images(batch, graph.model, graph.input_index, graph.data_format == "channels_first")
    return graph.to_channels_last(batch), others, single


_PREPROCESSING = ("Rescaling", "Normalization")
# Inside a SavedModel the layers are ops named after them, e.g. "rescaling/mul".
_PREPROCESSING_OPS = re.compile(r"(^|/)(rescaling|normalization)(_\d+)*/")


def _has_preprocessing(model):
    return any(type(l).__name__ in _PREPROCESSING or (isinstance(l, GraphOp) and _PREPROCESSING_OPS.search(path))
               for path, l in _layers.walk(model))


def check_images(batch, model, index=0, channels_first=False):
    """Reject input the model cannot take, before TensorFlow fails deep inside.

    Checks the rank, the channel count and any fixed spatial size against the
    model's input ``index`` (whose format ``batch`` is in), and that every
    value is finite. Warns (it cannot know for sure) when the values look like
    raw 0-255 pixels (none negative, some above 2) and the model has no
    preprocessing layer of its own (``Rescaling``/``Normalization``).
    """
    expected = input_shape(model, index)
    if expected is not None:
        got = tuple(batch.shape[1:])
        spatial = len(expected) - 2
        if len(got) != len(expected) - 1:
            raise ValueError(
                f"`images` has shape {tuple(batch.shape)} but model {model.name!r} takes inputs "
                f"of shape {(None,) + tuple(expected[1:])}."
            )
        for axis, (g, e) in enumerate(zip(got, expected[1:]), start=1):
            if e is not None and g != e:
                what = "channels" if axis == (1 if channels_first else len(got)) else f"size on axis {axis}"
                fix = ("Resize the images (or convert gray/RGB)" if spatial == 2 else
                       "Resample or crop the inputs (or fix their channels)")
                raise ValueError(
                    f"`images` has shape {tuple(batch.shape)} but model {model.name!r} takes "
                    f"(N,) + {tuple(expected[1:])}: its {what} is {g}, the model's is {e}. {fix} "
                    f"to the model's input shape first."
                )
    values = batch.numpy()  # one host pass for all three checks (each a TF op costs more on small inputs)
    finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite).tolist()
        raise ValueError(
            f"`images` contains NaN or Inf (images {bad[:10]}); a map of such an input is "
            f"meaningless. Clean or drop those images first."
        )
    top = float(values.max())
    if top > 2.0 and float(values.min()) >= 0.0 and not _has_preprocessing(model):
        warnings.warn(
            f"`images` has values up to {top:.0f}, like raw 0-255 pixels, "
            f"and model {model.name!r} has no Rescaling/Normalization layer. If the model was "
            f"trained on scaled input ([0, 1] or [-1, 1]), preprocess the images as for "
            f"`model.predict`, or the maps explain a prediction on out-of-range input.",
            stacklevel=4,
        )


class Compiled:
    """``tf.function(fn)``, optionally run eagerly on the first call of each input signature.

    Tracing a model's forward and backward pass into a graph costs several
    eager runs of it (MobileNetV2 at 224x224: about 1 s against 0.3 s), and
    pays off only when the same signature comes back. With
    ``eager_first=True`` (what explainers use, see ``Explainer._eager_first``)
    the first call of a signature (the shapes and dtypes of the tensor
    arguments and the values of the others: what makes ``tf.function``
    retrace) runs ``fn`` eagerly: the same Python code, so the same result up
    to float rounding. From the second call of that signature on it runs
    ``tf.function(fn)``, traced once per signature. Inside another
    ``tf.function`` (a trace) the compiled function is always called.

    The function is compiled without AutoGraph, unless the model's own code
    needs it. keras-cam's code has no tensor-dependent Python control flow
    (Score-CAM calls ``tf.while_loop`` itself), and converting it with
    AutoGraph is about a third of a trace's time (EfficientNetB0: 6.6 s with,
    3.9 s without). A model whose ``call`` branches on tensor values in
    Python does need AutoGraph: its trace raises
    ``OperatorNotAllowedInGraphError``, and from then on this function is
    compiled with AutoGraph. If that trace raises it too (a Keras 3 layer's
    ``call`` is never converted), the function runs eagerly from then on,
    with a warning.

    Args:
        fn: the computation, traceable, with tensor and hashable Python arguments.
        eager_first: run the first call of each signature eagerly; False (the
            default) compiles from the first call.
    """

    # Signatures remembered as run once; beyond this many the memory is reset
    # (a signature then runs eagerly once more: never wrong, only slower).
    _MAX_SEEN = 64

    def __init__(self, fn, eager_first=False):
        self._fn = fn
        self._function = tf.function(fn, autograph=False)
        self._converted = None
        self._eager_only = False
        self._seen = set() if eager_first else None

    def __call__(self, *args):
        if self._seen is not None and tf.executing_eagerly():
            key = signature(args)
            if key not in self._seen:
                if len(self._seen) >= self._MAX_SEEN:
                    self._seen.clear()
                self._seen.add(key)
                return self._fn(*args)
        if self._eager_only:
            return self._fn(*args)
        if self._converted is None:
            try:
                return self._function(*args)
            except tf.errors.OperatorNotAllowedInGraphError:
                self._converted = tf.function(self._fn)
        try:
            return self._converted(*args)
        except tf.errors.OperatorNotAllowedInGraphError as err:
            self._eager_only = True
            warnings.warn(
                f"The model cannot be compiled, even with AutoGraph: its `call` uses a tensor as a "
                f"Python bool ({' '.join(str(err).split())[:200]}). It runs eagerly from now on: the "
                f"same maps, more slowly. Write the branch with tf.cond or tf.where to compile it.",
                stacklevel=4,
            )
            return self._fn(*args)

    def experimental_get_tracing_count(self):
        """How many times the function was traced (eager runs are not traces)."""
        return sum(f.experimental_get_tracing_count() for f in (self._function, self._converted) if f is not None)


def signature(args):
    """What makes ``tf.function`` trace anew: each tensor's shape and dtype, each
    other value itself (by identity when it cannot be hashed)."""
    key = []
    for a in tf.nest.flatten(args):
        if tf.is_tensor(a) or isinstance(a, np.ndarray):
            key.append((tuple(a.shape), a.dtype.name))
        else:
            try:
                hash(a)
                key.append((type(a), a))
            except TypeError:
                key.append((type(a), id(a)))
    return tuple(key)


@dataclasses.dataclass
class Explanation:
    """What an explainer computed for a batch.

    Attributes:
        maps: float32 maps ``(N, *S)``: ``(N, T)`` for signals, ``(N, H, W)`` for
            images, ``(N, D, H, W)`` for volumes (no batch axis when one
            example was given).
        targets: ``(N,)`` class index explained per image (None for target objects and callables).
        scores: ``(N,)`` the score ``S`` that was explained (a logit when linearized).
        probabilities: ``(N,)`` probability of the target class (None for target objects and callables).
    """

    maps: np.ndarray
    targets: np.ndarray | None
    scores: np.ndarray
    probabilities: np.ndarray | None


def _warn_empty_maps(maps, explainer):
    empty = np.flatnonzero(maps.reshape(len(maps), -1).max(axis=1) == 0)
    if len(empty):
        where = f"at layer {explainer.layer_path!r}" if explainer.layer_path else "in the input"
        layer = ", a shallower layer" if explainer.layer_path else ""
        warnings.warn(
            f"{type(explainer).__name__}: the maps of images {empty[:10].tolist()} are all zeros: "
            f"nothing {where} raises the explained score (or the "
            f"score carries no gradient, e.g. a saturated probability with linearize=False). "
            f"Try another target{layer}, or linearize=True.",
            stacklevel=4,
        )


class Explainer:
    """Base of every explainer.

    Args:
        model: a Keras model (functional, Sequential, subclassed, nested). It is
            never modified.
        layer: the target layer: a name, a path through nested models
            (``"base/top_activation"``), a layer object, or None for the last
            spatial layer of the whole computation.
        output: for multi-output models, the output (index or name) whose
            class scores ``targets`` refers to.
        linearize: differentiate / score the logit before a final softmax or
            sigmoid (recommended; the papers' definition).
        batch_size: images per compiled call; larger batches are chunked.
        aug_smooth: average the maps of the image, its horizontal flip and
            small shifts (:func:`augmentations`), each transformed back; six
            passes instead of one.
        eigen_smooth: for methods whose map is ``ReLU(sum_k w_k A^k)``, use
            ``ReLU`` of the first principal component of ``w_k A^k`` instead
            (:meth:`reduce_channels`).
        image_input: for a multi-input model, the input (index or name) whose
            images are explained; None picks its only 4-D input (else its
            only input with spatial axes). The call then takes all inputs (a
            list or dict, as ``model.predict``) and holds the others fixed.
        data_format: ``"channels_first"`` for a model that takes
            ``(N, C, *S)`` inputs; None infers it from the model's layers.
            Maps are ``(N, *S)`` either way.
        reshape: for a token layer ``(N, L, K)`` of a vision transformer, its
            patch grid: None infers it from the input's aspect ratio and the
            token count (dropping up to 8 leading class/register tokens), a
            ``(h, w)`` pair sets it (the leading ``L - h w`` tokens are
            dropped), a callable ``(N, L, K) -> (N, h, w, K)`` replaces it
            (applied to activations and gradients alike).

    Inputs and maps follow the model's layout (:mod:`keras_cam.layout`): a
    signal model takes ``(N, T, C)`` and gives ``(N, T)`` maps, an image
    model ``(N, H, W, C)`` and ``(N, H, W)``, a volume model
    ``(N, D, H, W, C)`` and ``(N, D, H, W)``.
    """

    # Whether the method's map is a sum of weighted channels, so that
    # ``eigen_smooth`` (the weighted channels' principal component) applies.
    _weights_channels = False

    # Whether the first call of an input shape runs eagerly (see :class:`Compiled`).
    _eager_first = True

    # Whether the method reads a target layer (the attributions at the input do not).
    uses_layer = True

    def __init__(self, model, layer=None, *, output=None, linearize=True, batch_size=32,
                 aug_smooth=False, eigen_smooth=False, image_input=None, data_format=None, reshape=None):
        if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
            raise ValueError(f"`batch_size` must be a positive int or None; received {batch_size!r}.")
        if eigen_smooth and not self._weights_channels:
            raise ValueError(
                f"`eigen_smooth` takes the principal component of weighted channels; "
                f"{type(self).__name__} does not weight channels, so it does not apply."
            )
        self.graph = ActivationGraph(model, self._layer_specs(layer), output=output, linearize=linearize,
                                     image_input=image_input, data_format=data_format, reshape=reshape)
        self.batch_size = batch_size
        self.aug_smooth = bool(aug_smooth)
        self.eigen_smooth = bool(eigen_smooth)
        self._functions = {}
        self._prepared = False

    def _layer_specs(self, layer):
        """The target layers to capture: one; a method that fuses several layers overrides this."""
        return [layer]

    @property
    def model(self):
        """The model being explained (never modified)."""
        return self.graph.model

    @property
    def layer(self):
        """The target layer object (None until chosen, for models of unknown input size)."""
        return self.graph.layers[0] if self.graph.layers else None

    @property
    def layer_path(self):
        """The target layer's path, e.g. ``"efficientnetb0/top_activation"``."""
        return self.graph.paths[0] if self.graph.paths else None

    @property
    def layer_paths(self):
        """The paths of all target layers (several for a multi-layer Layer-CAM)."""
        return list(self.graph.paths)

    @property
    def tracing_count(self):
        """How many times the compiled computation was traced (once per input shape)."""
        return sum(f.experimental_get_tracing_count() for f in self._functions.values())

    def __repr__(self):
        return f"{type(self).__name__}(model={self.model.name!r}, layer={self.layer_path!r})"

    def __call__(self, images, targets=None, upsample=True, normalize=True):
        """Maps for ``images``: ``(N, H, W)`` float32, or ``(H, W)`` for one image.

        Args:
            images: one image ``(H, W, C)`` or a batch ``(N, H, W, C)``, numpy or
                tensor, preprocessed as the model expects.
            targets: None (top-1), an int, one int per image, a target object
                (``keras_cam.targets.Segmentation``, ``Detection``, ``Similarity``,
                ``Regression``) or a callable ``f(outputs) -> (N,)``; see
                :mod:`keras_cam.targets`.
            upsample: resize maps bilinearly to the input's height and width.
            normalize: scale each map to [0, 1] (constant maps become zeros).
        """
        return self.explain(images, targets, upsample=upsample, normalize=normalize).maps

    def explain(self, images, targets=None, upsample=True, normalize=True) -> Explanation:
        """Like calling the explainer, but also returns the targets and scores."""
        if self.aug_smooth and not upsample:
            raise ValueError(
                "`aug_smooth` averages maps at the input resolution (that is where a flip or "
                "shift is undone exactly); call with upsample=True."
            )
        batch, others, single, target, values, idx = self.read_call(images, targets)
        fn, n = self._function(target), int(batch.shape[0])
        step = min(self.batch_size or n, n)

        def rows(x, i):  # one chunk of a batch (the batch itself when it is one chunk)
            return x if step == n else x[i:i + step]
        parts = [
            fn(rows(batch, i), tf.constant(idx[i:i + step]), bool(upsample), bool(normalize),
               tuple(rows(o, i) for o in others), tuple(v if v.shape[0] == 1 else rows(v, i) for v in values))
            for i in range(0, n, step)
        ]
        maps, scores, used, probs = (np.concatenate([p[k].numpy() for p in parts]) for k in range(4))
        if target is not None:
            used = probs = None
        if normalize:
            _warn_empty_maps(maps, self)
        if single:
            maps = maps[0]
        return Explanation(maps=maps, targets=used, scores=scores, probabilities=probs)

    def read_call(self, images, targets):
        """The checked input and targets of a call, before anything is compiled.

        Reads the input (:func:`read_inputs`), makes the automatic choices
        once per explainer (:meth:`prepare`) and reads ``targets``.

        Returns:
            ``(batch, others, single, target, values, idx)``: the images and
            the held inputs as :func:`read_inputs` returns them, the target
            object (None for classes), its per-input arrays as tensors, and
            ``(N,)`` int32 classes (``targets.TOP1`` for top-1 and for target objects).
        """
        batch, others, single = read_inputs(self.graph, images)
        if not self._prepared:  # automatic choices, once per explainer
            self.prepare(self.graph.assemble(self.graph.to_model_format(batch[:1]), [o[:1] for o in others]))
            self._prepared = True
        n = int(batch.shape[0])
        target = _targets.as_target(targets)
        if target is None:
            return batch, others, single, None, [], _targets.class_indices(targets, n, self.graph.num_classes)
        # Checked before tracing; its arrays travel with the batch.
        if self.aug_smooth and target.in_frame:
            raise ValueError(
                f"`aug_smooth` explains flipped and shifted copies of the input, where the "
                f"{type(target).__name__} target's mask or box no longer sits on the same "
                f"pixels; explain it without aug_smooth."
            )
        values = [tf.constant(v) for v in target.values(self.graph, batch)]
        return batch, others, single, target, values, np.full((n,), _targets.TOP1, np.int32)

    def _function(self, target_fn):
        """The compiled computation for class targets (key None) or one target object
        (equal targets, e.g. the same callable, share it)."""
        if target_fn not in self._functions:
            callables = [k for k in self._functions if k is not None]
            if len(callables) >= 8:  # callables made per call must not pile up traces
                del self._functions[callables[0]]
            self._functions[target_fn] = Compiled(functools.partial(self._held_compute, target_fn=target_fn),
                                                  eager_first=self._eager_first)
        return self._functions[target_fn]

    def _held_compute(self, images, class_idx, upsample_, normalize_, others, values, target_fn=None):
        with self.graph.holding(others):
            return self.compute(images, class_idx, upsample_, normalize_, _targets.bind(target_fn, values))

    def prepare(self, sample):
        """Choose automatic layers (one probe run on ``sample``, one input as
        the model takes it) before the first compiled call."""
        self.graph.prepare(sample)

    def compute(self, images, class_idx, upsample_, normalize_, target_fn=None):
        """The whole computation for one batch, traceable: what :meth:`explain`
        compiles, and what :func:`keras_cam.explain_dataset` runs per replica.

        Args:
            images: channels-last float32 ``(n, H, W, C)`` (see
                ``ActivationGraph.to_channels_last``).
            class_idx: ``(n,)`` int32 classes, ``targets.TOP1`` for top-1.
            upsample_: resize the maps to the input size, as ``upsample`` in :meth:`__call__`.
            normalize_: scale each map to [0, 1], as ``normalize`` in :meth:`__call__`.
            target_fn: a target object or callable (see :mod:`keras_cam.targets`;
                :meth:`explain` passes it bound to its per-input arrays), or
                None for class targets.

        Returns:
            ``(maps, scores, classes used, probabilities)``, one row per image.
        """
        if self.aug_smooth:
            maps, outputs = self._smoothed_maps(images, class_idx, target_fn)
        else:
            maps, outputs = self.raw_maps(images, class_idx, target_fn)
            maps = tf.cast(maps, tf.float32)
            if upsample_:
                maps = upsample(maps, tf.shape(images)[1:-1])
        scores, idx, probs = outputs
        if normalize_:
            maps = minmax(maps)
        return maps, scores, idx, probs

    def _smoothed_maps(self, images, class_idx, target_fn):
        """``aug_smooth``: the mean over :func:`augmentations` of each transformed
        image's map, upsampled and transformed back; a pixel a shift moved out
        of the frame is averaged over the transforms that still see it. The
        class is the one chosen on the untransformed images."""
        size = tf.shape(images)[1:-1]
        rank = images.shape.rank - 2
        total = count = outputs = None
        for flip, shifts in augmentations(images.shape[1:-1]):
            x = _shift(_flip(images, rank) if flip else images, shifts, "edge")
            maps, scored = self.raw_maps(x, class_idx, target_fn)
            if outputs is None:
                outputs, class_idx = scored, scored[1]
            back = tuple(-d for d in shifts)
            maps = _shift(upsample(tf.cast(maps, tf.float32), size), back, "zeros")
            seen = _shift(tf.ones_like(maps), back, "zeros")
            if flip:
                maps, seen = _flip(maps, rank), _flip(seen, rank)
            total = maps if total is None else total + maps
            count = seen if count is None else count + seen
        return total / count, outputs

    def reduce_channels(self, weighted):
        """The map from weighted channels ``w_k A^k`` ``(N, h, w, K)``: ``ReLU(sum_k w_k A^k)``.

        With ``eigen_smooth``, ``ReLU`` of their first principal component
        instead (:func:`principal_component`), which keeps the dominant
        pattern and drops the noise of the other components.
        """
        if self.eigen_smooth:
            return tf.nn.relu(principal_component(weighted))
        return tf.nn.relu(tf.reduce_sum(weighted, axis=-1))

    def target_scores(self, outputs, class_idx, target_fn=None):
        """``(S, idx, p)``: the explained score per image, the class used, its probability
        (for a target object or callable: its score, ``TOP1`` and 0)."""
        if target_fn is not None:
            s = _targets.score(target_fn, outputs, self.graph)
            return s, tf.fill(tf.shape(s), _targets.TOP1), tf.zeros_like(s)
        scores = self.graph.scores(outputs)
        self.graph.num_classes = int(scores.shape[-1])
        s, idx = _targets.select(scores, class_idx)
        probs = tf.gather(self.graph.probabilities(scores), idx, batch_dims=1)
        return s, idx, probs

    def raw_maps(self, images, class_idx, target_fn=None):
        """The method: ``(maps (N, h, w) at the layer's resolution, target_scores(...))``.

        Runs inside the compiled function; subclasses define it.
        """
        raise NotImplementedError

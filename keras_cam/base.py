"""The explainer contract shared by every method.

An explainer is built once per model and target layer, and called on batches:

    maps = explainer(images, targets=None, upsample=True, normalize=True)

Everything common lives here: turning the input into a batch, validating the
targets, chunking a large batch, compiling the whole computation once per
input signature (through :mod:`keras_cam.compiled`), upsampling to the input size and normalizing.
A method only defines :meth:`Explainer.raw_maps`, the map at the target
layer's resolution.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np

from keras_cam import _compat
from keras_cam import layout as _layout
from keras_cam import targets as _targets
from keras_cam._compat import ops
from keras_cam.compiled import Compiled
from keras_cam.graph import ActivationGraph
from keras_cam.inputs import as_batch, check_images, read_inputs  # noqa: F401  (public here too)

def upsample(maps, size):
    """Resize ``(N, *s)`` maps to ``size`` (linear, bilinear or trilinear; see :func:`keras_cam.layout.resize`)."""
    return _layout.resize(maps, size)


minmax = _layout.minmax


def finish(maps, size, upsample_, normalize_):
    """What every map goes through last: ``float32``, resized to ``size`` when ``upsample_``
    (:func:`upsample`; maps already of that size, e.g. a pixel attribution's or ``aug_smooth``'s,
    pass unchanged), scaled per map to [0, 1] when ``normalize_`` (:func:`minmax`)."""
    maps = ops.cast(maps, "float32")
    if upsample_:
        maps = upsample(maps, size)
    return minmax(maps) if normalize_ else maps


_FINISHERS = {}


def _finisher(size):
    """:func:`finish` to ``size``, compiled once per process and shared by every explainer: an
    explainer's own compiled call stops at the raw maps, so it does not compile the resize and the
    scaling again (on JAX, about a quarter of a small model's Grad-CAM compilation)."""
    size = tuple(int(v) for v in size)
    fn = _FINISHERS.get(size)
    if fn is None:
        if len(_FINISHERS) >= 64:  # many input sizes: keep the cache bounded
            _FINISHERS.clear()
        fn = _FINISHERS[size] = Compiled(lambda maps, up, norm: finish(maps, size, up, norm), eager_first=True)
    return fn


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
    centred = flat - ops.mean(flat, axis=1, keepdims=True)
    u, s, _ = ops.svd(centred, full_matrices=False)
    proj = u[..., 0] * s[:, :1]
    total = ops.sum(centred, axis=-1)
    sign = ops.where(ops.sum(proj * total, axis=1, keepdims=True) < 0, -1.0, 1.0)
    return ops.reshape(proj * sign, (-1,) + tuple(int(d) for d in x.shape[1:-1]))


def pooled_channels(a):
    """A feature map ``(N, *s, K)`` pooled over its positions: ``(N, 2K)`` float32, column ``k``
    channel ``k``'s mean ``mean_ij A^k_ij``, column ``K + k`` its maximum ``max_ij A^k_ij``."""
    a = ops.cast(a, "float32")
    axes = _layout.spatial_axes(a)
    return ops.concatenate([ops.mean(a, axis=axes), ops.max(a, axis=axes)], axis=-1)


def _shift(x, shifts, fill):
    """``out[:, i + d] = x[:, i]`` along each spatial axis (``shifts``, one per axis);
    positions shifted in take the edge value (``fill="edge"``) or zero (``fill="zeros"``)."""
    if not any(shifts):
        return x
    pads, index = [(0, 0)], [slice(None)]
    for d, n in zip(shifts, x.shape[1:]):
        pads.append((max(d, 0), max(-d, 0)))
        index.append(slice(max(-d, 0), max(-d, 0) + int(n)))
    pads += [(0, 0)] * (len(x.shape) - 1 - len(shifts))
    padded = ops.pad(x, pads, mode="symmetric" if fill == "edge" else "constant")
    return padded[tuple(index)]


def _flip(x, rank):
    """Mirror the last spatial axis (the width) of ``(N, *S, ...)``."""
    return ops.flip(x, axis=rank)


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
        features: ``(pooled (N, 2K), class scores (N, C))`` when asked for
            (``keras_cam.explain_dataset(..., features=True)``, see :meth:`Explainer.pooled_features`), else None.
    """

    maps: np.ndarray
    targets: np.ndarray | None
    scores: np.ndarray
    probabilities: np.ndarray | None
    features: tuple | None = None


def _warn_empty_maps(maps, explainer, scores=None):
    if scores is not None and not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        warnings.warn(
            f"{type(explainer).__name__}: the explained score is not finite (NaN or Inf) for images "
            f"{bad[:10].tolist()}, so their maps mean nothing. Check the target (a callable target "
            f"that divides by zero or takes a log of 0) and the model's output for those images.",
            stacklevel=4,
        )
    finite = np.ones(len(maps), bool) if scores is None else np.isfinite(scores)
    empty = np.flatnonzero((maps.reshape(len(maps), -1).max(axis=1) == 0) & finite)
    if len(empty) and explainer.empty_maps_hint:
        warnings.warn(
            f"{type(explainer).__name__}: the maps of images {empty[:10].tolist()} are all zeros: "
            f"{explainer.empty_maps_hint}",
            stacklevel=4,
        )
    elif len(empty):
        where = f"at layer {explainer.layer_path!r}" if explainer.layer_path else "in the input"
        layer = ", a shallower layer" if explainer.layer_path else ""
        tries = f"another target{layer}, or linearize=True" if not explainer.graph.linearize else \
            f"another target{' or' + layer[1:] if layer else ''}"
        warnings.warn(
            f"{type(explainer).__name__}: the maps of images {empty[:10].tolist()} are all zeros: "
            f"nothing {where} raises the explained score (or the "
            f"score carries no gradient, e.g. a saturated probability with linearize=False). "
            f"Try {tries}." + explainer.graph.output_spec.implicit_note(),
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

    # Whether the first call of an input shape runs eagerly (TensorFlow; see :mod:`keras_cam.compiled`).
    _eager_first = True

    # Whether the method reads a target layer (the attributions at the input do not).
    uses_layer = True
    #: Why this method's map can be all zeros and what to try, for the warning (None: the gradient methods' text).
    empty_maps_hint = None

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
    def shares_finisher(self):
        """Whether the maps are resized and scaled by a finisher compiled once per input size and
        shared by every explainer (methods that keep the base class's :meth:`compute`), so the
        explainer's own compiled call stops at the raw maps and is the same for every
        ``upsample``/``normalize`` option."""
        return type(self).compute is Explainer.compute

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
        # With the base class's compute, the explainer's compiled call stops at the raw maps and the
        # shared finisher resizes and scales them (the same operations, compiled once per size).
        shared = self.shares_finisher
        finisher = _finisher(batch.shape[1:-1]) if shared else None

        def rows(x, i):  # one chunk of a batch (the batch itself when it is one chunk)
            return x if step == n else x[i:i + step]

        def chunk(i):
            out = fn(rows(batch, i), ops.convert_to_tensor(idx[i:i + step]), bool(upsample) and not shared,
                     bool(normalize) and not shared, tuple(rows(o, i) for o in others),
                     tuple(v if v.shape[0] == 1 else rows(v, i) for v in values))
            if shared:
                out = (finisher(out[0], bool(upsample), bool(normalize)),) + tuple(out[1:])
            return out
        parts = [chunk(i) for i in range(0, n, step)]
        maps, scores, used, probs = (np.concatenate([_compat.to_host(p[k]) for p in parts]) for k in range(4))
        if target is not None:
            used = probs = None
        self.graph.check_probabilities(scores, probs)
        if normalize:
            _warn_empty_maps(maps, self, scores)
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
        values = [ops.convert_to_tensor(v) for v in target.values(self.graph, batch)]
        return batch, others, single, target, values, np.full((n,), _targets.TOP1, np.int32)

    def _function(self, target_fn):
        """The compiled computation for class targets (key None) or one target object
        (equal targets, e.g. the same callable, share it)."""
        if target_fn not in self._functions:
            callables = [k for k in self._functions if k is not None]
            if len(callables) >= 8:  # callables made per call must not pile up traces
                del self._functions[callables[0]]
            self._functions[target_fn] = Compiled(functools.partial(self._held_compute, target_fn=target_fn),
                                                  model=self.model,
                                                  eager_first=self._eager_first,
                                                  once=isinstance(target_fn, _targets.Function))
        return self._functions[target_fn]

    def _held_compute(self, images, class_idx, upsample_, normalize_, others, values, target_fn=None):
        with self.graph.holding(others):
            return self.compute(images, class_idx, upsample_, normalize_, _targets.bind(target_fn, values))

    def prepare(self, sample):
        """Choose automatic layers (one probe run on ``sample``, one input as
        the model takes it) before the first compiled call."""
        self.graph.prepare(sample)

    #: Whether :meth:`raw_maps_and_features` reads the features from the maps' own forward pass
    #: (no second pass); see :class:`keras_cam.methods.gradient.GradientExplainer`.
    fuses_features = False

    def compute(self, images, class_idx, upsample_, normalize_, target_fn=None, features=False):
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
            features: also return the images' features (:meth:`pooled_features`), from the
                maps' own forward pass where the method allows it (:attr:`fuses_features`).
                The maps are the same either way.

        Returns:
            ``(maps, scores, classes used, probabilities)``, one row per image; with
            ``features``, then ``(pooled (n, 2K), class scores (n, C))`` (:meth:`pooled_features`).
        """
        extra = ()
        if self.aug_smooth:
            maps, outputs = self._smoothed_maps(images, class_idx, target_fn)
            if features:
                extra = tuple(self.pooled_features(images))
        else:
            if features:
                maps, outputs, extra = self.raw_maps_and_features(images, class_idx, target_fn)
                extra = tuple(extra)
            else:
                maps, outputs = self.raw_maps(images, class_idx, target_fn)
        scores, idx, probs = outputs
        maps = finish(maps, images.shape[1:-1], upsample_, normalize_)
        return (maps, scores, idx, probs) + extra

    def pooled_features(self, images):
        """``(pooled, scores)`` of channels-last ``images``, traceable: the first target layer's
        activations pooled over positions (:func:`pooled_channels`, ``(n, 2K)``) and the class
        scores ``(n, C)`` (``ActivationGraph.scores``), from one forward pass."""
        raw, layouts, outputs = self.graph.capture(images)
        return pooled_channels(layouts[0].view(raw[0])), self.graph.scores(outputs)

    def raw_maps_and_features(self, images, class_idx, target_fn=None):
        """``(maps, target_scores, (pooled, scores))``: :meth:`raw_maps` and :meth:`pooled_features` of the
        same images. Here a second forward pass; a method whose own pass already holds the target
        layer's activations and the model's outputs reads them from it (:attr:`fuses_features`)."""
        maps, scored = self.raw_maps(images, class_idx, target_fn)
        return maps, scored, self.pooled_features(images)

    def _smoothed_maps(self, images, class_idx, target_fn):
        """``aug_smooth``: the mean over :func:`augmentations` of each transformed
        image's map, upsampled and transformed back; a pixel a shift moved out
        of the frame is averaged over the transforms that still see it. The
        class is the one chosen on the untransformed images."""
        size = images.shape[1:-1]
        rank = len(images.shape) - 2
        total = count = outputs = None
        for flip, shifts in augmentations(images.shape[1:-1]):
            x = _shift(_flip(images, rank) if flip else images, shifts, "edge")
            maps, scored = self.raw_maps(x, class_idx, target_fn)
            if outputs is None:
                outputs, class_idx = scored, scored[1]
            back = tuple(-d for d in shifts)
            maps = _shift(upsample(ops.cast(maps, "float32"), size), back, "zeros")
            seen = _shift(ops.ones_like(maps), back, "zeros")
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
            return ops.relu(principal_component(weighted))
        return ops.relu(ops.sum(weighted, axis=-1))

    def target_scores(self, outputs, class_idx, target_fn=None):
        """``(S, idx, p)``: the explained score per image, the class used, its probability
        (for a target object or callable: its score, ``TOP1`` and 0)."""
        if target_fn is not None:
            s = _targets.score(target_fn, outputs, self.graph)
            return s, ops.full(ops.shape(s), _targets.TOP1, dtype="int32"), ops.zeros_like(s)
        scores = self.graph.scores(outputs)
        self.graph.num_classes = int(scores.shape[-1])
        s, idx = _targets.select(scores, class_idx)
        probs = ops.take_along_axis(self.graph.probabilities(scores), idx[:, None], axis=1)[:, 0]
        return s, idx, probs

    def raw_maps(self, images, class_idx, target_fn=None):
        """The method: ``(maps (N, h, w) at the layer's resolution, target_scores(...))``.

        Runs inside the compiled function; subclasses define it.
        """
        raise NotImplementedError

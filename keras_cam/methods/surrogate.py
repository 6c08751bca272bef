"""Surrogate models: LIME and KernelSHAP attribute the score to superpixels by a weighted linear fit.

Notation (per input): ``x`` is the input seen channels-last, ``(*S, C)``;
its superpixels are integer labels ``L`` ``(*S)`` in ``0 .. K-1``; ``b`` is
the baseline (the fill of what is hidden). A *coalition* ``z`` in
``{0, 1}^K`` keeps superpixel ``k`` where ``z_k = 1`` and hides it elsewhere:

    h(z) = b + z[L] * (x - b)          f(z) = S(h(z))

with ``S`` the explained score (the pre-softmax logit of the target class by
default, or a target object's / callable's score). Each method draws
coalitions ``z_j`` with weights ``pi_j``, runs the model on ``h(z_j)`` and
fits ``f(z) ~ phi_0 + sum_k phi_k z_k`` by weighted least squares; the map
paints ``phi_k`` on the pixels of superpixel ``k``. No gradients are used:
the methods need only ``model(x)``.

The masked inputs are ``(image, coalition)`` pairs streamed ``batch_size`` at
a time inside the explainer's compiled function
(:class:`~keras_cam.methods.streaming.StreamingExplainer`). Each batch adds
its terms ``pi z z^T`` and ``pi f z`` to a ``(K+1) x (K+1)`` normal-equation
matrix per image, so neither the masked inputs nor their scores are kept:
memory does not grow with the number of coalitions. The small solve runs on
the host in float64 (numpy's least squares), also from inside the compiled
call (``keras_cam.backend.host_function``). Coalition ``j`` depends
only on ``(seed, j)`` (:func:`keras_cam.random.normal`) and the superpixels,
so an image gets the same map alone or in any batch, on any backend.

Superpixels: by default SLIC (Achanta et al. 2012, scikit-image's ``slic``)
on each input min-max scaled to [0, 1], run on the host (also from inside a
compiled call, see ``keras_cam.backend.host_function``); images and volumes
only. ``segments=`` replaces it by a fixed integer label array or a callable.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from keras_cam import _compat
from keras_cam import backend as _backend
from keras_cam import random as _random
from keras_cam import targets as _targets
from keras_cam._compat import ops
from keras_cam.inputs import baseline_inputs, check_baseline, read_inputs
from keras_cam.methods.streaming import StreamingExplainer, check_positive_int, check_seed, grid

# SLIC is rerun with ten times the compactness (more regular superpixels) when it
# finds fewer than this fraction of the superpixels asked for (a noisy input).
_SLIC_RETRIES = 2

# Exact Shapley-kernel weights need C(K, s); enumeration is exact only for K <= 31.
_BINOMIAL = np.array([[math.comb(k, s) for s in range(32)] for k in range(32)], np.float64)


def _number(name, value, what, minimum=0.0, strict=True):
    """``value`` as a float ``> minimum`` (``>=`` unless ``strict``); anything else is a ValueError."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and math.isfinite(float(value)) and (value > minimum if strict else value >= minimum))
    if not ok:
        sign = ">" if strict else ">="
        raise ValueError(f"`{name}` must be a finite number {sign} {minimum:g} ({what}); received {value!r}.")
    return float(value)


def relabel(labels):
    """Integer labels renumbered ``0 .. K-1`` in the order of their values (int32, same shape)."""
    labels = np.asarray(labels)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)


def merge_smallest(labels, capacity):
    """Merge the smallest superpixel into the neighbour it touches most (ties: the lower
    label), until at most ``capacity`` remain; labels ``0 .. K-1`` in, the same out."""
    labels = relabel(labels)
    while labels.max() + 1 > capacity:
        small = int(np.argmin(np.bincount(labels.ravel())))
        touching = []
        for axis in range(labels.ndim):
            a = np.moveaxis(labels, axis, 0)
            for u, v in ((a[1:], a[:-1]), (a[:-1], a[1:])):
                touching.append(v[(u == small) & (v != small)])
        touching = np.concatenate(touching)
        if not len(touching):
            break
        counts = np.bincount(touching)
        labels = relabel(np.where(labels == small, int(np.argmax(counts)), labels))
    return labels


def slic_superpixels(image, n_segments, compactness):
    """SLIC superpixels of one channels-last input ``(*S, C)`` (``S`` 2-D or 3-D): labels ``0 .. K-1``, ``K <= n_segments``.

    The input is min-max scaled to [0, 1] over all its values (no colour
    conversion: a preprocessed input is no RGB image). When SLIC finds fewer
    than a quarter of ``n_segments`` (a noisy input, whose colour clusters
    fragment and are merged away), it is rerun with ten times the
    compactness, up to twice; more than ``n_segments`` superpixels (SLIC's
    count is approximate) are merged smallest first (:func:`merge_smallest`).
    """
    from skimage.segmentation import slic

    image = np.asarray(image, np.float64)
    lo, hi = float(image.min()), float(image.max())
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    enough = min(n_segments, max(2, n_segments // 4))
    for attempt in range(_SLIC_RETRIES + 1):
        labels = slic(scaled, n_segments=n_segments, compactness=compactness * 10 ** attempt, start_label=0,
                      channel_axis=-1, convert2lab=False)
        if len(np.unique(labels)) >= enough:
            break
    return merge_smallest(labels, n_segments)


class SurrogateExplainer(StreamingExplainer):
    """Base of LIME and KernelSHAP: superpixels, coalitions streamed through the model, a weighted fit.

    Subclasses define the coalitions and their weights (:meth:`draw`),
    the terms each masked pass adds to the fit (:meth:`terms`) and the solve
    (:meth:`solve`). See the module docstring for the notation.
    """

    uses_layer = False
    empty_maps_hint = (
        "every part of the input moved the explained score by the same amount (often not at all), so "
        "none stands out. Try another target, a baseline further from the input, or fewer, larger "
        "superpixels."
    )

    def __init__(self, model, layer=None, *, segments=None, n_segments=50, compactness=0.1, baseline=None,
                 seed=0, output=None, linearize=True, batch_size=32, verbose=0, image_input=None,
                 data_format=None, aug_smooth=False, eigen_smooth=False, reshape=None):
        name = type(self).__name__
        if layer is not None:
            raise ValueError(
                f"{name} attributes the score to superpixels of the input: it has no target layer. "
                f"Leave `layer` None; received layer={layer!r}."
            )
        if aug_smooth:
            raise ValueError(
                f"`aug_smooth` does not apply to {name}: its maps are already at the input resolution, "
                f"one value per superpixel. For a steadier map raise the number of coalitions."
            )
        n_segments = check_positive_int("n_segments", n_segments, "the most superpixels per input")
        compactness = _number("compactness", compactness, "SLIC's balance of space against colour")
        seed = check_seed(seed)
        super().__init__(model, None, output=output, linearize=linearize, batch_size=batch_size, verbose=verbose,
                         eigen_smooth=eigen_smooth, image_input=image_input, data_format=data_format,
                         reshape=reshape)
        self.n_segments, self.compactness, self.seed = n_segments, compactness, seed
        self.segments = self._check_segments(segments)
        self.baseline = self._check_baseline(baseline)

    def _layer_specs(self, layer):
        return []  # the model is only called

    # ------------------------------------------------------------------ superpixels

    def _spatial_shape(self):
        """One input's spatial shape as the model declares it (None entries free), or None."""
        shape = self.graph.inputs.shape
        if shape is None:
            return None
        return tuple(shape[1:]) if self.graph.inputs.channels_first else tuple(shape[:-1])

    def _check_segments(self, segments):
        name, layout = type(self).__name__, self.graph.inputs
        if segments is None:
            if layout.rank == 1:
                raise ValueError(
                    f"{name}'s default superpixels (SLIC) need 2-D images or 3-D volumes; model "
                    f"{self.model.name!r} takes 1-D signals. Pass `segments=`: an integer label array of "
                    f"one signal's length (e.g. `np.arange(T) // 8`, windows of 8 steps) or a callable "
                    f"signal -> labels; or use Occlusion, which slides a window along the signal."
                )
            if importlib.util.find_spec("skimage") is None:
                raise ImportError(
                    f"{name}'s default superpixels are scikit-image's SLIC: `pip install scikit-image`, "
                    f"or pass `segments=` (a label array or a callable)."
                )
            self.capacity = self.n_segments
            return None
        if callable(segments):
            self.capacity = self.n_segments
            return segments
        labels = np.asarray(segments)
        if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"`segments` must be None (SLIC superpixels), an integer label array of one input's spatial "
                f"shape, or a callable input -> labels; received an array of dtype {labels.dtype}."
                if hasattr(segments, "shape") or isinstance(segments, (list, tuple)) else
                f"`segments` must be None (SLIC superpixels), an integer label array of one input's spatial "
                f"shape, or a callable input -> labels; received {type(segments).__name__}."
            )
        expected = self._spatial_shape()
        if labels.ndim != layout.rank or (expected is not None and not all(
                e is None or e == s for e, s in zip(expected, labels.shape))):
            want = expected if expected is not None else f"{layout.rank} spatial axes"
            raise ValueError(
                f"`segments` has shape {labels.shape}; it must label each position of one input, "
                f"shape {want} for model {self.model.name!r} (no batch or channel axis)."
            )
        if labels.size == 0:
            raise ValueError("`segments` is empty; pass one label per position of an input.")
        labels = relabel(labels)
        self.capacity = int(labels.max()) + 1
        return labels

    def _labels_of_one(self, image):
        """Labels ``0 .. K-1`` of one channels-last input (numpy), ``K <= self.capacity``."""
        if self.segments is None:
            return slic_superpixels(image, self.n_segments, self.compactness)
        labels = np.asarray(self.segments(image))
        if labels.shape != image.shape[:-1] or labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"The `segments` callable must return integer labels of the input's spatial shape "
                f"{image.shape[:-1]}; it returned {labels.dtype} of shape {labels.shape}."
            )
        labels = relabel(labels)
        if labels.max() + 1 > self.capacity:
            raise ValueError(
                f"The `segments` callable returned {labels.max() + 1} superpixels, more than "
                f"n_segments={self.n_segments}; pass a larger `n_segments` (the most a call may return)."
            )
        return labels

    def _host_labels(self, images):
        return np.stack([self._labels_of_one(im) for im in np.asarray(images)]).astype(np.int32)

    def read_call(self, images, targets):
        """The base class's checks, and a user's ``segments`` callable run once on the host first: its
        errors are raised here as they are, not from inside the compiled call that runs it again."""
        call = super().read_call(images, targets)
        if callable(self.segments):
            self._host_labels(_compat.to_host(call[0]))
        return call

    def labels(self, images):
        """``(N, *S)`` int32 superpixel labels of channels-last ``images``, traceable."""
        spatial = tuple(images.shape[1:-1])
        if isinstance(self.segments, np.ndarray):
            if tuple(self.segments.shape) != spatial:
                raise ValueError(
                    f"`segments` has shape {self.segments.shape}, but the inputs have the spatial shape "
                    f"{spatial}. Pass labels of one input's spatial shape."
                )
            return ops.cast(ops.zeros_like(images[..., 0]), "int32") + ops.convert_to_tensor(self.segments)
        return _backend.host_function(self._host_labels, (images,), tuple(images.shape[:-1]), "int32")

    def superpixels(self, images):
        """The superpixels used for ``images`` (as the model takes them): ``(N, *S)`` int labels ``0 .. K-1``.

        The map of a call with ``normalize=False`` holds ``phi_k`` on every
        position where these labels are ``k``.
        """
        batch, _, single = read_inputs(self.graph, images)
        x = _compat.to_host(batch)
        labels = (np.broadcast_to(self.segments, x.shape[:-1]).copy() if isinstance(self.segments, np.ndarray)
                  else self._host_labels(x))
        return labels[0] if single else labels

    # ------------------------------------------------------------------ baseline

    def _check_baseline(self, baseline):
        """The baseline as None (zeros), ``"mean"``, a float32 array fitting one input, or a callable."""
        if isinstance(baseline, str):
            if baseline != "mean":
                raise ValueError(
                    f"`baseline` as a string must be 'mean' (each superpixel filled with its own mean); "
                    f"received {baseline!r}."
                )
            return baseline
        return check_baseline(baseline, self.graph, self.model.name)

    def baselines(self, images, labels):
        """The fill ``b`` of channels-last ``images`` ``(N, *S, C)`` (same shape), given their superpixels."""
        if self.baseline is None:
            return ops.zeros_like(images)
        if isinstance(self.baseline, str):  # "mean": each superpixel's mean per channel
            n, c, m = int(images.shape[0]), int(images.shape[-1]), self.capacity
            flat = ops.reshape(images, (-1, c))
            ids = ops.reshape(ops.arange(n, dtype="int32")[:, None] * m + ops.reshape(labels, (n, -1)), (-1,))
            sums = ops.segment_sum(flat, ids, num_segments=n * m)
            counts = ops.segment_sum(ops.ones_like(flat[:, :1]), ids, num_segments=n * m)
            means = sums / ops.maximum(counts, 1.0)
            return ops.reshape(ops.take(means, ids, axis=0), tuple(images.shape))
        return baseline_inputs(self.baseline, self.graph, images)

    # ------------------------------------------------------------------ the fit

    def items_per_input(self):
        """How many coalitions each input runs (static)."""
        raise NotImplementedError

    def draw(self, j, count):
        """``(z (b, M) 0/1 in the wide float, weights (b,))`` of coalitions ``j`` ``(b,)`` for
        inputs of ``count`` ``(b,)`` superpixels (``M`` the capacity; ``z = 0`` beyond ``count``)."""
        raise NotImplementedError

    def fit_size(self):
        """``S``: the fit accumulates an ``(S, S + 1)`` matrix per input (normal equations and right side)."""
        raise NotImplementedError

    def terms(self, z, w, s, which, reference):
        """``(b, S, S + 1)``: what the coalitions ``z`` with weights ``w`` and scores ``s`` add to the fit."""
        raise NotImplementedError

    def solve(self, normal, count, delta):
        """``phi`` ``(N, M)`` float32 from the accumulated matrices (numpy, on the host)."""
        raise NotImplementedError

    def fit(self, images, class_idx, target_fn=None):
        """``(phi (N, M), labels (N, *S), target_scores(...))``: each superpixel's coefficient."""
        scored = self.target_scores(self.graph.run(images), class_idx, target_fn)
        idx = scored[1]
        labels = self.labels(images)
        n, m = images.shape[0], self.capacity
        flat = ops.reshape(labels, (n, -1))
        count = ops.max(flat, axis=1) + 1
        base = self.baselines(images, labels)
        reference = self.reference(base, idx, target_fn)

        def terms(chunk):                               # (b, 2): image, coalition
            which, j = chunk[:, 0], chunk[:, 1]
            z, w = self.draw(j, ops.take(count, which, axis=0))
            keep = ops.take_along_axis(ops.cast(z, "float32"), ops.take(flat, which, axis=0), axis=1)
            keep = ops.reshape(keep, (-1,) + tuple(images.shape[1:-1]) + (1,))
            x, b = ops.take(images, which, axis=0), ops.take(base, which, axis=0)
            s, _, _ = self.target_scores(self.graph.run(b + keep * (x - b), rows=which),
                                         ops.take(idx, which, axis=0), _targets.rows(target_fn, which))
            return chunk[:, :1], self.terms(z, w, s, which, reference)

        size = self.fit_size()
        initial = ops.zeros((int(n), size, size + 1), _backend.wide_float())
        normal = self.stream(grid(n, self.items_per_input()), terms, initial)
        delta = scored[0] - reference if reference is not None else ops.zeros_like(scored[0])
        phi = _backend.host_function(self.solve, (normal, count, delta), (int(n), self.capacity), "float32")
        return phi, labels, scored

    def reference(self, base, idx, target_fn):
        """What the fit needs besides the coalitions' scores (KernelSHAP: ``f(b)``); None here."""
        return None

    def raw_maps(self, images, class_idx, target_fn=None):
        """``(phi painted on each superpixel (N, *S), target_scores(...))``."""
        phi, labels, scored = self.fit(images, class_idx, target_fn)
        flat = ops.reshape(labels, (labels.shape[0], -1))
        return ops.reshape(ops.take_along_axis(phi, flat, axis=1), tuple(labels.shape)), scored

    def _active(self, count):
        """``(b, M)`` bool: the slots ``k < count`` that are superpixels."""
        return ops.arange(self.capacity, dtype="int32")[None, :] < ops.cast(count, "int32")[:, None]


class LIME(SurrogateExplainer):
    """LIME (Ribeiro et al., KDD 2016) on superpixels.

    Coalitions: ``z_0 = 1`` (the input itself), then ``z_j`` with each
    superpixel kept independently with probability 1/2 (the sign of the
    standard normal draw of ``(seed, j)``). Weights: the exponential kernel on
    the cosine distance to ``z_0``, as the ``lime`` package does for images,

        d(z) = 1 - |z| / sqrt(|z| K) = 1 - sqrt(|z| / K)      (d = 1 for z = 0)
        pi(z) = sqrt(exp(-d^2 / sigma^2)),  sigma = kernel_width (0.25, lime's default for images)

    Fit: ridge regression with an unpenalized intercept, as ``lime``'s
    ``Ridge(alpha=1)``:
    ``min sum_j pi_j (f(z_j) - phi_0 - z_j . phi)^2 + alpha |phi|^2``.
    The map paints ``phi_k`` (signed) on superpixel ``k``; ``normalize=True``
    (the default) min-max scales it to [0, 1], which keeps the ranking
    (``normalize=False`` gives ``phi`` itself). ``upsample`` is ignored.

    Cost: ``samples + 1`` forward passes per input (``lime`` fits all
    superpixels; it selects features only for its own display).

    Args:
        model: a Keras model; never modified.
        layer: must be None (there is no target layer).
        samples: coalitions per input (``lime``'s ``num_samples``, 1000), the first being ``z = 1``.
        kernel_width: ``sigma`` of the kernel (> 0).
        alpha: the ridge penalty (>= 0).
        segments: None (SLIC superpixels of each input), an integer label
            array of one input's spatial shape (the same superpixels for every
            input), or a callable ``f(input (*S, C) numpy, channels last) ->
            labels (*S)`` run on the host, returning at most ``n_segments`` labels.
        n_segments: SLIC's number of superpixels (at most; the capacity of a callable's labels).
        compactness: SLIC's compactness on the input scaled to [0, 1]
            (higher: more square superpixels).
        baseline: what hides a superpixel: ``"mean"`` (the default, as
            ``lime``'s ``hide_color=None``: each superpixel's own mean per
            channel), None (zeros), an array broadcastable to one input as the
            model takes it, or a callable ``f(images) -> baselines`` in
            ``keras.ops`` (run inside the compiled function).
        seed: the seed of the coalitions.
        **kwargs: options passed to :class:`keras_cam.Explainer`:
            ``output``: for multi-output models, the output holding the class scores.
            ``linearize``: score the logit before a final softmax/sigmoid (``lime``
                fits the probability: ``linearize=False`` on a softmax model).
            ``batch_size``: masked inputs per forward pass, and inputs per call.
            ``verbose``: 0 (the default) is silent, 1 draws a progress bar over the passes.
            ``image_input``: see :class:`keras_cam.Explainer`.
            ``data_format``: see :class:`keras_cam.Explainer`.
            ``aug_smooth``: not supported (a ValueError).
            ``eigen_smooth``: not supported (a ValueError).
            ``reshape``: accepted for a uniform call; changes nothing.

    Example:
        >>> lime = keras_cam.LIME(model, samples=500, n_segments=40)
        >>> maps = lime(images)                                   # (N, H, W) in [0, 1]
        >>> phi = lime(images, normalize=False)                   # each superpixel's coefficient
    """

    def __init__(self, model, layer=None, *, samples=1000, kernel_width=0.25, alpha=1.0, segments=None,
                 n_segments=50, compactness=0.1, baseline="mean", seed=0, **kwargs):
        self.samples = check_positive_int("samples", samples, "coalitions per input")
        if self.samples < 2:
            raise ValueError(
                f"LIME needs `samples` >= 2: the first coalition is the whole input, so with "
                f"samples={self.samples} no superpixel is ever removed and every map is zero. "
                f"Use hundreds (lime's default is 1000)."
            )
        self.kernel_width = _number("kernel_width", kernel_width, "the kernel's width")
        self.alpha = _number("alpha", alpha, "the ridge penalty", strict=False)
        super().__init__(model, layer, segments=segments, n_segments=n_segments, compactness=compactness,
                         baseline=baseline, seed=seed, **kwargs)

    def items_per_input(self):
        return self.samples

    def fit_size(self):
        return self.capacity + 1                      # the intercept and one slot per superpixel

    def draw(self, j, count):
        wide = _backend.wide_float()
        active = self._active(count)
        drawn = _random.normal(self.seed, j, (self.capacity,)) > 0
        z = ops.cast(ops.logical_and(ops.logical_or(drawn, ops.equal(j, 0)[:, None]), active), wide)
        size = ops.sum(z, axis=1)
        d = 1.0 - ops.sqrt(size / ops.cast(count, wide))
        return z, ops.sqrt(ops.exp(-(d * d) / self.kernel_width ** 2))

    def terms(self, z, w, s, which, reference):
        v = ops.concatenate([ops.ones_like(z[:, :1]), z], axis=1)       # (b, M + 1)
        wv = w[:, None] * v
        return ops.concatenate([wv[:, :, None] * v[:, None, :],
                                (wv * ops.cast(s, wv.dtype)[:, None])[:, :, None]], axis=2)

    def solve(self, normal, count, delta):
        """Ridge with a free intercept, per input, on the host: ``phi`` ``(N, M)`` float32."""
        m = self.capacity
        phi = np.zeros((len(normal), m), np.float32)
        for i, k in enumerate(np.asarray(count)):
            k = int(k)
            a = np.asarray(normal[i, :k + 1, :k + 1], np.float64) + np.diag([0.0] + [self.alpha] * k)
            beta = np.linalg.lstsq(a, np.asarray(normal[i, :k + 1, m + 1], np.float64), rcond=None)[0]
            phi[i, :k] = beta[1:]
        return phi


class KernelSHAP(SurrogateExplainer):
    """KernelSHAP (Lundberg and Lee, NeurIPS 2017) on superpixels.

    The Shapley values ``phi`` of the game ``v(z) = f(z)`` (superpixels kept
    by ``z``, the others filled from the baseline) solve the weighted least
    squares problem with the Shapley kernel and the efficiency constraint:

        min_phi  sum_z pi(z) (f(z) - f(0) - z . phi)^2    s.t.  sum_k phi_k = f(1) - f(0)
        pi(z) = (K - 1) / (C(K, |z|) |z| (K - |z|)),   0 < |z| < K

    (the infinite weights of ``z = 0`` and ``z = 1`` in the paper are the
    intercept ``phi_0 = f(0) = f(b)`` and the constraint, which is how
    ``shap`` enforces them too; here the constrained problem is solved through
    its KKT system).

    - When the ``2^K - 2`` coalitions fit in ``coalitions``, all of them are
      run with the weights ``pi``: the values are the exact Shapley values.
    - Otherwise coalition sizes are drawn with probability proportional to
      ``(K - 1) / (s (K - s))`` (the kernel's mass at size ``s``), a uniform
      subset of that size, each with weight 1 (sampling the kernel), in
      complementary pairs ``z, 1 - z`` (an antithetic draw; pair ``q`` is the
      draw of ``(seed, q)``). The values converge to the Shapley values as
      ``coalitions`` grows.

    For a model linear in the input, ``phi_k = sum_{p in k} grad . (x - b)_p``,
    exactly, whatever the coalitions. The map paints ``phi_k`` on
    superpixel ``k`` (``normalize=False``), or its min-max scaling (the default).

    Cost: ``coalitions + 2`` forward passes per input (``2^K - 2 + 2`` when
    that is fewer and the superpixels are a fixed array).

    Args:
        model: a Keras model; never modified.
        layer: must be None (there is no target layer).
        coalitions: coalitions per input (sampled; all of them when ``2^K - 2`` fit).
        segments: see :class:`LIME`.
        n_segments: see :class:`LIME`.
        compactness: see :class:`LIME`.
        baseline: the game's "absent" fill ``b``: None (zeros, the default),
            ``"mean"`` (each superpixel's own mean), an array broadcastable to
            one input, or a callable ``f(images) -> baselines`` in ``keras.ops``.
        seed: the seed of the coalitions.
        **kwargs: ``output``, ``linearize``, ``batch_size``, ``verbose``, ``image_input``,
            ``data_format``, ``aug_smooth``, ``eigen_smooth``, ``reshape``: see :class:`LIME`.

    Example:
        >>> shap = keras_cam.KernelSHAP(model, coalitions=1000, baseline=0.5)
        >>> values = shap(images, normalize=False)     # phi_k on superpixel k; sums to f(x) - f(b)
    """

    def __init__(self, model, layer=None, *, coalitions=1000, segments=None, n_segments=50, compactness=0.1,
                 baseline=None, seed=0, **kwargs):
        self.coalitions = check_positive_int("coalitions", coalitions, "coalitions per input")
        super().__init__(model, layer, segments=segments, n_segments=n_segments, compactness=compactness,
                         baseline=baseline, seed=seed, **kwargs)

    def items_per_input(self):
        if isinstance(self.segments, np.ndarray) and self.capacity <= 31:
            return min(self.coalitions, 2 ** self.capacity - 2)
        return self.coalitions

    def fit_size(self):
        return self.capacity

    def reference(self, base, idx, target_fn):
        """``f(b)`` per input: the score of the baseline, for the class chosen on ``x``."""
        return self.target_scores(self.graph.run(base), idx, target_fn)[0]

    def draw(self, j, count):
        wide, m = _backend.wide_float(), self.capacity
        active = self._active(count)
        k = ops.cast(count, wide)
        total = ops.power(ops.cast(2.0, wide), k) - 2.0
        exact = total <= float(self.coalitions)
        # Exact: coalition j is the binary expansion of j + 1 (1 .. 2^K - 2), weighted by pi.
        slots = ops.arange(m, dtype="int32")
        bits = ops.bitwise_and(ops.right_shift((j + 1)[:, None], ops.minimum(slots, 30)[None, :]), 1)
        bits = ops.logical_and(ops.logical_and(bits > 0, (slots < 31)[None, :]), active)
        size = ops.sum(ops.cast(bits, "int32"), axis=1)
        kc, sc = ops.minimum(ops.cast(count, "int32"), 31), ops.minimum(size, 31)
        binom = ops.take(ops.convert_to_tensor(_BINOMIAL.reshape(-1).astype(wide)), kc * 32 + sc)
        sf = ops.cast(size, wide)
        valid = ops.logical_and(ops.cast(j, wide) < total, ops.logical_and(size > 0, size < count))
        pi = (k - 1.0) / (binom * ops.maximum(sf * (k - sf), 1.0))
        w_exact = ops.where(valid, pi, 0.0)
        if m < 2:
            return ops.cast(bits, wide), w_exact
        # Sampled: a size s with probability ~ 1 / (s (K - s)), then the s slots of smallest key.
        draw = _random.normal(self.seed, ops.floor_divide(j, 2), (m + 1,))
        u = ops.cast(0.5 * (1.0 + ops.erf(draw[:, 0] / math.sqrt(2.0))), wide)
        s = ops.cast(ops.arange(1, m, dtype="int32"), wide)[None, :]                 # (1, M - 1)
        mass = ops.where(s < k[:, None], 1.0 / (s * ops.maximum(k[:, None] - s, 1.0)), 0.0)
        cdf = ops.cumsum(mass, axis=1) / ops.maximum(ops.sum(mass, axis=1, keepdims=True), 1e-30)
        drawn = 1 + ops.sum(ops.cast(cdf < u[:, None], "int32"), axis=1)
        drawn = ops.minimum(drawn, ops.maximum(ops.cast(count, "int32") - 1, 1))
        keys = ops.where(active, draw[:, 1:], np.inf)
        before = ops.logical_or(keys[:, None, :] < keys[:, :, None],
                                ops.logical_and(keys[:, None, :] == keys[:, :, None],
                                                (slots[None, :] < slots[:, None])[None]))
        rank = ops.sum(ops.cast(before, "int32"), axis=2)                           # (b, M)
        chosen = ops.logical_and(rank < drawn[:, None], active)
        chosen = ops.where(ops.equal(ops.mod(j, 2), 1)[:, None], ops.logical_and(ops.logical_not(chosen), active), chosen)
        z = ops.where(exact[:, None], bits, chosen)
        return ops.cast(z, wide), ops.where(exact, w_exact, 1.0)

    def terms(self, z, w, s, which, reference):
        y = ops.cast(s - ops.take(reference, which, axis=0), z.dtype)
        wz = w[:, None] * z
        return ops.concatenate([wz[:, :, None] * z[:, None, :], (wz * y[:, None])[:, :, None]], axis=2)

    def solve(self, normal, count, delta):
        """The KKT system of the constrained fit, per input, on the host: ``phi`` ``(N, M)`` float32.

        ``[[G, 1], [1^T, 0]] [phi; lambda] = [r; delta]`` with ``G = sum pi z z^T`` and
        ``r = sum pi (f(z) - f(b)) z``; least squares with the smallest norm where the
        coalitions do not separate every superpixel (the system is consistent, so the
        constraint holds exactly).
        """
        m = self.capacity
        phi = np.zeros((len(normal), m), np.float32)
        for i, k in enumerate(np.asarray(count)):
            k = int(k)
            kkt = np.zeros((k + 1, k + 1))
            kkt[:k, :k] = normal[i, :k, :k]
            kkt[:k, k] = kkt[k, :k] = 1.0
            rhs = np.append(np.asarray(normal[i, :k, m], np.float64), float(delta[i]))
            phi[i, :k] = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:k]
        return phi

"""Pixel attributions: gradients of the score with respect to the input itself.

Notation (per input): ``x`` is the preprocessed input seen channels-last,
``(*S, C)`` (``(T, C)`` signals, ``(H, W, C)`` images, ``(D, H, W, C)``
volumes), ``S(x)`` the explained score (the pre-softmax logit of the target
class by default, or a target object's / callable's score) and
``dS/dx_c`` its gradient at every position and channel. There is no target
layer: the maps are at the input's resolution from the start.

The target class of top-1 targets is chosen once, on ``x`` itself; SmoothGrad's
noisy copies and Integrated Gradients' path points are scored for that
class. Their copies are ``(image, sample)`` or ``(image, path point)`` pairs
streamed through the model ``batch_size`` at a time inside the explainer's
compiled function (:class:`~keras_cam.methods.streaming.StreamingExplainer`).
"""

from __future__ import annotations

import numpy as np

from keras_cam import backend as _backend
from keras_cam import targets as _targets
from keras_cam._compat import ops
from keras_cam.base import Explainer, minmax
from keras_cam.inputs import baseline_inputs, check_baseline
from keras_cam.methods.streaming import (StreamingExplainer, check_positive_int, check_noise, check_seed, grid,
                                         input_range, seeded_normal)


def _check_no_layer(cls, layer, aug_smooth):
    """Reject the options that need a target layer or a map to transform back."""
    if layer is not None:
        raise ValueError(
            f"{cls.__name__} attributes the score to the input pixels: it has no target layer. "
            f"Leave `layer` None; received layer={layer!r}."
        )
    if aug_smooth:
        smoother = ("raise `samples` or `noise`" if cls.__name__ == "SmoothGrad"
                    else "use SmoothGrad (its `samples` and `noise`)")
        raise ValueError(
            f"`aug_smooth` does not apply to {cls.__name__}: its maps are already at the input "
            f"resolution, pixel by pixel. For maps less noisy than the raw gradient {smoother}."
        )


def input_gradients(explainer, images, class_idx, target_fn=None, rows=None):
    """``(dS/dx (N, *S, C), explainer.target_scores(...))`` for channels-last ``images``.

    Args:
        explainer: the explainer whose graph runs the model and scores the outputs.
        images: ``(N, *S, C)`` float32, channels last.
        class_idx: ``(N,)`` int32 classes (``targets.TOP1`` for the top-1 class).
        target_fn: a target object or callable, or None for classes.
        rows: ``(N,)`` rows of the held inputs of a multi-input model that go
            with each image (see ``ActivationGraph.model_inputs``).

    A score that does not depend on the input has a zero gradient.
    """
    def forward(tap, x):
        scored = explainer.target_scores(explainer.graph.run(x, rows=rows), class_idx, target_fn)
        return scored[0], scored

    _, scored, _, _, (grads,) = _backend.tapped_gradients(forward, (images,))
    return grads, scored


def mean_gradient(explainer, images, idx, target_fn, count, point):
    """``(N, *S, C)``: ``(1 / count) sum_j dS/dx`` at the inputs ``point(which, j)``, ``j < count``.

    The ``(image, j)`` pairs stream through the model ``explainer.batch_size``
    at a time (:meth:`StreamingExplainer.stream`); ``point(which, j)`` builds
    the inputs of a chunk from its image rows and indices ``j``, and each is
    scored for its image's class ``idx`` (or row of ``target_fn``).
    """

    def gradients(chunk):                                 # (b, 2): image, j
        which = chunk[:, 0]
        g, _ = input_gradients(explainer, point(which, chunk[:, 1]), ops.take(idx, which, axis=0),
                               _targets.rows(target_fn, which), rows=which)
        return chunk[:, :1], g / count

    return explainer.stream(grid(images.shape[0], count), gradients, ops.zeros_like(images))


def _per_row(values, like):
    """``(b,)`` values shaped ``(b, 1, ..., 1)`` to scale rows of a tensor of ``like``'s rank."""
    return ops.reshape(values, (-1,) + (1,) * (len(like.shape) - 1))


def channel_max(grads):
    """``max_c |g_c|``, the largest gradient magnitude over the channels.

    Args:
        grads: ``(N, *S, C)`` input gradients, channels last.

    Returns:
        ``(N, *S)`` maps.
    """
    return ops.max(ops.abs(grads), axis=-1)


class Saliency(Explainer):
    """Saliency maps (Simonyan et al., ICLR 2014 workshop): the input gradient's magnitude.

    ``M = max_c |dS/dx_c|`` ``(N, *S)``, min-max scaled to [0, 1] per map
    with ``normalize=True`` (the default); ``normalize=False`` gives the
    unscaled ``max_c |dS/dx_c|``. The maps are at the input's resolution, so
    ``upsample`` is accepted and ignored.

    Args:
        model: a Keras model; never modified.
        layer: must be None (there is no target layer; accepted so that
            every method is built the same way).
        output: for multi-output models, the output holding the class scores.
        linearize: differentiate the logit before a final softmax/sigmoid.
        batch_size: images per compiled call.
        image_input: see :class:`keras_cam.Explainer`.
        data_format: see :class:`keras_cam.Explainer`.
        aug_smooth: not supported (a ValueError): use :class:`SmoothGrad`.
        eigen_smooth: not supported (a ValueError): no channels are weighted.
        reshape: accepted and checked like every explainer's, so that one set
            of options builds any method; with no target layer it changes nothing.

    Example:
        >>> maps = keras_cam.Saliency(model)(images)              # (N, H, W) in [0, 1]
        >>> raw = keras_cam.Saliency(model)(images, targets=3, normalize=False)
    """

    def __init__(self, model, layer=None, *, output=None, linearize=True, batch_size=32, image_input=None,
                 data_format=None, aug_smooth=False, eigen_smooth=False, reshape=None):
        _check_no_layer(type(self), layer, aug_smooth)
        super().__init__(model, None, output=output, linearize=linearize, batch_size=batch_size,
                         eigen_smooth=eigen_smooth, image_input=image_input, data_format=data_format,
                         reshape=reshape)

    uses_layer = False

    def _layer_specs(self, layer):
        return []  # the gradient is taken at the input

    def raw_maps(self, images, class_idx, target_fn=None):
        grads, scored = input_gradients(self, images, class_idx, target_fn)
        return channel_max(grads), scored


class SmoothGrad(StreamingExplainer):
    """SmoothGrad (Smilkov et al., 2017): the input gradient averaged over noisy copies.

    ``M = max_c |(1 / n) sum_i dS/dx_c (x + eps_i)|`` over ``n = samples``
    copies, ``eps_i ~ N(0, sigma^2)`` per position and channel with
    ``sigma = noise * (max x - min x)`` (the range of each input over all its
    positions and channels). The class of a top-1 target is the one of ``x``
    itself. ``noise=0`` is :class:`Saliency`. Maps are min-max scaled with
    ``normalize=True`` (the default) and unscaled with ``normalize=False``;
    ``upsample`` is ignored.

    The draw ``eps_i`` is ``sigma`` times the standard normal draw of
    ``(seed, i)`` (the same for every input, whatever the batch or
    ``batch_size``): an input explained alone or in a batch gets the same
    map, and a seeded run is reproducible. Costs ``samples`` forward and
    backward passes per input.

    Args:
        model: a Keras model; never modified.
        layer: must be None (there is no target layer).
        samples: noisy copies per input.
        noise: the noise's standard deviation as a fraction of each input's range (>= 0).
        seed: the seed of the noise.
        output: for multi-output models, the output holding the class scores.
        linearize: differentiate the logit before a final softmax/sigmoid.
        batch_size: noisy copies per forward pass, and inputs per call.
        verbose: 0 (the default) is silent, 1 draws a progress bar over the passes.
        image_input: see :class:`keras_cam.Explainer`.
        data_format: see :class:`keras_cam.Explainer`.
        aug_smooth: not supported (a ValueError).
        eigen_smooth: not supported (a ValueError).
        reshape: accepted for a uniform call (see :class:`Saliency`); changes nothing.

    Example:
        >>> maps = keras_cam.SmoothGrad(model, samples=50, noise=0.15, verbose=0)(images)
    """

    def __init__(self, model, layer=None, *, samples=25, noise=0.2, seed=0, output=None, linearize=True,
                 batch_size=32, verbose=0, image_input=None, data_format=None, aug_smooth=False,
                 eigen_smooth=False, reshape=None):
        _check_no_layer(type(self), layer, aug_smooth)
        samples = check_positive_int("samples", samples, "noisy copies per input")
        noise, seed = check_noise(noise), check_seed(seed)
        super().__init__(model, None, output=output, linearize=linearize, batch_size=batch_size, verbose=verbose,
                         eigen_smooth=eigen_smooth, image_input=image_input, data_format=data_format,
                         reshape=reshape)
        self.samples, self.noise, self.seed = samples, noise, seed

    uses_layer = False

    def _layer_specs(self, layer):
        return []

    def raw_maps(self, images, class_idx, target_fn=None):
        scored = self.target_scores(self.graph.run(images), class_idx, target_fn)
        sigma = self.noise * input_range(images)              # (N,)

        def noisy(which, sample):
            eps = seeded_normal(self.seed, sample, tuple(images.shape[1:]))
            return ops.take(images, which, axis=0) + _per_row(ops.take(sigma, which, axis=0), images) * eps

        return channel_max(mean_gradient(self, images, scored[1], target_fn, self.samples, noisy)), scored


class IntegratedGradients(StreamingExplainer):
    """Integrated Gradients (Sundararajan et al., ICML 2017).

    ``IG_c(x) = (x_c - x'_c) * integral_0^1 dS/dx_c (x' + a (x - x')) da``
    from a baseline ``x'``, per position and channel. The integral is the
    midpoint rule over ``steps`` points,
    ``(1 / m) sum_{j=0}^{m-1} dS/dx (x' + ((j + 0.5) / m) (x - x'))``, whose
    error is ``O(1 / m^2)`` for a smooth score; along the path the gradient
    of a ReLU network is piecewise constant, and each kink adds an error of
    ``O(1 / m)``. Completeness: ``sum_{positions, c} IG = S(x) - S(x')`` up to
    that error. The class of a top-1 target is the one of ``x``.

    Output:

    - ``ig(images, normalize=False)``: the attributions ``IG`` themselves,
      signed, shaped like the input channels-last ``(N, *S, C)`` (``(*S, C)``
      for one input), whatever the model's data format, as
      :class:`keras_cam.GuidedBackprop`.
    - ``ig(images)`` (``normalize=True``, the default): maps
      ``minmax(|sum_c IG_c|)`` ``(N, *S)`` in [0, 1], what the metrics, the
      command line and the method registry expect of every explainer.

    :meth:`explain` returns an :class:`keras_cam.Explanation` whose ``maps``
    is the same; ``upsample`` is ignored (the input's resolution already).

    Args:
        model: a Keras model; never modified.
        layer: must be None (there is no target layer).
        baseline: ``x'``: None (zeros), an array broadcastable to one input as
            the model takes it (a scalar, one value per channel, or a whole
            input), or a callable ``f(images) -> baselines`` that gets the
            batch as the model takes it and returns baselines of its shape (or
            broadcastable to it). The callable runs inside the compiled
            function, so it must use ``keras.ops`` (or the backend's own ops;
            e.g. a blur, ``lambda x: keras.ops.average_pool(x, 9, 1, "same")``).
        steps: points of the path integral.
        output: for multi-output models, the output holding the class scores.
        linearize: differentiate the logit before a final softmax/sigmoid.
        batch_size: path points per forward pass, and inputs per call.
        verbose: 0 (the default) is silent, 1 draws a progress bar over the passes.
        image_input: see :class:`keras_cam.Explainer`.
        data_format: see :class:`keras_cam.Explainer`.
        aug_smooth: not supported (a ValueError).
        eigen_smooth: not supported (a ValueError).
        reshape: accepted for a uniform call (see :class:`Saliency`); changes nothing.

    Example:
        >>> ig = keras_cam.IntegratedGradients(model, steps=64, verbose=0)
        >>> attributions = ig(images, targets=3, normalize=False)   # (N, H, W, C)
        >>> maps = ig(images)                                       # (N, H, W) in [0, 1]
        >>> blurred = keras_cam.IntegratedGradients(
        ...     model, baseline=lambda x: keras.ops.average_pool(x, 9, 1, "same"))
    """

    def __init__(self, model, layer=None, *, baseline=None, steps=50, output=None, linearize=True,
                 batch_size=32, verbose=0, image_input=None, data_format=None, aug_smooth=False,
                 eigen_smooth=False, reshape=None):
        _check_no_layer(type(self), layer, aug_smooth)
        steps = check_positive_int("steps", steps, "points of the path integral")
        super().__init__(model, None, output=output, linearize=linearize, batch_size=batch_size, verbose=verbose,
                         eigen_smooth=eigen_smooth, image_input=image_input, data_format=data_format,
                         reshape=reshape)
        self.steps = steps
        self.baseline = check_baseline(baseline, self.graph, self.model.name)

    uses_layer = False

    def _layer_specs(self, layer):
        return []

    def __call__(self, images, targets=None, upsample=True, normalize=True):
        """Maps ``minmax(|sum_c IG_c|)`` ``(N, *S)``, or with ``normalize=False`` the
        attributions ``(N, *S, C)`` channels last (``upsample`` is ignored)."""
        return self.explain(images, targets, upsample=upsample, normalize=normalize).maps

    def baselines(self, images):
        """``x'`` for channels-last ``images`` ``(N, *S, C)``, channels last, of the same shape."""
        return baseline_inputs(self.baseline, self.graph, images)

    def attributions(self, images, class_idx, target_fn=None):
        """``(IG (N, *S, C), target_scores(...) at x)`` for channels-last ``images``."""
        scored = self.target_scores(self.graph.run(images), class_idx, target_fn)
        base = self.baselines(images)
        delta = images - base

        def on_path(which, j):
            alpha = (ops.cast(j, "float32") + 0.5) / self.steps
            return ops.take(base, which, axis=0) + _per_row(alpha, images) * ops.take(delta, which, axis=0)

        return delta * mean_gradient(self, images, scored[1], target_fn, self.steps, on_path), scored

    def raw_maps(self, images, class_idx, target_fn=None):
        """``(|sum_c IG_c| (N, *S), target_scores(...))``: the unscaled maps."""
        ig, scored = self.attributions(images, class_idx, target_fn)
        return ops.abs(ops.sum(ig, axis=-1)), scored

    def compute(self, images, class_idx, upsample_, normalize_, target_fn=None):
        ig, (scores, idx, probs) = self.attributions(images, class_idx, target_fn)
        out = minmax(ops.abs(ops.sum(ig, axis=-1))) if normalize_ else ig
        return out, scores, idx, probs

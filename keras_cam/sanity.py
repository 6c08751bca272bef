"""Does a method explain the model, or only the image? A sanity check.

Adebayo et al. ("Sanity Checks for Saliency Maps", NeurIPS 2018, section 3)
randomize a trained model's weights layer by layer, from the output down
(*cascading* randomization), and compare each step's maps with the original
maps. A map that stays the same while the weights that produced the
prediction are destroyed does not depend on what the model learned (it acts
like an edge detector); the paper found this for Guided Backpropagation.

:func:`sanity_check` does this on a copy of the model (the user's weights are
never touched) and reports, per step, the Spearman rank correlation and the
SSIM between the original and the randomized maps.
"""

from __future__ import annotations

import dataclasses

import warnings

import numpy as np

from keras_cam import _compat
from keras_cam import layers as _layers
from keras_cam.metrics.properties import ssim as _ssim


@dataclasses.dataclass
class SanityResult:
    """The maps of each step of a cascading randomization and their similarity.

    Attributes:
        steps: ``"original"``, then the path of the layer randomized at each
            step (every layer above it is random too).
        spearman: ``(steps,)`` mean over images of the Spearman rank
            correlation between the original map and the step's map (1 at
            step 0).
        ssim: ``(steps,)`` mean SSIM between them (1 at step 0).
        maps: ``(steps, N, H, W)`` the maps of every step.
        threshold: the rank correlation at or above which a map that survived
            the whole randomization is flagged.
        image_spearman: ``(steps, N)`` the rank correlation of each image
            (``spearman`` is its mean over images).
        image_ssim: ``(steps, N)`` the SSIM of each image.
    """

    steps: list
    spearman: np.ndarray
    ssim: np.ndarray
    maps: np.ndarray
    threshold: float
    image_spearman: np.ndarray = None
    image_ssim: np.ndarray = None

    @property
    def ignores_weights(self) -> bool:
        """True when, with every layer randomized, the maps still rank the pixels
        as the trained model's maps did (rank correlation >= ``threshold``):
        the method does not depend on the learned weights."""
        return bool(self.spearman[-1] >= self.threshold)

    def plot(self, image=0, max_columns=8):
        """A figure: the similarity curves, and one image's map at each step.

        Args:
            image: which image's maps to show.
            max_columns: show at most this many steps (evenly spaced, always
                the first and the last).

        Returns:
            a ``matplotlib.figure.Figure`` (not attached to pyplot; in a
            notebook it displays itself, or save it with ``fig.savefig``).
        """
        from matplotlib.figure import Figure

        shown = np.unique(np.linspace(0, len(self.steps) - 1, min(max_columns, len(self.steps))).round().astype(int))
        fig = Figure(figsize=(max(6.0, 1.6 * len(shown)), 5.0), layout="constrained")
        grid = fig.add_gridspec(2, len(shown), height_ratios=(1.4, 1.0))
        ax = fig.add_subplot(grid[0, :])
        x = np.arange(len(self.steps))
        ax.plot(x, self.spearman, marker="o", label="Spearman rank correlation")
        ax.plot(x, self.ssim, marker="s", label="SSIM")
        ax.axhline(self.threshold, color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(x, self.steps, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(min(-0.1, float(np.nanmin([self.spearman.min(), self.ssim.min()])) - 0.05), 1.05)
        ax.set_ylabel("similarity to the original map")
        verdict = "ignores the weights" if self.ignores_weights else "depends on the weights"
        ax.set_title(f"Cascading randomization, top layer first: the method {verdict}")
        ax.legend(loc="lower left", fontsize=8)
        for col, step in enumerate(shown):
            sub = fig.add_subplot(grid[1, col])
            sub.imshow(self.maps[step, image], cmap="jet", vmin=0, vmax=1)
            sub.set_title(self.steps[step].rsplit("/", 1)[-1], fontsize=7)
            sub.axis("off")
        return fig


def rank(x):
    """Ranks of ``x`` along the last axis, 1-based, ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, axis=-1, kind="stable")
    sorted_x = np.take_along_axis(x, order, axis=-1)
    ranks = np.empty_like(x)
    for i in np.ndindex(x.shape[:-1]):
        # each run of equal values gets the mean of the positions it occupies
        starts = np.flatnonzero(np.r_[True, sorted_x[i][1:] != sorted_x[i][:-1]])
        ends = np.r_[starts[1:], len(sorted_x[i])]
        avg = np.repeat((starts + ends + 1) / 2.0, ends - starts)
        ranks[i][order[i]] = avg
    return ranks


def spearman(a, b):
    """Spearman rank correlation of each pair of maps ``(N, H, W)``: the Pearson
    correlation of their ranks. A constant map has no ranking: 0."""
    ra = rank(np.asarray(a).reshape(len(a), -1))
    rb = rank(np.asarray(b).reshape(len(b), -1))
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1))
    return np.divide((ra * rb).sum(axis=1), denom, out=np.zeros(len(ra)), where=denom > 0)


def ssim(a, b):
    """Structural similarity (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5,
    valid positions only; a smaller window for maps under 11 pixels) of each
    pair of maps ``(N, H, W)`` with values in [0, 1]: :func:`keras_cam.metrics.ssim`
    with ``max_val=1``, computed with numpy, the same on every backend."""
    return _ssim(a, b, max_val=1.0)


def _as_maps(maps):
    """Gradients ``(N, H, W, C)`` (guided methods) become ``sum_c |g|`` maps scaled to [0, 1]."""
    m = np.asarray(maps, np.float32)
    if m.ndim == 4:
        m = np.abs(m).sum(axis=-1)
        top = m.max(axis=(1, 2), keepdims=True)
        m = np.divide(m, top, out=np.zeros_like(m), where=top > 0)
    return m


def _randomize(layer, rng):
    """Re-initialize the trainable weights: Gaussian with each array's own mean and
    standard deviation (a constant array, e.g. zero biases, keeps its value);
    non-trainable state (batch-norm statistics) is kept. Read and written with
    ``get_weights``/``set_weights``, which every backend and both Kerases share.

    A layer whose trainable arrays are all constant (e.g. a kernel initialized to ones)
    would keep every value, and its step would show no randomization: its arrays of two
    or more axes (kernels) are then drawn around their value with Glorot's standard
    deviation ``sqrt(2 / (fan_in + fan_out))`` (``fan_out`` the last axis, ``fan_in``
    the product of the others), with a warning."""
    trainable = {id(w) for w in layer.trainable_weights}
    values = layer.get_weights()
    constant = []
    for k, w in enumerate(layer.weights):
        if id(w) not in trainable:
            continue
        value = np.asarray(values[k], np.float64)
        std = value.std()
        if std > 0:
            values[k] = rng.normal(value.mean(), std, value.shape).astype(values[k].dtype)
        else:
            constant.append(k)
    kernels = [k for k in constant if np.ndim(values[k]) >= 2]
    if kernels and len(constant) == len(trainable):
        for k in kernels:
            shape = np.shape(values[k])
            std = np.sqrt(2.0 / (np.prod(shape[:-1]) + shape[-1]))
            values[k] = rng.normal(np.asarray(values[k], np.float64).mean(), std, shape).astype(values[k].dtype)
        warnings.warn(
            f"sanity_check: every trainable weight of layer {layer.name!r} is constant (no spread to draw "
            f"from), so its kernels are drawn around their value with Glorot's standard deviation.",
            stacklevel=3,
        )
    layer.set_weights(values)


def sanity_check(explainer_cls, model, images, targets=None, *, explainer_kwargs=None, cascade=None,
                 threshold=0.5, seed=0) -> SanityResult:
    """Cascading model-parameter randomization (Adebayo et al. 2018) of a method.

    Copies ``model``, explains ``images`` with ``explainer_cls`` on the copy,
    then re-initializes the copy's layers one at a time from the output down,
    explaining again after each one; each step's maps are compared with the
    original maps. The classes explained are those of the original model
    (top-1 by default), kept at every step.

    Args:
        explainer_cls: an explainer class (``keras_cam.GradCAM``...) or any
            callable ``f(model, **explainer_kwargs)`` returning an explainer.
            Gradient images ``(N, H, W, C)`` (guided methods) are compared as
            ``sum_c |g|``.
        model: the trained Keras model; it is not modified.
        images: ``(N, H, W, C)`` inputs.
        targets: as for an explainer call (None: the original top-1).
        explainer_kwargs: keyword arguments for ``explainer_cls`` (``layer=``...).
        cascade: the layers (names or paths) to randomize, top first; by
            default every layer with trainable weights, in reverse order of
            execution.
        threshold: flag the method when the final rank correlation is at
            least this (see :attr:`SanityResult.ignores_weights`).
        seed: the seed of the random weights.

    Returns:
        :class:`SanityResult`; ``result.plot()`` draws it.

    Example:
        >>> result = keras_cam.sanity_check(keras_cam.GradCAM, model, images[:8])
        >>> result.spearman, result.ssim, result.ignores_weights
        >>> result.plot().savefig("sanity.png")
    """
    if not _compat.is_model(model):
        raise TypeError(f"`model` must be a Keras model; received {type(model).__name__}.")
    if not callable(explainer_cls):
        raise TypeError(
            f"`explainer_cls` must be an explainer class such as keras_cam.GradCAM; received "
            f"{type(explainer_cls).__name__}."
        )
    copy = _compat.copy_model(model, "The sanity check randomizes a copy of the model")
    explainer = explainer_cls(copy, **(explainer_kwargs or {}))
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[None]
    if cascade is None:
        infos = _layers.trace_layers(copy, x[:1])
        order = [(i.path, i.layer) for i in infos if not _compat.is_model(i.layer) and i.layer.trainable_weights]
        order = order[::-1]
    else:
        order = [_layers.resolve(copy, name) for name in cascade]
    if not order:
        raise ValueError(f"Model {model.name!r} has no layer with trainable weights to randomize.")

    first = explainer.explain(x, targets)
    fixed = targets if first.targets is None else first.targets
    original = _as_maps(first.maps)
    rng = np.random.default_rng(seed)
    maps, names = [original], ["original"]
    for path, layer in order:
        _randomize(layer, rng)
        maps.append(_as_maps(explainer(x, fixed)))
        names.append(path)
    maps = np.stack(maps)
    rho = np.stack([spearman(original, m) for m in maps])
    similar = np.stack([ssim(original, m) for m in maps])
    return SanityResult(
        steps=names,
        spearman=rho.mean(axis=1),
        ssim=similar.mean(axis=1),
        maps=maps,
        threshold=float(threshold),
        image_spearman=rho,
        image_ssim=similar,
    )

"""Black-box methods: maps from the scores of masked inputs, with no gradient and no target layer.

Notation (per input): ``x`` is the preprocessed input seen channels-last,
``(*S, C)`` (``(T, C)`` signals, ``(H, W, C)`` images, ``(D, H, W, C)``
volumes), ``S(x)`` the explained score (the pre-softmax logit of the target
class by default, the model's own output with ``linearize=False``, or a
target object's / callable's score) and ``M`` a mask ``(*S)`` applied to every
channel. These methods call only ``model(x)``: they work where a gradient is
useless or unavailable (a non-differentiable step inside the model).

The class of a top-1 target is chosen once, on ``x`` itself (one forward
pass), and every masked copy is scored for it. The masked copies of all
inputs of a call are ``(input, mask index)`` pairs streamed through the model
``batch_size`` at a time inside the explainer's compiled function
(:meth:`~keras_cam.methods.streaming.StreamingExplainer.stream`); each batch
builds its masks on the device from the mask indices, so only one batch of
masks and masked inputs exists at any moment, and memory does not grow with
the number of masks. A mask depends only on ``(seed, index)`` (or on the
design table of ``(seed, designs, grid)``), never on the batch: an input
explained alone or in any batch, at any ``batch_size``, gets the same map.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from keras_cam import random as _random
from keras_cam import targets as _targets
from keras_cam._compat import ops
from keras_cam.methods.streaming import StreamingExplainer, check_positive_int, check_seed, grid


# ------------------------------------------------------------------ checks

def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def per_axis(name, value, rank, what):
    """``value`` (a positive int, or one per spatial axis) as a tuple of ``rank`` positive ints."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * rank
    if len(values) != rank or not all(_is_int(v) and v >= 1 for v in values):
        raise ValueError(
            f"`{name}` must be a positive int or {rank} positive ints, one per spatial axis ({what}); "
            f"received {value!r}."
        )
    return tuple(int(v) for v in values)


def check_fits(name, values, size, what, instead):
    """Raise a ValueError when ``values`` (one per axis) exceed the input's spatial ``size``."""
    if size is None or None in tuple(size):
        return
    if any(v > int(s) for v, s in zip(values, size)):
        raise ValueError(
            f"`{name}` {values if len(values) > 1 else values[0]} is larger than the input, whose spatial "
            f"size is {tuple(int(s) for s in size)} ({what}); {instead}."
        )


def check_probability(p):
    """``p`` as a float in (0, 1) (the probability that a grid cell is kept)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not 0 < p < 1:
        raise ValueError(
            f"`p` is the probability that a grid cell of a mask is kept; it must be a number strictly between "
            f"0 and 1 (the paper uses 0.5); received {p!r}."
        )
    return float(p)


def check_fill(fill):
    """``fill`` as a float, or a 1-D float32 array of one value per channel."""
    try:
        value = np.asarray(fill, dtype=np.float32)
    except (TypeError, ValueError):
        value = None
    if value is None or isinstance(fill, bool) or value.ndim > 1 or value.size == 0 or not np.isfinite(value).all():
        shown = repr(fill) if np.size(fill) <= 8 else f"an array of shape {np.shape(fill)}"
        raise ValueError(
            f"`fill` is the value an occluded patch takes: a finite number (e.g. 0, or the dataset's mean "
            f"after preprocessing) or one finite number per channel; received {shown}."
        )
    return float(value) if value.ndim == 0 else value


def _check_no_layer(cls, layer, aug_smooth, more):
    if layer is not None:
        raise ValueError(
            f"{cls.__name__} masks the input itself: it has no target layer. Leave `layer` None; "
            f"received layer={layer!r}."
        )
    if aug_smooth:
        raise ValueError(
            f"`aug_smooth` does not apply to {cls.__name__}: its maps come from masks of the input. "
            f"For a smoother estimate {more}."
        )


def _rows_of(values, like):
    """``(b,)`` values shaped ``(b, 1, ..., 1)`` to scale the rows of a tensor of ``like``'s rank."""
    return ops.reshape(values, (-1,) + (1,) * (len(like.shape) - 1))


# ------------------------------------------------------------------ masks

def occlusion_anchors(size, patch, stride):
    """Per spatial axis, the first positions of the patches (numpy int32 arrays).

    On an axis of length ``n`` with patch ``p`` and stride ``s``: ``0, s, 2s, ...``
    while the patch fits (``a + p <= n``), plus ``n - p`` when the last of those
    leaves positions uncovered, so every position is in at least one patch.
    """
    out = []
    for n, p, s in zip(size, patch, stride):
        a = list(range(0, int(n) - p + 1, s))
        if a[-1] + p < int(n):
            a.append(int(n) - p)
        out.append(np.asarray(a, np.int32))
    return out


def occlusion_masks(index, size, patch, anchors):
    """``(b, *size)`` float32: 1 inside patch ``index`` (row-major over the anchors), 0 elsewhere."""
    counts = [len(a) for a in anchors]
    mask = None
    for axis, (n, p, a) in enumerate(zip(size, patch, anchors)):
        k = (index // int(math.prod(counts[axis + 1:]))) % counts[axis]
        start = ops.take(ops.convert_to_tensor(a), k, axis=0)[:, None]
        pos = ops.arange(int(n), dtype="int32")[None, :]
        inside = ops.cast(ops.logical_and(pos >= start, pos < start + p), "float32")
        shape = [-1] + [1] * len(size)
        shape[axis + 1] = int(n)
        inside = ops.reshape(inside, tuple(shape))
        mask = inside if mask is None else mask * inside
    return mask


def rise_cells(size, cells):
    """``C``: the cell size in positions per axis, ``ceil(n / cells)``."""
    return tuple(-(-int(n) // g) for n, g in zip(size, cells))


def rise_masks(seed, ids, size, cells, p):
    """RISE's smooth masks ``(b, *size)`` float32; mask ``i`` depends only on ``(seed, i)``.

    With ``u = keras_cam.random.uniform(seed, [i], (prod(cells + 1) + rank,))``: a binary
    grid ``B`` of ``cells + 1`` cells per axis, ``B = u[:m] < p`` (row-major), is resized
    bilinearly (half-pixel centres, edges clamped, the convention of
    ``tf.image.resize``) to ``(cells + 1) C`` positions per axis,
    ``C = ceil(n / cells)``, and cropped to ``[d, d + n)`` with the shift
    ``d = floor(u[m + axis] C)``: position ``t`` reads ``B`` at
    ``clip((t + d + 0.5) / C - 0.5, 0, cells)``, linearly between its two nearest cells.
    """
    rank = len(size)
    big = tuple(g + 1 for g in cells)
    m = int(math.prod(big))
    c = rise_cells(size, cells)
    u = _random.uniform(seed, ids, (m + rank,))
    mask = ops.reshape(ops.cast(u[:, :m] < p, "float32"), (-1,) + big)
    grid_letters, out_letters = "klmo"[:rank], "ijnq"[:rank]
    for axis in range(rank):
        shift = ops.minimum(ops.floor(u[:, m + axis] * c[axis]), c[axis] - 1)  # (b,)
        t = ops.cast(ops.arange(int(size[axis])), "float32")[None, :] + shift[:, None]
        coord = ops.clip((t + 0.5) / c[axis] - 0.5, 0.0, float(cells[axis]))
        low = ops.minimum(ops.floor(coord), cells[axis] - 1)
        frac = coord - low
        low = ops.cast(low, "int32")
        weights = (ops.one_hot(low, big[axis]) * (1.0 - frac)[..., None]
                   + ops.one_hot(low + 1, big[axis]) * frac[..., None])  # (b, n, cells + 1)
        now = out_letters[:axis] + grid_letters[axis:]
        after = out_letters[:axis + 1] + grid_letters[axis + 1:]
        mask = ops.einsum(f"b{now},b{out_letters[axis]}{grid_letters[axis]}->b{after}", mask, weights)
    return mask


def cell_index(size, cells):
    """``(prod(size),)`` int32 numpy: the row-major grid cell of each position (row-major), nearest
    with half-pixel centres: position ``t`` of an axis of ``n`` is in cell ``floor((t + 0.5) cells / n)``."""
    axes = [np.minimum(np.floor((np.arange(int(n)) + 0.5) * g / int(n)).astype(np.int64), g - 1)
            for n, g in zip(size, cells)]
    flat = np.zeros([int(n) for n in size], np.int64)
    for axis, a in enumerate(axes):
        shape = [1] * len(size)
        shape[axis] = len(a)
        flat = flat * cells[axis] + a.reshape(shape)
    return flat.reshape(-1).astype(np.int32)


def grid_masks(table, rows, size, cells):
    """``(b, *size)``: rows ``rows`` of a design table ``(R, prod(cells))`` laid on the input,
    each cell's value over its positions (:func:`cell_index`)."""
    values = ops.take(ops.convert_to_tensor(table), rows, axis=0)
    return ops.reshape(ops.take(values, ops.convert_to_tensor(cell_index(size, cells)), axis=1),
                       (-1,) + tuple(int(n) for n in size))


# ------------------------------------------------------------------ estimators

def sobol_designs(dims, designs, seed=0):
    """The quasi-Monte-Carlo design of the Jansen estimator: ``(designs (dims + 2), dims)`` float32.

    ``A`` and ``B`` are the two halves of the columns of ``designs`` points of a
    scrambled Sobol sequence of dimension ``2 dims`` (``scipy.stats.qmc.Sobol``,
    seeded by ``seed``); the table is ``[A; B; C_1; ...; C_dims]`` where
    ``C_i`` is ``A`` with its column ``i`` taken from ``B``. A power of 2 for
    ``designs`` keeps the sequence balanced.
    """
    from scipy.stats import qmc

    try:
        sampler = qmc.Sobol(2 * dims, scramble=True, rng=np.random.default_rng(seed))
    except TypeError:  # scipy < 1.15
        sampler = qmc.Sobol(2 * dims, scramble=True, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scipy's note on sizes that are not powers of 2
        points = sampler.random(designs)
    a, b = points[:, :dims], points[:, dims:]
    cs = []
    for i in range(dims):
        c = a.copy()
        c[:, i] = b[:, i]
        cs.append(c)
    return np.concatenate([a, b] + cs).astype(np.float32)


def jansen_total_indices(f_a, f_b, f_c):
    """Total Sobol indices by the Jansen estimator (Jansen 1999; Saltelli et al. 2010, table 2).

    ``ST_i = (1 / 2n) sum_j (f(A_j) - f(C_i,j))^2 / V``, with ``V`` the variance
    (over ``n``, not ``n - 1``) of the ``2n`` values ``f(A)`` and ``f(B)`` together;
    0 where ``V`` is 0 (a function that does not vary).

    Args:
        f_a: ``(..., n)`` values on the design ``A``.
        f_b: ``(..., n)`` values on ``B``.
        f_c: ``(..., d, n)`` values on ``C_i`` (``A`` with column ``i`` from ``B``).

    Returns:
        ``(..., d)`` float32 indices.
    """
    f_a, f_b, f_c = (ops.cast(ops.convert_to_tensor(f), "float32") for f in (f_a, f_b, f_c))
    var = ops.var(ops.concatenate([f_a, f_b], axis=-1), axis=-1)
    half_mean_square = ops.mean(ops.square(f_a[..., None, :] - f_c), axis=-1) / 2.0
    return ops.divide_no_nan(half_mean_square, var[..., None])


def hsic_designs(dims, designs, seed=0):
    """HSIC's binary design ``(designs, dims)`` float32: a Latin hypercube sample
    (``scipy.stats.qmc.LatinHypercube``, seeded by ``seed``) thresholded at 1/2, so
    that every cell is kept in ``floor`` or ``ceil`` of half the designs."""
    from scipy.stats import qmc

    try:
        sampler = qmc.LatinHypercube(dims, rng=np.random.default_rng(seed))
    except TypeError:  # scipy < 1.15
        sampler = qmc.LatinHypercube(dims, seed=seed)
    return (sampler.random(designs) >= 0.5).astype(np.float32)


def hsic_indices(x, y):
    """HSIC between each binary input column and the output (Gretton et al. 2005).

    ``HSIC_i = tr(K_i H L H) / (n - 1)^2`` with ``H = I - 11^T / n``, the
    Dirac kernel on the binary inputs ``K_i[j, l] = [x_ji = x_li]`` and a
    Gaussian kernel on the outputs ``L[j, l] = exp(-(y_j - y_l)^2 / (2 sigma^2))``,
    ``sigma`` the median of ``|y_j - y_l|`` over pairs ``j < l`` (their mean
    where that median is 0). For the Dirac kernel on 0/1 values this is
    ``2 xc_i^T L xc_i / (n - 1)^2`` with ``xc_i = x_i - mean(x_i)`` (the form computed).

    Args:
        x: ``(n, d)`` 0/1 design (numpy or tensor).
        y: ``(..., n)`` outputs.

    Returns:
        ``(..., d)`` float32.
    """
    x = ops.cast(ops.convert_to_tensor(x), "float32")
    y = ops.cast(ops.convert_to_tensor(y), "float32")
    n = int(x.shape[0])
    diff = ops.abs(y[..., :, None] - y[..., None, :])                    # (..., n, n)
    upper = np.triu_indices(n, k=1)
    pairs = ops.take(ops.reshape(diff, tuple(diff.shape[:-2]) + (n * n,)),
                     ops.convert_to_tensor((upper[0] * n + upper[1]).astype(np.int32)), axis=-1)
    sigma = _median(pairs)
    sigma = ops.where(sigma > 0, sigma, ops.mean(pairs, axis=-1))
    kernel = ops.exp(-ops.square(diff) / (2.0 * ops.maximum(ops.square(sigma), 1e-30)[..., None, None]))
    xc = x - ops.mean(x, axis=0, keepdims=True)                          # (n, d)
    lx = ops.einsum("...jl,ld->...jd", kernel, xc)
    return 2.0 * ops.sum(lx * xc, axis=-2) / float((n - 1) ** 2)


def _median(values):
    """The median over the last axis (the mean of the two middle values for an even count)."""
    k = int(values.shape[-1])
    ordered = ops.sort(values, axis=-1)
    return (ordered[..., (k - 1) // 2] + ordered[..., k // 2]) / 2.0


# ------------------------------------------------------------------ explainers

class _BlackBox(StreamingExplainer):
    """What the four methods share: no target layer, a score per masked copy."""

    uses_layer = False
    _smoother = "raise the number of masks"
    empty_maps_hint = (
        "every part of the input moved the explained score by the same amount (often not at all), so "
        "none stands out. Try another target, a baseline further from the input, or larger "
        "masked regions."
    )

    def __init__(self, model, layer=None, *, output=None, linearize=True, batch_size=32, verbose=0,
                 image_input=None, data_format=None, aug_smooth=False, eigen_smooth=False, reshape=None):
        _check_no_layer(type(self), layer, aug_smooth, self._smoother)
        super().__init__(model, None, output=output, linearize=linearize, batch_size=batch_size, verbose=verbose,
                         eigen_smooth=eigen_smooth, image_input=image_input, data_format=data_format,
                         reshape=reshape)

    def _layer_specs(self, layer):
        return []

    @property
    def _known_size(self):
        """The model's spatial input size when it is fixed, else None."""
        size = self.graph.inputs.spatial_shape
        return None if size is None or None in size else tuple(int(s) for s in size)

    # The grid of the grid methods when none is given, by spatial rank (each axis at most its size).
    _default_grid = {}

    def _init_grid(self, grid_):
        """Read ``grid`` (None for the default); checked against the input size when it is fixed."""
        rank = self.graph.inputs.rank
        self.grid = None if grid_ is None else per_axis("grid", grid_, rank, "cells per spatial axis")
        if self._known_size is not None:
            self.cells(self._known_size)

    def cells(self, size):
        """The grid's cells per axis for an input of spatial ``size``: ``grid``, checked to fit,
        or the default (``_default_grid`` of the rank, at most each axis's size)."""
        if self.grid is None:
            return tuple(min(self._default_grid[len(size)], int(n)) for n in size)
        check_fits("grid", self.grid, size, "a cell must cover at least one position", "pass a smaller grid")
        return self.grid

    def masked_scores(self, images, idx, target_fn, which, masks, fill=0.0):
        """``(b,)``: the score of ``fill + (x - fill) M`` for the rows ``which`` of ``images``."""
        x = ops.take(images, which, axis=0)
        m = masks[..., None]
        masked = x * m if isinstance(fill, float) and fill == 0.0 else x * m + ops.convert_to_tensor(fill) * (1.0 - m)
        outputs = self.graph.run(masked, rows=which)
        s, _, _ = self.target_scores(outputs, ops.take(idx, which, axis=0), _targets.rows(target_fn, which))
        return s


class Occlusion(_BlackBox):
    """Occlusion (Zeiler and Fergus, ECCV 2014): the score's drop when a patch is filled.

    A patch of ``patch_size`` positions slides over the spatial axes with
    ``stride`` (anchors ``0, s, 2s, ...`` while the patch fits, plus
    ``n - p`` so that the last positions are covered too,
    :func:`occlusion_anchors`). For patch ``P`` the occluded input is ``x``
    with every channel set to ``fill`` inside ``P``, and the map is, at each
    position ``t``,

    ``M(t) = (1 / |{P : t in P}|) sum_{P contains t} (S(x) - S(x with P filled))``:

    the mean score drop over the patches that cover ``t`` (overlapping
    patches are averaged, not summed; with ``stride = patch_size`` each
    position is in one patch). Positive where hiding the region lowers the
    score. ``normalize=True`` (the default) min-max scales each map to [0, 1];
    ``normalize=False`` returns the score drops themselves. Maps are at the
    input's resolution (``upsample`` is ignored). Costs
    ``1 + prod_axis (number of anchors)`` forward passes per input.

    Args:
        model: a Keras model; never modified.
        layer: must be None (there is no target layer).
        patch_size: the patch's size in positions: an int for every spatial
            axis or one per axis; None takes an eighth of each axis (at least 1).
        stride: the step between patches, an int or one per axis; None is
            half the patch (at least 1).
        fill: the value of an occluded position: a number or one per channel,
            in the model's preprocessed units (0 by default).
        **kwargs: options passed to :class:`keras_cam.Explainer`:
            ``output``: for multi-output models, the output holding the class scores.
            ``linearize``: score the logit before a final softmax/sigmoid (the
                default); False scores the model's own output.
            ``batch_size``: occluded copies per forward pass, and inputs per call.
            ``verbose``: 0 (the default) is silent, 1 draws a progress bar over the passes.
            ``image_input``: see :class:`keras_cam.Explainer`.
            ``data_format``: see :class:`keras_cam.Explainer`.
            ``aug_smooth``: not supported (a ValueError).
            ``eigen_smooth``: not supported (a ValueError).
            ``reshape``: accepted for a uniform call; changes nothing.

    Example:
        >>> maps = keras_cam.Occlusion(model, patch_size=32, stride=16)(images)
        >>> drops = keras_cam.Occlusion(model, patch_size=(8, 8), fill=0.5)(images, normalize=False)
    """

    _smoother = "lower `stride` (more overlapping patches are averaged)"

    def __init__(self, model, layer=None, *, patch_size=None, stride=None, fill=0.0, **kwargs):
        super().__init__(model, layer, **kwargs)
        rank = self.graph.inputs.rank
        self.patch_size = None if patch_size is None else per_axis(
            "patch_size", patch_size, rank, "the occluded patch, in positions")
        self.stride = None if stride is None else per_axis("stride", stride, rank, "the step between patches")
        self.fill = check_fill(fill)
        if self._known_size is not None:
            self.sizes(self._known_size)

    def sizes(self, size):
        """``(patch, stride)`` per axis for an input of spatial ``size`` (checked)."""
        patch = self.patch_size or tuple(max(1, int(n) // 8) for n in size)
        stride = self.stride or tuple(max(1, p // 2) for p in patch)
        check_fits("patch_size", patch, size, "a patch must fit inside it",
                   f"pass a patch_size of at most {tuple(int(s) for s in size)}, one value per spatial axis")
        if any(s > p for s, p in zip(stride, patch)):
            raise ValueError(
                f"`stride` {stride} is larger than `patch_size` {patch} on some axis: the positions between "
                f"patches would be in none and have no score drop. Pass a stride of at most the patch size."
            )
        return patch, stride

    def raw_maps(self, images, class_idx, target_fn=None):
        size = tuple(int(s) for s in images.shape[1:-1])
        patch, stride = self.sizes(size)
        channels = int(images.shape[-1])
        fill = self.fill
        if not isinstance(fill, float) and fill.shape[0] not in (1, channels):
            raise ValueError(
                f"`fill` has {fill.shape[0]} values but the input has {channels} channels; pass one "
                f"number, or one per channel."
            )
        scored = self.target_scores(self.graph.run(images), class_idx, target_fn)
        base, idx = scored[0], scored[1]
        anchors = occlusion_anchors(size, patch, stride)
        count = np.zeros(size, np.float32)
        for k in range(int(math.prod(len(a) for a in anchors))):
            starts = np.unravel_index(k, [len(a) for a in anchors])
            count[tuple(slice(a[s], a[s] + p) for a, s, p in zip(anchors, starts, patch))] += 1

        def drops(chunk):                                  # (b, 2): input, patch
            which = chunk[:, 0]
            masks = occlusion_masks(chunk[:, 1], size, patch, anchors)
            s = self.masked_scores(images, idx, target_fn, which, 1.0 - masks, fill)
            return chunk[:, :1], _rows_of(ops.take(base, which, axis=0) - s, masks) * masks

        total = self.stream(grid(images.shape[0], math.prod(len(a) for a in anchors)), drops,
                            ops.zeros((int(images.shape[0]),) + size, "float32"))
        return total / ops.convert_to_tensor(count)[None], scored


class RISE(_BlackBox):
    """RISE (Petsiuk et al., BMVC 2018): the mean of random smooth masks weighted by their scores.

    ``M = (1 / (masks p)) sum_{i < masks} S(x * M_i) M_i``

    over ``masks`` random masks ``M_i`` ``(*S)`` in [0, 1], each channel of
    ``x`` multiplied by the mask. ``M_i`` is a binary grid of ``grid + 1``
    cells per axis, each kept with probability ``p``, resized bilinearly to
    ``(grid + 1) C`` positions per axis (``C = ceil(n / grid)``) and cropped at a
    random shift in ``[0, C)`` (:func:`rise_masks`): the paper's smooth masks
    with random shifts. Since ``E[M_i] = p``, the normalization by
    ``masks p`` makes ``M(t)`` the Monte-Carlo estimate of
    ``E[S(x * M) | M(t) = 1]`` the paper defines. The paper scores the
    class probability: pass ``linearize=False`` for a softmax model's
    probability; the default scores the logit, as the other methods.

    Mask ``i`` depends only on ``(seed, i)`` (:func:`keras_cam.random.uniform`),
    whatever the batch, ``batch_size`` or backend. ``normalize=False`` returns
    ``M`` itself; maps are at the input's resolution (``upsample`` is
    ignored). Costs ``1 + masks`` forward passes per input.

    Args:
        model: a Keras model; never modified.
        layer: must be None (there is no target layer).
        masks: the number of random masks.
        grid: cells per spatial axis of the binary grid (an int or one per axis), at
            most the input's size on that axis; None is 7 per axis (at most the axis's size).
        p: the probability that a cell is kept, in (0, 1).
        seed: the seed of the masks.
        **kwargs: ``output``, ``linearize``, ``batch_size``, ``verbose``, ``image_input``,
            ``data_format``, ``aug_smooth``, ``eigen_smooth``, ``reshape``: as for :class:`Occlusion`.

    Example:
        >>> maps = keras_cam.RISE(model, masks=4000, grid=7, p=0.5)(images)
    """

    _default_grid = {1: 7, 2: 7, 3: 7}

    def __init__(self, model, layer=None, *, masks=2000, grid=None, p=0.5, seed=0, **kwargs):
        super().__init__(model, layer, **kwargs)
        self.masks = check_positive_int("masks", masks, "random masks per input")
        self._init_grid(grid)
        self.p = check_probability(p)
        self.seed = check_seed(seed)

    def raw_maps(self, images, class_idx, target_fn=None):
        size = tuple(int(s) for s in images.shape[1:-1])
        cells = self.cells(size)
        scored = self.target_scores(self.graph.run(images), class_idx, target_fn)

        def weighted(chunk):                               # (b, 2): input, mask
            which = chunk[:, 0]
            masks = rise_masks(self.seed, chunk[:, 1], size, cells, self.p)
            s = self.masked_scores(images, scored[1], target_fn, which, masks)
            return chunk[:, :1], _rows_of(s / (self.masks * self.p), masks) * masks

        total = self.stream(grid(images.shape[0], self.masks), weighted,
                            ops.zeros((int(images.shape[0]),) + size, "float32"))
        return total, scored


class _GridDesign(_BlackBox):
    """Sobol and HSIC: a design table of grid-cell values, one forward pass per row."""

    # About 64 cells: 8 x 8 for images (the papers'), 8 for signals, 4 x 4 x 4 for volumes.
    _default_grid = {1: 8, 2: 8, 3: 4}

    def _init_design(self, grid_, designs, seed):
        self.designs = check_positive_int("designs", designs, "designs of the sample")
        self.seed = check_seed(seed)
        self._tables = {}
        self._init_grid(grid_)

    def table(self, cells):
        """The design table ``(rows, prod(cells))`` (made once per grid)."""
        if cells not in self._tables:
            self._tables[cells] = self.make_table(int(math.prod(cells)))
        return self._tables[cells]

    def scores_of_table(self, images, class_idx, target_fn):
        """``((N, rows) scores of the masked copies, target_scores(...), cells)``."""
        size = tuple(int(s) for s in images.shape[1:-1])
        cells = self.cells(size)
        scored = self.target_scores(self.graph.run(images), class_idx, target_fn)
        table = self.table(cells)

        def score(chunk):                                  # (b, 2): input, design row
            masks = grid_masks(table, chunk[:, 1], size, cells)
            return chunk, self.masked_scores(images, scored[1], target_fn, chunk[:, 0], masks)

        n = int(images.shape[0])
        return self.stream(grid(n, len(table)), score, ops.zeros((n, len(table)), "float32")), scored, cells


class SobolAttribution(_GridDesign):
    """Sobol attribution (Fel et al., NeurIPS 2021): total Sobol indices of grid cells.

    The input is cut into ``grid`` cells per axis (nearest, :func:`cell_index`);
    a design row ``u`` in ``[0, 1]^cells`` gives the mask ``M`` equal to ``u_c``
    over cell ``c`` and the masked input ``x * M`` (each channel). With the
    quasi-Monte-Carlo design of :func:`sobol_designs` (``A``, ``B`` and the
    ``C_i``, ``n = designs`` rows each, from a scrambled Sobol sequence), the
    map at cell ``i`` is the Jansen estimator of the total Sobol index
    (:func:`jansen_total_indices`)

    ``ST_i = (1 / 2n) sum_j (S(x * M(A_j)) - S(x * M(C_i,j)))^2 / V``,

    ``V`` the variance of the scores on ``A`` and ``B``: the share of the
    score's variance, over random masks, that involves cell ``i``, alone or
    with others. The maps are ``(N, *grid)`` at the grid's resolution,
    upsampled bilinearly to the input's (``upsample=True``) and min-max
    scaled (``normalize=True``). Costs ``1 + designs (prod(grid) + 2)``
    forward passes per input (2113 for ``grid=8, designs=32`` on an image).

    The design depends only on ``(seed, designs, grid)``; every input is
    scored on the same masks.

    Args:
        model: a Keras model; never modified.
        layer: must be None (there is no target layer).
        grid: cells per spatial axis (an int or one per axis, at most the input's size); None
            is 8 per axis for signals and images, 4 for volumes (at most the axis's size).
        designs: ``n``, rows of each of ``A``, ``B`` and the ``C_i`` (a power of 2 keeps the Sobol
            sequence balanced; the paper uses 32).
        seed: the seed of the scrambled Sobol sequence.
        **kwargs: ``output``, ``linearize``, ``batch_size``, ``verbose``, ``image_input``,
            ``data_format``, ``aug_smooth``, ``eigen_smooth``, ``reshape``: as for :class:`Occlusion`.

    Example:
        >>> maps = keras_cam.SobolAttribution(model, grid=8, designs=32)(images)
    """

    _smoother = "raise `designs`"

    def __init__(self, model, layer=None, *, grid=None, designs=32, seed=0, **kwargs):
        super().__init__(model, layer, **kwargs)
        self._init_design(grid, designs, seed)

    def make_table(self, dims):
        return sobol_designs(dims, self.designs, self.seed)

    def raw_maps(self, images, class_idx, target_fn=None):
        y, scored, cells = self.scores_of_table(images, class_idx, target_fn)
        n, d = self.designs, int(math.prod(cells))
        st = jansen_total_indices(y[:, :n], y[:, n:2 * n], ops.reshape(y[:, 2 * n:], (-1, d, n)))
        return ops.reshape(st, (-1,) + cells), scored


class HSICAttribution(_GridDesign):
    """HSIC attribution (Novello, Fel and Vigouroux, NeurIPS 2022): dependence of the score on each grid cell.

    The input is cut into ``grid`` cells per axis (nearest, :func:`cell_index`);
    design row ``j`` keeps each cell or zeroes it (``x_j`` in ``{0, 1}^cells``, a
    Latin hypercube sample thresholded at 1/2, :func:`hsic_designs`), and
    ``y_j = S(x * M(x_j))``. The map at cell ``i`` is the Hilbert-Schmidt
    independence criterion between the cell's presence and the score
    (:func:`hsic_indices`):

    ``HSIC_i = tr(K_i H L H) / (n - 1)^2``, ``K_i[j, l] = [x_ji = x_li]``,
    ``L[j, l] = exp(-(y_j - y_l)^2 / (2 sigma^2))``, ``sigma`` the median
    of ``|y_j - y_l|``, ``H = I - 11^T / n``, ``n = designs``.

    Unlike Sobol indices it sees any dependence, not only variance, and
    needs fewer forward passes. Maps are ``(N, *grid)``, upsampled bilinearly
    to the input's size (``upsample=True``) and min-max scaled
    (``normalize=True``). Costs ``1 + designs`` forward passes per input, and
    ``designs^2`` values per input for the output kernel.

    Args:
        model: a Keras model; never modified.
        layer: must be None (there is no target layer).
        grid: cells per spatial axis (an int or one per axis, at most the input's size); None
            is 8 per axis for signals and images, 4 for volumes (at most the axis's size).
        designs: masks per input (the paper uses 1500 for an 8 x 8 grid).
        seed: the seed of the Latin hypercube.
        **kwargs: ``output``, ``linearize``, ``batch_size``, ``verbose``, ``image_input``,
            ``data_format``, ``aug_smooth``, ``eigen_smooth``, ``reshape``: as for :class:`Occlusion`.

    Example:
        >>> maps = keras_cam.HSICAttribution(model, grid=8, designs=1500)(images)
    """

    _smoother = "raise `designs`"

    def __init__(self, model, layer=None, *, grid=None, designs=1500, seed=0, **kwargs):
        super().__init__(model, layer, **kwargs)
        self._init_design(grid, designs, seed)
        if self.designs < 2:
            raise ValueError(f"`designs` must be at least 2 (HSIC compares pairs of masks); received {designs!r}.")

    def make_table(self, dims):
        return hsic_designs(dims, self.designs, self.seed)

    def raw_maps(self, images, class_idx, target_fn=None):
        y, scored, cells = self.scores_of_table(images, class_idx, target_fn)
        return ops.reshape(hsic_indices(self.table(cells), y), (-1,) + cells), scored

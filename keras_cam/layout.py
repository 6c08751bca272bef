"""How inputs and activations are seen: ``(N, *spatial, C)``, spatial rank 1, 2 or 3.

Every explainer computes on one canonical form. An input batch is
channels-last ``(N, *S, C)`` with ``S`` of length 1 (a signal ``T``), 2 (an
image ``H, W``) or 3 (a volume ``D, H, W``); a map is ``(N, *S)``; a target
layer's activation is seen as a feature map ``(N, *s, K)`` over the same
spatial rank. This module is the only place that knows anything else:

- :class:`InputLayout` reads the spatial rank and the data format from the
  model's image input, turns what the user passes into a batch (an array of
  the model's rank is a batch, one rank less is a single example) and
  converts between the model's format and channels-last.
- :class:`FeatureLayout` turns a target layer's raw output into a feature
  map: a channels-first map is transposed, and a token sequence
  ``(N, L, K)`` of a 2-D model (a vision transformer) is laid out on its
  patch grid ``(N, h, w, K)`` after dropping the leading class / register
  tokens (:func:`token_grid`), or by a user's ``reshape=``.
- :func:`resize` (linear, bilinear, trilinear), :func:`minmax`,
  :func:`spatial_axes` and :func:`flatten_spatial` work at any rank.

Gradients follow the same view: a view is linear in the raw output (a
transpose, a slice and a reshape), so ``view(dS/draw) = dS/d view(raw)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from keras_cam._compat import ops

# A map whose range is below this fraction of its magnitude is constant up to
# float rounding (resizing adds a few ulps): it carries no location.
CONSTANT_RTOL = 1e-6

# Class, distillation and register tokens that may precede the patch tokens.
MAX_PREFIX_TOKENS = 8

_NAMES = {1: "a signal (T, C)", 2: "an image (H, W, C)", 3: "a volume (D, H, W, C)"}


def spatial_axes(x):
    """The spatial axes of a channels-last feature tensor ``(N, *s, K)``: ``1 .. rank-2``."""
    return tuple(range(1, len(x.shape) - 1))


def map_axes(maps):
    """The spatial axes of maps ``(N, *s)``: every axis but the batch."""
    return tuple(range(1, len(maps.shape)))


def weigh_channels(a, w):
    """``w_k A^k``: feature maps ``(N, *s, K)`` times per-channel weights ``(N, K)``."""
    a = ops.convert_to_tensor(a)
    shape = (-1,) + (1,) * (len(a.shape) - 2) + (int(a.shape[-1]),)
    return a * ops.reshape(ops.cast(w, a.dtype), shape)


def flatten_spatial(x):
    """``(N, *s, K) -> (N, prod(s), K)``."""
    return ops.reshape(x, (-1, math.prod(int(d) for d in x.shape[1:-1]), int(x.shape[-1])))


def minmax(maps):
    """Per-map min-max scaling to [0, 1]: ``(M - min M) / (max M - min M)``, any rank.

    A constant map (range within rounding of zero, all-zero maps included)
    has no location to show and becomes all zeros, never NaN.
    """
    axes = map_axes(maps)
    lo = ops.min(maps, axis=axes, keepdims=True)
    hi = ops.max(maps, axis=axes, keepdims=True)
    span = hi - lo
    scale = ops.maximum(ops.abs(hi), ops.abs(lo))
    # 1 / span per map, 0 for a constant one: two passes over the full-size maps, not four.
    inverse = ops.where(span > CONSTANT_RTOL * scale, ops.divide_no_nan(ops.ones_like(span), span),
                        ops.zeros_like(span))
    return (maps - lo) * inverse


def _resize2d(x, size):
    size = tuple(int(v) for v in size)
    if tuple(x.shape[1:3]) == size:
        return x
    return ops.image.resize(x, size, interpolation="bilinear", antialias=False, data_format="channels_last")


def linear_weights(n_in, n_out):
    """``(n_out, n_in)`` float32 weights of linear interpolation with half-pixel centres:
    row ``i`` reads the input at ``p = clip((i + 0.5) n_in / n_out - 0.5, 0, n_in - 1)``,
    ``(1 - f)`` from ``floor(p)`` and ``f = p - floor(p)`` from the next sample."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    weights = np.zeros((n_out, n_in), np.float64)
    np.add.at(weights, (np.arange(n_out), lo), 1 - (pos - lo))
    np.add.at(weights, (np.arange(n_out), hi), pos - lo)
    return weights.astype(np.float32)


def resize(maps, size):
    """Resize maps ``(N, *s)`` to ``size`` (one length per spatial axis), linearly.

    Linear (1-D), bilinear (2-D) or trilinear (3-D) interpolation with
    half-pixel centres on every axis, the convention of ``tf.image.resize``:
    output sample ``i`` reads the input at ``(i + 0.5) * in / out - 0.5``,
    clamped to the edge. Trilinear interpolation is separable, so a volume is
    resized bilinearly over ``(H, W)`` and then linearly over ``D`` (a product with
    :func:`linear_weights`); a signal
    is a ``T x 1`` image.
    """
    rank = len(maps.shape) - 1
    size = tuple(int(v) for v in size)
    if rank == 1:
        return _resize2d(maps[:, :, None, None], (size[0], 1))[:, :, 0, 0]
    if rank == 2:
        return _resize2d(maps[..., None], size)[..., 0]
    if rank == 3:
        d, h, w = (int(v) for v in maps.shape[1:])
        planes = ops.reshape(maps, (-1, h, w, 1))
        planes = _resize2d(planes, (size[1], size[2]))                     # (N*D, H', W', 1)
        if d == size[0]:
            return ops.reshape(planes, (-1, d, size[1], size[2]))
        # Along D: one matrix product with the interpolation weights (D', D), cheaper than a
        # second image resize whose other axis (H'*W') is left as it is.
        columns = ops.reshape(planes, (-1, d, size[1] * size[2]))        # (N, D, H'*W')
        weights = ops.convert_to_tensor(linear_weights(d, size[0]), dtype=columns.dtype)
        return ops.reshape(ops.einsum("ad,ndc->nac", weights, columns), (-1, size[0], size[1], size[2]))
    raise ValueError(f"Maps must have 1 to 3 spatial axes; received shape {tuple(maps.shape)}.")


def nearest_resize(array, size):
    """Nearest-neighbour resize of ``(N, *spatial)`` to ``(N, *size)``, any spatial rank.

    Output index ``i`` on an axis of length ``n`` read from a source axis of
    length ``m`` takes source index ``min(floor((i + 0.5) * m / n), m - 1)``
    (half-pixel centres, as ``tf.image.resize(..., "nearest")``).

    Args:
        array: ``(N, *spatial)`` numpy array (masks, labels).
        size: the new spatial size, one length per spatial axis.

    Returns:
        ``(N, *size)`` numpy array of the same dtype.
    """
    out = np.asarray(array)
    for axis, n in enumerate(size, start=1):
        m = out.shape[axis]
        if m != n:
            src = np.minimum(np.floor((np.arange(n) + 0.5) * m / n).astype(np.int64), m - 1)
            out = np.take(out, src, axis=axis)
    return out


def token_grid(length, image_size, max_prefix=MAX_PREFIX_TOKENS):
    """``(prefix, (h, w))``: how ``length`` tokens of an ``image_size`` input lie on a grid.

    A vision transformer's patch embedding cuts an ``H x W`` image into
    patches with an integer stride ``p``, which gives ``h = H // p`` by
    ``w = W // p`` patch tokens (``ceil`` with "same" padding). The leading
    ``prefix`` tokens (class, distillation, register tokens) are not
    patches. The smallest ``prefix`` in ``0..max_prefix`` for which
    ``length - prefix`` is such an ``h * w`` is chosen.

    Returns:
        ``(prefix, (h, w))``, or None when no grid fits.
    """
    height, width = (int(s) for s in image_size)
    grids = {}
    for p in range(1, max(height, width) + 1):
        for h, w in ((height // p, width // p), (-(-height // p), -(-width // p))):
            if h and w:
                grids.setdefault(h * w, (h, w))
    for prefix in range(0, max_prefix + 1):
        if int(length) - prefix in grids:
            return prefix, grids[int(length) - prefix]
    return None


def as_float_array(images, what="images"):
    """``images`` (numpy, a tensor of any backend, nested lists) as a float32 numpy array.

    Raises a TypeError that says what was passed and what to pass instead
    for None, strings, dicts, datasets and arrays of objects or booleans.
    """
    if images is None:
        raise TypeError(f"`{what}` is None; pass an array (numpy or a tensor) of shape (N, ...) or one example.")
    if isinstance(images, (str, bytes)):
        raise TypeError(
            f"`{what}` is a string ({images[:60]!r}); pass the image as an array. To explain image "
            f"files, read them first (e.g. keras.utils.load_img) or use the `keras-cam explain` command."
        )
    if hasattr(images, "element_spec") or type(images).__name__ in ("DataLoader", "PyDataset"):
        raise TypeError(
            f"`{what}` is a {type(images).__name__}, a dataset of batches; an explainer call takes "
            f"arrays. Use keras_cam.explain_dataset(explainer, dataset) to explain a whole dataset."
        )
    if isinstance(images, dict):
        raise TypeError(
            f"`{what}` is a dict (keys {sorted(map(str, images))[:8]}), but the model has a single "
            f"input; pass the array itself."
        )
    if hasattr(images, "detach") and hasattr(images, "cpu"):  # a torch tensor
        images = images.detach().cpu().numpy()
    try:
        x = np.asarray(images)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{what}` of type {type(images).__name__} is not an array: {err}") from None
    if x.dtype.kind not in "iuf":
        raise TypeError(
            f"`{what}` has dtype {x.dtype} ({type(images).__name__}); pass numbers (float or int "
            f"pixel values), as for model.predict."
        )
    return x.astype(np.float32, copy=False)


def stack(images):
    """A list of equally shaped examples as one array (anything else as it is)."""
    if not isinstance(images, (list, tuple)):
        return images
    shapes = {tuple(np.shape(im)) for im in images}
    if len(shapes) > 1:
        raise ValueError(
            f"`images` is a list of arrays of different shapes {sorted(shapes)}; resize "
            f"them to one size (the model's input size) before explaining them together. (The "
            f"inputs of a multi-input model go to an explainer as a list; CAMCallback, "
            f"explain_dataset and the metrics take single-input models.)"
        )
    return np.stack([np.asarray(im) for im in images]) if images else np.zeros((0,))


@dataclasses.dataclass(frozen=True)
class InputLayout:
    """The model's image input: its spatial rank and data format.

    Attributes:
        rank: number of spatial axes (1 signal, 2 image, 3 volume).
        channels_first: the model takes ``(N, C, *S)`` instead of ``(N, *S, C)``.
        shape: the input's shape without the batch axis, in the model's
            format (None entries for free sizes), or None when unknown.
    """

    rank: int = 2
    channels_first: bool = False
    shape: tuple | None = None

    @property
    def name(self):
        return _NAMES[self.rank]

    def batch(self, images):
        """``(float32 tensor (N, ...) in the model's format, whether one example was given)``.

        An array of the model's rank (``rank + 2``) is a batch; one rank less
        is a single example, returned with a batch axis of 1.
        """
        x = as_float_array(stack(images))
        if x.ndim == self.rank + 1:
            return x[None], True
        if x.ndim != self.rank + 2:
            one = self.name if not self.channels_first else f"{self.name} channels first"
            raise ValueError(
                f"`images` must be one example, {one}, or a batch of them (rank {self.rank + 2}) for "
                f"a model with {self.rank} spatial axes; received shape {tuple(x.shape)}."
            )
        if x.shape[0] == 0:
            raise ValueError("`images` is an empty batch (0 images); pass at least one image.")
        return x, False

    def to_channels_last(self, x):
        """A batch in the model's format as ``(N, *S, C)``."""
        if not self.channels_first:
            return x
        return ops.transpose(x, (0,) + tuple(range(2, self.rank + 2)) + (1,))

    def to_model_format(self, x):
        """A channels-last batch ``(N, *S, C)`` in the model's format."""
        if not self.channels_first:
            return x
        return ops.transpose(x, (0, self.rank + 1) + tuple(range(1, self.rank + 1)))

    @property
    def spatial_shape(self):
        """The input's spatial sizes (None where free), or None when the shape is unknown."""
        if self.shape is None:
            return None
        return tuple(self.shape[1:] if self.channels_first else self.shape[:-1])


def input_layout(shape, channels_first=False):
    """The :class:`InputLayout` of a model input of ``shape`` (batch axis included), or the 2-D default."""
    if shape is None:
        return InputLayout(2, channels_first, None)
    rank = len(shape) - 2
    if rank not in (1, 2, 3):
        raise ValueError(
            f"The model's input has shape {tuple(shape)}: keras-cam explains inputs with 1 to 3 "
            f"spatial axes and a channel axis, (N, T, C), (N, H, W, C) or (N, D, H, W, C)."
        )
    return InputLayout(rank, bool(channels_first), tuple(shape[1:]))


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
    """How one target layer's raw output is seen as a feature map ``(N, *s, K)``.

    Attributes:
        kind: ``"spatial"`` (a map over the input's spatial axes) or
            ``"tokens"`` (a sequence ``(N, L, K)`` laid out on a 2-D grid).
        channels_first: a spatial map is ``(N, K, *s)``.
        prefix: tokens before the patch tokens (dropped).
        grid: ``(h, w)`` of the patch tokens.
        reshape: a user's ``(N, L, K) -> (N, h, w, K)`` transform, used instead.
        images: 0, or the images per input of a multi-image model (Gemma 3's
            ``(N, images, H, W, C)``) whose tokens are ``(N * images, h * w, K)``,
            each image's on its own grid: seen as ``(N, images, h, w, K)``.
    """

    kind: str
    channels_first: bool = False
    prefix: int = 0
    grid: tuple | None = None
    reshape: Callable | None = None
    images: int = 0

    def view(self, raw):
        """The raw output (or its gradient) as a channels-last feature map."""
        if self.kind == "tokens":
            if self.reshape is not None:
                return self.reshape(raw)
            patches = raw[:, self.prefix:]
            per_image = (self.images,) if self.images else ()
            return ops.reshape(patches, (-1,) + per_image + (self.grid[0], self.grid[1], int(raw.shape[-1])))
        if self.channels_first:
            rank = len(raw.shape)
            return ops.transpose(raw, (0,) + tuple(range(2, rank)) + (1,))
        return raw

    def unview(self, features, raw):
        """The raw output whose view is ``features`` (the prefix tokens taken from ``raw``)."""
        if self.kind == "tokens":
            if self.reshape is not None:
                raise ValueError(
                    "This method edits the target layer's output, which needs the inverse of the "
                    "layout; a callable `reshape=` has none. Pass `reshape=(h, w)` instead."
                )
            patches = ops.reshape(features, (-1, self.grid[0] * self.grid[1], int(raw.shape[-1])))
            return ops.concatenate([raw[:, :self.prefix], ops.cast(patches, raw.dtype)], axis=1)
        if self.channels_first:
            rank = len(features.shape)
            return ops.transpose(features, (0, rank - 1) + tuple(range(1, rank - 1)))
        return features


def describe(shape, rank, image_size=None, channels_first=False, reshape=None):
    """The :class:`FeatureLayout` of a layer output of ``shape``, or None.

    Args:
        shape: the output's shape, batch axis included.
        rank: the spatial rank of the model's input.
        image_size: ``(H, W)`` of the input, needed to find a token grid.
        channels_first: the layer returns channels-first maps.
        reshape: None, ``(h, w)`` or a callable (see :class:`FeatureLayout`).

    Returns:
        The layout, or None when the output is not a feature map in this
        layout (a vector, a map of another rank, a token sequence with no grid).
    """
    shape = tuple(shape)
    if callable(reshape):
        return FeatureLayout("tokens", reshape=reshape)
    if len(shape) == rank + 2 and reshape is None:
        return FeatureLayout("spatial", channels_first=channels_first)
    if (len(shape) == 3 and rank == 3 and reshape is None and None not in shape and image_size is not None
            and None not in tuple(image_size) and int(shape[0]) % int(tuple(image_size)[0]) == 0):
        # Each image's tokens (N * images, h * w, K) of a multi-image input (N, images, H, W, C):
        # the first axis, a multiple of the images (a volume model's (N, L, K) tokens are no such layer).
        fit = token_grid(int(shape[1]), tuple(image_size)[1:], max_prefix=0)
        return None if fit is None else FeatureLayout("tokens", grid=fit[1], images=int(tuple(image_size)[0]))
    if len(shape) != 3 or rank != 2 or shape[1] is None:
        return None
    length = int(shape[1])
    if reshape is not None:
        h, w = reshape
        prefix = length - h * w
        return FeatureLayout("tokens", prefix=prefix, grid=(h, w)) if 0 <= prefix <= length else None
    if image_size is None or None in tuple(image_size):
        return None
    fit = token_grid(length, image_size)
    return None if fit is None else FeatureLayout("tokens", prefix=fit[0], grid=fit[1])


def check_reshape(reshape):
    """Validate ``reshape=``: None, a ``(h, w)`` pair of positive ints, or a callable."""
    if reshape is None or callable(reshape):
        return reshape
    if isinstance(reshape, (tuple, list)) and len(reshape) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in reshape):
        return tuple(int(v) for v in reshape)
    raise TypeError(
        f"`reshape` must be None (inferred), a token grid (h, w) of positive ints, or a callable "
        f"(N, L, C) -> (N, h, w, C); received {reshape!r}."
    )

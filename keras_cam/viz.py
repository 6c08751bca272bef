"""Pictures of maps: coloured overlays and comparison grids.

``overlay`` blends one map over one input with an OpenCV colormap: an image
under its 2-D map, a signal (1-D) drawn over bands coloured by its map, or a
volume (3-D) as three orthogonal slices through the map's maximum. ``plot``
draws a grid (rows of inputs, columns of explainers: methods, layers or
models) on a :class:`matplotlib.figure.Figure` of its own. Nothing here
changes matplotlib's global state (rcParams, pyplot's current figure).
"""

from __future__ import annotations

import io
import numbers

import cv2
import numpy as np
from matplotlib.figure import Figure

from keras_cam._compat import to_host
from keras_cam.base import Explanation

_COLORMAPS = {
    name[len("COLORMAP_"):].lower(): getattr(cv2, name)
    for name in dir(cv2) if name.startswith("COLORMAP_")
}


def colormap_code(colormap) -> int:
    """The OpenCV colormap constant for a name (``"jet"``, ``"COLORMAP_TURBO"``) or a code."""
    if isinstance(colormap, str):
        key = colormap.strip().lower()
        key = key[len("colormap_"):] if key.startswith("colormap_") else key
        if key in _COLORMAPS:
            return _COLORMAPS[key]
    elif isinstance(colormap, numbers.Integral) and int(colormap) in _COLORMAPS.values():
        return int(colormap)
    raise ValueError(
        f"Unknown colormap {colormap!r}; use an OpenCV colormap name, one of "
        f"{sorted(_COLORMAPS)}, or a cv2.COLORMAP_* constant."
    )


def as_rgb_uint8(image) -> np.ndarray:
    """An image as ``(H, W, 3)`` uint8 RGB.

    Accepts ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` (alpha
    dropped); uint8 as is, integers in [0, 255], floats in [0, 1] (scaled by
    255) or in [0, 255]. A float image whose values all lie in [0, 1] is read
    as [0, 1].
    """
    x = to_host(image)
    if x.ndim == 3 and x.shape[-1] in (1, 3, 4):
        x = x[..., :3]
    elif x.ndim != 2:
        raise ValueError(
            f"`image` must be one image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); received "
            f"shape {x.shape}. Pass images[i] for one image of a batch."
        )
    if x.size == 0:
        raise ValueError(f"`image` is empty (shape {x.shape}).")
    if x.dtype == np.uint8:
        out = x
    elif np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
        lo, hi = np.min(x), np.max(x)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 255:
            raise ValueError(
                f"`image` values span [{lo:g}, {hi:g}]; expected uint8, or floats in [0, 1] or "
                f"[0, 255]. Pass the image as it was before the model's preprocessing."
            )
        if hi <= 1 and np.issubdtype(to_host(image).dtype, np.floating):
            x = x * 255.0
        out = np.rint(x).astype(np.uint8)
    else:
        raise TypeError(f"`image` must hold numbers; received dtype {x.dtype}.")
    if out.ndim == 2 or out.shape[-1] == 1:
        out = np.repeat(out.reshape(out.shape[0], out.shape[1], 1), 3, axis=-1)
    return out


def displayable(image) -> np.ndarray:
    """An image ready for :func:`overlay`: as it is (float32) when its values are
    in [0, 1] or [0, 255], otherwise min-max scaled to [0, 1] (an image that
    was preprocessed for the model, e.g. to [-1, 1])."""
    x = to_host(image).astype(np.float32)
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo >= 0 and hi <= 255:
        return x if hi > 1 else np.clip(x, 0, 1)
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _heatmap_float(heatmap, rank=2) -> np.ndarray:
    """A heatmap as a float32 array of ``rank`` axes (``(h, w)`` by default) in [0, 1]."""
    h = to_host(heatmap)
    if rank == 2 and h.ndim == 3 and h.shape[-1] == 1:
        h = h[..., 0]
    if h.ndim != rank or h.size == 0:
        expected = {1: "(t,)", 2: "(h, w) or (h, w, 1)", 3: "(d, h, w)"}[rank]
        raise ValueError(
            f"`heatmap` must be one map {expected}; received shape {h.shape}. "
            f"Pass maps[i] for one map of a batch."
        )
    if h.dtype == np.uint8:
        return h.astype(np.float32) / 255.0
    if not (np.issubdtype(h.dtype, np.floating) or np.issubdtype(h.dtype, np.integer)):
        raise TypeError(f"`heatmap` must hold numbers; received dtype {h.dtype}.")
    h = h.astype(np.float32)
    lo, hi = float(np.min(h)), float(np.max(h))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"`heatmap` values span [{lo:g}, {hi:g}]; expected floats in [0, 1] (what an "
            f"explainer returns with normalize=True) or uint8."
        )
    return np.clip(h, 0.0, 1.0)


def colorize(heatmap, colormap="jet", size=None) -> np.ndarray:
    """A heatmap in [0, 1] (or uint8) coloured as ``(H, W, 3)`` uint8 RGB.

    The map is resized bilinearly to ``size = (H, W)`` when given, scaled to
    ``round(255 * h)`` and coloured with the OpenCV colormap.
    """
    code = colormap_code(colormap)
    h = _heatmap_float(heatmap)
    if size is not None and tuple(size) != h.shape:
        h = cv2.resize(h, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    levels = np.rint(np.clip(h, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(cv2.applyColorMap(levels, code)[..., ::-1])  # BGR -> RGB


def resize_linear(x, size) -> np.ndarray:
    """Separable linear resize of an array's leading axes to ``size``.

    Output index ``i`` on an axis of length ``n`` read from length ``m``
    samples the source at ``(i + 0.5) * m / n - 0.5``, clamped to the ends:
    the half-pixel convention of ``tf.image.resize`` and ``cv2.INTER_LINEAR``.
    """
    out = np.asarray(x, dtype=np.float64)
    for axis, n in enumerate(size):
        m = out.shape[axis]
        if m == n:
            continue
        pos = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, m - 1)
        t = (pos - lo).reshape((n,) + (1,) * (out.ndim - axis - 1))
        out = np.take(out, lo, axis=axis) * (1 - t) + np.take(out, hi, axis=axis) * t
    return out


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` is the heatmap's weight, a number in [0, 1]; received {alpha!r}.")
    return float(alpha)


def _blend(rgb, colored, alpha):
    blend = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colored.astype(np.float64)
    return np.rint(blend).astype(np.uint8)


def _colours(levels, colormap):
    """The RGB colours ``(..., 3)`` of uint8 levels of any shape."""
    flat = np.asarray(levels, np.uint8).reshape(1, -1)
    rgb = cv2.applyColorMap(flat, colormap_code(colormap))[0, :, ::-1]
    return rgb.reshape(np.shape(levels) + (3,))


def _levels(h):
    return np.rint(np.clip(h, 0.0, 1.0) * 255.0).astype(np.uint8)


#: Pixel rows per channel of a signal drawn by :func:`overlay`.
SIGNAL_HEIGHT = 48
#: White columns between the slices of a volume drawn by :func:`overlay`.
SLICE_GAP = 2


def _signal_rows(values, height):
    """The pixel row of each sample of one channel: its maximum at row 0, its minimum at ``height - 1``."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1.0):
        return np.full(values.shape, height // 2, np.int64)
    return np.rint((hi - values) / (hi - lo) * (height - 1)).astype(np.int64)


def overlay_signal(signal, heatmap, alpha=0.5, colormap="jet", height=SIGNAL_HEIGHT) -> np.ndarray:
    """A 1-D map as coloured bands behind its signal.

    Column ``t`` of the picture is ``round((1 - alpha) * white + alpha *
    colour(map_t))``, with the map resized linearly to the signal's length;
    each channel is drawn in black in a strip of ``height`` rows, scaled to
    its own range (maximum at the strip's top), consecutive samples joined by
    vertical runs.

    Args:
        signal: ``(T,)`` or ``(T, C)`` samples, any range.
        heatmap: ``(t,)`` map in [0, 1] or uint8.
        alpha, colormap: as for :func:`overlay`.
        height: pixel rows per channel.

    Returns:
        ``(C * height, T, 3)`` uint8 RGB.
    """
    alpha = _check_alpha(alpha)
    x = to_host(signal).astype(np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"`signal` must be finite samples (T,) or (T, C); received shape {to_host(signal).shape}.")
    n, channels = x.shape
    h = _heatmap_float(heatmap, rank=1)
    if h.shape[0] != n:
        h = resize_linear(h, (n,))
    band = _blend(np.full((n, 3), 255, np.uint8), _colours(_levels(h), colormap), alpha)
    out = np.repeat(band[None], channels * height, axis=0)
    for c in range(channels):
        rows = _signal_rows(x[:, c], height)
        prev = np.concatenate([rows[:1], rows[:-1]])
        for t in range(n):
            a, b = sorted((int(prev[t]), int(rows[t])))
            out[c * height + a:c * height + b + 1, t] = 0
    return out


def _volume_gray(volume):
    """A volume ``(D, H, W)`` or ``(D, H, W, 1|3|4)`` as ``(D, H, W, 3)`` uint8, scaled to its own range."""
    v = to_host(volume).astype(np.float64)
    if v.ndim == 4 and v.shape[-1] in (1, 3, 4):
        v = v[..., :3]
    elif v.ndim == 3:
        v = v[..., None]
    else:
        raise ValueError(
            f"`image` of a 3-D map must be a volume (D, H, W) or (D, H, W, C) with 1, 3 or 4 "
            f"channels; received shape {to_host(volume).shape}. Pass volumes[i] for one of a batch."
        )
    if not np.isfinite(v).all():
        raise ValueError("`image` contains NaN or Inf.")
    lo, hi = v.min(), v.max()
    scaled = (v - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(v)
    out = np.rint(scaled).astype(np.uint8)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def volume_slices(heatmap, shape):
    """Where :func:`overlay_volume` cuts: the map resized to ``shape = (D, H, W)`` and its peak ``(d, h, w)``."""
    h = _heatmap_float(heatmap, rank=3)
    if h.shape != tuple(shape):
        h = resize_linear(h, shape)
    return h, np.unravel_index(int(np.argmax(h)), h.shape)


def overlay_volume(volume, heatmap, alpha=0.5, colormap="jet") -> np.ndarray:
    """A 3-D map as three orthogonal slices through its maximum, over the volume.

    The map is resized linearly to the volume; at its peak voxel ``(d, h, w)``
    the slices ``[d, :, :]`` (``H x W``), ``[:, h, :]`` (``D x W``) and
    ``[:, :, w]`` (``D x H``) are each blended as by :func:`overlay`, and put
    side by side, ``SLICE_GAP`` white columns apart, top-aligned on a white
    canvas. The volume is shown scaled to its own range (min black, max white).

    Args:
        volume: ``(D, H, W)`` or ``(D, H, W, C)``, any range.
        heatmap: ``(d, h, w)`` map in [0, 1] or uint8.
        alpha, colormap: as for :func:`overlay`.

    Returns:
        ``(max(H, D), 2 W + H + 2 SLICE_GAP, 3)`` uint8 RGB.
    """
    alpha = _check_alpha(alpha)
    gray = _volume_gray(volume)
    h, (d, y, x) = volume_slices(heatmap, gray.shape[:3])
    panels = [(gray[d], h[d]), (gray[:, y], h[:, y]), (gray[:, :, x], h[:, :, x])]
    height = max(p.shape[0] for p, _ in panels)
    width = sum(p.shape[1] for p, _ in panels) + SLICE_GAP * (len(panels) - 1)
    out = np.full((height, width, 3), 255, np.uint8)
    col = 0
    for picture, heat in panels:
        out[:picture.shape[0], col:col + picture.shape[1]] = _blend(picture, _colours(_levels(heat), colormap), alpha)
        col += picture.shape[1] + SLICE_GAP
    return out


def overlay(image, heatmap, alpha=0.5, colormap="jet") -> np.ndarray:
    """Blend a coloured heatmap over an image (or a signal, or a volume).

    ``out = round((1 - alpha) * image + alpha * colorize(heatmap))``: ``alpha=0``
    gives the image back, ``alpha=1`` the coloured heatmap. The map's rank
    decides what is drawn: a 2-D map over the image; a 1-D map ``(t,)`` as
    coloured bands behind the signal (:func:`overlay_signal`); a 3-D map
    ``(d, h, w)`` as three orthogonal slices of the volume through the map's
    maximum (:func:`overlay_volume`).

    Args:
        image: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``; uint8, or floats in
            [0, 1] or [0, 255] (the image before model preprocessing). For a
            1-D map the signal ``(T,)`` or ``(T, C)``; for a 3-D map the volume
            ``(D, H, W)`` or ``(D, H, W, C)`` (a one-channel volume whose width
            is 1, 3 or 4 needs its channel axis).
        heatmap: ``(h, w)`` map in [0, 1] (as explainers return it) or uint8;
            resized bilinearly to the image. Or ``(t,)``, or ``(d, h, w)``.
        alpha: the heatmap's weight, in [0, 1].
        colormap: an OpenCV colormap name (``"jet"``, ``"turbo"``,
            ``"viridis"``, ...) or a ``cv2.COLORMAP_*`` constant.

    Returns:
        ``(H, W, 3)`` uint8 RGB (1-D and 3-D: see the functions named above).

    Example:
        >>> maps = keras_cam.GradCAM(model)(images)
        >>> picture = keras_cam.overlay(images[0], maps[0], alpha=0.4)
        >>> strip = keras_cam.overlay(signals[0], keras_cam.GradCAM(conv1d_model)(signals)[0])
    """
    h, image = to_host(heatmap), to_host(image)
    if h.ndim == 1:
        return overlay_signal(image, h, alpha, colormap)
    if h.ndim == 3 and h.shape[-1] != 1 and (np.ndim(image) == 4 or (
            np.ndim(image) == 3 and np.shape(image)[-1] not in (1, 3, 4))):
        return overlay_volume(image, h, alpha, colormap)
    alpha = _check_alpha(alpha)
    rgb = as_rgb_uint8(image)
    return _blend(rgb, colorize(heatmap, colormap, size=rgb.shape[:2]), alpha)


class _InlineFigure(Figure):
    """A figure that shows itself as PNG in notebooks, without pyplot or ``%matplotlib``."""

    def _repr_png_(self):
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def _name(class_names, k):
    if class_names is None:
        return f"class {k}"
    try:
        return str(class_names[k])
    except (IndexError, KeyError):
        return f"class {k}"


def _cell_title(explanation, i, class_names):
    """``"cat 0.93"`` (class and probability) or ``"S=1.2"`` for callable targets."""
    if explanation is None:
        return ""
    score = float(explanation.scores[i])
    if explanation.targets is None:
        return f"S={score:.3g}"
    name = _name(class_names, int(explanation.targets[i]))
    if explanation.probabilities is None:
        return f"{name} S={score:.3g}"
    return f"{name} {float(explanation.probabilities[i]):.2f}"


def _default_headers(items):
    """Method names, plus the layer and/or model where those differ between columns."""
    explainers = [e for e in items if hasattr(e, "explain")]
    layers = {getattr(e, "layer_path", None) for e in explainers}
    models = {id(getattr(e, "model", None)) for e in explainers}
    headers = []
    for j, item in enumerate(items):
        if not hasattr(item, "explain"):
            headers.append(f"maps {j}")
            continue
        parts = [type(item).__name__]
        if len(models) > 1:
            parts.insert(0, item.model.name)
        if len(layers) > 1:
            parts.append(str(item.layer_path))
        headers.append("\n".join(parts))
    return headers


def _columns(columns):
    if isinstance(columns, dict):
        headers, items = [str(k) for k in columns], list(columns.values())
    else:
        items = list(columns) if isinstance(columns, (list, tuple)) else [columns]
        headers = _default_headers(items)
    if not items:
        raise ValueError("`columns` is empty; pass at least one explainer, Explanation or maps array.")
    return headers, items


def _spatial_rank(items, spatial):
    """1, 2 or 3: ``spatial`` when given, else what the first explainer's model takes, else 2."""
    if spatial is not None:
        if spatial not in (1, 2, 3):
            raise ValueError(f"`spatial` must be 1 (signals), 2 (images), 3 (volumes) or None; received {spatial!r}.")
        return spatial
    for item in items:
        graph = getattr(item, "graph", None)
        try:
            shape = graph.model.inputs[graph.input_index].shape
        except (AttributeError, ValueError, IndexError, TypeError):
            continue
        if len(shape) in (3, 4, 5):
            return len(shape) - 2
    return 2


_ONE = {1: "(T[, C])", 2: "(H, W[, C])", 3: "(D, H, W[, C])"}


def _images_batch(images, rank=2):
    if isinstance(images, (list, tuple)):
        return [to_host(im) for im in images]
    x = to_host(images)
    if x.ndim in (rank, rank + 1):
        return [x]
    if x.ndim != rank + 2:
        raise ValueError(
            f"`images` must be one input {_ONE[rank]} or a batch (N, {_ONE[rank][1:-1].replace('[, C]', ', C')}); "
            f"received shape {x.shape}."
        )
    return list(x)


def _explain(item, inputs, targets, n, header, rank=2):
    """``(maps (n, *spatial), Explanation or None)`` for one column."""
    if hasattr(item, "explain"):
        result = item.explain(inputs, targets)
    elif isinstance(item, Explanation):
        result = item
    else:
        maps = to_host(item)
        if maps.ndim == rank:
            maps = maps[None]
        if maps.ndim != rank + 1:
            raise TypeError(
                f"Column {header!r} must be an explainer, an Explanation or maps "
                f"{('(N, t)', '(N, h, w)', '(N, d, h, w)')[rank - 1]}; "
                f"received {type(item).__name__} of shape {maps.shape}."
            )
        result = None
    maps = to_host(result.maps if result is not None else maps)
    if maps.ndim == rank:
        maps = maps[None]
    if maps.shape[0] != n:
        raise ValueError(f"Column {header!r} has {maps.shape[0]} maps for {n} images; give one map per image.")
    return maps, result


def _several_targets(targets):
    """Whether ``targets`` is a list or dict of target objects (one column each)."""
    from keras_cam.targets import Target
    values = list(targets.values()) if isinstance(targets, dict) else targets
    return (isinstance(values, (list, tuple)) and bool(values)
            and all(isinstance(t, Target) for t in values))


def _text_columns(items, headers, inputs, texts, tokenizer):
    """One column per explainer and prompt of an image-text model."""
    from keras_cam import multimodal
    prompts = [texts] if isinstance(texts, str) else list(texts)
    names = [p if isinstance(p, str) else f"text {j}" for j, p in enumerate(prompts)]
    out_headers, results = [], []
    for item, h in zip(items, headers):
        if not hasattr(item, "explain"):
            raise TypeError(f"`texts` needs explainers as columns; column {h!r} is {type(item).__name__}.")
        maps = multimodal.explain_texts(item, inputs, prompts, tokenizer)
        for j, name in enumerate(names):
            results.append((maps[:, j], None))
            out_headers.append(name if len(items) == 1 else f"{h}\n{name}")
    return out_headers, results


def plot(images, columns, targets=None, *, inputs=None, class_names=None, labels=None,
         alpha=0.5, colormap="jet", show_image=True, row_titles=None, cell_size=2.0,
         path=None, dpi=100, spatial=None, texts=None, tokenizer=None):
    """A comparison grid: one row per image, one column per method, layer or model.

    Each cell is the image with a column's map overlaid (see :func:`overlay`),
    titled with the explained class and its probability; the first row also
    carries the column's header.

    Args:
        images: one image or a batch ``(N, H, W[, C])``, as it should be shown
            (uint8, or floats in [0, 1] or [0, 255]).
        columns: an explainer, a list of them, or a dict ``{header: column}``.
            A column is an explainer (run on ``inputs``), an
            :class:`~keras_cam.Explanation` or an array of maps ``(N, h, w)``
            in [0, 1] (for models that need their own preprocessing: explain
            first, then plot). Default headers name the method, plus the layer
            and the model where those differ between columns.
        targets: what to explain, passed to every explainer (see
            :mod:`keras_cam.targets`).
        inputs: what the explainers receive when it differs from ``images``
            (a preprocessed batch); defaults to ``images``.
        class_names: a list or dict mapping class index to name, for titles.
        labels: the true class per image, shown over the image column.
        alpha: the heatmap's weight in each overlay, in [0, 1].
        colormap: an OpenCV colormap name or ``cv2.COLORMAP_*`` constant.
        show_image: add a first column with the plain image.
        row_titles: one label per row, written on the left.
        cell_size: inches per cell.
        path: when given, the figure is also saved there (format from the suffix).
        dpi: resolution of the figure.
        spatial: 1 for signals ``(N, T, C)`` with maps ``(N, T)``, 2 for
            images, 3 for volumes ``(N, D, H, W, C)`` with maps
            ``(N, D, H, W)``; None reads it from the first explainer's model
            (2 without one). Signals and volumes are drawn as by
            :func:`overlay`; the plain-input column then shows the same
            picture without the map (for volumes, the first column's slices).
        texts: prompts for an image-text model (CLIP, SigLIP): one column per
            prompt and explainer, scored by
            :class:`~keras_cam.multimodal.TextSimilarity` (strings with
            ``tokenizer``, or token ids; see
            :func:`~keras_cam.multimodal.explain_texts`).
        tokenizer: turns string ``texts`` into token ids.

    Several targets, one column each: ``targets`` may be a list or a dict
    ``{header: target}`` of target objects (e.g. one
    :class:`~keras_cam.multimodal.GeneratedToken` per token).

    Returns:
        A :class:`matplotlib.figure.Figure` (shown inline when it is the last
        value of a notebook cell; ``fig.savefig(...)`` otherwise). It is not
        registered with ``pyplot``, so nothing needs closing.

    Example:
        >>> fig = keras_cam.plot(images, [keras_cam.GradCAM(model), keras_cam.GradCAMPlusPlus(model)],
        ...                      class_names=["circle", "square", "triangle"], path="cams.png")
    """
    headers, items = _columns(columns)
    rank = _spatial_rank(items, spatial)
    shown = _images_batch(images, rank)
    pictures = [as_rgb_uint8(im) for im in shown] if rank == 2 else shown
    n = len(pictures)
    if n == 0:
        raise ValueError("`images` is empty; pass at least one image.")
    if inputs is None:
        inputs = np.stack(shown) if len({im.shape for im in shown}) == 1 else shown
    elif np.ndim(inputs) == rank + 1:
        inputs = to_host(inputs)[None]
    if row_titles is not None and len(row_titles) != n:
        raise ValueError(f"`row_titles` has {len(row_titles)} entries for {n} images.")
    if labels is not None and len(labels) != n:
        raise ValueError(f"`labels` has {len(labels)} entries for {n} images.")
    if texts is not None:
        headers, results = _text_columns(items, headers, inputs, texts, tokenizer)
    elif _several_targets(targets):
        named = targets if isinstance(targets, dict) else {f"{type(t).__name__} {j}": t for j, t in enumerate(targets)}
        results, expanded = [], []
        for item, h in zip(items, headers):
            for name, target in named.items():
                results.append(_explain(item, inputs, target, n, h, rank))
                expanded.append(str(name) if len(items) == 1 else f"{h}\n{name}")
        headers = expanded
    else:
        results = [_explain(item, inputs, targets, n, h, rank) for item, h in zip(items, headers)]

    offset = 1 if show_image else 0
    ncols = len(results) + offset
    fig = _InlineFigure(figsize=(cell_size * ncols, cell_size * 1.2 * n), dpi=dpi, layout="constrained")
    axes = np.asarray(fig.subplots(n, ncols, squeeze=False))
    for i in range(n):
        if show_image:
            title = "image" if i == 0 else ""
            if labels is not None:
                title = f"{title}\ntrue: {_name(class_names, int(labels[i]))}".strip("\n")
            plain = pictures[i] if rank == 2 else overlay(pictures[i], results[0][0][i], alpha=0)
            axes[i, 0].imshow(plain, aspect="auto" if rank == 1 else "equal")
            axes[i, 0].set_title(title, fontsize=9)
        for j, (maps, result) in enumerate(results):
            ax = axes[i, j + offset]
            ax.imshow(overlay(pictures[i], maps[i], alpha=alpha, colormap=colormap),
                      aspect="auto" if rank == 1 else "equal")
            title = _cell_title(result, i, class_names)
            ax.set_title(f"{headers[j]}\n{title}" if i == 0 else title, fontsize=9)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        if row_titles is not None:
            axes[i, 0].set_ylabel(str(row_titles[i]), fontsize=9)
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    return fig

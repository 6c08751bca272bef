"""Pictures of maps: coloured overlays and comparison grids.

``overlay`` blends one map over one image with an OpenCV colormap;
``plot`` draws a grid (rows of images, columns of explainers: methods,
layers or models) on a :class:`matplotlib.figure.Figure` of its own. Nothing
here changes matplotlib's global state (rcParams, pyplot's current figure).
"""

from __future__ import annotations

import io
import numbers

import cv2
import numpy as np
from matplotlib.figure import Figure

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
    x = np.asarray(image)
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
        if hi <= 1 and np.issubdtype(np.asarray(image).dtype, np.floating):
            x = x * 255.0
        out = np.rint(x).astype(np.uint8)
    else:
        raise TypeError(f"`image` must hold numbers; received dtype {x.dtype}.")
    if out.ndim == 2 or out.shape[-1] == 1:
        out = np.repeat(out.reshape(out.shape[0], out.shape[1], 1), 3, axis=-1)
    return out


def _heatmap_float(heatmap) -> np.ndarray:
    """A heatmap as a float32 ``(h, w)`` array in [0, 1]."""
    h = np.asarray(heatmap)
    if h.ndim == 3 and h.shape[-1] == 1:
        h = h[..., 0]
    if h.ndim != 2 or h.size == 0:
        raise ValueError(
            f"`heatmap` must be one map (h, w) or (h, w, 1); received shape {h.shape}. "
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


def overlay(image, heatmap, alpha=0.5, colormap="jet") -> np.ndarray:
    """Blend a coloured heatmap over an image.

    ``out = round((1 - alpha) * image + alpha * colorize(heatmap))``: ``alpha=0``
    gives the image back, ``alpha=1`` the coloured heatmap.

    Args:
        image: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``; uint8, or floats in
            [0, 1] or [0, 255] (the image before model preprocessing).
        heatmap: ``(h, w)`` map in [0, 1] (as explainers return it) or uint8;
            resized bilinearly to the image.
        alpha: the heatmap's weight, in [0, 1].
        colormap: an OpenCV colormap name (``"jet"``, ``"turbo"``,
            ``"viridis"``, ...) or a ``cv2.COLORMAP_*`` constant.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Example:
        >>> maps = keras_cam.GradCAM(model)(images)
        >>> picture = keras_cam.overlay(images[0], maps[0], alpha=0.4)
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` is the heatmap's weight, a number in [0, 1]; received {alpha!r}.")
    rgb = as_rgb_uint8(image)
    colored = colorize(heatmap, colormap, size=rgb.shape[:2])
    blend = (1.0 - float(alpha)) * rgb.astype(np.float64) + float(alpha) * colored.astype(np.float64)
    return np.rint(blend).astype(np.uint8)


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


def _images_batch(images):
    if isinstance(images, (list, tuple)):
        return [np.asarray(im) for im in images]
    x = np.asarray(images)
    if x.ndim in (2, 3):
        return [x]
    if x.ndim != 4:
        raise ValueError(
            f"`images` must be one image (H, W[, C]) or a batch (N, H, W, C); received shape {x.shape}."
        )
    return list(x)


def _explain(item, inputs, targets, n, header):
    """``(maps (n, h, w), Explanation or None)`` for one column."""
    if hasattr(item, "explain"):
        result = item.explain(inputs, targets)
    elif isinstance(item, Explanation):
        result = item
    else:
        maps = np.asarray(item)
        if maps.ndim == 2:
            maps = maps[None]
        if maps.ndim != 3:
            raise TypeError(
                f"Column {header!r} must be an explainer, an Explanation or maps (N, h, w); "
                f"received {type(item).__name__} of shape {maps.shape}."
            )
        result = None
    maps = np.asarray(result.maps if result is not None else maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.shape[0] != n:
        raise ValueError(f"Column {header!r} has {maps.shape[0]} maps for {n} images; give one map per image.")
    return maps, result


def plot(images, columns, targets=None, *, inputs=None, class_names=None, labels=None,
         alpha=0.5, colormap="jet", show_image=True, row_titles=None, cell_size=2.0,
         path=None, dpi=100):
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

    Returns:
        A :class:`matplotlib.figure.Figure` (shown inline when it is the last
        value of a notebook cell; ``fig.savefig(...)`` otherwise). It is not
        registered with ``pyplot``, so nothing needs closing.

    Example:
        >>> fig = keras_cam.plot(images, [keras_cam.GradCAM(model), keras_cam.GradCAMPlusPlus(model)],
        ...                      class_names=["circle", "square", "triangle"], path="cams.png")
    """
    shown = _images_batch(images)
    pictures = [as_rgb_uint8(im) for im in shown]
    n = len(pictures)
    if n == 0:
        raise ValueError("`images` is empty; pass at least one image.")
    if inputs is None:
        inputs = np.stack(shown) if len({im.shape for im in shown}) == 1 else shown
    elif np.ndim(inputs) == 3:
        inputs = np.asarray(inputs)[None]
    headers, items = _columns(columns)
    if row_titles is not None and len(row_titles) != n:
        raise ValueError(f"`row_titles` has {len(row_titles)} entries for {n} images.")
    if labels is not None and len(labels) != n:
        raise ValueError(f"`labels` has {len(labels)} entries for {n} images.")
    results = [_explain(item, inputs, targets, n, h) for item, h in zip(items, headers)]

    offset = 1 if show_image else 0
    ncols = len(items) + offset
    fig = _InlineFigure(figsize=(cell_size * ncols, cell_size * 1.2 * n), dpi=dpi, layout="constrained")
    axes = np.asarray(fig.subplots(n, ncols, squeeze=False))
    for i in range(n):
        if show_image:
            title = "image" if i == 0 else ""
            if labels is not None:
                title = f"{title}\ntrue: {_name(class_names, int(labels[i]))}".strip("\n")
            axes[i, 0].imshow(pictures[i])
            axes[i, 0].set_title(title, fontsize=9)
        for j, (maps, result) in enumerate(results):
            ax = axes[i, j + offset]
            ax.imshow(overlay(pictures[i], maps[i], alpha=alpha, colormap=colormap))
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

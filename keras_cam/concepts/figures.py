"""Figures of the concept methods (matplotlib, not registered with ``pyplot``)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from keras_cam.viz import as_rgb_uint8, displayable


class ConceptFigure(Figure):
    """A figure that shows itself as PNG in notebooks, without pyplot or ``%matplotlib``."""

    def _repr_png_(self):
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def colours(k):
    """``(k, 3)`` float RGB in [0, 1]: one distinct colour per concept (tab10, then evenly spaced hues)."""
    from matplotlib import colormaps

    if k <= 10:
        return np.asarray(colormaps["tab10"].colors[:k], np.float64)
    return np.asarray(colormaps["hsv"](np.arange(k) / k))[:, :3]


def concept_overlay(image, maps, alpha=0.6):
    """``(H, W, 3)`` uint8: ``image`` with each pixel tinted by the colour of its strongest concept,
    in proportion to that concept's map there.

    ``out = (1 - alpha m) * image + alpha m * colour_j``, with ``j = argmax_j maps_j`` and
    ``m = max_j maps_j / max maps`` (the image's strongest concept pixel gets the full ``alpha``).

    Args:
        image: ``(H, W[, C])`` as shown (uint8, or floats in [0, 1] or [0, 255]).
        maps: ``(k, H, W)`` the image's concept maps at its size.
        alpha: the colours' weight where a concept is at full strength.
    """
    rgb = as_rgb_uint8(displayable(np.asarray(image, np.float32))).astype(np.float64) / 255.0
    maps = np.asarray(maps, np.float64)
    if maps.shape[1:] != rgb.shape[:2]:
        raise ValueError(f"`maps` are {maps.shape[1:]}, the image {rgb.shape[:2]}: give maps at the image's size "
                         f"(upsample=True).")
    best = np.argmax(maps, axis=0)
    top = np.max(maps, axis=0)
    peak = float(top.max()) if top.size else 0.0
    strength = np.clip(top / peak if peak > 0 else top * 0.0, 0.0, 1.0)[..., None] * float(alpha)
    tint = colours(len(maps))[best]
    return np.round(255.0 * ((1.0 - strength) * rgb + strength * tint)).astype(np.uint8)


def _label(concepts, j, class_names):
    if concepts.class_scores is None:
        return f"concept {j}"
    c = int(np.argmax(concepts.class_scores[j]))
    name = str(class_names[c]) if class_names is not None else f"class {c}"
    p = "" if concepts.probabilities is None else f" {concepts.probabilities[j, c]:.2f}"
    return f"concept {j}: {name}{p}"


def plot_concepts(images, concepts, class_names=None, n_images=12, alpha=0.6, cell_size=2.0, path=None, dpi=100):
    """DFF's figure: one panel per image, pixels tinted by their dominant concept
    (:func:`concept_overlay`), and a legend naming each concept's top class.

    Args:
        images: the ``N`` images the concepts were found on, as shown.
        concepts: a :class:`~keras_cam.concepts.dff.Concepts` with maps at the images' size.
        class_names: a list or dict of class names, for the legend.
        n_images: how many of the images to draw (the first ones).
        alpha: the colours' weight at a concept's strongest pixel (see :func:`concept_overlay`).
        cell_size: inches per panel.
        path: when given, the figure is also saved there (format from the suffix).
        dpi: resolution of the figure.

    Returns:
        A :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.patches import Patch

    images = np.asarray(images)
    if len(images) != len(concepts.maps):
        raise ValueError(f"`images` has {len(images)} images, the concepts {len(concepts.maps)}: give the images "
                         f"they were found on.")
    from keras_cam.concepts.nmf import check_count

    n = min(check_count("n_images", n_images), len(images))
    if concepts.maps.ndim != 4:
        raise ValueError("The concept figure draws images; these concepts' maps are not (N, k, H, W).")
    ncols = min(n, 6)
    nrows = -(-n // ncols)
    fig = ConceptFigure(figsize=(cell_size * ncols, cell_size * nrows + 0.4 * concepts.k / 2 + 0.4), dpi=dpi,
                        layout="constrained")
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if i < n:
            ax.imshow(concept_overlay(images[i], concepts.maps[i], alpha))
            ax.set_title(f"image {i}", fontsize=9)
    palette = colours(concepts.k)
    handles = [Patch(color=palette[j], label=_label(concepts, j, class_names)) for j in range(concepts.k)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(concepts.k, 3), fontsize=8, frameon=False)
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    return fig

"""A generated dataset with known object locations: one shape per image.

Each image is ``IMAGE_SIZE x IMAGE_SIZE`` RGB in [0, 1]: a textured
background (two random sinusoidal gratings plus pixel noise, in a random
tint) with one flat-coloured shape drawn on it at a random place, size and
rotation. The class is the shape (:data:`CLASS_NAMES`); colour, texture,
position, size and angle are nuisances the model has to ignore. Because the
generator draws the object itself, its bounding box is known exactly, which
is what localization metrics (pointing game, energy inside the box) need.

Everything is determined by ``seed``: the same ``(n, seed)`` gives the same
arrays on every machine.

``watermark=`` plants a known shortcut (a "Clever Hans" cue): a small
checkerboard :data:`MARK_SIZE` pixels wide in the top-left corner of a share
of one class's images. A model trained on such data can learn to answer
that class from the mark instead of the shape; :func:`keras_cam.audit` is
meant to find that. The mark is drawn over images that are otherwise the
ones the same ``(n, seed)`` gives without it, so the same images can be
compared with and without the mark.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("circle", "square", "triangle", "cross")
IMAGE_SIZE = 64

# The shape's circumradius in pixels (the disc it fits in), drawn uniformly.
_MIN_RADIUS, _MAX_RADIUS = 8.0, 14.0
# The object's colour differs from the background's mean colour by at least
# this much (Euclidean distance in RGB), so it is always visible.
_MIN_CONTRAST = 0.45
# Shapes are turned by a random angle in [-_MAX_ANGLE, _MAX_ANGLE] (radians).
_MAX_ANGLE = np.deg2rad(20.0)

# The planted mark: a MARK_SIZE x MARK_SIZE black-and-white checkerboard of
# 2 x 2 pixel squares, MARK_OFFSET pixels from the top-left corner.
MARK_SIZE, MARK_OFFSET = 8, 4
# The class and the share of its images that carry the mark by default.
WATERMARK_CLASS, WATERMARK_SHARE = 0, 1.0


def _shape_mask(kind, yy, xx, cy, cx, radius, angle):
    """Boolean mask of one shape; ``yy, xx`` are pixel-centre coordinates."""
    dy, dx = yy - cy, xx - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * dx + sin * dy   # coordinates in the shape's own rotated frame
    v = -sin * dx + cos * dy
    if kind == "circle":
        r = 0.85 * radius
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        half = radius / np.sqrt(2.0)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if kind == "triangle":
        # Equilateral triangle with circumradius `radius`: inside all three
        # half-planes whose normals point at 90, 210 and 330 degrees.
        inside = np.ones_like(u, dtype=bool)
        for theta in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= u * np.cos(theta) + v * np.sin(theta) <= radius / 2.0
        return inside
    if kind == "cross":
        arm = radius / np.sqrt(2.0) * 1.15
        bar = radius / 4.0
        return ((np.abs(u) <= arm) & (np.abs(v) <= bar)) | ((np.abs(v) <= arm) & (np.abs(u) <= bar))
    raise ValueError(f"Unknown shape {kind!r}; expected one of {CLASS_NAMES}.")


def _background(rng, size, yy, xx):
    """A tinted texture: two sinusoidal gratings and pixel noise, in [0, 1]."""
    tex = np.zeros((size, size), np.float64)
    for _ in range(2):
        freq = rng.uniform(0.08, 0.35)
        theta = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        tex += rng.uniform(0.3, 1.0) * np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    tex = tex / (np.abs(tex).max() + 1e-9)                    # in [-1, 1]
    tint = rng.uniform(0.25, 0.75, size=3)
    contrast = rng.uniform(0.05, 0.2)
    noise = rng.normal(0.0, 0.04, size=(size, size, 3))
    return np.clip(tint + contrast * tex[..., None] + noise, 0.0, 1.0), tint


def _object_colour(rng, tint):
    """A random colour far enough from the background's mean colour."""
    while True:
        colour = rng.uniform(0.0, 1.0, size=3)
        if np.linalg.norm(colour - tint) >= _MIN_CONTRAST:
            return colour


def _watermark_args(watermark):
    """``(class, share)`` from the ``watermark`` argument of :func:`make_dataset`."""
    if watermark is True:
        return WATERMARK_CLASS, WATERMARK_SHARE
    if isinstance(watermark, (float, int, np.floating, np.integer)) and not isinstance(watermark, bool):
        klass, share = WATERMARK_CLASS, float(watermark)
    elif isinstance(watermark, (tuple, list)) and len(watermark) == 2:
        klass, share = watermark
    else:
        raise TypeError(
            f"`watermark` must be None, True, a share in [0, 1] of class {WATERMARK_CLASS}'s images, "
            f"or a pair (class, share); received {watermark!r}."
        )
    if isinstance(klass, bool) or not isinstance(klass, (int, np.integer)) or not 0 <= klass < len(CLASS_NAMES):
        raise ValueError(f"The watermarked class must be one of 0..{len(CLASS_NAMES) - 1}; received {klass!r}.")
    if not 0.0 <= float(share) <= 1.0:
        raise ValueError(f"The watermarked share must be in [0, 1]; received {share!r}.")
    return int(klass), float(share)


def draw_mark(image):
    """Draw the planted mark (see :data:`MARK_SIZE`) on ``image`` ``(H, W, 3)`` in place."""
    cells = (np.add.outer(np.arange(MARK_SIZE) // 2, np.arange(MARK_SIZE) // 2) % 2).astype(np.float32)
    o = MARK_OFFSET
    image[o:o + MARK_SIZE, o:o + MARK_SIZE] = cells[..., None]
    return image


def make_dataset(n, seed=0, size=IMAGE_SIZE, watermark=None):
    """Generate ``n`` images of shapes with their classes and bounding boxes.

    Args:
        n: number of images (>= 1). Classes are balanced: each appears
            ``n // 4`` or ``n // 4 + 1`` times, in random order.
        seed: any int; the same ``(n, seed, size)`` gives the same data.
        size: image height and width in pixels (>= 32).
        watermark: None (no mark); ``(class, share)``: the mark is drawn on
            ``round(share * m)`` of the ``m`` images of ``class``, chosen at
            random (from ``seed``); a float: that share of class
            :data:`WATERMARK_CLASS`; True: :data:`WATERMARK_SHARE` of it.
            The images are the same as without the mark, except for the
            mark's pixels.

    Returns:
        ``(images, labels, boxes)``: ``images`` float32 ``(n, size, size, 3)``
        in [0, 1]; ``labels`` int64 ``(n,)`` indices into
        :data:`CLASS_NAMES`; ``boxes`` int32 ``(n, 4)`` as
        ``(y0, x0, y1, x1)``, end-exclusive pixel coordinates of the tight
        box around the drawn shape (``images[i, y0:y1, x0:x1]`` holds it).
        With ``watermark``, a fourth array: ``marked``, bool ``(n,)``, True
        for the images that carry the mark.

    Raises:
        ValueError / TypeError: for a wrong ``n``, ``size`` or ``watermark``.

    Example:
        >>> images, labels, boxes = make_dataset(8, seed=1)
        >>> images.shape, CLASS_NAMES[labels[0]], boxes[0]
        >>> images, labels, boxes, marked = make_dataset(8, seed=1, watermark=(0, 0.5))
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"`n` must be a positive int (the number of images); received {n!r}.")
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"`size` must be an int >= 32 (pixels); received {size!r}.")
    mark = None if watermark is None else _watermark_args(watermark)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
    images = np.empty((n, size, size, 3), np.float32)
    boxes = np.empty((n, 4), np.int32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    scale = size / IMAGE_SIZE
    for i, label in enumerate(labels):
        image, tint = _background(rng, size, yy, xx)
        radius = rng.uniform(_MIN_RADIUS, _MAX_RADIUS) * scale
        cy, cx = rng.uniform(radius + 1, size - radius - 1, size=2)
        angle = rng.uniform(-_MAX_ANGLE, _MAX_ANGLE)
        mask = _shape_mask(CLASS_NAMES[label], yy, xx, cy, cx, radius, angle)
        image[mask] = _object_colour(rng, tint)
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
        images[i] = image
    if mark is None:
        return images, labels, boxes
    klass, share = mark
    members = np.flatnonzero(labels == klass)
    # A stream of its own, so the images without the mark stay those of (n, seed).
    picker = np.random.default_rng([int(seed), 0x4D41524B])
    marked = np.zeros(n, bool)
    marked[picker.permutation(members)[:int(round(share * len(members)))]] = True
    for i in np.flatnonzero(marked):
        draw_mark(images[i])
    return images, labels, boxes, marked

"""A generated family of planted shortcuts: the audit's ground truth beyond its own demo.

Each dataset has four classes of faint bar gratings (horizontal, vertical and
the two diagonals) drawn in a square "object" at a random place on a noisy
grey background. A share of the *marked class*'s training images also carry
an artifact, one of :data:`KINDS`:

- ``"patch"``: a 6 x 6 black-and-white checkerboard at a fixed place near the
  top-left corner;
- ``"frame"``: a bright 2-pixel frame around the whole image;
- ``"tag"``: a small text-like glyph (5 x 9 pixels) near the bottom-right, at
  a class-specific place that moves by up to :data:`TAG_JITTER` pixels;
- ``"cast"``: a colour cast of the whole image (red up, blue down).

The other classes are clean controls. A model trained on such data learns the
gratings *and* the artifact, and leans on the artifact where it is present
(the case of a watermark on some of a class's photographs). The models are
tiny (two architectures, :data:`ARCHITECTURES`) and train in seconds on a CPU
with a seed, so tests and docs build the family on the fly:

    images, labels, marked, boxes = make_shortcut_dataset("tag", 400, seed=1, share=0.5)
    model = train_shortcut_model("tag", share=0.5, architecture="cnn", seed=0)
    cam = keras_cam.GradCAM(model, layer=FEATURE_LAYER)

:func:`artifact_region` gives each marked image's artifact pixels (what a
verification should find the model depends on).
"""

from __future__ import annotations

import functools

import numpy as np

KINDS = ("patch", "frame", "tag", "cast")
SHARES = (0.2, 0.5, 1.0)
ARCHITECTURES = ("cnn", "residual")
CLASSES = ("horizontal", "vertical", "diagonal", "antidiagonal")
SIZE = 32
OBJECT = 12            # the grating's square side, pixels
TAG_JITTER = 3         # the tag moves by up to this many pixels each way
FEATURE_LAYER = "features"
EPOCHS = {"cnn": 5, "residual": 10}  # training epochs per architecture
MARKED_CLASS = 0

_PATCH_AT, _PATCH = (3, 3), 6
_FRAME = 2
_TAG_AT, _TAG_SHAPE = (21, 18), (5, 9)
# A fixed "glyph": three letters of a 5 x 3 pixel font (1 = ink).
_GLYPH = np.array([
    [1, 1, 1, 0, 1, 0, 1, 0, 1],
    [1, 0, 0, 0, 1, 0, 1, 1, 1],
    [1, 1, 1, 0, 1, 0, 1, 0, 1],
    [0, 0, 1, 0, 1, 0, 1, 0, 1],
    [1, 1, 1, 0, 1, 1, 1, 0, 1],
], np.float32)


def _check(kind, share):
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}; received {kind!r}.")
    if isinstance(share, bool) or not isinstance(share, (int, float, np.floating, np.integer)) or not 0 <= share <= 1:
        raise ValueError(f"`share` must be a number in [0, 1] (the share of the class's images marked); "
                         f"received {share!r}.")


def _grating(label, rng):
    """An ``OBJECT x OBJECT`` grating of the class's orientation, values in [-1, 1], random phase."""
    yy, xx = np.mgrid[0:OBJECT, 0:OBJECT].astype(np.float32)
    u = {0: yy, 1: xx, 2: (xx + yy) / np.sqrt(2), 3: (xx - yy) / np.sqrt(2)}[int(label)]
    return np.sign(np.sin(2 * np.pi * u / 4.0 + rng.uniform(0, 2 * np.pi))).astype(np.float32)


def _tag_offset(rng):
    return rng.integers(-TAG_JITTER, TAG_JITTER + 1, size=2)


def draw_artifact(image, kind, rng=None, offset=None):
    """Draw artifact ``kind`` on one ``(SIZE, SIZE, 3)`` image in place; returns the boolean region it
    covers (the whole image for ``"cast"``). ``offset``: the tag's displacement (drawn from ``rng``
    when None)."""
    region = np.zeros(image.shape[:2], bool)
    if kind == "patch":
        y, x = _PATCH_AT
        cells = (np.add.outer(np.arange(_PATCH), np.arange(_PATCH)) % 2).astype(np.float32)
        image[y:y + _PATCH, x:x + _PATCH] = cells[..., None]
        region[y:y + _PATCH, x:x + _PATCH] = True
    elif kind == "frame":
        region[:_FRAME] = region[-_FRAME:] = True
        region[:, :_FRAME] = region[:, -_FRAME:] = True
        image[region] = (0.95, 0.95, 0.2)
    elif kind == "tag":
        dy, dx = _tag_offset(rng if rng is not None else np.random.default_rng()) if offset is None else offset
        y, x = _TAG_AT[0] + int(dy), _TAG_AT[1] + int(dx)
        h, w = _TAG_SHAPE
        image[y:y + h, x:x + w] = np.where(_GLYPH[..., None] > 0, 0.0, 1.0)
        region[y:y + h, x:x + w] = True
    elif kind == "cast":
        image[...] = np.clip(image + np.array([0.18, 0.0, -0.18], np.float32), 0.0, 1.0)
        region[...] = True
    else:
        raise ValueError(f"`kind` must be one of {KINDS}; received {kind!r}.")
    return region


def make_shortcut_dataset(kind, n, seed=0, share=0.5, marked_class=MARKED_CLASS):
    """``n`` images of the family, ``share`` of the marked class's images with artifact ``kind``.

    Args:
        kind: one of :data:`KINDS`.
        n: number of images (classes balanced, in random order).
        seed: the same ``(kind, n, seed, share)`` gives the same arrays.
        share: the share of ``marked_class``'s images that carry the artifact
            (``round(share * m)`` of its ``m`` images, chosen at random).
        marked_class: the class that gets the artifact.

    Returns:
        ``(images, labels, marked, boxes)``: float32 ``(n, 32, 32, 3)`` in
        [0, 1]; int64 ``(n,)``; bool ``(n,)`` (True: carries the artifact);
        int32 ``(n, 4)`` the grating's box ``(y0, x0, y1, x1)``, end-exclusive.
    """
    _check(kind, share)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` must be a positive int; received {n!r}.")
    rng = np.random.default_rng([int(seed), KINDS.index(kind), 0x5C])
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    images = np.empty((n, SIZE, SIZE, 3), np.float32)
    boxes = np.empty((n, 4), np.int32)
    for i, label in enumerate(labels):
        grey = rng.uniform(0.35, 0.65)
        image = np.clip(grey + rng.normal(0, 0.06, (SIZE, SIZE, 3)), 0, 1).astype(np.float32)
        y, x = rng.integers(_FRAME + 1, SIZE - OBJECT - _FRAME, size=2)
        contrast = rng.uniform(0.04, 0.3)
        image[y:y + OBJECT, x:x + OBJECT] = np.clip(
            image[y:y + OBJECT, x:x + OBJECT] + contrast * _grating(label, rng)[..., None], 0, 1)
        images[i] = image
        boxes[i] = (y, x, y + OBJECT, x + OBJECT)
    marked = mark_share(images, labels, marked_class, share, rng, lambda image: draw_artifact(image, kind, rng))
    return images, labels, marked, boxes


def mark_share(images, labels, marked_class, share, rng, draw):
    """Call ``draw(image)`` on ``round(share * m)`` of the ``m`` images of class ``marked_class``, chosen
    with ``rng``, in place; returns the bool mask of the images marked."""
    members = np.flatnonzero(labels == marked_class)
    marked = np.zeros(len(labels), bool)
    marked[rng.permutation(members)[:int(round(share * len(members)))]] = True
    for i in np.flatnonzero(marked):
        draw(images[i])
    return marked


def build_shortcut_model(architecture="cnn", keras=None):
    """A tiny classifier of ``(32, 32, 3)`` images into the 4 classes; its last convolution's
    activation is the layer :data:`FEATURE_LAYER` (8 x 8).

    - ``"cnn"``: three 3 x 3 convolutions (16, 32, 32 channels, ReLU, a 2 x 2 max pooling after
      each of the first two), global average pooling, a softmax layer.
    - ``"residual"``: a 3 x 3 stem (16), two residual blocks (two 3 x 3 convolutions, ReLU
      between, added to a 1 x 1 projection, 32 channels, ReLU and a 2 x 2 max pooling after
      each), global average pooling, a softmax layer.
    """
    if keras is None:
        from keras_cam._compat import keras
    if architecture not in ARCHITECTURES:
        raise ValueError(f"`architecture` must be one of {ARCHITECTURES}; received {architecture!r}.")
    layers = keras.layers
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    if architecture == "cnn":
        x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
        x = layers.MaxPooling2D(2, name="pool1")(x)
        x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
        x = layers.MaxPooling2D(2, name="pool2")(x)
        x = layers.Conv2D(32, 3, padding="same", name="conv3")(x)
    else:
        x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
        for i in (1, 2):
            skip = layers.Conv2D(32, 1, name=f"block{i}_project")(x)
            y = layers.Conv2D(32, 3, padding="same", activation="relu", name=f"block{i}_conv1")(x)
            y = layers.Conv2D(32, 3, padding="same", name=f"block{i}_conv2")(y)
            x = layers.Add(name=f"block{i}_add")([skip, y])
            if i == 1:
                x = layers.ReLU(name="block1_relu")(x)
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.ReLU(name=FEATURE_LAYER)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"shortcut_{architecture}")


def train_shortcut_model(kind, share=0.5, architecture="cnn", seed=0, n_train=1200, epochs=None, keras=None):
    """Train a family model on ``make_shortcut_dataset(kind, n_train, seed, share)``; a few seconds on a CPU.

    ``epochs`` defaults to :data:`EPOCHS` of the architecture (the residual model, deeper, needs more
    to learn the gratings: after 5 it was right on 0-100 % of a clean class's images).

    The same arguments give the same weights on the same software (seeded, deterministic ops
    where TensorFlow has them). Results are cached per process (see :func:`shortcut_model`).
    """
    if keras is None:
        from keras_cam._compat import keras
    _check(kind, share)
    keras.utils.set_random_seed(int(seed))
    images, labels, _, _ = make_shortcut_dataset(kind, n_train, seed=1000 + int(seed), share=share)
    model = build_shortcut_model(architecture, keras)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    epochs = EPOCHS[architecture] if epochs is None else int(epochs)
    model.fit(images, labels, batch_size=32, epochs=epochs, shuffle=True, verbose=0)
    return model


@functools.lru_cache(maxsize=32)
def shortcut_model(kind, share=0.5, architecture="cnn", seed=0):
    """:func:`train_shortcut_model`, trained once per process for each argument set."""
    return train_shortcut_model(kind, share, architecture, seed)


def learned(model, kind, seed=0, n=400, batch_size=200):
    """What a family model learned, on ``n`` fresh images of ``make_shortcut_dataset(kind, n,
    seed=77 + seed, share=0.5)``: ``(per_class, marked)``, where ``per_class[k]`` is the share of
    class ``k``'s *unmarked* images classified as ``k`` (the gratings; for the marked class, its
    images without the artifact) and ``marked`` the share of marked images classified as their
    class. A model that learned the object beside the artifact has every ``per_class`` well above
    chance (1/4); one that learned the artifact *instead* has the marked class's near 0."""
    images, labels, marked, _ = make_shortcut_dataset(kind, n, seed=77 + int(seed), share=0.5)
    predicted = np.asarray(model.predict(images, batch_size=batch_size, verbose=0)).argmax(axis=-1)
    per_class = np.array([np.mean(predicted[(labels == k) & ~marked] == k) for k in range(len(CLASSES))])
    return per_class, float(np.mean(predicted[marked] == labels[marked]))


def reliance(model, kind, seed=0, n=400, batch_size=200, marked_class=MARKED_CLASS):
    """How much a family model leans on its artifact, measured with the true artifact: on ``n``
    fresh unmarked images (``make_shortcut_dataset(kind, n, seed=77 + seed, share=0)``) of the
    *other* classes, the artifact is drawn in and ``(rise, moved)`` returned: the mean rise of
    ``log p(marked_class)`` and the share of predictions that move to the marked class. The
    ground truth an audit's verification (which pastes what it found) estimates."""
    images, labels, _, _ = make_shortcut_dataset(kind, n, seed=77 + int(seed), share=0.0)
    images = images[labels != marked_class]
    rng = np.random.default_rng([int(seed), 0xA7])
    pasted = images.copy()
    for image in pasted:
        draw_artifact(image, kind, rng)

    def predict(x):
        return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float64)

    before, after = predict(images), predict(pasted)
    tiny = np.finfo(np.float32).tiny
    rise = np.log(np.maximum(after[:, marked_class], tiny)) - np.log(np.maximum(before[:, marked_class], tiny))
    moved = (after.argmax(axis=-1) == marked_class) & (before.argmax(axis=-1) != marked_class)
    return float(np.mean(rise)), float(np.mean(moved))


def artifact_region(kind, images, marked):
    """``(n, SIZE, SIZE)`` bool: the pixels that differ from the artifact-free image, as far as they
    can be read back from the images (for the tag, where the glyph is; for the others, fixed)."""
    n = len(images)
    out = np.zeros((n, SIZE, SIZE), bool)
    probe = np.zeros((SIZE, SIZE, 3), np.float32)
    if kind == "tag":
        glyph = np.where(_GLYPH[..., None] > 0, 0.0, 1.0)
        h, w = _TAG_SHAPE
        for i in np.flatnonzero(marked):
            for dy in range(-TAG_JITTER, TAG_JITTER + 1):
                for dx in range(-TAG_JITTER, TAG_JITTER + 1):
                    y, x = _TAG_AT[0] + dy, _TAG_AT[1] + dx
                    if np.array_equal(images[i, y:y + h, x:x + w], np.broadcast_to(glyph, (h, w, 3))):
                        out[i, y:y + h, x:x + w] = True
        return out
    region = draw_artifact(probe, kind, offset=(0, 0))
    out[np.asarray(marked, bool)] = region
    return out


def target_misses(kind, result, images, marked, check):
    """What keeps an audited family case from issue 22's target, as strings (empty when it meets it):
    the marked class's first group of ``result`` (an :class:`keras_cam.Audit` of ``images``) matches
    ``marked`` with F1 >= 0.8, is suspicious, and ``check`` (its :class:`~keras_cam.audit.verify.Verification`)
    says "depends", removing its region lowers the class score more than removing random regions, and
    the region lies on the artifact (at least 3 times as often as the image's pixels do; a colour
    cast, which covers every pixel, must have been found by its feature, "what")."""
    from keras_cam.audit import hotspots
    from keras_cam.audit.verify import VERDICT_DEPENDS
    from keras_cam.demo.run import f1_score

    first = result.of_class(MARKED_CLASS)[0]
    misses = []
    f1 = f1_score(first.indices, marked)
    if f1 < 0.8:
        misses.append(f"F1 {f1:.2f} < 0.8")
    if not (first.suspicious and first.level <= hotspots.ALPHA):
        misses.append(f"level {first.level} not suspicious")
    if check.verdict != VERDICT_DEPENDS:
        misses.append(f"verification: {check.verdict}")
    if not (check.removal.low > 0 and check.removal.region > check.removal.random):
        misses.append(f"removal {check.removal.mean:.2f} (low {check.removal.low:.2f})")
    truth = artifact_region(kind, images[check.members], marked[check.members])
    on = truth[marked[check.members]].any(axis=0)
    if on.all():
        if first.evidence != "what":
            misses.append("a global artifact found by a place")
    elif np.mean(on[check.region]) < 3 * np.mean(on):
        misses.append(f"region on the artifact {np.mean(on[check.region]):.2f} < 3 x {np.mean(on):.2f}")
    return misses

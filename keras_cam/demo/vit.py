"""Two small trained transformers on the demo's shapes: a ViT classifier and a CLIP-style model.

    from keras_cam.demo import load_vit, load_clip, prompt_ids, CLIP_PROMPTS
    vit = load_vit()        # a ViT of keras.layers.MultiHeadAttention blocks
    clip = load_clip()      # two towers, prompts such as "a photo of a circle" (prompt_ids)

Both are trained here on :func:`keras_cam.demo.data.make_dataset` (training
seed 0), in about two minutes and twenty seconds on a CPU; nothing is
downloaded, and both load under Keras 3 (TensorFlow, JAX, PyTorch) and
legacy tf-keras. As for the demo CNN, the architecture is built in code and
the weights ship as a plain ``.npz`` (one array per layer weight, keyed
``"<layer>/<index>"``); ``python -m keras_cam.demo.train_vit [--clip]``
writes them again (:mod:`keras_cam.demo.train_vit`).

**The ViT** (:func:`build_vit`): per-image standardization -> a small
convolutional stem and one token per 8 x 8 patch -> a learned class token
and position embeddings (65 tokens) -> :data:`VIT_BLOCKS` pre-norm blocks
(multi-head self-attention and an MLP, each with a residual connection) ->
layer norm -> the class token -> ``Dense(4, softmax)``. Built from
``keras.layers.MultiHeadAttention``, it is read by the attention methods
(:class:`keras_cam.AttentionRollout`, :class:`keras_cam.GradientRollout`,
:class:`keras_cam.LeGrad`), and Grad-CAM explains it on its patch grid.

**The CLIP-style model** (:func:`build_clip`): an image tower (the ViT's
trunk and a projection), a text tower over the small vocabulary
:data:`VOCABULARY` (token embeddings, their mean, a projection) and CLIP's
head, a learned temperature times the cosine similarity, with the inputs
``{"images", "token_ids"}`` and the output ``"vision_logits"`` of a KerasHub
``CLIPBackbone``: :class:`keras_cam.multimodal.TextSimilarity` and
:func:`keras_cam.multimodal.explain_texts` apply. It is trained by
locked-image tuning (:func:`train_clip`): the image trunk is the trained
ViT's, frozen, and the rest learns CLIP's contrastive loss against the four
class prompts :data:`CLIP_PROMPTS`. Trained from scratch, end to end, the
same loss (and a KerasHub ``CLIPBackbone`` of a tiny config) stayed at chance
for the two or three epochs tried.
"""

from __future__ import annotations

import os
import time

import numpy as np

from keras_cam.demo.data import CLASS_NAMES, IMAGE_SIZE
from keras_cam.demo.model import load_weights_into
from keras_cam.demo.train import seed_everything

HERE = os.path.dirname(os.path.abspath(__file__))
VIT_WEIGHTS_PATH = os.path.join(HERE, "vit_weights.npz")
CLIP_WEIGHTS_PATH = os.path.join(HERE, "clip_weights.npz")

PATCH = 8
VIT_WIDTH, VIT_HEADS, VIT_BLOCKS, VIT_MLP = 48, 4, 3, 96
TRAIN_SEED, TEST_SEED = 0, 1

# The CLIP-style model's words; id 0 pads (masked out of the text tower's mean).
VOCABULARY = ("<pad>", "<start>", "a", "photo", "of") + CLASS_NAMES + ("<end>",)
CLIP_SEQUENCE = 8
CLIP_PROMPTS = tuple(f"a photo of a {name}" for name in CLASS_NAMES)


def prompt_ids(text):
    """Token ids of a prompt over :data:`VOCABULARY`: ``<start>``, the words, ``<end>``.

    Example:
        >>> prompt_ids("a photo of a circle")   # [1, 2, 3, 4, 2, 5, 10]
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a string; received {type(text).__name__}.")
    words = text.lower().split()
    unknown = [w for w in words if w not in VOCABULARY[2:-1]]
    if unknown or not words:
        raise ValueError(f"The demo CLIP knows only the words {list(VOCABULARY[2:-1])}; received {text!r}.")
    if len(words) + 2 > CLIP_SEQUENCE:
        raise ValueError(f"A prompt has at most {CLIP_SEQUENCE - 2} words; received {len(words)} in {text!r}.")
    return [1] + [VOCABULARY.index(w) for w in words] + [len(VOCABULARY) - 1]


# ---------------------------------------------------------------------------
# The ViT

_CUSTOM_LAYERS = {}


def _custom_layers(keras):
    """The demo's two custom layers, defined once per Keras package (``keras`` or ``tf_keras``)."""
    if id(keras) in _CUSTOM_LAYERS:
        return _CUSTOM_LAYERS[id(keras)]
    ops = getattr(keras, "ops", None)
    if ops is None:  # tf-keras runs on TensorFlow only
        import tensorflow as tf  # noqa: PLC0415

        def tile_rows(t, x):
            return tf.tile(t, [tf.shape(x)[0], 1, 1])

        concatenate, matmul, exp = (lambda xs: tf.concat(xs, axis=1)), tf.matmul, tf.exp
        cast, transpose = tf.cast, tf.transpose
    else:
        def tile_rows(t, x):
            return ops.tile(t, (ops.shape(x)[0], 1, 1))

        concatenate, matmul, exp = (lambda xs: ops.concatenate(xs, axis=1)), ops.matmul, ops.exp
        cast, transpose = ops.cast, ops.transpose

    class ClassTokenAndPositions(keras.layers.Layer):
        """``(N, P, D) -> (N, 1 + P, D)``: ``[c; x] + E`` with a learned class token ``c`` ``(D,)`` and
        position embeddings ``E`` ``(1 + P, D)``."""

        def build(self, input_shape):
            length, width = int(input_shape[1]), int(input_shape[2])
            # Keras 3 draws each call of one initializer from the global seed (the shipped weights were
            # trained so); tf-keras repeats an unseeded instance's values, so it gets one per weight.
            init = keras.initializers.RandomNormal(stddev=0.02)
            self.token = self.add_weight(name="class_token", shape=(1, 1, width), initializer=init)
            if ops is None:
                init = keras.initializers.RandomNormal(stddev=0.02)
            self.positions = self.add_weight(name="positions", shape=(1, length + 1, width), initializer=init)
            super().build(input_shape)

        def call(self, x):
            token = tile_rows(cast(self.token, x.dtype), x)
            return concatenate([token, x]) + cast(self.positions, x.dtype)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[1] + 1, input_shape[2])

    class ScaledCosine(keras.layers.Layer):
        """``(u (N, P), v (M, P)) -> t u v^T`` ``(N, M)`` for unit-norm rows, ``t = exp(s)`` a learned
        temperature (CLIP's logit scale), ``s = log 10`` at first."""

        def build(self, input_shape):
            self.scale = self.add_weight(name="logit_scale", shape=(),
                                         initializer=keras.initializers.Constant(float(np.log(10.0))))
            super().build(input_shape)

        def call(self, inputs):
            u, v = inputs
            return exp(cast(self.scale, u.dtype)) * matmul(u, transpose(v))

        def compute_output_shape(self, input_shape):
            return (input_shape[0][0], input_shape[1][0])

    _CUSTOM_LAYERS[id(keras)] = {"tokens": ClassTokenAndPositions, "cosine": ScaledCosine}
    return _CUSTOM_LAYERS[id(keras)]


def _vit_features(keras, inputs, prefix=""):
    """The ViT's trunk on ``inputs``: the class token's features ``(N, VIT_WIDTH)`` after the final norm."""
    layers = keras.layers
    grid = IMAGE_SIZE // PATCH
    x = layers.GroupNormalization(groups=3, center=False, scale=False, epsilon=1e-3,
                                  name=f"{prefix}standardize")(inputs)
    # A convolutional stem (Xiao et al. 2021, "Early Convolutions Help Transformers See Better"): two
    # strided 3 x 3 convolutions, then a 2 x 2 one, one token per 8 x 8 patch.
    for i, channels in ((1, 16), (2, 32)):
        x = layers.Conv2D(channels, 3, strides=2, padding="same", use_bias=False, name=f"{prefix}stem{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{prefix}stem{i}_bn")(x)
        x = layers.ReLU(name=f"{prefix}stem{i}_relu")(x)
    x = layers.Conv2D(VIT_WIDTH, 2, strides=2, name=f"{prefix}patch_embed")(x)
    x = layers.Reshape((grid * grid, VIT_WIDTH), name=f"{prefix}patches")(x)
    x = _custom_layers(keras)["tokens"](name=f"{prefix}tokens")(x)
    for b in range(1, VIT_BLOCKS + 1):
        y = layers.LayerNormalization(epsilon=1e-6, name=f"{prefix}block{b}_norm1")(x)
        y = layers.MultiHeadAttention(VIT_HEADS, VIT_WIDTH // VIT_HEADS, name=f"{prefix}block{b}_attention")(y, y)
        x = layers.Add(name=f"{prefix}block{b}_add1")([x, y])
        y = layers.LayerNormalization(epsilon=1e-6, name=f"{prefix}block{b}_norm2")(x)
        y = layers.Dense(VIT_MLP, activation="gelu", name=f"{prefix}block{b}_mlp1")(y)
        y = layers.Dense(VIT_WIDTH, name=f"{prefix}block{b}_mlp2")(y)
        x = layers.Add(name=f"{prefix}block{b}_add2")([x, y])
    x = layers.LayerNormalization(epsilon=1e-6, name=f"{prefix}final_norm")(x)
    x = layers.Cropping1D((0, grid * grid), name=f"{prefix}class_token")(x)
    return layers.Flatten(name=f"{prefix}flatten")(x)


def build_vit(keras=None):
    """The demo ViT, freshly initialized (see the module docstring).

    ``(64, 64, 3)`` in [0, 1] -> ``GroupNormalization`` per image and channel
    (no weights) -> a convolutional stem (3 x 3 convolutions of stride 2 with
    16 and 32 channels, batch norm, ReLU) -> ``Conv2D(48, 2, strides=2)``
    (``"patch_embed"``: one token per 8 x 8 patch, an 8 x 8 grid) ->
    ``"tokens"`` (class token prepended, position embeddings added; ``(N,
    65, 48)``) -> blocks ``block{b}`` (``b = 1..3``): ``x + MHA(LN(x))`` (4
    heads of 12) then ``x + W_2 gelu(W_1 LN(x))`` (96 hidden units) ->
    ``"final_norm"`` -> the class token -> ``Dense(4, softmax)``
    (``"predictions"``). 72k weights.

    Args:
        keras: the Keras package to build with (``keras`` or ``tf_keras``); by
            default the one in use (:mod:`keras_cam._compat`).
    """
    if keras is None:
        from keras_cam._compat import keras
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    x = _vit_features(keras, inputs)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="keras_cam_demo_vit")


def load_vit(path=None, keras=None):
    """The trained demo ViT, ready to explain.

    Args:
        path: a weights ``.npz`` written by :func:`keras_cam.demo.model.save_weights`
            for :func:`build_vit`; by default the one shipped with the package.
        keras: the Keras package to build with; by default the one in use.

    Returns:
        A new functional model with the trained weights (not compiled).

    Raises:
        FileNotFoundError: no such file. ValueError: the file's arrays do not
        match the architecture (names or shapes).

    Example:
        >>> from keras_cam.demo import load_vit, make_dataset
        >>> vit = load_vit()
        >>> maps = keras_cam.AttentionRollout(vit)(make_dataset(4, seed=1)[0])
    """
    path = VIT_WEIGHTS_PATH if path is None else path
    return load_weights_into(build_vit(keras), path, "Demo ViT", "python -m keras_cam.demo.train_vit")


# ---------------------------------------------------------------------------
# The CLIP-style model


def build_clip(keras=None):
    """The demo CLIP-style model, freshly initialized: two towers and a scaled cosine similarity.

    Image tower: the ViT trunk of :func:`build_vit` (its layers prefixed
    ``"image_"``) -> ``Dense(16)`` (``"vision_projection"``) -> unit norm.
    Text tower: ``token_ids`` -> ``Embedding(len(VOCABULARY), 32, mask_zero=True)``
    -> the mean over the non-pad tokens -> ``Dense(16)`` (``"text_projection"``)
    -> unit norm. Head: ``"vision_logits"`` ``(N_images, N_texts)`` ``= t
    cos(u_i, v_j)`` with a learned temperature ``t`` (``"clip_head"``). Inputs
    ``{"images": (N, 64, 64, 3), "token_ids": (M, L)}`` and output
    ``{"vision_logits"}``: the interface of a KerasHub ``CLIPBackbone``, so
    :class:`keras_cam.multimodal.TextSimilarity` and
    :func:`keras_cam.multimodal.explain_texts` apply.

    Args:
        keras: the Keras package to build with; by default the one in use.
    """
    if keras is None:
        from keras_cam._compat import keras
    layers = keras.layers
    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="images")
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    u = layers.Dense(16, use_bias=False, name="vision_projection")(_vit_features(keras, images, "image_"))
    u = layers.UnitNormalization(name="vision_unit")(u)
    v = layers.Embedding(len(VOCABULARY), 32, mask_zero=True, name="token_embedding")(tokens)
    v = layers.GlobalAveragePooling1D(name="text_pool")(v)
    v = layers.Dense(16, use_bias=False, name="text_projection")(v)
    v = layers.UnitNormalization(name="text_unit")(v)
    logits = _custom_layers(keras)["cosine"](name="clip_head")([u, v])
    return keras.Model({"images": images, "token_ids": tokens}, {"vision_logits": logits},
                       name="keras_cam_demo_clip")


def load_clip(path=None, keras=None):
    """The trained demo CLIP-style model, ready to explain with
    :class:`keras_cam.multimodal.TextSimilarity`.

    Args:
        path: a weights ``.npz`` for :func:`build_clip`; by default the shipped one.
        keras: the Keras package to build with; by default the one in use.

    Raises:
        FileNotFoundError / ValueError: as :func:`load_vit`.

    Example:
        >>> from keras_cam.demo import CLIP_PROMPTS, load_clip, make_dataset, prompt_ids
        >>> from keras_cam.multimodal import explain_texts
        >>> clip = load_clip()
        >>> prompts = [prompt_ids(p) for p in CLIP_PROMPTS[:2]]
        >>> maps = explain_texts(keras_cam.GradCAM(clip), make_dataset(2, seed=1)[0], prompts)
    """
    path = CLIP_WEIGHTS_PATH if path is None else path
    return load_weights_into(build_clip(keras), path, "Demo CLIP", "python -m keras_cam.demo.train_vit --clip")


def prompt_matrix(prompts=CLIP_PROMPTS):
    """``(M, CLIP_SEQUENCE)`` int32 token ids of ``prompts``, padded with 0."""
    ids = np.zeros((len(prompts), CLIP_SEQUENCE), np.int32)
    for i, p in enumerate(prompts):
        row = prompt_ids(p)
        ids[i, :len(row)] = row
    return ids


def clip_class_scores(clip, images, batch_size=128):
    """``(N, 4)`` similarity logits of each image with the four :data:`CLIP_PROMPTS`."""
    from keras_cam import _compat

    ids = prompt_matrix()
    out = []
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start:start + batch_size], np.float32)
        # The text batch must match the image batch in a functional call: repeat the prompts.
        reps = -(-len(chunk) // len(ids))
        tokens = np.tile(ids, (reps, 1))[:len(chunk)]
        logits = clip({"images": chunk, "token_ids": tokens}, training=False)["vision_logits"]
        out.append(np.asarray(_compat.to_host(logits))[:, :len(ids)])
    return np.concatenate(out)


def two_shape_images(n, seed=9, first="circle", second="square"):
    """``n`` images holding two shapes, for two-prompt figures and tests.

    From ``make_dataset(200, seed)``: the object pixels of an image of
    ``second`` (those of its box in the shape's flat colour, the most common
    colour there) are pasted into an image of ``first`` whose box lies at
    least 2 pixels away from it; each ``second`` image is used once.

    Returns:
        ``(images, first_boxes, second_boxes)``: float32 ``(n', 64, 64, 3)``
        and two int32 ``(n', 4)`` arrays of ``(y0, x0, y1, x1)``; ``n' <= n``
        when fewer pairs fit.
    """
    from keras_cam.demo.data import make_dataset

    if first not in CLASS_NAMES or second not in CLASS_NAMES or first == second:
        raise ValueError(f"`first` and `second` must be two different names of {CLASS_NAMES}; "
                         f"received {first!r} and {second!r}.")
    images, labels, boxes = make_dataset(200, seed=seed)
    out, first_boxes, second_boxes, used = [], [], [], set()
    for a in np.flatnonzero(labels == CLASS_NAMES.index(first)):
        for b in np.flatnonzero(labels == CLASS_NAMES.index(second)):
            (a0, a1, a2, a3), (b0, b1, b2, b3) = boxes[a], boxes[b]
            if b in used or not (a2 + 2 <= b0 or b2 + 2 <= a0 or a3 + 2 <= b1 or b3 + 2 <= a1):
                continue
            patch = images[b, b0:b2, b1:b3]
            colours, counts = np.unique(patch.reshape(-1, 3), axis=0, return_counts=True)
            shape = np.all(patch == colours[np.argmax(counts)], axis=-1)
            image = images[a].copy()
            image[b0:b2, b1:b3][shape] = patch[shape]
            out.append(image)
            first_boxes.append(boxes[a])
            second_boxes.append(boxes[b])
            used.add(b)
            break
        if len(out) == n:
            break
    return np.stack(out), np.array(first_boxes, np.int32), np.array(second_boxes, np.int32)


# ---------------------------------------------------------------------------
# Training


def train_vit(n_train=4000, epochs=15, seed=TRAIN_SEED, verbose=0, batch_size=32, deterministic=True,
              run_eagerly=False):
    """Train a fresh demo ViT; returns ``(model, wall seconds, CPU seconds of all threads)``.

    Adam with a cosine-decayed rate from 3e-3, batches of 32, on
    ``make_dataset(n_train, seed)``; seeded. ``deterministic``: switch on
    TensorFlow's deterministic ops (for the whole process; JAX and PyTorch on
    a CPU are deterministic already). ``run_eagerly``: as ``Model.compile``'s
    (quicker for a few steps).
    """
    from keras_cam._compat import keras
    from keras_cam.demo.data import make_dataset

    seed_everything(keras, seed, deterministic)
    images, labels = make_dataset(n_train, seed=seed)[:2]
    model = build_vit(keras)
    steps = max(1, epochs * -(-n_train // batch_size))
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"], run_eagerly=run_eagerly)
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(images, labels, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=verbose)
    return model, time.perf_counter() - start, time.process_time() - cpu


def train_clip(n_train=4000, epochs=4, seed=TRAIN_SEED, verbose=0, batch_size=32, vit_path=None,
               deterministic=True):
    """Train a fresh demo CLIP-style model; returns ``(model, wall seconds, CPU seconds)``.

    Locked-image tuning (LiT: Zhai et al., CVPR 2022): the image tower's trunk
    is the trained demo ViT's (:func:`load_vit`, ``vit_path``), frozen; the
    vision projection, the text tower and the temperature are trained with
    CLIP's image-to-text contrastive loss. Every batch pairs ``batch_size``
    images with the texts ``CLIP_PROMPTS[j % 4]`` (``j`` the column), so
    ``vision_logits`` ``(B, B)`` hold each image's similarity with every
    prompt, repeated; the target of image ``i`` is spread evenly over the
    columns of its class (its positives), the other columns are its
    negatives. Adam, cosine-decayed from 3e-3; seeded (``deterministic``: as
    for :func:`train_vit`).

    (Trained end to end from scratch, the same loss stayed at chance, ``ln B``,
    for the two epochs run; so did a KerasHub ``CLIPBackbone`` of a tiny config
    in three epochs.)
    """
    from keras_cam._compat import keras
    from keras_cam.demo.data import make_dataset

    seed_everything(keras, seed, deterministic)
    n_train -= n_train % batch_size
    images, labels = make_dataset(n_train, seed=seed)[:2]
    clip = build_clip(keras)
    vit = load_vit(vit_path, keras)
    trunk = {layer.name: layer for layer in vit.layers}
    for layer in clip.layers:
        if layer.name.startswith("image_"):
            layer.set_weights(trunk[layer.name[len("image_"):]].get_weights())
            layer.trainable = False
    k = len(CLASS_NAMES)
    tokens = np.tile(prompt_matrix(), (n_train // k + 1, 1))[:n_train]
    column_class = np.arange(batch_size) % k
    targets = (labels[:, None] == column_class[None, :]).astype(np.float32)
    targets /= targets.sum(axis=1, keepdims=True)
    trainer = keras.Model(clip.input, clip.output["vision_logits"])
    steps = max(1, epochs * (n_train // batch_size))
    trainer.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
                    loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(seed)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(epochs):  # shuffle the images, keep the columns' prompts in place
        order = rng.permutation(n_train)
        trainer.fit({"images": images[order], "token_ids": tokens}, targets[order], batch_size=batch_size,
                    epochs=1, shuffle=False, verbose=verbose)
    for layer in clip.layers:
        layer.trainable = True
    return clip, time.perf_counter() - start, time.process_time() - cpu


def vit_accuracy(model, n=1000, seed=TEST_SEED):
    """Top-1 accuracy of a ViT on ``n`` fresh generated images."""
    from keras_cam.demo.data import make_dataset

    images, labels = make_dataset(n, seed=seed)[:2]
    return float(np.mean(model.predict(images, batch_size=256, verbose=0).argmax(-1) == labels))


def clip_accuracy(clip, n=1000, seed=TEST_SEED):
    """Zero-shot-style accuracy: the share of ``n`` fresh images closest to their own class's prompt."""
    from keras_cam.demo.data import make_dataset

    images, labels = make_dataset(n, seed=seed)[:2]
    return float(np.mean(clip_class_scores(clip, images).argmax(-1) == labels))

"""Layers inside custom layers, and the automatic layer choice on vision transformers.

Reaching: a custom layer that keeps its sub-layers as attributes, in lists
and in dicts is entered (paths, ``list_layers``, interception), its private
attributes are not, and a layer that a model lists itself is not listed a
second time. The Grad-CAM of an inner layer is checked against the
definition computed here from the sub-layers, run by hand outside the model.

ViT choice: on a standard pre-norm ViT classified on its class token, every
token layer after the last block's attention has zero gradient on its patch
tokens (checked here with the backend's own autodiff, layer by layer), so the
automatic choice is the last block's first LayerNorm, and its maps are not
all zero.
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import layers as L
from keras_cam._compat import keras, ops, to_host
from test_gradcam import native_grad
from test_layout import CLASSES, ClassToken, hand_gradcam, tiny_vit

# ---------------------------------------------------------------------------
# A custom layer with sub-layers


class Mixer(keras.layers.Layer):
    """Sub-layers as an attribute, a list and a dict; one private sub-layer; one shared layer."""

    def __init__(self, shared=None, **kwargs):
        super().__init__(**kwargs)
        self.stem = keras.layers.Conv2D(6, 3, padding="same", name="stem")
        self.stages = [keras.layers.Conv2D(5, 3, padding="same", name=f"stage_{i}") for i in range(2)]
        self.acts = {"relu": keras.layers.Activation("relu", name="act")}
        self._hidden = keras.layers.Activation("linear", name="hidden")
        self.again = self.stages[0]  # the same layer under a second attribute: listed once
        self.shared = shared

    def call(self, x):
        x = self.acts["relu"](self.stem(x))
        x = self.stages[0](x)
        x = self._hidden(self.acts["relu"](self.stages[1](x)))
        return x if self.shared is None else self.shared(x)


def mixer_model():
    keras.utils.set_random_seed(11)
    shared = keras.layers.Activation("relu", name="shared")
    x = keras.Input((8, 8, 3))
    m = Mixer(shared=shared, name="mixer")(x)
    y = shared(keras.layers.Conv2D(5, 1, name="side")(x))  # the model lists `shared` itself
    g = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([m, y]))
    return keras.Model(x, keras.layers.Dense(CLASSES, name="logits")(g))


def test_paths_enter_custom_layers_once_and_skip_private_attributes():
    model = mixer_model()
    paths = [p for p, _ in L.walk(model)]
    for inner in ("mixer/stem", "mixer/stage_0", "mixer/stage_1", "mixer/act"):
        assert paths.count(inner) == 1, paths
    assert not any(p.endswith("hidden") for p in paths)  # a private attribute
    assert "shared" in paths and "mixer/shared" not in paths  # named where the model lists it
    listed = dict(kc.list_layers(model))
    assert listed["mixer/stage_1"] == (1, 8, 8, 5)
    assert L.resolve(model, "stage_1")[0] == "mixer/stage_1"
    # Execution order: the inner layers run before the layer that holds them returns.
    order = [p for p, _ in kc.list_layers(model)]
    assert order.index("mixer/stem") < order.index("mixer/stage_1") < order.index("mixer")


def test_gradcam_at_a_layer_inside_a_custom_layer_equals_the_definition():
    model = mixer_model()
    mixer = model.get_layer("mixer")
    x = np.random.default_rng(4).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    xt = ops.convert_to_tensor(x)
    # By hand: the sub-layers called one by one, differentiated at the target's output.
    relu = ops.relu
    a = to_host(mixer.stages[0](relu(mixer.stem(xt))))
    y = relu(model.get_layer("side")(xt))

    def score(a):
        m = relu(relu(mixer.stages[1](a)))
        return model.get_layer("logits")(ops.mean(m + y, axis=(1, 2)))[:, 1]
    g = native_grad(score, a)
    expected = hand_gradcam(a.astype(np.float64), g.astype(np.float64))
    assert np.ptp(expected) > 0
    cam = kc.GradCAM(model, layer="mixer/stage_0")
    np.testing.assert_allclose(cam(x, targets=1, upsample=False, normalize=False), expected, rtol=1e-5, atol=1e-6)
    assert all("call" not in vars(layer) for _, layer in L.walk(model))  # the interception is undone


# ---------------------------------------------------------------------------
# Standard pre-norm ViTs


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding to every token."""

    def build(self, shape):
        self.table = self.add_weight(name="table", shape=(1, int(shape[1]), int(shape[2])),
                                     initializer="random_normal")

    def call(self, x):
        return x + self.table


def prenorm_vit(pool="token", blocks=2, dim=16, size=32, patch=8):
    """Patch embedding, class token, position embedding, pre-norm blocks
    (LN -> MHA -> residual, LN -> MLP -> residual), a final LN, the class token (or the mean
    of the patch tokens) -> Dense."""
    keras.utils.set_random_seed(12)
    grid = size // patch
    x = keras.Input((size, size, 3))
    p = keras.layers.Conv2D(dim, patch, strides=patch, name="patches")(x)
    t = keras.layers.Reshape((grid * grid, dim))(p)
    if pool == "token":
        t = ClassToken(name="cls")(t)
    t = PositionEmbedding(name="pos")(t)
    for b in range(blocks):
        n1 = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{b}_ln1")(t)
        a = keras.layers.MultiHeadAttention(2, dim // 2, name=f"block{b}_mha")(n1, n1)
        t = keras.layers.Add(name=f"block{b}_add1")([t, a])
        n2 = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{b}_ln2")(t)
        h = keras.layers.Dense(2 * dim, activation="gelu", name=f"block{b}_fc1")(n2)
        h = keras.layers.Dense(dim, name=f"block{b}_fc2")(h)
        t = keras.layers.Add(name=f"block{b}_add2")([t, h])
    t = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(t)
    if pool == "token":
        v = keras.layers.Flatten()(keras.layers.Cropping1D((0, grid * grid))(t))
    else:
        v = keras.layers.GlobalAveragePooling1D()(t)
    return keras.Model(x, keras.layers.Dense(CLASSES, activation="softmax", name="logits")(v))


def patch_gradient(model, names, x, prefix):
    """Per named layer, the largest |dS/dtokens| over its patch tokens (S: the top output), by the
    backend's own autodiff: each layer's call is wrapped to add a zero ``delta`` to its output, and
    ``dS/d delta`` is ``dS/d output``."""
    originals = {n: model.get_layer(n).call for n in names}
    shapes, deltas = {}, {}

    def wrapped(name):
        def call(*args, **kwargs):
            out = originals[name](*args, **kwargs)
            shapes[name] = tuple(out.shape)
            return out + deltas[name] if name in deltas else out
        return call

    xt = ops.convert_to_tensor(x)
    try:
        for n in names:
            object.__setattr__(model.get_layer(n), "call", wrapped(n))
        model(xt, training=False)  # the output shapes

        def score(*ds):
            deltas.update(zip(names, ds))
            return ops.max(model(xt, training=False), axis=-1)
        grads = native_grad(score, *[np.zeros(shapes[n], np.float32) for n in names])
    finally:
        deltas.clear()
        for n in names:
            object.__delattr__(model.get_layer(n), "call")
    grads = grads if len(names) > 1 else [grads]
    return {n: float(np.abs(g[:, prefix:]).max()) for n, g in zip(names, grads)}


def test_auto_choice_on_a_prenorm_vit_is_the_last_blocks_first_norm():
    model = prenorm_vit()
    cam = kc.GradCAM(model)
    assert cam.layer_path == "block1_ln1"
    x = np.random.default_rng(5).uniform(size=(3, 32, 32, 3)).astype(np.float32)
    # Why: after the last attention, the patch tokens reach the class token only through it.
    later = ["block1_mha", "block1_add1", "block1_ln2", "block1_fc1", "block1_fc2", "block1_add2", "final_ln"]
    grads = patch_gradient(model, ["block1_ln1"] + later, x, prefix=1)
    assert grads["block1_ln1"] > 1e-4
    assert all(grads[n] == 0 for n in later), grads
    # Grad-CAM's ReLU may blank one class of an untrained model; at the chosen layer each image
    # has a class with a varying map, while at the final norm every map of every class is zero.
    maps = np.stack([cam(x, targets=c, upsample=False, normalize=False) for c in range(CLASSES)])
    assert maps.shape == (CLASSES, 3, 4, 4) and (np.ptp(maps, axis=(2, 3)) > 0).any(axis=0).all()
    final = kc.GradCAM(model, layer="final_ln")
    assert all((final(x, targets=c, upsample=False, normalize=False) == 0).all() for c in range(CLASSES))
    np.testing.assert_allclose(maps[0], kc.GradCAM(model, layer="block1_ln1")(x, targets=0, upsample=False,
                                                                           normalize=False), rtol=1e-6, atol=1e-7)


def test_auto_choice_on_a_mean_pooled_vit_is_the_last_token_layer():
    # Without a class token every patch token reaches the output directly: the final norm.
    model = prenorm_vit(pool="gap")
    cam = kc.GradCAM(model)
    assert cam.layer_path == "final_ln"
    x = np.random.default_rng(6).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    assert all(np.ptp(m) > 0 for m in cam(x, upsample=False, normalize=False))


def test_auto_choice_on_the_tiny_functional_vit():
    # Its attention is written with Dense q/k/v layers: the key projection runs last and its
    # patch tokens reach the class token through the attention weights.
    model = tiny_vit()
    cam = kc.GradCAM(model)
    names = ["target", "k", "v"]
    x = np.random.default_rng(7).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    order = [p for p, _ in kc.list_layers(model)]
    assert cam.layer_path == max(names, key=order.index)
    assert patch_gradient(model, [cam.layer_path], x, prefix=1)[cam.layer_path] > 0
    maps = cam(x, upsample=False, normalize=False)
    assert maps.shape == (2, 4, 4) and all(np.ptp(m) > 0 for m in maps)


class Attention(keras.layers.Layer):
    """Self-attention whose projections are public attributes: (N, L, heads, dim) outputs."""

    def __init__(self, heads, dim, width, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.dim = heads, dim
        self.query = keras.layers.EinsumDense("abc,cde->abde", (None, heads, dim), name="query")
        self.key = keras.layers.EinsumDense("abc,cde->abde", (None, heads, dim), name="key")
        self.value = keras.layers.EinsumDense("abc,cde->abde", (None, heads, dim), name="value")
        self.out = keras.layers.EinsumDense("abde,dec->abc", (None, width), name="out")

    def call(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        w = ops.softmax(ops.einsum("abhd,achd->ahbc", q, k) / np.sqrt(self.dim), axis=-1)
        return self.out(ops.einsum("ahbc,achd->abhd", w, v))


def test_attention_internals_are_no_feature_maps():
    keras.utils.set_random_seed(13)
    x = keras.Input((16, 16, 3))
    p = keras.layers.Conv2D(8, 4, strides=4, name="patches")(x)
    t = ClassToken(name="cls")(keras.layers.Reshape((16, 8))(p))
    n = keras.layers.LayerNormalization(name="ln")(t)
    t = keras.layers.Add()([t, Attention(4, 4, 8, name="attn")(n)])
    v = keras.layers.Flatten()(keras.layers.Cropping1D((0, 16))(keras.layers.LayerNormalization(name="final")(t)))
    model = keras.Model(x, keras.layers.Dense(CLASSES, name="logits")(v))
    infos = {i.path: i for i in L.trace_layers(model, np.zeros((1, 16, 16, 3), np.float32))}
    for name in ("attn/query", "attn/key", "attn/value"):  # (1, 17, 4, 4): rank 4, no patch grid
        assert infos[name].output_shape == (1, 17, 4, 4)
        assert infos[name].from_tokens and not infos[name].is_spatial
    assert infos["patches"].is_spatial and not infos["patches"].from_tokens
    # The key projection's tokens are not a token sequence either: the choice is the norm.
    assert kc.GradCAM(model).layer_path == "ln"


def test_tokens_reshaped_back_to_their_grid_are_a_map():
    keras.utils.set_random_seed(14)
    x = keras.Input((16, 16, 3))
    p = keras.layers.Conv2D(8, 4, strides=4, name="patches")(x)
    t = keras.layers.Dense(8, name="mix")(keras.layers.Reshape((16, 8))(p))
    g = keras.layers.Reshape((4, 4, 8), name="grid")(t)
    model = keras.Model(x, keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(g)))
    infos = {i.path: i for i in L.trace_layers(model, np.zeros((1, 16, 16, 3), np.float32))}
    assert infos["grid"].is_spatial
    assert kc.GradCAM(model).layer_path == "grid"


def test_a_cnn_reading_rows_as_a_sequence_keeps_its_map():
    # A recurrent-style head: the map's rows become a sequence (N, h, w*K), not a patch grid
    # (8 tokens of a 16x32 input would be a 2x4 grid, not the map's 8x16).
    keras.utils.set_random_seed(15)
    x = keras.Input((16, 32, 1))
    a = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv")(x)  # (8, 16, 4)
    h = keras.layers.Dense(8, name="rows")(keras.layers.Reshape((8, 64))(a))
    model = keras.Model(x, keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling1D()(h)))
    assert kc.GradCAM(model).layer_path == "conv"


@pytest.mark.parametrize("reshape", [None, (4, 4)])
def test_auto_choice_honours_reshape_and_matches_the_named_layer(reshape):
    model = prenorm_vit()
    x = np.random.default_rng(8).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    auto = kc.GradCAM(model, reshape=reshape)
    assert auto.layer_path == "block1_ln1"
    np.testing.assert_allclose(auto(x, targets=2), kc.GradCAM(model, layer="block1_ln1")(x, targets=2),
                               rtol=1e-6, atol=1e-7)

"""Attention capture and the attention methods (rollout, Chefer's gradient rollout, LeGrad).

The reference is a hand-written two-block ViT (16x16 images, 4-pixel
patches: a class token and 4x4 patch tokens, ``keras.layers.MultiHeadAttention``
with 2 heads). Its whole forward pass is written again here, once, over a
namespace ``xp``: with numpy in float64 it gives the attention ``A_b`` of
each block and the logits (checked against the model), from which rollout
is computed by numpy matrix products; with ``keras.ops`` and a zero
``delta_b`` added to each ``A_b``, the backend's own autodiff
(``native_grad``: a tape, ``jax.grad``, ``torch.autograd``) gives
``dS/dA_b``, from which Chefer's rule and LeGrad follow by their formulas.
keras-cam's own capture and ``tapped_gradients`` are not used by the
reference. A tiny KerasHub ``ViTImageClassifier`` (weights=None) is checked
the same way from its sub-layers, and a two-stream co-attention model checks
the bi-modal rules.
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import attention as _attention
from keras_cam import backend
from keras_cam import methods
from keras_cam._compat import keras, ops, to_host
from keras_cam.methods.attention import AttentionRollout, GradientRollout, LeGrad
from test_gradcam import native_grad
from test_layout import ClassToken

CLASSES = 3
HEADS, KEY_DIM, WIDTH = 2, 4, 8


def hand_vit(cls_token=True, seed=0):
    """Patches (conv 4x4, stride 4), [class token], two pre-norm blocks (MHA + ReLU MLP), head."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((16, 16, 3))
    t = keras.layers.Reshape((16, WIDTH))(keras.layers.Conv2D(WIDTH, 4, strides=4, name="patches")(x))
    if cls_token:
        t = ClassToken(name="cls")(t)
    for b in range(2):
        n = keras.layers.LayerNormalization(name=f"ln{b}a")(t)
        a = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name=f"mha{b}")(n, n)
        t = keras.layers.Add()([t, a])
        m = keras.layers.LayerNormalization(name=f"ln{b}b")(t)
        h = keras.layers.Dense(16, activation="relu", name=f"fc{b}a")(m)
        t = keras.layers.Add()([t, keras.layers.Dense(WIDTH, name=f"fc{b}b")(h)])
    t = keras.layers.LayerNormalization(name="ln_final")(t)
    pooled = (keras.layers.Flatten()(keras.layers.Cropping1D((0, 16))(t)) if cls_token
              else keras.layers.GlobalAveragePooling1D()(t))
    model = keras.Model(x, keras.layers.Dense(CLASSES, name="logits")(pooled))
    # Numpy-drawn weights: the same model on every backend, with attention far from uniform.
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, (4.0 if w.ndim == 3 else 1.5) / np.sqrt(w.shape[0]) if w.ndim > 1 else 0.2,
                                  w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def weights(model, xp=np):
    """Each layer's weights: float64 numpy arrays, or float32 tensors when ``xp`` is keras.ops."""
    def convert(v):
        return np.asarray(v, np.float64) if xp is np else ops.convert_to_tensor(np.asarray(v, np.float32))
    return {layer.name: [convert(v) for v in layer.get_weights()] for layer in model.layers}


def softmax(xp, s):
    e = xp.exp(s - xp.max(s, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


def layer_norm(xp, x, gamma, beta, eps):
    mean = xp.mean(x, axis=-1, keepdims=True)
    var = xp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) / xp.sqrt(var + eps) * gamma + beta


def mha(xp, n, w, delta=None):
    """MultiHeadAttention(n, n) by its definition: ``(output, A)``, ``A + delta`` used when given."""
    wq, bq, wk, bk, wv, bv, wo, bo = w
    q = xp.einsum("nld,dhk->nlhk", n, wq) + bq
    k = xp.einsum("nld,dhk->nlhk", n, wk) + bk
    v = xp.einsum("nld,dhk->nlhk", n, wv) + bv
    a = softmax(xp, xp.einsum("nlhk,nmhk->nhlm", q, k) / np.sqrt(q.shape[-1]))
    used = a if delta is None else a + delta
    return xp.einsum("nlhk,hkd->nld", xp.einsum("nhlm,nmhk->nlhk", used, v), wo) + bo, a


def cross_mha(xp, nq, nkv, w, delta=None):
    """MultiHeadAttention(query=nq, value=nkv) by its definition: ``(output, A)``."""
    wq, bq, wk, bk, wv, bv, wo, bo = w
    q = xp.einsum("nld,dhk->nlhk", nq, wq) + bq
    k = xp.einsum("nld,dhk->nlhk", nkv, wk) + bk
    v = xp.einsum("nld,dhk->nlhk", nkv, wv) + bv
    a = softmax(xp, xp.einsum("nlhk,nmhk->nhlm", q, k) / np.sqrt(q.shape[-1]))
    used = a if delta is None else a + delta
    return xp.einsum("nlhk,hkd->nld", xp.einsum("nhlm,nmhk->nlhk", used, v), wo) + bo, a


def hand_forward(xp, model, x, deltas=(None, None)):
    """``(logits, [A_1, A_2])`` of :func:`hand_vit`'s model, written with ``xp`` (numpy or keras.ops)."""
    w = weights(model, xp)
    eps = model.get_layer("ln0a").epsilon
    kp, bp = w["patches"]
    n = x.shape[0]
    patches = xp.reshape(x, (-1, 4, 4, 4, 4, 3))                      # (N, i, p, j, q, c)
    patches = xp.reshape(xp.transpose(patches, (0, 1, 3, 2, 4, 5)), (-1, 16, 48))
    t = xp.matmul(patches, xp.reshape(kp, (48, WIDTH))) + bp
    cls = "cls" in w
    if cls:
        t = xp.concatenate([xp.zeros_like(t[:, :1]) + w["cls"][0], t], axis=1)
    attentions = []
    for b in range(2):
        o, a = mha(xp, layer_norm(xp, t, *w[f"ln{b}a"], eps), w[f"mha{b}"], deltas[b])
        attentions.append(a)
        t = t + o
        h = xp.maximum(xp.matmul(layer_norm(xp, t, *w[f"ln{b}b"], eps), w[f"fc{b}a"][0]) + w[f"fc{b}a"][1], 0)
        t = t + xp.matmul(h, w[f"fc{b}b"][0]) + w[f"fc{b}b"][1]
    t = layer_norm(xp, t, *w["ln_final"], eps)
    pooled = t[:, 0] if cls else xp.mean(t, axis=1)
    del n
    return xp.matmul(pooled, w["logits"][0]) + w["logits"][1], attentions


def compiled(fn):
    """``fn`` compiled on JAX (its op-by-op autodiff of the hand-written forward pass is slow), as is elsewhere."""
    if backend.name() == "jax":
        import jax
        return jax.jit(fn)
    return fn


def attention_gradients(model, x, classes):
    """``[dS/dA_b]`` (numpy) by the backend's autodiff of :func:`hand_forward` in keras.ops."""
    shapes = [a.shape for a in hand_forward(np, model, x.astype(np.float64))[1]]
    xt = ops.convert_to_tensor(x)
    pick = ops.convert_to_tensor(np.eye(CLASSES, dtype=np.float32)[classes])

    def score(d0, d1):
        logits, _ = hand_forward(ops, model, xt, (d0, d1))
        return ops.sum(logits * pick, axis=-1)
    return native_grad(compiled(score), *[np.zeros(s, np.float32) for s in shapes])


# ---------------------------------------------------------------------------
# numpy references of the methods (float64)


def np_fuse(a, fusion):
    return {"mean": a.mean(1), "max": a.max(1), "min": a.min(1)}[fusion]


def np_rollout(attentions, fusion="mean", discard=0.0):
    r = None
    for a in attentions:
        f = np_fuse(a, fusion)
        n, l, _ = f.shape
        k = int(discard * l * l)
        if k:
            for i in range(n):  # the k smallest entries go (no ties in float attention)
                order = np.argsort(f[i].ravel(), kind="stable")
                flat = f[i].ravel().copy()
                flat[order[:k]] = 0
                f[i] = flat.reshape(l, l)
        hat = f + np.eye(l)
        hat = hat / hat.sum(-1, keepdims=True)
        r = hat if r is None else hat @ r
    return r


def np_chefer(attentions, grads):
    l = attentions[0].shape[-1]
    r = np.broadcast_to(np.eye(l), (attentions[0].shape[0], l, l)).copy()
    for a, g in zip(attentions, grads):
        r = r + np.maximum(g * a, 0).mean(1) @ r
    return r - np.eye(l)


def np_legrad(grads):
    return np.mean([np.maximum(g, 0).mean(axis=(1, 2)) for g in grads], axis=0)


def on_grid(row, prefix=1):
    return row[:, prefix:].reshape(-1, 4, 4)


@pytest.fixture(scope="module")
def vit():
    return hand_vit()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(-1, 1, size=(3, 16, 16, 3)).astype(np.float32)


def raw(explainer, x, targets=None):
    return explainer(x, targets=targets, upsample=False, normalize=False)


# ---------------------------------------------------------------------------
# capture


def test_the_hand_forward_is_the_model_and_capture_records_its_attention(vit, images):
    logits, attentions = hand_forward(np, vit, images.astype(np.float64))
    np.testing.assert_allclose(to_host(vit(images, training=False)), logits, rtol=1e-4, atol=1e-4)
    assert attentions[0].std() > 0.05  # not near-uniform: the maps below mean something
    listed = kc.list_attention_layers(vit)
    assert listed == [("mha0", HEADS), ("mha1", HEADS)]
    layers = _attention.resolve_attention_layers(vit)
    with _attention.AttentionCapture(layers) as cap:
        out = vit(ops.convert_to_tensor(images), training=False)
    assert [r.path for r in cap.records] == ["mha0", "mha1"]
    for rec, a in zip(cap.records, attentions):
        assert tuple(rec.probabilities.shape) == (3, HEADS, 17, 17)
        np.testing.assert_allclose(to_host(rec.probabilities), a, atol=2e-5)
    np.testing.assert_allclose(to_host(out), logits, rtol=1e-4, atol=1e-4)  # the outputs are unchanged
    for _, layer in layers:  # nothing left on the layers
        assert "_masked_softmax" not in vars(layer) and "_compute_attention" not in vars(layer)


def test_capture_is_undone_when_the_model_raises(vit):
    layers = _attention.resolve_attention_layers(vit)
    with pytest.raises(ValueError):
        with _attention.AttentionCapture(layers):
            vit(np.zeros((1, 8, 8, 3), np.float32))  # the wrong size
    for _, layer in layers:
        assert "_masked_softmax" not in vars(layer) and "_compute_attention" not in vars(layer)


# ---------------------------------------------------------------------------
# the methods against their formulas


@pytest.mark.parametrize("fusion,discard,seed", [("mean", 0.0, 0), ("max", 0.0, 1), ("min", 0.0, 2),
                                                 ("mean", 0.5, 3), ("max", 0.9, 4)])
def test_rollout_equals_numpy_matrix_products(fusion, discard, seed):
    model = hand_vit(seed=seed)
    x = np.random.default_rng(seed).uniform(-1, 1, size=(2, 16, 16, 3)).astype(np.float32)
    _, attentions = hand_forward(np, model, x.astype(np.float64))
    want = on_grid(np_rollout(attentions, fusion, discard)[:, 0])
    got = raw(AttentionRollout(model, head_fusion=fusion, discard_ratio=discard), x)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    if discard == 0:  # rows of a product of row-stochastic matrices sum to 1
        np.testing.assert_allclose(np_rollout(attentions, fusion)[:, 0].sum(-1), 1.0, atol=1e-9)


def test_rollout_of_a_pooled_vit_is_the_mean_row_and_token_picks_a_row():
    model = hand_vit(cls_token=False, seed=5)
    x = np.random.default_rng(5).uniform(-1, 1, size=(2, 16, 16, 3)).astype(np.float32)
    r = np_rollout(hand_forward(np, model, x.astype(np.float64))[1])
    np.testing.assert_allclose(raw(AttentionRollout(model), x), on_grid(r.mean(1), 0), atol=1e-6)
    np.testing.assert_allclose(raw(AttentionRollout(model, token=5), x), on_grid(r[:, 5], 0), atol=1e-6)
    np.testing.assert_allclose(raw(AttentionRollout(model, token=-1), x), on_grid(r[:, 15], 0), atol=1e-6)


@pytest.mark.parametrize("classes", [[0, 1, 2], [2, 2, 0]])
def test_gradient_rollout_and_legrad_equal_their_formulas(vit, images, classes):
    _, attentions = hand_forward(np, vit, images.astype(np.float64))
    grads = [g.astype(np.float64) for g in attention_gradients(vit, images, classes)]
    assert all(np.abs(g).max() > 0 for g in grads)
    want = on_grid(np_chefer(attentions, grads)[:, 0])
    got = raw(GradientRollout(vit), images, classes)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    want = on_grid(np_legrad(grads))
    got = raw(LeGrad(vit), images, classes)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name", ["attentionrollout", "gradientrollout", "legrad"])
def test_batch_equals_single_and_maps_are_at_the_input_size(vit, images, name):
    cam = methods.create(name, vit)
    batch = cam(images, targets=[0, 1, 2])
    assert batch.shape == (3, 16, 16) and batch.min() >= 0 and batch.max() == pytest.approx(1.0)
    for i in range(3):
        np.testing.assert_allclose(cam(images[i], targets=i), batch[i], atol=1e-5)


def test_layers_option_uses_the_chosen_blocks(vit, images):
    _, attentions = hand_forward(np, vit, images.astype(np.float64))
    got = raw(AttentionRollout(vit, layers=["mha1"]), images)
    np.testing.assert_allclose(got, on_grid(np_rollout(attentions[1:])[:, 0]), atol=1e-6)


# ---------------------------------------------------------------------------
# bad input


def test_bad_input_gets_clear_errors_and_nothing_is_left_on_the_model(vit, images):
    cnn = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                            keras.layers.Dense(2)])
    for cls in (AttentionRollout, GradientRollout, LeGrad):
        with pytest.raises(ValueError, match="no attention layer.*GradCAM"):
            cls(cnn)
    with pytest.raises(ValueError, match="head_fusion.*'mean', 'max', 'min'.*'median'"):
        AttentionRollout(vit, head_fusion="median")
    for bad in (1.0, -0.1, "0.5"):
        with pytest.raises(ValueError, match="discard_ratio"):
            AttentionRollout(vit, discard_ratio=bad)
    with pytest.raises(ValueError, match="layers="):
        AttentionRollout(vit, layer="mha0")
    with pytest.raises(ValueError, match="not an attention layer"):
        AttentionRollout(vit, layers=["ln0a"])
    with pytest.raises(TypeError, match="token"):
        AttentionRollout(vit, token="cls")
    for cls in (AttentionRollout, GradientRollout):
        with pytest.raises(ValueError, match=r"token=17.*17 tokens.*\[-17, 16\]"):
            cls(vit, token=17)(images)
    before = [w.copy() for w in vit.get_weights()]
    for _, layer in _attention.attention_layers(vit):
        assert "_masked_softmax" not in vars(layer) and "_compute_attention" not in vars(layer)
    for a, b in zip(before, vit.get_weights()):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# the registry: CLI names, evaluate and audit


def test_registered_names_and_metrics_run(vit, images):
    for name, cls in (("attention-rollout", AttentionRollout), ("GradientRollout", GradientRollout),
                      ("legrad", LeGrad)):
        assert methods.get(name) is cls
    # evaluate builds registry names on the model: its sparseness equals the metric of the maps made here.
    table = kc.metrics.evaluate(["attentionrollout", "legrad"], vit, images, targets=[0, 1, 2],
                                metrics=["sparseness"], ci=None)
    for name in ("attentionrollout", "legrad"):
        maps = methods.create(name, vit)(images, targets=[0, 1, 2])
        np.testing.assert_allclose(table.values(name, "sparseness"),
                                   kc.metrics.sparseness(maps, reduce=None), rtol=1e-5)
    # audit explains a dataset with any explainer: one map per image, grouped per class.
    cam = methods.create("gradientrollout", vit)
    with pytest.warns(UserWarning, match="kept as one cluster"):  # 3 images: too few to cluster
        result = kc.audit(cam, images, labels=np.array([0, 1, 1]), grid=8, verbose=0)
    from keras_cam.audit.spray import to_grid
    want = to_grid(cam(images, targets=[0, 1, 1]), (8, 8)).reshape(3, 8, 8)
    np.testing.assert_array_equal(result.targets, [0, 1, 1])
    np.testing.assert_allclose(result.maps, want, atol=1e-5)


# ---------------------------------------------------------------------------
# KerasHub ViT (weights=None)


@pytest.fixture(scope="module")
def hub_vit():
    keras_hub = pytest.importorskip("keras_hub")
    from test_keras_hub import same_weights
    keras.utils.set_random_seed(21)
    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2,
                                            hidden_dim=16, mlp_dim=32)
    return same_weights(keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=CLASSES), 2)


def hub_forward(model, x, deltas=(None, None)):
    """``(logits, [A_b])`` of the KerasHub classifier from its sub-layers, attention by :func:`mha`."""
    backbone = model.backbone
    encoder = backbone.get_layer("vit_encoder")
    t = encoder.dropout(backbone.get_layer("vit_patching_and_embedding")(x), training=False)
    attentions = []
    for block, delta in zip(encoder.encoder_layers, deltas):
        w = [ops.convert_to_tensor(v) for v in block.mha.get_weights()]
        o, a = mha(ops, block.layer_norm_1(t), w, delta)
        attentions.append(a)
        t = t + o
        t = t + block.mlp(block.layer_norm_2(t), training=False)
    return model.get_layer("predictions")(encoder.layer_norm(t)[:, 0]), attentions


def test_keras_hub_vit_maps_equal_the_formulas(hub_vit):
    x = np.random.default_rng(9).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    xt = ops.convert_to_tensor(x)
    logits, attentions = hub_forward(hub_vit, xt)
    np.testing.assert_allclose(to_host(logits), to_host(hub_vit(xt, training=False)), rtol=1e-4, atol=1e-5)
    attentions = [to_host(a).astype(np.float64) for a in attentions]
    assert [p for p, _ in kc.list_attention_layers(hub_vit)][-1].endswith("transformer_block_2/mha")
    got = raw(AttentionRollout(hub_vit, head_fusion="max"), x)
    want = on_grid(np_rollout(attentions, "max")[:, 0])
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    classes = [1, 2]
    pick = ops.convert_to_tensor(np.eye(CLASSES, dtype=np.float32)[classes])
    grads = native_grad(compiled(lambda d0, d1: ops.sum(hub_forward(hub_vit, xt, (d0, d1))[0] * pick, axis=-1)),
                        *[np.zeros(a.shape, np.float32) for a in attentions])
    grads = [g.astype(np.float64) for g in grads]
    for cls, want in ((GradientRollout, on_grid(np_chefer(attentions, grads)[:, 0])),
                      (LeGrad, on_grid(np_legrad(grads)))):
        got = raw(cls(hub_vit), x, classes)
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


# ---------------------------------------------------------------------------
# Bi-modal: image and text streams with co-attention (Chefer et al.'s rules)

CO_LAYERS = (("img_self", "image", "image"), ("txt_self", "text", "text"), ("txt_to_img", "text", "image"),
             ("img_to_txt", "image", "text"), ("txt_to_img2", "text", "image"))
TEXT = 5


def co_attention_model(seed=7):
    """Image patches (16 tokens) and text embeddings (5 tokens), self- and co-attention, a head on text token 0."""
    keras.utils.set_random_seed(seed)
    img = keras.Input((16, 16, 3), name="image")
    txt = keras.Input((TEXT, WIDTH), name="text")
    i = keras.layers.Reshape((16, WIDTH))(keras.layers.Conv2D(WIDTH, 4, strides=4, name="patches")(img))
    streams = {"image": i, "text": txt}
    for name, s, q in CO_LAYERS:
        att = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name=name)(streams[s], streams[q])
        streams[s] = keras.layers.Add()([streams[s], att])
    head = keras.layers.Flatten()(keras.layers.Cropping1D((0, TEXT - 1))(streams["text"]))
    model = keras.Model([img, txt], keras.layers.Dense(CLASSES, name="logits")(head))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, (4.0 if w.ndim == 3 else 1.0) / np.sqrt(w.shape[0]) if w.ndim > 1 else 0.2,
                                  w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def co_forward(xp, model, x, text, deltas=(None,) * 5):
    w = weights(model, xp)
    kp, bp = w["patches"]
    patches = xp.reshape(xp.transpose(xp.reshape(x, (-1, 4, 4, 4, 4, 3)), (0, 1, 3, 2, 4, 5)), (-1, 16, 48))
    streams = {"image": xp.matmul(patches, xp.reshape(kp, (48, WIDTH))) + bp, "text": text}
    attentions = []
    for (name, s, q), delta in zip(CO_LAYERS, deltas):
        o, a = cross_mha(xp, streams[s], streams[q], w[name], delta)
        attentions.append(a)
        streams[s] = streams[s] + o
    return xp.matmul(streams["text"][:, 0], w["logits"][0]) + w["logits"][1], attentions


def np_bimodal(attentions, grads):
    """Chefer et al. eq. 6-11, written out for the image (i) and text (t) streams."""
    n = attentions[0].shape[0]
    size = {"image": 16, "text": TEXT}
    r = {(m, k): np.stack([np.eye(size[m]) if m == k else np.zeros((size[m], size[k]))] * n)
         for m in size for k in size}

    def normalized(x):  # eq. 8-9
        y = x - np.eye(x.shape[-1])
        total = y.sum(-1, keepdims=True)
        return np.divide(y, total, out=np.zeros_like(y), where=total != 0) + np.eye(x.shape[-1])
    for (_, s, q), a, g in zip(CO_LAYERS, attentions, grads):
        bar = np.maximum(g * a, 0).mean(1)
        if s == q:
            for m in size:
                r[(s, m)] = r[(s, m)] + bar @ r[(s, m)]
        else:
            sq = r[(s, q)] + np.transpose(normalized(r[(s, s)]), (0, 2, 1)) @ bar @ normalized(r[(q, q)])
            ss = r[(s, s)] + bar @ r[(q, s)]
            r[(s, q)], r[(s, s)] = sq, ss
    return r


def test_bimodal_rules_equal_the_formulas():
    model = co_attention_model()
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, size=(2, 16, 16, 3)).astype(np.float32)
    text = rng.normal(size=(2, TEXT, WIDTH)).astype(np.float32)
    logits, attentions = co_forward(np, model, x.astype(np.float64), text.astype(np.float64))
    np.testing.assert_allclose(to_host(model([x, text], training=False)), logits, rtol=1e-4, atol=1e-4)
    classes = [0, 2]
    pick = ops.convert_to_tensor(np.eye(CLASSES, dtype=np.float32)[classes])
    xt, tt = ops.convert_to_tensor(x), ops.convert_to_tensor(text)
    grads = native_grad(compiled(lambda *d: ops.sum(co_forward(ops, model, xt, tt, d)[0] * pick, axis=-1)),
                        *[np.zeros(a.shape, np.float32) for a in attentions])
    rel = np_bimodal(attentions, [g.astype(np.float64) for g in grads])
    cam = GradientRollout(model, modalities={name: (s, q) for name, s, q in CO_LAYERS},
                          query_modality="text", image_input="image")
    got = cam([x, text], targets=classes, upsample=False, normalize=False)
    want = rel[("text", "image")][:, 0].reshape(-1, 4, 4)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    # The image's own relevance row (token 3 of the image stream), minus the identity.
    cam = GradientRollout(model, modalities={name: (s, q) for name, s, q in CO_LAYERS}, token=3,
                          image_input="image")
    want = (rel[("image", "image")] - np.eye(16))[:, 3].reshape(-1, 4, 4)
    np.testing.assert_allclose(cam([x, text], targets=classes, upsample=False, normalize=False), want,
                               atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match="query_modality='audio'"):
        GradientRollout(model, modalities={"img_self": ("image", "image")}, query_modality="audio")

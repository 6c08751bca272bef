"""Attention capture on KerasHub's own attention layers, and the attention methods there.

Swin's windowed attention (``WindowAttention``), PaliGemma's vision tower
(``PaliGemmaVitAttention``) and its Gemma decoder (``CachedGemmaAttention``,
grouped query heads, RoPE, a prefix-bidirectional mask) compute their
softmax inside ``call``. Checked here against the softmax written again in
numpy from each layer's own weights and inputs; the attention methods on
PaliGemma's decoder (a ``GeneratedToken``'s row, the image tokens' columns)
against numpy formulas of the captured matrices, with ``dS/dA`` from the
backend's own autodiff (``native_grad``); Swin's refusal; nothing left on
the models after a pass or an error.
"""

import contextlib
import re

import keras
import keras_hub
import numpy as np
import pytest

import keras_cam as kc
from keras_cam import layers as L
from keras_cam._compat import ops, to_host
from keras_cam._patch import intercepted
from keras_cam.attention import AttentionCapture, attention_layers, per_image
from keras_cam.multimodal import GeneratedToken
from test_gradcam import native_grad
from test_keras_hub import same_weights
from test_keras_hub_vision import swin  # noqa: F401  (the tiny Swin fixture)

K = keras_hub.models
PATCHED = ("call", "_masked_softmax", "_compute_attention", "_use_fused_attention_op")


def untouched(model):
    return all(name not in vars(layer) for _, layer in L.walk(model) for name in PATCHED) and all(
        name not in vars(sub) for _, layer in L.walk(model) for sub in
        (getattr(layer, a, None) for a in ("softmax", "dropout_layer", "attention_dropout_layer"))
        if sub is not None for name in PATCHED)


def np_softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def inputs_of(layers):
    """A context recording the first argument (and keyword arguments) of each layer's call."""
    seen = {}

    def recorder(path):
        def make(inner):
            def call(*args, **kwargs):
                seen.setdefault(path, []).append((to_host(args[0]).astype(np.float64), kwargs))
                return inner(*args, **kwargs)
            return call
        return make
    stack = contextlib.ExitStack()
    for path, layer in layers:
        stack.enter_context(intercepted(layer, "call", recorder(path)))
    return stack, seen


# ---------------------------------------------------------------------------
# Swin


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(size=(2, 32, 32, 3)).astype(np.float32)


def swin_mask(resolution, window, shift):
    """Swin's shifted-window mask (0 within a region, -100 across), (windows, w*w, w*w), from its definition."""
    h, w = resolution
    regions = np.zeros((h, w))
    cuts = [(0, -window), (-window, -shift), (-shift, None)]
    for i, (a, b) in enumerate(cuts):
        for j, (c, d) in enumerate(cuts):
            regions[slice(a, b), slice(c, d)] = 3 * i + j
    wins = regions.reshape(h // window, window, w // window, window).transpose(0, 2, 1, 3).reshape(-1, window ** 2)
    return (wins[:, None, :] != wins[:, :, None]) * -100.0


def window_softmax(block, x):
    """A block's window attention probabilities from its qkv weights, position bias table and mask."""
    attn = block.attn
    wq, bq = (np.asarray(to_host(v), np.float64) for v in attn.qkv.weights)
    heads, win = attn.num_heads, block.window_size
    qkv = (x @ wq + bq).reshape(x.shape[0], win * win, 3, heads, -1).transpose(2, 0, 3, 1, 4)
    q, k = qkv[0] * attn.head_dim ** -0.5, qkv[1]
    # Relative position bias: token a = (ra, ca), b = (rb, cb) in the window, raster order.
    r, c = np.divmod(np.arange(win * win), win)
    index = (r[:, None] - r[None] + win - 1) * (2 * win - 1) + (c[:, None] - c[None] + win - 1)
    table = np.asarray(to_host(attn.relative_position_bias_table), np.float64)
    s = q @ k.transpose(0, 1, 3, 2) + table[index].transpose(2, 0, 1)[None]
    if block.shift_size:
        mask = swin_mask(block.input_resolution, win, block.shift_size)
        s = (s.reshape(-1, len(mask), heads, win * win, win * win) + mask[None, :, None]).reshape(s.shape)
    return np_softmax(s)


def test_swin_capture_is_each_window_softmax(swin, images):
    found = attention_layers(swin)
    assert kc.list_attention_layers(swin) == [(p, h) for p, h in zip([p for p, _ in found], [1, 1, 2, 2])]
    blocks = [swin.backbone.get_layer(p.split("/")[1]).blocks[int(p.split("/")[2][-1])] for p, _ in found]
    assert [b.shift_size for b in blocks] == [0, 1, 0, 1]  # unshifted and shifted windows at both stages
    before = to_host(swin(images))
    stack, seen = inputs_of(found)
    with stack, AttentionCapture(found) as cap:
        during = to_host(swin(images))
    np.testing.assert_array_equal(during, before)
    windows = [16, 16, 4, 4]  # 8x8 then 4x4 tokens, 2x2 windows
    for rec, block, (path, _), n in zip(cap.records, blocks, found, windows):
        assert rec.path == path and rec.windowed
        got = to_host(rec.probabilities)
        assert got.shape == (2 * n, block.attn.num_heads, 4, 4)
        want = window_softmax(block, seen[path][0][0])
        np.testing.assert_allclose(got, want, atol=1e-5)
        split = to_host(per_image(rec.probabilities, 2))
        np.testing.assert_array_equal(split[1, 3], got[n + 3])
    assert untouched(swin)


@pytest.mark.parametrize("method", [kc.AttentionRollout, kc.GradientRollout, kc.LeGrad])
def test_swin_attention_methods_refuse_and_name_gradcam(swin, images, method):
    with pytest.raises(ValueError, match=r"local windows.*patch merging.*no class token.*keras_cam\.GradCAM"):
        method(swin)
    one = kc.list_attention_layers(swin)[2][0]
    with pytest.raises(ValueError, match=r"stage_1/blocks_0/attn.*WindowAttention"):
        method(swin, layers=[one])
    assert untouched(swin)


# ---------------------------------------------------------------------------
# PaliGemma: the vision tower and the Gemma decoder

P, T, VOCAB = 16, 5, 40


@pytest.fixture(scope="module")
def paligemma():
    keras.utils.set_random_seed(7)
    backbone = K.PaliGemmaBackbone(
        vocabulary_size=VOCAB, image_size=16, num_layers=2, num_query_heads=2, num_key_value_heads=1, hidden_dim=16,
        intermediate_dim=16, head_dim=8, vit_patch_size=4, vit_num_heads=2, vit_hidden_dim=8, vit_num_layers=1,
        vit_intermediate_dim=16)
    return same_weights(K.PaliGemmaCausalLM(preprocessor=None, backbone=backbone), 9)


def pali_inputs(n=2):
    rng = np.random.default_rng(11)
    return {"images": rng.uniform(size=(n, 16, 16, 3)).astype(np.float32),
            "token_ids": rng.integers(1, VOCAB, (n, T)).astype(np.int32),
            "padding_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]][:n], np.int32),
            "response_mask": np.array([[0, 0, 0, 1, 1], [0, 0, 1, 1, 0]][:n], np.int32)}


def rope(x, wavelength=10000.0):
    """KerasHub's rotary embedding on (N, L, heads, d), then Gemma's interleaved layout."""
    d = x.shape[-1]
    freq = np.arange(x.shape[1])[:, None] / wavelength ** (np.arange(0, d, 2) / d)
    emb = np.concatenate([freq, freq], -1)[None, :, None]
    x1, x2 = np.split(x, 2, axis=-1)
    out = x * np.cos(emb) + np.concatenate([-x2, x1], -1) * np.sin(emb)
    a, b = np.split(out, 2, axis=-1)
    return np.stack([a, b], -1).reshape(out.shape)


def decoder_mask(x):
    """PaliGemma's mask: image and prompt tokens see the whole prefix, response tokens are causal."""
    pad = np.concatenate([np.ones((len(x["padding_mask"]), P)), x["padding_mask"]], 1).astype(bool)
    resp = np.concatenate([np.zeros((len(x["padding_mask"]), P)), x["response_mask"]], 1).astype(bool)
    causal = np.tril(np.ones((P + T, P + T), bool))[None]
    return (pad & ~resp)[:, None, :] | (causal & resp[:, None, :])


def gemma_softmax(layer, h, mask):
    wq, wk = (np.asarray(to_host(d.kernel), np.float64) for d in (layer.query_dense, layer.key_dense))
    q = rope(np.einsum("btd,ndh->btnh", h, wq)) / np.sqrt(layer.head_dim)
    k = rope(np.einsum("bsd,kdh->bskh", h, wk))
    groups = layer.num_query_heads // layer.num_key_value_heads
    s = np.einsum("btnh,bsnh->bnts", q, np.repeat(k, groups, axis=2))
    return np_softmax(np.where(mask[:, None], s, -np.inf))


def vit_softmax(layer, h):
    def heads(dense):
        w, b = (np.asarray(to_host(v), np.float64) for v in dense.weights)
        return (h @ w + b).reshape(h.shape[0], h.shape[1], layer.num_heads, -1).transpose(0, 2, 1, 3)
    q, k = heads(layer.query_proj), heads(layer.key_proj)
    return np_softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(layer.head_dim))


def test_paligemma_capture_is_the_hand_softmax(paligemma):
    x = pali_inputs()
    found = attention_layers(paligemma)
    assert [type(layer).__name__ for _, layer in found] == ["PaliGemmaVitAttention"] + ["CachedGemmaAttention"] * 2
    assert [h for _, h in kc.list_attention_layers(paligemma)] == [2, 2, 2]
    before = to_host(paligemma(x))
    stack, seen = inputs_of(found)
    with stack, AttentionCapture(found) as cap:
        during = to_host(paligemma(x))
    np.testing.assert_array_equal(during, before)
    assert [r.path for r in cap.records] == [p for p, _ in found]
    vit = to_host(cap.records[0].probabilities)
    assert vit.shape == (2, 2, P, P)
    np.testing.assert_allclose(vit, vit_softmax(found[0][1], seen[found[0][0]][0][0]), atol=1e-5)
    mask = decoder_mask(x)
    for rec, (path, layer) in zip(cap.records[1:], found[1:]):
        got = to_host(rec.probabilities)
        assert got.shape == (2, 2, P + T, P + T)
        want = gemma_softmax(layer, seen[path][0][0], mask)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert (got[1, :, :, -1] == 0).all() and (got[0, :, P + 3, P + 4] == 0).all()  # padding; causal response
    assert untouched(paligemma)


# numpy references from captured matrices (as tests/test_attention.py)


def np_rollout(attentions, fusion):
    r = None
    for a in attentions:
        f = {"mean": a.mean(1), "max": a.max(1), "min": a.min(1)}[fusion]
        hat = f + np.eye(f.shape[-1])
        hat = hat / hat.sum(-1, keepdims=True)
        r = hat if r is None else hat @ r
    return r


def np_chefer(attentions, grads):
    n, _, l, _ = attentions[0].shape
    r = np.broadcast_to(np.eye(l), (n, l, l)).copy()
    for a, g in zip(attentions, grads):
        r = r + np.maximum(g * a, 0).mean(1) @ r
    return r - np.eye(l)


def decoder_attentions(model, x):
    decoder = [(p, layer) for p, layer in attention_layers(model) if type(layer).__name__ == "CachedGemmaAttention"]
    with AttentionCapture(decoder) as cap:
        model(x)
    return [to_host(r.probabilities).astype(np.float64) for r in cap.records], decoder


def decoder_gradients(model, x, decoder, position, token):
    """``[dS/dA_b]`` with ``S = logits[:, position, token]``, by the backend's own autodiff of the model
    run with ``delta_b`` added to each decoder softmax's output (no keras-cam tap)."""
    xt = {k: ops.convert_to_tensor(v) for k, v in x.items()}
    pick = ops.convert_to_tensor(np.eye(VOCAB, dtype=np.float32)[token])

    def score(*deltas):
        with contextlib.ExitStack() as stack:
            for (_, layer), d in zip(decoder, deltas):
                stack.enter_context(intercepted(layer.softmax, "call", lambda inner, d=d: (
                    lambda *a, **k: inner(*a, **k) + d)))
            z = model(xt)
        return ops.sum(z[:, position] * pick, axis=-1)
    shape = (len(x["token_ids"]), 1, 2, P + T, P + T)  # (N, kv heads, groups, L, L)
    grads = native_grad(score, *[np.zeros(shape, np.float32)] * len(decoder))
    return [g.reshape(shape[0], 2, P + T, P + T).astype(np.float64) for g in grads]


def grid(rows):
    return rows[:, :P].reshape(-1, 4, 4)


def test_paligemma_methods_read_the_generated_tokens_row_over_the_image_tokens(paligemma):
    x = pali_inputs()
    attentions, decoder = decoder_attentions(paligemma, x)
    logits = to_host(paligemma(x)).astype(np.float64)
    # Few cases (each compiles on JAX); the fusions and discard ratios are tests/test_attention.py's.
    cam = kc.AttentionRollout(paligemma, head_fusion="max")
    assert [p for p, _ in cam.attention_layers] == [p for p, _ in decoder]  # not the vision tower
    got = cam(x, targets=GeneratedToken(-2), upsample=False, normalize=False)
    want = grid(np_rollout(attentions, "max")[:, P + T - 2])
    assert (want.reshape(2, -1).std(axis=1) > 0).all()
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    position, token = 3, [4, 17]
    grads = decoder_gradients(paligemma, x, decoder, position, token)
    ex = kc.GradientRollout(paligemma).explain(x, targets=GeneratedToken(position, token), upsample=False,
                                               normalize=False)
    np.testing.assert_allclose(ex.scores, logits[[0, 1], position, token], rtol=1e-4, atol=1e-5)
    want = grid(np_chefer(attentions, grads)[:, P + position])
    assert (want.reshape(2, -1).std(axis=1) > 0).all()
    np.testing.assert_allclose(ex.maps, want, atol=1e-5 * np.abs(want).max())
    got = kc.LeGrad(paligemma)(x, targets=GeneratedToken(position, token), upsample=False, normalize=False)
    want = grid(np.mean([np.maximum(g, 0).mean(axis=(1, 2)) for g in grads], axis=0))
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    # token= reads another decoder row (an index into image + text tokens).
    got = kc.AttentionRollout(paligemma, token=P + 1)(x, targets=GeneratedToken(0), upsample=False, normalize=False)
    np.testing.assert_allclose(got, grid(np_rollout(attentions, "mean")[:, P + 1]), atol=1e-6)
    # The vision tower alone, when asked: its patches' rollout (no class token: the mean row).
    vit = [kc.list_attention_layers(paligemma)[0][0]]
    maps = kc.AttentionRollout(paligemma, layers=vit)(x, targets=GeneratedToken(0), upsample=False, normalize=False)
    with AttentionCapture(attention_layers(paligemma)[:1]) as cap:
        paligemma(x)
    np.testing.assert_allclose(maps, np_rollout([to_host(cap.records[0].probabilities)], "mean").mean(1)
                               .reshape(-1, 4, 4), atol=1e-6)
    assert untouched(paligemma)


def test_paligemma_bad_requests(paligemma):
    x = pali_inputs()
    with pytest.raises(ValueError, match=r"GeneratedToken\(position, token\)"):
        kc.AttentionRollout(paligemma)(x, targets=lambda z: z[:, 0, 0])
    with pytest.raises(ValueError, match=r"`position=5` is outside the sequence of 5"):
        kc.LeGrad(paligemma)(x, targets=GeneratedToken(5))
    with pytest.raises(ValueError, match=r"`token=21` is outside the decoder's sequence of 21 tokens"):
        kc.AttentionRollout(paligemma, token=21)(x, targets=GeneratedToken(0))
    vit, dec = [p for p, _ in kc.list_attention_layers(paligemma)][:2]
    with pytest.raises(ValueError, match=r"mixes a language decoder's attention layers with others"):
        kc.GradientRollout(paligemma, layers=[vit, dec])
    assert untouched(paligemma)


def test_capture_is_undone_when_the_pass_raises(paligemma, swin, images):
    def boom(key, p):
        raise RuntimeError("boom")
    for model, x in ((paligemma, pali_inputs()), (swin, images)):
        before = to_host(model(x))
        with pytest.raises(RuntimeError, match="boom"):
            with AttentionCapture(attention_layers(model), tap=boom):
                model(x)
        assert untouched(model)
        np.testing.assert_array_equal(to_host(model(x)), before)


# ---------------------------------------------------------------------------
# Gemma 3 with vision: several images per input (N, images, H, W, C), Grad-CAM per image

IMAGES, G3_LEN = 2, 12


@pytest.fixture(scope="module")
def gemma3():
    keras.utils.set_random_seed(8)
    encoder = K.Gemma3VisionEncoder(image_size=16, patch_size=4, num_heads=2, hidden_dim=8, num_layers=1,
                                    intermediate_dim=16, output_dim=16, pool_size=2)
    backbone = K.Gemma3Backbone(vocabulary_size=VOCAB, image_size=16, num_layers=1, num_query_heads=2,
                                num_key_value_heads=1, hidden_dim=16, intermediate_dim=16, head_dim=8,
                                vision_encoder=encoder)
    return same_weights(K.Gemma3CausalLM(preprocessor=None, backbone=backbone), 12)


def gemma3_inputs(n=2):
    """Two 16x16 images per input, 4 tokens each (a 4x4 patch grid pooled 2x2), at positions 1-8."""
    rng = np.random.default_rng(13)
    mask = np.zeros((n, G3_LEN), np.int32)
    mask[:, 1:9] = 1
    return {"images": rng.uniform(size=(n, IMAGES, 16, 16, 3)).astype(np.float32),
            "token_ids": rng.integers(1, VOCAB, (n, G3_LEN)).astype(np.int32), "vision_mask": mask,
            "vision_indices": np.tile(np.arange(1, 9, dtype=np.int32), (n, 1)),
            "padding_mask": np.ones((n, G3_LEN), np.int32)}


def test_gemma3_gradcam_maps_each_image(gemma3):
    x = gemma3_inputs()
    cam = kc.GradCAM(gemma3)
    position, token = -2, [3, 30]
    ex = cam.explain(x, targets=GeneratedToken(position, token), upsample=False, normalize=False)
    # The decoder's image tokens (Keras numbers a second encoder built in the process: "..._1").
    assert re.search(r"gemma3_vision_encoder(_\d+)?/vision_output_encoder$", cam.layer_path), cam.layer_path
    layer = cam.graph.layers[0]
    logits = to_host(gemma3(x)).astype(np.float64)
    np.testing.assert_allclose(ex.scores, logits[[0, 1], position, token], rtol=1e-4, atol=1e-5)
    # The image tokens A (N * images, 4, 16) and dS/dA by the backend's autodiff of the model with A + delta.
    found = {}

    def keep(inner):
        def call(*args, **kwargs):
            out = inner(*args, **kwargs)
            found["a"] = to_host(out).astype(np.float64)
            return out
        return call
    with intercepted(layer, "call", keep):
        gemma3(x)
    a = found["a"]
    assert a.shape == (2 * IMAGES, 4, 16)
    xt = {k: ops.convert_to_tensor(v) for k, v in x.items()}
    pick = ops.convert_to_tensor(np.eye(VOCAB, dtype=np.float32)[token])

    def score(delta):
        with intercepted(layer, "call", lambda inner: lambda *args, **kw: inner(*args, **kw) + delta):
            return ops.sum(gemma3(xt)[:, position] * pick, axis=-1)
    g = native_grad(score, np.zeros(a.shape, np.float32)).astype(np.float64)
    # Grad-CAM over each input's image tokens: one channel weight per input, maps per image.
    a5, g5 = a.reshape(2, IMAGES, 2, 2, 16), g.reshape(2, IMAGES, 2, 2, 16)
    alpha = g5.mean(axis=(1, 2, 3))
    want = np.maximum((a5 * alpha[:, None, None, None]).sum(-1), 0)
    assert want.shape == ex.maps.shape and (want.reshape(2, -1).std(axis=1) > 0).all()
    np.testing.assert_allclose(ex.maps, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match=r"vision_indices.*keras_cam\.GradCAM"):
        kc.AttentionRollout(gemma3)
    assert untouched(gemma3)


def test_per_image_token_layout():
    from keras_cam import layout
    lay = layout.describe((4, 4, 8), 3, (2, 16, 16))  # (N * images, h * w, K) of (N, images, 16, 16, C)
    assert (lay.kind, lay.grid, lay.images) == ("tokens", (2, 2), 2)
    raw = np.arange(4 * 4 * 8, dtype=np.float32).reshape(4, 4, 8)
    view = to_host(lay.view(ops.convert_to_tensor(raw)))
    np.testing.assert_array_equal(view[1, 0, 1, 0], raw[2, 2])  # input 1, image 0, token (1, 0)
    np.testing.assert_array_equal(to_host(lay.unview(lay.view(ops.convert_to_tensor(raw)), raw)), raw)
    assert layout.describe((3, 4, 8), 3, (2, 16, 16)) is None  # 3 rows are not N x 2 images
    assert layout.describe((4, 5, 8), 3, (2, 16, 16)) is None  # 5 tokens lie on no grid of a 16x16 image

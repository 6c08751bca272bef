"""KerasHub vision tasks built from configs with tiny dimensions (no weights, no network).

Swin (hierarchical windowed attention), DINOv2 (register tokens) with a
head, SegFormer, D-FINE (a query-based detector), CLIP and SigLIP
(image-text similarity) and PaliGemma (a generated token), each explained
with ``layer=None``. Scores are checked against what the model returns or
the encoders' outputs combined by hand; maps against Grad-CAM computed here
from the chosen layer's activations and a gradient taken separately.
"""

import keras
import keras_hub
import numpy as np
import pytest

import keras_cam as kc
from keras_cam import layers as L
from keras_cam._compat import ops, to_host
from keras_cam.multimodal import GeneratedToken, QueryDetection, TextSimilarity, explain_texts, text_inputs
from keras_cam.targets import Segmentation
from test_gradcam import native_grad
from test_keras_hub import gradcam, same_weights

K = keras_hub.models
TOL = 1e-5


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(size=(2, 32, 32, 3)).astype(np.float32)


def untouched(model):
    return all("call" not in vars(layer) for _, layer in L.walk(model))


# ---------------------------------------------------------------------------
# Swin: a hierarchical grid (stride 4, then 8 after the patch merging)


@pytest.fixture(scope="module")
def swin():
    keras.utils.set_random_seed(1)
    backbone = K.SwinTransformerBackbone(image_shape=(32, 32, 3), embed_dim=8, depths=[2, 2], num_heads=[1, 2],
                                         window_size=2, patch_size=4, mlp_ratio=2.0, drop_path=0.0)
    return same_weights(K.SwinTransformerImageClassifier(backbone=backbone, num_classes=3), 4)


def test_swin_layer_none_is_the_last_stage_norm(swin, images):
    cam = kc.GradCAM(swin)
    # Not a windowed attention's probabilities (their first axis is windows x batch).
    assert cam.layer_path == f"{swin.backbone.name}/norm"  # auto-named: "_1" when built twice in a process
    ex = cam.explain(images, upsample=False, normalize=False)
    # The head is a mean over the 4x4 tokens and a Dense: dS/dA = W_c / 16 at every token.
    a = to_host(swin.backbone(images, training=False)).astype(np.float64)  # (2, 16, 16), raster order
    w, b = (np.asarray(v, np.float64) for v in swin.get_layer("predictions").get_weights())
    logits = a.mean(axis=1) @ w + b
    c = logits.argmax(axis=1)
    np.testing.assert_allclose(ex.scores, logits[[0, 1], c], rtol=TOL, atol=TOL)
    grid = a.reshape(2, 4, 4, 16)
    expected = gradcam(grid, np.broadcast_to(w.T[c][:, None, None] / 16, grid.shape))
    assert (expected.std(axis=(1, 2)) > 0).all()
    np.testing.assert_allclose(ex.maps, expected, rtol=1e-4, atol=TOL)
    assert untouched(swin)


# ---------------------------------------------------------------------------
# DINOv2: a class token and two register tokens before the 4x4 patches


@pytest.fixture(scope="module")
def dino():
    keras.utils.set_random_seed(2)
    return K.DINOV2Backbone(patch_size=8, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
                            num_register_tokens=2, image_shape=(32, 32, 3), position_embedding_shape=(32, 32, 3))


def dino_classifier(backbone, head):
    inputs = keras.Input((32, 32, 3))
    tokens = backbone({"images": inputs})
    pooled = tokens[:, 0] if head == "class" else keras.ops.mean(tokens, axis=1)
    model = keras.Model(inputs, keras.layers.Dense(3, name="predictions")(pooled))
    return same_weights(model, 5)


def test_dinov2_mean_head_drops_the_register_tokens(dino, images):
    clf = dino_classifier(dino, "mean")
    cam = kc.GradCAM(clf)
    assert cam.layer_path.endswith("layernorm")
    ex = cam.explain(images, upsample=False, normalize=False)
    t = to_host(dino({"images": images})).astype(np.float64)
    assert t.shape == (2, 19, 16)
    w, b = (np.asarray(v, np.float64) for v in clf.get_layer("predictions").get_weights())
    logits = t.mean(axis=1) @ w + b
    c = logits.argmax(axis=1)
    np.testing.assert_allclose(ex.scores, logits[[0, 1], c], rtol=1e-4, atol=1e-4)
    grid = t[:, 3:].reshape(2, 4, 4, 16)  # tokens 0-2 (class, registers) are not patches
    expected = gradcam(grid, np.broadcast_to(w.T[c][:, None, None] / 19, grid.shape))  # dS/dA = W_c / 19
    assert (expected.std(axis=(1, 2)) > 0).all()
    np.testing.assert_allclose(ex.maps, expected, rtol=1e-4, atol=1e-5)


def test_dinov2_class_token_head(dino, images):
    clf = dino_classifier(dino, "class")
    cam = kc.GradCAM(clf)
    # The final norm's patch tokens reach the class token only through attention: not chosen.
    assert not cam.layer_path.endswith("layernorm") and "layers_1" in cam.layer_path
    ex = cam.explain(images, upsample=False, normalize=False)
    np.testing.assert_allclose(ex.scores, to_host(clf(images)).max(axis=1), rtol=1e-4, atol=1e-5)
    assert ex.maps.shape == (2, 4, 4) and (ex.maps.std(axis=(1, 2)) > 0).all()
    single = cam.explain(images[1:], upsample=False, normalize=False)
    np.testing.assert_allclose(single.maps[0], ex.maps[1], rtol=1e-4, atol=1e-6)


def test_attention_methods_on_dinov2_and_swin(dino, swin, images):
    """DINOv2's attention is captured (maps on the 4x4 patches, class and register tokens dropped);
    Swin's windowed attention is captured too (tests/test_attention_hub.py), and the attention
    methods refuse it, naming Grad-CAM."""
    clf = dino_classifier(dino, "class")
    assert len(kc.list_attention_layers(clf)) == 2
    for method in (kc.AttentionRollout, kc.GradientRollout, kc.LeGrad):
        maps = method(clf)(images, upsample=False, normalize=False)
        assert maps.shape == (2, 4, 4) and np.isfinite(maps).all() and (maps.std(axis=(1, 2)) > 0).all()
        single = method(clf)(images[1:], upsample=False, normalize=False)
        np.testing.assert_allclose(single[0], maps[1], rtol=1e-4, atol=1e-6)
    assert len(kc.list_attention_layers(swin)) == 4
    with pytest.raises(ValueError, match=r"local windows.*keras_cam\.GradCAM"):
        kc.AttentionRollout(swin)(images)


# ---------------------------------------------------------------------------
# SegFormer


@pytest.fixture(scope="module")
def segformer():
    keras.utils.set_random_seed(3)
    encoder = K.MiTBackbone(layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2],
                            layerwise_sr_ratios=[2, 1], max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3],
                            layerwise_strides=[4, 2], image_shape=(32, 32, 3), hidden_dims=[8, 16])
    backbone = K.SegFormerBackbone(image_encoder=encoder, projection_filters=8)
    return same_weights(K.SegFormerImageSegmenter(backbone=backbone, num_classes=3), 6)


def test_segformer_segmentation_against_a_tape(segformer, images):
    cam = kc.GradCAM(segformer)
    # The features before the 1x1 classifier (and its resize), not the class logits.
    head_layers = [l for l in segformer.layers if type(l).__name__ in ("Conv2D", "Resizing")]
    assert cam.graph.layers[0] is not head_layers[0]
    mask = np.random.default_rng(4).random((2, 32, 32)) > 0.5
    ex = cam.explain(images, targets=Segmentation(2, mask), upsample=False, normalize=False)
    a = to_host(segformer.backbone(images, training=False))
    conv, resize = head_layers

    def head(a):
        return ops.sum(ops.convert_to_tensor(mask.astype(np.float32)) * resize(conv(a))[..., 2], axis=(1, 2))
    np.testing.assert_allclose(to_host(head(ops.convert_to_tensor(a))), ex.scores, rtol=1e-4, atol=1e-4)
    logits = to_host(segformer.predict(images, verbose=0)).astype(np.float64)
    np.testing.assert_allclose(ex.scores, (mask * logits[..., 2]).sum(axis=(1, 2)), rtol=1e-4, atol=1e-4)
    g = native_grad(head, a).astype(np.float64)
    expected = gradcam(a.astype(np.float64), g)
    assert (expected.std(axis=(1, 2)) > 0).all()
    np.testing.assert_allclose(ex.maps, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# D-FINE: one query


@pytest.fixture(scope="module")
def dfine():
    keras.utils.set_random_seed(4)
    hg = K.HGNetV2Backbone(
        stem_channels=[3, 8, 8], stackwise_stage_filters=[[8, 8, 16, 1, 1, 3], [16, 8, 16, 1, 1, 3]],
        apply_downsample=[False, True], use_lightweight_conv_block=[False, False], depths=[1, 1],
        hidden_sizes=[16, 16], embedding_size=8, use_learnable_affine_block=False, hidden_act="relu",
        image_shape=(32, 32, 3), out_features=["stage1", "stage2"])
    backbone = K.DFineBackbone(
        backbone=hg, decoder_in_channels=[16, 16], encoder_hidden_dim=16, num_denoising=0, num_labels=3,
        hidden_dim=16, learn_initial_query=False, num_queries=6, anchor_image_size=(32, 32), feat_strides=[4, 8],
        num_feature_levels=2, encoder_in_channels=[16, 16], encode_proj_layers=[1], num_attention_heads=2,
        encoder_ffn_dim=16, num_encoder_layers=1, hidden_expansion=0.34, depth_multiplier=0.5, eval_idx=-1,
        num_decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=16, decoder_n_points=[2, 2],
        lqe_hidden_dim=8, num_lqe_layers=1, out_features=["stage1", "stage2"], image_shape=(32, 32, 3), seed=0)
    return same_weights(K.DFineObjectDetector(backbone=backbone, num_classes=3), 10)


def test_dfine_query_by_index_and_by_box(dfine, images):
    out = {k: to_host(v).astype(np.float64) for k, v in dfine(images).items() if k in ("logits", "pred_boxes")}
    cam = kc.GradCAM(dfine)
    by_index = cam.explain(images, targets=QueryDetection(1, query=4), upsample=False, normalize=False)
    np.testing.assert_allclose(by_index.scores, out["logits"][:, 4, 1], rtol=1e-4, atol=1e-5)
    assert np.isfinite(by_index.maps).all() and (by_index.maps.std(axis=(1, 2)) > 0).all()
    # The box each image's query 2 predicts (relative centre-size), given back in pixels as yxyx.
    cx, cy, w, h = (out["pred_boxes"][:, 2, i] * 32 for i in range(4))
    boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)
    by_box = cam.explain(images, targets=QueryDetection(0, box=boxes), upsample=False, normalize=False)
    np.testing.assert_allclose(by_box.scores, out["logits"][:, 2, 0], rtol=1e-4, atol=1e-5)
    same = cam.explain(images, targets=QueryDetection(0, query=2), upsample=False, normalize=False)
    np.testing.assert_allclose(by_box.maps, same.maps, rtol=1e-5, atol=1e-7)
    single = cam.explain(images[1:], targets=QueryDetection(0, box=boxes[1]), upsample=False, normalize=False)
    np.testing.assert_allclose(single.maps[0], by_box.maps[1], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"`query=6` is out of range for a detector with 6 queries"):
        cam(images, targets=QueryDetection(0, query=6))
    with pytest.raises(ValueError, match=r"out of range for a detector with 3 classes"):
        cam(images, targets=QueryDetection(3, query=0))
    with pytest.raises(ValueError, match=r"either `box`"):
        QueryDetection(0)
    assert untouched(dfine)


# ---------------------------------------------------------------------------
# CLIP and SigLIP: TextSimilarity


@pytest.fixture(scope="module")
def clip():
    keras.utils.set_random_seed(5)
    model = K.CLIPBackbone(
        K.CLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=32,
                            image_shape=(32, 32, 3)),
        K.CLIPTextEncoder(vocabulary_size=50, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
                          intermediate_dim=32, max_sequence_length=8), projection_dim=8)
    return same_weights(model, 7)


@pytest.fixture(scope="module")
def siglip():
    keras.utils.set_random_seed(6)
    model = K.SigLIPBackbone(
        K.SigLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=32,
                              image_shape=(32, 32, 3)),
        K.SigLIPTextEncoder(vocabulary_size=50, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
                            intermediate_dim=32, max_sequence_length=8))
    model = same_weights(model, 11)  # an untrained SigLIP's Grad-CAM is all zero (ReLU) for some draws
    model.siglip_head.logit_bias.assign(-0.5)
    return model


PROMPTS = np.array([[1, 7, 9, 49, 0, 0, 0, 0], [1, 3, 49, 0, 0, 0, 0, 0], [1, 12, 30, 22, 49, 0, 0, 0]], np.int32)


def similarity_by_hand(model, images, ids):
    """t cos(u, v) (+ b for SigLIP) from the two encoders' embeddings."""
    u = to_host(model.get_vision_embeddings(images)).astype(np.float64)
    v = to_host(model.get_text_embeddings(ids)).astype(np.float64)
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    head = getattr(model, "clip_head", None) or model.siglip_head
    s = np.exp(float(to_host(head.logit_scale))) * (u * v).sum(axis=-1)
    return s + (float(to_host(head.logit_bias)) if hasattr(head, "logit_bias") else 0.0)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_text_similarity_is_the_cosine_logit(name, request, images):
    model = request.getfixturevalue(name)
    cam = kc.GradCAM(model)
    x = text_inputs(model, images, PROMPTS)
    assert x["images"].shape == (6, 32, 32, 3) and (x["token_ids"][3:] == PROMPTS).all()
    ex = cam.explain(x, targets=TextSimilarity(), upsample=False, normalize=False)
    assert "vision_encoder" in cam.layer_path.split("/")[0]  # the image's tokens, not the text's
    np.testing.assert_allclose(ex.scores, similarity_by_hand(model, x["images"], x["token_ids"]), rtol=1e-4, atol=1e-5)
    assert (ex.maps.reshape(6, -1).std(axis=1) > 0).all()
    maps = explain_texts(cam, images, PROMPTS, upsample=False, normalize=False)
    assert maps.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(maps.reshape(ex.maps.shape), ex.maps, rtol=1e-5, atol=1e-7)
    # A permutation of the prompts permutes the maps; one image alone gives its own row.
    order = [2, 0, 1]
    np.testing.assert_allclose(explain_texts(cam, images, PROMPTS[order], upsample=False, normalize=False),
                               maps[:, order], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(explain_texts(cam, images[1], PROMPTS, upsample=False, normalize=False)[0],
                               maps[1], rtol=1e-4, atol=1e-6)
    assert untouched(model)


def test_text_for_a_model_without_text(swin, clip, images):
    with pytest.raises(ValueError, match=r"image-text model .* CLIPBackbone .* explain a class"):
        kc.GradCAM(swin)(images, targets=TextSimilarity())
    with pytest.raises(ValueError, match=r"image-text model"):
        text_inputs(swin, images, PROMPTS)
    with pytest.raises(ValueError, match=r"0\.\.49 .* vocabulary"):
        text_inputs(clip, images, [[1, 50]])
    with pytest.raises(ValueError, match=r"no `tokenizer`"):
        text_inputs(clip, images, ["a photo of a dog"])


def test_string_prompts_through_a_tokenizer(clip, images):
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "a", "dog", "cat", "</s>"])}

    def tokenizer(s):
        return [1] + [vocab[w] for w in s.split()] + [49]
    x = text_inputs(clip, images, ["a dog", "a cat"], tokenizer=tokenizer)
    np.testing.assert_array_equal(x["token_ids"][:2], [[1, 2, 3, 49], [1, 2, 4, 49]])


# ---------------------------------------------------------------------------
# PaliGemma: GeneratedToken


@pytest.fixture(scope="module")
def paligemma():
    keras.utils.set_random_seed(7)
    backbone = K.PaliGemmaBackbone(
        vocabulary_size=40, image_size=16, num_layers=1, num_query_heads=2, num_key_value_heads=1, hidden_dim=16,
        intermediate_dim=16, head_dim=8, vit_patch_size=4, vit_num_heads=2, vit_hidden_dim=8, vit_num_layers=1,
        vit_intermediate_dim=16)
    return same_weights(K.PaliGemmaCausalLM(preprocessor=None, backbone=backbone), 9)


def pali_inputs(n=2, length=5):
    rng = np.random.default_rng(11)
    return {"images": rng.uniform(size=(n, 16, 16, 3)).astype(np.float32),
            "token_ids": rng.integers(1, 40, (n, length)).astype(np.int32),
            "padding_mask": np.ones((n, length), np.int32), "response_mask": np.zeros((n, length), np.int32)}


def test_generated_token_is_the_models_logit(paligemma):
    x = pali_inputs()
    logits = to_host(paligemma(x)).astype(np.float64)
    cam = kc.GradCAM(paligemma)
    for position, token in ((-1, None), (2, 7), (0, [3, 5])):
        ex = cam.explain(x, targets=GeneratedToken(position, token), upsample=False, normalize=False)
        vit = paligemma.backbone.vit_encoder.name  # both auto-named: "_1" when built twice in a process
        assert cam.layer_path == f"{paligemma.backbone.name}/{vit}/image_classifier"  # the image tokens
        t = logits[:, position].argmax(axis=-1) if token is None else np.broadcast_to(token, (2,))
        np.testing.assert_allclose(ex.scores, logits[[0, 1], position, t], rtol=1e-4, atol=1e-5)
        assert ex.maps.shape == (2, 4, 4) and (ex.maps.std(axis=(1, 2)) > 0).all()
    single = cam.explain({k: v[1:] for k, v in x.items()}, targets=GeneratedToken(2, 7), upsample=False, normalize=False)
    np.testing.assert_allclose(single.maps[0], cam.explain(x, targets=GeneratedToken(2, 7), upsample=False,
                                                            normalize=False).maps[1], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"`position=5` is outside the sequence of 5 tokens"):
        cam(x, targets=GeneratedToken(5))
    with pytest.raises(ValueError, match=r"out of range for a vocabulary of 40"):
        cam(x, targets=GeneratedToken(0, 40))
    assert untouched(paligemma)


def test_generated_token_on_a_classifier(swin, images):
    with pytest.raises(ValueError, match=r"causal language model's logits .* pass a class index"):
        kc.GradCAM(swin)(images, targets=GeneratedToken(0))

"""KerasHub ``ViTImageClassifier`` with ``layer=None``, built from a config (no weights, no network).

The classifier is small (32x32 images, 8-pixel patches: a class token and
4x4 patch tokens, 2 blocks, hidden size 16). Its blocks live inside the
custom ``ViTEncoder`` layer, which the layer search enters. The automatic
choice is the last block's first LayerNorm, and the map there is checked
against Grad-CAM computed here: the backbone's sub-layers called one by
one outside the model, the layers after the target re-run by hand, and the
gradient taken by the backend's own autodiff (``native_grad``). KerasHub models are Keras 3 models,
also when the tests run with tf-keras as the user's Keras.
"""

import keras_hub
import numpy as np
import pytest

import keras_cam as kc
from keras_cam import layers as L
from keras_cam._compat import ops, to_host
from test_gradcam import native_grad
from test_keras_hub import same_weights
from test_layout import hand_gradcam

CLASSES = 3


@pytest.fixture(scope="module")
def classifier():
    import keras
    keras.utils.set_random_seed(21)
    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2,
                                            hidden_dim=16, mlp_dim=32)
    # The same weights on every backend: the maps checked below vary on each.
    return same_weights(keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=CLASSES), 2)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(9).uniform(size=(3, 32, 32, 3)).astype(np.float32)


def parts(model):
    backbone = model.backbone
    encoder = backbone.get_layer("vit_encoder")
    return backbone.get_layer("vit_patching_and_embedding"), encoder, encoder.encoder_layers


def hand_tokens_and_head(model, x):
    """The last block's first-norm tokens, and the rest of the classifier after them, by hand."""
    patching, encoder, blocks = parts(model)
    t = encoder.dropout(patching(x), training=False)
    for block in blocks[:-1]:
        t = block(t, training=False)
    last = blocks[-1]
    a = last.layer_norm_1(t)

    def head(a):
        y = last.mha(a, a, training=False) + t  # the residual reads the block's input, not the norm
        z = y + last.mlp(last.layer_norm_2(y), training=False)
        cls = encoder.layer_norm(z)[:, 0]
        return model.get_layer("predictions")(cls)
    return a, head


def test_layer_none_picks_the_last_blocks_first_norm(classifier):
    cam = kc.GradCAM(classifier)
    _, _, blocks = parts(classifier)
    assert cam.graph.layers[0] is blocks[-1].layer_norm_1
    assert cam.layer_path.endswith("/vit_encoder/transformer_block_2/ln_1")
    listed = dict(kc.list_layers(classifier))
    assert listed[cam.layer_path] == (1, 17, 16)


def test_gradcam_equals_the_hand_computation_from_the_tokens(classifier, images):
    x = ops.convert_to_tensor(images)
    a, head = hand_tokens_and_head(classifier, x)
    np.testing.assert_allclose(to_host(head(a)), to_host(classifier(x, training=False)),
                               rtol=1e-5, atol=1e-6)  # the head is right
    a = to_host(a)
    # The top class (the classifier returns logits).
    g = native_grad(lambda a: ops.max(head(a), axis=-1), a).astype(np.float64)
    # The 16 patch tokens, dropping the class token, row by row on the 4x4 grid.
    a_grid = a[:, 1:].reshape(3, 4, 4, 16).astype(np.float64)
    expected = hand_gradcam(a_grid, g[:, 1:].reshape(3, 4, 4, 16))
    assert all(np.ptp(m) > 0 for m in expected)
    auto = kc.GradCAM(classifier)
    maps = auto(images, upsample=False, normalize=False)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)
    named = kc.GradCAM(classifier, layer=auto.layer_path)(images, upsample=False, normalize=False)
    np.testing.assert_allclose(named, maps, rtol=1e-6, atol=1e-7)
    full = auto(images)
    assert full.shape == (3, 32, 32) and all(np.ptp(m) > 0 for m in full)
    assert all("call" not in vars(layer) for _, layer in L.walk(classifier))  # the model is left as it was


def test_later_token_layers_carry_no_patch_gradient(classifier, images):
    # Why the choice stops at the first norm: every token layer after the last attention reads
    # the class token's own row only, so its patch tokens get zero gradient and Grad-CAM is zero.
    for tail in ("transformer_block_2/mha", "transformer_block_2/ln_2", "vit_encoder/ln"):
        maps = kc.GradCAM(classifier, layer=tail)(images, upsample=False, normalize=False)
        assert (maps == 0).all(), tail

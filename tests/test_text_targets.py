"""Several prompts or tokens in one figure, and ``keras-cam explain --text``, on tiny KerasHub models.

Each figure cell is checked against the overlay of the map computed
directly; the command's similarities against the target's scores.
"""

import json

import cv2
import keras
import keras_hub
import numpy as np
import pytest

import keras_cam as kc
from keras_cam import cli
from keras_cam._compat import LEGACY
from keras_cam._compat import keras as user_keras
from keras_cam.multimodal import GeneratedToken, TextSimilarity, explain_texts, text_inputs
from keras_cam.viz import as_rgb_uint8, overlay
from test_keras_hub import same_weights

K = keras_hub.models
PROMPTS = [[1, 7, 9, 49], [1, 3, 49], [1, 12, 30, 22, 49]]


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
def images():
    return np.random.default_rng(12).uniform(size=(2, 32, 32, 3)).astype(np.float32)


def cell(fig, row, col, ncols):
    return np.asarray(fig.axes[row * ncols + col].images[0].get_array())


def test_plot_one_column_per_prompt(clip, images):
    cam = kc.GradCAM(clip)
    fig = kc.plot(images, cam, texts=PROMPTS)
    maps = explain_texts(cam, images, PROMPTS)
    assert len(fig.axes) == 2 * 4
    assert [fig.axes[j].get_title().split("\n")[0] for j in range(4)] == ["image", "text 0", "text 1", "text 2"]
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(cell(fig, i, j + 1, 4), overlay(as_rgb_uint8(images[i]), maps[i, j]))
    # Swapping two prompts swaps their columns.
    swapped = kc.plot(images, cam, texts=[PROMPTS[1], PROMPTS[0]])
    np.testing.assert_array_equal(cell(swapped, 1, 1, 3), cell(fig, 1, 2, 4))


def test_plot_one_column_per_target(clip, images):
    """A dict of target objects: one column each (here two similarity-like callables via Function)."""
    x = text_inputs(clip, images, PROMPTS[:1])
    cam = kc.GradCAM(clip)
    columns = {"similarity": TextSimilarity(), "text logit": kc.targets.Function(lambda o: o["text_logits"][:, 0])}
    fig = kc.plot(images, cam, targets=columns, inputs=x)
    assert [fig.axes[j].get_title().split("\n")[0] for j in range(3)] == ["image", "similarity", "text logit"]
    for j, target in enumerate(columns.values()):
        maps = cam(x, targets=target)
        np.testing.assert_array_equal(cell(fig, 1, j + 1, 3), overlay(as_rgb_uint8(images[1]), maps[1]))


def test_plot_tokens_of_a_language_model():
    keras.utils.set_random_seed(7)
    backbone = K.PaliGemmaBackbone(
        vocabulary_size=40, image_size=16, num_layers=1, num_query_heads=2, num_key_value_heads=1, hidden_dim=16,
        intermediate_dim=16, head_dim=8, vit_patch_size=4, vit_num_heads=2, vit_hidden_dim=8, vit_num_layers=1,
        vit_intermediate_dim=16)
    lm = same_weights(K.PaliGemmaCausalLM(preprocessor=None, backbone=backbone), 9)
    rng = np.random.default_rng(1)
    x = {"images": rng.uniform(size=(1, 16, 16, 3)).astype(np.float32),
         "token_ids": rng.integers(1, 40, (1, 4)).astype(np.int32),
         "padding_mask": np.ones((1, 4), np.int32), "response_mask": np.zeros((1, 4), np.int32)}
    cam = kc.GradCAM(lm)
    tokens = [GeneratedToken(-1, 5), GeneratedToken(-1, 9)]
    fig = kc.plot(x["images"], cam, targets=tokens, inputs=x)
    assert len(fig.axes) == 3
    for j, t in enumerate(tokens):
        np.testing.assert_array_equal(cell(fig, 0, j + 1, 3), overlay(as_rgb_uint8(x["images"][0]), cam(x, targets=t)[0]))


@pytest.mark.skipif(LEGACY, reason="a KerasHub model is saved by Keras 3, and the command under tf-keras reads "
                                     "tf-keras files only (it says so)")
def test_cli_explain_text(clip, images, tmp_path):
    path = tmp_path / "clip.keras"
    clip.save(path)
    files = []
    for i, im in enumerate(images):
        files.append(tmp_path / f"im{i}.png")
        cv2.imwrite(str(files[-1]), cv2.cvtColor((im * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    code = cli.main(["explain", *map(str, files), "--model", str(path), "--preprocess", "scale", "--quiet",
                     "--text", "1,7,9,49", "--text", "1,3,49", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "predictions.json").read_text())
    pixels = np.stack([cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]).astype(np.float32) / 255
    expected = kc.GradCAM(clip).explain(text_inputs(clip, pixels, [[1, 7, 9, 49], [1, 3, 49, 0]]),
                                        targets=TextSimilarity()).scores.reshape(2, 2)
    got = np.array([r["similarity"] for r in report["images"]])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert all((out / f"im{i}_gradcam_text{j}.png").exists() for i in range(2) for j in range(2))


def test_cli_text_errors(clip, tmp_path):
    model = user_keras.Sequential([user_keras.Input((8, 8, 3)), user_keras.layers.Conv2D(2, 3),
                                   user_keras.layers.GlobalAveragePooling2D()])  # the Keras the command reads
    path = tmp_path / ("cnn.h5" if LEGACY else "cnn.keras")
    model.save(path)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(cli.CliError, match=r"image-text model"):
        cli.main(["--traceback", "explain", str(image), "--model", str(path), "--text", "1,2", "--quiet",
                  "--out", str(tmp_path / "o")])
    with pytest.raises(cli.CliError, match=r"--tokenizer DIR"):
        cli.main(["--traceback", "explain", str(image), "--model", str(path), "--text", "a dog", "--quiet",
                  "--out", str(tmp_path / "o")])

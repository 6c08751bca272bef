"""The shipped demo ViT and CLIP-style model (keras_cam.demo.vit): accurate on fresh data, their maps
point at the objects, the weights round-trip and training is deterministic, and bad files are refused.

Every number is computed here against the generator's own labels and boxes; the seeds used are not
the training seed (0).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import _compat
from keras_cam import backend as _backend
from keras_cam.demo import CLASS_NAMES, load_clip, load_vit, make_dataset, prompt_ids, vit as demo_vit
from keras_cam.demo.model import WEIGHTS_PATH, save_weights, weights_of
from keras_cam.multimodal import explain_texts

FRESH_SEED = 23


@functools.lru_cache(maxsize=None)
def vit():
    return load_vit()


@functools.lru_cache(maxsize=None)
def clip():
    return load_clip()


def _predict(model, x):
    return np.asarray(_compat.to_host(model(x, training=False)))


def _pointing(maps, boxes):
    """The share of maps whose maximum lies inside the box (end-exclusive)."""
    hits = []
    for m, (y0, x0, y1, x1) in zip(np.asarray(maps), boxes):
        r, c = np.unravel_index(np.argmax(m), m.shape)
        hits.append(y0 <= r < y1 and x0 <= c < x1)
    return float(np.mean(hits))


def _box_share(boxes, size=64):
    """Chance level of the pointing game: the mean share of the image a box covers."""
    return float(np.mean([(y1 - y0) * (x1 - x0) / size ** 2 for y0, x0, y1, x1 in boxes]))


def test_vit_is_accurate_on_fresh_images():
    images, labels, _ = make_dataset(200, seed=FRESH_SEED)
    pred = _predict(vit(), images).argmax(-1)
    accuracy = float(np.mean(pred == labels))
    assert accuracy >= 0.9, accuracy
    # Every class is recognised, not only the most common answer.
    for k in range(len(CLASS_NAMES)):
        assert np.mean(pred[labels == k] == k) >= 0.8, (CLASS_NAMES[k], pred[labels == k])


@pytest.mark.parametrize("method, floor", [
    (lambda m: kc.AttentionRollout(m), 0.6),
    (lambda m: kc.AttentionRollout(m, head_fusion="max", discard_ratio=0.9), 0.6),
    (lambda m: kc.GradientRollout(m), 0.5),
    (lambda m: kc.LeGrad(m), 0.25),
], ids=["rollout", "rollout-max-discard", "gradient-rollout", "legrad"])
def test_vit_attention_points_inside_the_boxes(method, floor):
    images, _, boxes = make_dataset(32, seed=11)
    chance = _box_share(boxes)
    assert chance < 0.15  # the objects are small: a map pointing anywhere hits rarely
    maps = method(vit())(images)
    score = _pointing(maps, boxes)
    assert score >= floor and score >= 2.5 * chance, (score, chance)


def test_vit_gradcam_runs_on_its_token_grid_and_depends_on_the_class():
    images, labels, _ = make_dataset(4, seed=FRESH_SEED)
    cam = kc.GradCAM(vit())
    # One call: the images with their own class, then with the next class.
    targets = [int(k) for k in labels] + [int(k + 1) % 4 for k in labels]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an all-zero map on some image is allowed here
        maps = np.asarray(cam(np.concatenate([images, images]), targets=targets))
    assert maps.shape == (8, 64, 64)
    assert cam.layer_path.startswith("block")  # a token layer of a transformer block, not the stem
    assert np.abs(maps[:4] - maps[4:]).max() > 0.1


def test_retraining_a_few_steps_and_the_weights_round_trip(tmp_path):
    # Two steps of the training recipe (the full run, python -m keras_cam.demo.train_vit, takes minutes);
    # eager on TensorFlow, where that is quicker than compiling the step.
    model = demo_vit.train_vit(n_train=32, epochs=1, seed=5, batch_size=16, deterministic=False,
                               run_eagerly=_backend.is_tensorflow())[0]
    trained, shipped = weights_of(model), weights_of(vit())
    assert sorted(trained) == sorted(shipped)
    assert all(np.all(np.isfinite(w)) for w in trained.values())
    assert max(np.abs(trained[k] - shipped[k]).max() for k in trained) > 1e-3  # not the shipped model
    path = tmp_path / "vit.npz"
    save_weights(model, str(path))
    again = load_vit(str(path))
    for key, w in weights_of(again).items():
        np.testing.assert_array_equal(w, trained[key], err_msg=key)


def test_loading_refuses_files_that_do_not_match(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m keras_cam.demo.train_vit"):
        load_vit(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="lack .*do not match the Demo ViT"):
        load_vit(WEIGHTS_PATH)  # the demo CNN's file
    stored = dict(np.load(demo_vit.VIT_WEIGHTS_PATH))
    wrong = dict(stored, **{"patch_embed/0": np.zeros((2, 2, 32, 40), np.float32)})
    np.savez(tmp_path / "shape.npz", **wrong)
    with pytest.raises(ValueError, match=r"patch_embed/0 has shape \(2, 2, 32, 40\)"):
        load_vit(str(tmp_path / "shape.npz"))
    np.savez(tmp_path / "extra.npz", **dict(stored, **{"head/0": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match="1 arrays the Demo ViT architecture does not have"):
        load_vit(str(tmp_path / "extra.npz"))
    with pytest.raises(ValueError, match="lack"):
        load_clip(demo_vit.VIT_WEIGHTS_PATH)


def test_prompt_ids():
    assert prompt_ids("a photo of a circle") == [1, 2, 3, 4, 2, 5, len(demo_vit.VOCABULARY) - 1]
    with pytest.raises(ValueError, match="knows only the words"):
        prompt_ids("a photo of a dog")
    with pytest.raises(TypeError, match="must be a string"):
        prompt_ids([1, 2])


def test_clip_matches_images_to_their_class_prompt():
    images, labels, _ = make_dataset(100, seed=FRESH_SEED)
    scores = demo_vit.clip_class_scores(clip(), images)
    assert scores.shape == (100, 4)
    assert float(np.mean(scores.argmax(-1) == labels)) >= 0.9


def _in_box(maps, boxes):
    """Per map: its mean value inside the box."""
    return np.array([m[y0:y1, x0:x1].mean() for m, (y0, x0, y1, x1) in zip(np.asarray(maps), boxes)])


def test_clip_two_prompts_move_the_gradient_rollout_map_to_their_shape():
    images, circles, squares = demo_vit.two_shape_images(24)
    assert len(images) == 24
    prompts = [prompt_ids("a photo of a circle"), prompt_ids("a photo of a square")]
    maps = explain_texts(kc.GradientRollout(clip(), image_input="images"), images, prompts)
    assert maps.shape == (24, 2, 64, 64)
    # "circle" puts the maximum into the circle's box more often than into the square's.
    assert _pointing(maps[:, 0], circles) >= _pointing(maps[:, 0], squares) + 0.25
    # Going from "circle" to "square" moves mass from the circle's box to the square's, on most images.
    shift = (_in_box(maps[:, 1], squares) - _in_box(maps[:, 1], circles)) \
        - (_in_box(maps[:, 0], squares) - _in_box(maps[:, 0], circles))
    assert np.mean(shift > 0) >= 0.6 and shift.mean() > 0.03, shift

"""The audit reads its data once: reshuffling datasets and generators are audited as they were seen.

Issue 26 item 3: a dataset that reshuffles on each iteration used to be read
twice, and the second read (thumbnails, predictions) no longer matched the
first (maps). Here the truth is computed independently: every kept thumbnail
is matched back to the original image by its pixels, and each cluster's
accuracy is recomputed from ``model.predict`` on those originals.
"""

import logging

import numpy as np
import pytest
import tensorflow as tf

import keras_cam as kc
from keras_cam._compat import keras
from keras_cam.demo import TARGET_LAYER, load_shortcut_model, make_dataset

N = 96


@pytest.fixture(scope="module")
def setup():
    images, labels, _, _ = make_dataset(N, seed=5, watermark=(0, 0.5))
    model = load_shortcut_model()
    cam = kc.GradCAM(model, layer=TARGET_LAYER)
    predicted = model.predict(images, verbose=0).argmax(-1)
    # The thumbnail of a 64 x 64 image in [0, 1] is its pixels as uint8 (up to rounding): the way back
    # to the original is the nearest of them.
    keys = (images * 255).reshape(N, -1)
    return images, labels, model, cam, predicted, keys


def _original(thumb, keys):
    d = np.abs(keys - thumb.reshape(1, -1).astype(np.float32)).max(axis=1)
    assert np.sort(d)[0] <= 1.0 < np.sort(d)[1]            # one original matches, to the rounding
    return int(np.argmin(d))


def _check_against_truth(result, images, labels, cam, predicted, keys):
    order = np.array([_original(result.thumbnails[i], keys) for i in range(N)])
    np.testing.assert_array_equal(np.sort(order), np.arange(N))                   # each image once
    np.testing.assert_array_equal(result.targets, labels[order])
    for c in result.clusters:
        truth = np.mean(predicted[order[c.indices]] == labels[order[c.indices]])
        assert c.accuracy == pytest.approx(truth)
    assert {c.accuracy for c in result.clusters} != {1.0}      # the case has wrong predictions to get right
    # The maps are those of the images at those positions.
    some = np.arange(0, N, 7)
    with np.errstate(all="ignore"):
        maps = cam.explain(images[order[some]], targets=labels[order[some]].tolist(), upsample=False).maps
    from keras_cam.audit import spray
    np.testing.assert_allclose(result.maps[some].reshape(len(some), -1), spray.to_grid(maps, (16, 16)), atol=2e-5)
    return order


def test_a_reshuffling_dataset_is_audited_as_it_was_seen(setup):
    images, labels, model, cam, predicted, keys = setup
    dataset = (tf.data.Dataset.from_tensor_slices((images, labels))
               .shuffle(N, seed=3, reshuffle_each_iteration=True).batch(20))
    first = [b[1].numpy() for b in dataset]
    assert not all(np.array_equal(a, b) for a, b in zip(first, [b[1].numpy() for b in dataset]))  # it reshuffles
    result = kc.audit(cam, dataset, verbose=0, n_neighbors=5)
    order = _check_against_truth(result, images, labels, cam, predicted, keys)
    assert not np.array_equal(order, np.arange(N))


def test_a_reshuffling_generator_is_audited_as_it_was_seen(setup):
    images, labels, model, cam, predicted, keys = setup
    rng = np.random.default_rng(0)
    calls = []

    def shuffled():                       # a new order on every call, single images
        order = rng.permutation(N)
        calls.append(order)
        for i in order:
            yield images[i], labels[i]

    spec = (tf.TensorSpec((64, 64, 3), tf.float32), tf.TensorSpec((), tf.int64))
    dataset = tf.data.Dataset.from_generator(shuffled, output_signature=spec)
    result = kc.audit(cam, dataset, verbose=0, n_neighbors=5, batch_size=32)
    assert len(calls) == 1                                     # read once
    order = _check_against_truth(result, images, labels, cam, predicted, keys)
    np.testing.assert_array_equal(order, calls[0])


def test_auditing_three_models_prints_no_retracing_warning(setup):
    images, labels = setup[0][:48], setup[1][:48]
    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Catch()
    logger = tf.get_logger()
    logger.addHandler(handler)
    try:
        for seed in range(3):
            keras.utils.set_random_seed(seed)
            inputs = keras.Input((64, 64, 3))
            x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
            x = keras.layers.GlobalAveragePooling2D()(x)
            model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))
            with np.errstate(all="ignore"):
                result = kc.audit(kc.GradCAM(model, layer="conv"), images, labels, verbose=0, n_neighbors=5)
            # Untrained models: many labels get p <= 1/2, so the score step runs for each model.
            assert all(c.accuracy is not None for c in result.clusters)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "retracing" in r], records

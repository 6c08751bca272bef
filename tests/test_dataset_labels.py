"""explain_dataset reads labels only as classes of the explained output, and any image byte order.

The expected maps come from the explainer called on the same arrays with integer targets
(``cam.explain``), which shares no code with the dataset's label reading. Every backend runs
these; on TensorFlow a ``tf.data.Dataset`` source takes tf.data's path (labels read in the graph).
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend
from keras_cam._compat import keras
from keras_cam.dataset import explain_dataset

N, SIZE, CLASSES = 7, 8, 4


def conv_model(heads=(CLASSES,)):
    keras.utils.set_random_seed(2)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inp)
    g = keras.layers.GlobalAveragePooling2D()(h)
    outs = [keras.layers.Dense(c, name=f"h{i}")(g) for i, c in enumerate(heads)]
    return keras.Model(inp, outs if len(outs) > 1 else outs[0])


@pytest.fixture(scope="module")
def setup():
    x = np.random.default_rng(4).random((N, SIZE, SIZE, 3), dtype=np.float32)
    y = np.array([3, 0, 2, 1, 3, 2, 0])
    return kc.GradCAM(conv_model()), x, y


def sources(x, labels):
    """The same batches as a list, as single examples, and (TensorFlow) as a tf.data.Dataset."""
    yield "batches", [(x[:4], labels[:4]), (x[4:], labels[4:])]
    yield "examples", [(x[i], labels[i]) for i in range(len(x))]
    if backend.is_tensorflow():
        import tensorflow as tf

        yield "tf.data", tf.data.Dataset.from_tensor_slices((x, labels)).batch(4)


def maps_of(results):
    results = list(results)
    return np.concatenate([r.maps for r in results]), np.concatenate([r.targets for r in results])


def smoothed(y, eps):
    return np.eye(CLASSES, dtype=np.float32)[y] * (1 - eps) + eps / CLASSES


ROWS = {
    "one_hot_float": lambda y: np.eye(CLASSES, dtype=np.float32)[y],
    "one_hot_int": lambda y: np.eye(CLASSES, dtype=np.int64)[y],
    "label_smoothing": lambda y: smoothed(y, 0.1),
    "probabilities": lambda y: smoothed(y, 0.6),
    "column": lambda y: y[:, None].astype(np.int32),
    "float_classes": lambda y: y.astype(np.float32),
}


@pytest.mark.parametrize("form", sorted(ROWS))
def test_label_rows_give_the_maps_of_their_classes(setup, form):
    cam, x, y = setup
    ref = cam.explain(x, targets=y)
    for name, source in sources(x, ROWS[form](y)):
        maps, used = maps_of(explain_dataset(cam, source, verbose=0))
        np.testing.assert_array_equal(used, y, err_msg=name)
        np.testing.assert_allclose(maps, ref.maps, atol=1e-5, err_msg=name)


BAD_WIDTH = {
    "narrower_one_hot": lambda y: np.eye(3, dtype=np.float32)[y % 3],
    "wider_one_hot": lambda y: np.eye(CLASSES + 1, dtype=np.float32)[y],
    "integer_pairs": lambda y: np.stack([y, (y + 1) % CLASSES], axis=1),
}
BAD_ROWS = {
    "multi_hot": lambda y: np.eye(CLASSES, dtype=np.float32)[y] + np.eye(CLASSES, dtype=np.float32)[(y + 1) % CLASSES],
    "integer_rows": lambda y: np.eye(CLASSES, dtype=np.int64)[y] * 3,
    "all_zero_row": lambda y: np.eye(CLASSES, dtype=np.float32)[y] * (np.arange(len(y)) != 5)[:, None],
    "negative": lambda y: np.eye(CLASSES, dtype=np.float32)[y] * 2 - 0.25,
}


@pytest.mark.parametrize("form", sorted(BAD_WIDTH))
def test_rows_of_another_width_are_refused(setup, form):
    cam, x, y = setup
    labels = BAD_WIDTH[form](y)
    for name, source in sources(x, labels):
        with pytest.raises(ValueError, match=rf"shape \((\d+|None), {labels.shape[1]}\).*explained output has "
                                             rf"{CLASSES} classes.*class indices \(n,\) or \(n, 1\)"):
            list(explain_dataset(cam, source, verbose=0))


@pytest.mark.parametrize("form", sorted(BAD_ROWS))
def test_rows_that_are_not_one_hot_or_probabilities_are_refused(setup, form):
    cam, x, y = setup
    for name, source in sources(x, BAD_ROWS[form](y)):
        with pytest.raises(ValueError, match=r"Batch \d.*one-hot / probability rows must be >= 0 and each row "
                                             r"must sum to 1.*targets="):
            list(explain_dataset(cam, source, verbose=0))


@pytest.mark.parametrize("structure", ["tuple", "list", "dict"])
@pytest.mark.parametrize("n", [2, N])
def test_labels_of_several_outputs_are_refused(structure, n):
    """(images, (y1, y2)) as model.fit takes it: refused with the way out, never stacked into rows
    (with two images, the pair read as (2, 2) rows once explained other classes than the labels)."""
    model = conv_model(heads=(5, 2))
    x = np.random.default_rng(6).random((n, SIZE, SIZE, 3), dtype=np.float32)
    y1, y2 = np.arange(n) % 5, np.arange(n) % 2
    pack = {"tuple": lambda: (y1, y2), "list": lambda: [y1, y2], "dict": lambda: {"h0": y1, "h1": y2}}[structure]
    for out, own in ((0, y1), (1, y2)):
        cam = kc.GradCAM(model, output=out)
        with pytest.raises(ValueError, match=rf"one label array per output.*`output=`, here {out}.*y\[{out}\]"):
            list(explain_dataset(cam, [(x, pack())], verbose=0))
        # The way out the message gives: the explained output's labels alone.
        maps, used = maps_of(explain_dataset(cam, [(x, pack()[out if structure != "dict" else f"h{out}"])],
                                             verbose=0))
        np.testing.assert_array_equal(used, own)
        np.testing.assert_allclose(maps, cam(x, targets=own), atol=1e-5)
        # Without targets='labels' the labels are not read.
        maps, used = maps_of(explain_dataset(cam, [(x, pack())], targets=None, verbose=0))
        np.testing.assert_allclose(maps, cam(x), atol=1e-5)
    if backend.is_tensorflow() and structure != "list":
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((x, pack())).batch(4)
        with pytest.raises(ValueError, match=r"one label array per output.*`output=`, here 0"):
            list(explain_dataset(kc.GradCAM(model), ds, verbose=0))


def test_rows_of_the_other_output_are_refused_with_the_output_hint():
    model = conv_model(heads=(5, 2))
    x = np.random.default_rng(6).random((N, SIZE, SIZE, 3), dtype=np.float32)
    rows = np.eye(2, dtype=np.float32)[np.arange(N) % 2]  # output 1's one-hot rows
    with pytest.raises(ValueError, match=r"explained output has 5 classes.*`output=`, here 0"):
        list(explain_dataset(kc.GradCAM(model, output=0), [(x, rows)], verbose=0))
    maps, used = maps_of(explain_dataset(kc.GradCAM(model, output=1), [(x, rows)], verbose=0))
    np.testing.assert_array_equal(used, np.arange(N) % 2)


@pytest.mark.parametrize("order", [">f4", ">f8", "<f8", ">i2"])
def test_images_and_labels_of_any_byte_order(setup, order):
    """Big-endian images (a FITS file, say) are read as the explainer call reads them."""
    cam, x, y = setup
    images = (x * 100).astype(order) if order.endswith("i2") else x.astype(order)
    ref = cam.explain(np.asarray(images, np.float32), targets=y)
    np.testing.assert_allclose(cam(images, targets=y), ref.maps, atol=1e-5)  # the explainer call
    for labels in (y.astype(">i8"), np.eye(CLASSES, dtype=">f4")[y]):
        for name, source in sources(images, labels):
            if name == "tf.data":
                continue  # tf.data holds its tensors in native order
            maps, used = maps_of(explain_dataset(cam, source, verbose=0))
            np.testing.assert_array_equal(used, y, err_msg=name)
            np.testing.assert_allclose(maps, ref.maps, atol=1e-5, err_msg=name)
        maps, _ = maps_of(explain_dataset(cam, [images[:3], images[3:]], verbose=0))
        np.testing.assert_allclose(maps, cam(np.asarray(images, np.float32)), atol=1e-5)

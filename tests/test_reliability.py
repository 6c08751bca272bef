"""Silent wrong answers under realistic misuse: dict and list outputs, threads, new weights,
non-finite scores, misleading errors. Every test runs on the backend the suite runs with."""

import itertools
import threading
import warnings

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend
from keras_cam._compat import keras, ops, to_host


def _features_model(rng_seed, heads, order):
    """A CNN whose outputs are a dict of heads built in ``order``: ``heads`` maps a key to
    ``(units, activation)``."""
    keras.utils.set_random_seed(rng_seed)
    inp = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(5, 3, name="target")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outs = {k: keras.layers.Dense(heads[k][0], activation=heads[k][1], name=f"head_{k}")(x) for k in order}
    return keras.Model(inp, outs)


def _logits(model, images, key):
    """The pre-activation output of head ``key``, computed in numpy from the weights."""
    pooled = to_host(model.get_layer("gap")(model.get_layer("target")(images)))
    kernel, bias = model.get_layer(f"head_{key}").get_weights()
    return pooled @ kernel + bias


_HEADS = {"cls": (3, "softmax"), "box": (4, None), "aux": (2, "softmax")}


@pytest.mark.parametrize("order", list(itertools.permutations(["cls", "box", "aux"]))[::2])
def test_dict_outputs_are_selected_by_key_in_any_order(order, rng):
    model = _features_model(len(order[0]), _HEADS, order)
    images = rng.random((3, 10, 10, 3)).astype("float32")
    keys = sorted(_HEADS)  # Keras's flat order: model.outputs, output_names, output=<int>
    for key in _HEADS:
        logits = _logits(model, images, key)
        for spec in (key, keys.index(key), f"head_{key}"):
            explanation = kc.GradCAM(model, output=spec).explain(images, targets=1)
            np.testing.assert_allclose(explanation.scores, logits[:, 1], rtol=1e-4, atol=1e-5)
            if _HEADS[key][1] == "softmax":  # the model's own softmax, applied once
                p = np.exp(logits - logits.max(1, keepdims=True))
                np.testing.assert_allclose(explanation.probabilities, (p / p.sum(1, keepdims=True))[:, 1],
                                           rtol=1e-4, atol=1e-6)
            # A callable target on the same (linearized) output is a second path to the same map.
            by_callable = kc.GradCAM(model, output=spec)(images, targets=lambda out, k=key: out[k][:, 1])
            np.testing.assert_allclose(by_callable, explanation.maps, atol=1e-5)
    # The default is the first output in Keras's flat order, whatever the build order.
    default = kc.GradCAM(model).explain(images, targets=0)
    np.testing.assert_allclose(default.scores, _logits(model, images, keys[0])[:, 0], rtol=1e-4, atol=1e-5)


def test_list_outputs_by_index_and_name_and_out_of_range(rng):
    keras.utils.set_random_seed(3)
    inp = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(5, 3, activation="relu", name="target")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outs = [keras.layers.Dense(4, name="head_box")(x), keras.layers.Dense(3, activation="softmax", name="head_cls")(x)]
    model = keras.Model(inp, outs)
    images = rng.random((2, 10, 10, 3)).astype("float32")
    for spec, key in ((0, "box"), (1, "cls"), ("head_box", "box"), ("head_cls", "cls")):
        scores = kc.GradCAM(model, output=spec).explain(images, targets=2).scores
        np.testing.assert_allclose(scores, _logits(model, images, key)[:, 2], rtol=1e-4, atol=1e-5)
    for bad in (5, -1):
        with pytest.raises(ValueError, match="out of range"):
            kc.GradCAM(model, output=bad)
    with pytest.raises(ValueError, match="not an output"):
        kc.GradCAM(model, output="nope")
    with pytest.raises(TypeError, match="output"):
        kc.GradCAM(model, output=True)


@pytest.mark.parametrize("structure", ["dict", "list"])
def test_an_error_from_the_implicit_first_output_names_the_outputs(structure, rng):
    """Without ``output=``, a model with several outputs is explained at its first (Keras's flat
    order). When that first output is the wrong one (an auxiliary head that does not read the
    explained layer, or has fewer classes than the labels), the errors that follow name the outputs
    and the fix; with ``output=`` chosen, or one output, they do not."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((10, 10, 3))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.Conv2D(5, 3, name="target")(inp))
    aux = keras.layers.Dense(2, name="aux_head")(keras.layers.Flatten()(inp))    # skips "target"
    cls = keras.layers.Dense(4, activation="softmax", name="cls_head")(x)
    model = keras.Model(inp, {"aux": aux, "cls": cls} if structure == "dict" else [aux, cls])
    names = ("'aux', 'cls'" if structure == "dict" else "'aux_head', 'cls_head'")
    images = rng.random((8, 10, 10, 3)).astype("float32")
    note = rf"The model has 2 outputs \({names}\), and without `output=` the first, '{'aux' if structure == 'dict' else 'aux_head'}'"
    if backend.name() == "jax":  # jax.grad gives the unused layer a zero gradient: all-zero maps, a warning
        with pytest.warns(UserWarning, match="are all zeros.*" + note):
            kc.GradCAM(model, layer="target")(images)
    else:  # TensorFlow and PyTorch see that no gradient flows: an error
        with pytest.raises(ValueError, match="does not depend on layer 'target'.*" + note):
            kc.GradCAM(model, layer="target")(images)
    with pytest.raises(ValueError, match=r"labels must be classes of the model \(0\.\.1\).*" + note):
        list(kc.explain_dataset(kc.GradCAM(model, layer="target"), [(images, np.arange(8) % 4)], verbose=0))
    chosen = "cls" if structure == "dict" else 1
    maps = kc.GradCAM(model, layer="target", output=chosen)(images, np.arange(8) % 4)
    assert maps.shape == (8, 10, 10)
    with warnings.catch_warnings(record=True) as caught:  # one output, a wrong layer: no note about outputs
        warnings.simplefilter("always")
        try:
            kc.GradCAM(keras.Model(inp, aux), layer="target")(images)
        except ValueError as err:
            caught.append(err)
    assert caught and not any("outputs" in str(getattr(c, "message", c)) for c in caught)


def _softmax_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="target")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(4, activation="softmax", name="probs")(x))


def _snapshot(model):
    """Each layer's own ``call`` and ``activation`` attributes, by identity."""
    return {(l.name, a): id(l.__dict__.get(a)) for l in model.layers for a in ("call", "activation")}


def test_threads_predicting_beside_an_explaining_thread_see_the_model_unchanged(rng):
    model = _softmax_cnn()
    before = _snapshot(model)
    images = rng.random((3, 12, 12, 3)).astype("float32")
    expected_probs = to_host(model(images))
    cam = kc.GradCAM(model)
    expected_maps = cam(images)
    errors, stop = [], threading.Event()

    def predict():
        while not stop.is_set():
            p = to_host(model(images))
            if not np.allclose(p, expected_probs, atol=1e-5):
                errors.append(("predict", float(np.abs(p - expected_probs).max())))

    def explain(explainer, reference, rounds=15):
        try:
            for _ in range(rounds):
                maps = explainer(images)
                if not np.allclose(maps, reference, atol=1e-5):
                    errors.append(("explain", float(np.abs(maps - reference).max())))
        except Exception as err:  # noqa: BLE001  (recorded and asserted below)
            errors.append(("explain raised", repr(err)))

    other = kc.GradCAMPlusPlus(model)
    other_reference = other(images)
    predictors = [threading.Thread(target=predict) for _ in range(2)]
    explainers = [threading.Thread(target=explain, args=(cam, expected_maps)),
                  threading.Thread(target=explain, args=(other, other_reference))]
    for t in predictors + explainers:
        t.start()
    for t in explainers:
        t.join()
    stop.set()
    for t in predictors:
        t.join()
    assert errors == []
    assert _snapshot(model) == before
    np.testing.assert_allclose(to_host(model(images)), expected_probs, atol=1e-6)


def test_new_weights_are_explained_after_training_further(rng):
    """A compiled explainer reads the weights as they are now (on JAX they are arguments of
    the jitted function, not constants)."""
    model = _softmax_cnn(1)
    images = rng.random((2, 12, 12, 3)).astype("float32")
    cam = kc.GradCAM(model)
    cam(images), cam(images)  # compiled for this shape
    model.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()])
    np.testing.assert_allclose(cam(images), kc.GradCAM(model)(images), atol=1e-5)
    np.testing.assert_allclose(cam.explain(images).scores, kc.GradCAM(model).explain(images).scores, rtol=1e-5)


def test_non_finite_scores_are_named_not_blamed_on_the_layer(rng):
    model = _softmax_cnn(2)
    images = rng.random((3, 12, 12, 3)).astype("float32")

    def target(out):
        return ops.log(ops.exp(out[:, 0]) * ops.convert_to_tensor(np.array([1.0, 0.0, 1.0], "float32")))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kc.GradCAM(model)(images, targets=target)
    messages = [str(w.message) for w in caught]
    assert any("not finite" in m and "[1]" in m for m in messages), messages
    assert not any("nothing at layer" in m and "[1]" in m for m in messages), messages


def test_reshape_errors_say_what_reshape_is_for(rng):
    model = _softmax_cnn(3)
    with pytest.raises(ValueError, match="needs no reshape") as info:
        kc.GradCAM(model, layer="target", reshape=(5, 5))
    assert "nearest layers" not in str(info.value)
    # A token model whose grid the given reshape does not fit.
    inp = keras.Input((8, 8, 3))
    t = keras.layers.Reshape((16, 12))(keras.layers.Conv2D(12, 2, strides=2)(inp))
    t = keras.layers.Dense(6, name="tokens")(t)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(t))
    tokens = keras.Model(inp, out)
    with pytest.raises(ValueError, match=r"reshape=\(5, 5\)") as info:
        kc.GradCAM(tokens, layer="tokens", reshape=(5, 5))
    assert "pass `reshape=(h, w)`" not in str(info.value)


@pytest.mark.parametrize("bad, match", [
    (None, "is None"), ("cat.png", "string"), ({"image": np.zeros((1, 12, 12, 3))}, "single input"),
    (np.array([["a"]]), "dtype"), (np.zeros((2, 12, 12, 3), bool), "dtype"),
])
def test_bad_inputs_get_clear_errors_without_the_array(bad, match):
    cam = kc.GradCAM(_softmax_cnn(4))
    with pytest.raises(TypeError, match=match) as info:
        cam(bad)
    assert len(str(info.value)) < 400


def test_a_dataset_passed_to_a_call_names_explain_dataset():
    class FakeDataset:  # what the check looks for on tf.data and other dataset types
        element_spec = None

    with pytest.raises(TypeError, match="explain_dataset"):
        kc.GradCAM(_softmax_cnn(5))(FakeDataset())


def test_booleans_are_refused_where_a_count_is_asked(rng):
    model = _softmax_cnn(6)
    images = rng.random((2, 12, 12, 3)).astype("float32")
    maps = kc.GradCAM(model)(images)
    with pytest.raises(ValueError, match="steps"):
        kc.metrics.deletion_auc(model, images, maps, steps=True)


def test_an_intercepted_activation_still_reads_as_the_original():
    from keras_cam import _patch
    layer = keras.layers.Dense(2, activation="relu")
    with _patch.patched_attr(layer, "activation", lambda x: x):
        assert layer.activation.__name__ == "relu"
        with _patch.intercepted(layer, "activation", lambda inner: lambda x: inner(x) * 2):
            assert layer.activation(-1.0) == -2.0  # the outer replacement, doubled
    assert "activation" in layer.__dict__ and layer.activation.__name__ == "relu"


def test_save_html_into_a_missing_folder_names_that_folder(tmp_path, rng):
    model = _softmax_cnn(7)
    images = rng.random((24, 12, 12, 3)).astype("float32")
    result = kc.audit(kc.GradCAM(model), images, verbose=0)
    missing = tmp_path / "no" / "such"
    for save in (result.save_html, result.save_json):
        with pytest.raises(FileNotFoundError) as info:
            save(str(missing / "report.out"))
        assert str(missing) in str(info.value) and ".tmp" not in str(info.value)
    assert not (tmp_path / "no").exists()


def test_explaining_many_models_in_one_process_warns_of_no_retracing(rng):
    """Each compiled call counts its own traces (TensorFlow's retracing warning keys on the
    function: a wrapper shared by every explainer would add their traces up)."""
    import io
    import logging
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        images = rng.random((2, 12, 12, 3)).astype("float32")
        for seed in range(7):
            cam = kc.GradCAM(_softmax_cnn(seed))
            first, second, third = cam(images), cam(images), cam(images)
            np.testing.assert_allclose(third, first, atol=1e-6)
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert "retracing" not in buffer.getvalue()


@pytest.mark.parametrize("tail", ["Dropout", "GaussianNoise", "Activation", "ActivityRegularization"])
@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_a_final_identity_layer_after_the_softmax_still_explains_the_logit(tail, head, rng):
    """A layer that is the identity at inference after the classifier (a final Dropout) hides
    nothing: the score is the logit, computed here in numpy from the weights, and the
    probabilities are the model's own activation applied once; ReST reads the same logits."""
    L = keras.layers
    inp = keras.Input((8, 8, 3))
    pooled = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, activation="relu", name="target")(inp))
    dense = L.Dense(3, activation=head, name="head")
    make = {"Dropout": lambda: L.Dropout(0.3), "GaussianNoise": lambda: L.GaussianNoise(0.5),
            "Activation": lambda: L.Activation("linear"),
            "ActivityRegularization": lambda: L.ActivityRegularization(l1=0.1)}[tail]
    model = keras.Model(inp, make()(dense(pooled)))
    x = rng.random((3, 8, 8, 3)).astype(np.float32)
    w, b = dense.get_weights()
    logits = to_host(keras.Model(inp, pooled)(x)).astype(np.float64) @ w + b
    e = kc.GradCAM(model, layer="target").explain(x, targets=2)
    np.testing.assert_allclose(e.scores, logits[:, 2], rtol=1e-5, atol=1e-5)
    own = np.exp(logits) / np.exp(logits).sum(1, keepdims=True) if head == "softmax" else 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(e.probabilities, own[:, 2], rtol=1e-5, atol=1e-6)
    if head == "softmax":
        from keras_cam.targets import ReST
        rest = kc.GradCAM(model, layer="target").explain(x, targets=ReST(2)).scores
        shifted = logits - logits.max(1, keepdims=True)
        want = logits[:, 2] + shifted[:, 2] - np.log(np.exp(shifted).sum(1))  # y_c + log softmax(y)_c
        np.testing.assert_allclose(rest, want, rtol=1e-5, atol=1e-5)


def test_one_baseline_value_per_channel_on_a_channels_first_model(rng):
    """A per-channel baseline [b_0, b_1, b_2] means the channel axis on a channels-first model too,
    even when the last spatial axis has as many entries as there are channels: KernelSHAP's values
    sum to f(x) - f(b) with b built in numpy, and Integrated Gradients equals the same method given
    the whole baseline array."""
    L = keras.layers
    inp = keras.Input((3, 6, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu", data_format="channels_first", name="target")(inp)
    model = keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D(data_format="channels_first")(h)))
    x = rng.random((2, 3, 6, 3)).astype(np.float32)
    per_channel = np.array([0.1, 0.5, 0.9], np.float32)
    whole = np.broadcast_to(per_channel[:, None, None], (3, 6, 3)).copy()
    f = to_host(model(x))[:, 1]
    fb = to_host(model(np.broadcast_to(whole, x.shape)))[:, 1]
    segments = np.arange(18).reshape(6, 3) // 5
    phi = kc.KernelSHAP(model, segments=segments, baseline=per_channel).explain(
        x, targets=1, normalize=False).maps
    values = np.stack([[m[segments == k][0] for k in range(segments.max() + 1)] for m in phi])
    np.testing.assert_allclose(values.sum(1), f - fb, rtol=1e-4, atol=1e-5)
    ig = kc.IntegratedGradients(model, steps=8, baseline=per_channel)(x, targets=1, normalize=False)
    np.testing.assert_allclose(ig, kc.IntegratedGradients(model, steps=8, baseline=whole)(x, targets=1, normalize=False),
                               rtol=1e-5, atol=1e-6)

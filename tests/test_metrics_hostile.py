"""The metrics as a hostile user calls them: reshuffled data, odd batch sizes, several outputs, bad input,
retrained models, threads.

Second code paths: a permutation of the inputs against the same permutation of the per-image values;
one batch size against another; the value of an image alone against its value in a batch; the average
drop written out in numpy from the model's own logits; serial calls against threaded ones; a fresh
model with the same weights against a retrained one.
"""

import threading

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import metrics
from keras_cam._compat import keras, to_host

PERM = np.array([3, 0, 4, 1, 2])
TARGETS = np.array([0, 1, 2, 1, 0])


def conv_model(seed=0, head="softmax", size=8, channels=3):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    z = keras.layers.Dense(1 if head == "sigmoid" else 3, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    if head == "softmax":
        z = keras.layers.Activation("softmax")(z)
    elif head == "sigmoid":
        z = keras.layers.Activation("sigmoid")(z)
    return keras.Model(inp, z)


@pytest.fixture(scope="module")
def model():
    return conv_model()


def data(n=5, seed=0, size=8, channels=3):
    rng = np.random.default_rng(seed)
    return (rng.random((n, size, size, channels)).astype(np.float32),
            rng.random((n, size, size)).astype(np.float32))


# Every deterministic metric of (model, images, maps[, targets]), with settings small enough for 8x8 images.
DETERMINISTIC = {
    "average_drop": {}, "increase_in_confidence": {}, "deletion_auc": {"steps": 4}, "insertion_auc": {"steps": 4},
    "faithfulness_estimate": {"features_in_step": 16}, "monotonicity": {"features_in_step": 16},
    "monotonicity_correlation": {"features_in_step": 32, "samples": 2, "baseline": 0.5},
    "pixel_flipping": {"features_in_step": 16}, "region_perturbation": {"patch_size": 4, "regions": 3},
    "selectivity": {"patch_size": 4}, "infidelity": {"patch_sizes": (4,)}, "sufficiency": {},
    "completeness": {}, "non_sensitivity": {"features_in_step": 16}, "consistency": {"discretize": "top", "n": 2},
}


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_metrics_follow_a_reshuffle_and_ignore_batch_size(model, name):
    fn, kw = getattr(metrics, name), DETERMINISTIC[name]
    images, maps = data()
    targets = {} if name == "consistency" else {"targets": TARGETS}
    by_size = {b: fn(model, images, maps, **targets, **kw, batch_size=b, reduce=None) for b in (1, 3, 64)}
    for b in (1, 64):
        np.testing.assert_allclose(by_size[b], by_size[3], rtol=1e-5, atol=1e-6, err_msg=f"batch_size={b}")
    shuffled = {} if name == "consistency" else {"targets": TARGETS[PERM]}
    moved = fn(model, images[PERM], maps[PERM], **shuffled, **kw, batch_size=3, reduce=None)
    np.testing.assert_allclose(moved, by_size[3][PERM], rtol=1e-5, atol=1e-6)


def test_map_metrics_follow_a_reshuffle():
    _, maps = data(seed=3)
    boxes = np.array([[0, 0, 4, 4], [2, 2, 6, 6], [1, 0, 8, 3], [0, 4, 5, 8], [3, 3, 7, 7]])
    for fn in (metrics.pointing_game, metrics.energy_pointing_game, metrics.attribution_localization,
               metrics.relevance_rank_accuracy, metrics.relevance_mass_accuracy, metrics.mask_auc):
        np.testing.assert_array_equal(fn(maps[PERM], boxes[PERM], reduce=None), fn(maps, boxes, reduce=None)[PERM])
    for fn in (metrics.sparseness, metrics.complexity, metrics.effective_complexity):
        np.testing.assert_array_equal(fn(maps[PERM], reduce=None), fn(maps, reduce=None)[PERM])


def test_random_draws_are_keyed_by_position_not_by_batch_size(model):
    """Documented: the draws depend on (seed, position, draw), so an image at position 0 of any call gets the
    same value as alone, whatever batch_size; moved to another position it gets other draws."""
    images, maps = data()
    cam = kc.GradCAM(model, "conv")
    # (metric, small batch, large batch): the explainer compiles once per chunk shape on JAX, so its batch
    # sizes divide the (image, sample) pairs (5 x 2 and 2 x 2) evenly
    cases = [
        (lambda x, m, **k: metrics.faithfulness_correlation(model, x, m, subset_size=8, runs=5, **k), 1, 64),
        (lambda x, m, **k: metrics.avg_sensitivity(cam, x, samples=2, **k), 2, 10),
    ]
    for fn, small, large in cases:
        # a correlation of float32 outputs moves by ~1e-5 between XLA batch shapes; other draws move it by ~0.1
        full = fn(images, maps, reduce=None, batch_size=small)
        np.testing.assert_allclose(fn(images, maps, reduce=None, batch_size=large), full, atol=1e-4)
        alone = fn(images[2:3], maps[2:3], reduce=None, batch_size=small)  # image 2 at position 0 ...
        first = fn(images[[2, 0]], maps[[2, 0]], reduce=None, batch_size=small)  # ... alone or first of two
        np.testing.assert_allclose(first[0], alone[0], atol=1e-4)
        moved = fn(images[PERM], maps[PERM], reduce=None, batch_size=small)
        assert not np.allclose(moved, full[PERM], atol=1e-4)  # other positions, other draws


# ----------------------------------------------------------------------------- several outputs


def two_output_models():
    """The classifier is output "cls" (softmax); "aux" sorts first, so a first-output rule would score it."""
    base = conv_model(seed=1, head="logits")
    pooled = base.layers[-2].output
    aux = keras.layers.Dense(2, activation="softmax", name="aux_head")(pooled)
    probs = keras.layers.Activation("softmax", name="cls_head")(base.output)
    return base, keras.Model(base.inputs, {"cls": probs, "aux": aux}), keras.Model(base.inputs, [aux, probs])


MODEL_CALLS = {
    "average_drop": lambda md, x, m: metrics.average_drop(md, x, m),
    "deletion_auc": lambda md, x, m: metrics.deletion_auc(md, x, m, steps=2),
    "road": lambda md, x, m: metrics.road(md, x, m, percentages=(50,)),
    "faithfulness_estimate": lambda md, x, m: metrics.faithfulness_estimate(md, x, m, features_in_step=32),
    "completeness": lambda md, x, m: metrics.completeness(md, x, m),
    "consistency": lambda md, x, m: metrics.consistency(md, x, m),
    "evaluate": lambda md, x, m: metrics.evaluate({"fixed": m}, md, x, metrics=["average_drop"]),
}


@pytest.mark.parametrize("name", sorted(MODEL_CALLS))
def test_several_outputs_are_refused_naming_them_and_a_wrapped_output_is_scored(name):
    base, as_dict, as_list = two_output_models()
    images, maps = data(4)
    with pytest.raises(ValueError, match=r"2 outputs \['aux', 'cls'\].*single-output model"):
        MODEL_CALLS[name](as_dict, images, maps)
    with pytest.raises(ValueError, match="2 outputs .*single-output model"):
        MODEL_CALLS[name](as_list, images, maps)
    if name == "average_drop":  # the wrapped output, against numpy on the model's own logits
        wrapped = keras.Model(as_dict.inputs, as_dict.output["cls"])
        z = np.asarray(to_host(base(images)), np.float64)
        zm = np.asarray(to_host(base(images * maps[..., None])), np.float64)
        p = np.exp(z - z.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        pm = np.exp(zm - zm.max(1, keepdims=True)); pm /= pm.sum(1, keepdims=True)
        c, rows = p.argmax(1), np.arange(4)
        expected = 100 * np.maximum(0, p[rows, c] - pm[rows, c]) / p[rows, c]
        np.testing.assert_allclose(metrics.average_drop(wrapped, images, maps, reduce=None), expected, atol=1e-4)


@pytest.mark.parametrize("head", ["softmax", "logits", "sigmoid"])
def test_probability_heads_score_the_same_probability(head):
    """A softmax model and its logits twin score alike (a softmax is put on logits); a single sigmoid unit
    is the two classes (1 - p, p)."""
    images, maps = data(4, seed=2)
    md = conv_model(seed=4, head=head)
    logits = keras.Model(md.inputs, md.get_layer("logits").output)
    z, zm = (np.asarray(to_host(logits(v)), np.float64) for v in (images, images * maps[..., None]))
    if head == "sigmoid":
        z, zm = np.concatenate([-z, z], 1), np.concatenate([-zm, zm], 1)
        p, pm = 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(-zm))
    else:
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        pm = np.exp(zm) / np.exp(zm).sum(1, keepdims=True)
    rows = np.arange(4)
    for t in (None, 1):
        c = p.argmax(1) if t is None else np.full(4, t)
        expected = 100 * np.maximum(0, p[rows, c] - pm[rows, c]) / p[rows, c]
        np.testing.assert_allclose(metrics.average_drop(md, images, maps, t, reduce=None), expected, atol=1e-4)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", sorted(MODEL_CALLS))
def test_images_with_nan_or_inf_are_refused(model, name):
    images, maps = data(4)
    for bad in (np.nan, np.inf):
        broken = images.copy()
        broken[2, 1, 1, 0] = bad
        with pytest.raises(ValueError, match=r"`images` contains NaN or Inf \(images \[2\]\)"):
            MODEL_CALLS[name](model, broken, maps)


@pytest.mark.parametrize("fn", [metrics.pointing_game, metrics.energy_pointing_game, metrics.attribution_localization,
                                metrics.relevance_rank_accuracy, metrics.relevance_mass_accuracy, metrics.mask_auc])
def test_no_maps_are_refused_not_nan(fn):
    with pytest.raises(ValueError, match="`maps` is empty"):
        fn(np.zeros((0, 8, 8)), np.zeros((0, 4), int))
    for prop in (metrics.sparseness, metrics.complexity, metrics.effective_complexity):
        with pytest.raises(ValueError, match="`maps` is empty"):
            prop(np.zeros((0, 8, 8)))


@pytest.mark.parametrize("seed", [-1, True, 1.5])
def test_bad_seeds_are_refused_naming_seed(model, seed):
    images, maps = data(6)
    cam = kc.GradCAM(model, "conv")
    calls = [
        lambda: metrics.road(model, images, maps, percentages=(50,), seed=seed),
        lambda: metrics.avg_sensitivity(cam, images, samples=1, seed=seed),
        lambda: metrics.local_lipschitz_estimate(cam, images, samples=1, seed=seed),
        lambda: metrics.relative_input_stability(cam, images, samples=1, seed=seed),
        lambda: metrics.random_logit(cam, images, seed=seed),
        lambda: metrics.max_sensitivity(cam, images, samples=1, seed=seed),
        lambda: metrics.focus(cam, images, [0, 1, 2, 0, 1, 2], seed=seed),
        lambda: metrics.smooth_mprt(kc.GradCAM, model, images, samples=1, seed=seed,
                                    explainer_kwargs={"layer": "conv"}),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="`seed` must be"):
            call()


def test_other_bad_arguments_get_messages_naming_them(model):
    images, maps = data(4)
    cam = kc.GradCAM(model, "conv")
    with pytest.raises(ValueError, match="`seed` must be an int in"):  # RandomState(seed + 1) takes < 2**32
        metrics.efficient_mprt(kc.GradCAM, model, images, seed=2 ** 40, explainer_kwargs={"layer": "conv"})
    for seed in (-1, 2 ** 40, 1.5, True):
        with pytest.raises(ValueError, match="`seed` must be an int in"):
            metrics.randomized_copy(model, seed=seed)
    for noise in (float("nan"), True, -0.1):
        with pytest.raises(ValueError, match="`noise`"):
            metrics.road(model, images, maps, percentages=(50,), noise=noise)
    with pytest.raises(ValueError, match="`samples`"):
        metrics.max_sensitivity(cam, images, samples=True)
    with pytest.raises(ValueError, match="`radius`"):
        metrics.max_sensitivity(cam, images, radius=True)
    for targets, match in ((7, "out of range"), ([0, 1], "3 entries|2 entries")):
        with pytest.raises(ValueError, match=match):  # consistency does not use targets, but checks them
            metrics.consistency(model, images, maps, targets)
    with pytest.raises(TypeError, match="must be a keras-cam explainer"):
        metrics.relative_representation_stability(model, images, samples=1)


@pytest.mark.parametrize("seed", [1, 12345, 2 ** 62])
def test_seeded_subsets_raise_no_overflow_warning(model, seed):
    """The subsets' counter-based hash wraps around 2**64 on purpose; it used to warn for any seed > 1."""
    import warnings

    images, maps = data(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        metrics.faithfulness_correlation(model, images, maps, subset_size=8, runs=3, seed=seed)
        metrics.sensitivity_n(model, images, maps, sizes=(4, 16), subsets=3, seed=seed)


class _NoConfig(keras.Model):
    """A subclassed model without get_config/from_config: keras.models.clone_model cannot rebuild it."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(3, activation="softmax")

    def call(self, x):
        return self.head(self.pool(self.conv(x)))


@pytest.mark.parametrize("purpose, run", [
    ("The sanity check randomizes", lambda m, x: kc.sanity_check(kc.GradCAM, m, x, explainer_kwargs={"layer": "conv"})),
    ("MPRT randomizes", lambda m, x: metrics.efficient_mprt(kc.GradCAM, m, x, explainer_kwargs={"layer": "conv"})),
    ("MPRT randomizes", lambda m, x: metrics.randomized_copy(m)),
    ("input_invariance shifts", lambda m, x: metrics.input_invariance(kc.GradCAM, m, x,
                                                                      explainer_kwargs={"layer": "conv"})),
])
def test_a_model_that_cannot_be_copied_is_refused_saying_why_and_left_as_it_was(purpose, run):
    model = _NoConfig()
    images, _ = data(2)
    model(images)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=f"{purpose} a copy of the model.*clone_model could not copy.*get_config"):
        run(model, images)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- state: weights, threads, inputs


def test_the_next_call_after_retraining_uses_the_new_weights():
    images, maps = data(4)
    calls = [lambda md: metrics.average_drop(md, images, maps, TARGETS[:4], reduce=None),
             lambda md: metrics.faithfulness_estimate(md, images, maps, TARGETS[:4], features_in_step=16,
                                                      reduce=None),
             lambda md: metrics.continuity(kc.GradCAM(md, "conv"), images, TARGETS[:4], steps=2, reduce=None)]
    trained = conv_model(seed=0)
    trained.compile("sgd", "sparse_categorical_crossentropy")
    before = [call(trained) for call in calls]
    trained.fit(images, TARGETS[:4], epochs=1, batch_size=4, verbose=0)
    trained.set_weights([w * 1.5 for w in trained.get_weights()])
    twin = conv_model(seed=9)
    twin.set_weights(trained.get_weights())
    for call, old in zip(calls, before):
        now = call(trained)
        assert not np.allclose(now, old)
        np.testing.assert_allclose(now, call(twin), rtol=1e-5, atol=1e-6)


def test_threads_on_one_and_two_models_match_serial_calls_and_touch_no_input():
    images, maps = data(4)
    first, second = conv_model(seed=0), conv_model(seed=3)
    calls = {
        "faithfulness_estimate": lambda md: metrics.faithfulness_estimate(md, images, maps, features_in_step=16,
                                                                          batch_size=3, reduce=None),
        "deletion_auc": lambda md: metrics.deletion_auc(md, images, maps, steps=3, batch_size=3, reduce=None),
        "road": lambda md: metrics.road(md, images, maps, percentages=(50,), reduce=None),
    }
    copies = images.copy(), maps.copy()
    weights = [w.copy() for w in first.get_weights()]
    serial = {(k, i): fn(md) for k, fn in calls.items() for i, md in enumerate((first, second))}
    results, errors = [], []

    def work(key, fn, i, md):
        try:
            results.append(((key, i), fn(md)))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k, fn, i, md)) for k, fn in calls.items()
               for i, md in ((0, first), (1, second), (0, first))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == len(threads)
    for key, value in results:
        np.testing.assert_allclose(value, serial[key], rtol=1e-6, atol=1e-7, err_msg=str(key))
    np.testing.assert_array_equal(images, copies[0])
    np.testing.assert_array_equal(maps, copies[1])
    assert all(np.array_equal(a, b) for a, b in zip(first.get_weights(), weights))

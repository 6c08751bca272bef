"""Per-image results: ``reduce=None`` on every metric, and ``evaluate``'s per-image rows,
bootstrap intervals and paired comparisons.

Second code paths: each per-image value is the metric called on that image alone;
the mean of the per-image values is the default result; the paired comparison and
the bootstrap are written out by hand on tiny cases; the interval is held to the
normal approximation ``mean +- z s / sqrt(n)`` where that is accurate.
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import metrics
from keras_cam._compat import keras

RANKS = {1: (16,), 2: (8, 7), 3: (4, 5, 6)}


def conv_model(rank, classes=3, seed=0):
    """A tiny random convolutional classifier of spatial ``rank`` (1-D, 2-D or 3-D), softmax head."""
    keras.utils.set_random_seed(seed)
    conv = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[rank]
    pool = {1: keras.layers.GlobalAveragePooling1D, 2: keras.layers.GlobalAveragePooling2D,
            3: keras.layers.GlobalAveragePooling3D}[rank]
    inp = keras.Input(RANKS[rank] + (2,))
    x = conv(4, 3, padding="same", activation="relu", name="target")(inp)
    out = keras.layers.Dense(classes, activation="softmax")(pool()(x))
    return keras.Model(inp, out)


def data(rank, n=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n,) + RANKS[rank] + (2,)).astype(np.float32)
    maps = (rng.random((n,) + RANKS[rank]) ** rng.uniform(1, 6, (n,) + (1,) * rank)).astype(np.float32)
    return images, maps


MODEL_METRICS = {
    "average_drop": (metrics.average_drop, {}),
    "increase_in_confidence": (metrics.increase_in_confidence, {}),
    "deletion_auc": (metrics.deletion_auc, {"steps": 6}),
    "insertion_auc": (metrics.insertion_auc, {"steps": 5, "substrate": "mean"}),
    "road_morf": (metrics.road, {"percentages": (20, 60), "order": "morf", "noise": 0.0}),
    "road_combined": (metrics.road, {"percentages": (30,), "order": "combined", "noise": 0.0}),
}


@pytest.fixture(scope="module", params=[1, 2, 3])
def case(request):
    rank = request.param
    images, maps = data(rank, seed=rank)
    return conv_model(rank, seed=rank), images, maps


@pytest.mark.parametrize("name", list(MODEL_METRICS))
def test_model_metrics_per_image_equal_each_image_alone(case, name):
    model, images, maps = case
    fn, kw = MODEL_METRICS[name]
    per_image = fn(model, images, maps, reduce=None, batch_size=3, **kw)
    assert isinstance(per_image, np.ndarray) and per_image.shape == (len(images),)
    alone = [fn(model, images[i:i + 1], maps[i:i + 1], **kw) for i in range(len(images))]
    np.testing.assert_allclose(per_image, alone, rtol=1e-5, atol=1e-7)
    mean = fn(model, images, maps, batch_size=3, **kw)
    assert isinstance(mean, float)
    assert np.mean(per_image) == pytest.approx(mean, rel=1e-12, abs=1e-12)
    # and another batch size: the same up to float rounding
    assert fn(model, images, maps, **kw) == pytest.approx(mean, rel=1e-5, abs=1e-7)
    # with an explicit class per image, too
    classes = np.arange(len(images)) % 3
    per_image = fn(model, images, maps, classes, reduce=None, **kw)
    alone = [fn(model, images[i:i + 1], maps[i:i + 1], int(classes[i]), **kw) for i in range(len(images))]
    np.testing.assert_allclose(per_image, alone, rtol=1e-5, atol=1e-7)


def test_increase_in_confidence_per_image_is_0_or_100_and_agrees_with_average_drop(case):
    """Per image: 100 where O > Y, else 0; the drop is 0 exactly where confidence rose or held."""
    model, images, maps = case
    rise = metrics.increase_in_confidence(model, images, maps, reduce=None)
    drop = metrics.average_drop(model, images, maps, reduce=None)
    assert set(np.unique(rise)) <= {0.0, 100.0}
    assert (drop[rise == 100.0] == 0).all()
    assert (drop >= 0).all() and (drop <= 100).all()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_map_metrics_per_image_equal_each_map_alone(rank, seed):
    _, maps = data(rank, n=6, seed=10 * rank + seed)
    maps[seed] = 0.0                                      # an all-zero map among them
    rng = np.random.default_rng(seed)
    sizes = RANKS[rank]
    starts = np.stack([rng.integers(0, s - 1, 6) for s in sizes], axis=1)
    ends = np.stack([rng.integers(starts[:, a] + 1, s + 1) for a, s in enumerate(sizes)], axis=1)
    boxes = np.concatenate([starts, ends], axis=1)
    cases = {
        metrics.sparseness: lambda m, b: (m,),
        metrics.complexity: lambda m, b: (m,),
        metrics.pointing_game: lambda m, b: (m, b),
        metrics.energy_pointing_game: lambda m, b: (m, b),
    }
    for fn, args in cases.items():
        per_image = fn(*args(maps, boxes), reduce=None)
        alone = [fn(*args(maps[i:i + 1], boxes[i:i + 1])) for i in range(6)]
        np.testing.assert_allclose(per_image, alone, rtol=1e-12, atol=1e-12, err_msg=fn.__name__)
        assert np.mean(per_image) == pytest.approx(fn(*args(maps, boxes)), abs=1e-12)
        assert np.isfinite(per_image).all()


def test_random_logit_per_image_equals_each_image_alone():
    """With two classes the other class is forced, so each image alone draws the same one."""
    model = conv_model(2, classes=2, seed=4)
    images, _ = data(2, n=5, seed=4)
    cam = kc.GradCAM(model, "target")
    per_image = metrics.random_logit(cam, images, reduce=None)
    alone = [metrics.random_logit(cam, images[i:i + 1]) for i in range(5)]
    np.testing.assert_allclose(per_image, alone, atol=1e-6)
    # (abs 1e-6: an explainer runs the first call of a shape eagerly, the next ones compiled)
    assert np.mean(per_image) == pytest.approx(metrics.random_logit(cam, images), abs=1e-6)
    # by hand: SSIM of the map of the top class and of the other one
    top = model.predict(images, verbose=0).argmax(axis=1)
    expected = metrics.ssim(cam(images, top), cam(images, 1 - top))
    np.testing.assert_allclose(per_image, expected, atol=1e-6)


def test_max_sensitivity_per_image_by_hand():
    """The documented draws (one generator, per sample the whole batch, channels-last), written out."""
    model = conv_model(2, seed=5)
    images, _ = data(2, n=4, seed=5)
    cam = kc.GradCAM(model, "target")
    radius, samples, seed = 0.05, 3, 2
    per_image = metrics.max_sensitivity(cam, images, radius=radius, samples=samples, seed=seed, reduce=None)
    classes = model.predict(images, verbose=0).argmax(axis=1)
    base = cam(images, classes).reshape(4, -1).astype(np.float64)
    half = radius * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))
    rng = np.random.default_rng(seed)
    worst = np.zeros(4)
    for _ in range(samples):
        d = rng.uniform(-1, 1, images.shape) * half[:, None, None, None]
        moved = cam(images + d.astype(np.float32), classes).reshape(4, -1)
        worst = np.maximum(worst, np.linalg.norm(moved - base, axis=1))
    np.testing.assert_allclose(per_image, worst / np.linalg.norm(base, axis=1), rtol=1e-4, atol=1e-6)
    assert np.mean(per_image) == pytest.approx(
        metrics.max_sensitivity(cam, images, radius=radius, samples=samples, seed=seed), rel=1e-12)


def test_sanity_check_per_image_equals_each_image_alone():
    model = conv_model(2, seed=6)
    images, _ = data(2, n=3, seed=6)
    result = kc.sanity_check(kc.GradCAM, model, images, explainer_kwargs={"layer": "target"})
    assert result.image_spearman.shape == result.image_ssim.shape == (len(result.steps), 3)
    np.testing.assert_allclose(result.image_spearman.mean(axis=1), result.spearman, rtol=1e-12)
    np.testing.assert_allclose(result.image_ssim.mean(axis=1), result.ssim, rtol=1e-12)
    for i in range(3):
        alone = kc.sanity_check(kc.GradCAM, model, images[i:i + 1], explainer_kwargs={"layer": "target"})
        np.testing.assert_allclose(result.image_spearman[:, i], alone.spearman, atol=1e-6)
        np.testing.assert_allclose(result.image_ssim[:, i], alone.ssim, atol=1e-6)


@pytest.mark.parametrize("bad", ["sum", "none", 0, True, "MEAN", ["mean"]])
def test_a_reduce_that_is_not_allowed_is_refused(bad):
    model = conv_model(2, seed=0)
    images, maps = data(2, n=2)
    cam = kc.GradCAM(model, "target")
    calls = [
        lambda: metrics.average_drop(model, images, maps, reduce=bad),
        lambda: metrics.increase_in_confidence(model, images, maps, reduce=bad),
        lambda: metrics.deletion_auc(model, images, maps, steps=2, reduce=bad),
        lambda: metrics.insertion_auc(model, images, maps, steps=2, reduce=bad),
        lambda: metrics.road(model, images, maps, reduce=bad),
        lambda: metrics.sparseness(maps, reduce=bad),
        lambda: metrics.complexity(maps, reduce=bad),
        lambda: metrics.pointing_game(maps, np.array([[0, 0, 2, 2]] * 2), reduce=bad),
        lambda: metrics.energy_pointing_game(maps, np.array([[0, 0, 2, 2]] * 2), reduce=bad),
        lambda: metrics.random_logit(cam, images, reduce=bad),
        lambda: metrics.max_sensitivity(cam, images, samples=1, reduce=bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"`reduce` must be \"mean\".*or None"):
            call()


# --- evaluate ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated():
    model = conv_model(2, seed=7)
    images, maps = data(2, n=8, seed=7)
    chosen = {"average_drop": {}, "deletion_auc": {"steps": 4}, "road": {"percentages": (40,), "noise": 0.0},
              "sparseness": {}, "energy_pointing_game": {}, "max_sensitivity": {"samples": 2}}
    boxes = np.array([[1, 1, 6, 5]] * 8)
    table = metrics.evaluate({"Grad-CAM": lambda m: kc.GradCAM(m, "target"), "fixed": maps}, model, images,
                             boxes=boxes, metrics=chosen, batch_size=3)
    return model, images, maps, boxes, chosen, table


def test_evaluate_per_image_rows_equal_the_metrics_per_image(evaluated):
    model, images, maps, boxes, chosen, table = evaluated
    assert len(table.per_image) == 2 * len(images)
    assert [(r["method"], r["image"]) for r in table.per_image[:2]] == [("Grad-CAM", 0), ("Grad-CAM", 1)]
    classes = model.predict(images, verbose=0).argmax(axis=1)
    cam = kc.GradCAM(model, "target")
    for name, method_maps in (("Grad-CAM", cam(images, classes)), ("fixed", maps)):
        expected = {
            "average_drop": metrics.average_drop(model, images, method_maps, classes, reduce=None),
            "deletion_auc": metrics.deletion_auc(model, images, method_maps, classes, steps=4, reduce=None),
            "road": metrics.road(model, images, method_maps, classes, percentages=(40,), noise=0.0,
                                 order="combined", reduce=None),
            "sparseness": metrics.sparseness(method_maps, reduce=None),
            "energy_pointing_game": metrics.energy_pointing_game(method_maps, boxes, reduce=None),
        }
        for metric, values in expected.items():
            np.testing.assert_allclose(table.values(name, metric), values, rtol=1e-5, atol=1e-7, err_msg=metric)
            row = table.rows[[r["method"] for r in table.rows].index(name)]
            assert row[metric] == pytest.approx(np.mean(table.values(name, metric)), rel=1e-12)
            assert [r[metric] for r in table.per_image if r["method"] == name] == pytest.approx(
                list(table.values(name, metric)))
    assert table.values("fixed", "max_sensitivity") is None
    assert all(r["max_sensitivity"] is None for r in table.per_image if r["method"] == "fixed")
    assert table.intervals[1]["max_sensitivity"] is None


def test_every_interval_contains_its_mean(evaluated):
    *_, table = evaluated
    assert table.ci == 0.95
    for row, spans in zip(table.rows, table.intervals):
        for metric in table.metrics:
            if row[metric] is None:
                continue
            low, high = spans[metric]
            assert low <= row[metric] <= high, (row["method"], metric)
    text = table.to_markdown(intervals=True)
    low, high = table.intervals[0]["sparseness"]
    assert f"{table.rows[0]['sparseness']:.3f} [{low:.3f}, {high:.3f}]" in text
    assert "[" not in table.to_markdown()                          # the plain table is unchanged


def test_the_bootstrap_written_out_by_hand():
    """The documented percentile bootstrap: resampled means, the lower and upper quantiles."""
    values = np.random.default_rng(1).normal(size=7)
    idx = np.random.default_rng(3).integers(0, 7, (300, 7))
    means = np.sort(values[idx].mean(axis=1))
    # "lower" at 2.5 %: the floor of 0.025 * 299; "higher" at 97.5 %: the ceiling of 0.975 * 299
    expected = (means[int(np.floor(0.025 * 299))], means[int(np.ceil(0.975 * 299))])
    assert metrics.bootstrap_interval(values, 0.95, 300, seed=3) == pytest.approx(expected, rel=1e-12)
    assert metrics.bootstrap_interval([2.5], 0.9, 50) == (2.5, 2.5)


@pytest.mark.parametrize("seed", range(3))
def test_the_interval_shrinks_with_more_images_and_matches_the_normal_approximation(seed):
    """Maps-only metrics on many random maps: the width falls like 1 / sqrt(n), and at n = 400 the
    interval is the normal one, mean +- 1.96 s / sqrt(n), to within 10 %."""
    rng = np.random.default_rng(seed)
    maps = (rng.random((400, 8, 7)) ** rng.uniform(1, 8, (400, 1, 1))).astype(np.float32)
    model = conv_model(2, seed=0)
    images = rng.normal(size=(400, 8, 7, 2)).astype(np.float32)
    widths = {}
    for n in (25, 400):
        table = metrics.evaluate({"ref": maps[:n]}, model, images[:n], metrics=["sparseness", "complexity"],
                                 seed=seed)
        for metric in table.metrics:
            low, high = table.intervals[0][metric]
            widths[n, metric] = high - low
            values = table.values("ref", metric)
            if n == 400:
                half = 1.959964 * values.std(ddof=1) / np.sqrt(n)
                assert high - low == pytest.approx(2 * half, rel=0.1)
                assert (low + high) / 2 == pytest.approx(values.mean(), abs=0.15 * half)
    for metric in ("sparseness", "complexity"):
        assert widths[400, metric] < 0.5 * widths[25, metric]


def test_paired_comparison_by_hand():
    """Three images, two fixed-map methods: one-hot, uniform and ramp maps have known Gini indices."""
    n = 12
    one_hot = np.zeros((3, 4)); one_hot[0, 1] = 1.0
    uniform = np.full((3, 4), 0.5)
    ramp = np.arange(1, n + 1, dtype=np.float64).reshape(3, 4) / n
    gini = {"one_hot": (n - 1) / n, "uniform": 0.0, "ramp": (n - 1) / (3 * n)}
    a = np.stack([one_hot, uniform, ramp])           # Gini: 11/12, 0, 11/36
    b = np.stack([ramp, ramp, ramp])                 # Gini: 11/36 each
    images = np.random.default_rng(0).normal(size=(3, 3, 4, 2)).astype(np.float32)
    inp = keras.Input((3, 4, 2))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inp)))
    table = metrics.evaluate({"A": a.astype(np.float32), "B": b.astype(np.float32)}, model, images,
                             metrics=["sparseness", "complexity"], resamples=400, seed=5)
    cmp = table.compare("A", "B", "sparseness")
    d = np.array([gini["one_hot"], gini["uniform"], gini["ramp"]]) - gini["ramp"]
    assert cmp.difference == pytest.approx(d.mean(), abs=1e-7)
    assert cmp.difference == pytest.approx(table.rows[0]["sparseness"] - table.rows[1]["sparseness"], abs=1e-12)
    # sparseness: higher is better; A wins image 0, loses image 1, ties image 2
    assert (cmp.wins, cmp.losses, cmp.ties) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert cmp.better == "higher" and cmp.images == 3 and cmp.level == 0.95
    idx = np.random.default_rng(5).integers(0, 3, (400, 3))
    a_values, b_values = table.values("A", "sparseness"), table.values("B", "sparseness")
    means = np.sort(a_values[idx].mean(axis=1) - b_values[idx].mean(axis=1))
    assert cmp.interval == pytest.approx((means[int(np.floor(0.025 * 399))], means[int(np.ceil(0.975 * 399))]))
    # complexity: lower is better; the one-hot map (entropy 0) wins, the uniform one (log 12) loses
    both = table.compare("A", "B")
    assert set(both) == {"sparseness", "complexity"}
    assert (both["complexity"].wins, both["complexity"].losses) == pytest.approx((1 / 3, 1 / 3))
    assert table.compare("B", "A", "complexity").difference == pytest.approx(-both["complexity"].difference)
    # a method compared with itself: every difference 0, every image a tie, the interval [0, 0]
    same = table.compare("A", 0, "sparseness")
    assert same.difference == 0 and same.ties == 1 and same.interval == (0.0, 0.0)


def test_evaluate_ci_arguments_and_compare_errors(evaluated):
    model, images, maps, *_ = evaluated
    table = metrics.evaluate({"m": maps}, model, images, metrics=["sparseness"], ci=None)
    assert table.ci is None and table.intervals == [{"sparseness": None}]
    assert table.compare("m", "m", "sparseness").interval is None
    for bad in (0, 1, 1.5, "95%", True):
        with pytest.raises(ValueError, match="`ci` is a confidence level"):
            metrics.evaluate({"m": maps}, model, images, metrics=["sparseness"], ci=bad)
    with pytest.raises(ValueError, match="resamples"):
        metrics.evaluate({"m": maps}, model, images, metrics=["sparseness"], resamples=0)
    with pytest.raises(ValueError, match="reduce"):
        metrics.evaluate({"m": maps}, model, images, metrics={"sparseness": {"reduce": None}})
    *_, full = evaluated
    with pytest.raises(KeyError, match="No method 'nope'"):
        full.compare("Grad-CAM", "nope")
    with pytest.raises(KeyError, match="No metric"):
        full.compare("Grad-CAM", "fixed", "accuracy")
    with pytest.raises(ValueError, match="does not apply to method 'fixed'"):
        full.compare("Grad-CAM", "fixed", "max_sensitivity")
    assert "max_sensitivity" not in full.compare("Grad-CAM", "fixed")
    twice = metrics.evaluate([maps, maps], model, images, metrics=["sparseness"])
    twice.rows[1]["method"] = twice.rows[0]["method"]
    with pytest.raises(ValueError, match="pass the row index"):
        twice.compare(twice.rows[0]["method"], 1, "sparseness")

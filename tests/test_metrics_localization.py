"""Localization metrics against hand computations, direct loops from the papers, and Quantus 0.6.

Each metric is checked three ways: a closed form on maps built for it (a map
that is the mask itself, a ramp, a constant), a direct per-image loop written
here from the paper's definition (sorting, counting, the ROC curve's
trapezoids), and Quantus 0.6's class on the same maps and masks, image by
image, to 1e-5. Then the ground-truth forms (boxes and masks agree), 1-D and
3-D layouts, reduce, Focus's mosaics, and the bad inputs.
"""

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import metrics
from keras_cam._compat import keras

LOCAL = ["pointing_game", "energy_pointing_game", "attribution_localization", "top_k_intersection",
         "relevance_rank_accuracy", "relevance_mass_accuracy", "mask_auc"]


def call(name, maps, **kw):
    if name == "top_k_intersection":
        kw.setdefault("k", 7)
    return getattr(metrics, name)(maps, **kw)


def random_case(seed, shape=(12, 10), n=5):
    """Tie-free maps (continuous, some negative) and random rectangles with a few holes as masks."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n,) + shape).astype(np.float32)
    masks = np.zeros((n,) + shape, bool)
    for i in range(n):
        lo = [rng.integers(0, s // 2) for s in shape]
        hi = [lo[k] + rng.integers(2, shape[k] - lo[k] + 1) for k in range(len(shape))]
        masks[(i,) + tuple(slice(a, b) for a, b in zip(lo, hi))] = True
        masks[i].flat[rng.integers(0, masks[i].size, 3)] = False       # not a box: holes
        masks[i].flat[0] = True
    return maps, masks


# --- direct loops written from the definitions --------------------------------------------------

def loop_top(a, s, k):
    """Share of mask positions among the k largest values (tie-free maps)."""
    order = sorted(range(len(a)), key=lambda j: -a[j])
    return sum(bool(s[j]) for j in order[:k]) / k


def loop_auc(a, s):
    """The ROC curve point by point (thresholds at every distinct value), then trapezoids."""
    pos, neg = s.sum(), (~s).sum()
    points = [(0.0, 0.0)]
    for t in sorted(set(a.tolist()), reverse=True):
        points.append((((a >= t) & ~s).sum() / neg, ((a >= t) & s).sum() / pos))
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))


def loop(name, m, s):
    a, s = m.reshape(-1).astype(np.float64), s.reshape(-1)
    if name == "pointing_game":
        return 100.0 * s[np.argmax(a)]
    if name == "energy_pointing_game":
        return 100.0 * a[s].sum() / a.sum()
    if name == "attribution_localization":
        return np.abs(a)[s].sum() / np.abs(a).sum()
    if name == "top_k_intersection":
        return loop_top(a, s, 7)
    if name == "relevance_rank_accuracy":
        return loop_top(a, s, int(s.sum()))
    if name == "relevance_mass_accuracy":
        return a[s].sum() / a.sum()
    if name == "mask_auc":
        return loop_auc(a, s)
    raise KeyError(name)


@pytest.mark.parametrize("name", LOCAL)
@pytest.mark.parametrize("shape", [(30,), (12, 10), (4, 5, 6)])
def test_each_metric_equals_a_direct_loop_in_every_layout(name, shape):
    maps, masks = random_case(len(shape), shape)
    if name == "energy_pointing_game":
        maps = np.abs(maps)
    got = call(name, maps, masks=masks, reduce=None)
    expected = [loop(name, m, s) for m, s in zip(maps, masks)]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert call(name, maps, masks=masks) == pytest.approx(np.mean(expected), rel=1e-6)


# --- closed forms ------------------------------------------------------------------------------

def test_closed_forms_of_a_map_that_is_the_mask():
    _, masks = random_case(3)
    perfect = masks.astype(np.float32) + 0.0
    inverse = 1.0 - perfect
    k = masks.reshape(len(masks), -1).sum(1)
    n = masks[0].size
    np.testing.assert_allclose(metrics.attribution_localization(perfect, masks=masks, reduce=None), 1.0)
    np.testing.assert_allclose(metrics.relevance_mass_accuracy(perfect, masks=masks, reduce=None), 1.0)
    np.testing.assert_allclose(metrics.relevance_rank_accuracy(perfect, masks=masks, reduce=None), 1.0)
    np.testing.assert_allclose(metrics.mask_auc(perfect, masks=masks, reduce=None), 1.0)
    np.testing.assert_allclose(metrics.mask_auc(inverse, masks=masks, reduce=None), 0.0)
    np.testing.assert_allclose(metrics.relevance_rank_accuracy(inverse, masks=masks, reduce=None), 0.0)
    # top-k with k below the object's size: all k on the object; concept influence: divided by k/n... share
    np.testing.assert_allclose(metrics.top_k_intersection(perfect, masks=masks, k=2, reduce=None), 1.0)
    np.testing.assert_allclose(
        metrics.top_k_intersection(perfect, masks=masks, k=2, concept_influence=True, reduce=None), n / k)


@pytest.mark.parametrize("value", [0.0, 0.7, -2.0])
def test_constant_maps_score_chance_and_all_zero_maps_the_documented_value(value):
    _, masks = random_case(4)
    maps = np.full(masks.shape, value, np.float32)
    share = masks.reshape(len(masks), -1).mean(1)                       # |object| / n
    np.testing.assert_allclose(metrics.relevance_rank_accuracy(maps, masks=masks, reduce=None), share)
    np.testing.assert_allclose(metrics.top_k_intersection(maps, masks=masks, k=9, reduce=None), share)
    np.testing.assert_allclose(metrics.top_k_intersection(maps, masks=masks, k=9, concept_influence=True,
                                                          reduce=None), 1.0)
    np.testing.assert_allclose(metrics.mask_auc(maps, masks=masks, reduce=None), 0.5)
    np.testing.assert_allclose(metrics.pointing_game(maps, masks=masks, reduce=None), 0.0)   # points nowhere
    mass = share if value != 0 else 0.0                                  # no relevance at all: 0
    np.testing.assert_allclose(metrics.relevance_mass_accuracy(maps, masks=masks, reduce=None), mass)
    np.testing.assert_allclose(metrics.attribution_localization(maps, masks=masks, reduce=None), mass)
    np.testing.assert_allclose(metrics.focus_scores(maps, np.tile([1, 0, 0, 1], (len(maps), 1))),
                               0.5 if value > 0 else 0.0)


def test_ties_at_the_cut_count_their_expected_share():
    """Six positions, values (3, 2, 2, 2, 1, 1), object = positions 1 and 4: the top 2 are position 0
    and one of the three tied 2s (each with probability 1/3), so 1/3 of a hit on the object: 1/6."""
    maps = np.array([[3, 2, 2, 2, 1, 1]], np.float32)
    mask = np.array([[0, 1, 0, 0, 1, 0]], bool)
    assert metrics.top_k_intersection(maps, masks=mask, k=2) == pytest.approx((1 / 3) / 2)
    assert metrics.relevance_rank_accuracy(maps, masks=mask) == pytest.approx((1 / 3) / 2)
    # AUC with ties: pairs (in, out): 2 vs {3,2,2,1}: 0 + .5 + .5 + 1; 1 vs {3,2,2,1}: 0 + 0 + 0 + .5
    assert metrics.mask_auc(maps, masks=mask) == pytest.approx(2.5 / 8)


def test_positive_attribution_localization_drops_negative_relevance():
    maps = np.array([[[2.0, -4.0], [1.0, 1.0]]], np.float32)
    mask = np.array([[[True, True], [False, False]]])
    assert metrics.attribution_localization(maps, masks=mask) == pytest.approx(6 / 8)
    assert metrics.attribution_localization(maps, masks=mask, positive=True) == pytest.approx(2 / 4)


# --- Quantus 0.6, image by image ---------------------------------------------------------------

def quantus_values(name, maps, masks):
    quantus = pytest.importorskip("quantus")
    kw = dict(disable_warnings=True)
    q = {
        "pointing_game": (quantus.PointingGame(**kw), 100.0),
        "attribution_localization": (quantus.AttributionLocalisation(**kw), 1.0),
        "top_k_intersection": (quantus.TopKIntersection(k=7, **kw), 1.0),
        "relevance_rank_accuracy": (quantus.RelevanceRankAccuracy(**kw), 1.0),
        "relevance_mass_accuracy": (quantus.RelevanceMassAccuracy(**kw), 1.0),
        "mask_auc": (quantus.AUC(**kw), 1.0),
    }[name]
    n = len(maps)
    x = np.random.default_rng(1).random((n, 3) + maps.shape[1:]).astype(np.float32)
    out = q[0](model=None, x_batch=x, y_batch=np.zeros(n, int), a_batch=maps[:, None], s_batch=masks[:, None],
               channel_first=True)
    return np.asarray(out, np.float64) * q[1]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", [n for n in LOCAL if n != "energy_pointing_game"])
def test_agrees_with_quantus_per_image(name, seed):
    maps, masks = random_case(seed + 10, (16, 14), n=6)
    if name == "relevance_mass_accuracy":
        maps = np.abs(maps)       # Quantus divides by the max |a| first; a signed sum near 0 would amplify it
    np.testing.assert_allclose(call(name, maps, masks=masks, reduce=None), quantus_values(name, maps, masks),
                               rtol=1e-5, atol=1e-5)


def test_focus_agrees_with_quantus_on_the_same_maps_and_positions():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(5, 8, 10)).astype(np.float32)
    positions = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1]])
    x = rng.random((5, 3, 8, 10)).astype(np.float32)
    model = keras.Sequential([keras.Input((8, 10, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    q = quantus.Focus(disable_warnings=True)(model=model, x_batch=x, y_batch=np.zeros(5, int),
                                             a_batch=maps[:, None], custom_batch=positions, channel_first=True)
    np.testing.assert_allclose(metrics.focus_scores(maps, positions), q, rtol=1e-5, atol=1e-6)
    # by hand: the positive part on the marked quadrants over the positive part
    pos = np.maximum(maps, 0)
    quads = [pos[:, :4, :5], pos[:, :4, 5:], pos[:, 4:, :5], pos[:, 4:, 5:]]
    by_hand = sum(p[:, None, None] * qd for p, qd in zip(positions.T, quads)).sum((1, 2)) / pos.sum((1, 2))
    np.testing.assert_allclose(metrics.focus_scores(maps, positions), by_hand, rtol=1e-6)


# --- boxes and masks, evaluate -----------------------------------------------------------------

@pytest.mark.parametrize("name", LOCAL)
def test_boxes_and_their_masks_give_the_same_values(name):
    rng = np.random.default_rng(5)
    maps = np.abs(rng.normal(size=(4, 9, 11))).astype(np.float32)
    boxes = np.array([[0, 0, 4, 5], [2, 3, 9, 11], [1, 1, 2, 2], [3, 0, 8, 6]])
    masks = np.zeros(maps.shape, bool)
    for mask, (y0, x0, y1, x1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(call(name, maps, boxes=boxes, reduce=None),
                                  call(name, maps, masks=masks, reduce=None))
    # positional boxes, as pointing_game always took them
    np.testing.assert_array_equal(getattr(metrics, name)(maps, boxes, **({"k": 7} if "top_k" in name else {})),
                                  call(name, maps, masks=masks))


def test_masks_as_zeros_and_ones_read_as_booleans():
    maps, masks = random_case(6)
    np.testing.assert_array_equal(metrics.mask_auc(maps, masks=masks.astype(np.uint8), reduce=None),
                                  metrics.mask_auc(maps, masks=masks, reduce=None))


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LOCAL)
def test_bad_ground_truth_gets_a_clear_error(name):
    maps, masks = random_case(7)
    maps = np.abs(maps)                                   # the energy pointing game takes non-negative maps
    with pytest.raises(ValueError, match="pass `boxes=`.*or `masks=`"):
        call(name, maps)
    with pytest.raises(ValueError, match=r"`masks` must be \(N, \*S\) = \(5, 12, 10\).*received shape \(5, 6, 5\)"):
        call(name, maps, masks=masks[:, ::2, ::2])
    with pytest.raises(ValueError, match="drop the channel axis"):
        call(name, maps, masks=masks[..., None])
    with pytest.raises(ValueError, match="not both"):
        call(name, maps, masks=masks, boxes=np.zeros((5, 4), int))
    empty = masks.copy()
    empty[2] = False
    with pytest.raises(ValueError, match=r"masks of images \[2\] are empty"):
        call(name, np.abs(maps), masks=empty)
    with pytest.raises(ValueError, match="boolean"):
        call(name, maps, masks=masks * 0.5)
    with pytest.raises(ValueError, match="NaN"):
        call(name, np.where(masks, np.nan, maps), masks=masks)
    with pytest.raises(ValueError, match="`reduce` must be"):
        call(name, np.abs(maps), masks=masks, reduce="sum")


def test_metric_specific_errors():
    maps, masks = random_case(8)
    with pytest.raises(ValueError, match=r"`k` must be an int in \[1, 120\].*smaller k"):
        metrics.top_k_intersection(maps, masks=masks)                     # Quantus's k=1000 > 120 positions
    with pytest.raises(ValueError, match="`k` must be"):
        metrics.top_k_intersection(maps, masks=masks, k=0)
    full = np.ones_like(masks)
    with pytest.raises(ValueError, match="cover the whole map"):
        metrics.mask_auc(maps, masks=full)


# --- Focus on a model -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quadrant_model():
    """Class c's logit is the mean of channel c: an image whose tile is bright in channel c is of class c."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 2))
    conv = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")(inp)
    out = keras.layers.GlobalAveragePooling2D()(conv)
    model = keras.Model(inp, out)
    model.get_layer("conv").set_weights([np.eye(2, dtype=np.float32).reshape(1, 1, 2, 2)])
    return model


def class_images(labels, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.05, (len(labels), 8, 8, 2)).astype(np.float32)
    for i, c in enumerate(labels):
        x[i, ..., c] += 1.0
    return x


def test_focus_mosaics_hold_the_class_on_the_marked_tiles():
    labels = np.array([0, 0, 1, 1, 0, 1])
    x = class_images(labels)
    mosaics, targets, positions = metrics.focus_mosaics(x, labels, seed=3)
    assert mosaics.shape == x.shape and (targets == labels).all()
    assert (positions.sum(1) == 2).all()
    for mosaic, c, p in zip(mosaics, targets, positions):
        quads = [mosaic[:4, :4], mosaic[:4, 4:], mosaic[4:, :4], mosaic[4:, 4:]]
        bright = [int(q[..., c].mean() > 0.5) for q in quads]
        assert bright == p.tolist()
    # each tile is its image halved: the mean of 2x2 blocks keeps the image's mean
    np.testing.assert_allclose(mosaics.mean(axis=(1, 2)).sum(), x.mean(axis=(1, 2)).sum() * 1, rtol=0.1)
    again = metrics.focus_mosaics(x, labels, seed=3)
    np.testing.assert_array_equal(again[0], mosaics)


def test_focus_of_a_method_that_sees_the_class_is_one(quadrant_model):
    """The class-c logit is the mean of channel c, so Grad-CAM at the 1x1 conv is channel c itself:
    bright (about 1) on the class's two tiles, near 0 elsewhere: Focus close to 1, and the mean of
    per-image values; a batch size does not change it."""
    labels = np.array([0, 1, 0, 1, 1, 0])
    x = class_images(labels)
    explainer = kc.GradCAM(quadrant_model, "conv")
    values = metrics.focus(explainer, x, labels, reduce=None)
    assert values.shape == (6,) and (values > 0.9).all()
    mosaics, targets, positions = metrics.focus_mosaics(x, labels)
    np.testing.assert_allclose(values, metrics.focus_scores(explainer(mosaics, targets), positions), rtol=1e-6)
    np.testing.assert_allclose(metrics.focus(explainer, x, labels, batch_size=3), values.mean(), rtol=1e-6)


def test_focus_errors():
    x = class_images([0, 0, 1])
    with pytest.raises(ValueError, match=r"images \[2\] have none"):
        metrics.focus_mosaics(x, np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="even"):
        metrics.focus_mosaics(x[:, :7], np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="`labels` must be"):
        metrics.focus_mosaics(x, np.array([0.0, 0.0, 1.0]))


def test_evaluate_runs_the_localization_metrics_from_masks_and_boxes(quadrant_model):
    labels = np.array([0, 1, 0, 1])
    x = class_images(labels)
    boxes = np.array([[0, 0, 4, 4], [2, 2, 8, 8], [0, 4, 8, 8], [1, 1, 3, 7]])
    masks = np.zeros((4, 8, 8), bool)
    for mask, (y0, x0, y1, x1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = True
    names = ["attribution_localization", "relevance_rank_accuracy", "relevance_mass_accuracy", "mask_auc",
             "top_k_intersection", "focus"]
    chosen = {n: {} for n in names}
    chosen["top_k_intersection"] = {"k": 5}
    maps = kc.GradCAM(quadrant_model, "conv")(x, labels)
    by_mask = metrics.evaluate({"g": kc.GradCAM(quadrant_model, "conv")}, quadrant_model, x, labels,
                               masks=masks, metrics=chosen, ci=None)
    by_box = metrics.evaluate({"g": kc.GradCAM(quadrant_model, "conv")}, quadrant_model, x, labels,
                              boxes=boxes, metrics=chosen, ci=None)
    for n in names[:-1]:
        expected = getattr(metrics, n)(maps, masks=masks, **chosen[n], reduce=None)
        np.testing.assert_allclose(by_mask.values("g", n), expected, rtol=1e-6)
        np.testing.assert_allclose(by_box.values("g", n), expected, rtol=1e-6)
    assert by_mask.rows[0]["focus"] == pytest.approx(by_box.rows[0]["focus"])
    with pytest.raises(ValueError, match=r"localization metrics \['mask_auc'\].*pass `boxes=`"):
        metrics.evaluate({"g": kc.GradCAM}, quadrant_model, x, metrics=["mask_auc"])
    with pytest.raises(ValueError, match=r"maps of method 'fixed' must be \(N, \*S\) = \(4, 8, 8\).*\(4, 4, 4\)"):
        metrics.evaluate({"fixed": np.zeros((4, 4, 4))}, quadrant_model, x, metrics=["sparseness"])
    with pytest.raises(ValueError, match="NaN"):
        metrics.evaluate({"fixed": np.full((4, 8, 8), np.nan)}, quadrant_model, x, metrics=["sparseness"])

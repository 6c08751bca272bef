"""The audit on a generated family of planted shortcuts (issue 22), and its verification by intervention.

The family (:mod:`keras_cam.demo.shortcuts`): four classes of faint gratings,
a share of class 0's training images carrying an artifact (a corner patch, a
frame, a moving text-like tag, a colour cast), the other classes clean
controls, tiny models trained in seconds. The audited images are fresh, half
of class 0's marked. The truth is the ``marked`` mask; the numbers (F1,
levels, effects) are checked against it and against hand computations.
"""

import dataclasses
import json
import os
import time

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import _compat, backend
from keras_cam.audit import core, hotspots
from keras_cam.audit import verify as interventions
from keras_cam.demo.run import f1_score
from keras_cam.demo.shortcuts import (FEATURE_LAYER, KINDS, SHARES, artifact_region, build_shortcut_model,
                                      draw_artifact, learned, make_shortcut_dataset, reliance, shortcut_model,
                                      target_misses)

# The family's models are trained here, with the Keras under test: each test mode trains its own
# models from the same seeds (the backends draw other initial weights), so the four modes audit four
# independently trained families. The cnn seed-0 family runs in every mode, and each of its cases must
# meet issue 22's target there (test_the_marked_images_form_...). The tests that hold other
# configurations' numbers (the held-out residual models, other seeds, the report and the
# CLI on the family's models) were built and validated on Keras 3 / TensorFlow and run there only.
# The hand computations and the bad-input tests below run in every mode.
family_mode = pytest.mark.skipif(
    _compat.LEGACY or backend.name() != "tensorflow",
    reason="these configurations' numbers are validated on Keras 3 / TensorFlow's trained models only")
MODE = "legacy" if _compat.LEGACY else backend.name()

N_AUDIT = 240
# Every case of the family meets issue 22's target in every test mode (docs/audit.md, "The family on
# every backend"), with 0, 0, 0 and 1 of 36 clean classes raising an alarm (Keras 3, JAX, PyTorch,
# legacy tf-keras).
_EVERY = [(kind, share) for kind in KINDS for share in SHARES]


def _audit_case(kind, share, architecture="cnn", seed=0):
    model = shortcut_model(kind, share, architecture, seed)
    images, labels, marked, boxes = make_shortcut_dataset(kind, N_AUDIT, seed=7 + seed, share=0.5)
    cam = kc.GradCAM(model, layer=FEATURE_LAYER)
    with np.errstate(all="ignore"):
        result = kc.audit(cam, images, labels, boxes=boxes, verbose=0)
    return result, images, labels, marked, boxes


@pytest.fixture(scope="module")
def family():
    """Every kind x share of the cnn family (seed 0): the audit, the truth, and a row of numbers."""
    rows, cases = [], {}
    for kind in KINDS:
        for share in SHARES:
            shortcut_model(kind, share, "cnn", 0)              # trained (and cached) before the clock starts
            start = time.perf_counter()
            result, images, labels, marked, boxes = _audit_case(kind, share)
            seconds = time.perf_counter() - start              # the dataset and the audit, with its verifications
            first = result.of_class(0)[0]
            check = result.verify(first, n_members=32, n_others=32, n_random=3, seed=0)
            cases[kind, share] = (result, images, labels, marked, check)
            rows.append({"kind": kind, "share": share, "f1": f1_score(first.indices, marked),
                         "rank": int(np.argmax([f1_score(c.indices, marked) for c in result.of_class(0)])) + 1,
                         "score": first.score, "level": first.level, "suspicious": first.suspicious,
                         "evidence": first.evidence,
                         "removal": check.removal.mean, "removal_low": check.removal.low,
                         "transplant": check.transplant.mean, "verdict": check.verdict, "seconds": seconds})
    out = os.environ.get("KERAS_CAM_FAMILY_TABLE")
    if out:  # the table docs/audit.md shows (docs/audit.md, "The family of planted shortcuts")
        with open(out, "w") as f:
            json.dump(rows, f, indent=1)
    return cases, rows


@pytest.mark.parametrize("kind,share", _EVERY)
def test_the_marked_images_form_the_first_group_and_the_model_depends_on_them(family, kind, share):
    cases, _ = family
    result, images, labels, marked, check = cases[kind, share]
    assert not target_misses(kind, result, images, marked, check)


def test_a_place_groups_pixels_lie_on_its_artifact(family):
    """A "where" group of the marked class intervenes on the pixels that stand out from other classes'
    images near its hotspot, grown to the whole artifact: they lie on the artifact, and cover a fixed
    one whole (in the modes whose marked groups are places: the patch and the frame on Keras 3, the
    patch and the tag on legacy tf-keras; JAX's and PyTorch's are all "what" groups, whose pixels the
    test above checks through the target)."""
    cases, _ = family
    for (kind, share), (result, images, labels, marked, check) in cases.items():
        first = result.of_class(0)[0]
        if first.evidence != "where":
            continue
        truth = artifact_region(kind, images, marked)[marked].any(axis=0)
        assert first.pixels is not None, (kind, share)
        assert np.mean(truth[first.pixels]) >= 0.9, (kind, share)
        if kind != "tag":    # a fixed artifact is covered whole (a moving tag's places, where most of them fall)
            assert first.pixels.sum() >= 0.9 * truth.sum(), (kind, share)
        np.testing.assert_array_equal(check.region, first.pixels)


def test_clean_classes_rarely_raise_an_alarm(family):
    cases, _ = family
    clean = [c for result, *_ in cases.values() for k in (1, 2, 3) for c in result.of_class(k)[:1]]
    alarms = sum(c.suspicious for c in clean)
    assert len(clean) == 3 * len(cases) and alarms <= len(clean) / 20, alarms


def test_the_level_is_spread_out_on_clean_classes(family):
    """Over the family's clean classes (many seeds of data and models), the level is not piled at 0."""
    cases, _ = family
    levels = np.array([result.of_class(k)[0].level for result, *_ in cases.values() for k in (1, 2, 3)])
    assert np.all((levels > 0) & (levels <= 1))
    assert np.median(levels) >= 0.1 and np.mean(levels <= hotspots.ALPHA) <= 0.25, np.sort(levels)


def test_clean_groups_show_no_dependence(family):
    """The clean classes' first groups of the 50 % datasets (every kind) show no dependence. The audits
    have the objects' boxes, so each region is compared with random places on as much of the object:
    without them, 16 of PyTorch's 36 clean first groups (images whose object sits in one place), and 4
    of JAX's 36, 6 of legacy tf-keras's 36 and 4 of Keras 3 / TensorFlow's 35, "depended" on a region
    lying on the object (docs/audit.md, "The family on every backend")."""
    cases, _ = family
    for kind in KINDS:
        result = cases[kind, 0.5][0]
        for k in (1, 2, 3):
            check = result.verify(result.of_class(k)[0], n_members=32, n_others=32, n_random=3, seed=0)
            assert check.matched, (kind, k)
            assert check.verdict == interventions.VERDICT_NONE, (kind, k, check.removal, check.transplant)


# The cnn seed-0 models at 20 % and 50 % that did not learn the gratings beside the artifact, per mode
# (measured; docs/audit.md, "The family on every backend"): JAX's patch at 50 % is right on 7 % of
# class 3, legacy tf-keras's tag at 50 % on 54 % of class 0's unmarked images.
NOT_LEARNED = {"jax": {("patch", 0.5): "right on 52 %, 100 %, 66 % and 7 % of the four classes"},
               "legacy": {("tag", 0.5): "right on 54 % of class 0's unmarked images"}}.get(MODE, {})


def _learning_cases():
    for kind in KINDS:
        for share in SHARES[:-1]:
            why = NOT_LEARNED.get((kind, share))
            marks = [pytest.mark.xfail(reason=f"{MODE}: {why}", strict=True)] if why else []
            yield pytest.param("cnn", 0, kind, share, marks=marks)
    yield pytest.param("residual", 1, "patch", 0.5, marks=family_mode)  # the held-out residual patch


@pytest.mark.parametrize("architecture,seed,kind,share", list(_learning_cases()))
def test_the_family_learns_the_object_beside_the_artifact(architecture, seed, kind, share):
    """The issue's setting: at 20 % and 50 % a family model is right on the clean classes and on the
    marked class's images *without* the artifact (it learned the gratings), and on the marked images
    (it uses the artifact too). Chance is 1/4. (The 100 % models may learn the artifact alone.)"""
    per_class, on_marked = learned(shortcut_model(kind, share, architecture, seed), kind, seed)
    assert per_class.min() >= 0.6 and on_marked >= 0.9, (kind, share, per_class, on_marked)


@family_mode
def test_held_out_cases_residual_architecture():
    """Cases kept aside while the audit was built: the other architecture, another seed."""
    for kind, share in (("patch", 0.5), ("tag", 1.0)):
        result, images, labels, marked, _ = _audit_case(kind, share, "residual", seed=1)
        first = result.of_class(0)[0]
        assert f1_score(first.indices, marked) >= 0.8, (kind, share)
        assert first.suspicious, (kind, share, first.level, first.score)


@family_mode
@pytest.mark.parametrize("architecture,seed,share", [("cnn", 3, 0.2), ("cnn", 2, 0.5)])
def test_colour_cast_verifies_on_other_seeds(architecture, seed, share):
    """The colour cast on seeds where it was found but not verified while the verification removed and
    pasted a region ("no dependence shown"; removal and transplant effects -0.88 and -1.03 logits on
    cnn seed 3 at 20 %, -0.05 and 0.11 on cnn seed 2 at 50 %): an image-wide group is verified on its
    channel means, and the case now meets the whole target (docs/audit.md: all 12 cast cases over cnn
    seeds 0, 2, 3 and residual seed 1 where the cast is found)."""
    result, images, labels, marked, _ = _audit_case("cast", share, architecture, seed=seed)
    first = result.of_class(0)[0]
    assert first.image_wide
    check = result.verify(first, n_members=32, n_others=32, n_random=3, seed=0)
    assert not target_misses("cast", result, images, marked, check)
    assert check.region.all() and check.offset is not None
    # The cast raises red and lowers blue: the group's offset says so.
    assert check.offset[0] > 0 > check.offset[2], check.offset
    # Removing the cast lowers the class score more than a random offset of its size, and adding it raises it.
    assert check.removal.region > check.removal.random and check.transplant.region > check.transplant.random
    # The members are distinct: their median lies many standard deviations of the other-class images'
    # channel means from the rest's median, along the offset whitened by those images' covariance S
    # (a ridge of a thousandth of its mean variance).
    means = lambda idx: images[idx].astype(np.float64).mean(axis=(1, 2))    # noqa: E731
    cov = np.cov(means(check.others).T)
    e = np.linalg.inv(cov + 1e-3 * np.trace(cov) / 3 * np.eye(3)) @ check.offset
    along = lambda idx: means(idx) @ (e / np.linalg.norm(e))    # noqa: E731
    distinct = (np.median(along(check.members)) - np.median(along(check.rest))) / np.std(along(check.others), ddof=1)
    assert check.distinct == pytest.approx(distinct, rel=1e-5)
    assert check.distinct >= interventions.MIN_DISTINCT


# Untrained models on data with no shortcut: every alarm would be false. Before the distinctness rule,
# an image-wide "what" group (a class split into its brighter and darker images, on which an untrained
# model's score rises) was "proven" on 28 of 99 classes (`python bench/bench_audit.py --null-study`,
# seeds 0-7 of both architectures); seeds 8 and 9 are this test's, 10-13 were kept aside. There, on
# Keras 3, "residual" seed 13's noise raised one alarm: a "where" group whose region's verification
# (p 0.0017) carried its level, though no pixel of it stands out; it is this test's too (14-17 are
# the new kept-aside seeds).
@pytest.mark.parametrize("architecture,seed", [("cnn", 8), ("residual", 9), ("residual", 13)])
def test_untrained_models_on_data_without_shortcuts_raise_no_alarm(architecture, seed):
    _compat.keras.utils.set_random_seed(seed)
    model = build_shortcut_model(architecture)
    images, labels, _, boxes = make_shortcut_dataset("patch", N_AUDIT, seed=7 + seed, share=0.0)
    rng = np.random.default_rng([seed, 0x0015E])
    noise = rng.random(images.shape).astype(np.float32)
    for x, y in ((images, labels), (noise, rng.integers(0, 4, N_AUDIT))):
        with np.errstate(all="ignore"):
            result = kc.audit(kc.GradCAM(model, layer=FEATURE_LAYER), x, y, boxes=boxes, verbose=0)
        raised = [(c.target, c.evidence, c.level, c.tests) for c in result.clusters if c.suspicious]
        assert not raised, raised


# --- hand computations -----------------------------------------------------------------------


def test_reliance_equals_a_hand_computation():
    """``reliance``: a model blind to the patch's corner does not lean on it (0, 0); a linear softmax
    model of the corner's pixels leans on it by exactly the log-probability its weights give."""
    keras = _compat.keras
    inputs = keras.Input((32, 32, 3))
    blind = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(
        keras.layers.Flatten()(keras.layers.Cropping2D(12)(inputs))))
    assert reliance(blind, "patch", seed=3, n=40) == (0.0, 0.0)
    corner = keras.layers.Dense(4, activation="softmax")
    linear = keras.Model(inputs, corner(keras.layers.Flatten()(keras.layers.Cropping2D(((3, 23), (3, 23)))(inputs))))
    rng = np.random.default_rng(0)
    corner.set_weights([rng.normal(0, 0.3, (108, 4)).astype(np.float32), np.zeros(4, np.float32)])
    images, labels, _, _ = make_shortcut_dataset("patch", 40, seed=77 + 3, share=0.0)
    others = images[labels != 0].astype(np.float64)
    pasted = others.copy()
    for image in pasted:
        draw_artifact(image, "patch")
    w = corner.get_weights()[0].astype(np.float64)

    def log_p0(x):
        z = x[:, 3:9, 3:9, :].reshape(len(x), -1) @ w
        return z[:, 0] - np.log(np.exp(z).sum(axis=1))

    def top(x):
        return (x[:, 3:9, 3:9, :].reshape(len(x), -1) @ w).argmax(axis=1)

    rise, moved = reliance(linear, "patch", seed=3, n=40)
    assert rise == pytest.approx(np.mean(log_p0(pasted) - log_p0(others)), abs=1e-4)
    assert moved == pytest.approx(np.mean((top(pasted) == 0) & (top(others) != 0)))


def test_hotspot_score_and_group_equal_a_hand_computation():
    rng = np.random.default_rng(3)
    n, g = 40, 6
    maps = rng.uniform(0, 0.05, (n, g, g))
    for i in range(n):                                  # a blob anywhere
        y, x = rng.integers(0, g - 1, 2)
        maps[i, y:y + 2, x:x + 2] += 1.0
    maps[:20, 0, 5] += 2.0                              # half the images share a spot
    x = (maps / np.linalg.norm(maps.reshape(n, -1), axis=1)[:, None, None]).reshape(n, -1)
    found = hotspots.find(x, (g, g), seed=0, permutations=19)
    # By hand: shares, 1x1..3x3 window sums, tails above the 20 % quantile capped at their 90 %
    # quantile, relative profile.
    q = maps.reshape(n, -1) / maps.reshape(n, -1).sum(axis=1, keepdims=True)
    wins = []
    for s in (1, 2, 3):
        for y in range(g - s + 1):
            for xx in range(g - s + 1):
                wins.append(q.reshape(n, g, g)[:, y:y + s, xx:xx + s].sum(axis=(1, 2)))
    e = np.stack(wins, axis=1)
    excess = np.maximum(e - np.quantile(e, 0.2, axis=0), 0)
    tail = np.minimum(excess, np.quantile(excess, 0.9, axis=0)).mean(axis=0)    # shared by >= 10 %
    np.testing.assert_allclose(hotspots.profile(hotspots.tails(hotspots.window_energies(q, (g, g)))),
                               tail / tail.mean(), rtol=1e-10)
    assert found.region[0, 5] and found.level <= 0.05 and found.score > 1
    energy = q @ found.region.ravel()
    np.testing.assert_allclose(found.energy, energy)
    v = np.sort(energy)
    best = max(range(1, n), key=lambda k: k * (n - k) * (v[k:].mean() - v[:k].mean()) ** 2)
    np.testing.assert_array_equal(found.members, energy > (v[best - 1] + v[best]) / 2)
    assert f1_score(np.flatnonzero(found.members), np.arange(n) < 20) >= 0.9   # a few blobs fall near the spot
    # Step 8: the square roots of the energy shares split into two parts (each at least 30 % of the
    # 40 images: 12).
    v = np.sort(np.sqrt(energy))
    split = max(j * (n - j) * (v[j:].mean() - v[:j].mean()) ** 2 / n ** 2 / v.var() for j in range(12, n - 11))
    assert found.split == pytest.approx(split, rel=1e-10)
    null = hotspots.uniform_null(n, 1)
    assert found.split_level == pytest.approx((1 + np.sum(null >= split)) / (1 + len(null)))
    assert found.level == max(found.place_level, found.split_level)


def test_what_statistic_equals_a_hand_computation():
    rng = np.random.default_rng(5)
    n = 30
    a = rng.normal(size=(n, 4))
    a[:12, 2] += 6.0                                    # 12 images carry extra evidence on channel 2
    scores = rng.normal(size=n)
    scores[:12] += 3.0                                  # ... and the model scores them higher
    eta, threshold = hotspots.channel_splits(a, least=0.3)
    # By hand: every split of each sorted column with at least ceil(0.3 * 30) = 9 values on each side.
    for k in range(4):
        v = np.sort(a[:, k])
        best = max(j * (n - j) * (v[j:].mean() - v[:j].mean()) ** 2 / n ** 2 / v.var() for j in range(9, n - 8))
        assert eta[k] == pytest.approx(best, rel=1e-10)
    found = hotspots.find_what(a, scores, seed=0)
    assert found.channel == 2 and found.high and found.score == pytest.approx(eta[2])
    np.testing.assert_array_equal(found.members, a[:, 2] > threshold[2])
    np.testing.assert_array_equal(found.members, np.arange(n) < 12)
    null = hotspots.uniform_null(n, 4)
    assert found.level == pytest.approx((1 + np.sum(null >= found.score)) / (1 + len(null)))
    assert found.level <= hotspots.ALPHA / 2
    # The group is the part the model scores higher: with the scores reversed, the low part.
    flipped = hotspots.find_what(a, -scores, seed=0)
    np.testing.assert_array_equal(flipped.members, ~found.members)
    # The null's eta2 for one uniform column tends to 3/4 (the split at the middle: (1/2)^2 / (1/3)).
    assert np.mean(hotspots.uniform_null(200, 1)) == pytest.approx(0.75, abs=0.01)
    assert hotspots.combined_level(0.01, 0.3) == 0.02 and hotspots.combined_level(None, 0.6) == 1.0
    assert hotspots.combined_level(None, None) is None


def test_what_level_is_conservative_on_unimodal_channels():
    """Columns drawn from unimodal distributions (skewed, heavy-tailed or flat) rarely reach the
    combined threshold: the uniform null is the least favourable unimodal one."""
    rng = np.random.default_rng(1)
    for draw in (rng.normal, rng.exponential, rng.uniform, rng.lognormal):
        levels = np.array([hotspots.find_what(draw(size=(60, 32)), rng.normal(size=60), seed=s).level
                           for s in range(20)])
        assert np.mean(levels <= hotspots.ALPHA / 2) <= 1 / 20, (draw.__name__, np.sort(levels)[:4])


@pytest.fixture(scope="module")
def linear_case():
    """A model whose class score is linear in the pixels: the verification's numbers by hand."""
    from keras_cam._compat import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(2, 1, use_bias=False, kernel_initializer="ones", name="conv")(inputs)
    x = keras.layers.Flatten()(conv)
    out = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, out)
    w = np.zeros((128, 2), np.float32)
    w[0::2, 1] = np.linspace(-1, 1, 64)                   # class 1: a linear read of the pixels
    w[0::2, 0] = 0.1
    model.get_layer("head").set_weights([w, np.zeros(2, np.float32)])
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (24, 8, 8, 1)).astype(np.float32)
    labels = np.arange(24) % 2
    result = kc.audit(kc.GradCAM(model, layer="conv"), images, labels, verbose=0, n_neighbors=3)
    return model, images, labels, result


def test_pooled_features_are_each_channels_mean_then_its_maximum(linear_case):
    """"What" reads each channel of the explained layer pooled two ways: its mean over positions (a
    feature spread over the image) and its maximum (a small feature wherever it sits)."""
    from keras_cam._compat import keras
    from keras_cam.audit import core

    model, images, labels, result = linear_case
    pooled, scores = core.class_features(result.explainer, images, batch_size=16)
    a = keras.Model(model.inputs, model.get_layer("conv").output).predict(images, verbose=0)
    assert core.POOLINGS == ("mean", "max")
    np.testing.assert_allclose(pooled, np.concatenate([a.mean(axis=(1, 2)), a.max(axis=(1, 2))], axis=1), rtol=1e-5)
    np.testing.assert_allclose(scores, model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)


def test_pixels_that_differ_equal_a_hand_computation():
    """A "what" group's verification pixels: where the members stray from the rest's mean image more
    than the rest do (a robust z-score over the pixels); a moving black-or-white mark is found though
    its mean is the grey it sits on, and a change of every pixel alike (a colour cast) is found nowhere."""
    from keras_cam.audit import core

    rng = np.random.default_rng(2)
    rest = np.clip(0.5 + rng.normal(0, 0.05, (20, 12, 12, 3)), 0, 1)
    members = np.clip(0.5 + rng.normal(0, 0.05, (16, 12, 12, 3)), 0, 1)
    for i in range(16):                                  # black or white, at one of two places
        y = 2 + (i % 2)
        members[i, y:y + 2, 7:9] = float(i % 4 < 2)
    mu = rest.mean(axis=0)
    p = np.sqrt(((members - mu) ** 2).sum(-1)).mean(0) - np.sqrt(((rest - mu) ** 2).sum(-1)).mean(0)
    median = np.median(p)
    mad = np.median(np.abs(p - median))
    expected = p > median + interventions.PIXEL_CONTRAST * 1.4826 * mad
    chosen = interventions.pixels_that_differ(members, rest)
    np.testing.assert_array_equal(chosen, expected)
    mark = np.zeros((12, 12), bool)
    mark[2:5, 7:9] = True
    np.testing.assert_array_equal(chosen, mark)
    assert np.abs(members[:, 2:5, 7:9].mean() - 0.5) < 0.2           # the mark's mean is near the grey
    cast = np.clip(rest[:16] + np.array([0.15, 0.0, -0.15]), 0, 1)
    assert not interventions.pixels_that_differ(cast, rest).any()


def test_artifact_pixels_grow_to_the_whole_connected_artifact():
    """A frame whose channel fires along its left side only: the pixels near that side that stand out
    grow to the whole frame (its connected part), and a separate mark far from the region is left out."""
    from keras_cam.audit import core

    rng = np.random.default_rng(3)
    rest = np.clip(0.5 + rng.normal(0, 0.05, (24, 16, 16, 3)), 0, 1)
    members = np.clip(0.5 + rng.normal(0, 0.05, (24, 16, 16, 3)), 0, 1)
    frame = np.zeros((16, 16), bool)
    frame[:1], frame[-1:], frame[:, :1], frame[:, -1:] = True, True, True, True
    mark = np.zeros((16, 16), bool)
    mark[7:9, 7:9] = True
    members[:, frame] = 1.0
    members[:, mark] = 0.0
    region = np.zeros((4, 4), bool)            # grid cells of 4 x 4 pixels: the left column of cells
    region[:, 0] = True
    pixels, chosen = core.artifact_pixels(region, members, rest, reach=0)
    np.testing.assert_array_equal(chosen, frame | mark)
    np.testing.assert_array_equal(pixels, frame)              # all 60 frame pixels, not the 16 near the left
    inner = np.zeros((4, 4), bool)
    inner[1:3, 1:3] = True                     # the cells around the mark: its part only
    np.testing.assert_array_equal(core.artifact_pixels(inner, members, rest, reach=0)[0], mark)
    assert core.artifact_pixels(region, rest[:12], rest[12:], reach=0)[0] is None     # nothing stands out


def _check_verdict(check, members, others, distinct=None):
    """The verdict by hand: both intervals' lower ends above a tenth of the pooled standard deviation
    of the class score within the members and within the other-class images as they were (their class
    scores ``members`` and ``others``): the root of the two groups' squared deviations from their own
    means, over all of their images. An image-wide check also needs its offset's distinctness
    ``distinct`` (computed by the caller) to be at least 3."""
    members, others = (np.asarray(v, np.float64) for v in (members, others))
    squares = np.sum((members - members.mean()) ** 2) + np.sum((others - others.mean()) ** 2)
    sigma = np.sqrt(squares / (len(members) + len(others)))
    assert check.spread == pytest.approx(sigma, rel=1e-5)
    depends = check.removal.low > 0.1 * sigma and check.transplant.low > 0.1 * sigma
    if distinct is not None:
        assert check.distinct == pytest.approx(distinct, rel=1e-5)
        depends = depends and distinct >= 3
        if distinct < 3:
            assert check.level == 1.0
    assert check.verdict == (interventions.VERDICT_DEPENDS if depends else interventions.VERDICT_NONE)
    assert check.to_dict()["threshold"].startswith("both 95% confidence intervals above 0.1 x")
    return sigma


def test_verification_equals_a_hand_computation(linear_case):
    model, images, labels, result = linear_case
    before = images.copy()
    group = result.of_class(1)[0]
    region = np.zeros((8, 8), bool)
    region[0:3, 5:8] = True
    check = result.verify(group, region=region, n_members=6, n_others=5, n_random=2, seed=4, noise=0.0)
    np.testing.assert_array_equal(images, before)                               # nothing written over
    score = lambda x: model.predict(x, verbose=0)[:, 1]                          # noqa: E731
    m, o = check.members, check.others
    shifted = check.random_regions
    removed = kc.metrics.impute(images[m], np.broadcast_to(region, (len(m), 8, 8)), noise=0.0)
    rand = np.stack([kc.metrics.impute(images[m], shifted[:len(m), j], noise=0.0) for j in range(2)], axis=1)
    r = np.mean([score(rand[:, j]) for j in range(2)], axis=0) - score(removed)
    from scipy.stats import t
    half = t.ppf(0.975, len(r) - 1) * r.std(ddof=1) / np.sqrt(len(r))
    assert check.removal.mean == pytest.approx(r.mean(), abs=1e-4)
    assert check.removal.low == pytest.approx(r.mean() - half, abs=1e-4)
    donors = images[m][np.arange(len(o)) % len(m)]
    pasted = np.where(region[None, ..., None], donors, images[o])
    rand_pasted = [np.where(shifted[:len(o), j, ..., None], donors, images[o]) for j in range(2)]
    tr = score(pasted) - np.mean([score(p) for p in rand_pasted], axis=0)
    assert check.transplant.mean == pytest.approx(tr.mean(), abs=1e-4)
    assert check.transplant.region == pytest.approx(np.mean(score(pasted) - score(images[o])), abs=1e-4)
    sigma = _check_verdict(check, result.scores[m], score(images[o]))
    # The verification's level: each effect's one-sided t test of "at most a tenth of sigma", the larger p.
    floor = 0.1 * sigma
    p = [t.sf((d.mean() - floor) / (d.std(ddof=1) / np.sqrt(len(d))), len(d) - 1) for d in (r, tr)]
    assert check.level == pytest.approx(max(p), rel=1e-3, abs=1e-9)
    assert check.depends == (check.level < 0.025) and check.to_dict()["level"] == check.level
    # The same seed gives the same numbers.
    again = result.verify(group, region=region, n_members=6, n_others=5, n_random=2, seed=4, noise=0.0)
    assert again.removal == check.removal and again.transplant == check.transplant


@pytest.mark.parametrize("size", [(8, 8), (5, 7), (12, 20), (32, 32)])
def test_pixel_region_keeps_every_cell_of_a_grid_finer_than_the_pixels(size):
    """A grid region at the pixels' size: each pixel is in the region where any cell it covers is (by
    brute force over the cells' spans); on a coarser grid each pixel takes the cell it falls in."""
    rng = np.random.default_rng(5)
    cells = rng.random((16, 16)) < 0.05
    h, w = size
    out = interventions.pixel_region(cells, size)
    if h >= 16 and w >= 16:
        expected = np.array([[cells[i * 16 // h, j * 16 // w] for j in range(w)] for i in range(h)])
    else:
        expected = np.array([[cells[i * 16 // h:-(-(i + 1) * 16 // h), j * 16 // w:-(-(j + 1) * 16 // w)].any()
                              for j in range(w)] for i in range(h)])
    np.testing.assert_array_equal(out, expected)
    assert out.any()


def test_a_groups_own_region_needs_content_its_members_share(linear_case):
    """A group's own region verifies as "depends" only where some pixel of it stands out in the members
    against the other-class images: on these noise images the maps chose the region, and nothing is
    shared there. The same region given by hand is tested as it is, with the same effects."""
    model, images, labels, result = linear_case
    # The first group with a region (a class whose maps are all alike is kept whole: class 1 on PyTorch).
    group = next(c for c in result.clusters if c.region is not None and c.size >= 2)
    check = result.verify(group, n_members=6, n_others=5, n_random=2, seed=4, noise=0.0)
    m, o = check.members, check.others
    mu = images[o].astype(np.float64).mean(axis=0)
    p = np.abs(images[m] - mu)[..., 0].mean(axis=0) - np.abs(images[o] - mu)[..., 0].mean(axis=0)
    median = np.median(p)
    stand = p > median + 6.0 * 1.4826 * np.median(np.abs(p - median))
    assert check.stands_out == bool((stand & check.region).any()) and check.stands_out is False
    assert check.level == 1.0 and check.verdict == interventions.VERDICT_NONE and not check.depends
    assert check.to_dict()["stands_out"] is False
    hand = result.verify(group, region=check.region, n_members=6, n_others=5, n_random=2, seed=4, noise=0.0)
    assert hand.stands_out is None and hand.to_dict()["stands_out"] is None
    assert hand.removal == check.removal and hand.transplant == check.transplant
    assert hand.level == interventions.level(hand.removal, hand.transplant, hand.spread) < 1.0
    _check_verdict(hand, result.scores[m], model.predict(images[o], verbose=0)[:, group.target])
    # Members that carry a mark at the region share content there; a region beside the mark does not.
    marked = images[m].copy()
    marked[:, 1:3, 1:3] = 3.0
    at = np.zeros((8, 8), bool)
    at[0:3, 0:3] = True
    assert interventions.stands_out(at, marked, images[o]) and not interventions.stands_out(~at, marked, images[o])


def _check_matched(regions, region, objects, tolerance=interventions.MATCH_TOLERANCE):
    """By brute force over every circular shift: each of row r's regions is a shift of ``region`` that
    overlaps it by less than half and covers as much of ``objects[r % n]`` as ``region`` does, to within
    ``tolerance * |R|`` (or within the gap of the closest shifts where too few are that close)."""
    h, w = region.shape
    area = region.sum()
    shifts = {(dy, dx): np.roll(region, (dy, dx), axis=(0, 1)) for dy in range(h) for dx in range(w)}
    admissible = {d: r for d, r in shifts.items() if np.sum(r & region) < 0.5 * area}
    for row in range(len(regions)):
        obj = objects[row % len(objects)]
        target = np.sum(region & obj)
        gaps = sorted(abs(np.sum(r & obj) - target) / area for r in admissible.values())
        limit = max(tolerance, gaps[regions.shape[1] - 1])
        for moved in regions[row]:
            assert any(np.array_equal(moved, r) for r in admissible.values())
            assert abs(np.sum(moved & obj) - target) / area <= limit + 1e-12


def test_the_level_combines_the_statistics_and_the_candidates_verifications(linear_case):
    """Each class's level is the Bonferroni level over the statistics and the verification of its
    candidate groups: "what" always (a gradient explainer), "where" only with objects given. Each
    verification's p equals Audit.verify's level on an audit whose group is that candidate. Half of
    class 0's noise images carry a bright mark, content its group shares (on noise alone no pixel of a
    group's region stands out, and every verification's level is 1 by the rule)."""
    model, images, labels, result = linear_case
    cam = result.explainer
    images = images.copy()
    images[0::4, 5:7, 5:7] = 2.0
    result = kc.audit(cam, images, labels, verbose=0, n_neighbors=3)
    boxes = np.tile([2, 2, 6, 6], (len(images), 1))
    with np.errstate(all="ignore"):
        forced = {(e, b): kc.audit(cam, images, labels, verbose=0, n_neighbors=3, evidence=e,
                                   boxes=boxes if b else None) for e in ("where", "what") for b in (False, True)}
        boxed = kc.audit(cam, images, labels, verbose=0, n_neighbors=3, boxes=boxes)
        plain = kc.audit(cam, images, labels, verbose=0, n_neighbors=3, verify=False)
    checked = 0
    for audited, with_boxes in ((result, False), (boxed, True)):
        for k in (0, 1):
            first = audited.of_class(k)[0]
            if first.level is None:       # a class kept whole (all its maps alike on some backends): no test
                continue
            kinds = ("where", "what") if with_boxes else ("what",)
            assert set(first.tests) == {"where", "what"} | {f"verified {e}" for e in kinds}
            assert first.level == pytest.approx(min(1.0, len(first.tests) * min(first.tests.values())))
            assert first.tests["where"] == plain.of_class(k)[0].tests["where"]
            for e in kinds:
                other = forced[e, with_boxes]
                group = other.of_class(k)[0]
                try:
                    p = dataclasses.replace(other, verifications={}).verify(group).level
                except ValueError:        # a candidate with no region to intervene on counts as 1
                    p = 1.0
                assert first.tests[f"verified {e}"] == pytest.approx(p, rel=1e-6, abs=1e-12)
                checked += p < 1.0
    # The comparison saw a real verification: a candidate of class 0, the marked images.
    assert checked >= 1
    assert plain.verifications == {} and all(c.level is None or set(c.tests) == {"where", "what"}
                                             for c in plain.clusters)
    with pytest.raises(TypeError, match="`verify` must be True or False"):
        kc.audit(cam, images, labels, verbose=0, verify="yes")


def test_a_kept_verification_serves_only_its_group_as_it_is(linear_case):
    """Audit.verify returns the audit's own verification of a group only for that group, unchanged and
    with the same options: a reordered cluster list, an edited region or other options verify anew."""
    model, images, labels, result = linear_case
    with np.errstate(all="ignore"):
        audited = kc.audit(result.explainer, images, labels, verbose=0, n_neighbors=3, evidence="what")
    assert audited.verifications                              # the audit kept its group's verification
    position, kept = next(iter(audited.verifications.items()))
    group = audited.clusters[position]
    assert audited.verify(group) is kept
    fresh = dataclasses.replace(audited, verifications={}).verify(group)
    assert fresh is not kept and fresh.removal == kept.removal and fresh.transplant == kept.transplant
    assert audited.verify(group, n_random=2) is not kept
    moved = dataclasses.replace(audited, clusters=list(reversed(audited.clusters)),
                                verifications=dict(audited.verifications))
    again = moved.verify(group)
    assert again is not kept and again.target == group.target
    cell = np.zeros_like(group.region)
    cell[0, 0] = True
    edited_group = dataclasses.replace(group, region=cell, pixels=None, image_wide=False)
    edited = dataclasses.replace(audited, clusters=[edited_group if c is group else c for c in audited.clusters],
                                 verifications=dict(audited.verifications))
    assert edited.verify(edited_group).region.sum() < kept.region.sum()


def test_matched_regions_cover_as_much_of_the_object_as_the_region():
    rng = np.random.default_rng(5)
    region = np.zeros((12, 10), bool)
    region[2:5, 3:7] = True
    objects = np.zeros((4, 12, 10), bool)
    for i, (y, x) in enumerate([(1, 2), (0, 0), (6, 4), (3, 5)]):    # boxes, some over the region
        objects[i, y:y + 6, x:x + 5] = True
    objects[0, 0:9, 1:10] = True                                  # a large object around the region
    overlaps = interventions.shift_overlaps(region, objects)
    for i in range(4):
        for dy, dx in [(0, 0), (3, 7), (11, 1), (5, 9)]:
            assert overlaps[i, dy, dx] == np.sum(np.roll(region, (dy, dx), axis=(0, 1)) & objects[i])
    regions = interventions.matched_regions(region, objects, 6, 3, rng)
    assert regions.shape == (6, 3, 12, 10)
    _check_matched(regions, region, objects)
    # Member 2's object misses the region: its random places miss its object too; member 0's region is
    # on its object (12 pixels), and so are its random places (within 10 % of 12 pixels).
    assert not (regions[2] & objects[2]).any()
    assert all(abs(np.sum(r & objects[0]) - 12) <= 1.2 for r in regions[0])
    again = interventions.matched_regions(region, objects, 6, 3, np.random.default_rng(5))
    np.testing.assert_array_equal(regions, again)
    with pytest.raises(ValueError, match="no room for random regions"):
        interventions.matched_regions(np.ones((4, 4), bool), objects[:, :4, :4], 2, 1, rng)


def test_verification_with_boxes_compares_with_places_on_as_much_of_the_object(linear_case):
    """With boxes, the verification's random regions are matched to each member's object, and the
    effects are the same hand computation on them."""
    model, images, labels, _ = linear_case
    rng = np.random.default_rng(1)
    corners = rng.integers(0, 4, (len(images), 2))
    boxes = np.concatenate([corners, corners + 4], axis=1)
    result = kc.audit(kc.GradCAM(model, layer="conv"), images, labels, boxes=boxes, verbose=0, n_neighbors=3)
    group = result.of_class(1)[0]
    region = np.zeros((8, 8), bool)
    region[0:3, 5:8] = True
    check = result.verify(group, region=region, n_members=6, n_others=5, n_random=2, seed=4, noise=0.0)
    m, o = check.members, check.others
    objects = np.zeros((len(m), 8, 8), bool)
    for j, i in enumerate(m):
        objects[j, boxes[i, 0]:boxes[i, 2], boxes[i, 1]:boxes[i, 3]] = True
    assert check.matched and check.to_dict()["random_regions"] == "matched to the object"
    _check_matched(check.random_regions, region, objects)
    score = lambda x: model.predict(x, verbose=0)[:, 1]                          # noqa: E731
    shifted = check.random_regions
    removed = kc.metrics.impute(images[m], np.broadcast_to(region, (len(m), 8, 8)), noise=0.0)
    rand = np.stack([kc.metrics.impute(images[m], shifted[:len(m), j], noise=0.0) for j in range(2)], axis=1)
    r = np.mean([score(rand[:, j]) for j in range(2)], axis=0) - score(removed)
    assert check.removal.mean == pytest.approx(r.mean(), abs=1e-4)
    donors = images[m][np.arange(len(o)) % len(m)]
    pasted = np.where(region[None, ..., None], donors, images[o])
    rand_pasted = [np.where(shifted[:len(o), j, ..., None], donors, images[o]) for j in range(2)]
    tr = score(pasted) - np.mean([score(p) for p in rand_pasted], axis=0)
    assert check.transplant.mean == pytest.approx(tr.mean(), abs=1e-4)
    whole = kc.metrics.impute(images[m], objects, noise=0.0)
    assert check.object_drop == pytest.approx(np.mean(result.scores[m] - score(whole)), abs=1e-4)
    _check_verdict(check, result.scores[m], score(images[o]))
    # Masks that draw the same boxes give the same verification.
    masks = np.zeros((len(images), 8, 8), bool)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    masked = kc.audit(kc.GradCAM(model, layer="conv"), images, labels, masks=masks, verbose=0, n_neighbors=3)
    same = masked.verify(masked.of_class(1)[0], region=region, n_members=6, n_others=5, n_random=2, seed=4,
                         noise=0.0)
    np.testing.assert_array_equal(same.random_regions, check.random_regions)
    assert same.removal == check.removal and same.transplant == check.transplant
    # Without boxes the random regions are not matched, and the report says what that means.
    plain = linear_case[3]
    assert not plain.verify(plain.of_class(1)[0], region=region, n_random=2).matched
    from keras_cam.audit.report import render

    assert "Random places anywhere" in render(plain) and "Random places anywhere" not in render(result)


def test_boxes_outside_the_image_are_refused(linear_case):
    """Boxes in another image's pixels (here twice the size) or empty would silently clip: refused."""
    model, images, labels, _ = linear_case
    cam = kc.GradCAM(model, layer="conv")
    good = np.tile([[1, 1, 5, 6]], (len(images), 1))
    for wrong, row in ((good * 2, 0), (np.concatenate([good[:3], [[4, 2, 4, 6]], good[4:]]), 3)):
        with pytest.raises(ValueError, match=rf"`boxes` row {row} .*leaves the 8x8 image"):
            kc.audit(cam, images, labels, boxes=wrong, verbose=0, n_neighbors=3)
    assert kc.audit(cam, images, labels, boxes=np.tile([[0, 0, 8, 8]], (len(images), 1)), verbose=0,
                    n_neighbors=3).boxes.shape == (len(images), 4)


def test_a_channels_first_audit_takes_masks_and_boxes_at_the_images_height_and_width():
    """An NCHW model's masks are (n, H, W), as a channels-last model's: its audit and verification
    give the channels-last twin's numbers (the masks were refused, read against (C, H))."""
    from keras_cam._compat import keras

    keras.utils.set_random_seed(3)
    h, w = 10, 12
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="target")
    head = keras.layers.Dense(2, name="head")
    first = keras.Input((3, h, w))
    nchw = keras.layers.Permute((3, 1, 2), name="nchw")(conv(keras.layers.Permute((2, 3, 1))(first)))
    cf = keras.Model(first, head(keras.layers.GlobalAveragePooling2D(data_format="channels_first")(nchw)))
    last = keras.Input((h, w, 3))
    cl = keras.Model(last, head(keras.layers.GlobalAveragePooling2D()(conv(last))))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (24, h, w, 3)).astype(np.float32)
    labels = np.arange(24) % 2
    masks = np.zeros((24, h, w), bool)
    masks[:, 2:8, 3:9] = True
    region = (0, 0, 4, 4)
    checks = []
    for model, x, layer in ((cf, np.moveaxis(images, -1, 1), "nchw"), (cl, images, "target")):
        cam = kc.GradCAM(model, layer=layer, data_format="channels_first" if model is cf else None)
        result = kc.audit(cam, x, labels, masks=masks, verbose=0, n_neighbors=3)
        checks.append(result.verify(result.of_class(0)[0], region=region, n_members=6, n_others=5, n_random=2,
                                    seed=1, noise=0.0))
        with pytest.raises(ValueError, match=f"leaves the {h}x{w} image"):
            kc.audit(cam, x, labels, boxes=np.tile([[0, 0, h, w + 1]], (24, 1)), verbose=0, n_neighbors=3)
    assert checks[0].matched and checks[0].region.shape == (h, w)
    np.testing.assert_array_equal(checks[0].random_regions, checks[1].random_regions)
    assert checks[0].removal.mean == pytest.approx(checks[1].removal.mean, abs=1e-4)
    assert checks[0].transplant.mean == pytest.approx(checks[1].transplant.mean, abs=1e-4)


def test_verification_reuses_the_audits_class_scores(linear_case, monkeypatch):
    """The audit keeps every image's class scores (read with "what"'s features); the verification scores
    only the changed images with them, and gives the numbers it gives when it scores the other-class
    images again."""
    import dataclasses

    from keras_cam.audit import core

    model, images, labels, result = linear_case
    np.testing.assert_allclose(result.logits, model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    scored = []
    real = core.class_scores
    monkeypatch.setattr(core, "class_scores", lambda e, x, b=64: scored.append(len(x)) or real(e, x, b))
    group = result.of_class(1)[0]
    region = np.zeros((8, 8), bool)
    region[0:3, 5:8] = True
    kw = dict(region=region, n_members=6, n_others=5, n_random=2, seed=4, noise=0.0)
    reused = result.verify(group, **kw)
    m, o = len(reused.members), len(reused.others)
    assert sum(scored) == m * (1 + 2) + o * (1 + 2)
    scored.clear()
    again = dataclasses.replace(result, logits=None, verifications={}).verify(group, **kw)
    assert sum(scored) == m * (1 + 2) + o * (2 + 2)           # the other-class images scored again
    for a, b in ((reused.removal, again.removal), (reused.transplant, again.transplant)):
        for field in ("mean", "low", "high", "region", "random"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), abs=1e-5), field
    assert reused.verdict == again.verdict
    # Past LOGITS_KEPT numbers the audit keeps no class scores, and the verification scores them itself.
    monkeypatch.setattr(core, "LOGITS_KEPT", result.logits.size - 1)
    capped = kc.audit(result.explainer, images, labels, verbose=0, n_neighbors=3)
    assert capped.logits is None
    scored.clear()
    check = capped.verify(capped.of_class(1)[0], **kw)
    assert sum(scored) == len(check.members) * (1 + 2) + len(check.others) * (2 + 2)


def test_image_wide_verification_equals_a_hand_computation(linear_case, tmp_path):
    """A group that differs from the rest of its class at no place (a colour cast) is verified on the
    images' per-channel means: members moved to the rest's means, the group's mean offset added to
    other-class images, each against offsets of the same size in random directions."""
    model, images, labels, result = linear_case
    before = images.copy()
    group = result.of_class(1)[0]
    assert not group.image_wide          # the linear case's groups differ at places
    group.image_wide = True              # as _channel_region marks a group whose images differ nowhere
    try:
        check = result.verify(group, n_members=6, n_others=5, n_random=2, seed=4)
        again = result.verify(group, n_members=6, n_others=5, n_random=2, seed=4)
    finally:
        group.image_wide = False
    np.testing.assert_array_equal(images, before)                               # nothing written over
    score = lambda x: model.predict(x, verbose=0)[:, 1]                          # noqa: E731
    m, o, rest = check.members, check.others, check.rest
    assert check.region.all() and check.random_regions is None
    pool = set(np.flatnonzero(labels == 1)) - set(group.indices)                  # the rest of the class,
    pool = pool if len(pool) >= 2 else set(np.flatnonzero(labels != 1))          # else the other classes
    assert set(rest) <= pool and len(rest) == min(6, len(pool))
    mu = lambda x: x.mean(axis=(1, 2))                                            # noqa: E731  (n, C)
    rho = mu(images[rest]).mean(axis=0)
    delta = mu(images[m]).mean(axis=0) - rho
    np.testing.assert_allclose(check.offset, delta, atol=1e-6)
    u, v = check.random_offsets
    assert u.shape == (len(m), 2, 1) and v.shape == (len(o), 2, 1)
    np.testing.assert_allclose(np.linalg.norm(u, axis=-1), np.abs(rho - mu(images[m]))[:, [0, 0]], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), np.full((len(o), 2), np.abs(delta[0])), atol=1e-6)
    used = images[np.concatenate([m, o, rest])]
    clip = lambda x: np.clip(x, used.min(), used.max())                          # noqa: E731
    removed = clip(images[m] - mu(images[m])[:, None, None, :] + rho)
    rand = [clip(images[m] + u[:, j, None, None, :]) for j in range(2)]
    r = np.mean([score(x) for x in rand], axis=0) - score(removed)
    from scipy.stats import t
    half = t.ppf(0.975, len(r) - 1) * r.std(ddof=1) / np.sqrt(len(r))
    assert check.removal.mean == pytest.approx(r.mean(), abs=1e-4)
    assert check.removal.low == pytest.approx(r.mean() - half, abs=1e-4)
    assert check.removal.region == pytest.approx(np.mean(result.scores[m] - score(removed)), abs=1e-4)
    pasted = clip(images[o] + delta)
    tr = score(pasted) - np.mean([score(clip(images[o] + v[:, j, None, None, :])) for j in range(2)], axis=0)
    assert check.transplant.mean == pytest.approx(tr.mean(), abs=1e-4)
    assert check.transplant.region == pytest.approx(np.mean(score(pasted) - score(images[o])), abs=1e-4)
    # The distinctness: the members' median channel mean minus the rest's, along the offset (one channel
    # here, so along the offset's sign), over the other-class images' spread of channel means.
    along = lambda idx: mu(images[idx])[:, 0].astype(np.float64) * np.sign(delta[0])    # noqa: E731
    distinct = (np.median(along(m)) - np.median(along(rest))) / np.std(along(o), ddof=1)
    _check_verdict(check, result.scores[m], score(images[o]), distinct)
    assert check.to_dict()["intervention"] == "image-wide channel means"
    assert check.to_dict()["distinct"] == pytest.approx(distinct, rel=1e-5)
    # The same seed gives the same numbers.
    assert again.removal == check.removal and again.transplant == check.transplant
    # The report and clusters.json say what was intervened on.
    saved = json.loads(json.dumps(result.to_dict()))["clusters"][result.clusters.index(group)]
    assert saved["image_wide"] is False and saved["verification"]["offset"] == pytest.approx(list(delta), abs=1e-6)
    page = open(result.save_html(str(tmp_path / "audit.html")), encoding="utf-8").read()
    assert "channel-mean offset removed" in page and "random offsets" in page
    assert f"{distinct:.2f}</td>" in page                                          # the distinctness row
    assert ("under 3: a split of the class" in page) == (distinct < 3)


def test_verify_rejects_bad_input_and_writes_nothing(linear_case):
    model, images, labels, result = linear_case
    before = images.copy()
    done = dict(result.verifications)
    other = kc.audit(result.explainer, images, labels, verbose=0, n_neighbors=3)
    with pytest.raises(ValueError, match="not one of this audit's clusters"):
        result.verify(other.clusters[0])
    with pytest.raises(ValueError, match="not a cluster position"):
        result.verify(99)
    shuffled = images[::-1].copy()
    with pytest.raises(ValueError, match="do not match the audited images"):
        result.verify(result.clusters[0], images=shuffled)
    with pytest.raises(ValueError, match="holds 5 images"):
        result.verify(result.clusters[0], images=images[:5])
    with pytest.raises(ValueError, match="not inside the 8x8 image"):
        result.verify(result.clusters[0], region=(0, 4, 3, 12))
    with pytest.raises(ValueError, match="mask has shape"):
        result.verify(result.clusters[0], region=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="must keep some pixels"):
        result.verify(result.clusters[0], region=np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="n_random"):
        result.verify(result.clusters[0], n_random=0)
    for wrong in (True, "0", 1.0, None):
        with pytest.raises(TypeError, match="must be a Cluster of this audit"):
            result.verify(wrong)
    for wrong in (float("nan"), float("inf"), -0.1, "0.01"):
        with pytest.raises(ValueError, match="`noise` must be a finite number"):
            result.verify(result.clusters[0], noise=wrong)
    head = model.get_layer("head")
    kept = head.get_weights()
    head.set_weights([kept[0] + 0.5, kept[1]])             # trained further after the audit
    try:
        with pytest.raises(ValueError, match="changed since this audit"):
            result.verify(result.clusters[0])
    finally:
        head.set_weights(kept)
    np.testing.assert_array_equal(images, before)
    np.testing.assert_array_equal(shuffled, before[::-1])
    assert result.verifications == done                  # failed calls record nothing


def test_a_class_kept_whole_has_no_region_to_verify_and_verify_first_skips_it(linear_case):
    model, images, labels, _ = linear_case
    few = labels.copy()
    few[:] = 0
    few[[1, 3, 5]] = 1                                   # class 1: three images, kept as one cluster
    with pytest.warns(UserWarning, match="3 image"):
        result = kc.audit(kc.GradCAM(model, layer="conv"), images, few, verbose=0, n_neighbors=3)
    small = result.of_class(1)[0]
    assert small.size == 3 and small.region is None and small.level is None and not small.suspicious
    with pytest.raises(ValueError, match="class 1, 3 images.*kept whole.*region="):
        result.verify(small)
    assert 1 not in result.verify_first(n_random=2) and set(result.verifications) == {0}
    # With a region given, it is verified like any group.
    check = result.verify(small, region=(0, 0, 4, 4), n_random=2)
    assert list(check.members) == [1, 3, 5]


@pytest.mark.skipif(backend.name() != "tensorflow", reason="reads a tf.data.Dataset")
def test_a_dataset_audit_verifies_with_the_images_given(linear_case):
    import tensorflow as tf

    model, images, labels, _ = linear_case
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    result = kc.audit(kc.GradCAM(model, layer="conv"), dataset, verbose=0, n_neighbors=3)
    with pytest.raises(ValueError, match="pass `images=`"):
        result.verify(result.clusters[0])
    a = result.verify(result.clusters[0], images=dataset, seed=1, n_random=2)
    b = result.verify(result.clusters[0], images=images, seed=1, n_random=2)
    assert a.removal == b.removal and a.transplant == b.transplant
    saved = result.to_dict()
    assert saved["clusters"][0]["verification"]["verdict"] == a.verdict
    json.dumps(saved)


# --- the report and the command line --------------------------------------------------------


@family_mode
def test_report_shows_levels_verdicts_and_verifications_in_a_browser(family, tmp_path):
    from playwright.sync_api import sync_playwright

    result = family[0]["patch", 0.5][0]
    assert 0 in {result.clusters[i].target for i in result.verifications}       # the fixture verified class 0
    path = result.save_html(str(tmp_path / "audit.html"))
    page_text = open(path, encoding="utf-8").read()
    quiet = [k for k in range(4) if not result.suspicious(k)]
    assert quiet and all(f"No suspicious group in class {k}" in page_text for k in quiet)
    assert "Suspicious group in class 0" in page_text
    saved = json.loads(json.dumps(result.to_dict()))
    verified = [c for c in saved["clusters"] if c["verification"] is not None]
    assert len(verified) == len(result.verifications)
    assert all(c["verification"]["removal"]["n"] >= 2 for c in verified)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_context(offline=True).new_page()
            page.goto(f"file://{path}")
            page.wait_for_load_state("load")
            sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
            pictures = page.eval_on_selector_all("div.verification", "els => els.map(e => e.querySelectorAll('img').length)")
        finally:
            browser.close()
    assert all(done and width > 0 for done, width in sizes)
    assert pictures == [4] * len(result.verifications)


@family_mode
def test_cli_audit_verify(tmp_path, capsys):
    import cv2

    from keras_cam import cli

    model = shortcut_model("patch", 0.5, "cnn", 0)
    images, labels, marked, boxes = make_shortcut_dataset("patch", 80, seed=9, share=0.5)
    folder = tmp_path / "images"
    folder.mkdir()
    rows, box_rows = ["file,label"], ["image,y0,x0,y1,x1"]
    for i in range(len(images)):
        cv2.imwrite(str(folder / f"im{i:03d}.png"), np.rint(images[i, ..., ::-1] * 255).astype(np.uint8))
        rows.append(f"im{i:03d}.png,{labels[i]}")
        box_rows.append(f"im{i:03d}.png," + ",".join(str(int(v)) for v in boxes[i]))
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "boxes.csv").write_text("\n".join(box_rows) + "\n")
    model.save(str(tmp_path / "m.keras"))
    args = ["audit", str(folder), "--model", str(tmp_path / "m.keras"), "--labels", str(tmp_path / "labels.csv"),
            "--preprocess", "scale", "--layer", FEATURE_LAYER, "--neighbors", "5", "--quiet", "--verify"]
    for out_dir, extra in (("out", []), ("boxed", ["--boxes", str(tmp_path / "boxes.csv")])):
        assert cli.main(args + ["--out", str(tmp_path / out_dir)] + extra) == 0
        out = capsys.readouterr().out
        assert out.count("verification:") == 4
        saved = json.load(open(tmp_path / out_dir / "clusters.json"))
        firsts = {}
        for c in saved["clusters"]:
            firsts.setdefault(c["target"], c)
        assert all(c["verification"] is not None for c in firsts.values())
        assert firsts[0]["verification"]["verdict"] == interventions.VERDICT_DEPENDS
        # With --boxes, the random places are matched to the objects, as from Python.
        expected = "matched to the object" if extra else "random places"
        assert all(c["verification"]["random_regions"] == expected for c in firsts.values() if not c["image_wide"])
    # The boxes reach the audit: the same numbers as keras_cam.audit with them.
    direct = kc.audit(kc.GradCAM(model, layer=FEATURE_LAYER), np.rint(images * 255) / 255, labels, boxes=boxes,
                      n_neighbors=5, verbose=0)
    assert [c["outside_energy"] for c in saved["clusters"]] == pytest.approx(
        [c.outside_energy for c in direct.clusters], abs=1e-3)
    assert cli.main(args + ["--out", str(tmp_path / "bad"), "--boxes", str(tmp_path / "labels.csv")]) == cli.EXIT_ERROR
    assert "image,y0,x0,y1,x1" in capsys.readouterr().err and not (tmp_path / "bad").exists()


# --- evidence=: the statistic that forms each class's group ----------------------------------


@pytest.fixture(scope="module")
def forced():
    """The demo's shortcut model audited three times, once per `evidence`, with the class features
    read by a pass of their own (class_features) for the hand computation."""
    from keras_cam.demo import TARGET_LAYER, load_shortcut_model, make_dataset

    images, labels, _, _ = make_dataset(120, seed=11, watermark=(0, 0.5))
    cam = kc.GradCAM(load_shortcut_model(), layer=TARGET_LAYER)
    runs = {evidence: kc.audit(cam, images, labels, evidence=evidence, verbose=0) for evidence in core.EVIDENCE}
    return cam, images, labels, runs


def test_evidence_forms_the_group_from_the_statistic_it_names(forced):
    cam, images, labels, runs = forced
    pooled, _ = core.class_features(cam, images)
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        scores = runs["auto"].scores[members]
        maps = runs["auto"].maps[members].reshape(len(members), -1)
        # By hand: each statistic's group, from the maps and the features alone.
        groups = {"where": members[hotspots.find(maps, runs["auto"].maps.shape[1:], seed=0).members],
                  "what": members[hotspots.find_what(pooled[members], scores, seed=0).members]}
        firsts = {evidence: result.of_class(k)[0] for evidence, result in runs.items()}
        for evidence in ("where", "what"):
            assert firsts[evidence].evidence == evidence
            np.testing.assert_array_equal(firsts[evidence].indices, groups[evidence])
        np.testing.assert_array_equal(firsts["auto"].indices, groups[firsts["auto"].evidence])
        # The level does not depend on which statistic formed the group.
        assert len({first.level for first in firsts.values()}) == 1
        # Every run still partitions the class.
        for result in runs.values():
            np.testing.assert_array_equal(np.sort(np.concatenate([c.indices for c in result.of_class(k)])), members)


def test_evidence_is_checked(forced):
    cam, images, labels, _ = forced
    with pytest.raises(ValueError, match="`evidence` must be one of 'auto', 'where', 'what'; received 'who'"):
        kc.audit(cam, images, labels, evidence="who", verbose=0)
    with pytest.raises(ValueError, match="SpRAy"):
        kc.audit(cam, images, labels, n_clusters=3, evidence="what", verbose=0)
    with pytest.raises(ValueError, match="does not read"):
        kc.audit(kc.Occlusion(cam.model), images, labels, evidence="what", verbose=0)
    from keras_cam import cli

    audit_parser = next(a for a in cli.build_parser()._subparsers._group_actions).choices["audit"]
    assert tuple(next(a for a in audit_parser._actions if a.dest == "evidence").choices) == core.EVIDENCE


def test_evidence_what_keeps_where_when_no_channel_varies(forced, monkeypatch):
    """A class none of whose channels varies has no "what" group (find_what gives None): asked for
    "what", it keeps its "where" group instead of failing."""
    cam, images, labels, runs = forced
    monkeypatch.setattr(hotspots, "find_what", lambda *args, **kwargs: None)
    result = kc.audit(cam, images, labels, evidence="what", verbose=0)
    for k in np.unique(labels):
        first, where = result.of_class(k)[0], runs["where"].of_class(k)[0]
        assert first.evidence == "where"
        np.testing.assert_array_equal(first.indices, where.indices)


@family_mode
@pytest.mark.parametrize("kind", ["tag", "cast"])
def test_the_20_percent_cases_the_statistics_miss_are_proven_by_intervention(kind):
    """The two 20 % cases of "cnn" seed 0 whose statistics stay above the threshold (the tag's level
    1.0, the cast's 0.26): without the audit's own verification they raise no alarm and their group is
    not the marked images; with it (the default), the "what" candidate's verification proves the
    marked images, and the level is the Bonferroni level over the four tests."""
    model = shortcut_model(kind, 0.2, "cnn", 0)
    images, labels, marked, boxes = make_shortcut_dataset(kind, N_AUDIT, seed=7, share=0.5)
    cam = kc.GradCAM(model, layer=FEATURE_LAYER)
    with np.errstate(all="ignore"):
        statistics = kc.audit(cam, images, labels, boxes=boxes, verify=False, verbose=0).of_class(0)[0]
        result = kc.audit(cam, images, labels, boxes=boxes, verbose=0)
        what = kc.audit(cam, images, labels, boxes=boxes, evidence="what", verbose=0)
    assert not statistics.suspicious and f1_score(statistics.indices, marked) < 0.8
    assert set(statistics.tests) == {"where", "what"}
    first = result.of_class(0)[0]
    assert first.suspicious and first.proven and first.evidence == "what"
    np.testing.assert_array_equal(first.indices, what.of_class(0)[0].indices)
    # The proof is the verification of the "what" group, recomputed here through Audit.verify.
    fresh = dataclasses.replace(what, verifications={}).verify(what.of_class(0)[0])
    assert first.tests["verified what"] == pytest.approx(fresh.level, rel=1e-6)
    assert first.tests["where"] == statistics.tests["where"] and first.tests["what"] == statistics.tests["what"]
    assert first.level == pytest.approx(min(1.0, 4 * min(first.tests.values())))
    check = result.verify(first)
    assert check is result.verifications[result.clusters.index(first)]     # the audit's own, reused
    assert not target_misses(kind, result, images, marked, check)


def test_a_significant_but_tiny_effect_is_not_a_dependence():
    """The verdict's floor: both lower ends above MIN_EFFECT (0.1) x the class score's standard deviation
    pooled within the members and within the other-class images."""
    def effect(low):
        return interventions.Effect(low + 0.1, low, low + 0.2, 10, 0.0, 0.0)

    base = np.array([0.0, 2.0])                    # the members' class-1 scores
    before = np.array([[5.0, 0.0], [5.0, 2.0]])    # the other-class images' scores: class 1 is 0 and 2
    assert interventions.dependence(effect(0.15), effect(0.15), base, before, 1) == (True, 1.0)
    assert interventions.dependence(effect(0.05), effect(0.15), base, before, 1) == (False, 1.0)
    assert interventions.dependence(effect(0.15), effect(0.05), base, before, 1) == (False, 1.0)
    assert interventions.dependence(effect(0.15), effect(0.15), 10 * base, 10 * before, 1) == (False, 10.0)
    # The spread is within the two groups: a gap between the members' scores and the others' (the class
    # the model tells apart) does not raise the floor.
    assert interventions.dependence(effect(0.15), effect(0.15), base + 40.0, before, 1) == (True, 1.0)
    uneven = np.array([0.0, 4.0, 0.0, 4.0])        # variance 4 over 4 members, 1 over 2 others: (16 + 2) / 6
    assert interventions.dependence(effect(0.15), effect(0.15), uneven, before, 1)[1] == pytest.approx(np.sqrt(3.0))


@family_mode
def test_clean_classes_forced_groups_show_no_dependence():
    """The clean classes of the corner patch at 50 % ("cnn" seed 0), with "what" forced: two of their
    groups show small effects with both intervals above 0 (removal 0.21 and 0.06 logits), under a
    tenth of the class score's spread, so none is called a dependence."""
    model = shortcut_model("patch", 0.5, "cnn", 0)
    images, labels, _, _ = make_shortcut_dataset("patch", N_AUDIT, seed=7, share=0.5)
    with np.errstate(all="ignore"):
        result = kc.audit(kc.GradCAM(model, layer=FEATURE_LAYER), images, labels, evidence="what", verbose=0)
    small = 0
    for k in (1, 2, 3):
        check = result.verify(result.of_class(k)[0], n_members=32, n_others=32, n_random=3, seed=0)
        assert check.verdict == interventions.VERDICT_NONE, (k, check.removal, check.transplant, check.spread)
        small += check.removal.low > 0 and check.transplant.low > 0
    assert small >= 1        # the floor, not the intervals, decides at least once here

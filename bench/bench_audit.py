"""The dataset audit's cost: over the maps alone, and the clustering at scale.

    python bench/bench_audit.py [--images 2000] [--maps 100000] [--repeat 3] [--model demo|mobilenetv2]
    python bench/bench_audit.py --what-study [--configurations cnn:0,cnn:2,residual:1]
    KERAS_BACKEND=jax python bench/bench_audit.py --family-study [--configurations cnn:0] [--no-boxes]
    python bench/bench_audit.py --null-study [--configurations cnn:0,...,residual:7] [--no-boxes]
    python bench/bench_audit.py --jitter-study [--configurations cnn:0,residual:1]
    python bench/bench_audit.py --novel-study [--configurations cnn:0,cnn:1,residual:0,residual:1]

``--family-study`` (no timing): the family audited as
tests/test_audit_shortcuts.py audits it (the default evidence, the objects'
boxes given; ``--no-boxes`` leaves them out), on the backend ``KERAS_BACKEND``
names (each backend trains its own models): each case against issue 22's
target (``shortcuts.target_misses``), and every clean class's first group:
its alarm, and whether its verification says "depends" (docs/audit.md, "The
family on every backend").

``--null-study`` (no timing): audits where no class carries a shortcut, so
every alarm is a false one. Each configuration's architecture, *untrained*
(``build_shortcut_model``, Keras seeded with the seed), explains two datasets
of 240 images: the family's images with no artifact (``share=0``) and
uniform noise with random labels; then the architecture *trained* on the
family with no artifact (``train_shortcut_model("patch", 0.0, ...)``)
explains the first. With the family's boxes (``--no-boxes`` leaves them
out). Each class's first
group: its alarm, its level and the tests' own levels (docs/audit.md,
"Known false alarms").

``--jitter-study`` (no timing): the family's cast where every image also gets
a random colour offset (each channel drawn with standard deviation 0.05 or
0.1: a natural spread of colour), the model trained on such images. For each
configuration and spread: how far the model leans on the cast (drawn into
100 other-class images: the share of predictions moved to class 0 and the
mean rise of log p(class 0)), the audit's first group of class 0 (F1 against
the marked images, level, alarm), and its "what" group's verification
(``evidence="what"``): the distinctness ``d`` and the verdict (docs/audit.md,
"False alarms on models with no shortcut").

``--novel-study`` (no timing): shortcuts *outside* the family, built after the
audit and never tuned on: a dark line across the whole width (fixed row), a
red 3 x 3 dot anywhere, a 7 x 7 patch of fresh binary noise at a fixed place,
a brighter image, dark soft corners, and a green hollow square at one of two
fixed places (:data:`NOVEL_KINDS`), drawn into 20 % or 50 % of class 2's
training images of the family's clean data (``share=0``) with the family's
architectures. For each case: how far the model leans on the artifact (drawn
into other classes' images: the share of predictions moved to class 2), then
the audit (with boxes) of 240 images of which half of class 2 is marked:
class 2's first group against the marked images (F1, level, alarm, its
verification) and the clean classes' alarms (docs/audit.md, "Shortcuts
outside the family").

``--what-study`` (no timing): the planted-shortcut family (by default "cnn"
seeds 0 and 2 and "residual" seed 1, the configurations the verdict's floor
was chosen on; "cnn:3,residual:2" were kept aside; every kind and share)
audited with ``evidence="what"``,
each class's group verified (``Audit.verify``, 32 members, 32 other-class
images, 3 random regions): the marked group's F1, and for every class its
level, the removal and transplant effects and the verdict, then how many
marked and clean classes say "depends" (docs/audit.md, "Asking for what").

With ``--model mobilenetv2`` (an untrained ``keras.applications.MobileNetV2``
at 96 x 96, ``weights=None``: no download) the images are the planted-shortcut
family's (``keras_cam.demo.shortcuts``, scaled up 3x), and the audit is
timed together with the verification of each class's first group
(``Audit.verify_first``). Issue 22's target: the audit's own work beyond the
maps, ``(audit - maps + verify_first) / maps``, at most 1.5.

1. **Audit / maps.** ``--images`` demo images (``make_dataset(..., watermark=(0, 0.5))``)
   and the planted-shortcut demo model's Grad-CAM. Timed interleaved in the
   same run, each the median of ``--repeat`` runs after a warm-up run:
   ``explain_dataset`` alone, with the very settings the audit uses (maps at
   the layer's 16 x 16, normalized: the reference), and the whole
   ``keras_cam.audit`` (the same maps, the grid, SpRAy per class, the scores,
   the second reading for accuracy and thumbnails). The same pair again with
   boxes (the audit then upsamples the maps to measure the outside energy;
   the reference upsamples too). Target: audit / maps <= 1.3.
2. **Clustering alone.** ``--maps`` synthetic 16 x 16 maps, all of one class
   (the worst case: one graph over all of them): blobs at six fixed places
   (six "strategies") and blobs anywhere (a continuum), with noise. Timed:
   :func:`keras_cam.audit.spray.to_grid`, :func:`~keras_cam.audit.spray.cluster`
   and :func:`~keras_cam.audit.spray.cluster_scores`, once, in a child
   process whose peak resident memory (``ru_maxrss``) is reported next to
   its resident memory before clustering (Python, TensorFlow, the maps).
   Targets: <= 60 s, peak <= 2 GB.
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved, table  # noqa: E402

_CHILD = r"""
import json, os, resource, sys, time
import numpy as np
from keras_cam.audit import spray

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

n, seed = int(sys.argv[1]), 0
rng = np.random.default_rng(seed)
yy, xx = np.mgrid[0:16, 0:16].astype(np.float32)
places = np.array([(2, 2), (2, 13), (13, 2), (13, 13), (8, 8), (8, 2)], np.float32)
kind = rng.integers(0, 8, n)                       # 0-5: a strategy's fixed place; 6-7: anywhere
centres = np.where((kind < 6)[:, None], places[np.minimum(kind, 5)] + rng.normal(0, 0.8, (n, 2)),
                   rng.uniform(1, 15, (n, 2))).astype(np.float32)
maps = np.empty((n, 16, 16), np.float32)
for start in range(0, n, 10000):
    c = centres[start:start + 10000]
    d2 = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2
    maps[start:start + 10000] = np.exp(-d2 / 6.0) + 0.05 * rng.uniform(size=d2.shape)
maps /= maps.max(axis=(1, 2), keepdims=True)
before = rss_mb()
t0 = time.perf_counter()
x = spray.to_grid(maps, (16, 16))
from keras_cam.audit import hotspots
t1h = time.perf_counter()
hot = hotspots.find(x, (16, 16), seed=seed)     # the default path (n_clusters="auto")
hot_s = time.perf_counter() - t1h
t1b = time.perf_counter()                      # SpRAy (n_clusters=int)
found = spray.cluster(x, seed=seed)
t2 = time.perf_counter()
rated = spray.cluster_scores(x, found.labels, found.affinity)
t3 = time.perf_counter()
t1 = t1b
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"grid_s": t1h - t0, "hotspot_s": hot_s, "cluster_s": t2 - t1, "scores_s": t3 - t2,
                  "total_s": (t1h - t0) + hot_s, "spray_total_s": (t1h - t0) + (t3 - t1b),
                  "before_mb": before, "peak_mb": peak, "n_clusters": found.n_clusters,
                  "eigenvalues": [round(float(v), 4) for v in found.eigenvalues]}))
"""


def verify_ratio(n_images, repeat, model_name, epochs=0, with_boxes=False):
    """(audit - maps + verification of each class's first group) / maps, on a real-sized model: MobileNetV2
    at 96 x 96, untrained (``weights=None``) or trained ``epochs`` on the images (then its channels vary,
    and the audit verifies its "what" candidates itself); with the objects' boxes or without."""
    import tensorflow as tf

    import keras_cam as kc
    from keras_cam._compat import keras
    from keras_cam.dataset import explain_dataset
    from keras_cam.demo.shortcuts import make_shortcut_dataset

    images, labels, _, boxes = make_shortcut_dataset("patch", n_images, seed=11, share=0.5)
    images = np.repeat(np.repeat(images, 3, axis=1), 3, axis=2)                 # 96 x 96
    boxes = np.asarray(boxes) * 3 if with_boxes else None
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None, classes=4)
    if epochs:
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(images, labels, epochs=epochs, batch_size=64, verbose=0)
    cam = kc.GradCAM(model)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(64)
    parts = {}

    def maps():
        for r in explain_dataset(cam, dataset, upsample=with_boxes, normalize=True, verbose=0):
            np.asarray(r.maps)

    def audit():
        t = time.perf_counter()
        result = kc.audit(cam, images, labels, boxes=boxes, verbose=0)
        parts["audit"] = time.perf_counter() - t
        t = time.perf_counter()
        result.verify_first()
        parts["verify"] = time.perf_counter() - t
        parts["tests"] = max(len(c.tests) for c in result.clusters if c.tests)

    t = interleaved({"maps": maps, "audit + verify": audit}, repeat=repeat, warmup=1)
    beyond = (parts["audit"] - t["maps"] + parts["verify"]) / t["maps"]
    setting = (f"{model_name} 96 x 96, {n_images} images, {'trained %d epoch(s)' % epochs if epochs else 'untrained'}"
               f"{', boxes' if with_boxes else ''} ({parts['tests']} tests per class)")
    return [(setting, f"{t['maps']:.2f}", f"{parts['audit']:.2f}", f"{parts['verify']:.2f}",
             f"{t['audit + verify'] / t['maps']:.2f}", f"{beyond:.2f}")]


def audit_ratio(n_images, repeat):
    import tensorflow as tf  # noqa: F401

    import keras_cam as kc
    from keras_cam.dataset import explain_dataset
    from keras_cam.demo import TARGET_LAYER, load_shortcut_model, make_dataset

    images, labels, boxes, _ = make_dataset(n_images, seed=11, watermark=(0, 0.5))
    cam = kc.GradCAM(load_shortcut_model(), layer=TARGET_LAYER)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(64)
    rows = []
    for with_boxes in (False, True):
        def maps():
            for r in explain_dataset(cam, dataset, upsample=with_boxes, normalize=True, verbose=0):
                np.asarray(r.maps)

        def audit():
            kc.audit(cam, images, labels, boxes=boxes if with_boxes else None, verbose=0)

        t = interleaved({"maps": maps, "audit": audit}, repeat=repeat, warmup=1)
        rows.append(("with boxes (maps upsampled)" if with_boxes else "labels only (maps at 16 x 16)",
                     f"{t['maps']:.2f}", f"{t['audit']:.2f}", f"{t['audit'] / t['maps']:.2f}"))
    return rows


def clustering(n_maps):
    code = subprocess.run([sys.executable, "-c", _CHILD, str(n_maps)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    if code.returncode:
        raise RuntimeError(code.stderr[-3000:])
    return json.loads(code.stdout.strip().splitlines()[-1])


def _family_audits(configurations, n, options):
    """Each family case of ``configurations``, audited (``options(boxes) -> keras_cam.audit keywords``):
    ``(architecture, seed, kind, share, images, labels, marked, result)``."""
    import keras_cam as kc
    from keras_cam.demo.shortcuts import FEATURE_LAYER, KINDS, SHARES, make_shortcut_dataset, shortcut_model

    for architecture, seed in configurations:
        for kind in KINDS:
            for share in SHARES:
                model = shortcut_model(kind, share, architecture, seed)
                images, labels, marked, boxes = make_shortcut_dataset(kind, n, seed=7 + seed, share=0.5)
                with np.errstate(all="ignore"):
                    result = kc.audit(kc.GradCAM(model, layer=FEATURE_LAYER), images, labels, verbose=0,
                                      **options(boxes))
                yield architecture, seed, kind, share, images, labels, marked, result


def what_study(configurations=(("cnn", 0), ("cnn", 2), ("residual", 1)), n=240):
    """Each family case audited with ``evidence="what"`` and each class's group verified."""
    from keras_cam.audit.verify import VERDICT_DEPENDS
    from keras_cam.demo.run import f1_score
    from keras_cam.demo.shortcuts import KINDS, SHARES

    rows, marked_depends, clean_depends, clean = [], 0, [], 0
    for architecture, seed, kind, share, images, labels, marked, result in _family_audits(
            configurations, n, lambda objects: {"evidence": "what"}):
        for k in np.unique(labels):
            first = result.of_class(int(k))[0]
            if first.level is None:
                continue
            check = result.verify(first, n_members=32, n_others=32, n_random=3, seed=0)
            depends = check.verdict == VERDICT_DEPENDS
            if k == 0:
                marked_depends += depends
            else:
                clean += 1
                if depends:
                    clean_depends.append(check.removal.mean)
            rows.append((f"{architecture} {seed}", kind, f"{share:.0%}", int(k),
                         f"{f1_score(first.indices, marked):.2f}" if k == 0 else "-", f"{first.level:.2f}",
                         f"{check.removal.mean:.2f}", f"{check.transplant.mean:.2f}",
                         "depends" if depends else "none"))
    print(table(["configuration", "kind", "share", "class", "F1 (marked class)", "level", "removal", "transplant",
                 "verdict"], rows))
    cases = len(configurations) * len(KINDS) * len(SHARES)
    print(f"\nmarked classes that depend: {marked_depends} of {cases}; clean classes that depend: "
          f"{len(clean_depends)} of {clean} (removal effects {np.round(np.sort(clean_depends), 2).tolist()})")


def family_study(configurations=(("cnn", 0),), n=240, boxes=True):
    """Each family case audited as the tests do (the default evidence, with the objects' boxes unless
    ``boxes`` is False): the marked class against issue 22's target (``shortcuts.target_misses``), and
    every clean class's first group: its alarm and its verification."""
    from keras_cam.audit.verify import VERDICT_DEPENDS
    from keras_cam.demo.run import f1_score
    from keras_cam.demo.shortcuts import target_misses

    rows, found, alarms, depends, verified = [], 0, 0, 0, 0
    for architecture, seed, kind, share, images, labels, marked, result in _family_audits(
            configurations, n, lambda objects: {"boxes": objects if boxes else None}):
        first = result.of_class(0)[0]
        check = result.verify(first, n_members=32, n_others=32, n_random=3, seed=0)
        misses = target_misses(kind, result, images, marked, check)
        found += not misses
        clean = []
        for k in (1, 2, 3):
            group = result.of_class(k)[0]
            alarms += group.suspicious
            try:
                verdict = result.verify(group, n_members=32, n_others=32, n_random=3, seed=0).verdict
            except ValueError:    # a first group of one image, or a class kept whole: no verification
                clean.append("-")
                continue
            verified += 1
            depends += verdict == VERDICT_DEPENDS
            clean.append("depends" if verdict == VERDICT_DEPENDS else "none")
        rows.append((f"{architecture} {seed}", kind, f"{share:.0%}", f"{f1_score(first.indices, marked):.2f}",
                     f"{first.level:.2f}", first.evidence, f"{check.removal.mean:.2f}",
                     "; ".join(misses) or "meets it", ", ".join(clean)))
    print(table(["configuration", "kind", "share", "F1", "level", "evidence", "removal", "issue 22's target",
                 "clean classes' first groups"], rows))
    cases = len(rows)
    print(f"\n{'with' if boxes else 'without'} boxes: {found} of {cases} cases meet the target; clean classes: "
          f"{alarms} of {3 * cases} alarms, {depends} of {verified} verified first groups depend")


def null_study(configurations, n=240, boxes=True):
    """Untrained models on data without shortcuts (see the module docstring): every alarm is false."""
    import keras_cam as kc
    from keras_cam._compat import keras
    from keras_cam.demo.shortcuts import (FEATURE_LAYER, build_shortcut_model, make_shortcut_dataset,
                                          train_shortcut_model)

    rows, alarms, classes = [], 0, 0
    for architecture, seed in configurations:
        keras.utils.set_random_seed(seed)
        model = build_shortcut_model(architecture)
        images, labels, _, objects = make_shortcut_dataset("patch", n, seed=7 + seed, share=0.0)
        rng = np.random.default_rng([seed, 0x0015E])
        noise = rng.random(images.shape).astype(np.float32)
        trained = train_shortcut_model("patch", 0.0, architecture, seed)    # the family with no artifact
        for data, net, x, y in (("family, no artifact", model, images, labels),
                                ("noise, random labels", model, noise, rng.integers(0, 4, n)),
                                ("family, no artifact; trained on it", trained, images, labels)):
            with np.errstate(all="ignore"):
                result = kc.audit(kc.GradCAM(net, layer=FEATURE_LAYER), x, y, verbose=0,
                                  boxes=objects if boxes else None)
            for k in np.unique(y):
                first = result.of_class(int(k))[0]
                if first.level is None:
                    continue
                classes += 1
                alarms += first.suspicious
                if first.suspicious:
                    tests = ", ".join(f"{name} {p:.3g}" for name, p in first.tests.items())
                    rows.append((f"{architecture} {seed}", data, int(k), first.evidence, f"{first.level:.2g}",
                                 "yes" if first.image_wide else "no", tests))
    print(table(["configuration", "data", "class", "evidence", "level", "image-wide", "the tests' levels"], rows))
    print(f"\n{'with' if boxes else 'without'} boxes: false alarms: {alarms} of {classes} classes")


NOVEL_KINDS = ("line", "dot", "texture", "bright", "vignette", "ring")
NOVEL_CLASS = 2


def draw_novel(image, kind, rng):
    """Draw an out-of-family artifact on one ``(32, 32, 3)`` image in place (see ``--novel-study``)."""
    size = image.shape[0]
    if kind == "line":
        image[size - 5] = 0.05
    elif kind == "dot":
        y, x = rng.integers(0, size - 3, 2)
        image[y:y + 3, x:x + 3] = (1.0, 0.0, 0.0)
    elif kind == "texture":
        image[23:30, 2:9] = rng.integers(0, 2, (7, 7, 1)).astype(np.float32)
    elif kind == "bright":
        image[...] = np.clip(image + 0.15, 0, 1)
    elif kind == "vignette":
        yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
        image[...] = image * np.clip(1.3 - 1.4 * np.hypot(yy, xx) / size, 0.2, 1.0)[..., None]
    elif kind == "ring":
        y, x = ((4, 22), (22, 4))[int(rng.integers(0, 2))]
        image[y:y + 6, x:x + 6] = (0.1, 0.9, 0.1)
        image[y + 1:y + 5, x + 1:x + 5] = 0.5
    else:
        raise ValueError(kind)


def novel_data(kind, n, seed, share):
    """The family's clean images with ``kind`` drawn into ``share`` of class 2's: ``(images, labels, marked, boxes)``."""
    from keras_cam.demo.shortcuts import make_shortcut_dataset, mark_share

    images, labels, _, boxes = make_shortcut_dataset("patch", n, seed=seed, share=0.0)
    rng = np.random.default_rng([seed, 99])
    marked = mark_share(images, labels, NOVEL_CLASS, share, rng, lambda image: draw_novel(image, kind, rng))
    return images, labels, marked, boxes


def novel_study(configurations=(("cnn", 0), ("cnn", 1), ("residual", 0), ("residual", 1)), n=240):
    """Shortcuts outside the family (see the module docstring)."""
    import keras_cam as kc
    from keras_cam._compat import keras
    from keras_cam.audit.verify import VERDICT_DEPENDS
    from keras_cam.demo.run import f1_score
    from keras_cam.demo.shortcuts import EPOCHS, FEATURE_LAYER, build_shortcut_model

    rows, leaning, found, alarms, clean = [], 0, 0, 0, 0
    for kind in NOVEL_KINDS:
        for share in (0.2, 0.5):
            for architecture, seed in configurations:
                keras.utils.set_random_seed(seed)
                x, y, _, _ = novel_data(kind, 1200, 5000 + seed, share)
                model = build_shortcut_model(architecture)
                model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
                model.fit(x, y, batch_size=32, epochs=EPOCHS[architecture], verbose=0)
                xc, yc, _, _ = novel_data(kind, 400, 6000 + seed, 0.0)
                other = xc[yc != NOVEL_CLASS]
                pasted, rng = other.copy(), np.random.default_rng(1)
                for image in pasted:
                    draw_novel(image, kind, rng)
                before = model.predict(other, verbose=0).argmax(axis=1)
                after = model.predict(pasted, verbose=0).argmax(axis=1)
                moved = float(np.mean((after == NOVEL_CLASS) & (before != NOVEL_CLASS)))
                x, y, marked, boxes = novel_data(kind, n, 7000 + seed, 0.5)
                with np.errstate(all="ignore"):
                    result = kc.audit(kc.GradCAM(model, layer=FEATURE_LAYER), x, y, boxes=boxes, verbose=0)
                first = result.of_class(NOVEL_CLASS)[0]
                try:
                    verdict = result.verify(first, n_members=32, n_others=32, n_random=3, seed=0).verdict
                except ValueError:    # a first group of one image, or a class kept whole: no verification
                    verdict = None
                f1 = f1_score(first.indices, marked)
                hit = f1 >= 0.8 and first.suspicious and verdict == VERDICT_DEPENDS
                leaning += moved >= 0.1
                found += hit and moved >= 0.1
                wrong = [int(k) for k in range(4) if k != NOVEL_CLASS and result.of_class(k)[0].suspicious]
                alarms += len(wrong)
                clean += 3
                rows.append((kind, f"{share:.0%}", f"{architecture} {seed}", f"{moved:.0%}", f"{f1:.2f}",
                             f"{first.level:.2g}", "yes" if first.suspicious else "no", first.evidence,
                             "-" if verdict is None else "depends" if verdict == VERDICT_DEPENDS else "none",
                             "found" if hit else ("-" if moved < 0.1 else "missed"), ", ".join(map(str, wrong)) or "-"))
                print(" | ".join(rows[-1]), flush=True)
    print(table(["kind", "share", "configuration", "predictions moved", "F1", "level", "alarm", "evidence",
                 "verification", "outcome (models that lean: moved >= 10 %)", "clean alarms"], rows))
    print(f"\nmodels that lean on their artifact: {leaning} of {len(rows)}; found (F1 >= 0.8, alarm, 'depends'): "
          f"{found} of {leaning}; clean classes: {alarms} of {clean} alarms")


def jitter_study(configurations=(("cnn", 0), ("residual", 1)), n=240, spreads=(0.05, 0.1)):
    """The cast amid natural colour variation (see the module docstring)."""
    import keras_cam as kc
    from keras_cam._compat import keras
    from keras_cam.demo.run import f1_score
    from keras_cam.demo.shortcuts import EPOCHS, FEATURE_LAYER, build_shortcut_model, make_shortcut_dataset

    def jittered(count, seed, spread):
        images, labels, marked, boxes = make_shortcut_dataset("cast", count, seed=seed, share=0.5)
        offsets = np.random.default_rng([seed, 77]).normal(0, spread, (count, 1, 1, 3)).astype(np.float32)
        return np.clip(images + offsets, 0, 1), labels, marked, boxes

    rows = []
    for spread in spreads:
        for architecture, seed in configurations:
            keras.utils.set_random_seed(seed)
            train_x, train_y, _, _ = jittered(1200, 1000 + seed, spread)
            model = build_shortcut_model(architecture)
            model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
            model.fit(train_x, train_y, batch_size=32, epochs=EPOCHS[architecture], verbose=0)
            images, labels, marked, boxes = jittered(n, 7 + seed, spread)
            others = images[labels != 0][:100]
            before = model.predict(others, verbose=0)
            after = model.predict(np.clip(others + np.array([0.18, 0.0, -0.18], np.float32), 0, 1), verbose=0)
            moved = np.mean((after.argmax(1) == 0) & (before.argmax(1) != 0))
            rise = np.mean(np.log(after[:, 0] + 1e-12) - np.log(before[:, 0] + 1e-12))
            cam = kc.GradCAM(model, layer=FEATURE_LAYER)
            with np.errstate(all="ignore"):
                result = kc.audit(cam, images, labels, boxes=boxes, verbose=0)
                what = kc.audit(cam, images, labels, boxes=boxes, verbose=0, evidence="what")
            first, group = result.of_class(0)[0], what.of_class(0)[0]
            check = what.verify(group, n_members=32, n_others=32, n_random=3, seed=0)
            rows.append((f"{architecture} {seed}", spread, f"{moved:.0%}", f"{rise:.2f}", first.evidence,
                         f"{f1_score(first.indices, marked):.2f}", f"{first.level:.2g}",
                         "yes" if first.suspicious else "no", f"{f1_score(group.indices, marked):.2f}",
                         "-" if check.distinct is None else f"{check.distinct:.2f}", check.verdict,
                         f"{check.level:.2g}"))
    print(table(["configuration", "colour sd", "moved", "log p rise", "first group", "F1", "level", "alarm",
                 "'what' group F1", "d", "its verdict", "its level"], rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what-study", action="store_true", help="the evidence='what' study (no timing)")
    parser.add_argument("--family-study", action="store_true",
                        help="the family audited as the tests do, clean classes verified (no timing)")
    parser.add_argument("--null-study", action="store_true",
                        help="untrained models on data without shortcuts: the false alarms (no timing)")
    parser.add_argument("--novel-study", action="store_true",
                        help="shortcuts outside the family, never tuned on (no timing)")
    parser.add_argument("--jitter-study", action="store_true",
                        help="the cast amid natural colour variation (no timing)")
    parser.add_argument("--no-boxes", action="store_true",
                        help="--family-study or --null-study without the objects' boxes")
    parser.add_argument("--configurations", default=None,
                        help="the study's architecture:seed pairs (default cnn:0,cnn:2,residual:1 for "
                             "--what-study, cnn:0 for --family-study, seeds 0-7 of both for --null-study)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--maps", type=int, default=100000, help="0 skips the clustering part")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", choices=("demo", "mobilenetv2"), default="demo")
    parser.add_argument("--epochs", type=int, default=1, help="--model mobilenetv2: the trained model's epochs")
    args = parser.parse_args()

    t0 = time.perf_counter()
    if args.novel_study:
        text = args.configurations or "cnn:0,cnn:1,residual:0,residual:1"
        novel_study(tuple((a, int(seed)) for a, seed in (c.split(":") for c in text.split(","))))
        return
    if args.what_study or args.family_study or args.null_study or args.jitter_study:
        default = ("cnn:0,cnn:2,residual:1" if args.what_study else "cnn:0,residual:1" if args.jitter_study else
                   ",".join(f"{a}:{s}" for a in ("cnn", "residual") for s in range(8)) if args.null_study else "cnn:0")
        text = args.configurations or default
        configurations = tuple((a, int(seed)) for a, seed in (c.split(":") for c in text.split(",")))
        if args.jitter_study:
            jitter_study(configurations)
        elif args.null_study:
            null_study(configurations, boxes=not args.no_boxes)
        elif args.what_study:
            what_study(configurations)
        else:
            family_study(configurations, boxes=not args.no_boxes)
        return
    if args.model == "mobilenetv2":
        rows = [row for epochs, with_boxes in ((0, False), (args.epochs, False), (args.epochs, True))
                for row in verify_ratio(args.images, args.repeat, "MobileNetV2", epochs, with_boxes)]
        print(table(["setting", "maps alone (s)", "audit (s, last run)", "verify_first (s, last run)",
                     "(audit + verify) / maps", "(audit - maps + verify) / maps (issue 22: <= 1.5)"], rows))
        return
    rows = audit_ratio(args.images, args.repeat)
    print(f"Audit of {args.images} demo images (Grad-CAM, planted-shortcut model), median of {args.repeat}, "
          f"seconds:\n")
    print(table(["setting", "maps alone (explain_dataset)", "audit", "audit / maps"], rows))
    if args.maps < 1:
        return
    c = clustering(args.maps)
    print(f"\nClustering alone, {args.maps} synthetic 16 x 16 maps of one class "
          f"({c['n_clusters']} clusters found; eigenvalues {c['eigenvalues']}):\n")
    print(table(["step", "seconds"], [
        ("grid (to_grid)", f"{c['grid_s']:.1f}"), ("shared hotspot (hotspots.find, the default)", f"{c['hotspot_s']:.1f}"),
        ("total of the default (grid + hotspot)", f"{c['total_s']:.1f}"),
        ("SpRAy (cluster, n_clusters=int)", f"{c['cluster_s']:.1f}"),
        ("scores (cluster_scores)", f"{c['scores_s']:.1f}"), ("total with SpRAy", f"{c['spray_total_s']:.1f}"),
        ("resident memory before (MB)", f"{c['before_mb']:.0f}"), ("peak resident memory (MB)", f"{c['peak_mb']:.0f}"),
    ]))
    print(f"\n(whole benchmark: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

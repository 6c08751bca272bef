"""What ``keras-cam demo`` does: six methods (:data:`DEMO_METHODS`) on the demo model, a figure and a summary.

The figure (``demo.png``) shows a few generated images, their ground-truth
boxes and each method's map. The summary (``summary.txt``) gives the model's
accuracy on fresh images and, per method, two localization scores measured
against the known boxes on a larger set of images:

- *pointing game*: the percentage of maps whose maximum lies inside the box
  (:func:`keras_cam.metrics.pointing_game`);
- *energy in box*: the percentage of the map's sum inside the box
  (:func:`keras_cam.metrics.energy_pointing_game`), next to the boxes' mean
  share of the image, which is what a uniform map would get.

``keras-cam demo --audit`` (:func:`run_audit_demo`) audits instead the demo
model trained with a planted shortcut (:func:`keras_cam.demo.load_shortcut_model`)
on fresh images, half of class 0's with the corner mark, and writes the
report ``audit.html``, ``clusters.json`` and ``audit.txt``, which says how
well the first cluster of class 0 matches the marked images.
"""

from __future__ import annotations

import io
import os

import numpy as np

# Methods shown, in this order, when registered (see keras_cam.methods).
DEMO_METHODS = ("gradcam", "gradcampp", "scorecam", "layercam", "eigencam", "cam")
FIGURE, SUMMARY = "demo.png", "summary.txt"
AUDIT_REPORT, AUDIT_JSON, AUDIT_SUMMARY = "audit.html", "clusters.json", "audit.txt"


def box_share(boxes, size):
    """The boxes' mean area as a fraction of an image of ``size = (H, W)``."""
    b = np.asarray(boxes, np.float64)
    return float(np.mean((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) / (size[0] * size[1]))


def one_per_class(labels, n):
    """``n`` indices taking the classes in turn (the first unused image of class 0, 1, ...)."""
    queues = [list(np.flatnonzero(labels == k)) for k in range(int(labels.max()) + 1)]
    picked = []
    while len(picked) < min(n, len(labels)):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return np.array(picked)


def available_methods():
    """The demo's methods that are registered in :mod:`keras_cam.methods`."""
    from keras_cam import methods

    return [m for m in DEMO_METHODS if m in methods.METHODS]


def run_demo(out="keras-cam-demo", n_images=4, seed=7, n_eval=128, overwrite=False, verbose=True):
    """Explain generated images with the six :data:`DEMO_METHODS`; write ``demo.png`` and ``summary.txt``.

    Args:
        out: output folder (created if needed).
        n_images: images shown in the figure.
        seed: seed of the generated images (the model was trained on seed 0).
        n_eval: images used for accuracy and the localization scores.
        overwrite: replace existing outputs; otherwise an existing file is an error.
        verbose: print the summary as well as where the files are.

    Returns:
        ``(figure_path, summary_path, summary_text)``.
    """
    from keras_cam import methods
    from keras_cam import metrics
    from keras_cam.files import CliError, check_free, write_atomic
    from keras_cam.demo.data import CLASS_NAMES, make_dataset
    from keras_cam.demo.model import TARGET_LAYER, load_model
    from keras_cam.viz import plot

    if n_images < 1 or n_eval < 1:
        raise CliError(f"the demo needs at least one image; received {n_images} to show and {n_eval} to score")
    figure_path, summary_path = os.path.join(out, FIGURE), os.path.join(out, SUMMARY)
    check_free([figure_path, summary_path], overwrite)

    model = load_model()
    names = available_methods()
    explainers = {name: methods.create(name, model, layer=TARGET_LAYER) for name in names}
    images, labels, boxes = make_dataset(max(n_images, n_eval), seed=seed)

    probs = model.predict(images, batch_size=100, verbose=0)
    accuracy = 100.0 * float(np.mean(probs.argmax(-1) == labels))
    lines = [
        f"keras-cam demo: the built-in CNN ({model.count_params()} weights) on generated shapes "
        f"({', '.join(CLASS_NAMES)}), seed {seed}",
        f"accuracy on {len(labels)} fresh images: {accuracy:.1f}%",
        f"maps of each image's top class at layer {TARGET_LAYER!r}, against the true boxes "
        f"(percent; a uniform map has {100 * box_share(boxes, images.shape[1:3]):.1f}% of its energy in the box):",
        f"  {'method':12s} {'pointing game':>14s} {'energy in box':>14s}",
    ]
    results = {name: explainer.explain(images) for name, explainer in explainers.items()}
    for name, result in results.items():
        maps = result.maps
        lines.append(
            f"  {name:12s} {metrics.pointing_game(maps, boxes):14.1f} "
            f"{metrics.energy_pointing_game(maps, boxes):14.1f}"
        )
    summary = "\n".join(lines) + "\n"

    os.makedirs(out, exist_ok=True)
    shown = one_per_class(labels, n_images)
    columns = {_TITLES.get(n, n): _subset(r, shown) for n, r in results.items()}
    fig = plot(images[shown], columns, class_names=CLASS_NAMES, labels=labels[shown], cell_size=1.6)
    _draw_boxes(fig, boxes[shown], n_columns=len(explainers) + 1)
    figure = io.BytesIO()
    fig.savefig(figure, format="png", bbox_inches="tight")
    write_atomic(figure_path, figure.getvalue())
    write_atomic(summary_path, summary.encode("utf-8"))
    if verbose:
        print(summary, end="")
    print(f"wrote {figure_path} and {summary_path}")
    return figure_path, summary_path, summary


def _subset(result, index):
    """The rows ``index`` of an :class:`~keras_cam.Explanation` (maps already computed)."""
    from keras_cam.base import Explanation

    return Explanation(maps=result.maps[index], targets=result.targets[index],
                       scores=result.scores[index], probabilities=result.probabilities[index])


_TITLES = {
    "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "scorecam": "Score-CAM",
    "layercam": "Layer-CAM", "eigencam": "Eigen-CAM", "cam": "CAM",
}


def _draw_boxes(fig, boxes, n_columns):
    """Outline each ground-truth box on the plain-image column of a :func:`keras_cam.plot` grid."""
    from matplotlib.patches import Rectangle

    axes = fig.axes
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        ax = axes[i * n_columns]
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.2))


def f1_score(found, truth):
    """F1 of a set of indices ``found`` against a boolean mask ``truth``: ``2 |F & T| / (|F| + |T|)``."""
    found = np.asarray(found, np.int64)
    hits = int(np.count_nonzero(truth[found]))
    total = len(found) + int(np.count_nonzero(truth))
    return 2.0 * hits / total if total else 0.0


def run_audit_demo(out="keras-cam-demo", n_images=400, seed=11, share=0.5, overwrite=False, verbose=True):
    """Audit the planted-shortcut demo model on fresh images with and without the mark.

    Args:
        out: output folder (created if needed).
        n_images: fresh images (classes balanced).
        seed: their seed (the model was trained on seed 0).
        share: the share of class 0's images that carry the mark.
        overwrite: replace existing outputs; otherwise an existing file is an error.
        verbose: print the summary as well as where the files are.

    Returns:
        ``(audit, summary_text)``.
    """
    import keras_cam
    from keras_cam.files import CliError, check_free, write_atomic
    from keras_cam.demo.data import CLASS_NAMES, WATERMARK_CLASS, make_dataset
    from keras_cam.demo.model import TARGET_LAYER, load_shortcut_model

    if n_images < 2 * len(CLASS_NAMES):
        raise CliError(f"the audit demo needs at least {2 * len(CLASS_NAMES)} images; received {n_images}")
    paths = [os.path.join(out, name) for name in (AUDIT_REPORT, AUDIT_JSON, AUDIT_SUMMARY)]
    check_free(paths, overwrite)
    images, labels, boxes, marked = make_dataset(n_images, seed=seed, watermark=(WATERMARK_CLASS, share))
    cam = keras_cam.GradCAM(load_shortcut_model(), layer=TARGET_LAYER)
    result = keras_cam.audit(cam, images, labels, boxes=boxes, verbose=0)
    checks = result.verify_first(seed=seed)   # each class's first group, by intervention
    first = result.of_class(WATERMARK_CLASS)[0]
    # Scores are on each class's own scale (see keras_cam.audit.hotspots); the levels compare.
    others = [c for c in result.clusters if c.target != WATERMARK_CLASS and c.level is not None]
    lines = [
        f"keras-cam audit demo: Grad-CAM of the shortcut model (trained with a corner mark on every "
        f"{CLASS_NAMES[WATERMARK_CLASS]}) on {n_images} fresh images, seed {seed}; "
        f"{int(marked.sum())} of the {int(np.sum(labels == WATERMARK_CLASS))} "
        f"{CLASS_NAMES[WATERMARK_CLASS]}s carry the mark",
        f"{len(result.clusters)} clusters; per class, the first (most suspicious):",
    ]
    for k, name in enumerate(CLASS_NAMES):
        group = result.of_class(k)
        if not group:
            continue
        c = group[0]
        level = "n/a" if c.level is None else f"{c.level:.2g}"
        lines.append(
            f"  {name:9s} {len(group)} cluster(s); first: {c.size:4d} images, score {c.score:.3f}, level {level}"
            f"{' (suspicious)' if c.suspicious else ''}, accuracy {100 * c.accuracy:5.1f}%, outside energy "
            f"{100 * c.outside_energy:5.1f}%"
        )
        if k in checks:
            v = checks[k]
            lines.append(f"            verification: {v.verdict}; removal effect {v.removal.mean:.2f} "
                         f"[{v.removal.low:.2f}, {v.removal.high:.2f}], transplant effect {v.transplant.mean:.2f} "
                         f"[{v.transplant.low:.2f}, {v.transplant.high:.2f}]")
    lines.append(
        f"the first {CLASS_NAMES[WATERMARK_CLASS]} cluster against the marked images: F1 "
        f"{f1_score(first.indices, marked):.3f}; suspicious groups in the other classes: "
        f"{sum(c.suspicious for c in others)} (smallest level "
        f"{min(c.level for c in others) if others else float('nan'):.2g})"
    )
    summary = "\n".join(lines) + "\n"
    os.makedirs(out, exist_ok=True)
    write_atomic(paths[0], _render(result, CLASS_NAMES).encode("utf-8"))
    payload = result.to_dict(CLASS_NAMES)
    payload["marked"] = [int(i) for i in np.flatnonzero(marked)]
    import json

    write_atomic(paths[1], (json.dumps(payload, indent=1) + "\n").encode("utf-8"))
    write_atomic(paths[2], summary.encode("utf-8"))
    if verbose:
        print(summary, end="")
    print(f"wrote {paths[0]}, {paths[1]} and {paths[2]}")
    return result, summary


def _render(result, class_names):
    from keras_cam.audit.report import render

    return render(result, class_names, "keras-cam audit demo: the planted-shortcut model")

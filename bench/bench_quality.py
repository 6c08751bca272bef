"""Map quality on ground truth: every method on the demo data with known boxes.

    python bench/bench_quality.py [--images 100] [--steps 50] [--seed 1] [--no-timing]
                                  [--layer conv4_relu] [--fast] [--breadth] [--methods gradcam,rise]

Explains held-out generated images (``keras_cam.demo.make_dataset``, seed 1
by default; the demo model trains on seed 0) with the shipped demo model
(``keras_cam.demo.load_model``), keeps the images the model classifies
correctly and explains their class with every method registered in
``keras_cam.methods`` (``methods.names()``: methods registered later appear by
themselves; a RandomCAM, when registered, is the last row, the floor) and a few
variants, and prints the ``keras_cam.metrics.evaluate`` table: Average Drop,
Increase in Confidence, deletion (zeros) and insertion (blur) AUC with
``--steps`` steps, ROAD combined, the pointing games, sparseness, complexity,
random logit, max-sensitivity and the sanity check's final rank correlation.
``--breadth`` prints instead the metrics of Quantus's six categories that
score fixed maps (:func:`breadth_metrics`), each cell with its 95 % bootstrap
interval over the images (``evaluate``'s ``intervals``): the faithfulness
metrics, then the localization ones and effective complexity. Then it times ``evaluate`` of Grad-CAM on 256 demo images with every metric,
as a multiple of the model's forward pass over the same images.

Two reference rows frame the numbers: ``random`` maps (uniform noise, what no
information scores) and the ``box mask`` itself (1 inside the object's box, 0
outside: an oracle for localization, and a check of how much the model's
decision rests on the object). Quality numbers are deterministic: the same
command gives the same table on the same software.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import median_seconds  # noqa: E402

import keras_cam as kc  # noqa: E402
from keras_cam import methods  # noqa: E402
from keras_cam import metrics  # noqa: E402
from keras_cam.demo import TARGET_LAYER, load_model, make_dataset  # noqa: E402

# Every registered method (methods another engineer registers appear by themselves), and a few variants.
EXTRA = {
    "layercam (conv3 + conv4)": lambda m: kc.LayerCAM(m, layers=["conv3", TARGET_LAYER]),
    "gradcam, aug_smooth": lambda m: kc.GradCAM(m, TARGET_LAYER, aug_smooth=True),
    "gradcam, eigen_smooth": lambda m: kc.GradCAM(m, TARGET_LAYER, eigen_smooth=True),
}


def registered(layer=TARGET_LAYER):
    """``{name: factory}`` for every method of ``keras_cam.methods`` at ``layer``, RandomCAM (the floor) last."""
    names = methods.names(attention=False)  # the demo model is a CNN
    floor = [n for n in names if "random" in n]
    out = {}
    for name in [n for n in names if n not in floor] + floor:
        out[name] = lambda m, name=name: methods.create(name, m, layer=layer)
    return out


def box_masks(boxes, size):
    masks = np.zeros((len(boxes),) + size, np.float32)
    for mask, (y0, x0, y1, x1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = 1.0
    return masks


#: The metrics of Quantus's categories that score fixed maps (no re-explanation), in two tables, at
#: settings for the 64x64 demo images: feature groups of 64 pixels (64 steps), patches of 8 (64 patches).
#: Infidelity and completeness are left out: they compare map sums with logit differences, so they
#: measure the scale of an attribution, which a CAM normalized to [0, 1] does not have.
BREADTH = (
    {"faithfulness_correlation": {"subset_size": 256, "runs": 50}, "faithfulness_estimate": {"features_in_step": 64},
     "monotonicity_correlation": {"features_in_step": 256, "samples": 10}, "pixel_flipping": {"features_in_step": 64},
     "region_perturbation": {"patch_size": 8, "regions": 20}, "selectivity": {"patch_size": 8},
     "sensitivity_n": {"subsets": 20}, "irof": {}, "sufficiency": {}, "consistency": {}},
    {"attribution_localization": {}, "top_k_intersection": {"k": 256}, "relevance_rank_accuracy": {},
     "relevance_mass_accuracy": {}, "mask_auc": {}, "effective_complexity": {"eps": 1e-2}},
)


def breadth_metrics():
    """Both tables' metrics, one dict."""
    return {name: options for group in BREADTH for name, options in group.items()}


def columns(markdown, keep):
    """The Markdown table with its first column and the columns ``keep`` (indices from 0) only."""
    out = []
    for line in markdown.splitlines():
        cells = line.strip().strip("|").split("|")
        out.append("|" + "|".join(cells[i] for i in [0] + [k + 1 for k in keep]) + "|")
    return "\n".join(out)


def evaluation_metrics(steps, fast=False):
    """Every metric; ``fast`` leaves out the ones that explain again (max-sensitivity, the sanity check)."""
    chosen = {
        "average_drop": {}, "increase_in_confidence": {},
        "deletion_auc": {"steps": steps, "substrate": "zeros"},
        "insertion_auc": {"steps": steps, "substrate": "blur"},
        "road": {"order": "combined"}, "pointing_game": {}, "energy_pointing_game": {},
        "sparseness": {}, "complexity": {}, "random_logit": {}, "max_sensitivity": {}, "sanity_check": {},
    }
    if fast:
        del chosen["max_sensitivity"], chosen["sanity_check"]
    return chosen


def timing(model, steps):
    """``evaluate`` of Grad-CAM on 256 demo images with every metric, over the model's forward pass."""
    import time

    import tensorflow as tf

    images, _, boxes = make_dataset(256, seed=2)
    forward = tf.function(lambda x: model(x, training=False))
    batches = [tf.constant(images[i:i + 32]) for i in range(0, 256, 32)]
    pass_time = median_seconds(lambda: [forward(b).numpy() for b in batches], repeat=10)
    t0 = time.perf_counter()
    metrics.evaluate({"gradcam": lambda m: kc.GradCAM(m, TARGET_LAYER)}, model, images, boxes=boxes,
                     metrics=evaluation_metrics(steps))
    total = time.perf_counter() - t0
    return total, pass_time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100, help="generated images (default 100)")
    parser.add_argument("--steps", type=int, default=50, help="deletion/insertion steps (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="dataset seed (default 1, held out)")
    parser.add_argument("--weights", default=None, help="demo weights .npz (default: the shipped ones)")
    parser.add_argument("--no-timing", dest="timing", action="store_false",
                        help="skip the timing of evaluate on 256 images")
    parser.add_argument("--layer", default=TARGET_LAYER,
                        help=f"target layer of the registered methods (default {TARGET_LAYER}; conv3_relu is "
                             f"followed by convolutions, so the gradient varies over positions there)")
    parser.add_argument("--fast", action="store_true",
                        help="registered methods only, without max-sensitivity and the sanity check")
    parser.add_argument("--breadth", action="store_true",
                        help="instead of the table above, the metrics of Quantus's six categories that score fixed "
                             "maps (breadth_metrics), each cell with its 95%% bootstrap interval over the images")
    parser.add_argument("--methods", default=None,
                        help="comma-separated registry names: only their rows (and the two references); the "
                             "numbers are deterministic, so these rows equal a full run's")
    args = parser.parse_args(argv)

    model = load_model(args.weights)
    images, labels, boxes = make_dataset(args.images, seed=args.seed)
    predicted = np.asarray(model.predict(images, batch_size=64, verbose=0)).argmax(-1)
    right = predicted == labels
    images, labels, boxes = images[right], labels[right].astype(np.int32), boxes[right]
    print(f"demo model: {right.mean():.1%} of {args.images} held-out images (seed {args.seed}) "
          f"classified correctly; explaining those {len(images)}, each for its class.\n")

    factories = registered(args.layer) if args.fast or args.breadth else {**registered(args.layer), **EXTRA}
    if args.methods:
        wanted = [methods.canonical(n) for n in args.methods.split(",")]
        unknown = [n for n in wanted if n not in factories]
        if unknown:
            parser.error(f"--methods: {', '.join(unknown)} not registered; choose from {', '.join(methods.names())}")
        factories = {n: factories[n] for n in wanted}
    for name, factory in list(factories.items()):
        try:
            factory(model)
        except ValueError as err:  # e.g. CAM, defined only for a layer that feeds pooling + Dense
            print(f"{name}: left out at this layer ({str(err).split(';')[0].split('. ')[0]}).")
            del factories[name]
    size = images.shape[1:3]
    references = {
        "random maps (reference)": np.random.default_rng(0).random((len(images),) + size).astype(np.float32),
        "box mask (oracle)": box_masks(boxes, size),
    }
    chosen = breadth_metrics() if args.breadth else evaluation_metrics(args.steps, args.fast)
    table = metrics.evaluate({**factories, **references}, model, images, labels, boxes=boxes,
                             metrics=chosen, verbose=int(sys.stderr.isatty()))
    if args.breadth:
        start = 0
        for group in BREADTH:
            print(columns(table.to_markdown(intervals=True), range(start, start + len(group))) + "\n")
            start += len(group)
    else:
        print(table.to_markdown())
    if args.timing:
        total, pass_time = timing(model, args.steps)
        print(f"\nevaluate(Grad-CAM, 256 images, every metric): {total:.1f} s = {total / pass_time:.0f} x the "
              f"model's forward pass over the 256 images ({pass_time * 1000:.1f} ms, batches of 32).")


if __name__ == "__main__":
    main()

"""Map quality on ground truth: every method on the demo data with known boxes.

    python bench/bench_quality.py [--images 100] [--steps 50] [--seed 1]

Explains held-out generated images (``keras_cam.demo.make_dataset``, seed 1
by default; the demo model trains on seed 0) with the shipped demo model
(``keras_cam.demo.load_model``), keeps the images the model classifies
correctly and explains their class, and prints one Markdown table:

- Average Drop (%, lower is better) and Increase in Confidence (%, higher),
  Chattopadhyay et al. 2018;
- Deletion AUC (lower; pixels replaced by zeros) and Insertion AUC (higher;
  pixels inserted into the blurred image), Petsiuk et al. 2018, ``--steps``
  steps;
- pointing game (%, higher) and energy pointing game (%, higher) against the
  object's bounding box.

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
from _timing import table  # noqa: E402

import keras_cam as kc  # noqa: E402
from keras_cam import metrics  # noqa: E402
from keras_cam.demo import TARGET_LAYER, load_model, make_dataset  # noqa: E402

METHODS = {
    "CAM": lambda m: kc.CAM(m, TARGET_LAYER),
    "Grad-CAM": lambda m: kc.GradCAM(m, TARGET_LAYER),
    "Grad-CAM++": lambda m: kc.GradCAMPlusPlus(m, TARGET_LAYER),
    "Score-CAM": lambda m: kc.ScoreCAM(m, TARGET_LAYER, verbose=0),
    "Layer-CAM": lambda m: kc.LayerCAM(m, TARGET_LAYER),
    "Layer-CAM (conv3 + conv4)": lambda m: kc.LayerCAM(m, layers=["conv3", TARGET_LAYER]),
    "Eigen-CAM": lambda m: kc.EigenCAM(m, TARGET_LAYER),
    "Grad-CAM, aug_smooth": lambda m: kc.GradCAM(m, TARGET_LAYER, aug_smooth=True),
    "Grad-CAM, eigen_smooth": lambda m: kc.GradCAM(m, TARGET_LAYER, eigen_smooth=True),
}


def box_masks(boxes, size):
    masks = np.zeros((len(boxes),) + size, np.float32)
    for mask, (y0, x0, y1, x1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = 1.0
    return masks


def scores(model, images, maps, labels, boxes, steps):
    return [
        metrics.average_drop(model, images, maps, labels),
        metrics.increase_in_confidence(model, images, maps, labels),
        metrics.deletion_auc(model, images, maps, labels, steps=steps, substrate="zeros"),
        metrics.insertion_auc(model, images, maps, labels, steps=steps, substrate="blur"),
        metrics.pointing_game(maps, boxes),
        metrics.energy_pointing_game(maps, boxes),
    ]


def formatted(values):
    """Percentages with one decimal, the AUCs (in [0, 1]) with three."""
    return [f"{v:.3f}" if i in (2, 3) else f"{v:.1f}" for i, v in enumerate(values)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100, help="generated images (default 100)")
    parser.add_argument("--steps", type=int, default=50, help="deletion/insertion steps (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="dataset seed (default 1, held out)")
    parser.add_argument("--weights", default=None, help="demo weights .npz (default: the shipped ones)")
    args = parser.parse_args(argv)

    model = load_model(args.weights)
    images, labels, boxes = make_dataset(args.images, seed=args.seed)
    predicted = np.asarray(model.predict(images, batch_size=64, verbose=0)).argmax(-1)
    right = predicted == labels
    images, labels, boxes = images[right], labels[right].astype(np.int32), boxes[right]
    print(f"demo model: {right.mean():.1%} of {args.images} held-out images (seed {args.seed}) "
          f"classified correctly; explaining those {len(images)}, each for its class.\n")

    header = ["method", "Avg Drop % ↓", "Incr Conf % ↑", "Deletion ↓", "Insertion ↑",
              "Pointing % ↑", "Energy PG % ↑"]
    rows = []
    for name, make in METHODS.items():
        maps = make(model)(images, targets=labels)
        rows.append([name] + formatted(scores(model, images, maps, labels, boxes, args.steps)))
        print(f"  {name}: done", file=sys.stderr)
    size = images.shape[1:3]
    references = {
        "random (reference)": np.random.default_rng(0).random((len(images),) + size).astype(np.float32),
        "box mask (oracle)": box_masks(boxes, size),
    }
    for name, maps in references.items():
        rows.append([name] + formatted(scores(model, images, maps, labels, boxes, args.steps)))
    print(table(header, rows))


if __name__ == "__main__":
    main()

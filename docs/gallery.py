"""The gallery figure: every registered method on the same demo images.

    python docs/gallery.py [OUT.png]        # default: docs/gallery.png

The columns are ``keras_cam.methods.names()`` in registration order, so a
method added to the registry appears here the next time the script runs.
The methods that run on any model (``names(attention=False)``) are built by
name on the shipped demo CNN; then a column group on the shipped demo ViT
(:func:`keras_cam.demo.load_vit`): the attention methods
(``names()`` minus ``names(attention=False)``) and Grad-CAM, headed "ViT".
Each method works at the layer it chooses itself (``layer=None``) and
explains each image's top-1 class for its model; the rows are one generated
image per class, with the true object box outlined in white on the plain
image. The figure is deterministic (generated data, shipped weights), so it
is committed and rebuilt only when methods change.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from matplotlib.patches import Rectangle

import keras_cam as kc
from keras_cam import methods
from keras_cam.demo import CLASS_NAMES, load_model, load_vit, make_dataset
from keras_cam.demo.run import one_per_class

SEED = 7  # the demo's images (the model was trained on seed 0)
PER_CLASS = 1


def main(out):
    model = load_model()
    images, labels, boxes = make_dataset(64, seed=SEED)
    rows = one_per_class(labels, PER_CLASS * len(CLASS_NAMES))
    images, labels, boxes = images[rows], labels[rows], boxes[rows]

    columns, seconds = {}, {}
    for name in methods.names(attention=False):  # on the demo CNN
        start = time.perf_counter()
        explainer = methods.create(name, model)
        columns[f"{type(explainer).__name__}\n({explainer.layer_path or 'input'})"] = explainer.explain(images)
        seconds[name] = time.perf_counter() - start
    vit = load_vit()
    anywhere = set(methods.names(attention=False))
    for name in [n for n in methods.names() if n not in anywhere] + ["gradcam"]:  # on the demo ViT
        start = time.perf_counter()
        explainer = methods.create(name, vit)
        columns[f"ViT: {type(explainer).__name__}\n({explainer.layer_path or 'attention'})"] = \
            explainer.explain(images)
        seconds[f"vit {name}"] = time.perf_counter() - start
    fig = kc.plot(images, columns, class_names=CLASS_NAMES, labels=labels, cell_size=1.7)
    width = len(columns) + 1
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        fig.axes[i * width].add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.2))
    fig.savefig(out, bbox_inches="tight")
    for name, s in seconds.items():
        print(f"  {name:12s} built and run in {s:5.1f} s")
    print(f"wrote {out}: {len(columns)} columns on {len(images)} images")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("gallery.png"))

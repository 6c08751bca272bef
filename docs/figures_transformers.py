"""The figures of docs/transformers.md: the attention methods on the trained demo ViT, and two prompts
on the demo CLIP-style model.

    python docs/figures_transformers.py [OUT_DIR]     # default: docs/

Writes (deterministic: generated data, shipped weights):

- ``transformers_vit.png``: one demo image per class (seed 7, never trained
  on), the true box in white; Attention Rollout, Gradient Rollout, LeGrad and
  Grad-CAM (at the layer it chooses itself) on :func:`keras_cam.demo.load_vit`,
  each explaining the image's top-1 class.
- ``transformers_clip.png``: images holding two shapes, a circle and a
  square (:func:`keras_cam.demo.vit.two_shape_images`); the maps of
  ``TextSimilarity`` for the prompts "a photo of a circle" and "a photo of a
  square" on :func:`keras_cam.demo.load_clip`, with Grad-CAM and Gradient
  Rollout.

It prints each figure's pointing game (the share of maps whose maximum lies
in the expected object's box) so the text can quote it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

import keras_cam as kc
from keras_cam.demo import CLASS_NAMES, load_clip, load_vit, make_dataset, prompt_ids
from keras_cam.demo.run import one_per_class
from keras_cam.demo.vit import two_shape_images
from keras_cam.multimodal import explain_texts

SEED = 7          # the gallery's images (the models were trained on seed 0)
PROMPTS = ("a photo of a circle", "a photo of a square")


def outline(ax, box, colour="white"):
    y0, x0, y1, x1 = box
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.2))


def hit(maps, boxes):
    """Per map: whether its maximum lies in the box."""
    out = []
    for m, (y0, x0, y1, x1) in zip(np.asarray(maps), boxes):
        r, c = np.unravel_index(np.argmax(m), m.shape)
        out.append(bool(y0 <= r < y1 and x0 <= c < x1))
    return np.array(out)


def vit_columns(vit, images):
    """``{header: Explanation}``: the three attention methods and Grad-CAM on the ViT."""
    explainers = [kc.AttentionRollout(vit), kc.GradientRollout(vit), kc.LeGrad(vit), kc.GradCAM(vit)]
    columns = {}
    for e in explainers:
        where = f"({e.layer_path})" if e.layer_path else "(attention)"
        columns[f"{type(e).__name__}\n{where}"] = e.explain(images)
    return columns


def vit_figure(out):
    vit = load_vit()
    images, labels, boxes = make_dataset(64, seed=SEED)
    rows = one_per_class(labels, len(CLASS_NAMES))
    images, labels, boxes = images[rows], labels[rows], boxes[rows]
    columns = vit_columns(vit, images)
    fig = kc.plot(images, columns, class_names=CLASS_NAMES, labels=labels, cell_size=1.8)
    width = len(columns) + 1
    for i, box in enumerate(boxes):
        outline(fig.axes[i * width], box)
    fig.savefig(out, bbox_inches="tight")
    # The pointing game on more images than the figure shows.
    many, _, many_boxes = make_dataset(64, seed=SEED)
    for header, explanation in vit_columns(vit, many).items():
        print(f"  ViT {header.splitlines()[0]:16s} pointing game {hit(explanation.maps, many_boxes).mean():.2f} "
              f"on 64 images")
    print(f"wrote {out}")


def clip_figure(out, n=4):
    clip = load_clip()
    images, cboxes, sboxes = two_shape_images(n)
    prompts = [prompt_ids(p) for p in PROMPTS]
    columns = {}
    for e in (kc.GradCAM(clip), kc.GradientRollout(clip, image_input="images")):
        maps = explain_texts(e, images, prompts)          # (n, 2, 64, 64)
        for j, p in enumerate(PROMPTS):
            columns[f"{type(e).__name__}\n\"{p}\""] = maps[:, j]
    fig = kc.plot(images, columns, cell_size=1.8)
    width = len(columns) + 1
    for i in range(n):
        outline(fig.axes[i * width], cboxes[i], "white")
        outline(fig.axes[i * width], sboxes[i], "black")
    fig.savefig(out, bbox_inches="tight")
    many, many_c, many_s = two_shape_images(24)
    for e in (kc.GradCAM(clip), kc.GradientRollout(clip, image_input="images")):
        maps = explain_texts(e, many, prompts)
        print(f"  CLIP {type(e).__name__}: maximum in the circle's / the square's box: 'circle' "
              f"{hit(maps[:, 0], many_c).mean():.2f} / {hit(maps[:, 0], many_s).mean():.2f}, 'square' "
              f"{hit(maps[:, 1], many_c).mean():.2f} / {hit(maps[:, 1], many_s).mean():.2f} ({len(many)} images)")
    print(f"wrote {out}")


def main(folder):
    vit_figure(folder / "transformers_vit.png")
    clip_figure(folder / "transformers_clip.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)

"""Quickstart: where does a trained CNN look? Grad-CAM and Grad-CAM++ on the demo model.

    python examples/quickstart.py [OUT_DIR]      (default: ./quickstart-out, created if needed)

keras-cam ships a small CNN trained on generated shapes (circle, square, triangle,
cross), and the generator, which knows each shape's box. The script explains four fresh
images with Grad-CAM and Grad-CAM++, draws each map over its image with the true box,
writes OUT_DIR/quickstart.png, and prints how often each map's peak falls in the box
(the pointing game). No download, no network: everything comes with keras-cam.
"""

import os
import sys

import matplotlib

matplotlib.use("Agg")  # write files; no window needed
import matplotlib.patches as patches
import matplotlib.pyplot as plt

import keras_cam
from keras_cam.demo import CLASS_NAMES, load_model, make_dataset

N_IMAGES, SEED = 4, 11


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    model = load_model()
    images, labels, boxes = make_dataset(N_IMAGES, seed=SEED)   # images in [0, 1]; boxes (y0, x0, y1, x1)
    methods = {"Grad-CAM": keras_cam.GradCAM(model), "Grad-CAM++": keras_cam.GradCAMPlusPlus(model)}
    results = {name: cam.explain(images) for name, cam in methods.items()}   # each image's top class

    fig, axes = plt.subplots(N_IMAGES, 1 + len(methods), figsize=(3 * (1 + len(methods)), 3 * N_IMAGES))
    for i in range(N_IMAGES):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_title(f"true: {CLASS_NAMES[labels[i]]}")
        for j, (name, result) in enumerate(results.items(), start=1):
            k = int(result.targets[i])
            axes[i, j].imshow(keras_cam.overlay(images[i], result.maps[i]))
            axes[i, j].set_title(f"{name}: {CLASS_NAMES[k]} ({result.probabilities[i]:.2f})")
        for ax in axes[i]:
            y0, x0, y1, x1 = boxes[i]
            ax.add_patch(patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0,
                                           fill=False, edgecolor="white", linewidth=1.5))
            ax.axis("off")
    fig.tight_layout()
    figure = os.path.join(out_dir, "quickstart.png")
    fig.savefig(figure, dpi=80)
    plt.close(fig)

    for name, result in results.items():
        hits = keras_cam.metrics.pointing_game(result.maps, boxes)
        print(f"{name}: peak inside the true box for {hits:.0f}% of the images")
    print(f"wrote {figure}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quickstart-out")

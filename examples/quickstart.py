"""Minimal example: Grad-CAM and Grad-CAM++ on a small CNN, written to a PNG.

    python examples/quickstart.py [OUT.png]
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import keras_cam as kc
from keras_cam._compat import keras

rng = np.random.default_rng(0)
model = keras.Sequential([
    keras.Input((64, 64, 3)),
    keras.layers.Conv2D(16, 3, activation="relu"),
    keras.layers.MaxPooling2D(),
    keras.layers.Conv2D(32, 3, activation="relu", name="last_conv"),
    keras.layers.GlobalAveragePooling2D(),
    keras.layers.Dense(3, activation="softmax"),
])
image = rng.random((64, 64, 3), dtype=np.float32)

fig, axes = plt.subplots(1, 3, figsize=(9, 3))
axes[0].imshow(image)
axes[0].set_title("image")
for ax, method in zip(axes[1:], (kc.GradCAM, kc.GradCAMPlusPlus)):
    ax.imshow(image)
    ax.imshow(method(model)(image), cmap="jet", alpha=0.5)
    ax.set_title(method.__name__)
for ax in axes:
    ax.axis("off")
out = sys.argv[1] if len(sys.argv) > 1 else "quickstart.png"
fig.savefig(out, bbox_inches="tight")
print(f"wrote {out}")

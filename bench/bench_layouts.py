"""Grad-CAM speed on other layouts: a ViT's token grid, 1-D signals, 3-D volumes.

    python bench/bench_layouts.py [--repeat 7] [--models vit,conv1d,conv3d] [--batches 1,8]

For each model (random weights, built from a config; nothing is downloaded):
- ``vit``: a ViT-Ti/16-sized KerasHub ``ViTImageClassifier`` at 224x224
  (patch 16, 12 blocks, hidden 192, 3 heads, MLP 768, 1000 classes);
  Grad-CAM at its automatic layer, the last block's first LayerNorm;
- ``conv1d``: a Conv1D classifier on length-4096 signals (3 channels);
- ``conv3d``: a Conv3D classifier on 64^3 volumes (1 channel),

reports at each batch size, timed interleaved in the same run on the same
input (medians): Grad-CAM time / compiled forward pass (``tf.function``
of the model; target <= 1.2), and the explainer's first call (construction,
the automatic layer choice and tracing included) against one forward pass.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved, table  # noqa: E402

import keras_cam as kc  # noqa: E402
from keras_cam._compat import keras  # noqa: E402


def vit():
    import keras_hub  # Keras 3 only
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(224, 224, 3), patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768)
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=1000), (224, 224, 3)


def conv1d():
    x = keras.Input((4096, 3))
    h = x
    for filters in (32, 64, 128, 128):
        h = keras.layers.Conv1D(filters, 7, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling1D(4)(h)
    h = keras.layers.Conv1D(128, 3, padding="same", activation="relu", name="last_conv")(h)
    y = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(x, y), (4096, 3)


def conv3d():
    x = keras.Input((64, 64, 64, 1))
    h = x
    for filters in (8, 16, 32):
        h = keras.layers.Conv3D(filters, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling3D(2)(h)
    h = keras.layers.Conv3D(64, 3, padding="same", activation="relu", name="last_conv")(h)
    y = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling3D()(h))
    return keras.Model(x, y), (64, 64, 64, 1)


MODELS = {"vit": vit, "conv1d": conv1d, "conv3d": conv3d}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--models", default="vit,conv1d,conv3d")
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        keras.utils.set_random_seed(0)
        model, shape = MODELS[name]()
        forward = tf.function(lambda x, m=model: m(x, training=False))
        for n in (int(b) for b in args.batches.split(",")):
            x = tf.constant(np.random.default_rng(n).uniform(size=(n,) + shape).astype(np.float32))
            forward(x)  # traced before the first-call timing
            t0 = time.perf_counter()
            cam = kc.GradCAM(model)
            cam(x)
            first = time.perf_counter() - t0
            t = interleaved({"forward": lambda: forward(x).numpy(), "gradcam": lambda: cam(x)},
                            repeat=args.repeat, warmup=2)
            rows.append([name, n, cam.layer_path, f"{1000 * t['forward']:.1f}", f"{1000 * t['gradcam']:.1f}",
                         f"{t['gradcam'] / t['forward']:.2f}", f"{first:.2f}"])
            print(table(["model", "batch", "layer", "forward ms", "Grad-CAM ms", "ratio", "first call s"],
                        rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(["model", "batch", "layer", "forward ms", "Grad-CAM ms", "ratio", "first call s"], rows))


if __name__ == "__main__":
    main()

"""Train the demo model and write its weights (reproducible).

    python -m keras_cam.demo.train [--out keras_cam/demo/demo_weights.npz]

Trains :func:`keras_cam.demo.model.build_model` on generated shapes
(:func:`keras_cam.demo.data.make_dataset`, training seed 0), measures the
accuracy on fresh images (seed 1, never seen in training) and writes the
weights. Seeds and TensorFlow's deterministic ops fix every random choice, so
the same command on the same software gives the same weights (two runs on
one machine gave identical arrays). It prints the training time, wall and CPU.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

TRAIN_SEED, TEST_SEED = 0, 1


def train(n_train=4000, epochs=5, seed=TRAIN_SEED, verbose=1):
    """Train a fresh demo model; returns ``(model, wall seconds, CPU seconds of all threads)``."""
    import tensorflow as tf

    from keras_cam._compat import keras
    from keras_cam.demo.data import make_dataset
    from keras_cam.demo.model import build_model

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    images, labels, _ = make_dataset(n_train, seed=seed)
    model = build_model(keras)
    batch_size = 32
    steps = epochs * -(-n_train // batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(4e-3, steps)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(images, labels, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=verbose)
    return model, time.perf_counter() - start, time.process_time() - cpu


def accuracy(model, n=1000, seed=TEST_SEED):
    """Top-1 accuracy on ``n`` fresh generated images."""
    from keras_cam.demo.data import make_dataset

    images, labels, _ = make_dataset(n, seed=seed)
    pred = model.predict(images, batch_size=256, verbose=0).argmax(-1)
    return float(np.mean(pred == labels))


def main(argv=None):
    from keras_cam.demo.model import WEIGHTS_PATH, save_weights

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=WEIGHTS_PATH, help="weights file to write (.npz)")
    parser.add_argument("--n-train", type=int, default=4000, help="training images (default 4000)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs (default 5)")
    args = parser.parse_args(argv)
    model, seconds, cpu = train(args.n_train, args.epochs, verbose=2)
    acc = accuracy(model)
    save_weights(model, args.out)
    print(
        f"trained in {seconds:.1f} s ({cpu:.1f} s of CPU); accuracy on 1000 fresh images: {acc:.3f}; "
        f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)"
    )


if __name__ == "__main__":
    main()

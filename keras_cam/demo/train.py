"""Train the demo model and write its weights (reproducible).

    python -m keras_cam.demo.train [--out keras_cam/demo/demo_weights.npz]
    python -m keras_cam.demo.train --shortcut    # the planted-shortcut model (shortcut_weights.npz)

Trains :func:`keras_cam.demo.model.build_model` on generated shapes
(:func:`keras_cam.demo.data.make_dataset`, training seed 0), measures the
accuracy on fresh images (seed 1, never seen in training) and writes the
weights. It runs on every Keras backend (``KERAS_BACKEND=tensorflow``, ``jax``
or ``torch``). Seeds fix every random choice, and on TensorFlow its
deterministic ops are switched on, so the same command on the same software
and backend gives the same weights (two runs on one machine gave identical
arrays). It prints the training time, wall and CPU.

``--shortcut`` trains the same architecture on data with a planted shortcut
(``make_dataset(..., watermark=True)``: a corner mark on every image of
class 0) and writes ``shortcut_weights.npz``, the ground truth that
:func:`keras_cam.audit` is tested on.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

TRAIN_SEED, TEST_SEED = 0, 1


def seed_everything(keras, seed, deterministic=True):
    """Seed Keras's, numpy's and Python's generators; with ``deterministic``, switch on
    TensorFlow's deterministic ops (for the whole process; JAX and PyTorch on a CPU are
    deterministic already)."""
    from keras_cam import backend

    keras.utils.set_random_seed(int(seed))
    if deterministic:
        backend.deterministic_ops()


def train(n_train=4000, epochs=5, seed=TRAIN_SEED, verbose=1, watermark=None):
    """Train a fresh demo model; returns ``(model, wall seconds, CPU seconds of all threads)``.

    ``watermark`` is passed to :func:`keras_cam.demo.data.make_dataset` (None: no mark).
    """
    from keras_cam._compat import keras
    from keras_cam.demo.data import make_dataset
    from keras_cam.demo.model import build_model

    seed_everything(keras, seed)
    images, labels = make_dataset(n_train, seed=seed, watermark=watermark)[:2]
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


def accuracy(model, n=1000, seed=TEST_SEED, watermark=None):
    """Top-1 accuracy on ``n`` fresh generated images (``watermark``: see ``make_dataset``)."""
    from keras_cam.demo.data import make_dataset

    images, labels = make_dataset(n, seed=seed, watermark=watermark)[:2]
    pred = model.predict(images, batch_size=256, verbose=0).argmax(-1)
    return float(np.mean(pred == labels))


def shortcut_summary(model, n=1000, seed=TEST_SEED):
    """How much a model relies on the planted mark, measured on ``n`` fresh images.

    Returns a line with the marked class's accuracy on its images without and
    with the mark, and the share of the other classes' images that the mark
    alone turns into the marked class.
    """
    from keras_cam.demo.data import WATERMARK_CLASS, draw_mark, make_dataset

    images, labels, _ = make_dataset(n, seed=seed)
    own = labels == WATERMARK_CLASS
    marked = images.copy()
    for image in marked:
        draw_mark(image)
    plain = model.predict(images, batch_size=256, verbose=0).argmax(-1)
    with_mark = model.predict(marked, batch_size=256, verbose=0).argmax(-1)
    return (
        f"class {WATERMARK_CLASS} accuracy {np.mean(plain[own] == WATERMARK_CLASS):.3f} without the mark, "
        f"{np.mean(with_mark[own] == WATERMARK_CLASS):.3f} with it; the mark turns "
        f"{np.mean(with_mark[~own] == WATERMARK_CLASS):.3f} of the other classes' images into class "
        f"{WATERMARK_CLASS}"
    )


def main(argv=None):
    from keras_cam.demo.model import SHORTCUT_WEIGHTS_PATH, WEIGHTS_PATH, save_weights

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="weights file to write (.npz); default: the shipped file")
    parser.add_argument("--shortcut", action="store_true",
                        help="train on data with the planted corner mark (the audit's ground truth)")
    parser.add_argument("--n-train", type=int, default=4000, help="training images (default 4000)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs (default 5)")
    args = parser.parse_args(argv)
    out = args.out or (SHORTCUT_WEIGHTS_PATH if args.shortcut else WEIGHTS_PATH)
    watermark = True if args.shortcut else None
    model, seconds, cpu = train(args.n_train, args.epochs, verbose=2, watermark=watermark)
    acc = accuracy(model)
    extra = ""
    if args.shortcut:
        extra = "; " + shortcut_summary(model)
    save_weights(model, out)
    print(
        f"trained in {seconds:.1f} s ({cpu:.1f} s of CPU); accuracy on 1000 fresh images: {acc:.3f}"
        f"{extra}; wrote {out} ({os.path.getsize(out) / 1024:.0f} KiB)"
    )


if __name__ == "__main__":
    main()

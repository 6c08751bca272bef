"""What CAMCallback adds to a training epoch.

    python bench/bench_callback.py [--samples 2000] [--images 8] [--repeat 6]

Trains the demo model (``keras_cam.demo``: its shipped weights when present,
else the same architecture freshly initialized) on generated shapes, epochs
of ``--samples`` images, with a ``CAMCallback(every=2)`` on ``--images``
images (defaults otherwise: PNG, TensorBoard image and the two faithfulness
scalars). In one ``fit`` of ``2 * --repeat`` epochs, odd epochs run without
the callback's work and even epochs with it, so the two are interleaved epoch
by epoch; a timing callback placed after it measures each epoch from its
start to the end of every ``on_epoch_end``. Reports, in the same run:

- the median epoch time without and with, and the overhead
  ``with / without - 1`` (target: <= 5 %);
- the callback's own work per explained epoch (its ``on_epoch_end`` timed
  alone, median of 10) as a share of the epoch: the same cost, without the
  epoch-to-epoch noise of a shared machine;
- the one-time cost of its first explained epoch (choosing the layer,
  tracing the explainer and the metrics), measured in a warm-up ``fit``.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(__file__))
from _timing import table  # noqa: E402

import keras_cam as kc  # noqa: E402
from keras_cam._compat import keras  # noqa: E402
from keras_cam.demo import CLASS_NAMES, build_model, make_dataset  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    """Seconds from each epoch's start to the end of the callbacks listed before it."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def demo_model():
    try:
        from keras_cam.demo import load_model
        return load_model(), "demo model, shipped weights"
    except (ImportError, FileNotFoundError):
        return build_model(), "demo architecture, fresh weights"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=6)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    x, y, _ = make_dataset(args.samples, seed=0)
    watched, _, _ = make_dataset(args.images, seed=1)
    model, which = demo_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    log_dir = tempfile.mkdtemp(prefix="bench_callback_")
    cb = kc.CAMCallback(watched, every=2, log_dir=log_dir, class_names=CLASS_NAMES)
    timer = EpochTimer()

    # Warm-up: traces the train step (epoch 1), then the explainer and metrics (epoch 2).
    model.fit(x, y, batch_size=args.batch_size, epochs=2, verbose=0, callbacks=[cb, timer])
    warm = list(timer.seconds)
    timer.seconds.clear()
    model.fit(x, y, batch_size=args.batch_size, epochs=2 * args.repeat, verbose=0, callbacks=[cb, timer])
    times = {"without": statistics.median(timer.seconds[0::2]), "with": statistics.median(timer.seconds[1::2])}
    work = []
    for _ in range(10):
        t0 = time.perf_counter()
        cb.on_epoch_end(1)
        work.append(time.perf_counter() - t0)
    work = statistics.median(work)
    first = warm[1] - times["without"]
    if cb.errors:
        raise SystemExit(f"the callback failed: {cb.errors[0][1]!r}")

    overhead = times["with"] / times["without"] - 1
    print(f"{which}; {args.samples} samples per epoch, batch {args.batch_size}; CAMCallback on "
          f"{args.images} images every 2nd epoch (PNG + TensorBoard + {len(cb.metrics)} metrics); "
          f"median of {args.repeat} epochs each, alternating\n")
    print(table(
        ["epoch without (s)", "epoch with (s)", "overhead", "callback work (ms)", "work / epoch",
         "first explained epoch, extra once (s)"],
        [[f"{times['without']:.2f}", f"{times['with']:.2f}", f"{100 * overhead:+.1f} %",
          f"{1000 * work:.0f}", f"{100 * work / times['without']:.2f} %", f"{first:.2f}"]],
    ))
    print("\nepochs (s), alternating without / with: " + " ".join(f"{t:.2f}" for t in timer.seconds[:2 * args.repeat]))
    print(f"target: overhead <= 5 %  ->  {'met' if max(overhead, work / times['without']) <= 0.05 else 'NOT met'}")


if __name__ == "__main__":
    main()

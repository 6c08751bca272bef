"""ISCAM and SSCAM time against their forward-pass floor.

    python bench/bench_streaming.py [--repeat 3] [--channels 64] [--repeats 4] [--batch-size 32]

MobileNetV2 (weights=None, 224x224), one image, target ``Conv_1_bn`` (its
1280 channels all vary). Each method runs ``--channels`` channels
(``max_channels``) with ``--repeats`` steps (ISCAM) or samples (SSCAM), so it
makes ``1 + channels * repeats`` forward passes: the image, then the varied
masked images ``batch_size`` at a time. The floor is the same passes through a
compiled ``model(x)`` loop on ready-made inputs (no masks built, no noise
drawn, no scores gathered), so the ratio is the overhead of the method's own
work; the target is <= 1.15. Timings are interleaved round by round
(``_timing.interleaved``) and each is the median of ``--repeat`` rounds.
"""

import argparse
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved, table  # noqa: E402

import keras_cam as kc  # noqa: E402
from keras_cam._compat import keras  # noqa: E402

LAYER = "Conv_1_bn"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*maps of images .* are all zeros")

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    x1 = tf.constant(np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32))
    xb = tf.tile(x1, (args.batch_size, 1, 1, 1))
    passes = args.channels * args.repeats
    full, rest = divmod(passes, args.batch_size)
    forward = tf.function(lambda x: model(x, training=False))

    def floor():
        forward(x1).numpy()
        for _ in range(full):
            forward(xb).numpy()
        if rest:
            forward(xb[:rest]).numpy()

    common = dict(max_channels=args.channels, batch_size=args.batch_size, verbose=0)
    cams = {
        "ISCAM": kc.ISCAM(model, LAYER, steps=args.repeats, **common),
        "SSCAM": kc.SSCAM(model, LAYER, samples=args.repeats, noise=0.2, **common),
    }
    for x in (x1, xb, xb[:rest or 1]):  # trace everything once before timing
        forward(x)
    for cam in cams.values():
        cam(x1)
    fns = {"floor": floor, **{name: (lambda c=cam: c(x1)) for name, cam in cams.items()}}
    t = interleaved(fns, args.repeat, warmup=0)
    rows = [[name, f"{args.channels} x {args.repeats}", 1 + passes, args.batch_size, f"{t['floor']:.2f}",
             f"{t[name]:.2f}", f"{t[name] / t['floor']:.3f}"] for name in cams]
    print(table(["method", "channels x repeats", "forward passes", "batch", "floor s", "method s",
                 "method / floor (<= 1.15)"], rows), flush=True)


if __name__ == "__main__":
    main()

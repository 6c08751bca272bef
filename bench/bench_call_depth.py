"""The same explainer call timed at several depths of the caller's Python stack.

    KERAS_BACKEND=torch python bench/bench_call_depth.py [--model vit_ti] [--depths 0,1,2,5,20,60]

CPython 3.11 and 3.12 keep a thread's frames in chunks of memory, and free a chunk as soon as the
last frame in it returns (CPython issue gh-142183; the fix, one chunk kept per thread, went into
3.15 and was backported to 3.14 and 3.13). A loop whose calls cross a chunk's edge then maps and
unmaps memory on every crossing. Where that edge falls depends on how deep the caller already is,
so the same call can cost much more from one function than from another. Keras calls its layers
many frames deep, so an explainer call (and a plain forward pass) can be hit. This prints the
median milliseconds of the call at each depth, for the backend that ``KERAS_BACKEND`` names.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_ti")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--depths", default="0,1,2,5,20,60")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    import numpy as np

    from bench_backends import build, fastest_forward

    import keras_cam as kc
    from keras_cam._compat import ops

    model = build(args.model, args.size)
    x = ops.convert_to_tensor(np.random.default_rng(0).uniform(-1, 1, (1, args.size, args.size, 3)).astype("float32"))
    forward = fastest_forward(model)
    cam = kc.GradCAM(model)
    cam(x)
    forward(x)

    def timed(fn):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    def at_depth(n, fn):
        return timed(fn) if n == 0 else at_depth(n - 1, fn)

    print(f"Python {sys.version.split()[0]}, {args.model}, batch 1: median ms per call at each depth of the caller")
    for name, fn in (("Grad-CAM", cam), ("forward", forward)):
        print(f"{name:9s}" + "".join(f"  depth {d}: {at_depth(d, fn):6.1f}" for d in map(int, args.depths.split(","))))


if __name__ == "__main__":
    main()

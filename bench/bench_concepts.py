"""Deep Feature Factorization against one forward pass, and the NMF solvers against each other.

    python bench/bench_concepts.py [--images 256] [--size 96] [--k 5] [--repeat 5] [--batch 32]

MobileNetV2 (weights=None, ``--size`` px; 96 px keeps the run short on a CPU)
on ``--images`` seeded random images, measured in the same run, interleaved:

- DFF time (read the last spatial layer, NMF into ``k`` concepts, maps at
  the input size, each concept's class scores through the head) / the time
  of one compiled forward pass over the same images in batches of
  ``--batch`` (``keras_cam.compiled.Compiled`` of ``model(x)``): what
  factorizing costs relative to predicting;
- the NMF alone on DFF's activation matrix: keras-cam's multiplicative
  updates (``solver="mu"``, ``keras.ops``, 200 updates at most, stop at a
  relative gain below 1e-4 per block) against scikit-learn's coordinate
  descent (``solver="sklearn"``, the same stopping tolerance), with the
  relative reconstruction error each reaches.
"""

import argparse
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved, table  # noqa: E402

import keras_cam as kc  # noqa: E402
from keras_cam import backend  # noqa: E402
from keras_cam._compat import keras, ops, to_host  # noqa: E402
from keras_cam.compiled import Compiled  # noqa: E402
from keras_cam.concepts import nmf  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Maximum number of iterations")   # scikit-learn at 200 updates
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(args.size, args.size, 3))
    x = np.random.default_rng(0).random((args.images, args.size, args.size, 3), dtype=np.float32) * 2 - 1
    batches = [ops.convert_to_tensor(x[i:i + args.batch]) for i in range(0, len(x), args.batch)]
    step = Compiled(lambda b: model(b, training=False), model=model)

    def forward():
        return [to_host(step(b)) for b in batches]

    dff = kc.DeepFeatureFactorization(model, k=args.k, batch_size=args.batch)
    found = dff(x)       # the first call chooses the layer and compiles
    t = interleaved({"forward": forward, "dff": lambda: dff(x)}, args.repeat, warmup=1)
    print(f"backend {backend.name()}, MobileNetV2 {args.size}x{args.size}, {args.images} images, layer "
          f"{dff.layer_path}, k={args.k}: {found.iterations} NMF updates, relative error {found.error:.4f}")
    rows = [["DFF", f"{t['forward'] * 1e3:.0f}", f"{t['dff'] * 1e3:.0f}", f"{t['dff'] / t['forward']:.2f}"]]
    print(table(["what", "forward ms", "DFF ms", "DFF / forward"], rows))

    features, _ = dff.reader.activations(dff.reader.batch(x))
    v = features.reshape(-1, features.shape[-1])
    v = v - np.minimum(v.min(axis=0), 0)
    solved = {s: nmf(v, args.k, solver=s) for s in ("mu", "sklearn")}
    t = interleaved({s: (lambda s=s: nmf(v, args.k, solver=s)) for s in solved}, args.repeat, warmup=1)
    print()
    print(table(["NMF solver", f"matrix {v.shape[0]} x {v.shape[1]}, k={args.k}: ms", "updates", "relative error"],
                [[s, f"{t[s] * 1e3:.0f}", solved[s].iterations, f"{solved[s].errors[-1]:.4f}"] for s in solved]))


if __name__ == "__main__":
    main()

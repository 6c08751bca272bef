"""ShapleyCAM speed against Grad-CAM: the cost of its Hessian-vector product.

    python bench/bench_new_cams.py [--repeat 10] [--batches 1,8] [--layers auto,block_13_expand_relu]

MobileNetV2 (weights=None, 224x224) at batch 1 and 8. ShapleyCAM runs one
forward pass and two backward passes through the layers after the target
(the gradient, then the gradient of ``<g, A>``), Grad-CAM one forward and one
backward pass; target: ShapleyCAM / Grad-CAM <= 2.5. Reported for the
explained logit and for the ReST score (``keras_cam.targets.ReST``), at the
automatic last layer (GlobalAveragePooling and Dense after it: a short head)
and at an earlier layer (the backward passes cross the last blocks). Both
explainers are compiled (warm) and timed interleaved on the same input, on
the backend Keras runs on.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved, table  # noqa: E402

import keras_cam as kc  # noqa: E402
from keras_cam import backend  # noqa: E402
from keras_cam._compat import keras, ops  # noqa: E402
from keras_cam.methods.shapley import ShapleyCAM  # noqa: E402
from keras_cam.targets import ReST  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--layers", default="auto,block_13_expand_relu",
                        help="target layers, comma-separated; 'auto' is the last spatial layer")
    args = parser.parse_args()
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    rows = []
    for layer in args.layers.split(","):
        layer = None if layer == "auto" else layer
        gradcam, shapley = kc.GradCAM(model, layer=layer), ShapleyCAM(model, layer=layer)
        for batch in (int(b) for b in args.batches.split(",")):
            x = ops.convert_to_tensor(np.random.default_rng(0).random((batch, 224, 224, 3), dtype=np.float32))
            for name, target in (("logit", None), ("ReST", ReST())):
                t = interleaved({"gradcam": lambda: gradcam(x, targets=target),
                                 "shapley": lambda: shapley(x, targets=target)}, args.repeat)
                rows.append([shapley.layer_path, batch, name, f"{t['gradcam'] * 1e3:.1f}",
                             f"{t['shapley'] * 1e3:.1f}", f"{t['shapley'] / t['gradcam']:.2f}"])
                print(rows[-1], flush=True)
    print()
    print(f"MobileNetV2 224x224, backend {backend.name()}, median of {args.repeat} interleaved runs")
    print(table(["layer", "batch", "score", "Grad-CAM ms", "ShapleyCAM ms", "ShapleyCAM / Grad-CAM"], rows))


if __name__ == "__main__":
    main()

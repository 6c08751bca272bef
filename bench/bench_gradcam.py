"""Grad-CAM speed against a compiled forward pass and against tf-keras-vis.

    python bench/bench_gradcam.py [--repeat 10] [--models mobilenetv2,efficientnetb0]

For MobileNetV2 and EfficientNetB0 (weights=None, 224x224) at batch 1 and 16,
reports, measured in the same run on the same input:
- Grad-CAM time / compiled forward pass time (``tf.function(model)``): the
  cost of explaining relative to predicting (target: <= 1.2);
- tf-keras-vis ``Gradcam`` time / keras-cam Grad-CAM time (target: >= 5 at
  batch 1), when tf-keras-vis is installed (``pip install -e ".[bench]"``).
Both explainers use the same target layer and the logit of the top class.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved, table  # noqa: E402

import keras_cam as kc  # noqa: E402
from keras_cam._compat import keras  # noqa: E402

MODELS = {
    "mobilenetv2": lambda: keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3)),
    "efficientnetb0": lambda: keras.applications.EfficientNetB0(weights=None, input_shape=(224, 224, 3)),
}


def peer_gradcam(model, layer_name):
    try:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore
    except ImportError:
        return None
    gradcam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
    top = None

    def run(x):
        nonlocal top
        if top is None or len(top) != len(x):
            top = list(np.argmax(model.predict(x, verbose=0), axis=1))
        return gradcam(CategoricalScore(top), x, penultimate_layer=layer_name)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default="1,16")
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        model = MODELS[name]()
        cam = kc.GradCAM(model)
        forward = tf.function(lambda x: model(x, training=False))
        peer = peer_gradcam(model, cam.layer.name)
        for batch in (int(b) for b in args.batches.split(",")):
            x = tf.constant(np.random.default_rng(0).random((batch, 224, 224, 3), dtype=np.float32))
            t = interleaved({"forward": lambda: forward(x).numpy(), "cam": lambda: cam(x)}, args.repeat)
            t_fwd, t_cam = t["forward"], t["cam"]
            if peer:
                t = interleaved({"peer": lambda: peer(x), "cam": lambda: cam(x)}, max(3, args.repeat // 3))
                t_peer = t["peer"] * t_cam / t["cam"]  # the peer relative to keras-cam timed beside it
            else:
                t_peer = float("nan")
            rows.append([name, batch, cam.layer_path, f"{t_fwd * 1e3:.1f}", f"{t_cam * 1e3:.1f}",
                         f"{t_cam / t_fwd:.2f}", f"{t_peer * 1e3:.1f}", f"{t_peer / t_cam:.1f}"])
            print(rows[-1], flush=True)
    print()
    print(table(["model", "batch", "layer", "forward ms", "Grad-CAM ms", "Grad-CAM / forward",
                 "tf-keras-vis ms", "tf-keras-vis / keras-cam"], rows))


if __name__ == "__main__":
    main()

"""Grad-CAM throughput over a dataset, against model.predict on the same dataset.

    python bench/bench_dataset.py [--images 512] [--batch-size 32] [--repeat 2]

MobileNetV2 (weights=None, 224x224, the last spatial layer ``out_relu``), a
``tf.data.Dataset`` of ``--images`` generated images batched by
``--batch-size``. Timed interleaved in the same run, each the median of
``--repeat`` passes after one warm-up pass (which traces each side's
compiled function; those first passes are reported too):

- ``model.predict(dataset)``;
- ``keras_cam.explain_dataset(GradCAM(model), dataset)``, every batch's maps
  (upsampled to 224x224 and normalized) brought back as numpy.

Reports images per second of each and their ratio, explain / predict
(target: >= 0.8).
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    images = np.random.default_rng(0).uniform(-1, 1, (args.images, 224, 224, 3)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(args.batch_size)
    cam = kc.GradCAM(model)
    n_maps = []

    def predict():
        model.predict(dataset, verbose=0)

    def explain():
        n_maps.append(sum(len(r.maps) for r in kc.explain_dataset(cam, dataset, verbose=0)))

    first = {}
    for name, fn in (("predict", predict), ("explain", explain)):
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
    times = interleaved({"predict": predict, "explain": explain}, repeat=args.repeat, warmup=0)
    assert set(n_maps) == {args.images}, n_maps

    rate = {k: args.images / v for k, v in times.items()}
    print(f"MobileNetV2 224x224 weights=None, layer {cam.layer_path!r}; {args.images} images in batches "
          f"of {args.batch_size}; median of {args.repeat} interleaved passes after a warm-up pass\n")
    print(table(
        ["", "images/s", "first pass, with tracing (s)"],
        [["model.predict", f"{rate['predict']:.1f}", f"{first['predict']:.1f}"],
         ["explain_dataset (Grad-CAM)", f"{rate['explain']:.1f}", f"{first['explain']:.1f}"]],
    ))
    ratio = rate["explain"] / rate["predict"]
    print(f"\nGrad-CAM / predict throughput: {ratio:.2f} (target >= 0.8 -> {'met' if ratio >= 0.8 else 'NOT met'})")


if __name__ == "__main__":
    main()

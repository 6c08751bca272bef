"""Cost of building an explainer, relative to one Grad-CAM call.

    python bench/bench_build.py [--repeat 5] [--b7-size 600] [--b0-size 224]
    python bench/bench_build.py --check-defaults

Building covers everything ``keras_cam.GradCAM(model)`` does before the
first call (choosing the layer; freezing a SavedModel), and
``flatten_model`` where named. Each is reported in seconds and as a ratio to
one Grad-CAM call on the same model (batch 1, compiled, after the first
call's trace), measured in the same run. Target: building < 5 calls.

- EfficientNetB7 (weights=None, 600x600): the model itself, nested in a
  Sequential with a GAP + Dense head, that model flattened then explained,
  and the probe run that picks the layer of an architecture the default
  table does not know.
- A SavedModel of EfficientNetB0 (224x224): loaded with
  ``tf.saved_model.load`` and explained (the graph is frozen then), and as a
  layer in a Keras model (TFSMLayer under Keras 3, hub.KerasLayer under
  tf-keras).

``--check-defaults`` builds every family of the default-layer table at its
smallest input and checks that the table and the probe choose the same layer.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from _timing import median_seconds, table  # noqa: E402

import keras_cam as kc  # noqa: E402
from keras_cam import layers as L  # noqa: E402
from keras_cam._compat import LEGACY, keras  # noqa: E402


def seconds(fn, repeat):
    """Median wall time of ``fn()`` over ``repeat`` fresh runs (no warm-up: building is one-off)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def call_seconds(cam, x, repeat):
    t0 = time.perf_counter()
    cam(x)  # traces
    first = time.perf_counter() - t0
    return median_seconds(lambda: cam(x), repeat=repeat, warmup=1), first


def efficientnet_b7(size, repeat):
    base = keras.applications.EfficientNetB7(weights=None, include_top=False, input_shape=(size, size, 3))
    nested = keras.Sequential([keras.Input((size, size, 3)), base, keras.layers.GlobalAveragePooling2D(),
                               keras.layers.Dense(10, activation="softmax")])
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    call, first = call_seconds(kc.GradCAM(nested), x, repeat)
    rows = [
        ("B7: GradCAM(model)", seconds(lambda: kc.GradCAM(base), repeat)),
        ("B7 nested: GradCAM(model)", seconds(lambda: kc.GradCAM(nested), repeat)),
        ("B7 nested: flatten_model + GradCAM", seconds(lambda: kc.GradCAM(kc.flatten_model(nested)), repeat)),
        ("B7 nested: probe run (unknown architecture)",
         seconds(lambda: L.auto_layer(nested, x), max(1, repeat // 2))),
    ]
    return rows, call, first


def wrapper_layer(path):
    if LEGACY:
        import tensorflow_hub as hub
        return hub.KerasLayer(path, trainable=False)
    return keras.layers.TFSMLayer(path, call_endpoint="serve")


def saved_efficientnet_b0(size, repeat):
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(size, size, 3))
    path = tempfile.mkdtemp(prefix="keras_cam_bench_")
    try:
        if LEGACY:
            tf.saved_model.save(model, path)
        else:
            model.export(path, verbose=False)
        x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
        loaded = tf.saved_model.load(path)
        call, first = call_seconds(kc.GradCAM(loaded), x, repeat)
        keras_call, _ = call_seconds(kc.GradCAM(model), x, repeat)

        def explain_loaded():  # a fresh load each time, so the freezing is counted
            kc.GradCAM(tf.saved_model.load(path))

        def explain_wrapped():
            outer = keras.Sequential([keras.Input((size, size, 3)), wrapper_layer(path)])
            kc.GradCAM(outer)

        load = seconds(lambda: tf.saved_model.load(path), repeat)
        rows = [
            ("B0 SavedModel: tf.saved_model.load (not counted)", load),
            ("B0 SavedModel: GradCAM(loaded) (freezing included)", seconds(explain_loaded, repeat) - load),
            ("B0 SavedModel as a layer: GradCAM(model) (load, freezing included)",
             seconds(explain_wrapped, repeat)),
        ]
        return rows, call, first, keras_call
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check_defaults():
    A = keras.applications
    families = [
        ("VGG16", 32), ("VGG19", 32), ("ResNet50", 32), ("ResNet101V2", 32), ("DenseNet121", 32),
        ("MobileNet", 32), ("MobileNetV2", 32), ("MobileNetV3Small", 32), ("MobileNetV3Large", 32),
        ("EfficientNetB0", 32), ("EfficientNetB7", 32), ("EfficientNetV2B0", 32), ("EfficientNetV2S", 32),
        ("Xception", 71), ("InceptionV3", 75), ("InceptionResNetV2", 75), ("ConvNeXtTiny", 32),
    ]
    builders = [(f"{n} include_top={top}", s, (lambda n=n, s=s, top=top: getattr(A, n)(
        weights=None, include_top=top, input_shape=(s, s, 3), **({"classes": 10} if top else {}))))
        for n, s in families for top in (False, True)]
    import efficientnet.tfkeras as efn
    builders.append(("efficientnet.tfkeras B0", 32, lambda: efn.EfficientNetB0(weights=None, input_shape=(32, 32, 3))))
    rows, bad = [], 0
    for label, size, build in builders:
        model = build()
        found = L.default_layer(model)
        probed = L.auto_layer(model, np.zeros((1, size, size, 3), "float32"))
        same = found is not None and found[1] is probed.layer
        # Documented: without its head, ConvNeXt ends with a LayerNormalization of the map,
        # which the table passes over (the same layer with and without the head).
        expected = same or (label.startswith("ConvNeXt") and "include_top=False" in label)
        bad += not expected
        verdict = "yes" if same else ("no (documented)" if expected else "NO")
        rows.append((label, model.name, found[0] if found else "-", probed.path, verdict))
        del model
        keras.backend.clear_session()
    print(table(["model", "name", "table", "probe", "same"], rows))
    return bad


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--b7-size", type=int, default=600)
    parser.add_argument("--b0-size", type=int, default=224)
    parser.add_argument("--check-defaults", action="store_true")
    args = parser.parse_args()
    print(f"keras-cam build cost, {'tf-keras' if LEGACY else 'Keras 3'}, TensorFlow {tf.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    if args.check_defaults:
        sys.exit(1 if check_defaults() else 0)

    rows = []
    b7_rows, b7_call, b7_first = efficientnet_b7(args.b7_size, args.repeat)
    rows += [(name, f"{s:.3f}", f"{s / b7_call:.2f}") for name, s in b7_rows]
    rows.append((f"B7 Grad-CAM call, batch 1, {args.b7_size}x{args.b7_size} (first call: {b7_first:.1f} s)",
                 f"{b7_call:.3f}", "1"))
    b0_rows, b0_call, b0_first, keras_call = saved_efficientnet_b0(args.b0_size, args.repeat)
    rows += [(name, f"{s:.3f}", f"{s / b0_call:.2f}") for name, s in b0_rows]
    rows.append((f"B0 SavedModel Grad-CAM call, batch 1, {args.b0_size}x{args.b0_size} "
                 f"(first call: {b0_first:.1f} s)", f"{b0_call:.3f}", "1"))
    rows.append(("B0 Keras model Grad-CAM call (same weights), for comparison", f"{keras_call:.3f}",
                 f"{keras_call / b0_call:.2f}"))
    print(table(["what", "seconds", "in Grad-CAM calls"], rows))


if __name__ == "__main__":
    main()

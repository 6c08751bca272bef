"""keras-cam on TensorFlow, JAX and PyTorch: each explainer against its own backend's floor.

    python bench/bench_backends.py [--backends tensorflow,jax,torch] [--models mobilenetv2,vit_ti]
                                   [--batches 1,16] [--scorecam-batches 1] [--repeat 5] [--size 224]

Each (backend, model) runs in a fresh process (the backend is chosen when
Keras is imported, and the peak memory is the process's). For MobileNetV2
and a ViT-Ti-sized KerasHub classifier (patch 16, 12 blocks, width 192,
3 heads), ``weights=None``, reports, measured in the same process and
interleaved round by round (``_timing.interleaved``):

- Grad-CAM time / the backend's fastest compiled forward pass of the same
  batch: ``tf.function(model)`` on TensorFlow, ``jax.jit`` of
  ``model.stateless_call`` on JAX, ``model(x)`` under ``torch.no_grad`` on
  PyTorch (target <= 1.2);
- Score-CAM with ``max_channels=256`` / its floor: the same masked passes
  (one per channel kept: 256 on MobileNetV2, 192 on ViT-Ti) per image plus the
  clean one, in batches of 32, through that forward
  (target <= 1.15);
- the seconds ``kc.GradCAM(model)`` takes to build (choosing the layer: for a model the
  default-layer table does not know, a probe run that records every layer's output
  shape, and on a ViT the gradient probe of its token layers);
- the first call's seconds (a fresh explainer: tracing or jit included);
- the process's peak resident memory.

Runs unchanged on a GPU machine (each backend then uses its GPU).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))


def build(name, size):
    from keras_cam._compat import keras
    keras.utils.set_random_seed(0)
    if name == "mobilenetv2":
        return keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3))
    if name == "vit_ti":
        import keras_hub
        backbone = keras_hub.models.ViTBackbone(image_shape=(size, size, 3), patch_size=16, num_layers=12,
                                                num_heads=3, hidden_dim=192, mlp_dim=768)
        return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=1000)
    raise ValueError(name)


def fastest_forward(model):
    """The backend's fastest inference call of ``model`` (numpy in, host array out)."""
    import keras

    from keras_cam._compat import to_host
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        fn = tf.function(lambda x: model(x, training=False))
        return lambda x: fn(x).numpy()
    if backend == "jax":
        import jax
        jitted = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        return lambda x: to_host(jitted([v.value for v in model.trainable_variables],
                                        [v.value for v in model.non_trainable_variables], x))
    import torch

    def run(x):
        with torch.no_grad():
            return to_host(model(x, training=False))
    return run


def worker(args):
    import numpy as np

    from _timing import interleaved

    import keras_cam as kc
    from keras_cam._compat import keras, ops
    model = build(args.model, args.size)
    forward = fastest_forward(model)
    rows = []
    rng = np.random.default_rng(0)
    for batch in args.batches:
        x = ops.convert_to_tensor(rng.uniform(-1, 1, (batch, args.size, args.size, 3)).astype("float32"))
        t0 = time.perf_counter()
        cam = kc.GradCAM(model)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        cam(x)
        first = time.perf_counter() - t0
        t = interleaved({"forward": lambda: forward(x), "cam": lambda: cam(x)}, args.repeat)
        row = {"backend": keras.backend.backend(), "model": args.model, "batch": batch, "layer": cam.layer_path,
               "forward_ms": t["forward"] * 1e3, "gradcam_ms": t["cam"] * 1e3,
               "gradcam_ratio": t["cam"] / t["forward"], "build_s": built, "first_call_s": first}
        if batch in args.scorecam_batches:
            score = kc.ScoreCAM(model, max_channels=256, batch_size=32)
            masked = ops.convert_to_tensor(rng.uniform(-1, 1, (32, args.size, args.size, 3)).astype("float32"))
            score(x)
            # The floor makes as many masked passes as Score-CAM: one per channel kept (ViT-Ti has 192).
            raw, layouts, _ = score.graph.capture(x[:1])
            channels = min(256, int(layouts[0].view(raw[0]).shape[-1]))
            passes = -(-channels * batch // 32)

            def floor():
                forward(x)
                for _ in range(passes):
                    forward(masked)
            t = interleaved({"floor": floor, "score": lambda: score(x)}, max(2, args.repeat // 2), warmup=1)
            row.update(scorecam_channels=channels, scorecam_ms=t["score"] * 1e3, floor_ms=t["floor"] * 1e3, scorecam_ratio=t["score"] / t["floor"])
        rows.append(row)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows:
        row["peak_mb"] = peak_mb
    print("ROWS " + json.dumps(rows), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--models", default="mobilenetv2,vit_ti")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--scorecam-batches", default="1")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batches = [int(b) for b in str(args.batches).split(",")]
    args.scorecam_batches = [int(b) for b in str(args.scorecam_batches).split(",") if b]
    if args.worker:
        return worker(args)
    from _timing import table
    rows = []
    for backend in args.backends.split(","):
        for model in args.models.split(","):
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
            env.pop("TF_USE_LEGACY_KERAS", None)
            cmd = [sys.executable, __file__, "--worker", "--model", model, "--size", str(args.size),
                   "--batches", ",".join(map(str, args.batches)), "--repeat", str(args.repeat),
                   "--scorecam-batches", ",".join(map(str, args.scorecam_batches))]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            found = [line for line in out.stdout.splitlines() if line.startswith("ROWS ")]
            if out.returncode or not found:
                print(f"{backend} {model} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            rows += json.loads(found[-1][5:])
            print(found[-1][5:], flush=True)

    def fmt(row, key, spec):
        return format(row[key], spec) if key in row else "-"
    print()
    print(table(["backend", "model", "batch", "forward ms", "Grad-CAM / forward", "Score-CAM (256 ch) / floor",
                 "build s", "first call s", "peak MB"],
                [[r["backend"], r["model"], r["batch"], fmt(r, "forward_ms", ".1f"), fmt(r, "gradcam_ratio", ".2f"),
                  fmt(r, "scorecam_ratio", ".2f"), fmt(r, "build_s", ".2f"), fmt(r, "first_call_s", ".1f"), fmt(r, "peak_mb", ".0f")]
                 for r in rows]))


if __name__ == "__main__":
    main()

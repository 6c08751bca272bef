"""The attention methods against the compiled forward pass, on a ViT-Ti-sized KerasHub classifier.

    python bench/bench_attention.py [--backends tensorflow,jax,torch] [--batches 1,8] [--repeat 5] [--size 224]
                                    [--layers 12]

The classifier (``weights=None``): patch 16, ``--layers`` blocks (12), width
192, 3 heads, MLP 768, 1000 classes, at ``--size`` (224). Each backend runs
in a fresh process. Measured in that process and interleaved round by round
(``_timing.interleaved``), per batch:

- AttentionRollout / the backend's fastest compiled forward pass of the same
  batch (``bench_backends.fastest_forward``; target <= 1.1): one forward
  pass that forms the attention probabilities, and 12 products of
  ``(197, 197)`` matrices per image;
- GradientRollout and LeGrad / that forward (target <= 1.3): one forward and
  one backward pass down to the first block's attention;
- Grad-CAM / forward, for reference (its backward pass stops at the last
  block's first LayerNorm);
- each method's first call in seconds (a fresh explainer: tracing or jit included).
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

METHODS = ("AttentionRollout", "GradientRollout", "LeGrad", "GradCAM")


def build(size, layers):
    import keras_hub

    from keras_cam._compat import keras
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(image_shape=(size, size, 3), patch_size=16, num_layers=layers,
                                            num_heads=3, hidden_dim=192, mlp_dim=768)
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=1000)


def worker(args):
    import numpy as np

    from _timing import interleaved
    from bench_backends import fastest_forward

    import keras_cam as kc
    from keras_cam._compat import keras, ops
    model = build(args.size, args.layers)
    forward = fastest_forward(model)
    rng = np.random.default_rng(0)
    rows = []
    for batch in args.batches:
        x = ops.convert_to_tensor(rng.uniform(-1, 1, (batch, args.size, args.size, 3)).astype("float32"))
        row = {"backend": keras.backend.backend(), "batch": batch}
        fns = {"forward": lambda: forward(x)}
        for name in METHODS:
            cam = getattr(kc, name)(model)
            t0 = time.perf_counter()
            cam(x)
            row[f"{name}_first_s"] = time.perf_counter() - t0
            fns[name] = (lambda c: lambda: c(x))(cam)
        t = interleaved(fns, args.repeat)
        row["forward_ms"] = t["forward"] * 1e3
        for name in METHODS:
            row[f"{name}_ratio"] = t[name] / t["forward"]
        rows.append(row)
        print("ROW " + json.dumps(row), file=sys.stderr, flush=True)
    print("ROWS " + json.dumps(rows), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batches = [int(b) for b in str(args.batches).split(",")]
    if args.worker:
        return worker(args)
    from _timing import table
    rows = []
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        env.pop("TF_USE_LEGACY_KERAS", None)
        cmd = [sys.executable, __file__, "--worker", "--size", str(args.size), "--layers", str(args.layers),
               "--batches", ",".join(map(str, args.batches)), "--repeat", str(args.repeat)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        found = [line for line in out.stdout.splitlines() if line.startswith("ROWS ")]
        if out.returncode or not found:
            print(f"{backend} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        rows += json.loads(found[-1][5:])
        print(found[-1][5:], flush=True)
    print()
    print(table(["backend", "batch", "forward ms", "rollout / fwd", "gradient rollout / fwd", "LeGrad / fwd",
                 "Grad-CAM / fwd", "first call s (rollout, grad. rollout, LeGrad)"],
                [[r["backend"], r["batch"], f"{r['forward_ms']:.1f}", f"{r['AttentionRollout_ratio']:.2f}",
                  f"{r['GradientRollout_ratio']:.2f}", f"{r['LeGrad_ratio']:.2f}", f"{r['GradCAM_ratio']:.2f}",
                  f"{r['AttentionRollout_first_s']:.1f}, {r['GradientRollout_first_s']:.1f}, "
                  f"{r['LeGrad_first_s']:.1f}"] for r in rows]))


if __name__ == "__main__":
    main()

"""TextSimilarity Grad-CAM on a CLIP-sized KerasHub model against the forward pass of both encoders.

    python bench/bench_text.py [--repeat 5] [--batches 1,4] [--size b32|tiny]

A ``CLIPBackbone`` built from its config (weights=None, no network) with
ViT-B/32 dimensions by default: 224x224 images, 32-pixel patches, 12 vision
blocks of width 768, a 12-block text encoder of width 512 on 77 tokens,
projections to 512. ``--size tiny`` is a 64x64, 2-block model for a quick
check. Grad-CAM explains ``vision_logits[i, i]`` (each image with its own
prompt) at the automatic layer, inside the vision encoder; the floor is the
compiled forward pass of the whole model (both encoders and the head) on
the same inputs. Target: Grad-CAM / forward <= 1.3. Both are compiled
(warm) and timed interleaved; the first call (trace and compile included)
is timed once, on a fresh explainer.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved, table  # noqa: E402

import keras_hub  # noqa: E402

import keras_cam as kc  # noqa: E402
from keras_cam import backend  # noqa: E402
from keras_cam._compat import to_host  # noqa: E402
from keras_cam.compiled import Compiled  # noqa: E402
from keras_cam.multimodal import TextSimilarity, text_inputs  # noqa: E402

SIZES = {
    "b32": dict(image=224, patch=32, vision=(768, 12, 12, 3072), text=(512, 12, 8, 2048), length=77, proj=512),
    "tiny": dict(image=64, patch=16, vision=(64, 2, 2, 128), text=(64, 2, 2, 128), length=16, proj=32),
}


def build(size):
    s = SIZES[size]
    vw, vl, vh, vi = s["vision"]
    tw, tl, th, ti = s["text"]
    return keras_hub.models.CLIPBackbone(
        keras_hub.models.CLIPVisionEncoder(patch_size=s["patch"], hidden_dim=vw, num_layers=vl, num_heads=vh,
                                           intermediate_dim=vi, image_shape=(s["image"], s["image"], 3)),
        keras_hub.models.CLIPTextEncoder(vocabulary_size=49408, embedding_dim=tw, hidden_dim=tw, num_layers=tl,
                                         num_heads=th, intermediate_dim=ti, max_sequence_length=s["length"]),
        projection_dim=s["proj"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--size", default="b32", choices=sorted(SIZES))
    args = parser.parse_args()
    model = build(args.size)
    s = SIZES[args.size]
    rng = np.random.default_rng(0)
    rows = []
    for n in (int(b) for b in args.batches.split(",")):
        images = rng.uniform(size=(n, s["image"], s["image"], 3)).astype(np.float32)
        prompt = [[49406] + list(rng.integers(1, 49000, 8)) + [49407]]
        x = text_inputs(model, images, prompt, sequence_length=s["length"])
        forward = Compiled(lambda images, token_ids: model({"images": images, "token_ids": token_ids},
                                                           training=False), model=model)
        cam = kc.GradCAM(model)
        t0 = time.perf_counter()
        to_host(cam(x, targets=TextSimilarity()))
        first = time.perf_counter() - t0
        times = interleaved({
            "gradcam": lambda: to_host(cam(x, targets=TextSimilarity())),
            "forward": lambda: to_host(forward(x["images"], x["token_ids"])["vision_logits"]),
        }, repeat=args.repeat, warmup=1)
        rows.append((n, f"{times['forward'] * 1e3:.1f}", f"{times['gradcam'] * 1e3:.1f}",
                     f"{times['gradcam'] / times['forward']:.2f}", f"{first:.1f}"))
        print(f"batch {n}: layer {cam.layer_path}", file=sys.stderr)
    print(f"CLIP {args.size} ({s['image']}x{s['image']}), {backend.name()} backend, TextSimilarity Grad-CAM "
          f"vs the forward pass of both encoders (target <= 1.3)\n")
    print(table(["batch", "forward ms", "Grad-CAM ms", "ratio", "first call s"], rows))


if __name__ == "__main__":
    main()

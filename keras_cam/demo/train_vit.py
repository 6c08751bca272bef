"""Train the demo ViT or the demo CLIP-style model and write its weights (reproducible).

    python -m keras_cam.demo.train_vit            # the ViT: keras_cam/demo/vit_weights.npz
    python -m keras_cam.demo.train_vit --clip     # the CLIP-style model: clip_weights.npz (needs the ViT's)

See :mod:`keras_cam.demo.vit` for the models and the recipes
(:func:`~keras_cam.demo.vit.train_vit`, :func:`~keras_cam.demo.vit.train_clip`).
Seeds fix every random choice and TensorFlow's deterministic ops are on, so
the same command on the same software and backend gives the same weights
(two runs on one machine gave identical arrays). It prints the training
time, wall and CPU, and the accuracy on 1000 fresh images (seed 1).
"""

from __future__ import annotations

import argparse
import os


def main(argv=None):
    from keras_cam.demo.model import save_weights
    from keras_cam.demo.vit import (CLIP_WEIGHTS_PATH, VIT_WEIGHTS_PATH, clip_accuracy, train_clip, train_vit,
                                    vit_accuracy)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", action="store_true",
                        help="train the CLIP-style model (its image trunk is the shipped ViT's)")
    parser.add_argument("--out", help="weights file to write (.npz); default: the shipped file")
    parser.add_argument("--n-train", type=int, default=4000, help="training images (default 4000)")
    parser.add_argument("--epochs", type=int, help="epochs (default 15 for the ViT, 4 for the CLIP model)")
    args = parser.parse_args(argv)
    if args.clip:
        model, seconds, cpu = train_clip(args.n_train, args.epochs or 4, verbose=2)
        acc, out = clip_accuracy(model), args.out or CLIP_WEIGHTS_PATH
    else:
        model, seconds, cpu = train_vit(args.n_train, args.epochs or 15, verbose=2)
        acc, out = vit_accuracy(model), args.out or VIT_WEIGHTS_PATH
    save_weights(model, out)
    print(f"trained in {seconds:.1f} s ({cpu:.1f} s of CPU); accuracy on 1000 fresh images: {acc:.3f}; "
          f"wrote {out} ({os.path.getsize(out) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()

"""Score-CAM speed and memory, and what Faster Score-CAM costs in quality.

    python bench/bench_scorecam.py [--repeat 2] [--parts speed,memory,quality] [--no-peer]

Every number is a ratio of timings taken in the same run, round by round
(``_timing.interleaved``), so load from elsewhere on the machine hits all
candidates alike.

- speed: MobileNetV2 (weights=None, 224x224), one image, all 1280 channels of
  ``Conv_1_bn`` (every one of them varies, so none is skipped):
  Score-CAM time / the time of the same 1281 forward passes (1 at batch 1, 40
  at batch 32) through a compiled ``model(x)`` loop (the floor is 1.0), and
  tf-keras-vis ``Scorecam`` (same layer, channels and batch size) / Score-CAM.
- memory: peak resident memory of a fresh process that explains one image
  with 1280 channels and with 320 (``max_channels=320``), for keras-cam and
  for tf-keras-vis (``max_N=320``); each in its own subprocess.
- quality: on the demo shapes with known boxes (``keras_cam.demo``), the
  shipped demo model (64 channels) and the same model with a 512-channel
  head trained here in seconds; for ``max_channels`` in {16, 64, 256}: the
  Pearson correlation of each map with full Score-CAM's, the energy pointing
  game (share of the map inside the object's box) and the speed-up.
"""

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved, table  # noqa: E402

import keras_cam as kc  # noqa: E402
from keras_cam._compat import keras  # noqa: E402

LAYER = "Conv_1_bn"
CHANNELS = 1280


def mobilenet():
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))


def image(n=1):
    """MobileNetV2's input range, [-1, 1]."""
    return tf.constant(np.random.default_rng(0).uniform(-1, 1, (n, 224, 224, 3)).astype(np.float32))


def have_peer():
    try:
        import tf_keras_vis  # noqa: F401
    except ImportError:
        return False
    return True


def peer(model, batch_size, max_n=None):
    """tf-keras-vis Score-CAM on the same layer and class, or None if it is not installed."""
    try:
        from tf_keras_vis.scorecam import Scorecam
        from tf_keras_vis.utils.scores import CategoricalScore
    except ImportError:
        return None
    scorecam = Scorecam(model)

    def run(x, top):
        with contextlib.redirect_stdout(io.StringIO()):  # its model.predict draws a progress bar
            return scorecam(CategoricalScore([top]), x.numpy(), penultimate_layer=LAYER,
                            seek_penultimate_conv_layer=False, batch_size=batch_size, max_N=max_n)
    return run


def speed(args):
    # Random weights: the maps mean nothing (here they are all zeros, which the explainer
    # warns about); the work, 1281 forward passes, is the same as for a trained model.
    warnings.filterwarnings("ignore", message=".*maps of images .* are all zeros")
    model = mobilenet()
    x1, xb = image(1), image(args.batch_size)
    cam = kc.ScoreCAM(model, LAYER, batch_size=args.batch_size, verbose=0)
    acts, outputs = cam.graph.forward(x1)
    live = int(tf.reduce_sum(tf.cast(kc.ScoreCAM.channels(acts[0]), tf.int32)))
    top = int(np.argmax(outputs[0]))
    forward = tf.function(lambda x: model(x, training=False))
    full, rest = divmod(CHANNELS, args.batch_size)

    def floor():  # the passes Score-CAM makes: the image, then the masked images in batches
        forward(x1).numpy()
        for _ in range(full):
            forward(xb).numpy()
        if rest:
            forward(xb[:rest]).numpy()

    fns = {"floor": floor, "cam": lambda: cam(x1)}
    other = None if args.no_peer else peer(model, args.batch_size)
    if other is not None:
        fns["peer"] = lambda: other(x1, top)
    # Warm-up: trace every function once, without a full round (each takes minutes on 2 cores).
    for x in (x1, xb, xb[:rest or 1]):
        forward(x)
    model.predict(xb, batch_size=args.batch_size, verbose=0)  # tf-keras-vis goes through predict
    cam(x1)
    t = interleaved(fns, args.repeat, warmup=0)
    row = [f"{live}/{CHANNELS}", args.batch_size, f"{t['floor']:.1f}", f"{t['cam']:.1f}",
           f"{t['cam'] / t['floor']:.3f}"]
    row += [f"{t['peer']:.1f}", f"{t['peer'] / t['cam']:.2f}"] if "peer" in t else ["-", "-"]
    print(table(["channels run", "batch", "1281 forwards s", "Score-CAM s", "Score-CAM / forwards",
                 "tf-keras-vis s", "tf-keras-vis / Score-CAM"], [row]), flush=True)


def status_mb(field):
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MB. The peak is read here
    rather than from ``getrusage``, whose ``ru_maxrss`` in a child process also counts
    the parent's memory at the time of the fork."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(who, channels, batch_size):
    """Run in a fresh process: explain one image, print the peak RSS as JSON."""
    model = mobilenet()
    x1 = image(1)
    top = int(np.argmax(model(x1, training=False)))
    before = status_mb("VmRSS")
    max_channels = None if channels >= CHANNELS else channels
    if who == "keras-cam":
        kc.ScoreCAM(model, LAYER, batch_size=batch_size, max_channels=max_channels, verbose=0)(x1)
    else:
        peer(model, batch_size, max_n=max_channels)(x1, top)
    print(json.dumps({"before": before, "peak": status_mb("VmHWM")}))


def memory(args):
    rows = []
    whos = ["keras-cam"] + ([] if args.no_peer or not have_peer() else ["tf-keras-vis"])
    for who in whos:
        res = {}
        for channels in (CHANNELS, CHANNELS // 4):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", f"{who}:{channels}",
                 "--batch-size", str(args.batch_size)],
                capture_output=True, text=True, check=True,
            ).stdout
            res[channels] = json.loads(out.strip().splitlines()[-1])
        a, b = res[CHANNELS], res[CHANNELS // 4]
        rows.append([who, args.batch_size, f"{b['peak']:.0f}", f"{a['peak']:.0f}",
                     f"{a['peak'] / b['peak']:.2f}", f"{b['peak'] - b['before']:.0f}",
                     f"{a['peak'] - a['before']:.0f}"])
        print(rows[-1], flush=True)
    print(table(["explainer", "batch", "peak RSS MB, 320 ch", "peak RSS MB, 1280 ch", "1280 / 320",
                 "growth while explaining MB, 320 ch", "growth MB, 1280 ch"], rows), flush=True)


def widened_demo(n_train, epochs, width=512):
    """The shipped demo model with a new head: its ``conv4_relu`` features (64 channels)
    -> a trained 1x1 convolution to ``width`` channels (``"wide"``, 16x16) -> global
    average pooling -> Dense(4, softmax). Only the head is trained (on precomputed
    features: seconds), so the wide layer's channels mean something."""
    from keras_cam.demo import TARGET_LAYER, load_model, make_dataset

    keras.utils.set_random_seed(0)
    demo = load_model()
    features = keras.Model(demo.input, demo.get_layer(TARGET_LAYER).output)
    x, y, _ = make_dataset(n_train, seed=0)
    f = features.predict(x, batch_size=256, verbose=0)
    layers = [keras.layers.Conv2D(width, 1, activation="relu", name="wide"),
              keras.layers.GlobalAveragePooling2D(name="pool"),
              keras.layers.Dense(4, activation="softmax", name="predictions")]

    def head(t):
        for layer in layers:
            t = layer(t)
        return t

    inp = keras.Input(f.shape[1:])
    trainable = keras.Model(inp, head(inp))
    trainable.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    trainable.fit(f, y, batch_size=64, epochs=epochs, verbose=0)
    return demo, keras.Model(demo.input, head(demo.get_layer(TARGET_LAYER).output))


def pearson(a, b):
    """Per-image correlation of two map batches (NaN where one map is constant)."""
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(axis=1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def channels_run(acts, max_channels=None):
    """How many channels Score-CAM runs per image, on average."""
    chosen = tf.cast(kc.ScoreCAM.channels(acts, max_channels), tf.float32)
    return float(tf.reduce_mean(tf.reduce_sum(chosen, axis=1)))


def quality(args):
    from keras_cam.demo import TARGET_LAYER, make_dataset
    from keras_cam.metrics import energy_pointing_game

    demo, wide = widened_demo(args.train, args.epochs)
    xt, yt, _ = make_dataset(500, seed=1)
    images, labels, boxes = make_dataset(args.images, seed=2)
    rows = []
    for name, model, layer, sizes in (("demo", demo, TARGET_LAYER, (16,)),
                                       ("demo + wide head", wide, "wide", (16, 64, 256))):
        acc = float(np.mean(model.predict(xt, verbose=0).argmax(-1) == yt))
        cams = {None: kc.ScoreCAM(model, layer, batch_size=64, verbose=0)}
        for m in sizes:
            cams[m] = kc.ScoreCAM(model, layer, batch_size=64, max_channels=m, verbose=0)
        acts = cams[None].graph.forward(images)[0][0]
        channels = int(acts.shape[-1])
        maps = {m: cam(images, targets=labels) for m, cam in cams.items()}
        t = interleaved({m: (lambda c=cam: c(images, targets=labels)) for m, cam in cams.items()},
                        args.repeat, warmup=0)  # the maps above traced them
        for m in cams:
            r = pearson(maps[None], maps[m])
            rows.append([f"{name} ({layer}, {channels} ch, accuracy {acc:.3f})",
                         f"{m or 'all'} ({channels_run(acts, m):.0f} run)",
                         f"{np.nanmean(r):.3f}", f"{np.nanmin(r):.3f}",
                         f"{energy_pointing_game(maps[m], boxes):.1f}", f"{t[m]:.2f}",
                         f"{t[None] / t[m]:.1f}x"])
            print(rows[-1], flush=True)
    print(f"{args.images} demo images (seed 2), explained for their true class; the head of the "
          f"wide model trained on {args.train} images, {args.epochs} epochs; accuracy on 500 "
          f"fresh images")
    print(table(["model", "max_channels", "mean corr. with full", "min corr.",
                 "energy pointing game %", "time s", "speed-up"], rows), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="timed rounds")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--parts", default="speed,memory,quality")
    parser.add_argument("--no-peer", action="store_true", help="skip tf-keras-vis")
    parser.add_argument("--train", type=int, default=2000, help="training images for the wide head")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=16, help="images explained for quality")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        who, channels = args.memory_child.split(":")
        memory_child(who, int(channels), args.batch_size)
        return
    print(f"TensorFlow {tf.__version__}, {'tf-keras' if 'tf_keras' in keras.__name__ else 'Keras'} "
          f"{keras.__version__}, {os.cpu_count()} CPUs", flush=True)
    for part in args.parts.split(","):
        print(f"\n## {part}", flush=True)
        {"speed": speed, "memory": memory, "quality": quality}[part](args)


if __name__ == "__main__":
    main()

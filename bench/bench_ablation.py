"""Ablation-CAM's time against its floor: the forward passes from the target layer on.

    python bench/bench_ablation.py [--repeat 5] [--batch-size 64]

MobileNetV2 (weights=None, 224x224), one image, target ``out_relu``
(7x7x1280, the automatic choice; with random weights most channels are
non-zero somewhere and ablated) or, with ``--layer block_16_project_BN``,
the 7x7x320 map before the last 1x1 convolution, where the passes from the
target layer do real work. Ablation-CAM runs the whole model once on the clean image
and then ``C`` ablated passes that start at the target layer (the layers
before it replay their recorded outputs). The floor is ``C + 1`` passes
through the layers after the target alone: a head model built here from the
same weights (global average pooling + the ``predictions`` Dense without its
softmax), compiled with ``tf.function``, run on ``C + 1`` activations in
batches of ``batch_size``. The ratio Ablation-CAM / floor (target: at most
1.15) is what the replay and the streaming cost beyond the unavoidable
passes, plus the one clean pass through the layers before the target,
which the floor leaves out; so the clean pass alone (the compiled model on
the image) is timed too, and ``cam / (floor + clean)`` is what the replay,
the ablated copies and the streaming cost.

Timings are interleaved round by round (``_timing.interleaved``) and each
candidate gets its median, so load from elsewhere hits both alike; the
median ratio of the rounds is reported too.
"""

import argparse
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from _timing import table  # noqa: E402

from keras_cam._compat import keras  # noqa: E402
from keras_cam.methods.ablation import AblationCAM  # noqa: E402

LAYER = "out_relu"


def mobilenet():
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))


def image(n=1):
    """MobileNetV2's input range, [-1, 1]."""
    return tf.constant(np.random.default_rng(0).uniform(-1, 1, (n, 224, 224, 3)).astype(np.float32))


# The layers after each benchmarked target, in order (MobileNetV2 has no skip connection past them).
HEADS = {
    "out_relu": ["global_average_pooling2d", "predictions"],
    "block_16_project_BN": ["Conv_1", "Conv_1_bn", "out_relu", "global_average_pooling2d", "predictions"],
}


def head_model(model, layer):
    """The layers after ``layer`` as their own model, copied from their configs with the same
    weights; the ``predictions`` Dense without its softmax (the logits Ablation-CAM scores)."""
    inp = keras.Input(tuple(model.get_layer(layer).output.shape[1:]))
    x = inp
    for name in HEADS[layer]:
        source = model.get_layer(name) if name != "global_average_pooling2d" else None
        if source is None:
            x = keras.layers.GlobalAveragePooling2D()(x)
            continue
        config = source.get_config()
        if name == "predictions":
            config["activation"] = None
        copy = type(source).from_config(config)
        x = copy(x)
        copy.set_weights(source.get_weights())
    return keras.Model(inp, x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--layer", choices=sorted(HEADS), default=LAYER,
                        help="target: out_relu (the default choice; GAP + Dense after it) or "
                             "block_16_project_BN (a 1x1 conv, batch norm and ReLU before them)")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {'tf-keras' if 'tf_keras' in keras.__name__ else 'Keras'} "
          f"{keras.__version__}, {os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))}",
          flush=True)
    # Random weights: the maps mean nothing and may be all zeros (the explainer warns);
    # the work, one ablated pass per channel, is the same as for a trained model.
    warnings.filterwarnings("ignore", message=".*maps of images .* are all zeros")
    model = mobilenet()
    x1 = image(1)
    step = args.batch_size
    cam = AblationCAM(model, args.layer, batch_size=step, verbose=0)
    acts = cam.graph.forward(x1)[0][0]
    channels = int(acts.shape[-1])
    live = int(tf.reduce_sum(tf.cast(AblationCAM.channels(acts), tf.int32)))
    head = head_model(model, args.layer)
    forward = tf.function(lambda a: head(a, training=False), autograph=False)
    # C + 1 activations: the clean one and one per ablated channel (all live here).
    full, rest = divmod(live + 1, step)
    batch = tf.constant(np.random.default_rng(1).uniform(0, 6, (step,) + tuple(acts.shape[1:])).astype(np.float32))

    # The head's logits equal the model's (linearized) scores: the floor computes what the passes compute.
    clean = cam.graph.run(x1)
    np.testing.assert_allclose(forward(acts).numpy(), clean.numpy(), rtol=1e-4, atol=1e-4)

    model_fn = tf.function(lambda x: model(x, training=False), autograph=False)

    def clean_pass():
        model_fn(x1).numpy()

    def floor():
        for _ in range(full):
            forward(batch).numpy()
        if rest:
            forward(batch[:rest]).numpy()

    def ablation():
        cam(x1)

    # Warm-up: trace everything once (a MobileNetV2 trace takes a while on few cores).
    t0 = time.perf_counter()
    ablation()
    trace = time.perf_counter() - t0
    for x in (batch, batch[:rest or 1]):
        forward(x)
    floor()
    clean_pass()
    ablation()
    fns = {"floor": floor, "clean": clean_pass, "cam": ablation}
    times = {name: [] for name in fns}
    ratios, overheads = [], []
    for _ in range(args.repeat):  # interleaved: a burst of load hits every candidate of a round
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        ratios.append(times["cam"][-1] / times["floor"][-1])
        overheads.append(times["cam"][-1] / (times["floor"][-1] + times["clean"][-1]))
    t = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"first call (trace) {trace:.1f} s; tracing_count {cam.tracing_count}", flush=True)
    print(table(
        ["layer", "channels ablated", "batch", "rounds", f"floor: {live + 1} head passes s", "clean pass s",
         "Ablation-CAM s", "Ablation-CAM / floor (median of rounds)", "ratio of medians",
         "Ablation-CAM / (floor + clean pass)"],
        [[args.layer, f"{live}/{channels}", step, args.repeat, f"{t['floor']:.3f}", f"{t['clean']:.3f}",
          f"{t['cam']:.3f}", f"{statistics.median(ratios):.3f}", f"{t['cam'] / t['floor']:.3f}",
          f"{statistics.median(overheads):.3f}"]]), flush=True)


if __name__ == "__main__":
    main()

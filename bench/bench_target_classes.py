"""A segmenter's classes explained one after another: does a new class cost a new compilation?

    KERAS_BACKEND=jax|tensorflow|torch python bench/bench_target_classes.py [--classes 6] [--size 128]

A KerasHub DeepLabV3 segmenter (``weights=None``, a ResNet-18-sized encoder) is explained with
``Segmentation(c)`` for each class ``c``, two calls per class, on one explainer. The reference, in
the same run, is the same two calls for a class already seen. The ratio

    (seconds for a class's first two calls) / (seconds for two calls of a class seen before)

is about 1 when the class travels with the batch as a value (one compiled call serves every class),
and several times more when each class compiles anew (one ``jax.jit`` or ``tf.function`` trace per
class, as before the class became a value).
"""

import argparse
import statistics
import time
import warnings


def build(classes, size):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256],
        stackwise_num_blocks=[2, 2, 2], stackwise_num_strides=[1, 2, 2], block_type="basic_block",
        image_shape=(size, size, 3))
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P3", upsampling_size=2, dilation_rates=[6, 12],
        low_level_feature_key="P2", projection_filters=48, image_shape=(size, size, 3))
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=classes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()

    import numpy as np

    import keras_cam as kc
    from keras_cam import backend
    from keras_cam.targets import Segmentation

    # An untrained segmenter's Grad-CAM is all zero for some classes (ReLU): timed all the same.
    warnings.filterwarnings("ignore", message=".*are all zeros")
    model = build(args.classes, args.size)
    x = np.random.default_rng(0).uniform(size=(args.batch, args.size, args.size, 3)).astype("float32")
    cam = kc.GradCAM(model)

    def two_calls(c):
        t = time.perf_counter()
        cam(x, targets=Segmentation(c))
        cam(x, targets=Segmentation(c))
        return time.perf_counter() - t

    two_calls(0)  # the first class: the explainer's own first calls (its choices, the compilation)
    new, seen = [], []
    for c in range(1, args.classes):
        new.append(two_calls(c))
        seen.append(two_calls(0))
    print(f"backend {backend.name()}, DeepLabV3 {args.size}x{args.size}, batch {args.batch}, "
          f"classes 1..{args.classes - 1} after class 0")
    print(f"  a new class, two calls: median {statistics.median(new) * 1e3:.0f} ms")
    print(f"  a class seen before, two calls: median {statistics.median(seen) * 1e3:.0f} ms")
    print(f"  ratio new / seen: {statistics.median(new) / statistics.median(seen):.2f}")
    print(f"  traces: {cam.tracing_count}")


if __name__ == "__main__":
    main()

"""Black-box methods against their floor: the same forward passes through a compiled ``model(x)``.

    python bench/bench_blackbox.py [--repeat 2] [--batch-size 32] [--cases occlusion,rise,sobol]

MobileNetV2 (``weights=None``, 224x224), one image. Each case is an
explainer and the number of masked forward passes it makes per image; its
floor is ``1 + passes`` forward passes (the clean pass, then the masked
copies ``batch_size`` at a time and one pass of the remainder) through a
compiled ``model(x)`` on inputs made beforehand, so the ratio is what the
method adds to the model's own work: building the masks, masking, scoring and
accumulating, and the streaming loop. The target is 1.15x.

Every number is a ratio of timings taken in the same run, case by case,
explainer and floor round by round (``_timing.interleaved``), so load from
elsewhere on the machine hits both alike.

To add a case, append a :class:`Case` to ``CASES``: a name, a function
``model, batch_size -> explainer`` and the masked passes per image.
"""

import argparse
import dataclasses
import math
import os
import sys
import warnings
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved, table  # noqa: E402

from keras_cam import backend  # noqa: E402
from keras_cam._compat import keras, ops, to_host  # noqa: E402
from keras_cam.compiled import Compiled  # noqa: E402
from keras_cam.methods.blackbox import RISE, Occlusion, SobolAttribution, occlusion_anchors  # noqa: E402

SIZE = 224


@dataclasses.dataclass
class Case:
    """One explainer to time against its floor.

    Attributes:
        key: the name ``--cases`` selects it by.
        name: what the table shows.
        make: ``make(model, batch_size) -> explainer``.
        passes: masked forward passes per image (the floor adds the clean pass).
    """

    key: str
    name: str
    make: Callable
    passes: int


CASES = [
    Case("occlusion", "Occlusion (patch 32, stride 16)",
         lambda model, bs: Occlusion(model, patch_size=32, stride=16, batch_size=bs),
         math.prod(len(a) for a in occlusion_anchors((SIZE, SIZE), (32, 32), (16, 16)))),
    Case("rise", "RISE (2,000 masks, grid 7)",
         lambda model, bs: RISE(model, masks=2000, grid=7, batch_size=bs), 2000),
    Case("sobol", "Sobol (grid 8, 32 designs)",
         lambda model, bs: SobolAttribution(model, grid=8, designs=32, batch_size=bs), 32 * (64 + 2)),
    # keras_cam.methods.surrogate: SLIC superpixels (on the host), the baseline's pass, then the coalitions.
    Case("kernelshap", "KernelSHAP (1,000 coalitions)",
         lambda model, bs: __import__("keras_cam.methods.surrogate", fromlist=["KernelSHAP"]).KernelSHAP(
             model, coalitions=1000, batch_size=bs), 1000 + 1),
]


def mobilenet():
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(weights=None, input_shape=(SIZE, SIZE, 3))


def image(n=1):
    """MobileNetV2's input range, [-1, 1]."""
    return ops.convert_to_tensor(np.random.default_rng(0).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32))


def run_case(case, model, forward, args):
    x1 = image(1)
    xb = image(args.batch_size)
    full, rest = divmod(case.passes, args.batch_size)
    xr = image(rest) if rest else None

    def floor():  # the passes the explainer makes: the image, then the masked copies in batches
        to_host(forward(x1))
        for _ in range(full):
            to_host(forward(xb))
        if rest:
            to_host(forward(xr))

    explainer = case.make(model, args.batch_size)
    # Warm-up: trace every function once (the explainer's trace holds the whole loop).
    for x in (x1, xb) + ((xr,) if rest else ()):
        to_host(forward(x))
    explainer(x1)
    t = interleaved({"floor": floor, "method": lambda: explainer(x1)}, args.repeat, warmup=0)
    return [case.name, 1 + case.passes, args.batch_size, f"{t['floor']:.2f}", f"{t['method']:.2f}",
            f"{t['method'] / t['floor']:.3f}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="timed rounds per case")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cases", default=",".join(c.key for c in CASES),
                        help=f"comma-separated, from {', '.join(c.key for c in CASES)}")
    args = parser.parse_args()
    chosen = args.cases.split(",")
    unknown = sorted(set(chosen) - {c.key for c in CASES})
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {[c.key for c in CASES]}")
    # Random weights: the maps mean little (some may be constant, which the explainer warns
    # about); the work, the forward passes, is the same as for a trained model.
    warnings.filterwarnings("ignore", message=".*maps of images .* are all zeros")
    print(f"Keras {keras.__version__} on {backend.name()}, {os.cpu_count()} CPUs; MobileNetV2 "
          f"(weights=None) {SIZE}x{SIZE}, one image, repeat {args.repeat}", flush=True)
    model = mobilenet()
    forward = Compiled(lambda x: model(x, training=False), model=model)
    rows = []
    for case in CASES:
        if case.key in chosen:
            rows.append(run_case(case, model, forward, args))
            print(rows[-1], flush=True)
    print(table(["method", "forward passes", "batch", "floor s", "method s", "method / floor (target <= 1.15)"],
                rows), flush=True)


if __name__ == "__main__":
    main()

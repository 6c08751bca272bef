"""keras-cam's metrics against Quantus 0.6 on the same model, maps and settings.

    python bench/bench_metrics.py [--images 64] [--repeat 3] [--rows focus,mask_auc] [--no-memory]

MobileNetV2 at 96x96 (``weights=None``, 1000 classes, seeded), ``--images``
random images, Grad-CAM maps (``keras_cam.GradCAM``), one random box per
image as the ground-truth mask. Each row of :data:`ROWS` times keras-cam's
call and Quantus's call of the same metric with Quantus's default settings
(keras-cam's call takes the same settings; a row says where it takes fewer
samples than Quantus's default, to fit a CPU run), interleaved (``_timing.interleaved``:
A, B, A, B, ..., the median of ``--repeat`` rounds after one warm-up), and
prints seconds and the ratio. Where a metric calls the model a fixed number
of times per image, a third contestant, its *floor*, makes the same number of
forward passes through the compiled model (``keras_cam.compiled.Compiled``)
in batches of 64 on ready inputs, or, for a metric that explains again, the
same number of Grad-CAM explanations of the 64 images: no metric computing
those outputs can be faster, so ``Quantus / floor`` is the most any
implementation could gain over Quantus (Quantus 0.6 batches several metrics
over the images itself, and its explanations here are keras-cam's). Where Quantus explains again (Focus, the
robustness and randomization metrics), its ``explain_func`` is keras-cam's
own (:func:`keras_cam.quantus.explain_func`: Quantus's TensorFlow path
needs tf-explain, which is unmaintained), so the ratio measures the metric's
loop, not the explainer.

A row is ``(name, model calls per image, keras-cam call, Quantus call)``,
each call a function of the shared context :class:`Context`; to add a metric,
append a row (the other metric modules add theirs the same way).

Memory (``--no-memory`` skips it): the peak resident memory of a fresh
process computing a many-perturbation metric with 1x, 4x and 16x the
perturbations, to show it stays flat.
"""

import argparse
import os
import resource
import subprocess
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved, table  # noqa: E402

warnings.filterwarnings("ignore")

SIZE = 96


class Context:
    """Everything a row needs: the model, images in both orders, maps, masks, explainers."""

    def __init__(self, images, seed=0):
        import keras_cam as kc
        import keras_cam.quantus as kq
        from keras_cam._compat import keras

        keras.utils.set_random_seed(seed)
        self.model = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), weights=None)
        rng = np.random.default_rng(seed)
        self.x = rng.uniform(-1, 1, (images, SIZE, SIZE, 3)).astype(np.float32)
        self.explainer = kc.GradCAM(self.model)
        explained = self.explainer.explain(self.x)                    # the top-1 logit of each image
        self.y = np.asarray(explained.targets).astype(np.int64)
        self.maps = explained.maps
        self.a = self.maps[:, None]                                   # Quantus's (N, 1, H, W)
        self.masks = np.zeros((images, SIZE, SIZE), bool)
        for mask in self.masks:
            y0, x0 = rng.integers(0, SIZE // 2, 2)
            h, w = rng.integers(SIZE // 4, SIZE // 2, 2)
            mask[y0:y0 + h, x0:x0 + w] = True
        self.s = self.masks[:, None]
        self.labels = np.arange(images) % 4                            # Focus: 4 classes, 16 images each at 64
        self.mosaics, self.targets, self.positions = kc.metrics.focus_mosaics(self.x, self.labels)
        self.explain_func = kq.explain_func("gradcam")
        from keras_cam.compiled import Compiled

        self._forward = Compiled(lambda batch: self.model(batch, training=False), model=self.model)
        self._batch = keras.ops.convert_to_tensor(np.resize(self.x, (64,) + self.x.shape[1:]))  # 64 rows, as the metrics' batches

    def floor(self, calls):
        """The metric's floor: ``calls`` (``"9"``) forward passes per image through the compiled model
        in batches of 64, or (``"10 explanations"``) that many Grad-CAM explanations of the images."""
        from keras_cam._compat import to_host

        count = int(calls.split()[0])
        if calls.split()[-1].startswith("explanation"):
            for _ in range(count):
                self.explainer(self.x)
            return
        for start in range(0, count * len(self.x), 64):
            to_host(self._forward(self._batch))

    def quantus(self, metric, **call):
        """Call a Quantus metric on the context's images and Grad-CAM maps (or ``call``'s overrides)."""
        args = dict(model=self.model, x_batch=self.x, y_batch=self.y, a_batch=self.a, s_batch=self.s,
                    channel_first=False, explain_func=self.explain_func, batch_size=64)
        args.update(call)
        return metric(**args)


def _q():
    import quantus

    return quantus


def _m():
    from keras_cam import metrics

    return metrics


K = dict(disable_warnings=True)

#: (name, model calls per image, keras-cam call, Quantus call), Quantus's defaults on both sides.
ROWS = [
    ("pointing_game", "0",
     lambda c: _m().pointing_game(c.maps, masks=c.masks, reduce=None),
     lambda c: c.quantus(_q().PointingGame(**K))),
    ("attribution_localization", "0",
     lambda c: _m().attribution_localization(c.maps, masks=c.masks, reduce=None),
     lambda c: c.quantus(_q().AttributionLocalisation(**K))),
    ("top_k_intersection (k=1000)", "0",
     lambda c: _m().top_k_intersection(c.maps, masks=c.masks, k=1000, reduce=None),
     lambda c: c.quantus(_q().TopKIntersection(**K))),
    ("relevance_rank_accuracy", "0",
     lambda c: _m().relevance_rank_accuracy(c.maps, masks=c.masks, reduce=None),
     lambda c: c.quantus(_q().RelevanceRankAccuracy(**K))),
    ("relevance_mass_accuracy", "0",
     lambda c: _m().relevance_mass_accuracy(c.maps, masks=c.masks, reduce=None),
     lambda c: c.quantus(_q().RelevanceMassAccuracy(**K))),
    ("mask_auc", "0",
     lambda c: _m().mask_auc(c.maps, masks=c.masks, reduce=None),
     lambda c: c.quantus(_q().AUC(**K))),
    ("focus (explains the mosaics)", "1",
     lambda c: _m().focus(c.explainer, c.x, c.labels, reduce=None),
     lambda c: c.quantus(_q().Focus(**K), x_batch=c.mosaics, y_batch=c.targets, a_batch=None, s_batch=None,
                         custom_batch=c.positions)),
    ("sparseness", "0",
     lambda c: _m().sparseness(c.maps, reduce=None),
     lambda c: c.quantus(_q().Sparseness(**K))),
    ("complexity", "0",
     lambda c: _m().complexity(c.maps, reduce=None),
     lambda c: c.quantus(_q().Complexity(**K))),
    ("random_logit (1000 classes)", "1 explanation",
     lambda c: _m().random_logit(c.explainer, c.x, c.y, reduce=None),
     lambda c: c.quantus(_q().RandomLogit(num_classes=1000, **K))),
    ("max_sensitivity (10 samples)", "10 explanations",
     lambda c: _m().max_sensitivity(c.explainer, c.x, c.y, radius=0.1, samples=10, reduce=None),
     lambda c: c.quantus(_q().MaxSensitivity(nr_samples=10, lower_bound=0.2, **K))),
    # Robustness, complexity, axioms. The images span [-1, 1]: keras-cam's noise levels are fractions
    # of each image's range (2), Quantus's absolute, so 0.1 here is Quantus's 0.2.
    ("avg_sensitivity (10 samples)", "10 explanations",
     lambda c: _m().avg_sensitivity(c.explainer, c.x, c.y, radius=0.1, samples=10, batch_size=64, reduce=None),
     lambda c: c.quantus(_q().AvgSensitivity(nr_samples=10, lower_bound=0.2, **K))),
    ("local_lipschitz_estimate (10 samples)", "10 explanations",
     lambda c: _m().local_lipschitz_estimate(c.explainer, c.x, c.y, std=0.05, samples=10, batch_size=64,
                                             reduce=None),
     lambda c: c.quantus(_q().LocalLipschitzEstimate(nr_samples=10, perturb_std=0.1, normalise=False, **K))),
    ("relative_input_stability (10 samples)", "10 explanations",
     lambda c: _m().relative_input_stability(c.explainer, c.x, c.y, samples=10, low=0.01, high=0.1,
                                             batch_size=64, reduce=None),
     lambda c: c.quantus(_q().RelativeInputStability(nr_samples=10, return_nan_when_prediction_changes=False,
                                                     **K))),
    ("consistency", "1",
     lambda c: _m().consistency(c.model, c.x, c.maps, reduce=None),
     lambda c: c.quantus(_q().Consistency(abs=False, normalise=False, **K))),
    ("effective_complexity", "0",
     lambda c: _m().effective_complexity(c.maps, reduce=None),
     lambda c: c.quantus(_q().EffectiveComplexity(**K))),
    ("completeness", "2",
     lambda c: _m().completeness(c.model, c.x, c.maps, c.y, reduce=None),
     lambda c: c.quantus(_q().Completeness(normalise=False, **K))),
    # Faithfulness: Quantus perturbs each channel of a position as its own feature, so its features_in_step is
    # 3x ours for the same steps; fewer steps, runs and samples than Quantus's defaults, to fit a CPU run.
    ("faithfulness_correlation (20 runs)", "21",
     lambda c: _m().faithfulness_correlation(c.model, c.x, c.maps, c.y, runs=20, batch_size=64, reduce=None),
     lambda c: c.quantus(_q().FaithfulnessCorrelation(nr_runs=20, **K))),
    ("faithfulness_estimate (9 steps)", "10",
     lambda c: _m().faithfulness_estimate(c.model, c.x, c.maps, c.y, features_in_step=1024, batch_size=64,
                                          reduce=None),
     lambda c: c.quantus(_q().FaithfulnessEstimate(features_in_step=3072, **K))),
    ("monotonicity (9 steps)", "9",
     lambda c: _m().monotonicity(c.model, c.x, c.maps, c.y, features_in_step=1024, batch_size=64, reduce=None),
     lambda c: c.quantus(_q().Monotonicity(features_in_step=3072, **K))),
    ("monotonicity_correlation (9 steps, 3 samples)", "28",
     lambda c: _m().monotonicity_correlation(c.model, c.x, c.maps, c.y, features_in_step=1024, samples=3,
                                             batch_size=64, reduce=None),
     lambda c: c.quantus(_q().MonotonicityCorrelation(features_in_step=3072, nr_samples=3, **K))),
    ("pixel_flipping (9 steps)", "9",
     lambda c: _m().pixel_flipping(c.model, c.x, c.maps, c.y, features_in_step=1024, batch_size=64, reduce=None),
     lambda c: np.trapezoid(c.quantus(_q().PixelFlipping(features_in_step=3072, **K)), axis=1)),
    ("region_perturbation (20 regions)", "21",
     lambda c: _m().region_perturbation(c.model, c.x, c.maps, c.y, regions=20, batch_size=64, reduce=None),
     lambda c: c.quantus(_q().RegionPerturbation(regions_evaluation=20, **K))),
    ("selectivity (patches of 24)", "16",
     lambda c: _m().selectivity(c.model, c.x, c.maps, c.y, patch_size=24, batch_size=64, reduce=None),
     lambda c: c.quantus(_q().Selectivity(patch_size=24, **K))),
    ("infidelity (patches of 24)", "17",
     lambda c: _m().infidelity(c.model, c.x, c.maps, c.y, patch_sizes=(24,), batch_size=64, reduce=None),
     lambda c: c.quantus(_q().Infidelity(perturb_patch_sizes=[24], n_perturb_samples=1, **K))),
    ("sufficiency", "1",
     lambda c: _m().sufficiency(c.model, c.x, c.maps, c.y, batch_size=64, reduce=None),
     lambda c: c.quantus(_q().Sufficiency(**K))),
]
# Not timed against Quantus 0.6: Continuity (it hands its explain_func the batch with the channel axis
# moved twice), NonSensitivity (one model call per pixel: 9216 per image here), SmoothMPRT (explains
# through quantus.explain, not explain_func), EfficientMPRT and InputInvariance (they fail on a Keras 3
# functional model: a channels-first predict, and model.layers[0] is the input layer).
# Quantus 0.6's ROAD is left out: on 3-channel images its noisy_linear_imputation indexes a mask of H*W
# positions with indices over C*H*W features (IndexError), and it scores top-1 accuracy, not the probability.


def run(ctx, rows, repeat):
    """One table row per metric: seconds, the speed-up, and (for model calls) keras-cam over its floor."""
    out = []
    for name, calls, ours, theirs in rows:
        fns = {"keras-cam": lambda: ours(ctx), "Quantus": lambda: theirs(ctx)}
        if calls.split()[0].isdigit() and int(calls.split()[0]) > 0:
            fns["floor"] = lambda: ctx.floor(calls)
        times = interleaved(fns, repeat=repeat, warmup=1)
        k, q = times["keras-cam"], times["Quantus"]
        f = times.get("floor")
        floor_cells = [f"{f:.3f}", f"{k / f:.2f}", f"{q / f:.1f}"] if f else ["–"] * 3
        out.append([name, calls, f"{k:.3f}", f"{q:.3f}", f"{q / k:.1f}x"] + floor_cells)
        print(f"  {name}: keras-cam {k:.3f} s, Quantus {q:.3f} s, floor {f or 0:.3f} s", file=sys.stderr, flush=True)
    return out


# --- memory: peak RSS of a fresh process, against the number of perturbations ----------------------

MEMORY = {
    # name: (keras-cam call of a context and a count, the counts)
    "road": (lambda c, n: _m().road(c.model, c.x, c.maps, c.y, percentages=tuple(np.linspace(1, 99, n)),
                                     order="morf"), (3, 12, 48)),
}


def memory_child(name, count, images):
    ctx = Context(images)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    MEMORY[name][0](ctx, count)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{before} {after}")


def memory(images):
    rows = []
    for name, (_, counts) in MEMORY.items():
        for n in counts:
            done = subprocess.run([sys.executable, __file__, "--memory-child", name, str(n), "--images", str(images)],
                                  capture_output=True, text=True, check=True)
            before, after = map(int, done.stdout.split()[-2:])
            rows.append([name, n, f"{before / 1024:.0f}", f"{after / 1024:.0f}", f"{(after - before) / 1024:.0f}"])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", default=None, help="comma-separated row names (their first word)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), args.images)
        return
    rows = ROWS
    if args.rows:
        wanted = set(args.rows.split(","))
        rows = [r for r in ROWS if r[0].split()[0] in wanted]
    ctx = Context(args.images)
    print(f"MobileNetV2 {SIZE}x{SIZE}, {args.images} images, Grad-CAM maps; median of {args.repeat} interleaved rounds\n")
    print(table(["metric", "model calls per image", "keras-cam s", "Quantus 0.6 s", "speed-up", "floor s",
                 "keras-cam / floor", "Quantus / floor"],
                run(ctx, rows, args.repeat)))
    if not args.no_memory:
        print("\nPeak resident memory of a fresh process (MiB): before and after the metric\n")
        print(table(["metric", "perturbations", "before", "peak", "added"], memory(args.images)))


if __name__ == "__main__":
    main()

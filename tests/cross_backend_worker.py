"""One backend's side of tests/test_cross_backend.py: every case computed in one process.

Run as ``KERAS_BACKEND=jax python tests/cross_backend_worker.py WEIGHTS.npz OUT.npz [I/N]``
(``I/N``: compute only the ``I``-th of ``N`` shares of the cases, see :func:`shards`). The
backend is fixed when Keras is imported, so the test runs this script once per backend. It
builds the models of :func:`build_models`, gives them the numpy weights of ``WEIGHTS.npz``
(drawn by :func:`draw_weights` in the test's own process), computes every case on fixed numpy
inputs and saves each case's arrays to ``OUT.npz`` as ``"<case>|<field>"``, plus a JSON entry
``"__errors__"`` (case -> ``"Type: message"`` for a case that raised) and ``"__seconds__"``
(case -> wall seconds). Nothing here compares: the test does, case by case.

A case name is ``model/method/target/mode``: ``mode`` ``raw`` is ``upsample=False,
normalize=False`` (the method's own numbers), ``norm`` the defaults (upsampled, in [0, 1]); the
guided methods have one mode (their own). The metrics are ``metrics/metric/variant/model`` and
the seeded draws ``random/what/seed/raw``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np

import keras  # noqa: E402  (Keras 3: the backend is KERAS_BACKEND's)
from keras import layers as L  # noqa: E402
from keras import ops  # noqa: E402

CLASSES = 3
BATCH = 2
SEED = 20261204


# ----------------------------------------------------------------------------- models

class ClassToken(L.Layer):
    """Prepends one learned token to a sequence ``(N, L, K)``."""

    def build(self, shape):
        self.token = self.add_weight(name="token", shape=(1, 1, int(shape[-1])), initializer="zeros")

    def call(self, x):
        return ops.concatenate([ops.zeros_like(x[:, :1]) + self.token, x], axis=1)


class PositionEmbedding(L.Layer):
    """Adds a learned embedding to every token."""

    def build(self, shape):
        self.table = self.add_weight(name="table", shape=(1, int(shape[1]), int(shape[2])), initializer="zeros")

    def call(self, x):
        return x + self.table


# Every weight is replaced by draw_weights' numpy draw, so the layers start from zeros: a random
# initializer would cost JAX a compile per kernel shape (seconds each) for nothing.
Z = dict(kernel_initializer="zeros")


def _cnn_body(x, prefix="", data_format="channels_last"):
    f = dict(data_format=data_format)
    x = L.Conv2D(4, 3, padding="same", activation="relu", name=prefix + "c1", **f, **Z)(x)
    x = L.AveragePooling2D(2, name=prefix + "pool", **f)(x)
    x = L.Conv2D(6, 3, padding="same", name=prefix + "c2", **f, **Z)(x)
    x = L.BatchNormalization(axis=1 if data_format == "channels_first" else -1, name=prefix + "bn")(x)
    return L.ReLU(name=prefix + "target")(x)


def build_models():
    """The eight models, by name: ``(model, layer to explain, images (N, ...) builder)``.

    Every model ends in a softmax (or a per-pixel softmax) so that ``linearize`` matters. No
    max pooling follows a ReLU (ties between zeros are routed differently by each backend's
    gradient) and no strided "same" convolution (the backends pad those differently).
    """
    models = {}

    x = keras.Input((12, 12, 3))
    h = L.GlobalAveragePooling2D()(_cnn_body(x))
    models["cnn"] = (keras.Model(x, L.Dense(CLASSES, activation="softmax", name="head", **Z)(h), name="cnn"), "target")

    x = keras.Input((16, 2))
    h = L.Conv1D(4, 3, padding="same", activation="relu", name="c1", **Z)(x)
    h = L.Conv1D(5, 3, padding="same", name="c2", **Z)(h)
    h = L.GlobalAveragePooling1D()(L.ReLU(name="target")(h))
    models["conv1d"] = (keras.Model(x, L.Dense(CLASSES, activation="softmax", name="head", **Z)(h), name="conv1d"),
                        "target")

    x = keras.Input((4, 8, 8, 1))
    h = L.Conv3D(3, 3, padding="same", activation="relu", name="c1", **Z)(x)
    h = L.AveragePooling3D(2, name="pool")(h)
    h = L.Conv3D(4, 3, padding="same", name="c2", **Z)(h)
    h = L.GlobalAveragePooling3D()(L.ReLU(name="target")(h))
    models["conv3d"] = (keras.Model(x, L.Dense(CLASSES, activation="softmax", name="head", **Z)(h), name="conv3d"),
                        "target")

    # A tiny ViT: 2x2 patches of an 8x8 image (a 4x4 grid of 8-d tokens), a class token, a
    # position embedding, one pre-norm block (LN, attention, residual, LN, MLP, residual), a
    # final LN, the class token -> Dense. The explained layer is the block's first LN: after
    # the attention the patch tokens no longer reach the class token.
    x = keras.Input((8, 8, 3))
    t = L.Reshape((16, 8))(L.Conv2D(8, 2, strides=2, name="patches", **Z)(x))
    t = PositionEmbedding(name="pos")(ClassToken(name="cls")(t))
    n = L.LayerNormalization(epsilon=1e-6, name="target")(t)
    t = L.Add()([t, L.MultiHeadAttention(2, 4, name="mha", **Z)(n, n)])
    h = L.Dense(16, activation="gelu", name="fc1", **Z)(L.LayerNormalization(epsilon=1e-6, name="ln2")(t))
    t = L.Add()([t, L.Dense(8, name="fc2", **Z)(h)])
    t = L.LayerNormalization(epsilon=1e-6, name="final_ln")(t)
    v = L.Flatten()(L.Cropping1D((0, 16))(t))
    models["vit"] = (keras.Model(x, L.Dense(CLASSES, activation="softmax", name="head", **Z)(v), name="vit"), "target")

    # A segmenter: per-pixel softmax over 3 classes at the input's resolution.
    x = keras.Input((12, 12, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c1", **Z)(x)
    h = L.ReLU(name="target")(L.Conv2D(5, 3, padding="same", name="c2", **Z)(h))
    models["seg"] = (keras.Model(x, L.Conv2D(CLASSES, 1, activation="softmax", name="seg", **Z)(h), name="seg"),
                     "target")

    # Two inputs: an image and a vector of side information.
    image, meta = keras.Input((12, 12, 3), name="image"), keras.Input((4,), name="meta")
    h = L.GlobalAveragePooling2D()(_cnn_body(image))
    h = L.Concatenate()([h, L.Dense(4, activation="relu", name="meta_dense", **Z)(meta)])
    models["multi"] = (keras.Model([image, meta], L.Dense(CLASSES, activation="softmax", name="head", **Z)(h),
                                   name="multi"), "target")

    # A sub-model inside a model.
    inner_x = keras.Input((12, 12, 3))
    inner = keras.Model(inner_x, _cnn_body(inner_x), name="inner")
    x = keras.Input((12, 12, 3))
    h = L.GlobalAveragePooling2D()(inner(x))
    models["nested"] = (keras.Model(x, L.Dense(CLASSES, activation="softmax", name="head", **Z)(h), name="nested"),
                        "inner/target")

    # The same CNN in channels-first layout (``(N, C, H, W)`` in, activations ``(N, K, h, w)``), at
    # 14x14: no width equals a channel count. Keras 3.15's ``ops.add`` on TensorFlow turns a
    # ``(1, C, 1, 1)`` bias into ``tf.nn.bias_add`` with NHWC when the width also equals C, so a
    # channels-first Conv2D with 6 filters at width 6 adds its bias along the width there (the
    # model itself differs from JAX's and PyTorch's; nothing keras-cam can change).
    x = keras.Input((3, 14, 14))
    h = L.GlobalAveragePooling2D(data_format="channels_first")(_cnn_body(x, data_format="channels_first"))
    models["cnn_cf"] = (keras.Model(x, L.Dense(CLASSES, activation="softmax", name="head", **Z)(h), name="cnn_cf"),
                        "target")
    return models


def draw_weights(models, seed=SEED):
    """Numpy weights for every model, ``{"<model>:<i>": array}`` in ``model.weights`` order.

    Kernels ``N(0, 1 / fan_in)``, biases and embeddings ``N(0, 0.1^2)`` / ``N(0, 0.5^2)``, norm
    scales and moving variances uniform in [0.5, 1.5] (a variance must be positive).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, (model, _) in models.items():
        for i, v in enumerate(model.weights):
            shape, kind = tuple(v.shape), v.name.split("/")[-1]
            if kind in ("gamma", "moving_variance"):
                w = rng.uniform(0.5, 1.5, shape)
            elif kind in ("beta", "bias", "moving_mean"):
                w = rng.normal(0.0, 0.1, shape)
            elif kind in ("token", "table"):
                w = rng.normal(0.0, 0.5, shape)
            else:
                fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
                w = rng.normal(0.0, 1.0 / np.sqrt(max(fan_in, 1)), shape)
            if name == "seg" and v.path == "seg/kernel":
                w[..., 2] = np.abs(w[..., 2])  # class 2's region scores are positive: Score-CAM's maps are not empty
            out[f"{name}:{i}"] = w.astype(np.float32)
    return out


def set_weights(models, weights):
    for name, (model, _) in models.items():
        count = len(model.weights)
        model.set_weights([weights[f"{name}:{i}"] for i in range(count)])


def inputs(models, seed=SEED + 1):
    """Fixed numpy inputs: ``{model: batch}`` (a list for the two-input model)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (model, _) in models.items():
        batch = [rng.uniform(-1.0, 1.0, (BATCH,) + tuple(t.shape[1:])).astype(np.float32) for t in model.inputs]
        out[name] = batch if len(batch) > 1 else batch[0]
    return out


# ----------------------------------------------------------------------------- targets

def class_difference(outputs):
    """A callable target: ``z_0 - 0.5 z_2`` (on the logits when linearized)."""
    return outputs[:, 0] - 0.5 * outputs[:, 2]


def class0_area(outputs):
    """A callable target for the segmenter: the class-0 logits summed over the image."""
    return ops.sum(outputs[..., 0], axis=(1, 2))


def targets_of(model_name):
    """``{target name: targets}`` for a model: the class forms everywhere, the target objects
    where they have a meaning (Segmentation on the segmenter; a callable, Regression and
    Similarity on the CNN, whose 3 logits also serve as a 3-d embedding)."""
    from keras_cam.targets import Regression, Segmentation, Similarity

    if model_name == "seg":
        mask = np.zeros((12, 12), bool)
        mask[2:7, 3:9] = True
        return {"segmentation": Segmentation(2), "segmentation_mask": Segmentation(1, mask=mask),
                "callable": class0_area}
    out = {"top1": None, "int": 1, "per_image": [2, 0]}
    if model_name == "cnn":
        reference = np.random.default_rng(SEED + 2).normal(size=(BATCH, CLASSES)).astype(np.float32)
        out.update({"callable": class_difference, "regression": Regression(1), "similarity": Similarity(reference)})
    return out


# ----------------------------------------------------------------------------- cases

# Small sample counts: the cases check the numbers, not the method's smoothing.
OPTIONS = {
    "smoothgradcampp": {"samples": 3, "seed": 5},
    "sscam": {"samples": 2, "seed": 5},
    "iscam": {"steps": 2},
    "smoothgrad": {"samples": 4, "seed": 5},
    "integratedgradients": {"steps": 6},
    "randomcam": {"seed": 4},  # a draw whose maps vary on every model (seed 3 empties one channels-first image)
    "fem": {"k": 1.0},  # at the default k=2 no token channel of the ViT stands out in one image: an empty map
    "occlusion": {"patch_size": 4, "stride": 4},
    "rise": {"masks": 16, "seed": 5},
    "sobolattribution": {"designs": 4, "grid": 4},
    "hsicattribution": {"designs": 16, "grid": 4},
    "lime": {"samples": 16, "seed": 5},
    "kernelshap": {"coalitions": 16, "seed": 5},
}
GUIDED = ("guidedbackprop", "guidedgradcam")
# Methods that run many passes: on the segmenter, Segmentation without a mask alone.
MANY_PASS = ("scorecam", "iscam", "sscam", "ablationcam", "smoothgradcampp", "smoothgrad", "integratedgradients",
             "fullgrad", "occlusion", "rise", "sobolattribution", "hsicattribution", "lime", "kernelshap")


def explainer(method, model, layer, **kwargs):
    import keras_cam as kc

    if method == "guidedbackprop":
        return kc.GuidedBackprop(model)
    if method == "guidedgradcam":
        return kc.GuidedGradCAM(model, layer=layer, **kwargs)
    return kc.methods.create(method, model, layer=layer, **{**OPTIONS.get(method, {}), **kwargs})


def _explanation(e):
    out = {"maps": e.maps, "scores": e.scores}
    if e.targets is not None:
        out["targets"] = e.targets
    if e.probabilities is not None:
        out["probabilities"] = e.probabilities
    return out


def method_cases(models, data):
    """``(case, thunk)`` for every method x model x target (and the normalized maps of top-1)."""
    import keras_cam as kc

    for method in kc.methods.names(attention=False) + list(GUIDED):
        for name, (model, layer) in models.items():
            if (method, name) == ("shapleycam", "vit"):
                # Its Hessian crosses LayerNormalizations, whose second derivative Keras 3 on TensorFlow
                # misses (tf.nn.moments; see ShapleyCAM's docstring): tests/test_new_cams.py checks it.
                continue
            made = {}

            def get(method=method, model=model, layer=layer, made=made):
                if "e" not in made:
                    made["e"] = explainer(method, model, layer)
                return made["e"]

            for tname, target in targets_of(name).items():
                # Every target kind on the CNN; on the other models the method's own path (top-1, or
                # the segmenter's Segmentation): a target is read from the scores the same way
                # whatever the model, so the kinds times the models would repeat the CNN's cases.
                if name not in ("cnn", "seg") and tname != "top1":
                    continue
                if method in MANY_PASS and name == "seg" and tname != "segmentation":
                    continue
                x = data[name]
                if method in GUIDED:
                    yield f"{name}/{method}/{tname}/raw", lambda g=get, x=x, t=target: _explanation(g().explain(x, t))
                    continue
                yield (f"{name}/{method}/{tname}/raw",
                       lambda g=get, x=x, t=target: _explanation(g().explain(x, t, upsample=False, normalize=False)))
                if tname in ("top1", "segmentation") and (method not in MANY_PASS or name == "cnn"):
                    yield (f"{name}/{method}/{tname}/norm",
                           lambda g=get, x=x, t=target: _explanation(g().explain(x, t)))


def smoothing_cases(models, data):
    import keras_cam as kc

    cnn, layer = models["cnn"]
    x = data["cnn"]
    yield ("cnn/hirescam+aug_smooth/top1/norm",
           lambda: _explanation(kc.HiResCAM(cnn, layer=layer, aug_smooth=True).explain(x, upsample=True, normalize=False)))
    yield ("cnn/gradcam+eigen_smooth/top1/raw",
           lambda: _explanation(kc.GradCAM(cnn, layer=layer, eigen_smooth=True).explain(x, upsample=False,
                                                                                        normalize=False)))
    yield ("cnn/gradcam+eigen_smooth/top1/norm",
           lambda: _explanation(kc.GradCAM(cnn, layer=layer, eigen_smooth=True).explain(x)))


def random_cases(models):
    """The seeded draws themselves: ``keras_cam.random.normal`` on this backend, and RandomCAM's weights."""
    import keras_cam as kc
    from keras_cam import random as kr
    from keras_cam._compat import to_host

    ids = np.array([0, 1, 7, 12345, 2**31 - 1], np.int32)
    yield "random/normal/seed7/raw", lambda: {"draws": to_host(kr.normal(7, ops.convert_to_tensor(ids), (3, 4)))}
    yield "random/normal/seed0/raw", lambda: {"draws": to_host(kr.normal(0, ops.convert_to_tensor(ids[:2]), (50,)))}

    def randomcam_weights():
        return {"weights": np.asarray(kc.RandomCAM(models["cnn"][0], layer=models["cnn"][1], seed=3).weights(6))}
    yield "random/randomcam_weights/seed3/raw", randomcam_weights


def metric_cases(models, data):
    """Every metric of keras_cam.metrics on fixed numpy maps (the same on every backend, so a
    metric is compared alone), and the metrics that explain again on Grad-CAM."""
    import keras_cam as kc
    from keras_cam import metrics as km

    rng = np.random.default_rng(SEED + 3)
    cnn, layer = models["cnn"]
    x = data["cnn"]
    maps = rng.uniform(0.0, 1.0, (BATCH, 12, 12)).astype(np.float32)
    other = rng.uniform(0.0, 1.0, (BATCH, 12, 12)).astype(np.float32)
    boxes = np.array([[2, 3, 8, 9], [0, 0, 5, 12]])
    for tname, t in (("top1", None), ("per_image", [1, 2])):
        yield f"metrics/average_drop/{tname}/cnn", lambda t=t: {"v": km.average_drop(cnn, x, maps, t, reduce=None)}
        yield (f"metrics/increase_in_confidence/{tname}/cnn",
               lambda t=t: {"v": km.increase_in_confidence(cnn, x, maps, t, reduce=None)})
        yield (f"metrics/deletion_auc/{tname}/cnn",
               lambda t=t: {"v": km.deletion_auc(cnn, x, maps, t, steps=8, reduce=None)})
        yield (f"metrics/insertion_auc/{tname}/cnn",
               lambda t=t: {"v": km.insertion_auc(cnn, x, maps, t, steps=8, substrate="blur", reduce=None)})
        yield (f"metrics/road/{tname}/cnn",
               lambda t=t: {"v": km.road(cnn, x, maps, t, percentages=(20, 60), order="combined", reduce=None)})
    for name in ("conv1d", "conv3d", "cnn_cf"):
        model, xs = models[name][0], data[name]
        spatial = xs.shape[2:] if name == "cnn_cf" else xs.shape[1:-1]
        m = rng.uniform(0.0, 1.0, (len(xs),) + tuple(spatial)).astype(np.float32)
        yield (f"metrics/deletion_auc/top1/{name}",
               lambda model=model, xs=xs, m=m: {"v": km.deletion_auc(model, xs, m, steps=5, reduce=None)})
        yield (f"metrics/road/top1/{name}",
               lambda model=model, xs=xs, m=m: {"v": km.road(model, xs, m, percentages=(50,), reduce=None)})
    yield "metrics/pointing_game/boxes/cnn", lambda: {"v": km.pointing_game(maps, boxes, reduce=None)}
    yield "metrics/energy_pointing_game/boxes/cnn", lambda: {"v": km.energy_pointing_game(maps, boxes, reduce=None)}
    yield "metrics/sparseness/maps/cnn", lambda: {"v": km.sparseness(maps, reduce=None)}
    yield "metrics/complexity/maps/cnn", lambda: {"v": km.complexity(maps, reduce=None)}
    yield "metrics/ssim/maps/cnn", lambda: {"v": km.ssim(maps, other)}
    yield "metrics/saliency_ranks/maps/cnn", lambda: {"v": km.saliency_ranks(maps)}
    yield "metrics/substrate_images/blur/cnn", lambda: {"v": km.substrate_images(x, "blur")}
    yield "metrics/neighbour_weights/rank2/cnn", lambda: dict(zip(("offsets", "weights"), km.neighbour_weights(2)))
    yield "metrics/impute/seed0/cnn", lambda: {"v": km.impute(x, maps > 0.7, noise=0.01, seed=0)}
    yield ("metrics/bootstrap_interval/seed0/cnn",
           lambda: {"v": np.asarray(km.bootstrap_interval(np.array([0.1, 0.5, 0.2]), resamples=50, seed=0))})
    yield ("metrics/random_logit/top1/cnn",
           lambda: {"v": km.random_logit(kc.GradCAM(cnn, layer=layer), x, seed=1, reduce=None)})
    yield ("metrics/max_sensitivity/top1/cnn",
           lambda: {"v": km.max_sensitivity(kc.GradCAM(cnn, layer=layer), x, samples=3, seed=1, reduce=None)})

    def evaluate():
        table = km.evaluate({"gradcam": lambda m: kc.GradCAM(m, layer=layer), "fixed": maps}, cnn, x, boxes=boxes,
                            metrics={"average_drop": {}, "increase_in_confidence": {}, "deletion_auc": {"steps": 6},
                                     "insertion_auc": {"steps": 6}, "road": {"percentages": (30, 70)},
                                     "pointing_game": {}, "energy_pointing_game": {}, "sparseness": {},
                                     "complexity": {}, "random_logit": {}},
                            resamples=40, seed=0)
        out = {}
        for metric in table.metrics:
            per = [row.get(metric) for row in table.per_image]
            out[f"per_image_{metric}"] = np.array([np.nan if v is None else v for v in per], np.float64)
            ivs = [iv.get(metric) for iv in table.intervals]
            out[f"interval_{metric}"] = np.array([(np.nan, np.nan) if v is None else v for v in ivs], np.float64)
        return out
    yield "metrics/evaluate/top1/cnn", evaluate

    def sanity():
        r = kc.sanity_check(kc.GradCAM, cnn, x, explainer_kwargs={"layer": layer}, seed=0)
        return {"spearman": r.spearman, "ssim": r.ssim, "maps": r.maps}
    yield "metrics/sanity_check/top1/cnn", sanity


def quantus_metric_cases(models, data):
    """The metrics of Quantus's six categories (faithfulness, robustness, localization,
    complexity, randomization, axiomatic), each with few perturbations, on the same fixed maps."""
    import keras_cam as kc
    from keras_cam import metrics as km
    from keras_cam._compat import to_host

    rng = np.random.default_rng(SEED + 5)
    cnn, layer = models["cnn"]
    x = data["cnn"]
    maps = rng.uniform(0.0, 1.0, (BATCH, 12, 12)).astype(np.float32)
    boxes = np.array([[2, 3, 8, 9], [0, 0, 5, 12]])

    def cam():
        return kc.GradCAM(cnn, layer=layer)

    on_maps = {
        "faithfulness_correlation": dict(subset_size=20, runs=5, seed=0),
        "faithfulness_estimate": dict(features_in_step=16),
        "monotonicity": dict(features_in_step=16),
        "monotonicity_correlation": dict(features_in_step=16, samples=3, seed=0),
        "pixel_flipping": dict(features_in_step=16),
        "region_perturbation": dict(patch_size=4, regions=5),
        "selectivity": dict(patch_size=4),
        "sensitivity_n": dict(sizes=(4, 16), subsets=4, seed=0),
        "irof": dict(n_segments=9),
        "infidelity": dict(patch_sizes=(4,)),
        "sufficiency": {},
        "completeness": {},
        "consistency": {},
        "non_sensitivity": dict(features_in_step=16),
    }
    for name, kwargs in on_maps.items():
        yield (f"metrics/{name}/top1/cnn",
               lambda name=name, kwargs=kwargs: {"v": getattr(km, name)(cnn, x, maps, reduce=None, **kwargs)})
    # The channels-first model: the images are (N, C, H, W), the maps (N, H, W).
    cf, cf_layer = models["cnn_cf"]
    xcf = data["cnn_cf"]
    mcf = rng.uniform(0.0, 1.0, (BATCH,) + tuple(xcf.shape[2:])).astype(np.float32)
    for name in ("faithfulness_correlation", "selectivity", "irof", "infidelity", "non_sensitivity"):
        yield (f"metrics/{name}/top1/cnn_cf",
               lambda name=name: {"v": getattr(km, name)(cf, xcf, mcf, reduce=None, **on_maps[name])})
    yield ("metrics/relative_input_stability/top1/cnn_cf",
           lambda: {"v": km.relative_input_stability(kc.GradCAM(cf, layer=cf_layer), xcf, samples=3, seed=1,
                                                     reduce=None)})
    for name in ("attribution_localization", "relevance_rank_accuracy", "relevance_mass_accuracy", "mask_auc"):
        yield f"metrics/{name}/boxes/cnn", lambda name=name: {"v": getattr(km, name)(maps, boxes, reduce=None)}
    yield "metrics/top_k_intersection/boxes/cnn", lambda: {"v": km.top_k_intersection(maps, boxes, k=20, reduce=None)}
    yield "metrics/effective_complexity/maps/cnn", lambda: {"v": km.effective_complexity(maps, eps=0.5, reduce=None)}
    on_explainer = {
        "avg_sensitivity": dict(samples=3, seed=1),
        "local_lipschitz_estimate": dict(samples=3, seed=1),
        "relative_input_stability": dict(samples=3, seed=1),
        "relative_output_stability": dict(samples=3, seed=1),
        "relative_representation_stability": dict(samples=3, seed=1),
        "continuity": dict(steps=3),
    }
    for name, kwargs in on_explainer.items():
        yield (f"metrics/{name}/top1/cnn",
               lambda name=name, kwargs=kwargs: {"v": getattr(km, name)(cam(), x, reduce=None, **kwargs)})
    four = np.concatenate([np.asarray(x), 0.5 * np.asarray(x)]).astype(np.float32)  # two images per label
    labels = np.array([0, 1, 0, 1])
    yield "metrics/focus/labels/cnn", lambda: {"v": km.focus(cam(), four, labels, seed=0, reduce=None)}

    def mosaics():
        made, targets, positions = km.focus_mosaics(four, labels, seed=0)
        mosaic_maps = np.tile(maps, (2, 1, 1))
        return {"mosaics": to_host(made), "targets": np.asarray(targets), "positions": np.asarray(positions),
                "scores": km.focus_scores(mosaic_maps, positions)}
    yield "metrics/focus_mosaics/labels/cnn", mosaics
    yield "metrics/focus_scores/labels/cnn", mosaics
    given = {"explainer_kwargs": {"layer": layer}}
    yield ("metrics/smooth_mprt/top1/cnn",
           lambda: {"v": km.smooth_mprt(kc.GradCAM, cnn, x, samples=2, reduce=None, **given)})
    yield "metrics/efficient_mprt/top1/cnn", lambda: {"v": km.efficient_mprt(kc.GradCAM, cnn, x, reduce=None, **given)}
    yield ("metrics/input_invariance/top1/cnn",
           lambda: {"v": km.input_invariance(kc.GradCAM, cnn, x, reduce=None, **given)})
    yield "metrics/randomized_copy/seed42/cnn", lambda: {"v": to_host(km.randomized_copy(cnn, seed=42)(x))}
    yield "metrics/shifted_copy/minus1/cnn", lambda: {"v": to_host(km.shifted_copy(cnn, -1.0)(x - 1.0))}


def detection_cases():
    """Grad-CAM and Layer-CAM of one box of a tiny KerasHub RetinaNet (``targets.Detection``), its
    weights drawn here with numpy from their shapes, so that every backend has the same detector."""
    try:
        import keras_hub
    except ImportError:  # the comparison of the other cases does not need KerasHub
        return
    from keras_cam.targets import Detection

    made = {}

    def detector():
        if "d" not in made:
            encoder = keras_hub.models.ResNetBackbone(
                input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8, 8, 8],
                stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
                image_shape=(32, 32, 3))
            backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=4,
                                                          use_p5=False, image_shape=(32, 32, 3))
            d = keras_hub.models.RetinaNetObjectDetector(backbone=backbone, num_classes=CLASSES,
                                                         pre_logits_num_conv_layers=1)
            rng = np.random.default_rng(SEED + 7)
            d.set_weights([w if np.ptp(w) == 0 else rng.normal(0, 1 / np.sqrt(np.prod(w.shape[:-1]) if w.ndim > 1
                                                                               else 1.0), w.shape).astype(w.dtype)
                           for w in d.get_weights()])
            head = d.box_head.prediction_layer  # small deltas: the decoded boxes stay near their anchors
            head.set_weights([w * 0.01 for w in head.get_weights()])
            made["d"] = d
        return made["d"]

    x = np.random.default_rng(SEED + 8).uniform(0.0, 1.0, (BATCH, 32, 32, 3)).astype(np.float32)
    target = Detection(np.array([[4.0, 4.0, 20.0, 20.0], [8.0, 12.0, 28.0, 30.0]]), 1, iou=0.1)
    for method in ("gradcam", "layercam"):
        yield (f"detector/{method}/detection/raw",
               lambda method=method: _explanation(kc_method(method, detector()).explain(
                   x, target, upsample=False, normalize=False)))


def kc_method(name, model):
    import keras_cam as kc

    return kc.methods.create(name, model)


def shards(cases, count):
    """``{case: the worker (of ``count``) that computes it}``: the ``model/method`` groups in turn.
    One group's cases stay together: they share an explainer and its compiled calls."""
    groups = list(dict.fromkeys("/".join(case.split("/")[:2]) for case in cases))
    return {case: groups.index("/".join(case.split("/")[:2])) % count for case in cases}


def main(weights_path, out_path, shard=(0, 1), verbose=False):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    import keras_cam as kc  # noqa: F401
    from keras_cam import backend

    warnings.simplefilter("ignore")  # all-zero maps and the like: the numbers are compared, not the warnings
    models = build_models()
    set_weights(models, dict(np.load(weights_path)))
    data = inputs(models)
    results, errors, seconds = {}, {}, {}
    start = time.perf_counter()
    cases = [*random_cases(models), *method_cases(models, data), *smoothing_cases(models, data),
             *metric_cases(models, data), *quantus_metric_cases(models, data), *detection_cases()]
    mine = shards([case for case, _ in cases], shard[1])
    for case, thunk in cases:
        if mine[case] != shard[0]:
            continue
        t0 = time.perf_counter()
        try:
            for field, value in thunk().items():
                results[f"{case}|{field}"] = np.asarray(value)
        except Exception as err:  # every case is reported, not the first failure only
            last = traceback.extract_tb(err.__traceback__)[-1]
            errors[case] = f"{type(err).__name__}: {str(err)[:400]} (at {os.path.basename(last.filename)}:{last.lineno})"
        seconds[case] = round(time.perf_counter() - t0, 3)
        if verbose:
            print(f"{seconds[case]:7.3f} s  {case}{'  ERROR ' + errors[case] if case in errors else ''}", flush=True)
    results["__errors__"] = np.array(json.dumps(errors))
    results["__seconds__"] = np.array(json.dumps(seconds))
    results["__backend__"] = np.array(backend.name())
    results["__total__"] = np.array(time.perf_counter() - start)
    results["__cpu__"] = np.array(time.process_time())  # CPU seconds of this process, imports included
    np.savez(out_path, **results)


if __name__ == "__main__":
    index, count = (int(n) for n in (sys.argv[3] if len(sys.argv) > 3 else "0/1").split("/"))
    main(sys.argv[1], sys.argv[2], (index, count), verbose=bool(os.environ.get("CROSS_BACKEND_VERBOSE")))

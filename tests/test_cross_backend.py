"""The same numbers on TensorFlow, JAX and PyTorch: every method, target kind, layout and metric.

Keras fixes its backend when it is imported, so this test runs ``tests/cross_backend_worker.py``
once per backend (``KERAS_BACKEND=tensorflow|jax|torch``, in subprocesses run at once; JAX's cases
are split over two). Each worker builds the same eight models (a CNN, the same CNN channels-first,
a Conv1D, a Conv3D, a tiny ViT with a class token, a segmenter, a two-input model and a model
nested in a model), gives them the numpy weights this test draws and writes to ``tmp_path``,
explains the same numpy inputs with every registered method and the guided methods: on the CNN
for every target kind (top-1, an int, one class per image, a callable, Regression, Similarity), on
the segmenter for Segmentation with and without a mask and a callable, on the other models for
top-1 (a target is read from the scores the same way on every model), with ``aug_smooth`` and
``eigen_smooth``, scores every metric of :mod:`keras_cam.metrics`, and saves the arrays. Here JAX's and PyTorch's arrays are held to
TensorFlow's, case by case: ``max |a - b| <= 1e-4 max |b| + 1e-6`` for each array (the maps before
upsampling and normalizing, the normalized maps, the scores, classes and probabilities, each
metric's per-image values), integers exactly. Every disagreement is listed, not only the first.

The randomized methods draw from :mod:`keras_cam.random`; its draws on each backend are held
to the numpy reference ``normal_numpy`` as well, so "the same seed gives the same numbers" is
checked directly and not only through the maps.

Detection is compared on a tiny KerasHub RetinaNet (32x32, two pyramid levels) whose weights
each worker draws with numpy from their shapes: Grad-CAM and Layer-CAM of one box per image.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax", reason="the cross-backend test compares with JAX: pip install 'jax[cpu]'")
pytest.importorskip("torch", reason="the cross-backend test compares with PyTorch: pip install torch")

from keras_cam._compat import LEGACY  # noqa: E402
from keras_cam.backend import name as backend_name  # noqa: E402
from keras_cam.random import normal_numpy  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "cross_backend_worker.py")
BACKENDS = ("tensorflow", "jax", "torch")
# Worker processes per backend, all run at once: JAX's share compiles each explainer's first call
# (the slowest of the three), so it is split in two.
SHARDS = {"tensorflow": 1, "jax": 2, "torch": 1}
RTOL, ATOL = 1e-4, 1e-6

# Cases that must raise on every backend (the same exception type): CAM reads the Dense head's
# weights, so it refuses target objects and callables, and models whose target layer is not
# followed by global average pooling and one Dense (the ViT, the segmenter, the two-input model).
NOT_APPLICABLE = {
    ("cam", "cnn", target) for target in ("callable", "regression", "similarity")
} | {("cam", model, "*") for model in ("vit", "seg", "multi")} | {
    # FinerCAM compares class logits: it refuses target objects and callables.
    ("finercam", "cnn", target) for target in ("callable", "regression", "similarity")
} | {("finercam", "seg", "*")} | {
    # LIME and KernelSHAP draw SLIC superpixels, which need 2-D or 3-D inputs: a signal without segments= is refused.
    (method, "conv1d", "*") for method in ("lime", "kernelshap")
}

pytestmark = pytest.mark.skipif(
    LEGACY or backend_name() != "tensorflow",
    reason="the workers run Keras 3 on each backend in processes of their own, whatever this suite's Keras "
           "and backend: the comparison runs once, in the suite's TensorFlow (Keras 3) pass")


def _not_applicable(case):
    model, method, target = case.split("/")[:3]
    return (method, model, target) in NOT_APPLICABLE or (method, model, "*") in NOT_APPLICABLE


def _run_workers(tmp):
    sys.path.insert(0, HERE)
    try:
        import cross_backend_worker as worker
    finally:
        sys.path.remove(HERE)
    weights = tmp / "weights.npz"
    np.savez(weights, **worker.draw_weights(worker.build_models()))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "KERAS_BACKEND")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    procs = []
    for backend in BACKENDS:
        for i in range(SHARDS[backend]):
            name = f"{backend}-{i}"
            log = open(tmp / f"{name}.log", "wb")
            extra = {"KERAS_BACKEND": backend}
            if backend == "jax":  # a compilation cache of its own, for this run (as tests/conftest.py's)
                extra.update(JAX_COMPILATION_CACHE_DIR=str(tmp / f"{name}-cache"),
                             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
            proc = subprocess.Popen([sys.executable, WORKER, str(weights), str(tmp / f"{name}.npz"),
                                     f"{i}/{SHARDS[backend]}"],
                                    env={**env, **extra}, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=os.path.dirname(HERE))
            procs.append((backend, name, proc, log))
    results = {backend: {"__errors__": {}, "__seconds__": {}} for backend in BACKENDS}
    failed = []
    for backend, name, proc, log in procs:
        try:
            rc = proc.wait(timeout=1500)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "timeout (1500 s)"
        log.close()
        if rc != 0:
            failed.append(f"the {name} worker failed ({rc}):\n" + (tmp / f"{name}.log").read_text(errors="replace")[-3000:])
            continue
        with np.load(tmp / f"{name}.npz") as f:
            for key in f.files:
                if key in ("__errors__", "__seconds__"):
                    results[backend][key].update(json.loads(str(f[key])))
                elif not key.startswith("__"):
                    results[backend][key] = f[key]
    if failed:
        pytest.fail("\n".join(failed))
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _run_workers(tmp_path_factory.mktemp("cross_backend"))


def _meta(result, key):
    return result[key]


def _cases(result):
    """``{case: {field: array}}`` of one worker's results."""
    out = {}
    for key, value in result.items():
        if not key.startswith("__"):
            case, field = key.split("|")
            out.setdefault(case, {})[field] = value
    return out


# Rank statistics jump when two nearly tied pixels swap: bilinear upsampling makes pairs of map values
# equal up to rounding (|diff| < 1e-6), and one swap moves a Spearman correlation over 144 pixels by
# up to ~1e-4. The maps they rank are held to RTOL; the correlations to this.
RANK_ATOL = 1e-3
RANK_FIELDS = ("spearman", "per_image_sanity_check", "interval_sanity_check")


def compare(a, b, atol=ATOL):
    """None when ``a`` (another backend) agrees with ``b`` (TensorFlow), else what differs."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return f"shape {a.shape} != {b.shape}"
    if b.dtype.kind in "iub" or a.dtype.kind in "iub":
        wrong = np.flatnonzero(a.ravel() != b.ravel())
        return None if not len(wrong) else f"{len(wrong)} of {a.size} integers differ (first at flat index {wrong[0]})"
    a, b = a.astype(np.float64), b.astype(np.float64)
    special = ~np.isfinite(b) | ~np.isfinite(a)
    if (special & ~((a == b) | (np.isnan(a) & np.isnan(b)))).any():
        return "NaN/Inf at different places"
    a, b = a[~special], b[~special]
    if not b.size:
        return None
    err, scale = float(np.max(np.abs(a - b))), float(np.max(np.abs(b)))
    allowed = RTOL * scale + atol
    return None if err <= allowed else f"max |diff| {err:.3g} > {allowed:.3g} (max |tf| {scale:.3g})"


def disagreements(results, backend):
    """Every way ``backend``'s results differ from TensorFlow's, one line each."""
    ref, other = _cases(results["tensorflow"]), _cases(results[backend])
    ref_err, other_err = _meta(results["tensorflow"], "__errors__"), _meta(results[backend], "__errors__")
    problems = []
    for case in sorted(set(ref) | set(ref_err) | set(other) | set(other_err)):
        if _not_applicable(case):
            if case not in ref_err or case not in other_err:
                problems.append(f"{case}: must raise on both backends (tensorflow: {ref_err.get(case, 'no error')}; "
                                f"{backend}: {other_err.get(case, 'no error')})")
            elif ref_err[case].split(":")[0] != other_err[case].split(":")[0]:
                problems.append(f"{case}: raises {other_err[case]} on {backend}, {ref_err[case]} on tensorflow")
            continue
        if case in ref_err:
            problems.append(f"{case}: raised on tensorflow (the reference): {ref_err[case]}")
            continue
        if case in other_err:
            problems.append(f"{case}: raised on {backend}: {other_err[case]}")
            continue
        if case not in other or case not in ref:
            problems.append(f"{case}: computed on {'tensorflow' if case in ref else backend} only")
            continue
        for field in sorted(set(ref[case]) | set(other[case])):
            if field not in ref[case] or field not in other[case]:
                problems.append(f"{case}|{field}: missing on {backend if field in ref[case] else 'tensorflow'}")
                continue
            why = compare(other[case][field], ref[case][field], RANK_ATOL if field in RANK_FIELDS else ATOL)
            if why:
                problems.append(f"{case}|{field}: {why}")
    return problems


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_every_case_agrees_with_tensorflow(results, backend):
    problems = disagreements(results, backend)
    compared = len(_cases(results["tensorflow"]))
    assert not problems, (f"{len(problems)} disagreement(s) between {backend} and tensorflow over {compared} "
                          f"cases:\n" + "\n".join(problems))


def test_the_cases_cover_every_method_model_and_target(results):
    import keras_cam as kc

    cases = _cases(results["tensorflow"])
    methods = {c.split("/")[1] for c in cases}
    assert set(kc.methods.names(attention=False)) | {"guidedbackprop", "guidedgradcam"} <= methods
    models = {c.split("/")[0] for c in cases}
    assert {"cnn", "cnn_cf", "conv1d", "conv3d", "vit", "seg", "multi", "nested"} <= models
    targets = {c.split("/")[2] for c in cases}
    assert {"top1", "int", "per_image", "callable", "regression", "similarity", "segmentation",
            "segmentation_mask", "detection"} <= targets
    assert {"hirescam+aug_smooth", "gradcam+eigen_smooth"} <= methods
    metrics = {c.split("/")[1] for c in cases if c.startswith("metrics/")}
    import keras_cam.metrics as km
    assert set(km.__all__) - {"Comparison", "EvaluationTable"} <= metrics | {"sanity_check"}


def test_the_maps_compared_are_not_empty(results):
    """Agreement on all-zero maps would prove nothing: each method's maps on TensorFlow vary
    on every model it explains (top-1, Segmentation or Detection), before normalization."""
    empty = []
    for case, fields in _cases(results["tensorflow"]).items():
        if case.endswith(("/top1/raw", "/segmentation/raw", "/detection/raw")) and "maps" in fields:
            maps = fields["maps"].reshape(len(fields["maps"]), -1).astype(np.float64)
            if (np.ptp(maps, axis=1) == 0).any():
                empty.append(case)
    assert not empty, f"constant maps (per image) on tensorflow: {empty}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_draws_are_the_numpy_reference(results, backend):
    """keras_cam.random.normal gives the numbers of its numpy reference on every backend."""
    ids = np.array([0, 1, 7, 12345, 2**31 - 1])
    got = results[backend]
    np.testing.assert_allclose(got["random/normal/seed7/raw|draws"], normal_numpy(7, ids, (3, 4)), rtol=0, atol=2e-5)
    np.testing.assert_allclose(got["random/normal/seed0/raw|draws"], normal_numpy(0, ids[:2], (50,)), rtol=0, atol=2e-5)

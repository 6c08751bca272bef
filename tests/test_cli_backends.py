"""The ``keras-cam`` command on JAX and PyTorch (``KERAS_BACKEND``), checked against the Python API.

For each backend, in fresh interpreters (what a user runs): the real
``keras-cam explain`` console script on a tiny saved ``.keras`` model, then
one verifier process (this file run as a script) that runs ``layers``,
``evaluate``, ``demo`` (its smallest settings) and a SavedModel folder
through ``keras_cam.cli.main`` and computes every expected value with the
Python API on the same backend: the overlays pixel for pixel, the explained
classes, scores and probabilities, the layer list, a metric of the table,
the demo's accuracy and Grad-CAM localization. TensorFlow must never be
imported on these backends. Each backend's case runs in that backend's test
mode (``KERAS_BACKEND=jax`` / ``torch``; the processes set their backend
themselves, so running them in every mode would only repeat them).
"""

import concurrent.futures
import contextlib
import io
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from keras_cam import backend as _backend

SUITE = _backend.name()
BACKENDS = (SUITE,) if SUITE in ("jax", "torch") else ()
pytestmark = pytest.mark.skipif(
    not BACKENDS, reason="the JAX and PyTorch test modes run the command on their backend")
SIZE, CLASSES, N_IMAGES = 24, 3, 3
CLI = [os.path.join(os.path.dirname(sys.executable), "keras-cam")]
if not os.path.exists(CLI[0]):  # not installed as a console script: the same entry point
    CLI = [sys.executable, "-m", "keras_cam.cli"]


def _env(backend):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    env["KERAS_BACKEND"] = backend
    return env


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny classifier saved as .keras (by Keras 3 on TensorFlow: the file is the same for every
    backend) and three PNG images."""
    d = tmp_path_factory.mktemp("cli_backends")
    code = (
        "import keras\n"
        "keras.utils.set_random_seed(3)\n"
        f"m = keras.Sequential([keras.Input(({SIZE}, {SIZE}, 3)), keras.layers.Conv2D(6, 3, activation='relu', "
        f"name='conv'), keras.layers.Conv2D(5, 3, activation='relu', name='conv2'), "
        f"keras.layers.GlobalAveragePooling2D(name='gap'), keras.layers.Dense({CLASSES}, activation='softmax', "
        f"name='head')], name='tiny')\n"
        f"m.save({str(d / 'tiny.keras')!r})\n")
    env = _env("tensorflow")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rng = np.random.default_rng(8)
    for i in range(N_IMAGES):
        image = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(d / f"img{i}.png"), image)
    return d


def _backend_run(work, backend):
    explain = subprocess.run(
        CLI + ["explain", *[f"img{i}.png" for i in range(N_IMAGES)], "--model", "tiny.keras", "--method", "gradcam",
               "--method", "saliency", "--preprocess", "scale", "--out", f"out_{backend}", "--quiet"],
        capture_output=True, text=True, timeout=300, cwd=work, env=_env(backend))
    verify = subprocess.run([sys.executable, os.path.abspath(__file__), "verify", str(work), backend],
                            capture_output=True, text=True, timeout=600, cwd=work, env=_env(backend))
    return explain, verify


@pytest.fixture(scope="module")
def reports(work):
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(BACKENDS))) as pool:
        futures = {b: pool.submit(_backend_run, work, b) for b in BACKENDS}
        return {b: f.result() for b, f in futures.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_explain_command(reports, backend):
    explain, verify = reports[backend]
    assert explain.returncode == 0, explain.stderr[-3000:]
    assert explain.stderr == "", explain.stderr[-3000:]   # no TensorFlow banner, no warning
    assert explain.stdout.splitlines() == [f"wrote {2 * N_IMAGES} overlay(s) and out_{backend}/predictions.json"]
    assert verify.returncode == 0, verify.stderr[-3000:]
    r = json.loads(verify.stdout.strip().splitlines()[-1])
    assert r["backend"] == backend and not r["tensorflow_imported"]
    e = r["explain"]
    assert e["targets_equal"] and e["layer"] == "conv2", e
    assert e["max_score_diff"] < 1e-5 and e["max_probability_diff"] < 1e-6, e
    assert e["overlays_equal"] == 2 * N_IMAGES, e  # every overlay, pixel for pixel


@pytest.mark.parametrize("backend", BACKENDS)
def test_layers_evaluate_demo_and_savedmodel(reports, backend):
    _, verify = reports[backend]
    assert verify.returncode == 0, verify.stderr[-3000:]
    r = json.loads(verify.stdout.strip().splitlines()[-1])
    assert r["layers"]["rc"] == 0 and r["layers"]["lines"] == r["layers"]["expected"], r["layers"]
    ev = r["evaluate"]
    assert ev["rc"] == 0 and ev["methods"] == ["gradcam"], ev
    assert abs(ev["average_drop"] - ev["expected_average_drop"]) <= 0.051, ev   # one decimal in the table
    assert abs(ev["sparseness"] - ev["expected_sparseness"]) <= 0.0051, ev
    d = r["demo"]
    assert d["rc"] == 0 and d["files"] == ["demo.png", "summary.txt"], d
    assert d["accuracy"] == d["expected_accuracy"], d
    assert d["gradcam"] == d["expected_gradcam"], d
    s = r["savedmodel"]
    assert s["rc"] == 1 and "KERAS_BACKEND=tensorflow" in s["stderr"] and "SavedModel" in s["stderr"], s
    assert len(s["stderr"].strip().splitlines()) == 1, s
    assert not r["tensorflow_imported"]


# --- the verifier (run as a script on the backend under test) ----------------------------------


def _main(argv):
    """``cli.main(argv)``: its exit status and what it printed."""
    from keras_cam import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def _verify(work, backend):
    os.chdir(work)
    import keras

    import keras_cam as kc
    from keras_cam import cli
    from keras_cam.viz import overlay

    assert keras.backend.backend() == backend
    report = {"backend": backend}
    model = keras.models.load_model("tiny.keras")
    paths = [f"img{i}.png" for i in range(N_IMAGES)]
    originals = [cli.read_image(p) for p in paths]
    batch = cli.preprocess(np.stack(originals), "scale")

    # explain (the console script's outputs)
    predictions = json.load(open(f"out_{backend}/predictions.json"))
    cams = {"gradcam": kc.GradCAM(model), "saliency": kc.Saliency(model)}
    refs = {k: c.explain(batch) for k, c in cams.items()}
    probs = model.predict(batch, verbose=0)
    equal = 0
    for i, record in enumerate(predictions["images"]):
        for key, ref in refs.items():
            png = cv2.cvtColor(cv2.imread(record["overlays"][key]), cv2.COLOR_BGR2RGB)
            equal += bool(np.array_equal(png, overlay(originals[i] / 255.0, ref.maps[i])))
    rows = predictions["images"]
    report["explain"] = {
        "layer": predictions["layer"], "overlays_equal": equal,
        "targets_equal": [r["target"] for r in rows] == refs["gradcam"].targets.tolist(),
        "max_score_diff": float(np.abs(np.array([r["score"] for r in rows]) - refs["gradcam"].scores).max()),
        "max_probability_diff": float(np.abs(np.array([r["probability"] for r in rows])
                                             - probs[np.arange(N_IMAGES), refs["gradcam"].targets]).max()),
    }

    # layers
    rc, out, _ = _main(["layers", "--model", "tiny.keras"])
    report["layers"] = {"rc": rc, "lines": out.splitlines(),
                        "expected": [f"{p}\t{s}" for p, s in kc.list_layers(model)]}

    # evaluate: the table's values against each metric computed by itself
    rc, out, err = _main(["evaluate", *paths, "--model", "tiny.keras", "--preprocess", "scale",
                          "--metric", "average_drop", "--metric", "sparseness", "--quiet"])
    table = [line for line in out.splitlines() if line.startswith("| gradcam")]
    cells = [c.strip() for c in table[0].strip("|").split("|")] if table else ["", "nan", "nan"]
    ref = refs["gradcam"]
    report["evaluate"] = {
        "rc": rc, "err": err[-500:], "methods": [line.split("|")[1].strip() for line in out.splitlines()[2:]],
        "average_drop": float(cells[1]), "sparseness": float(cells[2]),
        "expected_average_drop": float(kc.metrics.average_drop(model, batch, ref.maps, ref.targets)),
        "expected_sparseness": float(kc.metrics.sparseness(ref.maps)),
    }

    # demo: its smallest run; accuracy and Grad-CAM's localization recomputed here
    from keras_cam import metrics
    from keras_cam.demo import load_model, make_dataset

    n_eval, seed = 3, 7
    rc, out, err = _main(["demo", "--out", f"demo_{backend}", "--images", "1", "--eval-images", str(n_eval),
                          "--seed", str(seed), "--quiet"])
    summary = open(f"demo_{backend}/summary.txt").read() if rc == 0 else ""
    accuracy = re.search(r"accuracy on \d+ fresh images: ([\d.]+)%", summary)
    gradcam = re.search(r"^\s*gradcam\s+([\d.]+)\s+([\d.]+)\s*$", summary, re.M)
    demo_model = load_model()
    images, labels, boxes = make_dataset(n_eval, seed=seed)
    maps = kc.GradCAM(demo_model)(images)
    report["demo"] = {
        "rc": rc, "err": err[-1000:], "files": sorted(os.listdir(f"demo_{backend}")) if rc == 0 else [],
        "accuracy": accuracy.group(1) if accuracy else None,
        "expected_accuracy": f"{100.0 * np.mean(demo_model.predict(images, verbose=0).argmax(-1) == labels):.1f}",
        "gradcam": list(gradcam.groups()) if gradcam else None,
        "expected_gradcam": [f"{metrics.pointing_game(maps, boxes):.1f}",
                             f"{metrics.energy_pointing_game(maps, boxes):.1f}"],
    }

    # a SavedModel folder: TensorFlow only, said before anything loads
    os.makedirs("exported", exist_ok=True)
    open("exported/saved_model.pb", "wb").close()
    rc, _, err = _main(["layers", "--model", "exported"])
    report["savedmodel"] = {"rc": rc, "stderr": err}
    report["tensorflow_imported"] = "tensorflow" in sys.modules
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "verify":
        _verify(sys.argv[2], sys.argv[3])

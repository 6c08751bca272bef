"""The ``keras-cam`` command, end to end in subprocesses, and its helpers in process.

The subprocesses run the console script's code path (``python -m
keras_cam.cli``, with the Keras under test) and are started together, so their
TensorFlow start-ups overlap.
"""

import concurrent.futures
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import keras_cam as kc
from keras_cam import cli
from keras_cam._compat import LEGACY, keras
from keras_cam.demo import CLASS_NAMES, load_model, make_dataset


def run_cli(*args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "keras_cam.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("keras-cam: error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    # Anything else we print is a one-line warning.
    others = [line for line in result.stderr.splitlines()
              if line.startswith("keras-cam:") and not line.startswith(("keras-cam: error: ", "keras-cam: warning: "))]
    assert not others, others
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def write_png(path, rgb01):
    cv2.imwrite(str(path), np.rint(np.asarray(rgb01) * 255).astype(np.uint8)[..., ::-1])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A saved demo model, two RGB PNGs, a grayscale PNG, a broken file, models needing code."""
    d = tmp_path_factory.mktemp("cli")
    model = load_model()
    model.save(d / "demo.keras")
    images, labels, _ = make_dataset(2, seed=21)
    for i in range(2):
        write_png(d / f"shape{i}.png", images[i])
    cv2.imwrite(str(d / "gray.png"), np.full((64, 64), 128, np.uint8))
    (d / "broken.png").write_bytes(b"this is not a PNG")
    (d / "names.txt").write_text("\n".join(CLASS_NAMES) + "\n")

    L = keras.layers
    inp = keras.Input((64, 64, 3))
    x = L.Lambda(lambda t: t * 2.0, name="double")(inp)
    x = L.Conv2D(4, 3, activation="relu", name="conv")(x)
    out = L.Dense(2, activation="softmax")(L.GlobalAveragePooling2D()(x))
    keras.Model(inp, out).save(d / "lambda.keras")

    (d / "scale_layer.py").write_text(
        "from keras_cam._compat import keras\n\n"
        "class Scale(keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return x * 2.0\n"
    )
    namespace = {}
    exec((d / "scale_layer.py").read_text(), namespace)
    inp = keras.Input((64, 64, 3))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(namespace["Scale"](name="scale")(inp))
    out = L.Dense(2, activation="softmax")(L.GlobalAveragePooling2D()(x))
    keras.Model(inp, out).save(d / "custom.keras")
    (d / "taken").mkdir()
    (d / "taken" / "shape0_gradcam.png").write_bytes(b"keep me")
    return d


ERROR_CASES = {
    "missing image": (["explain", "nope.png", "--model", "demo.keras", "--out", "o1"], ["image not found: nope.png"]),
    "unreadable image": (["explain", "broken.png", "--model", "demo.keras", "--out", "o2"], ["cannot read image broken.png"]),
    "wrong channels": (["explain", "gray.png", "--model", "demo.keras", "--out", "o3"], ["1 channel(s)", "expects 3"]),
    "unknown layer": (["explain", "shape0.png", "--model", "demo.keras", "--layer", "conv9", "--out", "o4"],
                      ["No layer 'conv9'", "conv4", "keras-cam layers"]),
    "missing model": (["explain", "shape0.png", "--model", "nope.keras", "--out", "o5"], ["model not found: nope.keras"]),
    "lambda needs --unsafe": (["explain", "shape0.png", "--model", "lambda.keras", "--out", "o6"], ["--unsafe"]),
    "custom object": (["explain", "shape0.png", "--model", "custom.keras", "--out", "o7"], ["'Scale'", "--custom-objects"]),
    "existing output": (["explain", "shape0.png", "--model", "demo.keras", "--out", "taken"],
                        ["taken/shape0_gradcam.png", "--overwrite"]),
    "unknown method": (["explain", "shape0.png", "--model", "demo.keras", "--method", "magic", "--out", "o8"],
                       ["Unknown method 'magic'"]),
    "target out of range": (["explain", "shape0.png", "--model", "demo.keras", "--preprocess", "scale", "--target", "7",
                             "--out", "o9"],
                            ["--target 7 is out of range", "4 classes"]),
}
# Each subprocess pays TensorFlow's start-up (seconds of CPU), so two error cases
# (one failing before the model is loaded, one inside Keras's loader) run as real
# processes; the others go through the same entry point, `cli.main`, in process.
IN_SUBPROCESS = ("missing image", "lambda needs --unsafe")
EXPLAIN = ["explain", "shape0.png", "shape1.png", "--model", "demo.keras", "--preprocess", "scale",
           "--method", "gradcam", "--method", "Grad-CAM++", "--class-names", "names.txt", "--top", "2",
           "--out", "explained"]
DEMO = ["demo", "--out", "d", "--images", "2", "--eval-images", "32"]


@pytest.fixture(scope="module")
def runs(work):
    """The subprocesses (demo, explain, two error cases), run concurrently."""
    jobs = {"demo": DEMO, "explain": EXPLAIN, **{k: ERROR_CASES[k][0] for k in IN_SUBPROCESS}}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {k: pool.submit(run_cli, *argv, cwd=work) for k, argv in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("case", IN_SUBPROCESS)
def test_error_in_a_subprocess_is_one_line_and_exit_status_1(runs, case):
    assert_one_line_error(runs[case], *ERROR_CASES[case][1])


@pytest.mark.parametrize("case", [c for c in ERROR_CASES if c not in IN_SUBPROCESS])
def test_error_is_one_line_and_exit_status_1(work, case, capsys, monkeypatch):
    monkeypatch.chdir(work)
    status = cli.main(ERROR_CASES[case][0])
    captured = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess([], status, captured.out, captured.err), *ERROR_CASES[case][1])


def test_any_registered_method_by_name_and_layerless_ones_ignore_layer(work, monkeypatch, capsys):
    """The new methods through the command line: a CAM at --layer and Integrated Gradients,
    which has no target layer, in one run; the overlays are those of the explainers' maps."""
    monkeypatch.chdir(work)
    argv = ["explain", "shape0.png", "--model", "demo.keras", "--preprocess", "scale", "--layer", "conv4_relu",
            "--method", "XGrad-CAM", "--method", "integratedgradients", "--out", "more-methods"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    report = json.loads((work / "more-methods" / "predictions.json").read_text())
    assert report["methods"] == ["xgradcam", "integratedgradients"]
    model = load_model()
    pixels = cv2.imread(str(work / "shape0.png"))[..., ::-1]
    x = pixels[None].astype(np.float32) / 255.0
    for name, maps in (("xgradcam", kc.XGradCAM(model, layer="conv4_relu")(x)),
                       ("integratedgradients", kc.IntegratedGradients(model, verbose=0)(x))):
        written = cv2.imread(str(work / report["images"][0]["overlays"][name]))[..., ::-1]
        expected = kc.overlay(pixels, maps[0], alpha=0.5)
        assert np.abs(written.astype(int) - expected.astype(int)).max() <= 2, name


def test_failed_runs_write_nothing(work, runs):
    for i in range(1, 10):
        assert not (work / f"o{i}").exists()
    assert (work / "taken" / "shape0_gradcam.png").read_bytes() == b"keep me"


@pytest.mark.parametrize("extra", [["--model", "lambda.keras", "--unsafe"],
                                   ["--model", "custom.keras", "--custom-objects", "scale_layer.py"]])
def test_unsafe_and_custom_objects_routes_load(work, extra, monkeypatch, capsys):
    monkeypatch.chdir(work)
    out = f"route-{extra[1].split('.')[0]}"
    assert cli.main(["explain", "shape0.png", *extra, "--out", out]) == 0, capsys.readouterr().err
    assert (work / out / "shape0_gradcam.png").exists() and (work / out / "predictions.json").exists()


def test_explain_end_to_end(work, runs):
    result = runs["explain"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "explained/predictions.json" in result.stdout
    report = json.loads((work / "explained" / "predictions.json").read_text())
    assert report["layer"] == "conv4_relu" and report["methods"] == ["gradcam", "gradcampp"]

    # The same computation in this process: images as PNG pixels / 255, the model, Grad-CAM.
    model = load_model()
    pixels = np.stack([cv2.imread(str(work / f"shape{i}.png"))[..., ::-1] for i in range(2)])
    x = pixels.astype(np.float32) / 255.0
    probs = model.predict(x, verbose=0)
    maps = kc.GradCAM(model)(x)
    for i, record in enumerate(report["images"]):
        k = int(probs[i].argmax())
        assert record["image"] == f"shape{i}.png"
        assert record["target"] == k and record["target_name"] == CLASS_NAMES[k]
        assert record["probability"] == pytest.approx(float(probs[i, k]), abs=1e-4)
        assert [t["class"] for t in record["top"]] == list(np.argsort(-probs[i])[:2])
        written = cv2.imread(str(work / record["overlays"]["gradcam"]))[..., ::-1]
        expected = kc.overlay(pixels[i], maps[i], alpha=0.5)
        assert written.shape == expected.shape
        assert np.abs(written.astype(int) - expected.astype(int)).max() <= 2
        assert (work / record["overlays"]["gradcampp"]).exists()
    assert sorted(os.listdir(work / "explained")) == sorted(
        [f"shape{i}_{m}.png" for i in range(2) for m in ("gradcam", "gradcampp")] + ["predictions.json"])


def test_demo_end_to_end(work, runs, capsys, monkeypatch):
    result = runs["demo"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "d/demo.png" in result.stdout and "d/summary.txt" in result.stdout
    summary = (work / "d" / "summary.txt").read_text()
    assert "accuracy on 32 fresh images" in summary
    for name in ("gradcam", "gradcampp", "scorecam"):
        assert f"\n  {name} " in summary
    figure = cv2.imread(str(work / "d" / "demo.png"))
    assert figure is not None and figure.shape[0] > 200 and figure.shape[1] > 600
    monkeypatch.chdir(work)
    status = cli.main(["demo", "--out", "d"])  # never overwrites
    captured = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess([], status, captured.out, captured.err), "d/demo.png", "--overwrite")


# --- helpers, in process -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_preprocess_matches_keras_applications(mode):
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    expected = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode)
    np.testing.assert_allclose(cli.preprocess(x, mode), np.asarray(expected), rtol=1e-5, atol=1e-4)


def test_preprocess_scale_none_and_errors():
    x = np.array([[[[0.0, 127.5, 255.0]]]], np.float32)
    np.testing.assert_allclose(cli.preprocess(x, "scale"), [[[[0.0, 0.5, 1.0]]]])
    np.testing.assert_array_equal(cli.preprocess(x, "none"), x)
    with pytest.raises(cli.CliError, match="RGB"):
        cli.preprocess(np.zeros((1, 2, 2, 1)), "torch")


def test_read_image_channels_and_depth(tmp_path):
    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 40   # B, G, R, A
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    rgba = cli.read_image(str(tmp_path / "a.png"))
    np.testing.assert_array_equal(rgba[0, 0], [30, 20, 10, 40])
    np.testing.assert_array_equal(cli.fit_channels(rgba, 3, "a.png")[0, 0], [30, 20, 10])
    cv2.imwrite(str(tmp_path / "d.png"), np.full((2, 2), 65535, np.uint16))
    np.testing.assert_allclose(cli.read_image(str(tmp_path / "d.png")), 255.0)
    with pytest.raises(cli.CliError, match="4 channel"):
        cli.fit_channels(rgba, 1, "a.png")


def test_output_names_and_folders(tmp_path):
    assert cli.unique_stems(["a/x.png", "b/x.jpg", "y.png", "c/x.png"]) == ["x", "x-2", "y", "x-3"]
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert cli.expand_images([str(tmp_path)]) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(cli.CliError, match="no image files"):
        cli.expand_images([str(tmp_path / "empty")])


def test_write_atomic_and_check_free(tmp_path):
    target = str(tmp_path / "f.bin")
    cli.write_atomic(target, b"one")
    cli.write_atomic(target, b"two")
    assert open(target, "rb").read() == b"two" and os.listdir(tmp_path) == ["f.bin"]
    cli.check_free([target], overwrite=True)
    with pytest.raises(cli.CliError, match="already exists"):
        cli.check_free([str(tmp_path / "g"), target], overwrite=False)


def test_h5_lambda_is_refused_before_loading(tmp_path):
    inp = keras.Input((8, 8, 3))
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(lambda t: t + 1)(inp)))
    path = str(tmp_path / "lam.h5")
    keras.Model(inp, out).save(path)
    assert cli.holds_lambda(path)
    with pytest.raises(cli.CliError, match="--unsafe"):
        cli.load_model(path)
    assert cli.load_model(path, unsafe=True).name


@pytest.mark.tensorflow_only
def test_savedmodel_folder(tmp_path):
    model = load_model()
    x = make_dataset(2, seed=4)[0]
    exported = str(tmp_path / "exported")
    model.export(exported)  # a plain SavedModel, read through its frozen graph in both modes
    frozen = cli.load_model(exported)
    assert cli.model_input(frozen) == (64, 64, 3)
    np.testing.assert_allclose(np.asarray(frozen(x)), np.asarray(model(x)), atol=1e-5)
    np.testing.assert_allclose(kc.GradCAM(frozen)(x), kc.GradCAM(model)(x), atol=1e-4)
    if LEGACY:  # tf-keras's own SavedModel comes back as a Keras model
        path = str(tmp_path / "tfkeras")
        model.save(path, save_format="tf")
        loaded = cli.load_model(path)
        assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    (tmp_path / "empty").mkdir()
    with pytest.raises(cli.CliError, match="not a SavedModel"):
        cli.load_model(str(tmp_path / "empty"))


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["explain", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--method", "--layer", "--target", "--out", "--preprocess", "--unsafe",
                   "--custom-objects", "--overwrite", "--size", "--class-names", "--alpha", "--colormap"):
        assert option in text, option
    for mode in ("none", "scale", "tf", "torch", "caffe"):
        assert f"  {mode} " in text
    assert "gradcampp" in text and "scorecam" in text
    assert cli.main([]) == 1  # no command: the overview and a non-zero status


@pytest.mark.parametrize("command", ["explain", "audit", "demo"])
@pytest.mark.parametrize("out", ["a_file", "a_file/sub"])
def test_out_that_is_a_file_is_refused_before_the_model_loads(work, tmp_path, monkeypatch, capsys, command, out):
    """--out naming an existing file (or a path under one): one line about --out, and the model,
    here one that cannot load, is never read; the file stays as it was."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_bytes(b"keep me")
    (tmp_path / "bad.keras").write_bytes(b"\x80\x04 not a model")
    (tmp_path / "images").mkdir()
    for i in range(2):
        (tmp_path / "images" / f"s{i}.png").write_bytes((work / f"shape{i}.png").read_bytes())
    argv = {"explain": ["explain", "images", "--model", "bad.keras"],
            "audit": ["audit", "images", "--model", "bad.keras"],
            "demo": ["demo", "--images", "1", "--eval-images", "1"]}[command] + ["--out", out]
    status = cli.main(argv)
    captured = capsys.readouterr()
    error = assert_one_line_error(subprocess.CompletedProcess([], status, captured.out, captured.err), "--out")
    assert ("existing file" if out == "a_file" else "a_file is a file") in error, error
    assert (tmp_path / "a_file").read_bytes() == b"keep me"


def test_unreadable_model_files_say_why(work, tmp_path, monkeypatch, capsys):
    """A truncated .keras / .h5, or a pickle under a Keras name: never "File not found"."""
    import pickle

    monkeypatch.chdir(tmp_path)
    data = (work / "demo.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[:len(data) // 2])
    (tmp_path / "pickled.keras").write_bytes(pickle.dumps({"model": [1, 2, 3]}))
    load_model().save(str(tmp_path / "demo.h5"))
    h5 = (tmp_path / "demo.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(h5[:len(h5) // 3])
    cases = {"cut.keras": "truncated", "pickled.keras": "Python pickle", "cut.h5": "truncated"}
    for name, why in cases.items():
        for argv in (["layers", "--model", name], ["explain", str(work / "shape0.png"), "--model", name, "--out", "o"]):
            status = cli.main(argv)
            captured = capsys.readouterr()
            error = assert_one_line_error(subprocess.CompletedProcess([], status, captured.out, captured.err),
                                          f"model {name} is not a readable Keras file", why)
            assert "not found" not in error, error
    assert not (tmp_path / "o").exists()

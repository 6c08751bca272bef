"""The ``keras-cam`` command starts quietly and quickly, and speaks in its flags.

Start-up is checked in fresh interpreters (what a user runs): ``--help``
must not import TensorFlow at all, a command run without
``TF_CPP_MIN_LOG_LEVEL`` must not print TensorFlow's start-up banner, and a
progress report on a pipe must be plain text. (No timing is asserted: that
TensorFlow is never imported for ``--help`` is what makes it fast.)
"""

import concurrent.futures
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from keras_cam import cli
from keras_cam.demo import load_model, make_dataset

HELPS = ([], ["demo"], ["explain"], ["layers"])


def _python(code, env=None, cwd=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=env if env is not None else dict(os.environ), cwd=cwd)


def _env_without_log_level():
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("startup")
    load_model().save(d / "demo.keras")
    images, _, _ = make_dataset(3, seed=5)
    for i, image in enumerate(images):
        cv2.imwrite(str(d / f"img{i}.png"), np.rint(image * 255).astype(np.uint8)[..., ::-1])
    return d


@pytest.fixture(scope="module")
def runs(work):
    """The subprocesses, started together so their start-ups overlap."""
    helps = "\n".join(
        f"try:\n    cli.main({argv + ['--help']!r})\nexcept SystemExit:\n    pass" for argv in HELPS)
    explain = ["explain", "img0.png", "img1.png", "img2.png", "--model", "demo.keras", "--preprocess", "scale",
               "--batch-size", "1"]
    jobs = {
        "help": ("import sys\nfrom keras_cam import cli\n" + helps +
                 "\nprint('TF-IMPORTED' if 'tensorflow' in sys.modules else 'TF-NOT-IMPORTED')"),
        "library": (
            "import logging, os, sys, warnings\n"
            "def state():\n"
            "    return (os.environ.get('TF_CPP_MIN_LOG_LEVEL'), logging.getLogger().level,\n"
            "            logging.getLogger('tensorflow').level, len(logging.getLogger().handlers),\n"
            "            list(warnings.filters))\n"
            "import tensorflow\n"
            "before = state()\n"
            "import keras_cam\n"
            "from keras_cam import GradCAM, explain_dataset, metrics\n"
            "print('SAME' if state() == before else f'CHANGED {before} -> {state()}')"),
        "layers": f"from keras_cam import cli\nraise SystemExit(cli.main({['layers', '--model', 'demo.keras']!r}))",
        "piped": f"from keras_cam import cli\nraise SystemExit(cli.main({explain + ['--out', 'p']!r}))",
        "quiet": f"from keras_cam import cli\nraise SystemExit(cli.main({explain + ['--out', 'q', '--quiet']!r}))",
    }
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {k: pool.submit(_python, code, _env_without_log_level(), work) for k, code in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


def test_help_does_not_import_tensorflow(runs):
    result = runs["help"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "TF-NOT-IMPORTED"
    assert result.stderr == ""
    for command in ("demo", "explain", "layers"):
        assert f"usage: keras-cam {command}" in result.stdout


def test_importing_the_library_changes_no_logging(runs):
    result = runs["library"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "SAME"


def test_a_command_prints_no_tensorflow_banner(runs):
    result = runs["layers"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert "conv4_relu" in result.stdout
    assert result.stderr == "", result.stderr[-2000:]   # no absl notice, no oneDNN / CPU-feature lines


def test_piped_progress_is_one_plain_line_and_quiet_is_silent(runs, work):
    piped, quiet = runs["piped"], runs["quiet"]
    for result in (piped, quiet):
        assert result.returncode == 0, result.stderr[-2000:]
        assert "\x1b" not in result.stdout + result.stderr and "\r" not in result.stdout
        assert not [line for line in result.stderr.splitlines() if not line.startswith("keras-cam: warning:")]
    assert piped.stdout.splitlines() == ["explaining images with gradcam (3)", "wrote 3 overlay(s) and p/predictions.json"]
    assert quiet.stdout.splitlines() == ["wrote 3 overlay(s) and q/predictions.json"]
    assert (work / "q" / "img2_gradcam.png").exists()


def test_banner_lines_are_told_from_real_messages():
    assert cli._pre_init_line("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    assert cli._pre_init_line("I0000 00:00:1796157033.347278    8567 port.cc:153] oneDNN custom operations are on.\n")
    assert not cli._pre_init_line("W0000 00:00:1796157033.347278    8567 some.cc:1] a real warning\n")
    assert not cli._pre_init_line("ImportError: libcuda.so.1: cannot open shared object file\n")


@pytest.mark.tensorflow_only
def test_a_user_log_level_is_left_alone(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    cli.import_tensorflow_quietly()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


@pytest.mark.parametrize("env, config, expected", [
    ({}, None, "tensorflow"),
    ({"KERAS_BACKEND": "jax"}, None, "jax"),
    ({}, {"backend": "torch", "floatx": "float32"}, "torch"),
    ({"KERAS_BACKEND": "jax"}, {"backend": "torch"}, "jax"),       # the variable wins, as in Keras
    ({"TF_USE_LEGACY_KERAS": "1", "KERAS_BACKEND": "jax"}, None, "tensorflow"),  # tf-keras is TensorFlow
    ({}, "{not json", "tensorflow"),
])
def test_the_backend_is_read_without_importing_keras(env, config, expected, monkeypatch, tmp_path):
    """What decides whether the command imports TensorFlow: Keras's own rule, read before Keras loads."""
    monkeypatch.delitem(sys.modules, "keras")  # as in a fresh `keras-cam` process
    for name in ("KERAS_BACKEND", "TF_USE_LEGACY_KERAS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    if config is not None:
        (tmp_path / "keras.json").write_text(config if isinstance(config, str) else __import__("json").dumps(config))
    assert cli.backend_from_environment() == expected


# --- messages in the CLI's terms -----------------------------------------------------------


def test_raw_pixel_warning_names_preprocess(work, monkeypatch, capsys):
    monkeypatch.chdir(work)
    assert cli.main(["explain", "img0.png", "--model", "demo.keras", "--out", "raw"]) == 0  # --preprocess none
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("keras-cam: warning:")]
    assert len(warnings) == 1, err
    assert "--preprocess none" in warnings[0] and "--preprocess scale" in warnings[0]
    assert "model.predict" not in err and "`images`" not in err


def test_target_out_of_range_names_target(work, monkeypatch, capsys):
    monkeypatch.chdir(work)
    assert cli.main(["explain", "img0.png", "--model", "demo.keras", "--preprocess", "scale",
                     "--target", "9", "--out", "t"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["keras-cam: error: --target 9 is out of range: the model has 4 classes (--target 0 to 3)"]
    assert not (work / "t").exists()


def test_every_public_name_and_submodule_resolves():
    import keras_cam
    from keras_cam import GradCAM  # noqa: F401
    from keras_cam.methods.gradient import GradCAM as defined

    assert keras_cam.GradCAM is defined
    for name in keras_cam.__all__:
        assert getattr(keras_cam, name) is not None, name
    assert keras_cam.dataset.read_index is not None and keras_cam.demo.load_model is not None
    assert set(keras_cam.__all__) <= set(dir(keras_cam))
    with pytest.raises(AttributeError, match="no attribute 'GradCam'"):
        keras_cam.GradCam

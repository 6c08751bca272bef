"""The suite runs on TensorFlow's defaults: nothing in the project turns oneDNN off.

TensorFlow's oneDNN CPU kernels (on by default) fail on an empty batch; the
library guarantees none reaches a model (see tests/test_dataset.py). Turning
the kernels off in CI, the Makefile, a test or the package would hide a
regression of that guarantee, so no file may set the switch.
"""

import os

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
SWITCH = "TF_ENABLE_" + "ONEDNN_OPTS"  # spelled in two parts so this file does not match itself


def _project_files():
    for top in (".ci", "keras_cam", "tests", "examples", "bench", "notebooks"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith((".py", ".ipynb", ".sh", ".cfg", ".toml", ".yml", ".yaml")) or top == ".ci":
                    yield os.path.join(folder, name)
    for name in ("Makefile", "setup.cfg", "pyproject.toml", "tox.ini", "noxfile.py"):
        if os.path.exists(os.path.join(ROOT, name)):
            yield os.path.join(ROOT, name)


def test_no_file_turns_onednn_off():
    files = list(_project_files())
    assert any(f.endswith(os.path.join(".ci", "run")) for f in files) and any(f.endswith("Makefile") for f in files)
    offenders = [os.path.relpath(f, ROOT) for f in files
                 if SWITCH in open(f, encoding="utf-8", errors="replace").read()]
    assert not offenders, offenders

"""On JAX and PyTorch, keras-cam never imports TensorFlow (checked in a fresh process), and
``import tensorflow`` appears only where TensorFlow is the subject (read from the source)."""

import ast
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import sys
import numpy as np
import keras
import keras_cam as kc
from keras_cam import metrics
inp = keras.Input((8, 8, 3))
x = keras.layers.Conv2D(3, 3, activation="relu", name="target")(inp)
out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
model = keras.Model(inp, out)
images = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
for name in kc.methods.names(attention=False):
    kc.methods.create(name, model)(images)
maps = kc.GradCAM(model)(images)
metrics.average_drop(model, images, maps)
kc.overlay(images[0], maps[0])
assert "tensorflow" not in sys.modules, [m for m in sys.modules if m.startswith("tensorflow")][:5]
print("no tensorflow")
"""


from keras_cam import backend as _backend

SUITE = _backend.name()


@pytest.mark.skipif(SUITE not in ("jax", "torch"),
                    reason="the JAX and PyTorch test modes check this on their own backend")
def test_keras_cam_does_not_import_tensorflow_off_tensorflow():
    backend = SUITE
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "no tensorflow" in run.stdout, run.stderr[-3000:]


PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "keras_cam")
# The modules that may import TensorFlow, each TensorFlow by nature. Everything else goes through
# keras.ops or keras_cam.backend (whose tensorflow module is the one backend module listed).
TENSORFLOW_BY_NATURE = {
    "backend/tensorflow.py": "the TensorFlow backend",
    "saved_model.py": "frozen SavedModel / TF-Hub graphs",
    "files.py": "loading a SavedModel folder (tf.saved_model.load)",
    "dataset.py": "tf.data datasets and tf.distribute strategies",
    "callbacks.py": "TensorBoard summaries written with tf.summary",
    "cli.py": "the quiet TensorFlow start-up on the TensorFlow backend (the TensorFlow-only paths load it anyway)",
    "demo/vit.py": "the demo ViT's custom layers under legacy tf-keras (TensorFlow only)",
}


def _tensorflow_imports(path):
    """Line numbers where ``path`` imports TensorFlow (``import``, ``from``, ``import_module``)."""
    lines = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names = [str(node.args[0].value)]
        else:
            continue
        if any(n == "tensorflow" or n.startswith("tensorflow.") for n in names):
            lines.append(node.lineno)
    return lines


def test_tensorflow_is_imported_only_where_it_is_the_subject():
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                lines = _tensorflow_imports(path)
                if lines:
                    found[os.path.relpath(path, PACKAGE).replace(os.sep, "/")] = lines
    extra = {m: lines for m, lines in found.items() if m not in TENSORFLOW_BY_NATURE}
    assert not extra, (f"TensorFlow imported outside the modules that are TensorFlow by nature: {extra}; "
                       f"put the backend-specific part in keras_cam/backend/")
    # The list stays true: each listed module still imports TensorFlow (the scan sees them).
    assert set(found) == set(TENSORFLOW_BY_NATURE), sorted(set(TENSORFLOW_BY_NATURE) - set(found))

"""On JAX and PyTorch, keras-cam never imports TensorFlow (checked in a fresh process)."""

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

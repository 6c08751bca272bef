"""The notebooks, executed top to bottom on their small configuration.

Each notebook reads ``KERAS_CAM_NOTEBOOK_SMALL=1`` and shrinks its data,
epochs and model list. Starting a kernel and importing TensorFlow costs more
than most notebooks' own work, so one kernel runs them all: before each
notebook its namespace is cleared (``%reset -f``), so every notebook still has
to import and define everything it uses. The kernel inherits this process's
environment, ``TF_USE_LEGACY_KERAS`` included, so the notebooks run under the
Keras being tested.

With ``KERAS_CAM_NOTEBOOK_OUT=DIR`` the executed notebooks (under Keras 3) are
also written to ``DIR``: the documentation site renders them from there
(``docs/hooks/notebooks.py``), so the outputs it shows are the ones checked here.

The notebooks are written for Colab with ``keras = tf.keras`` (Keras 3, or
tf-keras under ``TF_USE_LEGACY_KERAS=1``): running them is TensorFlow by
nature, so it happens in the TensorFlow test modes only.
"""

import os
import re
from pathlib import Path

import jupyter_client
import nbformat
import pytest
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

from keras_cam._compat import LEGACY

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_quickstart", "02_efficientnet_transfer", "03_cam_digits", "04_layers_and_architectures"]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("notebooks")  # anything a notebook writes lands here
    env = dict(os.environ, KERAS_CAM_NOTEBOOK_SMALL="1", TF_CPP_MIN_LOG_LEVEL="2")
    km = jupyter_client.AsyncKernelManager(kernel_name="python3")
    run_sync(km.start_kernel)(env=env, cwd=str(workdir))
    try:
        yield km
    finally:
        run_sync(km.shutdown_kernel)(now=True)


def execute(km, name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    NotebookClient(nb, km=km, timeout=600).execute()  # raises CellExecutionError on any error
    nb.cells.pop(0)
    if os.environ.get("KERAS_CAM_NOTEBOOK_OUT") and not LEGACY:
        out = Path(os.environ["KERAS_CAM_NOTEBOOK_OUT"])
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / f"{name}.ipynb")
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    pngs = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    return text, pngs


def test_committed_notebooks_are_stripped():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), name
        assert "%pip install -q keras-cam" in code[0].source, f"{name}: no Colab install cell"


@pytest.mark.tensorflow_only
def test_kernel_runs_the_keras_under_test(kernel):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import tensorflow as tf\nprint(tf.keras.Model.__module__.split('.')[0])")])
    NotebookClient(nb, km=kernel, timeout=600).execute()
    assert nb.cells[0].outputs[0].text.strip() == ("tf_keras" if LEGACY else "keras")


@pytest.mark.tensorflow_only
def test_quickstart(kernel):
    text, pngs = execute(kernel, "01_quickstart")
    assert pngs >= 2  # the method grid and VizGradCAM
    assert len(re.findall(r"-> (hit|miss)", text)) == 3


@pytest.mark.tensorflow_only
def test_efficientnet_transfer(kernel):
    text, pngs = execute(kernel, "02_efficientnet_transfer")
    assert pngs >= 3
    assert "'Score-CAM': 'efficientnetb0/top_activation'" in text
    assert re.search(r"test accuracy: [01]\.\d\d on 64 images", text)


@pytest.mark.tensorflow_only
def test_cam_digits(kernel):
    text, pngs = execute(kernel, "03_cam_digits")
    assert pngs >= 2
    assert re.search(r"test accuracy: [01]\.\d{3} on 450 digits", text)
    # CAM equals Grad-CAM at the one-channel-per-class layer (the notebook's claim).
    gap = float(re.search(r"max \|CAM - Grad-CAM\(class_maps\)\| = (\S+)", text).group(1))
    assert gap < 1e-5
    assert float(re.search(r"max \|CAM - Grad-CAM\(conv3\)\| += (\S+)", text).group(1)) > 0.05


@pytest.mark.tensorflow_only
def test_layers_and_architectures(kernel):
    text, pngs = execute(kernel, "04_layers_and_architectures")
    assert pngs >= 2
    assert "MobileNetV2     explains layer 'out_relu'" in text
    assert "VGG16           explains layer 'block5_conv3'" in text

"""examples/quickstart.py: run as a user runs it, checked against the library.

The script explains the shipped demo model on demo images; the test runs it
in a subprocess (into a folder it must create), then recomputes the pointing
game it prints from the same images, and checks that it imports public names only.
"""

import ast
import os
import subprocess
import sys

import cv2

import keras_cam as kc
from keras_cam.demo import load_model, make_dataset

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "quickstart.py")


def test_quickstart_runs_into_a_new_folder(tmp_path):
    out = tmp_path / "new" / "figures"
    proc = subprocess.run([sys.executable, SCRIPT, str(out)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.listdir(out) == ["quickstart.png"] and os.listdir(tmp_path) == ["new"]  # nothing elsewhere
    figure = cv2.imread(str(out / "quickstart.png"))
    assert figure is not None and figure.shape[0] > 600 and figure.shape[1] > 600

    # The printed pointing game is the demo model's, on the script's images.
    images, _, boxes = make_dataset(4, seed=11)
    model = load_model()
    lines = proc.stdout.strip().splitlines()
    for line, cam in zip(lines, (kc.GradCAM(model), kc.GradCAMPlusPlus(model))):
        hits = kc.metrics.pointing_game(cam(images), boxes)
        assert line.endswith(f"for {hits:.0f}% of the images"), (line, hits)
        assert hits >= 75  # a trained model localizes the shapes (an untrained one does not)
    assert lines[-1] == f"wrote {out / 'quickstart.png'}"


def test_quickstart_uses_public_names_only():
    tree = ast.parse(open(SCRIPT).read())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    private = [m for m in modules if any(part.startswith("_") for part in m.split("."))]
    assert not private, private
    names = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
             and isinstance(n.value, ast.Name) and n.value.id == "keras_cam"]
    assert names and all(name in kc.__all__ for name in names), names

"""MkDocs hook: the notebooks as pages of the site, with the outputs of the test run.

The committed notebooks (``notebooks/*.ipynb``) carry no outputs.
``tests/test_notebooks.py`` executes them on their small configuration and,
when ``KERAS_CAM_NOTEBOOK_OUT=DIR`` is set, writes each executed notebook to
``DIR`` (under Keras 3). This hook adds ``notebooks/NAME.ipynb`` to the site,
taken from ``DIR`` (``build/notebooks`` when the variable is unset) if that
copy was executed from the notebook as it is now (the same cells), and from
the committed notebook, without outputs, otherwise.

A missing or stale copy is logged at INFO level for a local build, and as a
warning, which fails ``mkdocs build --strict``, when
``KERAS_CAM_NOTEBOOK_OUT`` is set (CI sets it for both the tests and the
build, so the site never silently loses its outputs).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.notebooks")
ROOT = Path(__file__).resolve().parents[2]
# The chosen notebooks are staged here as notebooks/NAME.ipynb, so that each is
# an ordinary file at the path the nav names (mkdocs-jupyter reads it from disk).
STAGE = ROOT / ".cache" / "keras-cam-docs"


def _cells(path):
    """The notebook's cells as ``(type, source)``: what an execution must not change."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for c in cells]


@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into pages
def on_files(files, config):
    required = bool(os.environ.get("KERAS_CAM_NOTEBOOK_OUT"))
    out = Path(os.environ.get("KERAS_CAM_NOTEBOOK_OUT") or ROOT / "build" / "notebooks")
    for source in sorted((ROOT / "notebooks").glob("*.ipynb")):
        executed = out / source.name
        if executed.is_file() and _cells(executed) == _cells(source):
            path = executed
        else:
            path = source
            why = "missing" if not executed.is_file() else "stale (executed from another version of the notebook)"
            (log.warning if required else log.info)(
                f"{executed} is {why}: {source.name} is rendered without outputs. Run "
                f"`KERAS_CAM_NOTEBOOK_OUT={out} python -m pytest tests/test_notebooks.py` first."
            )
        staged = STAGE / "notebooks" / source.name
        if not staged.is_file() or staged.read_bytes() != path.read_bytes():
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staged)
        files.append(File(f"notebooks/{source.name}", src_dir=str(STAGE), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    return files

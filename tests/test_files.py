"""keras_cam.files: the atomic writer, the PNG encoder, output folders and safe model loading.

Expected values come from independent paths: PNGs are decoded with Pillow
(not OpenCV, which encodes them); a loaded model is compared with the model
that was saved; a damaged file is made from a good one by truncating it at
many lengths, flipping a byte, or replacing it with another format.
"""

import ast
import base64
import io
import os
import pathlib
import pickle
import stat
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from keras_cam import files
from keras_cam._compat import keras, to_host

PACKAGE = pathlib.Path(files.__file__).parent


# --- the atomic writer ------------------------------------------------------------------------


def test_write_atomic_writes_replaces_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "f.bin"
    files.write_atomic(target, b"one")
    files.write_atomic(str(target), b"two" * 1000)
    assert target.read_bytes() == b"two" * 1000
    assert os.listdir(tmp_path) == ["f.bin"]
    plain = tmp_path / "plain.bin"
    with open(plain, "wb") as f:  # the permissions a plain open gives (0o666 less the umask)
        f.write(b"")
    assert stat.S_IMODE(os.stat(target).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_write_atomic_syncs_before_it_renames(tmp_path, monkeypatch):
    """The data reach the disk (fsync of the temporary file) before the rename makes them visible."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_size))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", os.path.basename(b)))
        return real_replace(a, b)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    files.write_atomic(tmp_path / "g.bin", b"x" * 123)
    assert events[:2] == [("fsync", 123), ("replace", "g.bin")]


def test_write_atomic_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_bytes(b"precious")
    with pytest.raises(TypeError):
        files.write_atomic(target, "not bytes")
    assert target.read_bytes() == b"precious" and os.listdir(tmp_path) == ["keep.txt"]


@pytest.mark.parametrize("where", ["missing", "missing/deeper", "a_file"])
def test_write_atomic_names_the_folder_the_user_gave(tmp_path, where):
    (tmp_path / "a_file").write_text("x")
    folder = tmp_path / where
    with pytest.raises(FileNotFoundError) as err:
        files.write_atomic(folder / "report.html", b"<html>")
    message = str(err.value)
    assert str(folder) in message and ".tmp" not in message, message
    assert ("is a file" if where == "a_file" else "does not exist") in message
    assert sorted(os.listdir(tmp_path)) == ["a_file"]
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        files.write_atomic(tmp_path / "dir", b"")


def test_write_atomic_from_many_threads(tmp_path):
    """Threads writing the same file: every read sees one whole payload, never a mix."""
    target = tmp_path / "shared.bin"
    payloads = [bytes([k]) * (50_000 + k) for k in range(8)]
    errors = []

    def writer(k):
        try:
            for _ in range(15):
                files.write_atomic(target, payloads[k])
        except Exception as e:  # collected: an assertion in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    seen = set()
    while any(t.is_alive() for t in threads):
        if target.exists():
            seen.add(target.read_bytes())
    for t in threads:
        t.join()
    seen.add(target.read_bytes())
    assert not errors, errors
    assert seen <= set(payloads)
    assert os.listdir(tmp_path) == ["shared.bin"]


# --- PNG -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (6, 4, 3), (3, 9, 4), (1, 1, 3)])
def test_png_bytes_decode_to_the_same_pixels(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(files.png_bytes(image))))
    np.testing.assert_array_equal(decoded, image.reshape(shape[:2]) if len(shape) == 2 or shape[2] == 1 else image)


def test_png_bytes_refuses_what_is_not_pixels(tmp_path):
    with pytest.raises(TypeError, match="uint8.*float32"):
        files.png_bytes(np.zeros((4, 4, 3), np.float32))
    for shape in [(4,), (4, 4, 2), (2, 4, 4, 3), (0, 4, 3)]:
        with pytest.raises(ValueError, match="shape"):
            files.png_bytes(np.zeros(shape, np.uint8))
    files.write_png(tmp_path / "a.png", np.full((2, 3, 3), 200, np.uint8))
    assert np.asarray(Image.open(tmp_path / "a.png")).tolist() == [[[200] * 3] * 3] * 2


def test_the_audit_report_embeds_the_same_png():
    from keras_cam.files import png_data_uri

    image = np.random.default_rng(3).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    uri = png_data_uri(image)
    assert uri.startswith("data:image/png;base64,")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    np.testing.assert_array_equal(decoded, image)


def test_one_writer_and_one_encoder():
    """Every module writes files through keras_cam.files and encodes PNGs with it."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "files.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename", "fsync", "imencode"):
                if isinstance(node.value, ast.Name) and node.value.id in ("os", "cv2"):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not offenders, offenders


# --- no import circle, no TensorFlow on import ---------------------------------------------------


def _imports(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_files_sits_below_cli_and_demo():
    demo = {p.name: _imports(p) for p in (PACKAGE / "demo").glob("*.py")}
    assert not [n for n, found in demo.items() if "keras_cam.cli" in found], demo
    below = _imports(PACKAGE / "files.py")
    assert not [m for m in below if m.startswith(("keras_cam.cli", "keras_cam.demo", "keras_cam.dataset"))]
    code = ("import sys, keras_cam.files, keras_cam.cli, keras_cam.demo.run\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'cv2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout


# --- output folders ------------------------------------------------------------------------


def test_out_folder_that_cannot_be_one(tmp_path):
    (tmp_path / "taken").write_text("x")
    for given in ("taken", "taken/", "taken/sub", "taken/sub/deeper"):
        with pytest.raises(files.CliError, match="--out") as err:
            files.check_free([os.path.join(tmp_path, given, "demo.png")], overwrite=True)
        assert "taken is a file" in str(err.value) or "existing file" in str(err.value)
    files.check_free([os.path.join(tmp_path, "new", "sub", "demo.png")], overwrite=False)
    files.check_free([str(tmp_path / "taken")], overwrite=True)  # a file to replace is fine
    with pytest.raises(files.CliError, match="already exists.*--overwrite"):
        files.check_free([str(tmp_path / "taken")], overwrite=False)


# --- model loading -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 3, name="conv"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, name="head")])
    model.save(str(d / "good.keras"))
    model.save(str(d / "good.h5"))
    return d, model


def _load_error(path):
    with pytest.raises(files.CliError) as err:
        files.load_model(str(path))
    message = str(err.value)
    assert message.startswith(f"model {path} is not a readable Keras file: "), message
    assert "File not found" not in message and "not found" not in message, message
    return message


def test_good_files_load(saved):
    d, model = saved
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    for name in ("good.keras", "good.h5"):
        loaded = files.load_model(str(d / name))
        np.testing.assert_allclose(to_host(loaded(x)), to_host(model(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_truncated_files_say_so(saved, tmp_path, suffix):
    data = (saved[0] / f"good{suffix}").read_bytes()
    for length in sorted({1, 7, 100, len(data) // 3, len(data) // 2, len(data) - 1}):
        path = tmp_path / f"cut{length}{suffix}"
        path.write_bytes(data[:length])
        message = _load_error(path)
        assert "truncated" in message or "not one" in message or "no HDF5 signature" in message, message
    assert "truncated" in _load_error(_write(tmp_path / f"half{suffix}", data[:len(data) // 2]))


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_other_formats_under_a_keras_name(saved, tmp_path, suffix):
    d = saved[0]
    pickled = pickle.dumps({"weights": [np.zeros(3)]}, protocol=4)
    assert "Python pickle" in _load_error(_write(tmp_path / f"pickle{suffix}", pickled))
    assert "empty" in _load_error(_write(tmp_path / f"empty{suffix}", b""))
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    assert "NumPy" in _load_error(_write(tmp_path / f"array{suffix}", buf.getvalue()))
    other = (d / ("good.h5" if suffix == ".keras" else "good.keras")).read_bytes()
    message = _load_error(_write(tmp_path / f"swapped{suffix}", other))
    assert f"rename it to end in {'.h5' if suffix == '.keras' else '.keras'}" in message, message


def test_damaged_keras_archives(saved, tmp_path):
    data = (saved[0] / "good.keras").read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        weights = archive.getinfo("model.weights.h5")
    flipped = bytearray(data)
    offset = weights.header_offset + 30 + len(weights.filename) + 500  # inside the stored weights
    flipped[offset] ^= 0xFF
    assert "model.weights.h5 is damaged" in _load_error(_write(tmp_path / "flipped.keras", bytes(flipped)))
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("data.pkl", b"x")
    assert "no config.json (data.pkl)" in _load_error(_write(tmp_path / "torch.keras", plain.getvalue()))

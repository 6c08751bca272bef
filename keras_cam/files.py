"""Files: atomic writes, PNG encoding and safe loading of saved Keras models.

One module below everything that writes or reads files (``keras_cam.cli``,
``keras_cam.demo``, ``keras_cam.dataset``, the audit report, the callback),
so that there is one atomic writer, one PNG encoder and one model loader.
It imports neither TensorFlow nor Keras when imported: the model loader
imports them when it is called.

- :func:`write_atomic`: ``path`` is either as it was or complete, never half
  written (a temporary file in the same folder, flushed to disk, renamed).
- :func:`png_bytes`: an image as PNG bytes (OpenCV).
- :class:`LockFile`: one writer per folder (``O_EXCL``, with the pid); a
  lock left by a process that died is taken over.
- :func:`load_model`: a ``.keras`` / ``.h5`` file or a SavedModel folder,
  loaded without running code stored in it unless asked (``unsafe=True``);
  a file that is not a readable Keras file (truncated, empty, a pickle) is
  reported as such, with the reason.
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np


class CliError(Exception):
    """A problem with what the user asked for: the ``keras-cam`` command reports it
    as one line (``keras-cam: error: ...``) and exits with status 1."""


# --- writing -------------------------------------------------------------------------------


def _missing_folder(path):
    """The folder of ``path`` as the user wrote it, when that folder does not exist."""
    folder = os.path.dirname(os.fspath(path)) or "."
    return None if os.path.isdir(folder) else folder


def write_atomic(path, data: bytes):
    """Write ``data`` to ``path`` so that ``path`` is either as it was or complete.

    The bytes go to a temporary file in the same folder (a hidden name unique
    to this process and thread), which is flushed to disk (``fsync``) and then
    renamed over ``path`` (``os.replace``, atomic on POSIX and Windows); the
    folder is then synced too where the system allows it. The temporary file
    is removed if anything fails. The file gets the permissions a plain
    ``open(path, "wb")`` would give it (``0o666`` less the umask).

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist (named as given).
        IsADirectoryError: ``path`` is a folder.
    """
    path = os.fspath(path)
    missing = _missing_folder(path)
    if missing is not None:
        kind = "is a file, not a folder" if os.path.exists(missing) else "does not exist"
        raise FileNotFoundError(f"cannot write {path}: the folder {missing} {kind}; create the folder first, "
                                f"or choose another path")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a folder; pass a file path")
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}-{threading.get_ident()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _sync_folder(folder or ".")


def append_synced(path, text: str):
    """Append ``text`` to the file ``path`` (UTF-8) and flush it to disk before returning.

    An append is not atomic: a crash can leave part of ``text`` at the end of
    the file, so each appended record must be checkable on its own (see
    :mod:`keras_cam.dataset`'s index lines).
    """
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sync_folder(folder):
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def png_bytes(image) -> bytes:
    """An image as PNG bytes.

    Args:
        image: uint8 pixels ``(H, W)`` or ``(H, W, 1)`` (gray), ``(H, W, 3)``
            (RGB) or ``(H, W, 4)`` (RGBA).

    Returns:
        The bytes of a PNG file that decodes to the same pixels.
    """
    import cv2

    x = np.asarray(image)
    if x.dtype != np.uint8:
        raise TypeError(f"`image` must be uint8 pixels to encode as PNG; received dtype {x.dtype}.")
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] in (1, 3, 4))) or 0 in x.shape:
        raise ValueError(f"`image` must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) pixels; received shape {x.shape}.")
    if x.ndim == 3 and x.shape[-1] == 3:
        x = x[..., ::-1]                 # RGB -> BGR, OpenCV's order
    elif x.ndim == 3 and x.shape[-1] == 4:
        x = x[..., [2, 1, 0, 3]]         # RGBA -> BGRA
    ok, data = cv2.imencode(".png", np.ascontiguousarray(x))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode an image of shape {x.shape} as PNG.")
    return data.tobytes()


def png_data_uri(rgb):
    """An ``(h, w, 3)`` uint8 RGB image as a ``data:image/png;base64,...`` URI (for HTML reports)."""
    import base64

    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def write_png(path, image):
    """Write ``image`` (see :func:`png_bytes`) to ``path`` as a PNG file, atomically."""
    write_atomic(path, png_bytes(image))


def check_out_folder(folder, option="--out"):
    """Refuse an output folder that cannot be one: an existing file, or a path under a file."""
    folder = os.fspath(folder)
    bare = folder.rstrip("/" + os.sep) or folder  # "out/" names the same path as "out"
    if os.path.exists(bare) and not os.path.isdir(bare):
        raise CliError(f"{option} {folder} is an existing file, not a folder; choose a folder "
                       f"(it is created if needed)")
    parent = bare
    while parent and not os.path.exists(parent):  # the nearest part of the path that exists
        up = os.path.dirname(parent.rstrip("/" + os.sep))
        parent = "" if up == parent else up
    if parent and not os.path.isdir(parent):
        raise CliError(f"{option} {folder} cannot be created: {parent} is a file, not a folder")


def check_free(paths, overwrite):
    """Refuse output paths whose folder cannot be one, and existing files unless ``overwrite``."""
    for folder in dict.fromkeys(os.path.dirname(os.fspath(p)) for p in paths):
        if folder:
            check_out_folder(folder)
    taken = [p for p in paths if os.path.exists(p)]
    if taken and not overwrite:
        more = f" (and {len(taken) - 1} more output file(s))" if len(taken) > 1 else ""
        raise CliError(f"{taken[0]}{more} already exists; pass --overwrite to replace it, or choose another --out")


# --- a lock file -----------------------------------------------------------------------------


def _process_start(pid):
    """The start time of process ``pid`` (clock ticks since boot, Linux ``/proc``), or None.

    With the pid, it names a process uniquely: a pid reused by a later process
    has another start time. None where ``/proc`` is not available, or for a
    zombie (a process that has ended but was not yet reaped by its parent).
    """
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])  # field 22 of the line; fields[0] is field 3


def _host():
    import socket

    return socket.gethostname()


def _alive(owner):
    """Whether the process that wrote a lock (``owner``: its parsed contents) may still run.

    A process on another host cannot be checked and counts as alive.
    """
    if owner.get("host") != _host():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # PermissionError: alive, owned by another user
    if os.path.isdir("/proc"):
        started = _process_start(pid)
        if started is None or (owner.get("started") is not None and started != owner["started"]):
            return False  # a zombie, or the pid now belongs to a later process
    return True


class LockFile:
    """A lock file that keeps a second writer out of a folder.

    Acquiring creates ``path`` with ``O_CREAT | O_EXCL`` (which fails when it
    exists) and writes the holder into it: pid, host, the process's start
    time and the time it was taken. A lock whose process is no longer
    running (checked with the pid, and with the start time where ``/proc``
    exists, so that a reused pid is not mistaken for the holder) is stale and
    is taken over: renamed away atomically, checked to be the very lock found
    stale, then removed. :meth:`release` removes the lock if it is still this
    one's.

    Args:
        path: the lock file.
        what: the guarded thing, as the error names it (e.g. ``"`out='maps'`"``).

    Raises:
        ValueError: another live process (or this one, in another thread or
            an unfinished call) holds the lock; the message names its pid.
    """

    def __init__(self, path, what):
        import time

        self.path, self.what = os.fspath(path), what
        self.record = {"pid": os.getpid(), "host": _host(), "started": _process_start(os.getpid()),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.text = json.dumps(self.record)
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                self._take_over_or_refuse()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.text)
                f.flush()
                os.fsync(f.fileno())
            return
        raise ValueError(f"{what}: could not take the lock {self.path}; other processes keep taking it")

    def _read(self):
        """``(text, modification time, holder dict or {})`` of the lock file; None when it is gone."""
        try:
            with open(self.path, encoding="utf-8") as f:
                found = f.read()
            stamp = os.path.getmtime(self.path)
        except FileNotFoundError:
            return None
        try:
            owner = json.loads(found)
        except ValueError:
            owner = {}
        return found, stamp, owner if isinstance(owner, dict) else {}

    def _take_over_or_refuse(self):
        import time

        read = self._read()
        # A lock created a moment ago names no holder yet: its creator writes it right after creating
        # the file. Wait up to a second for the name (another thread of this process, another process).
        for _ in range(20):
            if read is None or read[2] or time.time() - read[1] >= 5.0:
                break
            time.sleep(0.05)
            read = self._read()
        if read is None:
            return  # released meanwhile: try again
        found, stamp, owner = read
        if not owner and time.time() - stamp < 5.0:
            raise ValueError(
                f"{self.what} is being written by another writer: its lock {self.path} was created "
                f"{time.time() - stamp:.1f} s ago and does not name its holder yet; two writers would replace "
                f"each other's files. Wait until it ends, or choose another folder. If no writer is running, "
                f"delete {self.path}."
            )
        if owner and _alive(owner):
            who = ("this process" if owner.get("pid") == os.getpid() and owner.get("host") == _host()
                   else "another process")
            where = "" if owner.get("host") == _host() else f" on host {owner.get('host')}"
            since = f", since {owner['since']}" if owner.get("since") else ""
            raise ValueError(
                f"{self.what} is being written by {who} (pid {owner.get('pid')}{where}{since}); two writers "
                f"would replace each other's files. Wait until it ends, or choose another folder. If that "
                f"process is no longer running, delete {self.path}."
            )
        # Stale: move it aside (atomic), and remove it only if it is the lock found stale.
        aside = f"{self.path}.{os.getpid()}-{threading.get_ident()}-{os.urandom(4).hex()}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        with open(aside, encoding="utf-8") as f:
            moved = f.read()
        if moved != found:  # another process took the stale lock over first: give its lock back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        os.remove(aside)

    def release(self):
        """Remove the lock, if it is still this one's."""
        try:
            with open(self.path, encoding="utf-8") as f:
                mine = f.read() == self.text
        except FileNotFoundError:
            return
        if mine:
            os.remove(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# --- loading models ------------------------------------------------------------------------


def load_custom_objects(path):
    """Import a Python file and collect what it defines, for ``custom_objects``.

    A dict named ``custom_objects`` (or ``CUSTOM_OBJECTS``) in the file is
    used as is; otherwise every class and function the file defines. Classes
    registered with ``register_keras_serializable`` are found by importing.
    """
    import importlib.util

    if not os.path.isfile(path):
        raise CliError(f"--custom-objects file not found: {path}")
    spec = importlib.util.spec_from_file_location("keras_cam_custom_objects", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: report, don't trace
        raise CliError(f"--custom-objects {path} failed to import: {type(e).__name__}: {e}") from e
    for name in ("custom_objects", "CUSTOM_OBJECTS"):
        if isinstance(getattr(module, name, None), dict):
            return dict(getattr(module, name))
    return {
        name: obj for name, obj in vars(module).items()
        if not name.startswith("_") and callable(obj) and getattr(obj, "__module__", None) == module.__name__
    }


def _missing_object(message):
    """The name of the unknown class/function in a Keras loading error, or None."""
    import re

    for pattern in (r"Could not locate (?:class|function) '([^']+)'",
                    r"Unknown (?:layer|object|activation|loss|metric)[^']*'([^']+)'",
                    r"Cannot deserialize object of type `([^`]+)`"):
        m = re.search(pattern, message)
        if m:
            return m.group(1)
    return None


def _lambda_in_config(config):
    """True when a (nested) Keras config holds a ``Lambda`` layer."""
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda":
            return True
        return any(_lambda_in_config(v) for v in config.values())
    if isinstance(config, list):
        return any(_lambda_in_config(v) for v in config)
    return False


def holds_lambda(path):
    """Whether an ``.h5`` file or a SavedModel folder stores a ``Lambda`` layer (Python bytecode).

    tf-keras applies ``safe_mode`` to ``.keras`` files only, so these formats are
    checked here before loading.
    """
    if os.path.isdir(path):
        meta = os.path.join(path, "keras_metadata.pb")
        if not os.path.exists(meta):
            return False
        with open(meta, "rb") as f:
            data = f.read()
        return b'"class_name": "Lambda"' in data or b'"class_name":"Lambda"' in data
    import h5py

    try:
        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
    except OSError:
        return False  # not HDF5: the loader reports it
    if config is None:
        return False
    if isinstance(config, bytes):
        config = config.decode("utf-8")
    return _lambda_in_config(json.loads(config))


def _foreign_classes(path):
    """Classes in a ``.keras`` file's config that come from outside Keras (custom objects)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found = []

    def visit(node):
        if isinstance(node, dict):
            if "class_name" in node and "module" in node:
                module = node["module"] or ""
                if module.split(".")[0] not in ("keras", "tf_keras"):
                    found.append(node["class_name"])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return list(dict.fromkeys(found))


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _kind_of(head):
    """What a file whose first bytes are ``head`` looks like, in words (or None)."""
    if head.startswith(b"PK"):
        return "a zip archive"
    if head.startswith(_HDF5_SIGNATURE):
        return "an HDF5 file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (pickle.dump, joblib), not a saved Keras model"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy array file (.npy)"
    return None


def _why_unreadable(path):
    """Why the file ``path`` cannot be a Keras model file, in words; None when it looks like one.

    Cheap for ``.h5`` (the file's signature and HDF5's own check of its
    length). For ``.keras``, the zip archive's directory and config are read
    and every member's CRC checked (one pass over the file), so that a
    truncated or damaged archive is never half-loaded.
    """
    import zipfile

    size = os.path.getsize(path)
    if size == 0:
        return "it is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(16)
    kind = _kind_of(head)
    if path.lower().endswith(".keras"):
        if not head.startswith(b"PK"):
            if kind == "an HDF5 file":
                return ("it is an HDF5 file (the .h5 format), not a .keras zip archive; rename it "
                        "to end in .h5")
            return f"a .keras file is a zip archive; this one is {kind or 'not one'}"
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if "config.json" not in names:
                    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                    return (f"the zip archive holds no config.json ({shown or 'nothing'}), so "
                            f"model.save did not write it")
                bad = archive.testzip()
                if bad is not None:
                    return f"its member {bad} is damaged (its checksum does not match); copy or save it again"
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            detail = ("the zip directory at its end is missing" if str(e) == "File is not a zip file"
                      else f"zipfile: {e}")
            return f"it is a truncated or damaged zip archive ({size} bytes; {detail}); copy or save it again"
        return None
    if not head.startswith(_HDF5_SIGNATURE):
        if kind == "a zip archive":
            return "it is a zip archive (the .keras format), not an HDF5 file; rename it to end in .keras"
        return f"a .h5 file is an HDF5 file; this one is {kind or 'not one (no HDF5 signature)'}"
    import h5py

    try:
        with h5py.File(path, "r"):
            pass
    except OSError as e:
        text = " ".join(str(e).split())
        if "truncated" in text:
            import re

            m = re.search(r"stored_eof = (\d+)", text)
            whole = f" of {m.group(1)}" if m else ""
            return f"it is truncated ({size}{whole} bytes); copy or save it again"
        return f"HDF5 cannot open it ({text})"
    return None


def _load_error(path, error, legacy):
    """A one-line explanation of why Keras could not load ``path``."""
    message = " ".join(str(error).split())
    if "safe_mode" in message or "safe mode" in message:
        return _UNSAFE.format(path=path)
    missing = _missing_object(message)
    if missing is None and path.lower().endswith(".keras"):
        missing = next(iter(_foreign_classes(path)), None)
    if legacy and ("keras.src." in message or "batch_shape" in message):
        return (f"model {path} was saved by Keras 3, which tf-keras cannot read; run keras-cam "
                f"without TF_USE_LEGACY_KERAS=1")
    if not legacy and ("tf_keras.src" in message or missing in ("Functional", "Sequential", "Model")):
        return (f"model {path} was saved by tf-keras (Keras 2) in a form Keras 3 cannot read; run "
                f"keras-cam with TF_USE_LEGACY_KERAS=1")
    if missing:
        return (f"model {path} uses a custom object {missing!r} that is not defined here; pass "
                f"--custom-objects FILE.py, a Python file defining it (the file is executed)")
    short = message if len(message) <= 200 else message[:200].rsplit(" ", 1)[0] + " ..."
    return f"could not load model {path}: {type(error).__name__}: {short}"


_UNSAFE = ("model {path} contains Python code (a Lambda layer or function) that safe loading refuses "
           "to run; if you trust the file, pass --unsafe (loading then executes code from it)")


def load_model(path, unsafe=False, custom_objects_file=None):
    """Load a ``.keras`` / ``.h5`` file or a SavedModel folder, safely unless ``unsafe``.

    A SavedModel written by tf-keras is loaded as a Keras model under tf-keras
    (its layers keep their names); any other SavedModel (``model.export()``,
    ``tf.saved_model.save``) is explained through its frozen graph. A file
    that is not a readable Keras file (empty, truncated, damaged, a pickle or
    another format under a Keras name) is refused before Keras reads it, with
    the reason.

    Raises:
        CliError: the path, the file or its contents, in one line that says what to do.
    """
    from keras_cam._compat import LEGACY, keras

    path = os.fspath(path)
    if not os.path.exists(path):
        raise CliError(f"model not found: {path}")
    is_dir = os.path.isdir(path)
    if is_dir and not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise CliError(f"model folder {path} is not a SavedModel (no saved_model.pb in it)")
    if not is_dir and not path.lower().endswith((".keras", ".h5", ".hdf5")):
        raise CliError(f"model {path}: expected a .keras or .h5 file, or a SavedModel folder")
    if is_dir and not (LEGACY and os.path.exists(os.path.join(path, "keras_metadata.pb"))):
        return _load_saved_model(path)
    if not is_dir:
        why = _why_unreadable(path)
        if why is not None:
            raise CliError(f"model {path} is not a readable Keras file: {why}")
    if not unsafe and not path.lower().endswith(".keras") and holds_lambda(path):
        raise CliError(_UNSAFE.format(path=path))
    custom = load_custom_objects(custom_objects_file) if custom_objects_file else None
    try:
        return keras.models.load_model(path, custom_objects=custom, compile=False, safe_mode=not unsafe)
    except Exception as e:
        raise CliError(_load_error(path, e, LEGACY)) from e


def _load_saved_model(path):
    """A SavedModel folder as a model of graph ops (see :mod:`keras_cam.saved_model`).

    Loading a SavedModel runs TensorFlow graphs only, never Python code from the
    folder, so it needs no ``--unsafe``.
    """
    import tensorflow as tf

    from keras_cam.saved_model import FrozenModel

    try:
        return FrozenModel(tf.saved_model.load(path), name=os.path.basename(os.path.normpath(path)))
    except Exception as e:
        message = " ".join(str(e).split())
        short = message if len(message) <= 200 else message[:200].rsplit(" ", 1)[0] + " ..."
        raise CliError(f"could not load SavedModel {path}: {type(e).__name__}: {short}") from e

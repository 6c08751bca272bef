"""Watch the maps change while a model trains: a Keras callback.

    cb = keras_cam.CAMCallback(images, method="gradcam", log_dir="logs/cam")
    model.fit(x, y, epochs=10, callbacks=[cb])

At the end of every ``every``-th epoch the callback explains the same
``images`` with the model as it is at that moment, and writes a picture of
the maps (``epoch_003.png``, and a TensorBoard image under one tag, so the
epoch slider steps through training) plus faithfulness scalars from
:mod:`keras_cam.metrics`.

The callback is a thin wrapper: the explaining is an ordinary explainer,
built once. It reaches the target layer by intercepting its call while the
model runs, so it reads the live weights: training changes them in place and
the explainer needs neither a rebuild nor a retrace.

It works on every Keras backend. The TensorBoard event files are written by
``tf.summary`` on the TensorFlow backend and by :class:`EventFileWriter`
(plain Python: the same records, readable by TensorBoard) on JAX and PyTorch,
so TensorFlow is imported only when it is the backend.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import threading
import time
import warnings

import cv2
import numpy as np

from keras_cam import backend as _backend
from keras_cam import layout as _layout
from keras_cam import metrics as _metrics
from keras_cam import methods as _methods
from keras_cam import outputs as _outputs
from keras_cam import targets as _targets
from keras_cam._compat import keras, to_host
from keras_cam.base import Explainer, as_batch
from keras_cam.inputs import input_layout as graph_input_layout
from keras_cam.files import png_bytes, write_atomic
from keras_cam.viz import as_rgb_uint8, displayable, overlay

FAITHFULNESS = ("average_drop", "increase_in_confidence")

# Pictures smaller than this (pixels, longer side) are enlarged by a whole
# factor, pixel for pixel, so that a 32 x 32 image is still readable.
_MIN_TILE = 128
_COLUMNS = 8
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class CAMCallback(keras.callbacks.Callback):
    """Explain fixed images at the end of every ``every``-th epoch.

    Args:
        images: the images to follow, ``(N, H, W, C)`` (or one image), as the
            model takes them. They may be given before the model is built.
        targets: what to explain: None (each image's top-1 class at that
            epoch), an int, one int per image, or a callable
            ``f(outputs) -> (N,)``; see :mod:`keras_cam.targets`.
        method: a method name (``"gradcam"``, ``"gradcam++"``, any name of
            :func:`keras_cam.methods.names`) or an explainer class.
        layer: the target layer (name, path or layer); None chooses it
            automatically when the callback first runs.
        every: explain after epochs ``every, 2 * every, ...`` (1-based, as
            Keras prints them).
        log_dir: folder for the PNGs and the TensorBoard event files.
        tensorboard: write the picture as a TensorBoard image (tag
            ``cam/<Method>``) and the faithfulness scalars
            (``cam/average_drop``, ...) to event files in ``log_dir``, on every
            backend (``tf.summary`` on TensorFlow, :class:`EventFileWriter`
            elsewhere); the ``tensorboard`` package is needed only to view them.
        save_png: write ``log_dir/epoch_003.png`` (atomically: a file is
            either complete or absent).
        class_names: names of the classes, for the captions.
        at_train_end: also explain when training ends, if the last epoch was
            not an explained one.
        metrics: names of :mod:`keras_cam.metrics` functions
            ``f(model, images, maps, targets)`` to compute on the maps and log
            (class targets only); ``()`` for none. On a model with several
            outputs they score the explained one (``output=``), through a
            model of that output alone that shares the weights.
        output: which output of a multi-output model to explain (its index,
            or its key in a dict of outputs), as for an explainer's
            ``output=``; None: the only output, or the first of several.

    Attributes:
        records: one dict per explained epoch: ``epoch``, ``png`` (path or
            None), ``targets``, ``probabilities`` and the metric values.
        last: the :class:`~keras_cam.Explanation` of the last explained
            epoch (its maps, targets, scores, probabilities), or None.
        errors: ``(epoch, exception)`` for every epoch the callback could not
            explain. The first one is reported as a warning; training goes on.

    Example:
        >>> cb = keras_cam.CAMCallback(x_val[:8], method="gradcam++", every=2,
        ...                            class_names=["cat", "dog"])
        >>> model.fit(train_ds, validation_data=val_ds, epochs=10, callbacks=[cb])
        >>> # tensorboard --logdir logs/cam   (IMAGES tab, slide through the epochs)
    """

    def __init__(self, images, targets=None, method="gradcam", layer=None, every=1,
                 log_dir="logs/cam", tensorboard=True, save_png=True, class_names=None,
                 *, at_train_end=True, metrics=FAITHFULNESS, output=None):
        super().__init__()
        # Read as a batch against the model's layout once the model is known (a (N, T, C)
        # batch of signals and one (H, W, C) image have the same rank).
        self._given = np.asarray(_layout.stack(images), dtype=np.float32)
        self.images = None
        if not callable(targets) and np.ndim(images) >= 4:
            _targets.class_indices(targets, len(images))  # type and length; range once the model is known
        self.targets = targets
        self.method = _method_class(method)
        self.layer = layer
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"`every` must be a positive int (explain every `every` epochs); received {every!r}.")
        self.every = int(every)
        self.log_dir = os.fspath(log_dir)
        self.tensorboard = bool(tensorboard)
        self.save_png = bool(save_png)
        self.class_names = class_names
        self.at_train_end = bool(at_train_end)
        self.metrics = _metric_functions(metrics)
        self.output = output
        self._scored = None  # (model, the model of its explained output alone) for the metrics
        self.records = []
        self.errors = []
        self.last = None
        self._explainer = None
        self._writer = None
        self._epoch = 0
        self._attempted = None  # the last epoch explained (or tried)

    @property
    def explainer(self):
        """The explainer in use (built at the first explained epoch, then kept)."""
        return self._explainer

    def set_model(self, model):
        """Keras hands the callback its model before training: the images are read
        against the model's layout, and ``output=`` checked against its outputs, here, so a
        wrong shape or output fails before the first epoch."""
        super().set_model(model)
        self._read_images(graph_input_layout(model))
        _outputs.resolve(model, self.output)

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = epoch + 1
        if self._epoch % self.every == 0:
            self._record(self._epoch)

    def on_train_end(self, logs=None):
        if self.at_train_end and self._epoch and self._attempted != self._epoch:
            self._record(self._epoch)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _explainer_for(self, model):
        """The one explainer, rebuilt only if the callback is moved to another model."""
        if self._explainer is None or self._explainer.model is not model:
            options = {} if self.output is None else {"output": self.output}
            self._explainer = self.method(model, self.layer, **options)
            self._read_images(self._explainer.graph.inputs)
        return self._explainer

    def _scored_model(self, explainer):
        """The model the metrics score: the explainer's, or, where it has several outputs, a model of
        the explained output alone (:func:`keras_cam.outputs.alone`, built once per model)."""
        if self._scored is None or self._scored[0] is not explainer.model:
            self._scored = (explainer.model, _outputs.alone(explainer.model, explainer.graph.output_spec))
        return self._scored[1]

    def _read_images(self, layout):
        batch, _ = as_batch(self._given, layout)
        self.images = to_host(batch)
        if not callable(self.targets):
            _targets.class_indices(self.targets, len(self.images))

    def _record(self, epoch):
        self._attempted = epoch
        try:
            self.records.append(self._explain(epoch))
        except Exception as err:  # the callback must never stop training
            self.errors.append((epoch, err))
            if len(self.errors) == 1:
                warnings.warn(
                    f"CAMCallback could not explain the images after epoch {epoch}: "
                    f"{type(err).__name__}: {err} Training goes on; further failures are not "
                    f"reported (they are listed in the callback's `errors`).",
                    RuntimeWarning, stacklevel=2,
                )

    def _explain(self, epoch):
        explainer = self._explainer_for(self.model)
        result = explainer.explain(self.images, self.targets)
        self.last = result
        scalars = {}
        if result.targets is not None:
            for name, fn in self.metrics.items():
                scalars[name] = float(fn(self._scored_model(explainer), self.images, result.maps, result.targets))
        picture = grid(self.images, result, self.class_names,
                       title=f"epoch {epoch}  {type(explainer).__name__}  {explainer.layer_path}")
        encoded = png_bytes(picture)
        png = None
        if self.save_png:
            os.makedirs(self.log_dir, exist_ok=True)
            png = os.path.join(self.log_dir, f"epoch_{epoch:03d}.png")
            write_atomic(png, encoded)
        if self.tensorboard:
            if self._writer is None:
                self._writer = (_TFSummaryWriter if _backend.is_tensorflow() else EventFileWriter)(self.log_dir)
            height, width = picture.shape[:2]
            self._writer.image(f"cam/{type(explainer).__name__}", width, height, encoded, epoch)
            for name, value in scalars.items():
                self._writer.scalar(f"cam/{name}", value, epoch)
            self._writer.flush()
        return {
            "epoch": epoch, "png": png,
            "targets": None if result.targets is None else result.targets.tolist(),
            "probabilities": None if result.probabilities is None else result.probabilities.tolist(),
            **scalars,
        }


class _TFSummaryWriter:
    """TensorBoard summaries written by ``tf.summary`` (the TensorFlow backend;
    TensorFlow is imported here, never when the module loads)."""

    def __init__(self, log_dir):
        import tensorflow as tf  # noqa: PLC0415 (TensorFlow by nature, and only on its backend)
        from tensorflow.core.framework import summary_pb2  # noqa: PLC0415

        self._tf, self._pb2 = tf, summary_pb2
        self._writer = tf.summary.create_file_writer(log_dir)

    def _write(self, tag, plugin, tensor, step):
        metadata = self._pb2.SummaryMetadata(plugin_data=self._pb2.SummaryMetadata.PluginData(plugin_name=plugin))
        with self._writer.as_default():
            self._tf.summary.write(tag, tensor, step=step, metadata=metadata.SerializeToString())

    def image(self, tag, width, height, png, step):
        self._write(tag, "images", self._tf.constant([str(width), str(height), png]), step)

    def scalar(self, tag, value, step):
        self._write(tag, "scalars", self._tf.constant(float(value), self._tf.float32), step)

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


# ---------------------------------------------------------------- event files without TensorFlow

def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data) -> int:
    """CRC-32C (Castagnoli, reflected polynomial ``0x82F63B78``) of ``data``, as TFRecord files use."""
    crc, table = 0xFFFFFFFF, _CRC32C
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data) -> int:
    """TFRecord's masked CRC: ``rotate_right(crc32c, 15) + 0xA282EAD8`` modulo 2^32."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, payload) -> bytes:
    """A length-delimited protobuf field (wire type 2): strings, bytes, messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step, summary=None, file_version=None) -> bytes:
    """An ``Event`` message: ``wall_time`` (1, double), ``step`` (2), ``file_version`` (3), ``summary`` (5)."""
    out = struct.pack("<Bd", 1 << 3 | 1, time.time()) + _varint(2 << 3) + _varint(int(step))
    if file_version is not None:
        out += _field(3, file_version.encode())
    if summary is not None:
        out += _field(5, summary)
    return out


def _summary(tag, plugin, tensor) -> bytes:
    """A ``Summary`` with one ``Value``: ``tag`` (1), ``tensor`` (8) and ``metadata`` (9),
    whose ``plugin_data`` (1) names the ``plugin`` (1)."""
    metadata = _field(1, _field(1, plugin.encode()))
    return _field(1, _field(1, tag.encode()) + _field(8, tensor) + _field(9, metadata))


def _string_vector(items) -> bytes:
    """A ``TensorProto`` of dtype ``DT_STRING`` (7), shape ``[len(items)]``, ``string_val`` (8)."""
    shape = _field(2, _varint(1 << 3) + _varint(len(items)))  # one Dim, its size (1)
    return _varint(1 << 3) + _varint(7) + _field(2, shape) + b"".join(_field(8, item) for item in items)


def _float_scalar(value) -> bytes:
    """A ``TensorProto`` of dtype ``DT_FLOAT`` (1), shape ``[]``, ``float_val`` (5, packed)."""
    return _varint(1 << 3) + _varint(1) + _field(2, b"") + _field(5, struct.pack("<f", float(value)))


class EventFileWriter:
    """TensorBoard event files written in plain Python, on any Keras backend.

    An event file is a sequence of TFRecords (``uint64`` length, its masked
    CRC-32C, the bytes, their masked CRC-32C), each an ``Event`` protocol
    buffer, the first naming the format ``"brain.Event:2"``. Images are
    stored as TensorFlow's ``tf.summary.image`` stores them (the string
    vector ``[width, height, png]`` under the ``"images"`` plugin), scalars as
    a float under ``"scalars"``: TensorBoard shows them as it shows those of
    ``tf.summary``. The file is ``events.out.tfevents.<time>.<host>.<pid>.<n>.v2``
    in ``log_dir``, created on the first write; records are appended and
    flushed by :meth:`flush`.
    """

    _count = 0
    _lock = threading.Lock()

    def __init__(self, log_dir):
        self.log_dir = os.fspath(log_dir)
        self.path = None
        self._file = None

    def _open(self):
        if self._file is None:
            os.makedirs(self.log_dir, exist_ok=True)
            with EventFileWriter._lock:
                EventFileWriter._count += 1
                n = EventFileWriter._count
            name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.{n}.v2"
            self.path = os.path.join(self.log_dir, name)
            self._file = open(self.path, "ab")  # noqa: SIM115 (kept open across epochs, closed by close())
            self._record(_event(0, file_version="brain.Event:2"))
        return self._file

    def _record(self, data):
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", _masked_crc(header)) + data
                         + struct.pack("<I", _masked_crc(data)))

    def image(self, tag, width, height, png, step):
        """A PNG image (bytes) under ``tag`` at ``step``."""
        self._open()
        tensor = _string_vector([str(int(width)).encode(), str(int(height)).encode(), bytes(png)])
        self._record(_event(step, _summary(tag, "images", tensor)))

    def scalar(self, tag, value, step):
        """A float under ``tag`` at ``step``."""
        self._open()
        self._record(_event(step, _summary(tag, "scalars", _float_scalar(value))))

    def flush(self):
        if self._file is not None:
            self._file.flush()

    def close(self):
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None


def _method_class(method):
    if isinstance(method, type) and issubclass(method, Explainer):
        return method
    if isinstance(method, str):
        return _methods.get(method)
    raise TypeError(
        f"`method` must be a method name such as 'gradcam' (one of {_methods.names()}) or an "
        f"explainer class such as keras_cam.GradCAM; received {method!r}."
    )


def _metric_functions(names):
    if names is None:
        return {}
    if isinstance(names, str):
        names = (names,)
    found = {}
    for name in names:
        fn = getattr(_metrics, name, None) if isinstance(name, str) and not name.startswith("_") else None
        if not callable(fn):
            raise ValueError(
                f"`metrics` must name functions of keras_cam.metrics such as {list(FAITHFULNESS)}; "
                f"{name!r} is not one."
            )
        found[name] = fn
    return found


def _caption(result, i, class_names):
    if result.targets is None:
        return f"S={float(result.scores[i]):.3g}"
    k = int(result.targets[i])
    try:
        name = str(class_names[k]) if class_names is not None else f"class {k}"
    except (IndexError, KeyError):
        name = f"class {k}"
    return f"{name} {float(result.probabilities[i]):.2f}"


def _text_band(text, width, height, scale=0.4):
    """A white band of ``(height, width, 3)`` with ``text`` in black, cut to fit."""
    band = np.full((height, width, 3), 255, np.uint8)
    while text and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > width - 4:
        text = text[:-2] + "~" if len(text) > 2 else ""
    cv2.putText(band, text, (2, height - 5), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def grid(images, result, class_names=None, title=None, columns=_COLUMNS):
    """One RGB picture of images and their maps: image above overlay, captioned.

    Up to ``columns`` images per row; the caption names the explained class
    and its probability (or the score, for callable targets). Built with
    NumPy and OpenCV (no figure), so it costs milliseconds per epoch.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    pictures = [as_rgb_uint8(displayable(im)) for im in images]
    h, w = pictures[0].shape[:2]
    scale = max(1, math.ceil(_MIN_TILE / max(h, w)))
    tiles = []
    for i, picture in enumerate(pictures):
        big = cv2.resize(picture, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        tile = np.concatenate([big, overlay(big, result.maps[i]),
                               _text_band(_caption(result, i, class_names), w * scale, 18)])
        tiles.append(np.pad(tile, ((2, 2), (2, 2), (0, 0)), constant_values=255))
    blank = np.full_like(tiles[0], 255)
    rows = []
    for start in range(0, len(tiles), columns):
        row = tiles[start:start + columns]
        if rows:
            row = row + [blank] * (columns - len(row))
        rows.append(np.concatenate(row, axis=1))
    picture = np.concatenate(rows, axis=0)
    if title:
        picture = np.concatenate([_text_band(title, picture.shape[1], 20, 0.45), picture])
    return picture

"""Maps for a whole dataset: any iterable of batches, on one device or several.

    for batch in keras_cam.explain_dataset(cam, dataset):          # Explanation per batch
        ...
    keras_cam.explain_dataset(cam, dataset, out="maps/")            # .npy shards + index

The dataset is read the way ``model.predict`` reads it: elements are
``images`` or ``(images, labels[, sample_weights])`` (a tuple or a list);
a source of single examples is batched by ``batch_size``. It may be:

- a ``tf.data.Dataset`` (on the TensorFlow backend it runs through
  ``tf.data`` and ``tf.distribute``; on JAX and PyTorch it is read as numpy
  with ``as_numpy_iterator()``, TensorFlow being installed since the dataset exists);
- a ``keras.utils.PyDataset`` (``keras.utils.Sequence`` under tf-keras),
  read batch by batch in index order (its workers are not started);
- a PyTorch ``DataLoader``, a generator, a list, or any other iterable of
  numpy arrays or tensors of any backend.

Every image gets a global index (its position in the dataset) that travels
with it, so the maps come back in dataset order whatever the number of
devices, and the last, partial batch is explained like the others. A batch
of 0 images is left out (it still counts as a batch).

Several devices:

- TensorFlow: ``strategy=`` a ``tf.distribute.Strategy`` (or the one in
  scope). Under ``R`` replicas a batch of ``n`` images is padded to the next
  multiple of ``R`` (at least ``R``: no replica ever gets an empty share,
  which TensorFlow's oneDNN CPU kernels fail on) by repeating its last
  image; each replica explains one contiguous slice of ``n_padded / R``
  rows; the padding rows carry the index -1 and are dropped once the
  replicas' results are gathered. Every worker of a multi-worker strategy
  reads the whole dataset (in the same order on every worker) and explains
  only its replicas' slices; the results are gathered on every worker, and
  only the chief writes ``out``. A source that is not a ``tf.data.Dataset``
  is turned into one (``from_generator``) for a strategy.
- JAX: ``distribution=`` a ``keras.distribution.DataParallel`` (or the one
  set with ``keras.distribution.set_distribution``). Each batch is padded
  the same way to a multiple of the number of devices on the batch axis,
  placed on the devices along that axis (``distribution.get_data_layout``),
  and the jitted explanation runs as one SPMD program: every device
  explains its rows, with the weights as the distribution lays them out
  (build the model inside ``distribution.scope()``). One process.
- PyTorch: one device.

On disk (``out=``), batch ``b`` becomes ``maps_{b:06d}.npy`` (``(n, H, W)``
float32) or one PNG overlay per image, and ``index.jsonl`` records, one JSON
line per finished shard, which images it holds, a fingerprint of each input
image (the first 64 bits of the BLAKE2b hash of its float32 bytes, computed
on the host, the same on every backend and for every kind of source), the
explained class, score and probability, and a SHA-256 of each file. A rerun
with the same settings skips every shard whose files, inputs and (with
``targets='labels'``) labels still match the index, and recomputes the others
(a relabelled image's shard is computed again); a folder written on one backend
resumes on another (the weights' fingerprint is the same bytes). The
index's first line records the settings (the method, model, target layers,
``targets``, ``upsample``, ``normalize`` and, under ``settings``, every option
of the explainer that changes the maps: the explained output, ``linearize``,
``aug_smooth``, ``eigen_smooth`` and the method's own options such as
``counterfactual``, ``max_channels`` or ``seed``; not ``batch_size`` or
``verbose``) and a fingerprint of the model's weights
(:func:`weights_fingerprint`): a rerun with other settings or other weights
is refused, naming each setting that differs, unless ``overwrite=True``. Every index line carries a
check of its own bytes, so that a line torn by a crash is ignored (and its
shard recomputed), and ``index.jsonl.lock`` keeps a second process from
writing the same folder at the same time (a lock left by a process that
died is taken over).
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import os
import re
import sys
import warnings
import weakref

import numpy as np

from keras_cam import _compat, backend
from keras_cam import targets as _targets
from keras_cam.base import Explainer, Explanation, check_images
from keras_cam.compiled import Compiled
from keras_cam.files import LockFile, append_synced, png_bytes, write_atomic
from keras_cam.layout import as_float_array
from keras_cam.viz import displayable  # noqa: F401  (also imported from here by keras_cam.audit)

INDEX = "index.jsonl"
LOCK = "index.jsonl.lock"
_FORMAT = "keras-cam/explain_dataset"
_VERSION = 3  # 2: checked index lines, the weights' fingerprint in the header; 3: the explainer's settings


def _tf():
    """TensorFlow, for the ``tf.data`` / ``tf.distribute`` paths only (TensorFlow by nature)."""
    import tensorflow as tf

    return tf


def _is_tf_dataset(obj):
    """True for a ``tf.data.Dataset`` (never imports TensorFlow: one exists only if it is loaded)."""
    tf = sys.modules.get("tensorflow")
    data = getattr(tf, "data", None) if tf is not None else None
    return data is not None and isinstance(obj, data.Dataset)


def explain_dataset(explainer, dataset, *, targets="labels", strategy=None, distribution=None, batch_size=64,
                    out=None, save="npy", upsample=True, normalize=True, overwrite=False, verbose=1,
                    features=False):
    """Explain every image of a dataset: any iterable of batches, on every backend.

    Args:
        explainer: an explainer (``keras_cam.GradCAM(model)``, ...).
        dataset: an iterable of ``images`` or ``(images, labels)`` (a third
            element, sample weights, is ignored): a ``tf.data.Dataset``, a
            ``keras.utils.PyDataset``, a PyTorch ``DataLoader``, a generator
            or a list of arrays (see the module docstring). Batched elements
            ``(n, H, W, C)`` are explained batch by batch; single images
            ``(H, W, C)`` are first batched by ``batch_size``. An array is
            not a dataset (pass ``[images]``, or call the explainer).
        targets: ``"labels"`` (the default): each image's label where the
            dataset has labels, its top-1 class otherwise. Labels are one
            array per batch: integer classes ``(n,)`` or ``(n, 1)``, or
            one-hot / probability rows ``(n, C)`` read by argmax, ``C`` the
            explained output's classes (values >= 0, each row summing to 1;
            other rows, e.g. multi-hot ones, are refused). The labels of
            several outputs (a tuple or dict, as ``model.fit`` takes them) are
            refused: yield the explained output's (the explainer's ``output=``); ``None``: the
            top-1 class; an int: that class for every image; or a callable
            ``f(outputs) -> (n,)`` (see :mod:`keras_cam.targets`).
        strategy: TensorFlow backend only: a ``tf.distribute.Strategy``
            (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``, ...);
            every replica explains its share of each batch (``strategy.run``)
            and the maps are gathered in dataset order. None uses the strategy
            in scope (the default, single-device one outside any
            ``strategy.scope()``). Build the model inside ``strategy.scope()``
            so each replica reads its own copy of the weights.
        distribution: JAX backend only: a ``keras.distribution.DataParallel``
            (or a ``ModelParallel``: its batch axis); each
            batch is split over its devices. None uses
            ``keras.distribution.distribution()`` when one is set (on JAX),
            else one device.
        batch_size: images per batch for a dataset of single images (a batched
            dataset keeps its batches).
        out: None to return an iterator of results; a folder to write them
            to instead (created if needed; see the module docstring).
        save: with ``out``: ``"npy"`` (one maps shard per batch) or ``"png"``
            (one overlay per image; images must be displayable, i.e. in
            [0, 1] or [0, 255], otherwise they are min-max scaled for display).
        upsample: maps at the input resolution (True) or the layer's.
        normalize: each map scaled to [0, 1].
        overwrite: with ``out``: False (the default) resumes a folder written
            with the same settings and weights, and refuses one written with
            others (a ValueError that says which differ); True recomputes
            every shard into the folder, replacing its index, and removes the
            old index's shard files that the new run does not write again.
        verbose: 1 draws a progress bar (batches), 0 is silent.
        features: without ``out``: each result also carries ``features``, the
            images' first target layer's activations pooled over positions
            ``(n, 2K)`` and their class scores ``(n, C)``
            (:meth:`~keras_cam.Explainer.pooled_features`), computed in the same
            compiled step as the maps: for a gradient explainer, from the maps'
            own forward pass (:attr:`~keras_cam.Explainer.fuses_features`). The
            maps are the same either way.

    Returns:
        Without ``out``: an iterator of :class:`~keras_cam.Explanation`, one per
        batch, in dataset order (``targets``, ``probabilities`` are None for a
        callable target). With ``out``: a dict summarizing the run:
        ``{"out", "index", "images", "shards", "written", "skipped", "replicas"}``
        (``replicas``: the devices each batch was split over).

    Raises:
        TypeError / ValueError: for a wrong explainer, dataset, element
            structure, target or option (raised by this call, before any
            work); ValueError for labels that are not classes of the model
            (or rows that are not one-hot / probability rows of its
            classes), or images with NaN or Inf (when the batch that holds them is
            read). RuntimeError for ``strategy=`` off TensorFlow (it names
            ``KERAS_BACKEND=tensorflow``) and ``distribution=`` off JAX. With
            ``out``: ValueError when the folder holds maps of other settings
            or other weights (pass ``overwrite=True`` or a new folder), or
            when another process is writing it (its lock file
            ``index.jsonl.lock`` names the pid).

    Example:
        >>> cam = keras_cam.GradCAM(model)
        >>> for result in keras_cam.explain_dataset(cam, val_ds):
        ...     save(result.maps, result.targets)
        >>> keras_cam.explain_dataset(cam, val_ds, out="maps/")   # rerun resumes
    """
    if not isinstance(explainer, Explainer):
        raise TypeError(
            f"`explainer` must be a keras_cam explainer such as keras_cam.GradCAM(model); "
            f"received {type(explainer).__name__}."
        )
    _check_source(dataset)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
    if not isinstance(overwrite, bool):
        raise TypeError(f"`overwrite` must be True or False; received {type(overwrite).__name__}.")
    if save not in ("npy", "png"):
        raise ValueError(f"`save` must be 'npy' or 'png'; received {save!r}.")
    if save == "png" and not (upsample and normalize):
        raise ValueError("`save='png'` draws maps over their images: it needs upsample=True and normalize=True.")
    if getattr(explainer, "aug_smooth", False) and not upsample:
        raise ValueError("`aug_smooth` averages maps at the input resolution; use upsample=True.")
    if explainer.graph.multi_input:
        raise ValueError(
            f"explain_dataset explains single-input models; model {explainer.model.name!r} has "
            f"the inputs {explainer.graph.input_names}. Explain its batches with the explainer "
            f"itself: `explainer([images, other, ...])`."
        )
    if strategy is not None:
        backend.require_tensorflow("`strategy=` (a tf.distribute strategy)")
        if not isinstance(strategy, _tf().distribute.Strategy):
            raise TypeError(f"`strategy` must be a tf.distribute.Strategy or None; received {type(strategy).__name__}.")
    if not isinstance(features, bool):
        raise TypeError(f"`features` must be True or False; received {type(features).__name__}.")
    if features and out is not None:
        raise ValueError("`features=True` adds the features to the results returned; with `out=` nothing is "
                         "returned: pass one or the other.")
    if features and not explainer.uses_layer:
        raise ValueError(f"`features=True` pools the target layer's activations; {type(explainer).__name__} "
                         f"has no target layer.")
    if features and "features" not in inspect.signature(explainer.compute).parameters:
        raise ValueError(f"`features=True` is not available for {type(explainer).__name__}, which computes its "
                         f"maps its own way (its `compute` takes no `features`); leave it False.")
    distribution = _distribution(distribution)
    options = dict(targets=targets, batch_size=int(batch_size), upsample=upsample, normalize=normalize,
                   fingerprints=out is not None, images=save == "png" and out is not None,
                   features=features)

    if backend.is_tensorflow() and (strategy is not None or _is_tf_dataset(dataset)
                                    or _tf().distribute.has_strategy()):
        strategy = strategy if strategy is not None else _tf().distribute.get_strategy()
        job = _Job(explainer, dataset, strategy=strategy, **options)
        active = strategy.extended.should_checkpoint
    else:
        job = _HostJob(explainer, dataset, distribution=distribution, **options)
        active = True
    if out is None:
        return (result for _, _, result, _ in job.run(verbose))
    writer = _Writer(out, job.header(save, weights=active), save, active=active, overwrite=overwrite)
    return writer.consume(job, verbose)


def _check_source(dataset):
    """Refuse, before any work, what is not an iterable of batches."""
    if _is_tf_dataset(dataset):
        return
    what = type(dataset).__name__
    if dataset is None or isinstance(dataset, (str, bytes, dict)) or hasattr(dataset, "shape") \
            or not (hasattr(dataset, "__iter__") or _is_py_dataset(dataset)):
        hint = (" For an array of images, call the explainer directly, or pass a list of batches "
                "`[images]` (or `(images[i:i + 64] for i in range(0, len(images), 64))`)."
                if hasattr(dataset, "shape") else "")
        raise TypeError(
            f"`dataset` must be an iterable of batches (a tf.data.Dataset, a keras.utils.PyDataset, a "
            f"PyTorch DataLoader, a generator or a list of arrays); received {what}.{hint}"
        )


def _is_py_dataset(obj):
    """True for a ``keras.utils.PyDataset`` (Keras 3) or a ``keras.utils.Sequence`` of tf-keras."""
    for name in ("keras", "tf_keras"):
        utils = getattr(sys.modules.get(name), "utils", None)
        for cls in ("PyDataset", "Sequence"):
            kind = getattr(utils, cls, None)
            if isinstance(kind, type) and isinstance(obj, kind):
                return True
    return False


def _distribution(distribution):
    """The ``keras.distribution`` to split batches with on JAX, or None (one device)."""
    name = backend.name()
    if distribution is None:
        if name != "jax":
            return None
        return _compat.keras.distribution.distribution()
    if name != "jax":
        other = ("pass `strategy=` a tf.distribute.Strategy instead" if name == "tensorflow" else
                 "on PyTorch explain_dataset runs on one device")
        raise RuntimeError(
            f"`distribution=` (keras.distribution) splits batches on the JAX backend; Keras runs on "
            f"{name!r} here: {other}, or run with KERAS_BACKEND=jax (set before Keras is imported)."
        )
    kinds = (_compat.keras.distribution.DataParallel, _compat.keras.distribution.ModelParallel)
    if not isinstance(distribution, kinds):
        raise TypeError(
            f"`distribution` must be a keras.distribution.DataParallel (or ModelParallel); received "
            f"{type(distribution).__name__}."
        )
    return distribution


def _has_labels(spec):
    return isinstance(spec, (tuple, list)) and len(spec) in (2, 3)


def _image_spec(spec, layout):
    """The images' TensorSpec of an element spec, checked against the model's
    :class:`~keras_cam.layout.InputLayout`, or a clear error."""
    images = spec[0] if _has_labels(spec) else spec
    if not isinstance(images, _tf().TensorSpec):
        raise TypeError(
            f"Dataset elements must be `images` or `(images, labels)`, with images a single "
            f"tensor; received elements of structure {spec}. Map the dataset to that form first, "
            f"e.g. dataset.map(lambda d: (d['image'], d['label']))."
        )
    if images.shape.rank not in (layout.rank + 1, layout.rank + 2):
        raise ValueError(
            f"Dataset elements must be single examples, {layout.name} for this model, or batches "
            f"of them; the dataset yields shape {images.shape}."
        )
    return images


def _label_spec(spec, explainer, num_classes):
    """The labels' TensorSpec of an element spec, checked: one tensor of class indices, or of
    one-hot / probability rows as wide as the explained output's classes (``num_classes``)."""
    labels = spec[1]
    if isinstance(labels, (tuple, list, dict)):
        raise _per_output_error(f"The dataset's labels are {labels}", explainer)
    if not isinstance(labels, _tf().TensorSpec):
        raise TypeError(
            f"`targets='labels'` needs one label tensor per batch; the dataset's labels are "
            f"{labels}. Pass `targets=` explicitly (None for top-1, an int or a callable)."
        )
    rank = labels.shape.rank
    if rank not in (1, 2) or not (labels.dtype.is_integer or labels.dtype.is_floating):
        raise ValueError(
            f"Labels must be {_label_forms(num_classes)}; the dataset's labels are {labels}. Pass "
            f"`targets=` explicitly instead."
        )
    width = labels.shape[-1] if rank == 2 else None
    if num_classes is not None and width is not None and width not in (1, num_classes):
        raise ValueError(_width_problem(f"(None, {width})", num_classes, explainer) + ".")
    return labels


def _label_forms(num_classes):
    rows = "classes" if num_classes is None else num_classes
    return (f"class indices (n,) or (n, 1) (integers), or one-hot / probability rows (n, {rows}) (values >= 0, "
            f"each row summing to 1)")


def _width_problem(shape, num_classes, explainer):
    """The message for 2-D labels whose width is not the explained output's number of classes."""
    several = explainer is not None and len(getattr(explainer.model, "outputs", None) or ()) > 1
    return (f"labels of shape {shape} are read as one-hot / probability rows, one column per class, but the "
            f"explained output has {num_classes} classes. Labels must be {_label_forms(num_classes)}"
            + (f". Labels of another output, or several outputs' labels side by side, are not this output's: "
               f"{_one_output_hint(explainer)}" if several else ""))


def _one_output_hint(explainer):
    spec = explainer.graph.output_spec
    which = spec.key if spec.key is not None else (spec.index or 0)
    return (f"explain_dataset explains one output of the model (the explainer's `output=`, here {which!r}) and "
            f"reads one label array per batch: yield that output's labels only, e.g. "
            f"`((x, y[{which!r}]) for x, y in dataset)` or `dataset.map(lambda x, y: (x, y[{which!r}]))`, or pass "
            f"`targets=None` to explain each image's top-1 class")


def _per_output(labels):
    """Whether ``labels`` are several label arrays (one per output of a model, as ``model.fit`` takes
    them): a dict, or a tuple / list of arrays (a list of numbers or of rows is one label array)."""
    if isinstance(labels, dict):
        return True
    return isinstance(labels, (tuple, list)) and any(len(getattr(v, "shape", ()) or ()) >= 1 for v in labels)


def _per_output_error(what, explainer):
    # Such labels are refused, not read: picking the explained output's array from them would be a guess
    # (a tuple's order is the user's, while Keras orders a dict-output model's outputs by sorted keys), and
    # a wrong guess explains other classes than the labels without a sign. Stacked, they were read as
    # rows (labels [4 3] of two heads explained as classes [0 0]).
    return ValueError(f"{what}: one label array per output of the model, as model.fit takes them. "
                      f"{_one_output_hint(explainer)}.")


def _labels_to_classes(labels, num_classes):
    """Labels ``(n,)``, ``(n, 1)`` or ``(n, C)`` as int32 class indices, checked in range (in the graph);
    rows ``(n, C)`` must be one-hot / probability rows (``C`` the number of classes, checked by
    :func:`_label_spec` where it is static)."""
    tf = _tf()
    if labels.shape.rank == 2 and labels.shape[-1] != 1:
        rows = tf.cast(labels, tf.float32)
        if labels.shape[-1] is None and num_classes is not None:
            tf.debugging.assert_equal(
                tf.shape(rows)[-1], num_classes,
                message=f"keras-cam: labels read as one-hot / probability rows must have one column per class "
                        f"of the explained output ({num_classes})")
        tf.debugging.assert_non_negative(rows, message=f"keras-cam: {_ROWS_PROBLEM}")
        tf.debugging.assert_near(tf.reduce_sum(rows, axis=-1), tf.ones_like(rows[:, 0]), atol=_ROW_SUM_TOLERANCE,
                                 rtol=0.0, message=f"keras-cam: {_ROWS_PROBLEM}")
        return tf.argmax(labels, axis=-1, output_type=tf.int32)
    labels = tf.reshape(labels, [-1])
    if labels.dtype.is_floating:
        tf.debugging.assert_equal(
            labels, tf.round(labels),
            message="keras-cam: labels read as class indices must be whole numbers")
    classes = tf.cast(labels, tf.int32)
    tf.debugging.assert_non_negative(classes, message="keras-cam: labels must be classes >= 0")
    if num_classes is not None:
        tf.debugging.assert_less(
            classes, tf.constant(num_classes, tf.int32),
            message=f"keras-cam: labels must be classes of the model (0..{num_classes - 1})")
    return classes


_LABEL_HINT = "Fix the labels, or pass `targets=` explicitly (None explains each image's top-1 class)."
_NAN_HINT = "Clean or drop those images."


# 2-D labels are read by argmax only where each row names one class: one-hot, or probabilities (label
# smoothing, mixup, a teacher's outputs). Multi-hot rows (a multi-label model's), integer rows or rows of
# several outputs side by side would be argmaxed into classes nobody asked for.
_ROWS_PROBLEM = ("labels read as one-hot / probability rows must be >= 0 and each row must sum to 1 (multi-hot "
                 "rows of a multi-label model name no single class: pass `targets=` an int or a callable)")
_ROW_SUM_TOLERANCE = 1e-2


def _host_classes(labels, num_classes, explainer=None):
    """Labels ``(n,)``, ``(n, 1)`` or ``(n, C)`` (numpy) as int32 class indices, or the
    problem (a message without the batch) when they are not classes of the model:
    rows ``(n, C)`` must be one-hot / probability rows of the explained output's ``C`` classes."""
    if labels.ndim == 2 and labels.shape[-1] != 1:
        if num_classes is not None and labels.shape[-1] != num_classes:
            return None, _width_problem(tuple(labels.shape), num_classes, explainer)
        rows = labels.astype(np.float64)
        bad = np.flatnonzero(~(np.isfinite(rows).all(axis=1) & (rows >= 0).all(axis=1)
                               & (np.abs(rows.sum(axis=1) - 1) <= _ROW_SUM_TOLERANCE)))
        if len(bad):
            return None, f"{_ROWS_PROBLEM}; row {int(bad[0])} is {labels[bad[0]].tolist()}"
        return np.argmax(labels, axis=-1).astype(np.int32), None
    labels = labels.reshape(-1)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        return None, "labels read as class indices must be whole numbers"
    if (labels < 0).any():
        return None, "labels must be classes >= 0"
    if num_classes is not None and (labels >= num_classes).any():
        return None, f"labels must be classes of the model (0..{num_classes - 1})"
    return labels.astype(np.int32), None


def _targets_kind(targets, use_labels):
    """What is explained, as recorded in an index: "labels", "top1", "callable" or a class."""
    if callable(targets):
        return "callable"
    if use_labels:
        return "labels"
    if targets is None or (isinstance(targets, str) and targets == "labels"):
        return "top1"
    if isinstance(targets, (int, np.integer)) and not isinstance(targets, bool):
        return int(targets)
    raise TypeError(
        f"`targets` must be 'labels', None, an int or a callable for a dataset; received "
        f"{targets!r}. (A list of classes has no meaning across a dataset: put the classes in "
        f"the dataset as labels.)"
    )


def fingerprints(images):
    """One fingerprint per image: the first 64 bits of the BLAKE2b hash of its float32 bytes, as int64.

    What ``index.jsonl`` records per input (as 16 hex digits), so that a rerun
    recomputes a shard whose images changed. Computed on the host, the same on
    every backend and for every kind of source.

    Args:
        images: a batch ``(n, ...)``, numpy or array-like (cast to float32).

    Returns:
        ``(n,)`` int64 numpy array.
    """
    x = np.ascontiguousarray(np.asarray(images, np.float32)).reshape(len(images), -1)
    return np.array([int.from_bytes(hashlib.blake2b(row.view(np.uint8), digest_size=8).digest(), "little",
                                    signed=True) for row in x], np.int64)


def _num_classes(explainer, sample):
    graph = explainer.graph
    if graph.num_classes is not None:
        return graph.num_classes
    return int(graph.scores(graph.model(sample, training=False)).shape[-1])


# Explainer attributes that do not change the maps: the graph (its settings are read from it by
# name in _settings) and how the work is split and reported.
_NOT_SETTINGS = frozenset({"graph", "batch_size", "verbose"})


def _settings(explainer):
    """Every setting of ``explainer`` that changes its maps, as an index records it (JSON values).

    An explainer keeps its options as public attributes (``aug_smooth``, ``eigen_smooth``,
    ``counterfactual``, ``max_channels``, ``seed``, ...) and its caches and derived state as private
    ones, so every public attribute is recorded but :data:`_NOT_SETTINGS`: a new method's options are
    covered without a list here. Its graph holds the explained output (as resolved: ``output=None``
    and ``output=0`` are the same), ``linearize``, the image input, the data format and ``reshape``.
    """
    graph = explainer.graph
    spec = graph.output_spec
    settings = {"output": spec.key if spec.key is not None else (spec.index or 0),
                "linearize": bool(graph.linearize), "image_input": graph.input_index,
                "data_format": graph.data_format, "reshape": graph.reshape}
    settings.update((name, value) for name, value in vars(explainer).items()
                    if not name.startswith("_") and name not in _NOT_SETTINGS)
    return {name: _setting(settings[name]) for name in sorted(settings)}


def _setting(value):
    """One setting as JSON that compares equal after a round trip: numbers, strings and None as they are,
    sequences and dicts item by item, an array by its dtype, shape and a hash of its bytes, anything
    else (a callable, a layer) by its type and name (its code cannot be compared)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else str(float(value))  # JSON's NaN is not equal to itself
    if isinstance(value, (list, tuple)):
        return [_setting(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _setting(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            array = np.ascontiguousarray(np.asarray(_compat.to_host(value)))
        except Exception:  # noqa: BLE001 (not readable as an array: named below)
            array = None
        if array is not None and array.dtype.kind in "biuf":
            digest = hashlib.sha256(array.astype(array.dtype.newbyteorder("="), copy=False).tobytes()).hexdigest()
            return f"array {array.dtype.name}{list(array.shape)} sha256:{digest[:16]}"
    name = getattr(value, "__qualname__", None) or getattr(value, "name", None)
    kind = type(value).__qualname__
    return f"<{kind} {name}>" if isinstance(name, str) else f"<{kind}>"


def _header(job, save, weights):
    """The settings an index records; ``weights``: include the weights' fingerprint (computed here, once)."""
    explainer = job.explainer
    return {
        "format": _FORMAT, "version": _VERSION, "save": save,
        "method": type(explainer).__name__, "model": explainer.model.name,
        "layers": [str(p) for p in explainer.layer_paths],
        "targets": job.targets_kind, "upsample": job.upsample, "normalize": job.normalize,
        "settings": _settings(explainer),
        "weights": weights_fingerprint(explainer.model) if weights else None,
    }


def _batch_error(step, message, explainer=None):
    hint = _NAN_HINT if "NaN" in message else _LABEL_HINT
    if "labels" in message and explainer is not None:  # perhaps the labels of the wrong one of several outputs
        hint += explainer.graph.output_spec.implicit_note()
    return ValueError(f"Batch {step} of the dataset: {message}. {hint}")


# --- any iterable, on the host: one device, or a keras.distribution on JAX -----------------


def _host_source(dataset):
    """``(iterator of elements, number of elements or None)`` of any source."""
    if _is_tf_dataset(dataset):  # JAX / PyTorch, or TensorFlow without tf.data's path: numpy
        cardinality = int(dataset.cardinality())
        return iter(dataset.as_numpy_iterator()), (cardinality if cardinality >= 0 else None)
    if _is_py_dataset(dataset):  # by index: its __getitem__ may never raise IndexError
        n = getattr(dataset, "num_batches", None) if hasattr(type(dataset), "num_batches") else len(dataset)
        if n is None:
            raise ValueError(
                f"`dataset` is a {type(dataset).__name__} without an end (num_batches is None); "
                f"explain_dataset reads a dataset to its end: give it a length.")
        return (dataset[i] for i in range(int(n))), int(n)
    try:
        n = len(dataset)
    except TypeError:
        n = None
    return iter(dataset), n


def _split_element(element, step, labels_of=None):
    """``(images, labels or None)`` of one element, as numpy: the images float32 in native byte order
    (as an explainer call reads them), the labels read only for ``labels_of``, the explainer whose
    ``targets='labels'`` they are (None: left out)."""
    if isinstance(element, dict) or (isinstance(element, (tuple, list)) and len(element) not in (1, 2, 3)):
        what = f"a dict with keys {sorted(map(str, element))}" if isinstance(element, dict) else \
            f"a {type(element).__name__} of {len(element)}"
        raise TypeError(
            f"Dataset elements must be `images` or `(images, labels)`, with images a single "
            f"array; element {step} is {what} (its structure is not one of these). Map the "
            f"dataset to that form first, e.g. ((d['image'], d['label']) for d in dataset)."
        )
    labels = None
    if isinstance(element, (tuple, list)):
        images, labels = element[0], (element[1] if len(element) > 1 else None)
    else:
        images = element
    images = as_float_array(_host_array(images, "images", step))
    if labels is not None and labels_of is None:
        labels = None
    elif labels is not None:
        if _per_output(labels):
            kind = (f"a dict with keys {sorted(map(str, labels))}" if isinstance(labels, dict) else
                    f"a {type(labels).__name__} of {len(labels)} arrays")
            raise _per_output_error(f"The labels of element {step} are {kind}", labels_of)
        labels = _host_array(labels, "labels", step)
        labels = labels.astype(labels.dtype.newbyteorder("="), copy=False)
    return images, labels


def _host_array(value, what, step):
    try:
        array = np.asarray(_compat.to_host(value))
    except Exception as err:  # noqa: BLE001 (any failure to read the value means the same)
        raise TypeError(f"The {what} of element {step} are a {type(value).__name__}, not an array "
                        f"({type(err).__name__}).") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"The {what} of element {step} are not numbers (dtype {array.dtype}); "
            + ("pass images as arrays of numbers." if what == "images" else
               "pass `targets=` explicitly (None for top-1, an int or a callable), or labels as class indices.")
        )
    return array


class _HostJob:
    """One pass over any iterable, batches on the host, the explanation compiled per batch shape."""

    def __init__(self, explainer, dataset, *, targets, batch_size, upsample, normalize, fingerprints,
                 images, distribution=None, features=False):
        self.explainer, self.distribution = explainer, distribution
        self.upsample, self.normalize, self.features = bool(upsample), bool(normalize), bool(features)
        self.keep_images, self.fingerprints = images, fingerprints
        layout = explainer.graph.inputs
        elements, count = _host_source(dataset)
        labels_of = explainer if isinstance(targets, str) and targets == "labels" else None
        x, y, single = _first_element(elements, layout, labels_of)
        self.use_labels = labels_of is not None and y is not None
        if self.use_labels and (y.ndim - (0 if single else 1)) not in (0, 1):
            raise ValueError(
                f"Labels must be {_label_forms(None)}; the dataset's labels have shape {tuple(y.shape)}"
                f"{' per example' if single else ''}. Pass `targets=` explicitly instead."
            )
        self.target_fn = targets if callable(targets) else None
        self.targets_kind = _targets_kind(targets, self.use_labels)
        batches = self._batches(itertools.chain([(x, y)], (_split_element(e, i, labels_of) for i, e in
                                                           enumerate(elements, 1))), single, batch_size)
        self.steps = None if count is None else (-(-count // batch_size) if single else count)
        self.replicas = 1
        if distribution is not None:
            layout_ = distribution.get_data_layout((2,) + tuple(x.shape[1 if not single else 0:]))
            axis = layout_.axes[0]
            mesh = distribution.device_mesh
            self.replicas = int(mesh.shape[mesh.axis_names.index(axis)]) if axis is not None else 1

        # The first batch with images: the checks and the automatic choices (one probe run).
        peeked = []
        for batch in batches:
            peeked.append(batch)
            if len(batch[0]):
                break
        if not any(len(b[0]) for b in peeked):
            raise ValueError("`dataset` is empty (its batches hold no images); there is nothing to explain.")
        sample = peeked[-1][0]
        check_images(sample, explainer.model, 0, explainer.graph.data_format == "channels_first")
        self.shape = sample.shape[1:]
        sample = _compat.ops.convert_to_tensor(sample[:1])  # native float32 (_split_element)
        explainer.prepare(sample)
        self.num_classes = None if self.target_fn is not None else _num_classes(explainer, sample)
        if isinstance(self.targets_kind, int):
            _targets.class_indices(self.targets_kind, 1, self.num_classes)  # validates the class
        self.batches = itertools.chain(peeked, batches)
        self._step = _host_step(explainer, self.upsample, self.normalize, self.target_fn, self.features)

    @staticmethod
    def _batches(pairs, single, batch_size):
        """``(images float32, labels or None)`` batches; single examples grouped by ``batch_size``."""
        if not single:
            for x, y in pairs:
                yield x, y
            return
        while True:
            group = list(itertools.islice(pairs, batch_size))
            if not group:
                return
            labels = [y for _, y in group]
            if any(y is None for y in labels) and not all(y is None for y in labels):
                raise ValueError("Some dataset elements have labels and others do not; give every "
                                 "element the same structure.")
            yield (np.stack([x for x, _ in group]),
                   None if labels[0] is None else np.stack(labels))

    def header(self, save, weights=True):
        return _header(self, save, weights)

    def _classes(self, step, n, labels):
        if self.use_labels:
            if labels is None:
                raise ValueError(f"Batch {step} of the dataset has no labels, but the first had; give "
                                 f"every element the same structure.")
            if len(labels) != n:
                raise ValueError(f"Batch {step} of the dataset has {n} images but {len(labels)} labels; "
                                 f"give one label per image.")
            classes, problem = _host_classes(labels, self.num_classes, self.explainer)
            if problem is not None:
                raise _batch_error(step, problem, self.explainer)
            return classes
        fill = self.targets_kind if isinstance(self.targets_kind, int) else _targets.TOP1
        return np.full((n,), fill, np.int32)

    def _place(self, x, classes):
        """The batch as backend tensors, padded and split over the distribution's devices."""
        n = len(x)
        pad = (-n) % self.replicas
        if pad:  # repeat the last row (dropped again below)
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            classes = np.concatenate([classes, np.repeat(classes[-1:], pad)])
        if self.distribution is None:
            return _compat.ops.convert_to_tensor(x), _compat.ops.convert_to_tensor(classes)
        distribute = _compat.keras.distribution.distribute_tensor
        get = self.distribution.get_data_layout
        return distribute(x, get(x.shape)), distribute(classes, get(classes.shape))

    def run(self, verbose, skip=None):
        """Yield ``(step, (ids, marks), Explanation, images or None)`` per batch, in order.

        ``skip(step, ids, marks, classes)`` -> True leaves a batch out without computing it.
        """
        bar = _compat.progbar(self.steps) if verbose else None
        offset = 0
        for step, (x, labels) in enumerate(self.batches):
            x = np.asarray(x, np.float32)
            n = len(x)
            if n:
                if x.shape[1:] != self.shape:
                    check_images(x, self.explainer.model, 0, self.explainer.graph.data_format == "channels_first")
                finite = np.isfinite(x).reshape(n, -1).all(axis=1)
                if not finite.all():
                    raise _batch_error(step, "images contain NaN or Inf, so their maps are meaningless")
                classes = self._classes(step, n, labels)
                ids = np.arange(offset, offset + n, dtype=np.int64)
                marks = fingerprints(x) if self.fingerprints else np.zeros(n, np.int64)
                if not (skip is not None and skip(step, ids, marks, classes)):
                    maps, scores, used, probs, *extra = (np.asarray(_compat.to_host(v))[:n] for v in
                                                         self._step(*self._place(x, classes)))
                    if self.target_fn is not None:
                        used = probs = None
                    result = Explanation(maps=maps, targets=used, scores=scores, probabilities=probs,
                                         features=tuple(extra) if extra else None)
                    yield step, (ids, marks), result, (x if self.keep_images else None)
                offset += n
            if bar is not None:
                bar.update(step + 1)


# Compiled steps per explainer, kept while the explainer lives, so explaining
# dataset after dataset with the same settings traces once per batch shape.
_steps = weakref.WeakKeyDictionary()


def _cached(explainer, key, make):
    steps = _steps.setdefault(explainer, {})
    if key not in steps:
        if len(steps) >= 8:  # callables made per call must not pile up traces
            del steps[next(iter(steps))]
        steps[key] = make(weakref.ref(explainer))  # the cache must not keep the explainer alive
    return steps[key]


def _features_option(features):
    """``compute``'s ``features`` argument, passed only when asked for: explainers that compute their
    maps their own way (attributions, black-box, guided) override ``compute`` without it."""
    return {"features": True} if features else {}


def _host_step(explainer, upsample, normalize, target_fn, features=False):
    """``step(images, classes) -> (maps, scores, classes used, probabilities[, pooled, class
    scores])``, compiled on the backend (``tf.function``, ``jax.jit`` with the weights as
    arguments, PyTorch eager); ``features``: see ``Explainer.compute``."""

    def make(owner):
        def step(images, classes):
            explainer = owner()
            return explainer.compute(explainer.graph.to_channels_last(images), classes, upsample, normalize,
                                     target_fn=target_fn, **_features_option(features))

        return Compiled(step, model=explainer.model)

    return _cached(explainer, ("host", upsample, normalize, target_fn, features), make)


# --- tf.data and tf.distribute (the TensorFlow backend) ------------------------------------


def _compiled_step(explainer, strategy, upsample, normalize, target_fn, keep_images, gather, features=False):
    """``step(ids, images, classes)``: every replica explains its share of a
    batch; with ``gather``, the shares of all workers are gathered in the same call.
    Returns ``(ids, maps, scores, used, probs[, pooled, class scores][, images])``."""
    tf = _tf()

    def make(owner):
        def replica_step(ids, images, classes):
            explainer = owner()
            computed = explainer.compute(explainer.graph.to_channels_last(images), classes, upsample, normalize,
                                         target_fn=target_fn, **_features_option(features))
            # Only what is needed crosses the replicas (gathering a 0-element tensor
            # across workers crashes TensorFlow 2.21's collectives).
            return (ids, *computed) + ((images,) if keep_images else ())

        def step(*args):
            values = strategy.run(replica_step, args=args)
            return tuple(strategy.gather(v, axis=0) for v in values) if gather else values

        return tf.function(step)

    return _cached(explainer, (strategy, upsample, normalize, target_fn, keep_images, gather, features), make)


def _first_element(elements, layout, labels_of=None):
    """``(images, labels or None, whether the elements are single examples)`` of the first
    element, checked against the model's input ``layout`` (``labels_of``: see :func:`_split_element`)."""
    first = next(elements, None)
    if first is None:
        raise ValueError("`dataset` is empty; there is nothing to explain.")
    x, y = _split_element(first, 0, labels_of)
    if x.ndim not in (layout.rank + 1, layout.rank + 2):
        raise ValueError(
            f"Dataset elements must be single examples, {layout.name} for this model, or batches "
            f"of them; the dataset yields shape {tuple(x.shape)}."
        )
    return x, y, x.ndim == layout.rank + 1


def _as_tf_dataset(dataset, explainer, batch_size, labels_of=None):
    """Any other source as a ``tf.data.Dataset`` of float32 batches (for a strategy), read once
    (the labels only for ``labels_of``, see :func:`_split_element`)."""
    tf = _tf()
    layout = explainer.graph.inputs
    elements, _ = _host_source(dataset)
    x, y, single = _first_element(elements, layout, labels_of)
    pairs = itertools.chain([(x, y)], (_split_element(e, i, labels_of) for i, e in enumerate(elements, 1)))
    batches = _HostJob._batches(pairs, single, batch_size)
    head = next(batches)
    image_spec = tf.TensorSpec((None, *head[0].shape[1:]), tf.float32)
    spec = image_spec if head[1] is None else (
        image_spec, tf.TensorSpec((None, *head[1].shape[1:]), tf.as_dtype(head[1].dtype)))
    used = []

    def generate():
        if used:
            raise RuntimeError("explain_dataset reads a converted source once.")
        used.append(True)
        for images, labels in itertools.chain([head], batches):
            images = np.asarray(images, np.float32)
            yield images if head[1] is None else (images, labels)

    return tf.data.Dataset.from_generator(generate, output_signature=spec), head


class _Job:
    """One pass over a ``tf.data.Dataset``: the input pipeline and the compiled, distributed step."""

    def __init__(self, explainer, dataset, *, strategy, targets, batch_size, upsample, normalize,
                 fingerprints, images, features=False):
        tf = _tf()
        self.explainer, self.strategy = explainer, strategy
        self.upsample, self.normalize, self.features = bool(upsample), bool(normalize), bool(features)
        self.keep_images, self.fingerprints = images, fingerprints
        first = None
        if not _is_tf_dataset(dataset):
            labels_of = explainer if isinstance(targets, str) and targets == "labels" else None
            dataset, (first, _) = _as_tf_dataset(dataset, explainer, batch_size, labels_of)
        spec = dataset.element_spec
        image_spec = _image_spec(spec, explainer.graph.inputs)
        if image_spec.shape.rank == explainer.graph.inputs.rank + 1:  # single examples
            dataset = dataset.batch(batch_size)
            spec = dataset.element_spec
        use_labels = isinstance(targets, str) and targets == "labels" and _has_labels(spec)
        if use_labels:
            _label_spec(spec, explainer, None)
        self.target_fn = targets if callable(targets) else None
        self.targets_kind = _targets_kind(targets, use_labels)
        self.steps = int(dataset.cardinality())
        self.replicas = replicas = strategy.num_replicas_in_sync

        if first is None:
            first = next(iter(dataset.take(1)), None)
            if first is None:
                raise ValueError("`dataset` is empty; there is nothing to explain.")
            first = first[0] if _has_labels(spec) else first
        first = tf.cast(first, tf.float32)
        check_images(first, explainer.model, 0, explainer.graph.data_format == "channels_first")  # shape and channels; finiteness is checked per batch below
        sample = first[:1]
        explainer.prepare(sample)
        num_classes = None
        if self.target_fn is None:
            num_classes = _num_classes(explainer, sample)
        if use_labels:
            _label_spec(spec, explainer, num_classes)  # rows as wide as the explained output's classes
        if isinstance(self.targets_kind, int):
            _targets.class_indices(self.targets_kind, 1, num_classes)  # validates the class

        def element(offset, el):
            x = el[0] if _has_labels(spec) else el
            n = tf.shape(x, out_type=tf.int64)[0]
            ids = offset + tf.range(n, dtype=tf.int64)
            if use_labels:
                classes = _labels_to_classes(el[1], num_classes)
            else:
                fill = self.targets_kind if isinstance(self.targets_kind, int) else _targets.TOP1
                classes = tf.fill([n], tf.constant(fill, tf.int32))
            x = tf.cast(x, tf.float32)
            tf.debugging.assert_all_finite(x, "keras-cam: images contain NaN or Inf, so their maps are meaningless")
            return offset + n, (ids, x, classes)

        self.dataset = dataset.scan(tf.constant(0, tf.int64), element).prefetch(tf.data.AUTOTUNE)
        try:
            self.local = len(strategy.extended.worker_devices) == strategy.num_replicas_in_sync
        except RuntimeError:  # the default strategy has no device list: one local replica
            self.local = True
        self._step = _compiled_step(explainer, strategy, self.upsample, self.normalize, self.target_fn,
                                    self.keep_images, gather=not self.local, features=self.features)

    def header(self, save, weights=True):
        return _header(self, save, weights)

    def _split(self, element):
        """A padded batch as per-replica values: replica ``r`` gets the ``r``-th
        of ``R`` equal, contiguous slices (never an empty one)."""
        rows = int(element[0].shape[0]) // self.replicas

        def share(context):
            start = context.replica_id_in_sync_group * rows
            return tuple(t[start:start + rows] for t in element)

        return self.strategy.experimental_distribute_values_from_function(share)

    def _gather(self, values):
        """Per-replica values as numpy arrays concatenated in replica order."""
        if self.local:  # every replica is on this machine: read them where they are
            return [np.concatenate([np.asarray(p) for p in self.strategy.experimental_local_results(v)])
                    for v in values]
        return [np.asarray(v) for v in values]  # gathered across workers by the step itself

    def _agreed(self, decision):
        """``decision`` as every worker of a multi-worker strategy takes it: true
        when it is true on any worker (only the chief's writer skips shards), so
        that all workers run the same steps and their collectives match."""
        if self.local:
            return decision
        tf = _tf()
        flags = self.strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant([1 if decision else 0], tf.int32))
        return int(self.strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None).numpy()[0]) > 0

    def run(self, verbose, skip=None):
        """Yield ``(step, (ids, marks), Explanation, images or None)`` per batch, in order.

        ``skip(step, ids, marks, classes)`` -> True leaves a batch out without computing it.
        A batch with no images (a batched dataset may yield one) is left out too.
        """
        tf = _tf()
        bar = _compat.progbar(self.steps if self.steps >= 0 else None) if verbose else None
        iterator = iter(self.dataset)
        step = 0
        while True:
            try:
                ids, x, classes = next(iterator)
            except StopIteration:
                break
            except tf.errors.InvalidArgumentError as err:
                if "keras-cam:" in str(err):
                    message = str(err).split("keras-cam:", 1)[1].split("\n")[0].strip()
                    raise _batch_error(step, message, self.explainer) from None
                raise
            n = int(x.shape[0])
            if n:
                marks = fingerprints(x.numpy()) if self.fingerprints else np.zeros(n, np.int64)
                if not (skip is not None and self._agreed(skip(step, ids.numpy(), marks, classes.numpy()))):
                    element = _pad_rows((ids, x, classes), n, self.replicas)
                    gathered = self._gather(self._step(*self._split(element)))
                    ids_, maps, scores, used, probs, *rest = (v[gathered[0] >= 0] for v in gathered)
                    extra, kept = (rest[:2], rest[2:]) if self.features else ([], rest)
                    order = np.argsort(ids_, kind="stable")
                    if self.target_fn is not None:
                        used = probs = None
                    else:
                        used, probs = used[order], probs[order]
                    result = Explanation(maps=maps[order], targets=used, scores=scores[order], probabilities=probs,
                                         features=tuple(v[order] for v in extra) if extra else None)
                    yield step, (ids_[order], marks), result, (kept[0][order] if kept else None)
            step += 1
            if bar is not None:
                bar.update(step)


def _pad_rows(tensors, n, replicas):
    """Tensors of ``n >= 1`` rows padded to a multiple of ``replicas`` rows by
    repeating the last row; the first tensor, the images' indices, is padded
    with -1 so that the padding can be dropped."""
    pad = (-n) % replicas
    if not pad:
        return tensors
    tf = _tf()
    ids, *others = tensors
    return (tf.concat([ids, tf.fill([pad], tf.constant(-1, tf.int64))], 0),
            *(tf.concat([t, tf.repeat(t[-1:], pad, axis=0)], 0) for t in others))


def _hex(marks):
    """Input fingerprints (int64) as 16-digit hex strings."""
    return [format(int(m) & 0xFFFFFFFFFFFFFFFF, "016x") for m in marks]


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _npy_bytes(array):
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def weights_fingerprint(model):
    """A SHA-256 of the model's weights: the dtype, shape and bytes of every variable, in order.

    Two models with the same weights (the same numbers, in the same order) have
    the same fingerprint, whatever their variables are named; retraining, or
    loading other weights, changes it. It reads every variable once
    (MobileNetV2's 14 MB: about 0.1 s on a busy 2-core CPU, once per
    ``explain_dataset`` call).

    Args:
        model: a Keras model (its ``weights``), or a loaded SavedModel model
            (the ``variables`` of the object it was loaded from).

    Returns:
        ``"sha256:<64 hex digits>"``, or None for a model whose weights cannot
        be read (a frozen graph function that keeps them as constants).
    """
    variables = None
    for owner in (model, getattr(model, "source", None)):
        for attr in ("weights", "variables"):
            found = getattr(owner, attr, None) if owner is not None else None
            if isinstance(found, (list, tuple)) and found:
                variables = found
                break
        if variables is not None:
            break
    if variables is None:
        return None
    digest = hashlib.sha256()
    for v in variables:
        value = np.ascontiguousarray(_compat.variable_value(v))
        digest.update(f"{value.dtype.str}{list(value.shape)};".encode("ascii"))
        digest.update(value.reshape(-1).view(np.uint8))  # the bytes, without a copy
    return "sha256:" + digest.hexdigest()


# --- index.jsonl --------------------------------------------------------------------------
#
# One JSON object per line: the header (the settings), then one record per
# finished shard. From version 2 on, every line ends with a check field,
# ``..., "check": "<16 hex digits>"}``: the first 64 bits of the SHA-256 of the
# line's JSON without that field (the exact bytes before it, closed by "}").
# A line torn by a crash fails its check (or does not parse) and is ignored;
# its shard is then missing from the index and is recomputed by a rerun, which
# first writes the index again without the bad line (atomically), so that a
# record is never appended to a torn one.

_CHECK = ', "check": "'


def _check_of(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _index_line(record):
    """``record`` as one checked index line (with its newline)."""
    text = json.dumps(record)
    return f'{text[:-1]}{_CHECK}{_check_of(text)}"}}\n'


def _parse_line(line, checked):
    """The record of one index line, or None when it is torn or damaged."""
    if checked:
        cut = line.rfind(_CHECK)
        if cut < 0 or not line.endswith('"}'):
            return None
        text, check = line[:cut] + "}", line[cut + len(_CHECK):-2]
        if _check_of(text) != check:
            return None
        line = text
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _scan_index(data):
    """``(records, ignored)`` of an index's bytes: the intact records in file
    order (the header first), and how many non-empty lines were torn or damaged."""
    lines = data.decode("utf-8", errors="replace").split("\n")
    first = _parse_line(lines[0], checked=False)
    version = first.get("version", 1) if first else _VERSION
    checked = not (isinstance(version, int) and version < 2)
    records, ignored = [], 0
    for line in lines:
        if line.strip():
            record = _parse_line(line, checked)
            if record is None:
                ignored += 1
            else:
                records.append(record)
    return records, ignored


def _load_index(path):
    """``(header, {shard: latest record}, records, ignored, clean)`` of an ``index.jsonl``.

    ``records``: every intact line's record, in order; ``ignored``: the number
    of torn or damaged lines; ``clean``: no such line, and the file ends with
    a newline (so that a record can be appended as it is).
    """
    with open(path, "rb") as f:
        data = f.read()
    records, ignored = _scan_index(data)
    if not records or records[0].get("format") != _FORMAT:
        raise ValueError(
            f"{path} is not a keras-cam index; pass an empty folder or one written by "
            f"explain_dataset."
        )
    entries = {r["shard"]: r for r in records[1:] if isinstance(r.get("shard"), int)}
    return records[0], entries, records, ignored, ignored == 0 and data.endswith(b"\n")


def _detail(key, there, now):
    if key == "weights":
        if there is None:
            return "weights: no fingerprint there (an index of an older keras-cam)"
        return f"weights: {str(there)[:19]}... there, {str(now)[:19]}... now (the model was retrained or reloaded)"
    if key == "version":
        return (f"index version {there!r} there (an older keras-cam, whose index does not record every "
                f"setting that changes the maps), {now!r} now")
    return f"{key}: {there!r} there, {now!r} now"


_UNSET = "(not set)"


class _Writer:
    """Shards and ``index.jsonl`` in ``out``; decides which shards a rerun can skip.

    While it writes, it holds ``out/index.jsonl.lock`` (:class:`keras_cam.files.LockFile`),
    so that a second process writing the same folder is refused.
    """

    def __init__(self, out, header, save, active=True, overwrite=False):
        self.out, self.header, self.save, self.active = os.fspath(out), header, save, active
        self.index = os.path.join(self.out, INDEX)
        self.entries, self.replaced, self.lock = {}, set(), None
        if not active:
            return
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ValueError(f"`out={self.out!r}` is a file; pass a folder for the maps.")
        os.makedirs(self.out, exist_ok=True)
        self.lock = LockFile(os.path.join(self.out, LOCK), f"`out={self.out!r}`")
        try:
            self._open(overwrite)
        except BaseException:
            self.close()
            raise

    def _open(self, overwrite):
        if not os.path.exists(self.index) or os.path.getsize(self.index) == 0:
            write_atomic(self.index, _index_line(self.header).encode("utf-8"))
            return
        old, entries, records, _, clean = _load_index(self.index)
        if overwrite:  # start a new index; files of the old one not rewritten go at the end
            self.replaced = {name for entry in entries.values() for name in entry.get("files", [])}
            write_atomic(self.index, _index_line(self.header).encode("utf-8"))
            return
        changed = {k: (old.get(k), v) for k, v in self.header.items() if k != "settings" and old.get(k) != v}
        if "version" not in changed:  # the explainer's settings, one by one (an older index has none)
            there, now = old.get("settings"), self.header["settings"]
            there = there if isinstance(there, dict) else {}
            changed.update((k, (there.get(k, _UNSET), now.get(k, _UNSET))) for k in sorted(set(there) | set(now))
                           if there.get(k, _UNSET) != now.get(k, _UNSET))
        if changed:
            detail = "; ".join(_detail(k, a, b) for k, (a, b) in changed.items())
            raise ValueError(
                f"{self.out} holds maps computed with other settings ({detail}), not the maps this call "
                f"would compute. Pass overwrite=True to recompute them in this folder, or choose a new folder."
            )
        self.entries = entries
        if not clean:  # a torn or damaged line: the index again without it (their shards get recomputed)
            write_atomic(self.index, "".join(_index_line(r) for r in records).encode("utf-8"))

    def close(self):
        """Release the folder's lock."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _files(self, step, ids):
        if self.save == "npy":
            return [f"maps_{step:06d}.npy"]
        return [f"overlay_{int(i):07d}.png" for i in ids]

    def unchanged(self, step, ids, marks, classes=None):
        """True when shard ``step`` is on disk, intact, and made from these very images (and, with
        ``targets='labels'``, for these very labels: ``classes``)."""
        entry = self.entries.get(step)
        if entry is None:
            return False
        if entry.get("ids") != [int(i) for i in ids] or entry.get("inputs") != _hex(marks):
            return False
        # Labels are data, like the images: a shard whose labels changed (a relabelled image, a
        # resumed job after a label fix) is recomputed, as one whose images changed, and the others
        # are kept. The header's settings, which change every shard's maps, are refused instead.
        if self.header.get("targets") == "labels" and classes is not None \
                and entry.get("targets") != [int(c) for c in classes]:
            return False
        files = entry.get("files", [])
        if files != self._files(step, ids):
            return False
        for name, digest in zip(files, entry.get("sha256", [])):
            path = os.path.join(self.out, name)
            if not os.path.isfile(path) or _sha256(path) != digest:
                return False
        return len(entry.get("sha256", [])) == len(files)

    def write(self, step, ids, marks, result, images):
        files = self._files(step, ids)
        if self.save == "npy":
            blobs = [_npy_bytes(result.maps.astype(np.float32))]
        else:
            from keras_cam.viz import overlay

            blobs = [png_bytes(overlay(displayable(im), m)) for im, m in zip(images, result.maps)]
        for name, blob in zip(files, blobs):
            write_atomic(os.path.join(self.out, name), blob)
        record = {
            "shard": step, "files": files, "sha256": [hashlib.sha256(b).hexdigest() for b in blobs],
            "ids": [int(i) for i in ids], "inputs": _hex(marks),
            "shape": list(result.maps.shape),
            "targets": None if result.targets is None else [int(t) for t in result.targets],
            "scores": [float(s) for s in result.scores],
            "probabilities": None if result.probabilities is None else [float(p) for p in result.probabilities],
        }
        append_synced(self.index, _index_line(record))
        self.entries[step] = record

    def _remove_replaced(self):
        """Remove the files an overwritten index named that this run did not write again."""
        kept = {name for entry in self.entries.values() for name in entry.get("files", [])}
        for name in sorted(self.replaced - kept):
            if re.fullmatch(r"maps_\d{6}\.npy|overlay_\d{7}\.png", name):  # only names this writer makes
                path = os.path.join(self.out, name)
                if os.path.isfile(path):
                    os.remove(path)

    def consume(self, job, verbose):
        counts = {"images": 0, "shards": 0, "written": 0, "skipped": 0}

        def skip(step, ids, marks, classes=None):
            if self.active and self.unchanged(step, ids, marks, classes):
                counts["skipped"] += 1
                counts["images"] += len(ids)
                counts["shards"] += 1
                return True
            return False

        try:
            for step, (ids, marks), result, images in job.run(verbose, skip=skip):
                if self.active:
                    self.write(step, ids, marks, result, images)
                    counts["written"] += 1
                counts["shards"] += 1
                counts["images"] += len(ids)
            if self.active:
                self._remove_replaced()
        finally:
            self.close()
        return {"out": self.out, "index": self.index, **counts, "replicas": job.replicas}


def read_index(out):
    """The shards recorded in ``out/index.jsonl``, in dataset order.

    A line torn by an interrupted write (it fails its check) is left out, with
    a warning: its shard is recomputed by rerunning ``explain_dataset`` with
    the same ``out``.

    Returns:
        ``(header, shards)``: the settings the maps were computed with
        (including ``weights``, the fingerprint of the model's weights), and
        one dict per shard (``files``, ``ids``, ``targets``, ``scores``,
        ``probabilities``, ...), the latest record of each shard.

    Example:
        >>> header, shards = keras_cam.dataset.read_index("maps/")
        >>> maps = np.concatenate([np.load(os.path.join("maps", s["files"][0])) for s in shards])
    """
    path = os.path.join(os.fspath(out), INDEX)
    if not os.path.isfile(path):
        raise ValueError(f"No {INDEX} in {os.fspath(out)!r}; it is not a folder written by explain_dataset.")
    header, entries, _, ignored, _ = _load_index(path)
    if ignored:
        warnings.warn(
            f"{path}: {ignored} torn or damaged line(s) (an interrupted write) were left out; rerun "
            f"explain_dataset with the same out= to recompute their shards.", RuntimeWarning, stacklevel=2)
    return header, [entries[k] for k in sorted(entries)]

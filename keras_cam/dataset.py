"""Maps for a whole ``tf.data.Dataset``, on one device or on a ``tf.distribute`` strategy.

    for batch in keras_cam.explain_dataset(cam, dataset):          # Explanation per batch
        ...
    keras_cam.explain_dataset(cam, dataset, out="maps/",            # .npy shards + index
                              strategy=tf.distribute.MirroredStrategy())

The dataset is read the way ``model.predict`` reads it: elements are
``images`` or ``(images, labels[, sample_weights])``; a dataset of single
images is batched. Every image gets a global index (its position in the
dataset) that travels with it through the strategy, so the maps come back in
dataset order whatever the number of replicas, and the last, partial batch is
explained like the others.

No replica ever gets an empty share (TensorFlow's oneDNN CPU kernels, on by
default, fail on a batch of 0 images). Under a strategy of ``R`` replicas a
batch of ``n`` images is padded to the next multiple of ``R`` (at least
``R``) by repeating its last image; each replica explains one contiguous
slice of ``n_padded / R`` rows; the padding rows carry the index -1 and are
dropped once the replicas' results are gathered. Every worker of a
multi-worker strategy reads the whole dataset (the batches must come in the
same order on every worker) and explains only its replicas' slices; the
results are gathered on every worker, and only the chief writes ``out``.

On disk (``out=``), batch ``b`` becomes ``maps_{b:06d}.npy`` (``(n, H, W)``
float32) or one PNG overlay per image, and ``index.jsonl`` records, one JSON
line per finished shard, which images it holds, a fingerprint of each input
image, the explained class, score and probability, and a SHA-256 of each file.
A rerun with the same settings skips every shard whose files and inputs still
match the index, and recomputes the others. The index's first line records
the settings and a fingerprint of the model's weights
(:func:`weights_fingerprint`): a rerun with other settings or other weights
is refused unless ``overwrite=True``. Every index line carries a check of its
own bytes, so that a line torn by a crash is ignored (and its shard
recomputed), and ``index.jsonl.lock`` keeps a second process from writing
the same folder at the same time (a lock left by a process that died is
taken over).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
import weakref

import numpy as np
import tensorflow as tf

from keras_cam import _compat
from keras_cam import targets as _targets
from keras_cam.base import Explainer, Explanation, check_images
from keras_cam.files import LockFile, append_synced, png_bytes, write_atomic
from keras_cam.viz import displayable  # noqa: F401  (also imported from here by keras_cam.audit)

INDEX = "index.jsonl"
LOCK = "index.jsonl.lock"
_FORMAT = "keras-cam/explain_dataset"
_VERSION = 2  # 2: checked index lines, the weights' fingerprint in the header


def explain_dataset(explainer, dataset, *, targets="labels", strategy=None, batch_size=64,
                    out=None, save="npy", upsample=True, normalize=True, overwrite=False, verbose=1):
    """Explain every image of a ``tf.data.Dataset``.

    Args:
        explainer: an explainer (``keras_cam.GradCAM(model)``, ...).
        dataset: a ``tf.data.Dataset`` of ``images`` or ``(images, labels)``
            (a third element, sample weights, is ignored). Batched elements
            ``(n, H, W, C)`` are explained batch by batch; single images
            ``(H, W, C)`` are first batched by ``batch_size``.
        targets: ``"labels"`` (the default): each image's label where the
            dataset has labels (integer classes, or one-hot / probability
            rows, read by argmax), its top-1 class otherwise; ``None``: the
            top-1 class; an int: that class for every image; or a callable
            ``f(outputs) -> (n,)`` (see :mod:`keras_cam.targets`).
        strategy: a ``tf.distribute.Strategy`` (``MirroredStrategy``,
            ``MultiWorkerMirroredStrategy``, ...); every replica explains its
            share of each batch (``strategy.run``; a batch smaller than the
            number of replicas is padded, see the module docstring) and the
            maps are gathered in dataset order. None uses the strategy in scope (the default,
            single-device one outside any ``strategy.scope()``). Build the
            model inside ``strategy.scope()`` so each replica reads its own
            copy of the weights.
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

    Returns:
        Without ``out``: an iterator of :class:`~keras_cam.Explanation`, one per
        batch, in dataset order (``targets``, ``probabilities`` are None for a
        callable target). With ``out``: a dict summarizing the run:
        ``{"out", "index", "images", "shards", "written", "skipped"}``.

    Raises:
        TypeError / ValueError: for a wrong explainer, dataset, element
            structure, target or option (raised by this call, before any
            work); ValueError for labels that are not classes of the model
            (when the batch that holds them is read). With ``out``: ValueError
            when the folder holds maps of other settings or other weights
            (pass ``overwrite=True`` or a new folder), or when another process
            is writing it (its lock file ``index.jsonl.lock`` names the pid).

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
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            f"`dataset` must be a tf.data.Dataset; received {type(dataset).__name__}. For arrays, "
            f"call the explainer directly, or wrap them: tf.data.Dataset.from_tensor_slices(images)."
        )
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
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    elif not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(f"`strategy` must be a tf.distribute.Strategy or None; received {type(strategy).__name__}.")

    job = _Job(explainer, dataset, targets, strategy, int(batch_size), upsample, normalize,
               fingerprints=out is not None, images=save == "png" and out is not None)
    if out is None:
        return (result for _, _, result, _ in job.run(verbose))
    active = strategy.extended.should_checkpoint
    writer = _Writer(out, job.header(save, weights=active), save, active=active, overwrite=overwrite)
    return writer.consume(job, verbose)


def _has_labels(spec):
    return isinstance(spec, (tuple, list)) and len(spec) in (2, 3)


def _image_spec(spec, layout):
    """The images' TensorSpec of an element spec, checked against the model's
    :class:`~keras_cam.layout.InputLayout`, or a clear error."""
    images = spec[0] if _has_labels(spec) else spec
    if not isinstance(images, tf.TensorSpec):
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


def _label_spec(spec):
    labels = spec[1]
    if not isinstance(labels, tf.TensorSpec):
        raise TypeError(
            f"`targets='labels'` needs one label tensor per batch; the dataset's labels are "
            f"{labels}. Pass `targets=` explicitly (None for top-1, an int or a callable)."
        )
    rank = labels.shape.rank
    if rank not in (1, 2) or not (labels.dtype.is_integer or labels.dtype.is_floating):
        raise ValueError(
            f"Labels must be class indices (n,) or (n, 1), or one-hot / probability rows "
            f"(n, classes); the dataset's labels are {labels}. Pass `targets=` explicitly instead."
        )
    return labels


def _labels_to_classes(labels, num_classes):
    """Labels ``(n,)``, ``(n, 1)`` or ``(n, C)`` as int32 class indices, checked in range."""
    if labels.shape.rank == 2 and labels.shape[-1] != 1:
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


# Compiled steps per explainer, kept while the explainer lives, so explaining
# dataset after dataset with the same settings traces once per batch shape.
_steps = weakref.WeakKeyDictionary()


def _compiled_step(explainer, strategy, upsample, normalize, target_fn, keep_images, gather):
    """``step(ids, images, classes, marks)``: every replica explains its share of a
    batch; with ``gather``, the shares of all workers are gathered in the same call."""
    key = (strategy, upsample, normalize, target_fn, keep_images, gather)
    steps = _steps.setdefault(explainer, {})
    if key not in steps:
        if len(steps) >= 8:  # callables made per call must not pile up traces
            del steps[next(iter(steps))]

        owner = weakref.ref(explainer)  # the cache must not keep the explainer alive

        def replica_step(ids, images, classes, marks):
            explainer = owner()
            maps, scores, used, probs = explainer.compute(
                explainer.graph.to_channels_last(images), classes, upsample, normalize, target_fn=target_fn)
            # Only what is needed crosses the replicas (gathering a 0-element tensor
            # across workers crashes TensorFlow 2.21's collectives).
            return (ids, marks, maps, scores, used, probs) + ((images,) if keep_images else ())

        def step(*args):
            values = strategy.run(replica_step, args=args)
            return tuple(strategy.gather(v, axis=0) for v in values) if gather else values

        steps[key] = tf.function(step)
    return steps[key]


class _Job:
    """One pass over the dataset: the input pipeline and the compiled, distributed step."""

    def __init__(self, explainer, dataset, targets, strategy, batch_size, upsample, normalize,
                 fingerprints, images):
        if explainer.graph.multi_input:
            raise ValueError(
                f"explain_dataset explains single-input models; model {explainer.model.name!r} has "
                f"the inputs {explainer.graph.input_names}. Explain its batches with the explainer "
                f"itself: `explainer([images, other, ...])`."
            )
        self.explainer, self.strategy = explainer, strategy
        self.upsample, self.normalize = bool(upsample), bool(normalize)
        self.keep_images = images
        spec = dataset.element_spec
        image_spec = _image_spec(spec, explainer.graph.inputs)
        if image_spec.shape.rank == explainer.graph.inputs.rank + 1:  # single examples
            dataset = dataset.batch(batch_size)
            spec = dataset.element_spec
        use_labels = isinstance(targets, str) and targets == "labels" and _has_labels(spec)
        if use_labels:
            _label_spec(spec)
        self.target_fn = targets if callable(targets) else None
        self.targets_kind = _targets_kind(targets, use_labels)
        self.steps = int(dataset.cardinality())
        self.replicas = replicas = strategy.num_replicas_in_sync

        first = next(iter(dataset.take(1)), None)
        if first is None:
            raise ValueError("`dataset` is empty; there is nothing to explain.")
        first = tf.cast(first[0] if _has_labels(spec) else first, tf.float32)
        check_images(first, explainer.model, 0, explainer.graph.data_format == "channels_first")  # shape and channels; finiteness is checked per batch below
        sample = first[:1]
        explainer.prepare(sample)
        num_classes = None
        if self.target_fn is None:
            num_classes = self._num_classes(sample)
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
            marks = tf.bitcast(tf.fingerprint(x), tf.int64) if fingerprints else tf.zeros([n], tf.int64)
            return offset + n, _pad_rows((ids, x, classes, marks), n, replicas)

        self.dataset = dataset.scan(tf.constant(0, tf.int64), element).prefetch(tf.data.AUTOTUNE)
        try:
            self.local = len(strategy.extended.worker_devices) == strategy.num_replicas_in_sync
        except RuntimeError:  # the default strategy has no device list: one local replica
            self.local = True
        self._step = _compiled_step(explainer, strategy, self.upsample, self.normalize, self.target_fn,
                                    self.keep_images, gather=not self.local)

    def _num_classes(self, sample):
        graph = self.explainer.graph
        if graph.num_classes is not None:
            return graph.num_classes
        return int(graph.scores(graph.model(sample, training=False)).shape[-1])

    def header(self, save, weights=True):
        """The settings an index records; ``weights``: include the weights' fingerprint (computed here, once)."""
        return {
            "format": _FORMAT, "version": _VERSION, "save": save,
            "method": type(self.explainer).__name__, "model": self.explainer.model.name,
            "layers": [str(p) for p in self.explainer.layer_paths],
            "targets": self.targets_kind, "upsample": self.upsample, "normalize": self.normalize,
            "weights": weights_fingerprint(self.explainer.model) if weights else None,
        }

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
        flags = self.strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant([1 if decision else 0], tf.int32))
        return int(self.strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None).numpy()[0]) > 0

    def run(self, verbose, skip=None):
        """Yield ``(step, ids, Explanation, images or None)`` per batch, in order.

        ``skip(step, ids, marks)`` -> True leaves a batch out without computing it.
        A batch with no images (a batched dataset may yield one) is left out too.
        """
        bar = _compat.progbar(self.steps if self.steps >= 0 else None) if verbose else None
        iterator = iter(self.dataset)
        step = 0
        while True:
            try:
                element = next(iterator)
            except StopIteration:
                break
            except tf.errors.InvalidArgumentError as err:
                if "keras-cam:" in str(err):
                    message = str(err).split("keras-cam:", 1)[1].split("\n")[0].strip()
                    hint = ("Clean or drop those images." if "NaN" in message else
                            "Fix the labels, or pass `targets=` explicitly (None explains each "
                            "image's top-1 class).")
                    raise ValueError(f"Batch {step} of the dataset: {message}. {hint}") from None
                raise
            real = element[0].numpy() >= 0  # False on the padding rows
            if real.any() and not (skip is not None and self._agreed(
                    skip(step, element[0].numpy()[real], element[3].numpy()[real]))):
                gathered = self._gather(self._step(*self._split(element)))
                ids, marks, maps, scores, used, probs, *kept = (v[gathered[0] >= 0] for v in gathered)
                order = np.argsort(ids, kind="stable")
                if self.target_fn is not None:
                    used = probs = None
                else:
                    used, probs = used[order], probs[order]
                result = Explanation(maps=maps[order], targets=used, scores=scores[order], probabilities=probs)
                yield step, (ids[order], marks[order]), result, (kept[0][order] if kept else None)
            step += 1
            if bar is not None:
                bar.update(step)


def _pad_rows(tensors, n, replicas):
    """Tensors of ``n`` rows padded to a multiple of ``replicas`` rows (at least
    ``replicas``, unless ``n`` is 0) by repeating the last row; the first tensor,
    the images' indices, is padded with -1 so that the padding can be dropped."""
    if replicas == 1:
        return tensors
    pad = tf.where(n > 0, (-n) % replicas, tf.constant(0, tf.int64))
    last = tf.fill([pad], tf.maximum(n - 1, 0))
    ids, *others = tensors
    return (tf.concat([ids, tf.fill([pad], tf.constant(-1, tf.int64))], 0),
            *(tf.concat([t, tf.gather(t, last)], 0) for t in others))


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
        value = np.ascontiguousarray(v.numpy() if hasattr(v, "numpy") else np.asarray(v))
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
        return f"index version {there!r} there (an older keras-cam), {now!r} now"
    return f"{key}: {there!r} there, {now!r} now"


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
        changed = {k: (old.get(k), v) for k, v in self.header.items() if old.get(k) != v}
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

    def unchanged(self, step, ids, marks):
        """True when shard ``step`` is on disk, intact, and made from these very images."""
        entry = self.entries.get(step)
        if entry is None:
            return False
        if entry.get("ids") != [int(i) for i in ids] or entry.get("inputs") != _hex(marks):
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

        def skip(step, ids, marks):
            if self.active and self.unchanged(step, ids, marks):
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
        return {"out": self.out, "index": self.index, **counts}


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

"""The ``keras-cam`` command.

    keras-cam demo [--out DIR]
    keras-cam explain IMAGE... --model PATH [--method NAME] [--layer NAME] [--target N] [--out DIR]
    keras-cam layers --model PATH
    keras-cam audit IMAGES_DIR --model PATH [--labels CSV] [--method NAME] [--boxes CSV] [--verify] [--out DIR]
    keras-cam evaluate IMAGE... --model PATH [--method NAME] [--metrics A,B] [--boxes CSV] [--per-image CSV]

``demo`` runs six methods on the built-in model and generated images (no
argument, no network). ``explain`` writes one overlay PNG per image and
method and a ``predictions.json``. ``layers`` lists the layers ``--layer``
accepts. ``audit`` clusters the maps of a folder of images per class and
writes a self-contained ``report.html`` and ``clusters.json``
(:func:`keras_cam.audit`). Problems with the input (a missing file, an unreadable image, a
wrong channel count, an unknown layer, a model that needs code to load) end
with one line on stderr starting ``keras-cam: error:`` and exit status 1;
``--traceback`` shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings

import numpy as np

from keras_cam import files as _files
from keras_cam.files import (  # noqa: F401  (CliError, holds_lambda, write_atomic: part of this module's API)
    CliError, check_free, holds_lambda, write_atomic, write_png)

EXIT_ERROR = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# ImageNet statistics of `keras.applications` preprocessing (RGB order).
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)

PREPROCESS_HELP = {
    "none": "RGB values 0-255 as float32 (models that preprocess inside, e.g. keras.applications EfficientNet)",
    "scale": "x / 255, in [0, 1] (the demo model)",
    "tf": "x / 127.5 - 1, in [-1, 1] (MobileNet, Inception, Xception, ...)",
    "torch": "(x / 255 - ImageNet mean) / std, per RGB channel (DenseNet, ...)",
    "caffe": "RGB -> BGR, minus ImageNet BGR mean (VGG, ResNet50)",
}


# --- quiet start-up and progress -----------------------------------------------------------


def _pre_init_line(line):
    """A line TensorFlow's logging prints while it is imported, before its log
    level is read: the absl notice and informational (``I``) records."""
    return line.startswith("WARNING: All log messages before absl::InitializeLog()") or (
        line[:1] == "I" and line[1:5].isdigit())


def backend_from_environment():
    """The Keras backend a command runs on, read without importing Keras (which would load it).

    Keras's own rule: legacy tf-keras (``TF_USE_LEGACY_KERAS=1``) is
    TensorFlow; else ``KERAS_BACKEND``; else the ``"backend"`` of Keras's
    config file (``$KERAS_HOME/keras.json``, by default ``~/.keras/keras.json``);
    else ``"tensorflow"``. A Keras already imported answers for itself.
    """
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(getattr(keras, "backend", None), "backend"):
        return keras.backend.backend()
    if os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes"):
        return "tensorflow"
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return "tensorflow"
    backend = config.get("backend") if isinstance(config, dict) else None
    return backend if isinstance(backend, str) and backend else "tensorflow"


def import_tensorflow_quietly():
    """Import TensorFlow without its start-up banner, unless the user asked for logs.

    When ``TF_CPP_MIN_LOG_LEVEL`` is not set, it is set to 2 (warnings and
    errors only) for this process before TensorFlow is imported; TensorFlow
    2.21 still prints its oneDNN notice while it loads (before it reads the
    level), so the import's stderr is captured and written back without those
    informational lines. A ``TF_CPP_MIN_LOG_LEVEL`` set by the user is left
    alone, and so is the output. Called by the commands, never on import.
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import tensorflow  # noqa: F401
        return
    import tempfile

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(True)
                    if not _pre_init_line(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


class _Progress:
    """Progress of a command over ``total`` items: a bar on a terminal, one plain
    line at the start when stdout is a pipe or a file, nothing when ``quiet``."""

    def __init__(self, total, what, quiet=False):
        self.bar = None
        if quiet or total < 2:
            return
        if sys.stdout.isatty():
            from keras_cam._compat import progbar

            self.bar = progbar(total)
        else:
            print(f"{what} ({total})", flush=True)

    def update(self, done):
        if self.bar is not None:
            self.bar.update(done)


# --- reading and writing files -------------------------------------------------------------


def load_model(path, unsafe=False, custom_objects_file=None):
    """:func:`keras_cam.files.load_model`, with the TensorFlow-only check first: a SavedModel
    folder is a TensorFlow graph, so on JAX or PyTorch it is refused before TensorFlow loads."""
    if os.path.isdir(os.fspath(path)):
        backend = backend_from_environment()
        if backend != "tensorflow":
            raise CliError(
                f"model {os.fspath(path)} is a SavedModel folder, which only the TensorFlow backend "
                f"can explain; Keras runs on {backend!r} here. Run with KERAS_BACKEND=tensorflow, or "
                f"pass a .keras file (model.save('model.keras'))")
    return _files.load_model(path, unsafe, custom_objects_file)



def preprocess(images, mode):
    """Apply a named preprocessing to RGB images with values 0-255.

    Args:
        images: float array ``(..., H, W, C)`` of RGB values in [0, 255].
        mode: one of :data:`PREPROCESS_HELP`: ``none``, ``scale``, ``tf``,
            ``torch``, ``caffe`` (the ``keras.applications`` modes).

    Returns:
        A float32 array of the same shape.
    """
    x = np.asarray(images, np.float32)
    if mode == "none":
        return x
    if mode == "scale":
        return x / 255.0
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode in ("torch", "caffe") and x.shape[-1] != 3:
        raise CliError(f"--preprocess {mode} uses ImageNet statistics of RGB images; the images have {x.shape[-1]} channel(s).")
    if mode == "torch":
        return (x / 255.0 - _TORCH_MEAN) / _TORCH_STD
    if mode == "caffe":
        return x[..., ::-1] - _CAFFE_MEAN_BGR
    raise CliError(f"Unknown --preprocess {mode!r}; choose one of {', '.join(PREPROCESS_HELP)}.")


def read_image(path):
    """An image file as float32 RGB(A) or gray ``(H, W, C)`` with values 0-255 (OpenCV)."""
    import cv2

    if not os.path.isfile(path):
        raise CliError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise CliError(f"cannot read image {path}: not an image format OpenCV can decode")
    if image.dtype == np.uint16:
        image = image.astype(np.float32) / 257.0
    elif image.dtype != np.uint8:
        raise CliError(f"cannot read image {path}: unsupported pixel type {image.dtype} (use 8- or 16-bit images)")
    if image.ndim == 2:
        image = image[..., None]
    elif image.shape[-1] == 3:
        image = image[..., ::-1]                         # BGR -> RGB
    elif image.shape[-1] == 4:
        image = image[..., [2, 1, 0, 3]]                 # BGRA -> RGBA
    return np.ascontiguousarray(image, dtype=np.float32)


def fit_channels(image, channels, path):
    """Match an image's channels to the model's: RGBA loses its alpha for a 3-channel model."""
    have = image.shape[-1]
    if channels is None or have == channels:
        return image
    if have == 4 and channels == 3:
        return image[..., :3]
    kinds = {1: "grayscale", 3: "RGB", 4: "RGBA"}
    raise CliError(
        f"image {path} has {have} channel(s) ({kinds.get(have, 'unusual')}) but the model expects "
        f"{channels}; convert the image (e.g. to {kinds.get(channels, f'{channels} channels')}) first"
    )


def expand_images(items):
    """Image paths from the arguments: files as given, folders as their image files (sorted)."""
    paths = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f) for f in os.listdir(item)
                if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(item, f))
            )
            if not found:
                raise CliError(f"folder {item} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif not os.path.exists(item):
            raise CliError(f"image not found: {item}")
        else:
            paths.append(item)
    return paths


def unique_stems(paths):
    """One output name per image: the file's stem, made unique with ``-2``, ``-3``, ..."""
    stems, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def model_input(model):
    """``(height, width, channels)`` of the model's image input; unknown sizes are None."""
    try:
        shape = tuple(model.inputs[0].shape)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None, None, None
    if len(shape) != 4:
        raise CliError(
            f"model {model.name!r} takes inputs of shape {shape}, not images (N, H, W, C); "
            f"keras-cam explain works on image classifiers"
        )
    return shape[1], shape[2], shape[3]


def read_class_names(path):
    if path is None:
        return None
    if not os.path.isfile(path):
        raise CliError(f"--class-names file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


# --- the subcommands -----------------------------------------------------------------------


def _as_model_input(image, size):
    import cv2

    if size is None or image.shape[:2] == tuple(size):
        return image
    h, w = size
    shrink = h * w < image.shape[0] * image.shape[1]
    out = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out.reshape(h, w, image.shape[-1])


def _parse_size(text):
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CliError(f"--size must look like 224x224 (height x width); received {text!r}") from None
    if h < 1 or w < 1:
        raise CliError(f"--size must be positive; received {text!r}")
    return h, w


def _warn_raw_pixels(batch, model, mode):
    """The CLI's own wording of the library's raw-pixel warning: it names --preprocess."""
    from keras_cam.inputs import has_preprocessing

    if mode == "none" and float(np.max(batch)) > 2.0 and not has_preprocessing(model):
        warnings.warn(
            f"the images are passed as raw 0-255 pixels (--preprocess none) and model "
            f"{model.name!r} has no Rescaling/Normalization layer; if it was trained on scaled "
            f"input, pass --preprocess scale, tf, torch or caffe (`keras-cam explain --help` "
            f"says which models take which)", UserWarning, stacklevel=2)


def _check_target(target, probs):
    classes = probs.shape[-1]
    if target is not None and target >= classes:
        raise CliError(f"--target {target} is out of range: the model has {classes} classes "
                       f"(--target 0 to {classes - 1})")


def cmd_explain(args):
    from keras_cam import methods as registry
    from keras_cam.viz import overlay

    method_names = args.method or ["gradcam"]
    for m in method_names:
        registry.get(m)  # an unknown name fails before any work
    keys = list(dict.fromkeys(registry.canonical(m) for m in method_names))
    if not (0 <= args.alpha <= 1):
        raise CliError(f"--alpha is the heatmap's weight, in [0, 1]; received {args.alpha}")
    for option, value in (("--batch-size", args.batch_size), ("--top", args.top)):
        if value < 1:
            raise CliError(f"{option} must be at least 1; received {value}")
    if args.target is not None and args.target < 0:
        raise CliError(f"--target is a class index >= 0; received {args.target}")
    size = _parse_size(args.size)
    paths = expand_images(args.images)
    stems = unique_stems(paths)
    out = args.out
    overlay_paths = [[os.path.join(out, f"{s}_{k}.png") for k in keys] for s in stems]
    json_path = os.path.join(out, "predictions.json")
    check_free([p for row in overlay_paths for p in row] + [json_path], args.overwrite)
    class_names = read_class_names(args.class_names)
    originals = [read_image(p) for p in paths]

    model = load_model(args.model, args.unsafe, args.custom_objects)
    height, width, channels = model_input(model)
    if height is not None and width is not None:
        if size is not None and size != (height, width):
            raise CliError(f"--size {args.size} differs from the model's fixed input size {height}x{width}")
        size = (height, width)
    originals = [fit_channels(im, channels, p) for im, p in zip(originals, paths)]
    try:
        explainers = [registry.create(k, model, layer=args.layer) for k in keys]
    except ValueError as e:
        hint = " (`keras-cam layers --model PATH` lists the layers)" if args.layer else ""
        raise CliError(f"{' '.join(str(e).split())}{hint}") from e

    # Same-size inputs go through in batches; otherwise one image at a time.
    inputs = [_as_model_input(im, size) for im in originals]
    if args.text:
        return _explain_texts(args, model, explainers, keys, stems, paths, originals, inputs)
    step = args.batch_size if size is not None else 1
    bar = _Progress(len(paths), f"explaining images with {', '.join(keys)}", args.quiet)
    records = []
    for start in range(0, len(paths), step):
        batch = preprocess(np.stack(inputs[start:start + step]), args.preprocess)
        probs = _probabilities(explainers[0], batch)
        _check_target(args.target, probs)
        if start == 0:
            _warn_raw_pixels(batch, model, args.preprocess)
        with warnings.catch_warnings():  # said above in the CLI's terms
            warnings.filterwarnings("ignore", message=".*like raw 0-255 pixels")
            results = [e.explain(batch, targets=args.target) for e in explainers]
        os.makedirs(out, exist_ok=True)
        for i in range(len(batch)):
            n = start + i
            for j, result in enumerate(results):
                write_png(overlay_paths[n][j], overlay(originals[n] / 255.0, result.maps[i], args.alpha, args.colormap))
            records.append(_record(paths[n], overlay_paths[n], keys, results[0], i, probs[i], class_names, args.top))
        bar.update(min(start + step, len(paths)))
    report = {
        "model": args.model,
        "layer": explainers[0].layer_path,
        "methods": keys,
        "preprocess": args.preprocess,
        "target": args.target,
        "images": records,
    }
    write_atomic(json_path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    print(f"wrote {len(paths) * len(keys)} overlay(s) and {json_path}")
    return 0


def _read_prompts(texts, tokenizer_dir):
    """``--text`` values as token-id lists (``1,7,9``) or strings, and the tokenizer for strings."""
    import re

    prompts = [[int(v) for v in t.split(",")] if re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", t) else t for t in texts]
    tokenizer = None
    if any(isinstance(p, str) for p in prompts):
        if tokenizer_dir is None:
            raise CliError(f"--text {next(p for p in prompts if isinstance(p, str))!r} is a string: pass "
                           f"--tokenizer DIR (a KerasHub tokenizer preset folder), or the prompt's token ids "
                           f"as 1,7,9,49")
        import keras_hub
        tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(tokenizer_dir)
    if len({isinstance(p, str) for p in prompts}) > 1:
        raise CliError("--text values mix strings and token ids; give all prompts the same way")
    return prompts, tokenizer


def _explain_texts(args, model, explainers, keys, stems, paths, originals, inputs):
    """``explain --text``: one overlay per image, method and prompt of a CLIP / SigLIP model."""
    from keras_cam import multimodal
    from keras_cam.viz import overlay

    if args.target is not None:
        raise CliError("--target is a class index; with --text the prompts are what is explained")
    prompts, tokenizer = _read_prompts(args.text, args.tokenizer)
    out = args.out
    names = [[[os.path.join(out, f"{s}_{k}_text{j}.png") for j in range(len(prompts))] for k in keys] for s in stems]
    json_path = os.path.join(out, "predictions.json")
    check_free([p for a in names for b in a for p in b] + [json_path], args.overwrite)
    try:
        pairs = multimodal.text_inputs(model, np.zeros((1,) + inputs[0].shape, np.float32), prompts, tokenizer)
    except (ValueError, TypeError) as e:
        raise CliError(" ".join(str(e).split())) from e
    records = []
    bar = _Progress(len(paths), f"explaining images and {len(prompts)} prompt(s) with {', '.join(keys)}", args.quiet)
    for n, image in enumerate(inputs):
        batch = preprocess(image[None], args.preprocess)
        x = {"images": np.repeat(batch.astype(np.float32), len(prompts), axis=0), "token_ids": pairs["token_ids"]}
        results = [e.explain(x, targets=multimodal.TextSimilarity()) for e in explainers]
        os.makedirs(out, exist_ok=True)
        for j, result in enumerate(results):
            for t in range(len(prompts)):
                write_png(names[n][j][t], overlay(originals[n] / 255.0, result.maps[t], args.alpha, args.colormap))
        records.append({"image": paths[n], "texts": [p if isinstance(p, str) else list(p) for p in prompts],
                        "overlays": {k: names[n][j] for j, k in enumerate(keys)},
                        "similarity": [float(v) for v in results[0].scores]})
        bar.update(n + 1)
    report = {"model": args.model, "layer": explainers[0].layer_path, "methods": keys,
              "preprocess": args.preprocess, "images": records}
    write_atomic(json_path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    print(f"wrote {len(paths) * len(keys) * len(prompts)} overlay(s) and {json_path}")
    return 0


def _probabilities(explainer, batch):
    """Class probabilities ``(N, C)``: the model's output activation applied once to its logits."""
    from keras_cam._compat import ops, to_host

    graph = explainer.graph
    outputs = graph.run(graph.to_channels_last(ops.convert_to_tensor(np.asarray(batch, np.float32))))
    return np.asarray(to_host(graph.probabilities(graph.scores(outputs))))


def _name(class_names, k):
    if class_names is not None and 0 <= k < len(class_names):
        return class_names[k]
    return None


def _record(path, overlays, keys, result, i, probs, class_names, top):
    target = int(result.targets[i])
    order = np.argsort(-probs)[:top]
    return {
        "image": path,
        "overlays": dict(zip(keys, overlays)),
        "target": target,
        "target_name": _name(class_names, target),
        "score": float(result.scores[i]),
        "probability": float(probs[target]),
        "top": [{"class": int(k), "name": _name(class_names, int(k)), "probability": float(probs[k])} for k in order],
    }


def read_labels_csv(path, image_paths):
    """The label of each image from a CSV of ``file,label`` rows (a header row is allowed).

    ``file`` is matched against each image's path as given, its path relative to
    the images folder, or its file name; ``label`` is a class index >= 0.
    """
    import csv

    if not os.path.isfile(path):
        raise CliError(f"--labels file not found: {path}")
    table = {}
    with open(path, encoding="utf-8", newline="") as f:
        for number, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise CliError(f"--labels {path} line {number}: expected `file,label`; received {','.join(row)!r}")
            name, value = row[0].strip(), row[1].strip()
            try:
                label = int(value)
            except ValueError:
                if number == 1:
                    continue  # a header
                raise CliError(f"--labels {path} line {number}: the label {value!r} is not a class index") from None
            if label < 0:
                raise CliError(f"--labels {path} line {number}: the label {label} is negative; use class indices >= 0")
            table[os.path.normpath(name)] = label
    labels, missing = [], []
    for image in image_paths:
        keys = (os.path.normpath(image), os.path.basename(image))
        found = next((table[k] for k in keys if k in table), None)
        (missing if found is None else labels).append(image if found is None else found)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CliError(
            f"--labels {path} has no label for {missing[0]}{more}; give every image a row `file,label`, "
            f"or leave out --labels to audit each image's top-1 class"
        )
    return np.array(labels, np.int64)


def cmd_audit(args):
    """``keras-cam audit``: cluster a folder's maps per class; write report.html and clusters.json."""
    from keras_cam import methods as registry
    from keras_cam.audit import audit
    from keras_cam.audit.report import render

    registry.get(args.method)  # an unknown name fails before any work
    for option, value in (("--batch-size", args.batch_size), ("--max-clusters", args.max_clusters),
                          ("--neighbors", args.neighbors)):
        if value < 1:
            raise CliError(f"{option} must be at least 1; received {value}")
    size = _parse_size(args.size)
    paths = expand_images([args.images_dir])
    report_path, json_path = os.path.join(args.out, "report.html"), os.path.join(args.out, "clusters.json")
    check_free([report_path, json_path], args.overwrite)
    labels = read_labels_csv(args.labels, paths) if args.labels else None
    class_names = read_class_names(args.class_names)

    model = load_model(args.model, args.unsafe, args.custom_objects)
    height, width, channels = model_input(model)
    if height is not None and width is not None:
        if size is not None and size != (height, width):
            raise CliError(f"--size {args.size} differs from the model's fixed input size {height}x{width}")
        size = (height, width)
    if size is None:
        raise CliError("the model takes images of any size; pass --size HxW so that the images can be batched")
    # The images, resized, wait as uint8 (a quarter of float32); batches are preprocessed as they are read.
    pixels, shapes = [], []
    for p in paths:
        image = read_image(p)
        shapes.append(image.shape[:2])
        pixels.append(np.clip(np.rint(_as_model_input(fit_channels(image, channels, p), size)), 0, 255)
                      .astype(np.uint8))
    pixels = np.stack(pixels)
    if len(paths) < 2:
        raise CliError(f"an audit compares the maps of many images; {args.images_dir} holds {len(paths)}")
    boxes = None if args.boxes is None else read_boxes(args.boxes, paths, shapes, pixels.shape[1:3])
    try:
        explainer = registry.create(args.method, model, layer=args.layer)
    except ValueError as e:
        hint = " (`keras-cam layers --model PATH` lists the layers)" if args.layer else ""
        raise CliError(f"{' '.join(str(e).split())}{hint}") from e

    # The preprocessed array, on every backend: the audit keeps it to verify each class's candidate
    # groups inside the audit (its level counts them), and verify_first reuses it.
    data, data_labels = preprocess(pixels.astype(np.float32), args.preprocess), labels
    verbose = 0 if args.quiet or not sys.stdout.isatty() else 1
    result = audit(explainer, data, data_labels, boxes=boxes, max_clusters=args.max_clusters,
                   n_neighbors=args.neighbors, evidence=args.evidence, batch_size=args.batch_size,
                   seed=args.seed, verbose=verbose)
    if getattr(args, "verify", False):
        result.verify_first(seed=args.seed)  # the audit keeps the array

    os.makedirs(args.out, exist_ok=True)
    summary = result.to_dict(class_names)
    summary.update(model_file=args.model, preprocess=args.preprocess, image_files=paths)
    for entry in summary["clusters"]:
        entry["files"] = [paths[i] for i in entry["indices"]]
    title = f"keras-cam audit: {result.method} on {os.path.basename(os.path.normpath(args.model))}"
    write_atomic(report_path, render(result, class_names, title).encode("utf-8"))
    write_atomic(json_path, (json.dumps(summary, indent=1) + "\n").encode("utf-8"))
    for target in sorted({c.target for c in result.clusters}):
        first = result.of_class(target)[0]
        name = _name(class_names, target)
        level = "n/a" if first.level is None else f"{first.level:.3g}"
        print(f"class {target}{f' ({name})' if name else ''}: {len(result.of_class(target))} cluster(s); "
              f"the first: {first.size} images, score {first.score:.3f}, level {level}"
              f"{'' if first.suspicious else ' (no suspicious group)'}")
        found = result.verifications.get(result.clusters.index(first))
        if found is not None:
            print(f"  verification: {found.verdict}; removal effect {found.removal.mean:.3f} "
                  f"[{found.removal.low:.3f}, {found.removal.high:.3f}], transplant effect "
                  f"{found.transplant.mean:.3f} [{found.transplant.low:.3f}, {found.transplant.high:.3f}]")
    print(f"wrote {report_path} and {json_path}")
    return 0


def cmd_demo(args):
    if getattr(args, "audit", False):
        from keras_cam.demo.run import run_audit_demo

        run_audit_demo(args.out, seed=args.seed, overwrite=args.overwrite, verbose=not args.quiet)
        return 0
    from keras_cam.demo.run import run_demo

    run_demo(args.out, n_images=args.images, seed=args.seed, n_eval=args.eval_images,
             overwrite=args.overwrite, verbose=not args.quiet)
    return 0


def cmd_layers(args):
    from keras_cam.layers import list_layers

    model = load_model(args.model, args.unsafe, args.custom_objects)
    for path, shape in list_layers(model):
        print(f"{path}\t{shape}")
    return 0


def cmd_evaluate(args):
    """``keras-cam evaluate``: the :func:`keras_cam.metrics.evaluate` table for image files."""
    from keras_cam import methods as registry
    from keras_cam.metrics import DEFAULT_METRICS, METRICS, evaluate
    from keras_cam.metrics.evaluation import needs_ground_truth

    method_names = args.method or ["gradcam"]
    for m in method_names:
        registry.get(m)  # an unknown name fails before any work
    keys = list(dict.fromkeys(registry.canonical(m) for m in method_names))
    asked = list(args.metric or []) + [m.strip() for text in (args.metrics or []) for m in text.split(",") if m.strip()]
    unknown = [m for m in asked if m not in METRICS]
    if unknown:
        raise CliError(f"unknown metric {unknown[0]!r} (--metric/--metrics); choose among {', '.join(METRICS)}")
    if args.boxes is None and any(needs_ground_truth(m) for m in asked):
        raise CliError(f"the localization metrics {[m for m in asked if needs_ground_truth(m)]} compare maps "
                       f"with the objects' boxes: pass --boxes CSV (columns image,y0,x0,y1,x1)")
    if args.batch_size < 1 or args.steps < 1:
        raise CliError("--batch-size and --steps must be at least 1")
    size = _parse_size(args.size)
    paths = expand_images(args.images)
    originals = [read_image(p) for p in paths]
    model = load_model(args.model, args.unsafe, args.custom_objects)
    height, width, channels = model_input(model)
    if height is not None and width is not None:
        size = (height, width)
    if size is None and len({im.shape[:2] for im in originals}) > 1:
        raise CliError("the images have different sizes and the model takes any size: pass --size HxW")
    images = preprocess(np.stack([_as_model_input(fit_channels(im, channels, p), size)
                                  for im, p in zip(originals, paths)]), args.preprocess)
    boxes = None if args.boxes is None else read_boxes(args.boxes, paths, [im.shape[:2] for im in originals],
                                                       images.shape[1:3])
    chosen = None
    if asked:
        chosen = {m: {} for m in dict.fromkeys(asked)}
    else:
        chosen = {m: {} for m in DEFAULT_METRICS if boxes is not None or not needs_ground_truth(m)}
    for m in ("deletion_auc", "insertion_auc"):
        if m in chosen:
            chosen[m]["steps"] = args.steps
    layer = args.layer
    factories = {k: (lambda mdl, k=k: registry.create(k, mdl, layer=layer)) for k in keys}
    try:
        table = evaluate(factories, model, images, targets=args.target, boxes=boxes, metrics=chosen,
                         batch_size=args.batch_size, verbose=int(sys.stdout.isatty() and not args.quiet))
    except ValueError as e:
        hint = " (`keras-cam layers --model PATH` lists the layers)" if args.layer else ""
        raise CliError(f"{' '.join(str(e).split())}{hint}") from e
    if sys.stdout.isatty() and not args.quiet:
        print()
    print(table.to_markdown())
    if args.per_image:
        write_per_image(args.per_image, table, paths)
    return 0


def read_boxes(path, paths, shapes, size):
    """``(N, 4)`` integer boxes at the model's input size from a CSV ``image,y0,x0,y1,x1``.

    Each row names an image (its path as given on the command line, or its
    file name) and its box in the original image's pixels, end exclusive;
    the box is scaled to the model's input size (starts rounded down, ends
    up). Every image needs exactly one row; ``shapes`` are the original
    images' ``(H, W)``.
    """
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise CliError(f"cannot read --boxes {path!r}: {e.strerror or e}") from e
    columns = ("image", "y0", "x0", "y1", "x1")
    if not rows or any(c not in rows[0] for c in columns):
        raise CliError(f"--boxes {path!r} must be a CSV with a header row {','.join(columns)} and one row per image")
    found = {}
    for k, row in enumerate(rows, start=2):
        try:
            box = [int(row[c]) for c in columns[1:]]
        except (TypeError, ValueError):
            raise CliError(f"--boxes {path!r} line {k}: y0, x0, y1, x1 must be integers") from None
        found[row["image"]] = box
    out = []
    for p, (h, w) in zip(paths, shapes):
        box = found.get(p, found.get(os.path.basename(p)))
        if box is None:
            raise CliError(f"--boxes {path!r} has no row for image {p!r} (name it by its path or file name)")
        y0, x0, y1, x1 = box
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise CliError(f"--boxes: the box {box} of {p!r} is empty or leaves its {h}x{w} image")
        sh, sw = size[0] / h, size[1] / w
        out.append([int(np.floor(y0 * sh)), int(np.floor(x0 * sw)), int(np.ceil(y1 * sh)), int(np.ceil(x1 * sw))])
    return np.asarray(out, np.int64)


def write_per_image(path, table, paths):
    """The table's per-image values as a CSV: method, image (the file), one column per metric."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", "image"] + list(table.metrics))
    for row in table.per_image:
        writer.writerow([row["method"], paths[row["image"]]]
                        + ["" if row[m] is None else repr(float(row[m])) for m in table.metrics])
    write_atomic(path, buffer.getvalue().encode())


def _add_evaluate_parser(sub):
    from keras_cam import methods as registry  # names only: imports no TensorFlow

    p = sub.add_parser(
        "evaluate", help="score methods on image files: faithfulness, ROAD, map properties (a table)",
        description="Explain image files with each method and print the keras_cam.metrics.evaluate table "
                    "(Markdown): Average Drop, Increase in Confidence, deletion/insertion AUC, ROAD, "
                    "sparseness, complexity, random logit, max-sensitivity. Images are read and "
                    "preprocessed as for `keras-cam explain`; a progress bar is drawn on a terminal.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images")
    _add_model_args(p)
    p.add_argument("--method", action="append", metavar="NAME",
                   help=f"method, repeat for several (default gradcam): {', '.join(registry.names())}")
    p.add_argument("--metric", action="append", metavar="NAME",
                   help="metric, repeat for several (default: keras_cam.metrics.DEFAULT_METRICS, the "
                        "localization ones only with --boxes): a name of keras_cam.metrics.METRICS, such as "
                        "average_drop, deletion_auc, road, sparseness (an unknown name lists them all)")
    p.add_argument("--metrics", action="append", metavar="A,B",
                   help="metrics as a comma-separated list (with --metric: both)")
    p.add_argument("--boxes", metavar="CSV",
                   help="the objects' boxes, a CSV image,y0,x0,y1,x1 (pixels of the original image, end "
                        "exclusive; image = path or file name): the localization metrics run with them")
    p.add_argument("--per-image", metavar="CSV",
                   help="also write one row per method and image (method,image,metric...) to this CSV")
    p.add_argument("--layer", metavar="NAME", help="target layer name or path (default: the last spatial layer)")
    p.add_argument("--target", type=int, metavar="N", help="class index to explain (default: each image's top class)")
    _add_image_args(p, see="`explain --help`")
    p.add_argument("--steps", type=int, default=50, metavar="N", help="deletion/insertion steps (default 50)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per model call (default 32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


# --- the parser ----------------------------------------------------------------------------


def _add_model_args(p):
    p.add_argument("--model", required=True, metavar="PATH",
                   help="the model: a .keras or .h5 file, or a SavedModel folder")
    p.add_argument("--unsafe", action="store_true",
                   help="load models that contain Python code (Lambda layers). This executes code "
                        "stored in the model file: use only for files you trust")
    p.add_argument("--custom-objects", metavar="FILE.py",
                   help="a Python file defining the model's custom layers/functions (a dict "
                        "`custom_objects`, or every class and function it defines); it is executed")


def _add_image_args(p, see="below"):
    """How image files become model input: the same options for every command that reads them."""
    p.add_argument("--preprocess", default="none", choices=list(PREPROCESS_HELP),
                   help=f"preprocessing applied to the 0-255 RGB pixels (default none; see {see})")
    p.add_argument("--size", metavar="HxW", help="resize images to HxW for models without a fixed input size")


def build_parser():
    from keras_cam import __version__
    from keras_cam import methods as registry

    parser = argparse.ArgumentParser(
        prog="keras-cam",
        description="Class-activation maps (Grad-CAM and family) for Keras image classifiers.",
        epilog="Run `keras-cam demo` for a first look (no arguments, no network).",
    )
    parser.add_argument("--version", action="version", version=f"keras-cam {__version__}")
    parser.add_argument("--traceback", action="store_true", help="on errors, show the Python traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="explain generated images with the built-in model; writes a figure and a summary",
        description="Explain a few generated shape images with six methods (Grad-CAM, Grad-CAM++, Score-CAM, "
                    "Layer-CAM, Eigen-CAM, CAM), using the small CNN that "
                    "ships with keras-cam. Writes demo.png (the methods side by side, ground-truth boxes "
                    "drawn) and summary.txt (accuracy and how often each map points into the box). "
                    "No network needed.",
    )
    demo.add_argument("--out", default="keras-cam-demo", metavar="DIR", help="output folder (default: ./keras-cam-demo)")
    demo.add_argument("--images", type=int, default=4, metavar="N", help="images in the figure (default 4)")
    demo.add_argument("--eval-images", type=int, default=128, metavar="N",
                      help="images behind the accuracy and localization numbers of the summary (default 128)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the generated images (default 7)")
    demo.add_argument("--overwrite", action="store_true", help="replace existing output files")
    demo.add_argument("--quiet", action="store_true", help="print only where the outputs are")
    demo.add_argument("--audit", action="store_true",
                      help="instead: audit the model trained with a planted shortcut (a corner mark) on fresh "
                           "images with and without the mark; writes audit.html and clusters.json")
    demo.set_defaults(func=cmd_demo)

    names = ", ".join(registry.names())
    explain = sub.add_parser(
        "explain", help="write overlay PNGs and predictions.json for image files",
        description="Explain image files with a saved Keras model: one overlay PNG per image and method "
                    "(OUT/<image>_<method>.png) and OUT/predictions.json with each image's top classes "
                    "and the explained class. Images are read with OpenCV, resized to the model's input "
                    "size and preprocessed with --preprocess; overlays are drawn on the original images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="preprocessing modes (--preprocess):\n" + "\n".join(f"  {k:6s} {v}" for k, v in PREPROCESS_HELP.items()),
    )
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images")
    _add_model_args(explain)
    explain.add_argument("--method", action="append", metavar="NAME",
                         help=f"method, repeat for several (default gradcam): {names}")
    explain.add_argument("--layer", metavar="NAME",
                         help="target layer name or path (e.g. base/top_activation); default: the last "
                              "spatial layer. `keras-cam layers --model PATH` lists them")
    explain.add_argument("--target", type=int, metavar="N", help="class index to explain (default: each image's top class)")
    explain.add_argument("--text", action="append", metavar="PROMPT",
                         help="for an image-text model (KerasHub CLIP / SigLIP): explain its similarity with this "
                              "prompt; repeat for several (one overlay each). Token ids as 1,7,9,49, or a string "
                              "with --tokenizer")
    explain.add_argument("--tokenizer", metavar="DIR",
                         help="a KerasHub tokenizer preset folder (tokenizer.save_to_preset(DIR)), for --text strings")
    _add_image_args(explain)
    explain.add_argument("--out", default="keras-cam-out", metavar="DIR", help="output folder (default: ./keras-cam-out)")
    explain.add_argument("--class-names", metavar="FILE", help="text file with one class name per line, for predictions.json")
    explain.add_argument("--top", type=int, default=5, metavar="K", help="top classes listed per image (default 5)")
    explain.add_argument("--alpha", type=float, default=0.5, help="heatmap weight in the overlay, 0-1 (default 0.5)")
    explain.add_argument("--colormap", default="jet", help="OpenCV colormap name (default jet)")
    explain.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per batch (default 16)")
    explain.add_argument("--overwrite", action="store_true", help="replace existing output files")
    explain.add_argument("--quiet", action="store_true",
                         help="no progress (a bar on a terminal, one line otherwise)")
    explain.set_defaults(func=cmd_explain)

    layers = sub.add_parser("layers", help="list a model's layers and output shapes (targets for --layer)",
                            description="Print each layer's path and output shape, in execution order; "
                                        "layers with 4-D (N, H, W, C) outputs can be explained.")
    _add_model_args(layers)
    layers.set_defaults(func=cmd_layers)
    _add_audit_parser(sub, names)
    _add_evaluate_parser(sub)
    return parser


def _add_audit_parser(sub, names):
    audit = sub.add_parser(
        "audit", help="cluster a folder's maps per class (SpRAy); writes report.html and clusters.json",
        description="Explain every image of a folder, cluster each class's maps (spectral relevance "
                    "analysis) and rank the clusters by a suspicion score, to find shortcuts the model "
                    "learned (a watermark, a background). Writes OUT/report.html (self-contained: opens "
                    "offline) and OUT/clusters.json (each cluster's images, numbers and mean map).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="preprocessing modes (--preprocess):\n" + "\n".join(f"  {k:6s} {v}" for k, v in PREPROCESS_HELP.items()),
    )
    audit.add_argument("images_dir", metavar="IMAGES_DIR", help="a folder of images")
    _add_model_args(audit)
    audit.add_argument("--labels", metavar="CSV",
                       help="CSV of `file,label` rows (class indices); maps are then of each image's label, "
                            "and clusters report their accuracy. Default: each image's top-1 class")
    audit.add_argument("--method", default="gradcam", metavar="NAME", help=f"method (default gradcam): {names}")
    audit.add_argument("--layer", metavar="NAME", help="target layer name or path; default: the last spatial layer")
    _add_image_args(audit)
    audit.add_argument("--out", default="keras-cam-audit", metavar="DIR",
                       help="output folder (default: ./keras-cam-audit)")
    audit.add_argument("--class-names", metavar="FILE", help="text file with one class name per line, for the report")
    audit.add_argument("--max-clusters", type=int, default=8, metavar="K", help="most clusters per class (default 8)")
    audit.add_argument("--neighbors", type=int, default=10, metavar="K", help="neighbours in the graph (default 10)")
    audit.add_argument("--seed", type=int, default=0, help="seed of the clustering (default 0)")
    audit.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)")
    audit.add_argument("--overwrite", action="store_true", help="replace existing output files")
    audit.add_argument("--quiet", action="store_true", help="no progress bar")
    audit.add_argument("--boxes", metavar="CSV",
                       help="the objects' boxes, a CSV image,y0,x0,y1,x1 (pixels of the original image, end "
                            "exclusive; image = path or file name): each group's energy outside the objects, "
                            "and --verify compares with random places on as much of the object")
    audit.add_argument("--verify", action="store_true",
                       help="verify each class's first group by intervention (remove and transplant its region)")
    # keras_cam.audit.core.EVIDENCE, spelled out: building the parser imports no Keras (a test keeps them equal).
    audit.add_argument("--evidence", choices=("auto", "where", "what"), default="auto",
                       help="the statistic that forms each class's group: the more significant one (auto, the "
                            "default), the shared place (where) or the split layer feature (what)")
    audit.set_defaults(func=cmd_audit)


@contextlib.contextmanager
def _one_line_warnings():
    """Show Python warnings as ``keras-cam: warning: ...`` lines, each message once."""
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text not in shown:
            shown.add(text)
            print(f"keras-cam: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def main(argv=None):
    """Entry point of the ``keras-cam`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_ERROR
    try:
        if backend_from_environment() == "tensorflow":  # JAX and PyTorch never load TensorFlow
            import_tensorflow_quietly()  # after parsing: --help and usage errors never load TensorFlow
        with _one_line_warnings():
            return args.func(args)
    except KeyboardInterrupt:
        print("keras-cam: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.traceback:
            raise
        expected = isinstance(e, (CliError, ValueError, TypeError, OSError))
        message = " ".join(str(e).split()) or type(e).__name__
        if not expected:
            message = f"unexpected {type(e).__name__}: {message} (rerun with --traceback for details)"
        print(f"keras-cam: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

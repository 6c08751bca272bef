"""The model's input side: which input holds the images, its layout, and reading a call's input.

An explainer call takes what ``model.predict`` takes: one array (a batch, or
one example without the batch axis) for a single-input model, a list or a
dict of arrays for a multi-input one. :func:`read_inputs` turns it into the
images as a checked float32 channels-last batch ``(N, *S, C)`` and the other
inputs (held fixed while the images are explained), with clear errors for
what the model cannot take. Nothing here runs the model.
"""

from __future__ import annotations

import re
import warnings

import numpy as np

from keras_cam import _compat
from keras_cam import layers as _layers
from keras_cam import layout as _layout
from keras_cam._compat import ops
from keras_cam.saved_model import GraphOp

def input_names(model):
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    try:
        structure = model.input
    except (AttributeError, ValueError):
        structure = None
    if isinstance(structure, dict):  # a model built on a dict of inputs is called with its keys
        key_of = {id(t): k for k, t in structure.items()}
        if all(id(t) in key_of for t in inputs):
            return [key_of[id(t)] for t in inputs]
    names = getattr(model, "input_names", None)
    if names and len(names) == len(inputs):
        return list(names)
    return [str(getattr(t, "name", i)).split(":")[0] for i, t in enumerate(inputs)]


def find_image_input(model, image_input):
    """``(input names, index of the image input)``; one unnamed input for models without a graph."""
    names = input_names(model) if _compat.is_model(model) else None
    if not names:
        if image_input not in (None, 0):
            raise ValueError(
                f"`image_input={image_input!r}` selects one input of a multi-input model; model "
                f"{getattr(model, 'name', model)!r} has a single input (or none known)."
            )
        return ["input"], 0
    shapes = [tuple(t.shape) for t in model.inputs]
    listing = ", ".join(f"{i}: {n!r} {s}" for i, (n, s) in enumerate(zip(names, shapes)))
    if image_input is None:
        if len(names) == 1:
            return names, 0
        # The only image (4-D) input; else the only input with 1 to 3 spatial axes.
        for ranks in ((4,), (3, 4, 5)):
            images = [i for i, s in enumerate(shapes) if len(s) in ranks]
            if len(images) == 1:
                return names, images[0]
        raise ValueError(
            f"Model {model.name!r} has {len(names)} inputs ({listing}) and "
            f"{'several' if images else 'none'} of them with spatial axes; pass `image_input=` (an "
            f"index or a name) for the one that holds the images to explain."
        )
    if isinstance(image_input, str) and image_input in names:
        index = names.index(image_input)
    elif isinstance(image_input, (int, np.integer)) and not isinstance(image_input, bool) \
            and 0 <= image_input < len(names):
        index = int(image_input)
    else:
        raise ValueError(f"`image_input={image_input!r}` is not an input of model {model.name!r}: {listing}.")
    if len(shapes[index]) not in (3, 4, 5):
        raise ValueError(
            f"`image_input={image_input!r}` has shape {shapes[index]}, not a batch with 1 to 3 "
            f"spatial axes and channels ((N, T, C), (N, H, W, C) or (N, D, H, W, C)); the inputs "
            f"of model {model.name!r} are {listing}."
        )
    return names, index


def find_data_format(model, data_format):
    if data_format is not None:
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"`data_format` must be 'channels_last', 'channels_first' or None (inferred); "
                f"received {data_format!r}."
            )
        return data_format
    if not _compat.is_model(model):
        return "channels_last"
    for _, layer in _layers.walk(model):
        if getattr(layer, "data_format", None) == "channels_first":
            return "channels_first"
    return "channels_last"


def input_layout(model, index=0, data_format=None):
    """The :class:`~keras_cam.layout.InputLayout` of the model's input ``index``."""
    first = find_data_format(model, data_format) == "channels_first"
    return _layout.input_layout(input_shape(model, index), first)


def input_shape(model, index=0):
    """The shape of the model's input ``index`` (None dims allowed), or None if unknown."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return tuple(inputs[index].shape) if inputs else None



def as_batch(images, layout=None):
    """``(images as a float32 batch tensor in the model's format, whether one example was given)``.

    ``layout`` is the model's :class:`~keras_cam.layout.InputLayout` (2-D
    images by default): an array of its rank is a batch, one rank less is
    one example.
    """
    x, single = (layout or _layout.InputLayout()).batch(images)
    return ops.convert_to_tensor(x), single


def as_input_list(graph, inputs):
    """The inputs of a multi-input model, in the order of ``model.inputs``."""
    names = graph.input_names
    if isinstance(inputs, dict):
        missing = [n for n in names if n not in inputs]
        if missing or len(inputs) != len(names):
            raise ValueError(
                f"`images` is a dict with keys {sorted(inputs)}; model {graph.model.name!r} takes "
                f"the inputs {names}. Pass one entry per input."
            )
        return [inputs[n] for n in names]
    if isinstance(inputs, (list, tuple)) and len(inputs) == len(names):
        return list(inputs)
    raise ValueError(
        f"Model {graph.model.name!r} has {len(names)} inputs {names}: pass them all, as a list "
        f"in that order or a dict by name, as for `model.predict` (the maps explain input "
        f"{names[graph.input_index]!r}; the others are held fixed). Received "
        f"{type(inputs).__name__}{'' if not hasattr(inputs, '__len__') else f' of length {len(inputs)}'}."
    )


def read_inputs(graph, inputs):
    """The user's input as an explainer computes on it.

    Returns:
        ``(images, others, single)``: the images as a checked float32
        channels-last ``(N, *S, C)`` tensor, the other inputs of a
        multi-input model (a tuple of tensors whose rows go with the images;
        empty otherwise) and whether one example without a batch axis was given.
    """
    if not graph.multi_input:
        batch, single = graph.inputs.batch(inputs)
        others = ()
    else:
        parts = as_input_list(graph, inputs)
        batch, single = graph.inputs.batch(parts[graph.input_index])
        others = []
        for i, (name, part, spec) in enumerate(zip(graph.input_names, parts, graph.model.inputs)):
            if i == graph.input_index:
                continue
            t = np.asarray(_compat.to_host(part))
            t = t[None] if single else t
            dtype = np.dtype(_compat.dtype_name(spec.dtype))
            if t.dtype != dtype and (t.dtype.kind == "f" or dtype.kind == "f"):
                t = t.astype(dtype)
            if t.ndim == 0 or t.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"Input {name!r} has shape {tuple(t.shape)}, but there are {int(batch.shape[0])} "
                    f"images: every input needs one row per image."
                )
            others.append(ops.convert_to_tensor(t))
        others = tuple(others)
    check_images(batch, graph.model, graph.input_index, graph.data_format == "channels_first")
    return graph.to_channels_last(ops.convert_to_tensor(batch)), others, single


_PREPROCESSING = ("Rescaling", "Normalization")
# Inside a SavedModel the layers are ops named after them, e.g. "rescaling/mul".
_PREPROCESSING_OPS = re.compile(r"(^|/)(rescaling|normalization)(_\d+)*/")


def has_preprocessing(model):
    return any(type(l).__name__ in _PREPROCESSING or (isinstance(l, GraphOp) and _PREPROCESSING_OPS.search(path))
               for path, l in _layers.walk(model))


def check_images(batch, model, index=0, channels_first=False):
    """Reject input the model cannot take, before TensorFlow fails deep inside.

    Checks the rank, the channel count and any fixed spatial size against the
    model's input ``index`` (whose format ``batch`` is in), and that every
    value is finite. Warns (it cannot know for sure) when the values look like
    raw 0-255 pixels (none negative, some above 2) and the model has no
    preprocessing layer of its own (``Rescaling``/``Normalization``).
    """
    expected = input_shape(model, index)
    if expected is not None:
        got = tuple(batch.shape[1:])
        spatial = len(expected) - 2
        if len(got) != len(expected) - 1:
            raise ValueError(
                f"`images` has shape {tuple(batch.shape)} but model {model.name!r} takes inputs "
                f"of shape {(None,) + tuple(expected[1:])}."
            )
        for axis, (g, e) in enumerate(zip(got, expected[1:]), start=1):
            if e is not None and g != e:
                what = "channels" if axis == (1 if channels_first else len(got)) else f"size on axis {axis}"
                fix = ("Resize the images (or convert gray/RGB)" if spatial == 2 else
                       "Resample or crop the inputs (or fix their channels)")
                raise ValueError(
                    f"`images` has shape {tuple(batch.shape)} but model {model.name!r} takes "
                    f"(N,) + {tuple(expected[1:])}: its {what} is {g}, the model's is {e}. {fix} "
                    f"to the model's input shape first."
                )
    values = np.asarray(batch)  # one host pass for all three checks
    finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite).tolist()
        raise ValueError(
            f"`images` contains NaN or Inf (images {bad[:10]}); a map of such an input is "
            f"meaningless. Clean or drop those images first."
        )
    top = float(values.max())
    if top > 2.0 and float(values.min()) >= 0.0 and not has_preprocessing(model):
        warnings.warn(
            f"`images` has values up to {top:.0f}, like raw 0-255 pixels, "
            f"and model {model.name!r} has no Rescaling/Normalization layer. If the model was "
            f"trained on scaled input ([0, 1] or [-1, 1]), preprocess the images as for "
            f"`model.predict`, or the maps explain a prediction on out-of-range input.",
            stacklevel=4,
        )




# ---------------------------------------------------------------- baselines (a reference input)


def broadcastable(shape, target) -> bool:
    """Whether ``shape`` broadcasts to ``target`` (numpy rules; None entries match anything)."""
    if len(shape) > len(target):
        return False
    return all(s is None or t is None or s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def check_baseline(baseline, graph, model_name):
    """A reference input ``x'`` as given: None (zeros) or a callable, kept; anything else as a
    finite float32 array that broadcasts to one input as the model takes it. A vector of one
    value per channel is laid on the channel axis, also on a channels-first model.

    Raises:
        TypeError: not array-like. ValueError: a shape that does not broadcast, or NaN/Inf.
    """
    if baseline is None or callable(baseline):
        return baseline
    try:
        value = np.asarray(baseline, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(
            f"`baseline` must be None (zeros), an array broadcastable to one input or a callable "
            f"images -> baselines; received {type(baseline).__name__}."
        ) from None
    one = graph.inputs.shape  # one input as the model takes it, None where free
    rank = graph.inputs.rank + 1
    if graph.data_format == "channels_first" and value.ndim == 1 and value.size > 1 and one is not None \
            and value.shape[0] == one[0]:
        value = value.reshape((-1,) + (1,) * graph.inputs.rank)  # one value per channel, on its axis
    if value.ndim > rank or (one is not None and not broadcastable(value.shape, one)):
        expected = one if one is not None else f"rank {rank} or less"
        raise ValueError(
            f"`baseline` has shape {value.shape}, which does not broadcast to one input of "
            f"model {model_name!r}, {expected}. Pass a scalar, one value per channel or one "
            f"whole input; for a different baseline per input pass a callable images -> baselines."
        )
    if not np.isfinite(value).all():
        raise ValueError("`baseline` contains NaN or Inf; pass finite values.")
    return value


def baseline_inputs(baseline, graph, images):
    """``x'`` for channels-last ``images`` ``(N, *S, C)``: a checked array or callable
    (:func:`check_baseline`) broadcast to the inputs, channels last; None gives zeros."""
    if baseline is None:
        return ops.zeros_like(images)
    x = graph.to_model_format(images)
    if callable(baseline):
        b = ops.cast(ops.convert_to_tensor(baseline(x)), "float32")
        what, allowed = "The baselines returned by the `baseline` callable have", tuple(x.shape)
    else:
        b = ops.convert_to_tensor(baseline)
        what, allowed = "`baseline` has", tuple(x.shape[1:])
    if not broadcastable(tuple(b.shape), allowed):
        raise ValueError(
            f"{what} shape {tuple(b.shape)}, which does not broadcast to the inputs {tuple(x.shape)} "
            f"(as the model takes them). Return one baseline per input, of the inputs' shape."
        )
    return graph.to_channels_last(ops.broadcast_to(b, tuple(x.shape)))

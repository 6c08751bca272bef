"""Finding and naming target layers, at any nesting depth.

A layer's *path* joins the names of the models that contain it with ``/``:
``"efficientnetb0/top_activation"`` is the layer ``top_activation`` of the
sub-model ``efficientnetb0``. A bare name that is unique in the whole tree is
accepted too (``"top_activation"``).

The automatic choice (``layer=None``) runs the model once on a probe input and
records, in execution order, what every layer returns; it picks the last layer
whose output is a spatial feature map, looking through nested models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib

import numpy as np
import tensorflow as tf

from keras_cam import _compat
from keras_cam._patch import wrapped_call

# Layers whose 4-D output is still "the image", or a resolution-losing
# summary of a feature map: never chosen automatically.
_NOT_TARGETS = (
    "InputLayer", "Rescaling", "Normalization", "Resizing", "CenterCrop",
    "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
    "RandomContrast", "RandomCrop", "ZeroPadding2D", "Cropping2D",
    "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
)


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer of a model as a target candidate.

    Attributes:
        path: ``/``-joined names from the outermost model to the layer.
        layer: the layer object itself.
        output_shape: shape of its output in the probe run (batch axis
            included), or None when it returned a structure or was not run.
    """

    path: str
    layer: object
    output_shape: tuple | None = None

    @property
    def is_spatial(self) -> bool:
        s = self.output_shape
        return s is not None and len(s) == 4 and type(self.layer).__name__ not in _NOT_TARGETS

    @property
    def spatial_size(self) -> int:
        """H * W of a spatial output (channels last), else 0."""
        if not self.is_spatial:
            return 0
        h, w = _spatial_dims(self.layer, self.output_shape)
        return int(h) * int(w)


def _spatial_dims(layer, shape):
    if getattr(layer, "data_format", None) == "channels_first":
        return shape[2], shape[3]
    return shape[1], shape[2]


def _children(layer):
    if _compat.is_model(layer):
        return [l for l in layer.layers if type(l).__name__ != "InputLayer"]
    return []


def walk(model, prefix=""):
    """All ``(path, layer)`` pairs of ``model``, depth first, nested models included."""
    out = []
    for child in _children(model):
        path = f"{prefix}{child.name}"
        out.append((path, child))
        out.extend(walk(child, prefix=path + "/"))
    return out


def resolve(model, layer):
    """Find ``layer`` (a path, a bare name or a layer object) in ``model``.

    Returns:
        ``(path, layer_object)``.

    Raises:
        ValueError: when the layer is not in the model; the message lists the
            closest names.
    """
    pairs = walk(model)
    if not isinstance(layer, str):
        if not _compat.is_layer(layer):
            raise TypeError(
                f"`layer` must be a layer name, a path like 'base/conv', a Keras layer "
                f"or None; received {type(layer).__name__}."
            )
        for path, obj in pairs:
            if obj is layer:
                return path, obj
        raise ValueError(
            f"Layer {layer.name!r} is not part of model {model.name!r} (nor of any model "
            f"nested in it). Pass one of the model's own layers, or its name."
        )
    exact = [(p, l) for p, l in pairs if p == layer]
    if exact:
        return exact[0]
    by_name = [(p, l) for p, l in pairs if l.name == layer.rsplit("/", 1)[-1] and p.endswith(layer)]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise ValueError(
            f"Layer name {layer!r} is ambiguous in model {model.name!r}: it matches "
            f"{[p for p, _ in by_name]}. Pass the full path."
        )
    names = list(dict.fromkeys([p for p, _ in pairs] + [l.name for _, l in pairs]))
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
    hint = f" Closest names: {close}." if close else ""
    raise ValueError(
        f"No layer {layer!r} in model {model.name!r}.{hint} "
        f"Call keras_cam.list_layers(model) to see every candidate."
    )


def probe_input_shape(model):
    """The model's input shape with batch 1, or None when it is not fully known."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        return None
    shape = tuple(inputs[0].shape)
    if any(d is None for d in shape[1:]):
        return None
    return (1,) + tuple(int(d) for d in shape[1:])


def trace_layers(model, sample):
    """Run ``model`` once on ``sample`` and record every layer's output.

    Returns:
        A list of :class:`LayerInfo` in execution order (a layer called twice
        appears at its last call), nested models and their layers included.
    """
    pairs = walk(model)
    seen = {}

    def recorder(path, layer):
        def record(out):
            shape = tuple(out.shape) if hasattr(out, "shape") else None
            seen.pop(path, None)
            seen[path] = LayerInfo(path, layer, shape)
            return out
        return record

    with contextlib.ExitStack() as stack:
        for path, layer in pairs:
            stack.enter_context(wrapped_call(layer, recorder(path, layer)))
        model(tf.convert_to_tensor(sample), training=False)
    return list(seen.values())


def auto_layer(model, sample):
    """The last spatial layer of the whole computation (see module docstring).

    Nested models are looked through (their inner layers compete, the model
    itself does not); a layer whose map is a single pixel is chosen only when
    no larger map exists (global pooling with ``keepdims``, 1x1 classifier
    convolutions).
    """
    infos = [i for i in trace_layers(model, sample) if not _compat.is_model(i.layer)]
    spatial = [i for i in infos if i.is_spatial]
    if not spatial:
        raise ValueError(
            f"Model {model.name!r} has no layer with a spatial (N, H, W, C) output, so "
            f"there is nothing for a class-activation map to localize. Class-activation "
            f"maps need a convolutional model."
        )
    larger = [i for i in spatial if i.spatial_size > 1]
    return (larger or spatial)[-1]


def list_layers(model, sample=None):
    """The model's layers as target candidates, for humans.

    Args:
        model: a Keras model.
        sample: an input batch to probe with; by default zeros of the model's
            input shape.

    Returns:
        A list of ``(path, output_shape)`` in execution order; spatial layers
        (the usable targets) have 4-D shapes.

    Example:
        >>> for path, shape in keras_cam.list_layers(model):
        ...     print(path, shape)
    """
    if sample is None:
        shape = probe_input_shape(model)
        if shape is None:
            raise ValueError(
                f"Model {model.name!r} has no fixed input shape; pass `sample=` (one "
                f"input batch) so its layers can be run and listed."
            )
        sample = np.zeros(shape, dtype="float32")
    return [(i.path, i.output_shape) for i in trace_layers(model, sample)]

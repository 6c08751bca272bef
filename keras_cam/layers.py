"""Finding and naming target layers, at any nesting depth.

A layer's *path* joins the names of the models (and custom layers) that
contain it with ``/``: ``"efficientnetb0/top_activation"`` is the layer
``top_activation`` of the sub-model ``efficientnetb0``, and
``"vi_t_backbone/vit_encoder/transformer_block_12/ln_1"`` a norm inside the
custom ``ViTEncoder`` layer of a KerasHub ViT (a custom layer's sub-layers are
its public attributes, see :func:`sublayers`). A bare name that is unique in the whole tree is
accepted too (``"top_activation"``), and so is any unique tail of a path.
Besides layers, the tree holds the operations of Keras 3 functional models
(``x + y``, ``keras.ops.*``: tf-keras makes them ``TFOpLambda`` layers) and
the ops inside a SavedModel run by a TF-Hub ``KerasLayer`` or a ``TFSMLayer``
(see ``saved_model.py``).

**The automatic choice** (``layer=None``) works in two steps:

1. *Known architectures*: :data:`DEFAULTS` names the target layer of common
   families (VGG, ResNet, DenseNet, MobileNet, EfficientNet, Xception,
   Inception, ConvNeXt, the ``efficientnet`` package). It applies to the model
   itself, or to one recognized backbone nested in a functional model or a
   Sequential when only a classifier head follows it (dropout, then global
   pooling or flatten, then dense-like layers). No probe run is needed.
2. *Otherwise*, the model runs once on a probe input and every layer's
   output is recorded in execution order; the choice is the last layer whose
   output is a spatial feature map ``(N, H, W, C)``, wherever it is nested.
   Layers that only see a *globally pooled* map are passed over: a global
   pooling (or flatten) and everything computed from it alone, such as the
   1x1 "spatial" classifier convolutions of MobileNetV3 or the
   squeeze-excitation convolutions of EfficientNet. Input preprocessing and
   local pooling layers are never chosen. A backbone's own 1x1 map (a small
   input) stays a candidate: it is not after a pooling. Unless nothing else
   is spatial, two more are passed over: a final 1x1 convolution that
   computes the output (a segmenter's per-pixel logits are what is
   explained, not a feature map) and a layer run more than once (a detection
   head shared by the levels of a feature pyramid: only its last call would
   be captured), and the layers inside a custom layer that returns several
   maps (a feature pyramid's levels: each is one level's map).
3. *Vision transformers*: token sequences ``(N, L, K)`` after that map (the
   patch embedding) that lie on its grid are candidates
   (:func:`token_candidates`); the choice is the last of them whose patch
   tokens receive gradient from the top score in one probe pass on a seeded
   random input (:func:`carries_gradient`). In a pre-norm ViT classified on
   its class token, that is the last block's first LayerNorm: after the last
   attention, patch tokens no longer reach the class token. Rank-4 outputs
   computed from tokens that are no patch grid (attention projections
   ``(N, L, heads, dim)``) are not maps (``LayerInfo.from_tokens``).
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import difflib
import re

import numpy as np

from keras_cam import _compat
from keras_cam import backend as _backend
from keras_cam import layout as _layout
from keras_cam import saved_model as _saved_model
from keras_cam._compat import ops
from keras_cam._patch import replaced_call, wrapped_call


def flatten(structure):
    """The leaves of a nested structure (dicts by sorted key), as Keras flattens it."""
    if isinstance(structure, dict):
        return [leaf for k in sorted(structure) for leaf in flatten(structure[k])]
    if isinstance(structure, (list, tuple)):
        return [leaf for s in structure for leaf in flatten(s)]
    return [structure]


def map_structure(fn, structure):
    """``fn`` applied to every leaf of a nested structure of lists, tuples and dicts."""
    if isinstance(structure, dict):
        return {k: map_structure(fn, v) for k, v in structure.items()}
    if isinstance(structure, (list, tuple)):
        return type(structure)(map_structure(fn, s) for s in structure)
    return fn(structure)


def as_tensors(sample):
    """A model input (arrays, nested in lists or dicts) as backend tensors."""
    return map_structure(ops.convert_to_tensor, sample)

# Layers whose 4-D output is still "the image", or a resolution-losing
# summary of a feature map: never chosen automatically.
_NOT_TARGETS = (
    "InputLayer", "Rescaling", "Normalization", "Resizing", "CenterCrop",
    "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
    "RandomContrast", "RandomCrop",
    # A lookup of integer ids (a ViT's position embeddings), not a function of the image.
    "Embedding",
    *(f"{kind}{d}D" for d in (1, 2, 3) for kind in (
        "ZeroPadding", "Cropping", "MaxPooling", "AveragePooling", "GlobalAveragePooling",
        "GlobalMaxPooling")),
)
# Layers that summarize a whole map (with keepdims they keep their rank, size 1).
_GLOBAL_POOLS = tuple(f"Global{kind}Pooling{d}D" for kind in ("Average", "Max") for d in (1, 2, 3))


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer of a model as a target candidate.

    Attributes:
        path: ``/``-joined names from the outermost model to the layer.
        layer: the layer object itself (a :class:`~keras_cam.saved_model.GraphOp`
            for an op inside a SavedModel).
        output_shape: shape of its output in the probe run (batch axis
            included), or None when it returned a structure or was not run.
        pooled: its output is computed only from a globally pooled map.
        rank: the spatial rank of the model's input.
        calls: how many times it ran in the probe run (a head shared by the
            levels of a feature pyramid runs once per level).
        from_tokens: a rank-4 output of a 2-D model computed only from token
            sequences ``(N, L, K)`` that is no patch grid: an attention
            internal such as ``(N, L, heads, dim)`` or ``(N, heads, L, L)``,
            which has the rank of a feature map but no spatial axes.
    """

    path: str
    layer: object
    output_shape: tuple | None = None
    pooled: bool = False
    rank: int = 2
    calls: int = 1
    from_tokens: bool = False

    @property
    def is_spatial(self) -> bool:
        """A feature map over the input's ``rank`` spatial axes, and not the input itself."""
        s = self.output_shape
        return (s is not None and len(s) == self.rank + 2 and not self.from_tokens
                and type(self.layer).__name__ not in _NOT_TARGETS)

    @property
    def spatial_size(self) -> int:
        """The number of positions of a spatial output, else 0."""
        if not self.is_spatial:
            return 0
        first = getattr(self.layer, "data_format", None) == "channels_first"
        dims = self.output_shape[2:] if first else self.output_shape[1:-1]
        return int(np.prod([int(d) for d in dims]))


def sample_rank(sample):
    """The spatial rank of a probe sample (its largest array, batch and channel axes excluded)."""
    return max(np.ndim(t) for t in flatten(sample)) - 2


def is_container(layer) -> bool:
    """A model, or a layer that runs a SavedModel: its inner layers compete, it does not."""
    return (
        _compat.is_model(layer)
        or _saved_model.is_wrapper(layer)
        or isinstance(layer, _saved_model.FrozenModel)
    )


def _children(layer):
    """The layers (and ops) directly inside ``layer``, in a deterministic order."""
    if _compat.is_model(layer):
        # Keras 3 functional models also run operations that are not layers (x + y).
        ops = getattr(layer, "operations", None)
        items = ops if isinstance(ops, list) else layer.layers
        return [l for l in items if type(l).__name__ != "InputLayer"]
    if _saved_model.is_wrapper(layer) or isinstance(layer, _saved_model.FrozenModel):
        return _saved_model.graph_ops(layer)
    if _compat.is_layer(layer):
        return sublayers(layer)
    return []


def sublayers(layer):
    """The layers a custom (non-model) layer holds in its public attributes.

    A layer such as KerasHub's ``ViTEncoder`` keeps its blocks as attributes
    (``self.layer_norm = ...``) or in lists, tuples or dicts of layers
    (``self.encoder_layers = [...]``). They are found in ``vars(layer)`` (and,
on PyTorch, where ``nn.Module`` keeps single layer attributes, ``_modules``), in
    attribute order (the order ``__init__`` assigned them), list order and
    dict order; attributes whose name starts with ``_`` are internals (Keras's
    own trackers, ``MultiHeadAttention``'s projections) and are not entered.
    Each layer appears once, at its first attribute.
    """
    found = {}
    items = list(vars(layer).items())
    modules = vars(layer).get("_modules")  # PyTorch: nn.Module keeps layer-valued attributes here
    if isinstance(modules, collections.abc.Mapping):
        items += list(modules.items())
    for name, value in items:
        if name.startswith("_"):
            continue
        if isinstance(value, collections.abc.Mapping):
            values = list(value.values())
        elif isinstance(value, (list, tuple)):
            values = list(value)
        else:
            values = [value]
        for v in values:
            if v is not layer and _compat.is_layer(v):
                found.setdefault(id(v), v)
    if isinstance(modules, collections.abc.Mapping):  # assignment order: Keras's tracking order
        order = {id(l): i for i, l in enumerate(getattr(layer, "_layers", None) or [])}
        return sorted(found.values(), key=lambda l: order.get(id(l), len(order)))
    return list(found.values())


def walk(model, prefix=""):
    """All ``(path, layer)`` pairs of ``model``, depth first.

    Nested models are entered, and so are the sub-layers of custom layers
    (:func:`sublayers`). A layer that a model lists itself is named under that
    model, never a second time under a custom layer that also holds it.
    """
    out = []
    _walk(model, prefix, out, set(), {id(model)})
    return out


def _walk(layer, prefix, out, claimed, above):
    children = _children(layer)
    if _compat.is_model(layer) or not _compat.is_layer(layer):
        claimed.update(id(c) for c in children)  # a model's own layers are named under it
    else:
        children = [c for c in children if id(c) not in claimed and id(c) not in above]
        claimed.update(id(c) for c in children)
    for child in children:
        path = f"{prefix}{child.name}"
        out.append((path, child))
        if id(child) not in above:
            _walk(child, path + "/", out, claimed, above | {id(child)})


def resolve(model, layer):
    """Find ``layer`` (a path, a bare name or a layer object) in ``model``.

    Returns:
        ``(path, layer_object)``.

    Raises:
        ValueError: when the layer is not in the model; the message lists the
            closest names.
    """
    model = _saved_model.adapt(model)
    pairs = walk(model)
    if not isinstance(layer, str):
        if not (_compat.is_layer(layer) or isinstance(layer, _saved_model.GraphOp)):
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
    exact = [(p, l) for p, l in pairs if p == layer or getattr(l, "op_name", None) == layer]
    if exact:
        return exact[0]
    # A unique tail of a path: a bare name, or "base/top_activation" inside an outer model.
    # (Names may themselves contain "/", as MobileNetV3's "Conv_1/BatchNorm" does.)
    tails = [(p, l) for p, l in pairs if p.endswith("/" + layer)]
    if len(tails) == 1:
        return tails[0]
    if len(tails) > 1:
        raise ValueError(
            f"Layer name {layer!r} is ambiguous in model {model.name!r}: it matches "
            f"{[p for p, _ in tails]}. Pass the full path."
        )
    if layer in _input_layer_names(model):
        raise ValueError(
            f"Layer {layer!r} is an input of model {model.name!r} (an InputLayer): it holds the images, "
            f"not features the model computed, so there is no map to explain at it. Pass a layer that "
            f"computes features (the default picks the last spatial one; keras_cam.list_layers(model) "
            f"lists the candidates), or use a pixel attribution such as keras_cam.Saliency or "
            f"keras_cam.IntegratedGradients for the input itself."
        )
    names = list(dict.fromkeys([p for p, _ in pairs] + [l.name for _, l in pairs]))
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
    hint = f" Closest names: {close}." if close else ""
    raise ValueError(
        f"No layer {layer!r} in model {model.name!r}.{hint} "
        f"Call keras_cam.list_layers(model) to see every candidate."
    )


def _input_layer_names(model):
    """The names of ``model``'s InputLayers (the layers :func:`walk` leaves out)."""
    try:
        items = list(getattr(model, "_input_layers", None) or getattr(model, "layers", []))
    except (AttributeError, ValueError):
        return set()
    return {l.name for l in items if type(l).__name__ == "InputLayer"}


def probe_sample(model):
    """Zeros shaped like one input of ``model`` (batch 1, every input of a
    multi-input model, in its structure), or None when a shape is not fully known."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        return None
    shapes = [tuple(t.shape) for t in inputs]
    if any(d is None for s in shapes for d in s[1:]):
        return None
    zeros = [np.zeros((1,) + tuple(int(d) for d in s[1:]), dtype=_dtype(t)) for s, t in zip(shapes, inputs)]
    if len(zeros) == 1:
        return zeros[0]
    structure = getattr(model, "input", None)
    if isinstance(structure, dict):
        by_tensor = {id(t): z for t, z in zip(inputs, zeros)}
        return {k: by_tensor.get(id(t), zeros[i]) for i, (k, t) in enumerate(structure.items())}
    return zeros


def _dtype(tensor):
    dtype = getattr(tensor, "dtype", "float32")
    return getattr(dtype, "name", dtype) or "float32"


# ---------------------------------------------------------------------------
# The probe run


def _tensors(structure):
    return [t for t in flatten(structure) if _backend.is_tensor(t)]


def _is_global(layer, inputs, out_shape, rank=2, out=None):
    """Whether ``layer`` summarizes a whole map: a global pooling, a flatten, a reduction.

    (Not a strided convolution that happens to reach size 1 on a small input:
    that is still the backbone's map.)
    """
    if not any(s is not None and len(s) == rank + 2 for s in inputs):
        return False
    if type(layer).__name__ in _GLOBAL_POOLS:
        return True
    if type(layer).__name__.endswith("Attention"):  # mixes tokens, keeps one per position
        return False
    if out_shape is None:  # a structure: global unless it holds a map (a feature pyramid's levels)
        return not any(len(t.shape) == rank + 2 for t in _tensors(out))
    if rank == 2 and len(out_shape) == 3 and _is_relayout(inputs, out_shape):
        return False  # a map's positions laid out as a token sequence (N, h*w, K)
    return len(out_shape) < rank + 2  # Flatten, a reduction, a reshape to a vector


def _is_relayout(inputs, out_shape):
    """Whether a token sequence has one token per position of a 4-D input (plus at most
    ``MAX_PREFIX_TOKENS`` leading ones), as a reshape of a patch map to tokens does."""
    maps = [s for s in inputs if s is not None and len(s) == 4 and None not in s[1:3]]
    if len(maps) != 1 or out_shape[1] is None:
        return False
    extra = int(out_shape[1]) - int(maps[0][1]) * int(maps[0][2])
    return 0 <= extra <= _layout.MAX_PREFIX_TOKENS


def trace_layers(model, sample):
    """Run ``model`` once on ``sample`` and record every layer's output shape.

    Only shapes are read: a built model runs through the backend's
    ``run_for_shapes`` (on JAX an abstract trace, which compiles nothing).

    Returns:
        A list of :class:`LayerInfo` in execution order (a layer called twice
        appears at its last call), nested models, their layers and the ops
        inside SavedModel layers included.
    """
    model = _saved_model.adapt(model)
    rank = sample_rank(sample)
    if isinstance(model, _saved_model.FrozenModel):  # its graph's shapes are known without running it
        shape = tuple(np.shape(sample))
        return [LayerInfo(op.name, op, s, pooled, rank) for op, (_, s, pooled) in
                zip(model.layers, _saved_model.op_infos(model, shape))]
    pairs = walk(model)
    ops_of = {}
    for path, layer in pairs:
        if isinstance(layer, _saved_model.GraphOp):
            ops_of.setdefault(id(layer.owner), {})[layer.op_name] = path
    seen = {}
    producer = {}  # id(tensor) -> (path, tensor): the first layer that returned it
    pooled = set()
    tokenish = set()  # paths of token sequences and of what is computed from them alone
    grids = set()  # the spatial sizes of the maps seen so far
    image_size = _image_size(sample)

    def record(path, layer, args, out):
        inputs = _tensors(args)
        # Per input: does it come from a pooled map? A map from no recorded layer (the model's
        # input) does not; constants (of lower rank) do not count.
        from_pooled = [producer[id(t)][0] in pooled if id(t) in producer else False
                       for t in inputs if id(t) in producer or len(t.shape) == rank + 2]
        if id(layer) in ops_of:
            in_shape = tuple(inputs[0].shape) if inputs else None
            for op_name, shape, is_pooled in _saved_model.op_infos(layer, in_shape):
                op_path = ops_of[id(layer)][op_name]
                if is_pooled:
                    pooled.add(op_path)
                seen.pop(op_path, None)
                seen[op_path] = LayerInfo(op_path, _find(pairs, op_path), shape, is_pooled, rank)
        shape = tuple(out.shape) if hasattr(out, "shape") else None
        is_pooled = _is_global(layer, [tuple(t.shape) for t in inputs], shape, rank, out) or (
            bool(from_pooled) and all(from_pooled)
        )
        if is_pooled:
            pooled.add(path)
        from_tokens = False
        if rank == 2 and shape is not None:
            reads_tokens = bool(inputs) and all(
                (id(t) in producer and producer[id(t)][0] in tokenish) or len(t.shape) == 3 for t in inputs)
            if len(shape) == 3:
                tokenish.add(path)
            elif len(shape) == 4 and reads_tokens:
                dims = tuple(shape[1:3])
                from_tokens = dims not in grids and not _is_patch_grid(dims, image_size)
                if from_tokens:
                    tokenish.add(path)
            if len(shape) == 4 and not from_tokens:
                grids.add(tuple(shape[1:3]))
        for t in _tensors(out):
            producer.setdefault(id(t), (path, t))  # keeps t alive: ids stay unique
        calls = seen.pop(path).calls + 1 if path in seen else 1
        seen[path] = LayerInfo(path, layer, shape, is_pooled, rank, calls, from_tokens)

    def recorder(path, layer):
        def call(inner, *args, **kwargs):
            out = inner(*args, **kwargs)
            record(path, layer, args, out)
            return out
        return call

    def run(x):
        for found in (seen, producer, pooled, tokenish, grids):
            found.clear()  # a clean slate: the backend may trace abstractly first, then run for real
        with contextlib.ExitStack() as stack:
            for path, layer in pairs:
                if not isinstance(layer, _saved_model.GraphOp):
                    stack.enter_context(replaced_call(layer, recorder(path, layer)))
            if isinstance(model, _saved_model.FrozenModel):
                stack.enter_context(replaced_call(model, recorder("", model)))
            model(as_tensors(x), training=False)

    if all(getattr(layer, "built", True) for _, layer in [("", model), *pairs]):
        _backend.run_for_shapes(run, sample)  # only shapes are read (on JAX, no compilation)
    else:
        run(sample)  # the run builds the model's unbuilt layers: their weights are made for real
    seen.pop("", None)
    return list(seen.values())


def _image_size(sample):
    """The spatial size of a probe sample's image (its largest array), channels last."""
    arrays = [t for t in flatten(sample) if np.ndim(t) >= 3]
    if not arrays:
        return None
    shape = np.shape(max(arrays, key=np.ndim))
    return tuple(int(d) for d in shape[1:-1])


def _batch_size(sample):
    """The batch size of a probe sample (its largest array's first axis), or None."""
    arrays = [t for t in flatten(sample) if np.ndim(t) >= 1]
    return int(np.shape(max(arrays, key=np.ndim))[0]) if arrays else None


def _is_patch_grid(dims, image_size):
    """Whether ``(h, w)`` is the grid of integer-stride patches of an ``image_size`` image."""
    if image_size is None or len(image_size) != 2 or None in dims:
        return False
    fit = _layout.token_grid(int(dims[0]) * int(dims[1]), image_size, max_prefix=0)
    return fit is not None and fit[1] == tuple(int(d) for d in dims)


def _find(pairs, path):
    return next(l for p, l in pairs if p == path)


def auto_layer(model, sample, reshape=None, score=None, context=None):
    """The automatic target layer (see the module docstring).

    Nested models are looked through (their inner layers compete, the model
    itself does not); layers computed only from a globally pooled map are
    chosen only when nothing else is spatial. When token sequences follow
    the last spatial map (a vision transformer), the last of them whose patch
    tokens receive gradient from the top score is chosen instead
    (:func:`token_candidates`, :func:`carries_gradient`).

    Args:
        model: the model.
        sample: one input batch (batch 1) as the model takes it, for the
            probe run that records every layer's output shape.
        reshape: the explainer's ``reshape=`` (None, ``(h, w)`` or a
            callable), which token layers must fit.
        score: ``f(outputs) -> (N,)``, the score whose gradient the token
            layers must carry; by default the top entry of the first output.
        context: a context-manager factory entered around the gradient probe
            (the explainer's removal of the final softmax).

    Returns:
        The chosen :class:`LayerInfo`.

    Raises:
        ValueError: when the model has no spatial map and no token layer
            that carries gradient.
    """
    model = _saved_model.adapt(model)
    infos = [i for i in trace_layers(model, sample) if not is_container(i.layer)]
    spatial = [i for i in infos if i.is_spatial]
    # Not a segmenter's per-pixel logits (what is explained, not a feature map), nor a
    # layer run more than once (its capture would be its last call only), nor a layer
    # inside a custom layer that returns several maps (one level of a feature pyramid).
    heads = _logit_layers(model)
    branches = tuple(i.path + "/" for i in infos if i.output_shape is None and _children(i.layer))
    # Nor what an attention layer computes inside: its scores and probabilities (N, heads, L, L),
    # or a windowed attention's (N * windows, ...) tensors, whose first axis is not the batch.
    attention = tuple(i.path + "/" for i in infos if type(i.layer).__name__.endswith("Attention"))
    batch = _batch_size(sample)
    per_image = _per_image_tokens(model, infos, sample, batch, attention)
    if per_image is not None:
        return per_image
    spatial = [i for i in spatial if id(i.layer) not in heads and i.calls == 1
               and not i.path.startswith(branches) and not i.path.startswith(attention)
               and i.output_shape[0] in (None, batch)] or spatial
    maps = [i for i in spatial if not i.pooled]
    last = (maps or spatial)[-1] if spatial else None
    tokens = [i for i in token_candidates(infos, last, _image_size(sample), reshape)
              if i.output_shape[0] in (None, batch) and i.calls == 1]
    tower = _vision_tower(model, infos, last) if len(flatten(sample)) > 1 else None
    if tower is not None:  # an image-text model: the image's tokens, not the text decoder's
        tokens = [i for i in tokens if i.path.startswith(tower)]
    if tokens:
        flows = carries_gradient(model, sample, tokens, reshape, score, context)
        chosen = [i for i, flow in zip(tokens, flows) if flow]
        if chosen:
            return chosen[-1]
    if last is None:
        rank = sample_rank(sample)
        shape = {1: "(N, T, C)", 2: "(N, H, W, C)", 3: "(N, D, H, W, C)"}[rank]
        found = (f" Its token layers {[i.path for i in tokens][-3:]} carry no gradient from the output "
                 f"to their patch tokens." if tokens else "")
        raise ValueError(
            f"Model {model.name!r} has no layer with a spatial {shape} output, so "
            f"there is nothing for a class-activation map to localize.{found} Class-activation "
            f"maps need a convolutional model (or a vision transformer's token layer: pass "
            f"`layer=` and, if its grid is not inferred, `reshape=`)."
        )
    return last


def _per_image_tokens(model, infos, sample, batch, attention):
    """A multi-image vision-language model's image tokens, or None for other models.

    Gemma 3 takes ``(N, images, H, W, C)`` next to its text inputs; its vision
    encoder (:func:`_names_vision_encoder`) runs on the ``N * images``
    images and returns each image's tokens ``(N * images, h * w, K)``, which
    its decoder receives. The last such layer of the encoder, whose tokens lie
    on the image's patch grid, is chosen (seen as ``(N, images, h, w, K)`` by
    :func:`keras_cam.layout.describe`).
    """
    arrays = [t for t in flatten(sample) if np.ndim(t) == 5]
    if len(arrays) != 1 or len(flatten(sample)) < 2 or batch is None:
        return None
    images, size = int(np.shape(arrays[0])[1]), tuple(int(d) for d in np.shape(arrays[0])[2:4])
    towers = tuple(path + "/" for path, layer in walk(model) if _names_vision_encoder(layer) and _children(layer))
    found = [i for i in infos if i.path.startswith(towers) and not i.path.startswith(attention)
             and i.output_shape is not None and len(i.output_shape) == 3 and i.calls == 1
             and i.output_shape[0] == images * batch and i.output_shape[1] is not None
             and _layout.token_grid(int(i.output_shape[1]), size, max_prefix=0) is not None]
    return found[-1] if found and towers else None


def _vision_tower(model, infos, last_map):
    """``"path/"`` of the outermost layer holding ``last_map`` whose class names a vision
    encoder (``*Vit*``, ``*Vision*``, ``*Image*Encoder*``), or None.

    In an image-text model (PaliGemma, CLIP, SigLIP) the text decoder's token
    sequences hold the image tokens next to the text's; only the vision
    tower's own tokens lie on the patch grid.
    """
    if last_map is None:
        return None
    found = None
    for path, layer in walk(model):
        if last_map.path.startswith(path + "/") and _names_vision_encoder(layer):
            if found is None or len(path) < len(found):
                found = path
    return None if found is None else found + "/"


def _names_vision_encoder(layer):
    """Whether ``layer``'s class names a vision encoder: ``*Vit*``, ``*Vision*``, ``*Image*Encoder*``."""
    name = type(layer).__name__.lower()
    return "vit" in name or "vision" in name or ("image" in name and "encoder" in name)


def token_candidates(infos, last_map, image_size, reshape=None):
    """The token layers that may be a 2-D model's automatic target, in execution order.

    A candidate is a token sequence ``(N, L, K)`` after ``last_map`` (the
    last spatial map, usually the patch embedding) that
    :func:`keras_cam.layout.describe` lays on a grid; when there is such a
    map, the grid must be the map's own ``(h, w)``: the tokens are its
    positions. A CNN whose head reshapes its map into a sequence of rows
    (an OCR model's ``(N, w, h*K)``) has no candidate.
    """
    if image_size is None or len(image_size) != 2:
        return []
    start = infos.index(last_map) + 1 if last_map is not None else 0
    grid = None
    if last_map is not None:
        first = getattr(last_map.layer, "data_format", None) == "channels_first"
        grid = tuple(int(d) for d in (last_map.output_shape[2:] if first else last_map.output_shape[1:-1]))
    found = []
    for info in infos[start:]:
        shape = info.output_shape
        if (shape is None or len(shape) != 3 or info.rank != 2 or isinstance(info.layer, _saved_model.GraphOp)
                or type(info.layer).__name__ in _NOT_TARGETS):
            continue
        fit = _layout.describe(shape, 2, image_size, reshape=None if callable(reshape) else reshape)
        if fit is not None and (grid is None or fit.grid == grid):
            found.append(info)
    return found


def probe_input(sample, seed=0):
    """A seeded random input shaped like ``sample``: uniform in [0, 1) for float
    arrays, the others (integer ids, masks) as they are.

    Zeros would make every patch token of a ViT equal, which hides whether a
    layer's patch tokens reach the output.
    """
    rng = np.random.default_rng(seed)

    def fill(t):
        a = np.asarray(t)
        return rng.uniform(size=a.shape).astype(a.dtype) if np.issubdtype(a.dtype, np.floating) else a
    return map_structure(fill, sample)


def top_score(outputs):
    """The default probe score: the largest entry of the first output, per example."""
    out = ops.cast(flatten(outputs)[0], "float32")
    return ops.max(ops.reshape(out, (int(out.shape[0]), -1)), axis=-1)


def carries_gradient(model, sample, infos, reshape=None, score=None, context=None, rtol=1e-6):
    """Per token layer, whether the gradient of ``score`` reaches its patch tokens.

    One forward and backward pass on :func:`probe_input`: the layers' outputs
    are watched, the gradient of ``sum score(outputs)`` is taken with respect
    to each, and the class / register tokens are dropped as the explainer's
    view drops them. A layer carries gradient when its patch tokens' largest
    gradient exceeds ``rtol`` times the largest over all of its tokens (not
    mere rounding). In a pre-norm ViT classified on its class token, every
    layer after the last block's attention has zero patch-token gradient:
    those tokens reach the class token only through attention.

    Args:
        model: the model.
        sample: one input as the model takes it (its shapes are used).
        infos: token layers (:class:`LayerInfo` with ``(N, L, K)`` outputs).
        reshape: the explainer's ``reshape=`` (a tuple grid, or None).
        score: ``f(outputs) -> (N,)``; by default :func:`top_score`.
        context: a context-manager factory entered around the forward pass.
        rtol: see above.

    Returns:
        A list of bools, one per layer of ``infos``.
    """
    image_size = _image_size(sample)

    x = as_tensors(probe_input(sample))

    def forward(tap):
        with contextlib.ExitStack() as stack:
            for info in {id(i.layer): i for i in infos}.values():
                stack.enter_context(wrapped_call(info.layer, lambda out, path=info.path: tap(path, out)))
            if context is not None:
                stack.enter_context(context())
            return (score or top_score)(model(x, training=False)), ()

    # Op by op, not compiled: on JAX a compiled probe is a new program for every explainer built
    # (3.6 s each on a ViT-Ti), while the primitives compiled op by op serve the next build.
    grads = _backend.tapped_gradients(forward)[3]
    flows = []
    for info in infos:
        g = grads.get(info.path)
        fit = _layout.describe(info.output_shape, 2, image_size, reshape=None if callable(reshape) else reshape)
        if g is None or fit is None:
            flows.append(False)
            continue
        patches = np.abs(np.asarray(_compat.to_host(fit.view(g)), np.float64))
        g = np.abs(np.asarray(_compat.to_host(g), np.float64))
        flows.append(bool(patches.size) and patches.max() > rtol * g.max())
    return flows


def _logit_layers(model):
    """The ids of the layers that compute ``model``'s outputs as per-pixel class
    scores: a final 1x1 convolution (a segmenter's head), with the activation
    and resizing layers after it, through nested models. A backbone's own output (an
    activation after a wider convolution) is not one."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return set()
    ids = set()
    for t in outputs or ():
        op, chain = _compat.producer(t), []
        while op is not None and type(op).__name__ in ("Activation", "Softmax", "ReLU", "Resizing", "UpSampling2D"):
            chain.append(op)
            try:
                op = _compat.producer(op.input)
            except (AttributeError, ValueError):
                op = None
        if op is not None and _compat.is_model(op):
            ids |= _logit_layers(op)
        elif op is not None and set(getattr(op, "kernel_size", None) or (0,)) == {1}:
            ids |= {id(op)} | {id(a) for a in chain}
    return ids


# ---------------------------------------------------------------------------
# Default target layers of known architectures


@dataclasses.dataclass(frozen=True)
class Default:
    """The default target layer of one architecture family.

    Attributes:
        family: what it is, for humans.
        model: regular expression the model's name must match in full.
        layer: regular expression for the target's name: the last matching
            layer of the model, or, with ``after``, the first one that
            follows the last layer matching ``after`` (for targets whose own
            name is generated, such as an activation after a named layer).
        after: see ``layer``.
    """

    family: str
    model: str
    layer: str
    after: str | None = None


DEFAULTS = (
    Default("VGG16", r"vgg16", r"block5_conv3"),
    Default("VGG19", r"vgg19", r"block5_conv4"),
    Default("ResNet50 / 101 / 152", r"resnet(50|101|152)", r"conv5_block\d+_out"),
    Default("ResNet50V2 / 101V2 / 152V2", r"resnet(50|101|152)v2", r"post_relu"),
    Default("DenseNet121 / 169 / 201", r"densenet(121|169|201)", r"relu"),
    Default("MobileNet", r"mobilenet_[\d.]+_\d+", r"conv_pw_13_relu"),
    Default("MobileNetV2", r"mobilenetv2_[\d.]+_\d+", r"out_relu"),
    # The hard-swish after the last 1x1 expansion (an Activation in Keras 3,
    # a Multiply in tf-keras); the layers after the global pooling are 1x1.
    Default("MobileNetV3Small / Large", r"(?i:mobilenetv3(small|large))",
            r"(activation|multiply)(_\d+)?", after=r"conv_1_bn|Conv_1/BatchNorm"),
    Default("EfficientNetB0-B7", r"efficientnetb[0-7]", r"top_activation"),
    Default("EfficientNetV2 B0-B3 / S / M / L", r"efficientnetv2-(b[0-3]|s|m|l)", r"top_activation"),
    Default("efficientnet package B0-B7 / L2", r"efficientnet-(b[0-7]|l2)", r"top_activation"),
    Default("Xception", r"xception", r"block14_sepconv2_act"),
    Default("InceptionV3", r"inception_v3", r"mixed10"),
    Default("InceptionResNetV2", r"inception_resnet_v2", r"conv_7b_ac"),
    # The residual sum that ends the last block (an op in Keras 3, a TFOpLambda in tf-keras).
    Default("ConvNeXt Tiny / Small / Base / Large / XLarge", r"convnext_(tiny|small|base|large|xlarge)",
            r"(tf\.__operators__\.)?add(_\d+)?", after=r".*_stage_3_block_\d+_(identity|stochastic_depth)"),
)

# What may follow a recognized backbone for its default to stay the last map:
# identity-at-inference layers on the map, then one global pooling or flatten,
# then layers on vectors.
_ON_MAP = frozenset({"Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                     "ActivityRegularization"})
_POOL = frozenset({"GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten"})
_ON_VECTOR = frozenset({"Dense", "Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                        "BatchNormalization", "LayerNormalization", "Activation", "Softmax", "ReLU",
                        "LeakyReLU", "ELU", "PReLU", "Flatten", "ActivityRegularization"})


def lookup(model):
    """``(Default, layer)`` when ``model`` itself is a known architecture, else None."""
    name = getattr(model, "name", "")
    for entry in DEFAULTS:
        if not re.fullmatch(entry.model, name):
            continue
        children = _children(model)
        names = [c.name for c in children]
        start = 0
        if entry.after:
            before = [i for i, n in enumerate(names) if re.fullmatch(entry.after, n)]
            if not before:
                continue
            start = before[-1] + 1
        hits = [i for i in range(start, len(names)) if re.fullmatch(entry.layer, names[i])]
        if hits:
            return entry, children[hits[0] if entry.after else hits[-1]]
    return None


def _has_static_order(model):
    return type(model).__name__ in ("Functional", "Sequential")


def _only_head(layers):
    stage = 0  # 0: on the map, 1: after the pooling
    for layer in layers:
        kind = type(layer).__name__
        if stage == 0 and kind in _ON_MAP:
            continue
        if stage == 0 and kind in _POOL:
            stage = 1
        elif stage == 1 and kind in _ON_VECTOR:
            continue
        else:
            return False
    return True


def default_layer(model):
    """The table's target for ``model``: ``(path, layer, Default)``, or None.

    Looks at the model itself, then (recursively) at a single recognized
    backbone nested in a functional model or Sequential that only a
    classifier head follows.
    """
    hit = lookup(model)
    if hit is not None:
        return hit[1].name, hit[1], hit[0]
    if not (_compat.is_model(model) and _has_static_order(model)):
        return None
    children = _children(model)
    nested = [i for i, c in enumerate(children) if _compat.is_model(c)]
    if len(nested) != 1 or not _only_head(children[nested[0] + 1:]):
        return None
    base = children[nested[0]]
    inner = default_layer(base)
    if inner is None:
        return None
    return f"{base.name}/{inner[0]}", inner[1], inner[2]


def static_output_shape(layer):
    """The output shape of ``layer`` in its model's graph (batch axis included), or None.

    Known without running the model for layers of functional models (called
    once); None for subclassed models, layers called several times and ops
    inside a SavedModel.
    """
    if isinstance(layer, _saved_model.GraphOp):
        return None
    try:
        out = layer.output
    except (AttributeError, ValueError, RuntimeError):
        return None
    shape = getattr(out, "shape", None)
    return None if shape is None else tuple(shape)


def nearest_feature_layers(model, path, rank, n=3):
    """Up to ``n`` paths of layers near ``path`` (in graph order) whose output is a feature
    map with ``rank`` spatial axes: what to suggest instead of a layer that is not one."""
    pairs = [(p, l) for p, l in walk(model) if not is_container(l)]
    where = next((k for k, (p, _) in enumerate(pairs) if p == path), None)
    found = []
    for k, (p, l) in enumerate(pairs):
        shape = static_output_shape(l)
        if shape is not None and LayerInfo(p, l, shape, rank=rank).is_spatial:
            found.append((abs(k - where) if where is not None else -k, p))
    return [p for _, p in sorted(found)[:n]]


def list_layers(model, sample=None):
    """The model's layers as target candidates, for humans.

    Args:
        model: a Keras model, or a loaded SavedModel (``tf.saved_model.load``),
            whose layers are then its graph's ops.
        sample: an input batch to probe with; by default zeros of the model's
            input shape.

    Returns:
        A list of ``(path, output_shape)`` in execution order; the usable
        targets are feature maps with the input's spatial axes (e.g.
        ``(N, h, w, K)`` for images) and, in a vision transformer, token
        sequences ``(N, L, K)``.

    Example:
        >>> for path, shape in keras_cam.list_layers(model):
        ...     print(path, shape)
    """
    model = _saved_model.adapt(model)
    if sample is None:
        sample = probe_sample(model)
        if sample is None:
            raise ValueError(
                f"Model {model.name!r} has no fixed input shape; pass `sample=` (one "
                f"input batch) so its layers can be run and listed."
            )
    return [(i.path, i.output_shape) for i in trace_layers(model, sample)]

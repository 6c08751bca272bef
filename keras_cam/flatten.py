"""``flatten_model``: one functional model with the nested models inlined.

Explainers do not need it (they reach nested layers by path while the model
runs, see ``graph.py``); it is for users who want the classic
``keras.Model(model.inputs, [inner_layer.output, model.output])`` recipe,
which fails on a nested model under Keras 3 ("not connected to inputs") and
on a never-called Sequential. ``flatten_model(model, outputs=[...])`` builds
that two-output model directly.

How: new ``Input`` tensors are passed through the model's own graph, node by
node, calling the *same layer objects*; a nested functional model or
Sequential is not called as one layer but entered recursively, so its layers
become layers of the new model. Nothing is copied and the original model is
not changed (its layers only gain a node, as any shared layer does).
"""

from __future__ import annotations

from keras_cam import _compat
from keras_cam import layers as _layers
from keras_cam import saved_model as _saved_model


def _flat(x):
    """The leaves of a nest of lists, tuples and dicts (dict values by sorted key), in order."""
    if isinstance(x, dict):
        return [leaf for key in _sorted_keys(x) for leaf in _flat(x[key])]
    if isinstance(x, (list, tuple)):  # list subclasses too (tf-keras's tracked lists)
        return [leaf for item in x for leaf in _flat(item)]
    return [x]


def _sorted_keys(d):
    try:
        return sorted(d)
    except TypeError:  # keys of mixed types: their own order
        return list(d)


def _map(fn, x):
    """``x`` with ``fn`` applied to every leaf; lists, tuples (named too) and dicts rebuilt."""
    if isinstance(x, dict):
        return {key: _map(fn, value) for key, value in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_map(fn, item) for item in x))
    if isinstance(x, tuple):
        return tuple(_map(fn, item) for item in x)
    if isinstance(x, list):
        return [_map(fn, item) for item in x]
    return fn(x)


def _kind(model):
    name = type(model).__name__
    if name == "Sequential":
        return "sequential"
    if hasattr(model, "_nodes_by_depth") and (
        getattr(model, "_is_graph_network", False) or hasattr(model, "operations")
    ):
        return "functional"
    return None


def _nodes(model):
    """``(operation, args, kwargs, outputs)`` of a functional model's calls, in execution order."""
    out = []
    by_depth = model._nodes_by_depth  # both Keras 3 and tf-keras keep this map
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.is_input:
                continue
            arguments = getattr(node, "arguments", None)
            if arguments is not None:  # Keras 3
                op, args, kwargs = node.operation, arguments.args, arguments.kwargs
            else:  # tf-keras
                op, args, kwargs = node.layer, node.call_args, node.call_kwargs
            out.append((op, args, kwargs, node.outputs))
    return out


def _output_structure(model):
    for attr in ("_outputs_struct", "_nested_outputs"):
        struct = getattr(model, attr, None)
        if struct is not None:
            return struct
    outputs = model.outputs
    return outputs[0] if len(outputs) == 1 else outputs


def _inline(model, inputs, training, seen):
    """Apply ``model`` to ``inputs`` layer by layer; returns its outputs.

    ``seen`` maps ``id(layer)`` to the layer's latest output in the new graph.
    """
    kind = _kind(model)
    if kind == "sequential":
        x = inputs
        for layer in model.layers:
            x = _apply(layer, (x,), {}, training, seen)
        return x
    sources = list(model.inputs)
    given = _flat(inputs)
    if len(sources) != len(given):
        raise ValueError(
            f"Model {model.name!r} takes {len(sources)} inputs but is called on {len(given)} "
            f"tensors; flatten_model cannot inline it."
        )
    mapped = {id(s): g for s, g in zip(sources, given)}

    def look_up(x):
        return mapped.get(id(x), x)

    for op, args, kwargs, outputs in _nodes(model):
        args = _map(look_up, args)
        kwargs = _map(look_up, kwargs)
        result = _apply(op, args, kwargs, training, seen)
        for old, new in zip(_flat(outputs), _flat(result)):
            mapped[id(old)] = new
    return _map(look_up, _output_structure(model))


def _apply(op, args, kwargs, training, seen):
    """Call one operation; enter nested functional models and Sequentials."""
    kwargs = dict(kwargs)
    if "training" in kwargs and kwargs["training"] is not None:
        training = kwargs["training"]  # e.g. base(x, training=False): keep BatchNorm frozen inside
    if _compat.is_model(op) and _kind(op) is not None:
        inner = args[0] if args else kwargs.pop("inputs")
        out = _inline(op, inner, training, seen)
    else:
        if training is not None and _compat.is_layer(op):
            kwargs["training"] = training
        out = op(*args, **kwargs)
    seen[id(op)] = out
    return out


def flatten_model(model, outputs=None, input_shape=None):
    """A new functional model computing the same outputs, with nested models inlined.

    Every layer of every nested functional model or Sequential becomes a
    layer of the returned model, found by its plain name
    (``flat.get_layer("top_activation")``). The returned model **shares the
    layer objects, and so the weights, of** ``model``: no weight is copied,
    training one trains the other, and ``model`` itself is not modified. A
    nested ``training=False`` call (the transfer-learning recipe) is kept for
    the inlined layers. Subclassed models nested inside stay single layers
    (they have no graph to inline); explainers reach inside them anyway.

    Because the layers are shared, Keras's ``layer.output`` still means the
    output of a layer's *first* call, in the original model; pass ``outputs``
    to get inner layers' outputs in the new graph.

    Args:
        model: a functional model or Sequential (Keras 3 or tf-keras).
        outputs: optional layer names or paths (as for explainers,
            ``"efficientnetb0/top_activation"``). The new model then returns
            ``[output of each of these layers..., model's output(s)...]``: the
            two-output model of a hand-written Grad-CAM.
        input_shape: the input shape without the batch axis, needed only for a
            Sequential that was never built (no ``Input``, never called).

    Returns:
        A functional model named ``"<model.name>_flat"``.

    Raises:
        TypeError: for a subclassed model or a SavedModel, with what to do.
        ValueError: when two inlined layers share a name (Keras requires
            unique names), a never-built Sequential has no ``input_shape``, or
            a layer of ``outputs`` is inside a subclassed sub-model.

    Example:
        >>> flat = keras_cam.flatten_model(model)   # EfficientNet nested as one layer
        >>> grad_model = keras_cam.flatten_model(model, outputs=["top_activation"])
        >>> activations, predictions = grad_model(images)
    """
    if _saved_model.is_saved_model(model) or isinstance(model, _saved_model.FrozenModel):
        raise TypeError(
            "flatten_model needs a Keras model; a SavedModel has no Keras layers to inline. "
            "Explain it directly: keras_cam.GradCAM(tf.saved_model.load(path)) reaches its ops."
        )
    if not _compat.is_model(model):
        raise TypeError(f"flatten_model needs a Keras model; received {type(model).__name__}.")
    if _kind(model) is None:
        raise TypeError(
            f"Model {model.name!r} is a subclassed model: its computation is Python code, not a "
            f"graph, so it cannot be flattened. Explain it directly (keras_cam.GradCAM(model, "
            f"layer='path/to/layer') intercepts its layers while it runs), or rebuild it as a "
            f"functional model: inputs = keras.Input(shape); model_fn = keras.Model(inputs, "
            f"model(inputs))."
        )
    keras = _compat.keras_of(model)
    try:
        sources = list(model.inputs or [])
    except (AttributeError, ValueError):
        sources = []
    if input_shape is not None:
        inputs = [keras.Input(shape=tuple(input_shape))]
    elif sources:
        inputs = [
            keras.Input(shape=tuple(s.shape[1:]), dtype=s.dtype, name=getattr(_compat.producer(s), "name", None))
            for s in sources
        ]
    else:
        raise ValueError(
            f"Model {model.name!r} was never built, so its input shape is unknown; pass "
            f"`input_shape=` (without the batch axis), e.g. flatten_model(model, input_shape=(224, 224, 3))."
        )
    wanted = [_layers.resolve(model, name) for name in (outputs or [])]
    feed = inputs[0] if len(inputs) == 1 else inputs
    seen = {}
    result = _inline(model, feed, None, seen)
    if wanted:
        missing = [path for path, layer in wanted if id(layer) not in seen]
        if missing:
            raise ValueError(
                f"Layers {missing} are inside a subclassed sub-model, which flatten_model keeps "
                f"as one layer, so their outputs are not in the flat graph. Explain the model "
                f"directly (explainers reach them), or rebuild that sub-model as a functional model."
            )
        result = [seen[id(layer)] for _, layer in wanted] + _flat(result)
    try:
        return keras.Model(feed, result, name=f"{model.name}_flat")
    except ValueError as err:
        if "unique" not in str(err):
            raise
        raise ValueError(
            f"flatten_model cannot inline {model.name!r}: layers of different nested models share "
            f"a name, and a Keras model needs unique layer names ({err}). Explainers do not need "
            f"flattening: pass the nested path instead, e.g. layer='base/conv'."
        ) from err

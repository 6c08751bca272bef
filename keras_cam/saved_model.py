"""SavedModel and TF-Hub models: reaching the layers inside a frozen graph.

A model loaded with ``tf.saved_model.load``, or wrapped in a Keras model by
``tensorflow_hub.KerasLayer`` (tf-keras) or ``keras.layers.TFSMLayer``
(Keras 3), has no Keras layers inside: only a TensorFlow function. To reach
its layers anyway, keras-cam

1. traces the function once and freezes it
   (``convert_variables_to_constants_v2``: variables become constants and the
   nested function calls are inlined into one flat graph);
2. treats every operation whose output is a 4-D float tensor as a candidate
   target "layer", named by its op name (wrapper scopes such as
   ``StatefulPartitionedCall/`` removed, so ``"model/conv2d/Relu"`` reads like
   a layer path);
3. runs the graph in pieces: ``input -> activation`` and
   ``(input, activation) -> output``, each a ``tf.function`` that imports the
   frozen graph with those tensors fed. The activation is an ordinary tensor
   between the two pieces, so a ``GradientTape`` that watches it gets
   ``dS/dA``, exactly as for a Keras layer. A custom gradient recorded in the
   graph (``tf.nn.silu``/swish is one) names a function that only existed
   where the model was saved; the graph's own ops are differentiated instead,
   which gives the same derivative.

Within a Keras model the wrapper layer's ``call`` is replaced by those pieces
while an explainer runs (the same temporary interception as for Keras layers,
see ``_patch.py``), so the rest of the model is untouched.

**Linearization.** When the function's output is produced by a ``Softmax``
(or ``Sigmoid``) op, possibly behind ``Identity`` ops, the input of that op
is taken as the output while the explainer runs: scores are the logits, as
for Keras models. The activation is detected from the graph, so
``output_activation`` reports it.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
import weakref

from keras_cam import _compat
from keras_cam._patch import replaced_call


class _TensorFlow:
    """``tensorflow``, imported on first use: SavedModel graphs are TensorFlow by nature,
    but importing keras-cam on the JAX or PyTorch backend must not import it."""

    def __getattr__(self, name):
        return getattr(importlib.import_module("tensorflow"), name)


tf = _TensorFlow()

# Keras layers that run a SavedModel function: tensorflow_hub.KerasLayer, keras.layers.TFSMLayer.
_WRAPPERS = ("KerasLayer", "TFSMLayer")

# Ops that move or hold data but compute no feature: never candidate layers.
_NOT_FEATURES = frozenset({
    "Const", "Identity", "IdentityN", "Placeholder", "PlaceholderWithDefault", "NoOp",
    "ReadVariableOp", "StopGradient", "Snapshot", "Shape", "Reshape", "Squeeze",
    "ExpandDims", "Transpose", "Cast", "Pad", "PadV2", "MirrorPad",
    "MaxPool", "MaxPoolV2", "AvgPool", "Mean", "Max", "Min", "Sum",
    "ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic",
})
# Reductions: over the spatial axes of a map they are a global pooling.
_REDUCTIONS = frozenset({"Mean", "Max", "Min", "Sum"})
_PASS_THROUGH = frozenset({"Identity", "IdentityN", "StopGradient", "Snapshot"})
_SCOPES = re.compile(r"(^|/)(Stateful)?PartitionedCall(_\d+)?(?=/)")


def is_wrapper(layer) -> bool:
    """True for a Keras layer that runs a SavedModel (TF-Hub ``KerasLayer``, ``TFSMLayer``)."""
    return _compat.is_layer(layer) and type(layer).__name__ in _WRAPPERS


def is_saved_model(obj) -> bool:
    if "tensorflow" not in sys.modules:  # nothing of TensorFlow's can have been loaded
        return False
    """True for what ``tf.saved_model.load`` returns, or a TensorFlow function."""
    if _compat.is_layer(obj) or isinstance(obj, FrozenModel):
        return False
    if hasattr(obj, "signatures") and not callable(getattr(obj, "signatures")):
        return True
    return isinstance(obj, (tf.types.experimental.ConcreteFunction, tf.types.experimental.GenericFunction))


def _display_name(op_name):
    name = _SCOPES.sub("", op_name).lstrip("/")
    return name or op_name


class GraphOp:
    """An operation inside a frozen SavedModel graph, seen as a target layer.

    Attributes:
        name: the op name without wrapper scopes (``"model/conv2d/Relu"``).
        op_name: the op's full name in the frozen graph.
        owner: what runs the graph: the ``KerasLayer``/``TFSMLayer`` in a Keras
            model, or the :class:`FrozenModel`.
    """

    def __init__(self, name, op_name, owner):
        self.name = name
        self.op_name = op_name
        self._owner = weakref.ref(owner)  # the op list is cached per owner: no cycle through the cache

    @property
    def owner(self):
        return self._owner()

    def __repr__(self):
        return f"GraphOp({self.name!r})"


class FrozenGraph:
    """One traced SavedModel function, frozen, and run in pruned pieces.

    A piece is a ``tf.function`` that imports the frozen graph with some
    tensors fed (``input_map``) and returns others: importing is done by
    TensorFlow's C++ importer, and the ops a piece does not need are pruned
    when it runs.

    Args:
        concrete_fn: a ``ConcreteFunction`` with one tensor input.
    """

    def __init__(self, concrete_fn):
        graph_def, inputs, outputs = _freeze(concrete_fn)
        for node in graph_def.node:
            # A custom gradient (tf.nn.silu, swish) leaves an IdentityN naming a gradient function
            # that only existed in the process that saved the model: differentiate the ops instead.
            if "_gradient_op_type" in node.attr:
                del node.attr["_gradient_op_type"]
            # Colocation hints may name nodes that a piece leaves out: none, as an empty list
            # (importing an op without the attribute costs a caught exception each).
            node.attr["_class"].list.Clear()
            node.attr["_class"].list.SetInParent()
        if len(inputs) != 1:
            raise ValueError(
                f"keras-cam explains SavedModel functions with one image input; this one takes "
                f"{len(inputs)} inputs ({inputs})."
            )
        self._graph_def = graph_def
        self.graph = g = tf.Graph()  # for looking at the ops; never run
        with g.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        self.input = g.get_tensor_by_name(inputs[0])
        self.outputs = [g.get_tensor_by_name(name) for name in outputs]
        self.structure = concrete_fn.structured_outputs
        self._pieces = {}
        self._order = {op.name: i for i, op in enumerate(g.get_operations())}  # import order is topological
        self.heads = [_head(t) for t in self.outputs]
        # Feature maps have the input's rank: (N, T, C), (N, H, W, C) or (N, D, H, W, C).
        self.map_rank = self.input.shape.rank if self.input.shape.rank in (3, 4, 5) else 4
        self.ops = self._candidates(g)
        self._pooled = _pooled_ops(g, self.map_rank)

    def _candidates(self, g):
        ops = [
            op for op in g.get_operations()
            if op.type not in _NOT_FEATURES and op.outputs and op.outputs[0].shape.rank == self.map_rank
            and op.outputs[0].dtype.is_floating
        ]
        names = [_display_name(op.name) for op in ops]
        clashes = {n for n in names if names.count(n) > 1}
        return [(op.name if n in clashes else n, op.name) for n, op in zip(names, ops)]

    def tensor(self, op_name):
        return self.graph.get_operation_by_name(op_name).outputs[0]

    def is_pooled(self, op_name):
        return op_name in self._pooled

    def shapes(self, input_shape):
        """Output shape of every candidate op for an input of ``input_shape``."""
        static = {o: tuple(self.tensor(o).shape) for _, o in self.ops}
        if all(d is not None for s in static.values() for d in s[1:]):
            return {o: (input_shape[0],) + s[1:] for o, s in static.items()}
        scratch = tf.Graph()
        with scratch.as_default():
            x = tf.compat.v1.placeholder(self.input.dtype, input_shape)
            tf.graph_util.import_graph_def(self._graph_def, input_map={self.input.name: x}, name="")
            return {o: tuple(scratch.get_operation_by_name(o).outputs[0].shape) for o in static}

    def _piece(self, feeds, fetches):
        """``f(*feed values) -> [fetched tensors]`` (feeds and fetches: tensors of ``self.graph``)."""
        key = (tuple(t.name for t in feeds), tuple(t.name for t in fetches))
        if key not in self._pieces:
            needed = _sub_graph(self._graph_def, [t.op.name for t in fetches])
            feed_names, fetch_names = list(key[0]), list(key[1])
            specs = [tf.TensorSpec([None] + t.shape.as_list()[1:] if t.shape.rank else None, t.dtype)
                     for t in feeds]

            def piece(*values):
                return tf.graph_util.import_graph_def(
                    needed, input_map=dict(zip(feed_names, values)), return_elements=fetch_names,
                    name="frozen")

            self._pieces[key] = tf.function(piece, input_signature=specs, autograph=False)
        return self._pieces[key]

    def run(self, x, taps=None, linearize=False):
        """Run the graph on ``x``; ``taps[op_name](activation)`` sees (and may replace) inner tensors.

        With ``linearize``, an output produced by a softmax/sigmoid is replaced
        by that activation's input (the logits).
        """
        x = tf.cast(x, self.input.dtype)
        feeds, values = [self.input], [x]
        for op_name in sorted(taps or {}, key=self._order.__getitem__):
            t = self.tensor(op_name)
            act = self._piece(feeds, [t])(*values)[0]
            feeds.append(t)
            values.append(taps[op_name](act))
        outs = [
            h[1] if (linearize and h[0] is not None) else o for o, h in zip(self.outputs, self.heads)
        ]
        flat = self._piece(feeds, outs)(*values)
        return tf.nest.pack_sequence_as(self.structure, flat)


def _freeze(fn):
    """``(graph_def, input names, output names)`` of ``fn`` with variables as constants, calls inlined.

    ``convert_variables_to_constants_v2`` does this and then wraps the result
    in a new ConcreteFunction, which takes most of its time (seconds for an
    EfficientNet) and is not needed here: its two steps are called directly
    when this TensorFlow has them.
    """
    try:
        from tensorflow.python.framework import convert_to_constants as c2c

        data = c2c._FunctionConverterDataInEager(func=fn, lower_control_flow=True, aggressive_inlining=True)
        graph_def, converted = c2c._replace_variables_by_constants(converter_data=data)
        captures = fn.graph.internal_captures
        constant = {id(captures[i]) for i in converted}
        inputs = [t.name for t in fn.inputs if id(t) not in constant]
    except (ImportError, AttributeError, TypeError):
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
        frozen = convert_variables_to_constants_v2(fn, aggressive_inlining=True)
        graph_def, inputs = frozen.graph.as_graph_def(), [t.name for t in frozen.inputs]
    return graph_def, inputs, [t.name for t in fn.outputs]


def _sub_graph(graph_def, names):
    """The part of ``graph_def`` that computes the ops ``names`` (their ancestors)."""
    nodes = {n.name: n for n in graph_def.node}
    keep, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(i.lstrip("^").split(":")[0] for i in nodes[name].input)
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    out.node.extend(n for n in graph_def.node if n.name in keep)
    return out


def _head(tensor):
    """``(kind, logits)`` when ``tensor`` is a softmax/sigmoid (behind Identity ops), else ``(None, None)``."""
    while tensor.op.type in _PASS_THROUGH:
        index = tensor.value_index if tensor.op.type == "IdentityN" else 0
        tensor = tensor.op.inputs[index]
    kind = {"Softmax": "softmax", "Sigmoid": "sigmoid"}.get(tensor.op.type)
    return (kind, tensor.op.inputs[0]) if kind else (None, None)


def _pooled_ops(g, rank=4):
    """Ops computed only from a global pooling of a map (a reduction over its spatial axes, or
    a flatten); maps have ``rank`` axes (4 for images)."""
    pooled = set()
    for op in g.get_operations():
        data = [t for t in op.inputs if t.op.type != "Const"]
        spatial_in = [t for t in data if t.shape.rank == rank]
        out = op.outputs[0] if op.outputs else None
        if out is not None and spatial_in and (
            (op.type in _REDUCTIONS and (out.shape.rank != rank or all(d == 1 for d in out.shape[1:-1])))
            or (op.type in ("Reshape", "Squeeze") and out.shape.rank is not None and out.shape.rank < rank)
        ):
            pooled.add(op.name)
        elif data and all(t.op.name in pooled for t in data):
            pooled.add(op.name)
    return pooled


# ---------------------------------------------------------------------------
# Tracing what a SavedModel object or a wrapper layer computes


def _tensor_entry(fn):
    """``(call(x), TensorSpec)`` for a function of one image tensor, from its saved signatures."""
    concretes = [fn] if isinstance(fn, tf.types.experimental.ConcreteFunction) else list(
        getattr(fn, "concrete_functions", None) or []
    )
    if not concretes and getattr(fn, "input_signature", None):
        concretes = [fn.get_concrete_function()]
    for cf in concretes:
        args, kwargs = cf.structured_input_signature
        if args and isinstance(args[0], (list, tuple)) and len(args[0]) == 1 \
                and isinstance(args[0][0], tf.TensorSpec) and len(args) == 1:
            return (lambda x: fn([x])), args[0][0]  # a functional model exported with inputs=[...]
        if args and isinstance(args[0], tf.TensorSpec):
            rest = tuple(args[1:])
            if any(isinstance(a, tf.TensorSpec) for a in tf.nest.flatten(rest)):
                continue  # more than one tensor input
            if any(isinstance(a, bool) and a for a in rest):
                continue  # the training=True variant of a Keras `__call__`
            return (lambda x: fn(x, *rest)), args[0]
        if not args and len(kwargs) == 1:
            (key, spec), = kwargs.items()
            if isinstance(spec, tf.TensorSpec):
                return (lambda x: fn(**{key: x})), spec
    return None, None


def _endpoint(obj):
    """The function of a loaded SavedModel to explain: ``serve``, ``serving_default``, ``__call__``."""
    if isinstance(obj, (tf.types.experimental.ConcreteFunction, tf.types.experimental.GenericFunction)):
        candidates = [("the function", obj)]
    else:
        signatures = getattr(obj, "signatures", {}) or {}
        candidates = [(f"`{n}`", getattr(obj, n)) for n in ("serve",) if hasattr(obj, n)]
        candidates += [(f"signature {k!r}", signatures[k]) for k in ("serving_default",) if k in signatures]
        if hasattr(type(obj), "__call__") and hasattr(obj, "__call__") and hasattr(obj.__call__, "concrete_functions"):
            candidates.append(("`__call__`", obj.__call__))
    for label, fn in candidates:
        call, spec = _tensor_entry(fn)
        if call is not None:
            return label, call, spec
    raise ValueError(
        "keras-cam found no function of one image tensor in this SavedModel (tried `serve`, the "
        "'serving_default' signature and `__call__`). Pass the function to explain instead, e.g. "
        "`keras_cam.GradCAM(loaded.signatures['my_signature'])`."
    )


def _trace(call, spec):
    with tf.init_scope():
        return tf.function(call).get_concrete_function(tf.TensorSpec(spec.shape, spec.dtype))


class FrozenModel:
    """A loaded SavedModel (or TensorFlow function) as a model that explainers accept.

    ``keras_cam.GradCAM(tf.saved_model.load(path))`` builds one for you; its
    layers are the frozen graph's ops (see the module docstring). Calling it
    runs the frozen function, with the SavedModel's own outputs.

    Args:
        obj: what ``tf.saved_model.load`` returned, one of its functions
            (``loaded.signatures["..."]``, ``loaded.serve``), or a ``tf.function``
            with an input signature.
        name: a name for messages (default ``"saved_model"``).

    Attributes:
        source: ``obj``.
        frozen: the :class:`FrozenGraph`.
        endpoint: which function of ``obj`` is explained.
    """

    def __init__(self, obj, name="saved_model"):
        self.source = obj
        self.name = name
        self.endpoint, call, spec = _endpoint(obj)
        self.frozen = FrozenGraph(_trace(call, spec))
        self._layers = [GraphOp(n, o, self) for n, o in self.frozen.ops]

    def __repr__(self):
        return f"FrozenModel({self.name!r}, endpoint={self.endpoint})"

    def __call__(self, x, training=False, **kwargs):
        return self.call(x)

    def call(self, x):
        return self.frozen.run(x)

    @property
    def layers(self):
        return list(self._layers)

    @property
    def inputs(self):
        return [self.frozen.input]

    @property
    def outputs(self):
        return list(self.frozen.outputs)

    @property
    def output_names(self):
        s = self.frozen.structure
        if isinstance(s, dict):
            return list(s)
        return [f"output_{i}" for i in range(len(self.frozen.outputs))]


# id(loaded SavedModel) -> its FrozenModel, while something (an explainer) keeps that alive;
# the FrozenModel holds the object, so its id cannot be reused meanwhile.
_ADAPTED = weakref.WeakValueDictionary()


def _all_layers(model):
    """Every layer of ``model`` at any nesting depth (without importing keras_cam.layers)."""
    stack, seen = [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(getattr(layer, "layers", None) or [])


def adapt(model):
    """``model`` itself, or the :class:`FrozenModel` of a loaded SavedModel (frozen once while in use)."""
    if not is_saved_model(model):
        if _compat.is_model(model) and any(is_wrapper(l) for l in _all_layers(model)):
            from keras_cam import backend
            backend.require_tensorflow("A model with a SavedModel layer (TF-Hub KerasLayer, TFSMLayer)")
        return model
    from keras_cam import backend
    backend.require_tensorflow("Explaining a loaded SavedModel (tf.saved_model.load)")
    frozen = _ADAPTED.get(id(model))
    if frozen is None or frozen.source is not model:
        frozen = _ADAPTED[id(model)] = FrozenModel(model)
    return frozen


# ---------------------------------------------------------------------------
# Wrapper layers inside Keras models

_FROZEN = weakref.WeakKeyDictionary()  # wrapper layer -> {input shape: FrozenGraph}
_OPS = weakref.WeakKeyDictionary()  # wrapper layer -> [GraphOp], so a name resolves to one object


def _known_input_shape(layer):
    try:
        shape = layer.input.shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    return None if shape is None or len(shape) != 4 else tuple(shape)


def frozen_graph(owner, input_shape=None):
    """The :class:`FrozenGraph` that ``owner`` (a wrapper layer or a FrozenModel) runs, or None.

    For a wrapper layer it is traced from the layer's own ``call`` for
    ``input_shape`` (default: the shape the layer was built on), and cached.
    """
    if isinstance(owner, FrozenModel):
        return owner.frozen
    shape = input_shape or _known_input_shape(owner)
    if shape is None:
        return None
    key = (None,) + tuple(int(d) if d is not None else None for d in shape[1:])
    cache = _FROZEN.setdefault(owner, {})
    if key not in cache:
        def call(x):
            try:
                return owner.call(x, training=False)
            except TypeError:
                return owner.call(x)
        cache[key] = FrozenGraph(_trace(call, tf.TensorSpec(key, tf.float32)))
    return cache[key]


def graph_ops(owner):
    """The candidate layers (:class:`GraphOp`) inside a wrapper layer or FrozenModel."""
    if isinstance(owner, FrozenModel):
        return owner.layers
    if owner not in _OPS:
        frozen = frozen_graph(owner)
        if frozen is None:
            return []
        _OPS[owner] = [GraphOp(n, o, owner) for n, o in frozen.ops]
    return list(_OPS[owner])


def head_kind(owner):
    """"softmax"/"sigmoid" when the graph's (first) output is one, else None."""
    frozen = frozen_graph(owner)
    return None if frozen is None else frozen.heads[0][0]


def op_infos(owner, input_shape):
    """``[(op_name, output_shape, pooled)]`` in execution order, for ``owner`` run on ``input_shape``."""
    frozen = frozen_graph(owner, input_shape)
    if frozen is None:
        return []
    shapes = frozen.shapes(tuple(input_shape))
    return [(o, shapes[o], frozen.is_pooled(o)) for _, o in frozen.ops]


def intercept(owner, taps, linearize=False):
    """While active, ``owner`` runs its frozen graph with ``taps`` (op name -> callback)."""
    def call(inner, x, *args, **kwargs):
        frozen = frozen_graph(owner, tuple(x.shape))
        return frozen.run(x, taps, linearize=linearize)

    if isinstance(owner, FrozenModel) or is_wrapper(owner):
        return replaced_call(owner, call)
    return contextlib.nullcontext()


__all__ = ["FrozenGraph", "FrozenModel", "GraphOp", "adapt", "is_saved_model", "is_wrapper"]

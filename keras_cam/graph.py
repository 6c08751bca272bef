"""The auxiliary model: target-layer activations next to the model's scores.

Rebuilding a graph that outputs an inner layer fails for nested models under
Keras 3 ("not connected to inputs"), for never-called Sequentials and for
subclassed models. Instead, :class:`ActivationGraph` runs the user's model as
it is and intercepts the target layers' calls while it runs (see
``_patch.py``): the intercepted outputs are the activations, and because they
are the very tensors the rest of the model consumes, a ``GradientTape`` that
watches them yields ``dS/dA``. The interception is active only while a
forward pass is traced, and is always undone, so the model is never changed.

The model's final softmax or sigmoid is removed in the same way while the
explainer runs (``linearize=True``): scores are pre-activation logits, whose
gradients give the maps of the papers; differentiating probabilities does not.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from keras_cam import _compat
from keras_cam import layers as _layers
from keras_cam import saved_model as _saved_model
from keras_cam._patch import patched_attr, replaced_call, wrapped_call


def _activation_kind(fn_or_name):
    """"softmax", "sigmoid" or None, from an activation function or its name."""
    name = fn_or_name if isinstance(fn_or_name, str) else getattr(fn_or_name, "__name__", "")
    name = (name or "").lower()
    if "softmax" in name:
        return "softmax"
    if "sigmoid" in name:
        return "sigmoid"
    return None


def _identity(x, *args, **kwargs):
    return x


def _output_index(model, output):
    if output is None or isinstance(output, (int, np.integer)):
        return int(output or 0)
    names = list(getattr(model, "output_names", None) or [])
    if output in names:
        return names.index(output)
    raise ValueError(f"`output={output!r}` is not an output of model {model.name!r}; its outputs are {names}.")


def find_head(model, output=None):
    """The operation that produces the selected output, and its final activation.

    Returns:
        ``(op, kind, how)``: ``kind`` is ``"softmax"``, ``"sigmoid"`` or None;
        ``how`` says how to remove it: ``"activation"`` (an activation fused
        into a Dense/Conv/Activation layer), ``"call"`` (a Softmax layer or
        op whose call is the activation) or ``"frozen"`` (a Softmax op inside
        a SavedModel, see ``saved_model.py``). ``(None, None, None)`` when the
        model has no static graph to look at (subclassed models).
    """
    if isinstance(model, _saved_model.FrozenModel):
        kind = model.frozen.heads[_output_index(model, output)][0]
        return model, kind, ("frozen" if kind else None)
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if outputs:
        op = _compat.producer(outputs[_output_index(model, output)])
    else:
        children = _layers._children(model)
        op = children[-1] if children and type(model).__name__ == "Sequential" else None
    if op is None:
        return None, None, None
    if _compat.is_model(op):
        return find_head(op)
    if _saved_model.is_wrapper(op):
        kind = _saved_model.head_kind(op)
        return op, kind, ("frozen" if kind else None)
    kind = _activation_kind(getattr(op, "activation", None))
    if kind is not None:
        return op, kind, "activation"
    cls = type(op).__name__.lower()
    if cls in ("softmax", "sigmoid"):
        return op, cls, "call"
    symbol = getattr(op, "symbol", "") or ""  # tf-keras wraps tf.nn.* as TFOpLambda
    kind = _activation_kind(getattr(op, "function", None)) or _activation_kind(symbol)
    if kind is not None:
        return op, kind, "call"
    return op, None, None


class ActivationGraph:
    """A model seen as ``images -> (activations of target layers, outputs)``.

    Args:
        model: the user's Keras model (never modified), or a loaded SavedModel
            (``tf.saved_model.load``), seen through ``saved_model.FrozenModel``.
        layers: list of target layers, each a path, a bare name, a layer or
            None (the automatic choice of :func:`keras_cam.layers.auto_layer`).
        output: which model output holds the class scores (index or name),
            for multi-output models.
        linearize: remove a final softmax/sigmoid so scores are logits.
    """

    def __init__(self, model, layers=(None,), output=None, linearize=True):
        model = _saved_model.adapt(model)
        if not (_compat.is_model(model) or isinstance(model, _saved_model.FrozenModel)):
            raise TypeError(
                f"`model` must be a Keras model or a loaded SavedModel (tf.saved_model.load); "
                f"received {type(model).__name__}."
            )
        inputs = getattr(model, "inputs", None) if _compat.is_model(model) else None
        if inputs and len(inputs) > 1:
            raise ValueError(
                f"Model {model.name!r} has {len(inputs)} inputs; keras-cam explains models with one "
                f"image input. Wrap it in a one-input model whose call supplies the other inputs "
                f"(a small subclassed keras.Model: `call(self, images): return "
                f"self.inner([images, self.others])`) and explain the wrapper; its layers are "
                f"reached by path, e.g. layer='{model.name}/<layer>'."
            )
        self.model = model
        self.output = output
        self.linearize = linearize
        self.head, self.output_activation, self._how = find_head(model, output)
        self.num_classes = self._static_num_classes()
        self._specs = list(layers)
        self.layers = [None] * len(self._specs)
        self.paths = [None] * len(self._specs)
        for i, spec in enumerate(self._specs):
            if spec is not None:
                self.paths[i], self.layers[i] = _layers.resolve(model, spec)
            elif (known := _layers.default_layer(model)) is not None:  # a known architecture
                self.paths[i], self.layers[i] = known[:2]
        shape = _layers.probe_input_shape(model)
        if shape is not None and None in self.layers:
            self.prepare(np.zeros(shape, dtype="float32"))

    def _static_num_classes(self):
        try:
            outputs = self.model.outputs
        except (AttributeError, ValueError):
            return None
        if not outputs:
            return None
        shape = outputs[_output_index(self.model, self.output)].shape
        if len(shape) != 2 or shape[-1] is None:
            return None
        n = int(shape[-1])
        return 2 if (n == 1 and self.output_activation == "sigmoid") else n

    @property
    def ready(self):
        return None not in self.layers

    def prepare(self, images):
        """Resolve automatic layer choices by probing with one input (once)."""
        if self.ready:
            return
        info = _layers.auto_layer(self.model, images[:1])
        for i, layer in enumerate(self.layers):
            if layer is None:
                self.paths[i], self.layers[i] = info.path, info.layer

    @contextlib.contextmanager
    def _linearized(self, intercepted=()):
        if not (self.linearize and self.output_activation):
            yield
        elif self._how == "frozen":
            if any(owner is self.head for owner in intercepted):
                yield  # its interception already linearizes
            else:
                with _saved_model.intercept(self.head, {}, linearize=True):
                    yield
        elif self._how == "activation":
            with patched_attr(self.head, "activation", _identity):
                yield
        else:
            with replaced_call(self.head, lambda inner, x, *a, **k: x):
                yield

    def run(self, images):
        """The model's outputs (logits if linearized), without capturing any layer."""
        with self._linearized():
            return self.model(images, training=False)

    def forward(self, images, tape=None):
        """Run the model, capturing the target layers' outputs.

        Args:
            images: input batch.
            tape: a ``tf.GradientTape`` that should watch the activations.

        Returns:
            ``(activations, outputs)``: a list with one tensor per target layer
            (its last call), and the model's outputs (logits if linearized).
        """
        captured = [None] * len(self.layers)

        def capture(i):
            def on_output(out):
                if tape is not None:
                    tape.watch(out)
                captured[i] = out
                return out
            return on_output

        with contextlib.ExitStack() as stack:
            # One wrapper per distinct layer; a layer listed twice fills both slots.
            # Ops inside a SavedModel are tapped by the layer that runs its graph.
            taps = {}
            for layer in dict.fromkeys(self.layers):
                slots = [i for i, l in enumerate(self.layers) if l is layer]
                if isinstance(layer, _saved_model.GraphOp):
                    taps.setdefault(layer.owner, {})[layer.op_name] = _fill(slots, capture)
                else:
                    stack.enter_context(wrapped_call(layer, _fill(slots, capture)))
            linear = self.linearize and self._how == "frozen"
            for owner, owner_taps in taps.items():
                stack.enter_context(_saved_model.intercept(owner, owner_taps, linear and owner is self.head))
            stack.enter_context(self._linearized(list(taps)))
            outputs = self.model(images, training=False)
        for i, act in enumerate(captured):
            if act is None:
                raise ValueError(
                    f"Layer {self.paths[i]!r} was not called when the model ran, so it has "
                    f"no activation to explain. Choose a layer on the path from the input "
                    f"to the output (keras_cam.list_layers(model) lists them)."
                )
            if not tf.is_tensor(act):
                raise ValueError(
                    f"Layer {self.paths[i]!r} returns a {type(act).__name__} of tensors, not one "
                    f"feature map; choose a layer whose output is a single (N, H, W, C) tensor "
                    f"(keras_cam.list_layers(model) shows each layer's output shape)."
                )
        return captured, outputs

    def scores(self, outputs):
        """The class scores ``(N, C)`` of the selected output, as float32.

        A single sigmoid unit ``z`` becomes two columns ``[-z, z]`` (the
        logits of ``1 - p`` and ``p``), so class 0 and class 1 mean the same
        for every method.
        """
        if isinstance(outputs, dict):
            outputs = list(outputs.values())
        if isinstance(outputs, (list, tuple)):
            outputs = outputs[_output_index(self.model, self.output)]
        scores = tf.cast(outputs, tf.float32)
        if scores.shape.rank != 2:
            raise ValueError(
                f"The model's output has shape {tuple(scores.shape)}, not (N, classes): "
                f"pass `targets=` a callable that maps the outputs to one score per image."
            )
        if self.output_activation == "sigmoid" and scores.shape[-1] == 1:
            if not self.linearize:
                scores = tf.math.log(scores) - tf.math.log1p(-scores)  # back to the logit
            scores = tf.concat([-scores, scores], axis=-1)
        return scores

    def probabilities(self, scores):
        """Class probabilities from :meth:`scores`: the model's own activation, applied once."""
        if self.output_activation == "sigmoid":
            return tf.sigmoid(scores)
        if self.output_activation == "softmax" and not self.linearize:
            return scores
        return tf.nn.softmax(scores, axis=-1)


def _fill(slots, capture):
    fns = [capture(i) for i in slots]

    def on_output(out):
        for fn in fns:
            out = fn(out)
        return out
    return on_output

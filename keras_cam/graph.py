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
import warnings

import numpy as np

from keras_cam import _compat
from keras_cam import backend as _backend
from keras_cam import inputs as _inputs
from keras_cam import layers as _layers
from keras_cam import layout as _layout
from keras_cam import outputs as _outputs
from keras_cam import saved_model as _saved_model
from keras_cam._compat import ops
from keras_cam._patch import patched_attr, replaced_call, wrapped_call
from keras_cam.replay import Recording, Recorder


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
    spec = output if isinstance(output, _outputs.OutputSpec) else _outputs.resolve(model, output)
    if isinstance(model, _saved_model.FrozenModel):
        kind = model.frozen.heads[spec.index or 0][0]
        return model, kind, ("frozen" if kind else None)
    symbolic = spec.symbolic(model)
    if symbolic is not None:
        op = _compat.producer(symbolic)
    else:
        children = _layers._children(model)
        op = children[-1] if children and type(model).__name__ == "Sequential" else None
    if op is None:
        return None, None, None
    if _compat.is_model(op):
        return find_head(op)
    return _head_of(op)


# Layers that are the identity at inference: the head is the layer before them.
_PASS_THROUGH = ("dropout", "spatialdropout1d", "spatialdropout2d", "spatialdropout3d", "gaussiannoise",
                 "gaussiandropout", "alphadropout", "activityregularization", "identity", "activation")


def _head_of(op):
    """``(op, kind, how)`` of :func:`find_head` for the layer that produces the output
    (looking through layers that are the identity at inference, e.g. a final Dropout)."""
    if _saved_model.is_wrapper(op):
        kind = _saved_model.head_kind(op)
        return op, kind, ("frozen" if kind else None)
    kind = _activation_kind(getattr(op, "activation", None))
    if kind is not None:
        return op, kind, "activation"
    cls = type(op).__name__.lower()
    if cls in _PASS_THROUGH and getattr(getattr(op, "activation", None), "__name__", "linear") == "linear":
        try:
            inner = _compat.producer(op.input)
        except (AttributeError, ValueError, RuntimeError):  # called more than once, or not in a graph
            inner = None
        if inner is not None and not _compat.is_model(inner):
            head = _head_of(inner)
            if head[1] is not None:
                return head
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
        image_input: for multi-input models, the input (index or name) that
            holds the images; None picks the only 4-D input. The other
            inputs are held fixed (:meth:`holding`).
        data_format: ``"channels_last"``, ``"channels_first"`` or None, which
            infers it from the model's layers (any ``channels_first`` layer).
        reshape: how a token layer's output lies on a grid: None (inferred),
            ``(h, w)`` or a callable ``(N, L, C) -> (N, h, w, C)``; see
            :mod:`keras_cam.layout`.

    Inside an explainer, images are channels-last ``(N, *S, C)`` and
    activations feature maps ``(N, *s, K)`` (see :mod:`keras_cam.layout`);
    this class converts at the model's boundary: a channels-first model
    takes ``(N, C, *S)`` input and its layers return ``(N, K, *s)`` maps, and
    a vision transformer's layers return token sequences ``(N, L, K)``.
    """

    def __init__(self, model, layers=(None,), output=None, linearize=True, image_input=None,
                 data_format=None, reshape=None):
        model = _saved_model.adapt(model)
        if not (_compat.is_model(model) or isinstance(model, _saved_model.FrozenModel)):
            raise TypeError(
                f"`model` must be a Keras model or a loaded SavedModel (tf.saved_model.load); "
                f"received {type(model).__name__}."
            )
        self.model = model
        self.output = output
        self.output_spec = _outputs.resolve(model, output) if _compat.is_model(model) else \
            _outputs.OutputSpec(index=output if isinstance(output, int) else None, requested=output)
        self.linearize = linearize
        self.input_names, self.input_index = _inputs.find_image_input(model, image_input)
        self.data_format = _inputs.find_data_format(model, data_format)
        self.inputs = _inputs.input_layout(model, self.input_index, self.data_format)
        self.reshape = _layout.check_reshape(reshape)
        self._held = None
        self.head, self.output_activation, self._how = find_head(model, self.output_spec)
        self.warned_probabilities = False
        if self.head is None and _compat.is_model(model) and _layers._children(model):
            self._how = "probe"  # no static graph: the head is found by running the model (prepare)
        self.num_classes = self._static_num_classes()
        self._probed_shape = None  # the selected output's shape from the probe run, without a static graph
        self._specs = list(layers)
        self.layers = [None] * len(self._specs)
        self.paths = [None] * len(self._specs)
        for i, spec in enumerate(self._specs):
            if spec is not None:
                self.paths[i], self.layers[i] = _layers.resolve(model, spec)
                shape = _layers.static_output_shape(self.layers[i])
                if shape is not None:  # a named layer that is no feature map fails here, before tracing
                    self.feature_layout(i, shape)
            elif (known := _layers.default_layer(model)) is not None:  # a known architecture
                self.paths[i], self.layers[i] = known[:2]
        sample = _layers.probe_sample(model)
        if sample is not None and not self.ready:
            self.prepare(sample)

    def _static_num_classes(self):
        symbolic = self.output_spec.symbolic(self.model) if _compat.is_model(self.model) else None
        return None if symbolic is None else self._classes(symbolic.shape)

    def _classes(self, shape):
        """The classes of an output of ``shape`` ``(N, C)`` (one sigmoid unit is two), else None."""
        if len(shape) != 2 or shape[-1] is None:
            return None
        n = int(shape[-1])
        return 2 if (n == 1 and self.output_activation == "sigmoid") else n

    @property
    def output_shape(self):
        """The selected output's shape (batch axis None) from the model's static graph, or from
        the probe run of :meth:`prepare` where there is none; None while unknown."""
        symbolic = self.output_spec.symbolic(self.model) if _compat.is_model(self.model) else None
        return tuple(symbolic.shape) if symbolic is not None else self._probed_shape

    @property
    def ready(self):
        return None not in self.layers and self._how != "probe"

    def prepare(self, sample):
        """Resolve automatic layer choices by probing with ``sample`` (once).

        ``sample`` is one input as the model takes it (batch of 1, the
        model's data format, all inputs of a multi-input model). The choice
        is :func:`keras_cam.layers.auto_layer`'s: the last spatial map, or,
        in a vision transformer, the last token layer whose patch tokens
        receive gradient from the top logit (a probe run on a seeded random
        input of the sample's shape; the softmax removed as in
        ``linearize``).
        """
        if self._how == "probe":
            (self.head, self.output_activation, self._how), outputs = _head_by_probe(
                self.model, sample, self.output_spec)
            if hasattr(outputs, "shape") and len(outputs.shape):
                # Without a static graph the output's shape is known from this run: targets check
                # their class or index against it before anything is compiled.
                self._probed_shape = (None,) + tuple(int(d) for d in outputs.shape[1:])
                if self.num_classes is None:
                    self.num_classes = self._classes(self._probed_shape)
            if self.linearize and self.output_activation is None:
                p = np.asarray(_compat.to_host(outputs), dtype=np.float64)
                if p.ndim == 2 and p.shape[-1] > 1 and _rows_are_probabilities(p).all():
                    self.warn_probabilities(stacklevel=6)
        if self.ready:
            return
        # Token layers (a ViT) must carry the gradient of the top logit to their patch tokens.
        info = _layers.auto_layer(self.model, sample, reshape=self.reshape, score=self._top_score,
                                  context=self._linearized)
        for i, layer in enumerate(self.layers):
            if layer is None:
                self.paths[i], self.layers[i] = info.path, info.layer

    def _top_score(self, outputs):
        """The top class score per example (logits if linearized), for the automatic choice;
        the largest output entry when the outputs are not ``(N, classes)``."""
        try:
            return ops.max(self.scores(outputs), axis=-1)
        except ValueError:
            return _layers.top_score(self.selected(outputs))

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

    @property
    def multi_input(self):
        return len(self.input_names) > 1

    def assemble(self, images, others=()):
        """The model's input from images in its own format and the other inputs."""
        if not self.multi_input:
            return images
        parts = list(others)
        parts.insert(self.input_index, images)
        if isinstance(getattr(self.model, "input", None), dict):
            return dict(zip(self.input_names, parts))
        return parts

    @contextlib.contextmanager
    def holding(self, others):
        """Inside the block, the inputs other than the images are ``others``
        (tensors whose rows are aligned with the images'), see :meth:`model_inputs`."""
        previous, self._held = self._held, tuple(others)
        try:
            yield
        finally:
            self._held = previous

    def to_model_format(self, images):
        """Channels-last images ``(N, *S, C)`` in the model's data format."""
        return self.inputs.to_model_format(images)

    def to_channels_last(self, images):
        """Images in the model's data format as ``(N, *S, C)``."""
        return self.inputs.to_channels_last(images)

    def model_inputs(self, images, rows=None):
        """The model's input for channels-last ``images``.

        ``rows[i]`` is the row of the held inputs (:meth:`holding`) that goes
        with image ``i`` (by default image ``i``'s own): Score-CAM runs many
        masked copies of one image with that image's other inputs.
        """
        x = self.to_model_format(images)
        if not self.multi_input:
            return x
        if self._held is None:
            raise ValueError(
                f"Model {self.model.name!r} has {len(self.input_names)} inputs "
                f"{self.input_names}; this function explains only single-input models. Use an "
                f"explainer on a batch: `explainer([images, other_input, ...])`."
            )
        others = [o if rows is None else ops.take(o, rows, axis=0) for o in self._held]
        return self.assemble(x, others)

    def layer_is_channels_first(self, layer):
        """Whether ``layer`` returns ``(N, K, *s)`` maps: its own ``data_format``, or the model's."""
        return getattr(layer, "data_format", None) == "channels_first" or (
            getattr(layer, "data_format", None) is None and self.data_format == "channels_first"
        )

    def run(self, images, rows=None, hooks=(), recording=None, replace=None):
        """The model's outputs (logits if linearized) for channels-last ``images``,
        without capturing any layer (``rows``: see :meth:`model_inputs`).

        ``hooks`` are context managers entered inside the linearization, around
        the model's call: a method's own interception (e.g. of a layer's
        ``activation``) then sees the layers as they run when explained.

        With ``recording`` (a :class:`~keras_cam.replay.Recording` from ``capture(..., record=True)``
        in the same trace), the model runs *from the target layer on*: every
        recorded layer call returns its recorded output instead of computing
        (``take(output, rows)``: input ``i`` gets the recorded row
        ``rows[i]``; an output whose first axis is not the recorded batch, such
        as a position embedding ``(1, L, K)``, is returned as it is), so the
        layers before the target do no work; the target's call (its last one,
        the one :meth:`capture` captured) then computes from the recorded
        inputs, or returns ``replace``; everything after it computes normally.
        ``images`` still has one row per input (``rows`` long): the model is
        called on it, and layers that are not replayed read it. A SavedModel
        target (:class:`~keras_cam.saved_model.GraphOp`) records nothing: its
        passes run the whole model.

        With ``replace`` (a tensor in the target layer's raw layout, one row
        per input; see :meth:`FeatureLayout.unview
        <keras_cam.layout.FeatureLayout.unview>`) the target layer returns it
        instead of its own output: the recorded target call with a
        ``recording``, every call of the (first) target layer without one.
        """
        if recording is None and replace is None:
            with self._linearized(), contextlib.ExitStack() as stack:
                for hook in hooks:
                    stack.enter_context(hook)
                return self.model(self.model_inputs(images, rows), training=False)
        target = recording.layer if recording is not None else self.layers[0]
        with contextlib.ExitStack() as stack:
            owners = []
            if isinstance(target, _saved_model.GraphOp):
                if replace is not None:
                    owners = [target.owner]
                    linear = self.linearize and self._how == "frozen" and target.owner is self.head
                    stack.enter_context(_saved_model.intercept(
                        target.owner, {target.op_name: lambda _: replace}, linear))
            elif recording is not None:
                for layer, actions in recording.actions.items():
                    stack.enter_context(replaced_call(layer, recording.replayer(actions, rows, replace)))
            else:
                stack.enter_context(replaced_call(target, lambda inner, *a, **k: replace))
            stack.enter_context(self._linearized(owners))
            for hook in hooks:
                stack.enter_context(hook)
            return self.model(self.model_inputs(images, rows), training=False)

    def feature_layout(self, i, shape, image_size=None):
        """The :class:`~keras_cam.layout.FeatureLayout` of target ``i``'s output of ``shape``.

        Raises:
            ValueError: when the output is not a feature map of the model's
                layout; the message names the layer, its shape, and what fits.
        """
        found = _layout.describe(shape, self.inputs.rank, image_size or self.inputs.spatial_shape,
                                 self.layer_is_channels_first(self.layers[i]), self.reshape)
        if found is None:
            raise ValueError(_not_a_feature_map(self, i, shape))
        return found

    def capture(self, images, tap=None, record=False, rows=None):
        """Run the model, capturing the target layers' raw outputs.

        Args:
            images: channels-last input batch (the other inputs of a
                multi-input model are the held ones, see :meth:`holding`).
            tap: ``tap(i, output) -> output``, called on target ``i``'s output
                as the model runs (``backend.tapped_gradients`` passes one that
                makes it differentiable); what it returns is what the model
                and the captured activation are.
            record: also record, for the first target layer, the output of
                every layer call that completes before the target's
                (captured, last) call starts, so that :meth:`run` can later
                run the model from the target layer on (see :class:`~keras_cam.replay.Recording`).
            rows: the rows of the held inputs that go with the images (see
                :meth:`model_inputs`); by default each image's own.

        Returns:
            ``(raw, layouts, outputs)``: per target layer its output as the
            layer returned it (its last call) and its
            :class:`~keras_cam.layout.FeatureLayout`; the model's outputs
            (logits if linearized). ``layouts[i].view`` turns a raw output,
            or its gradient, into a channels-last feature map. With
            ``record=True``, ``(raw, layouts, outputs, recording)``.
        """
        captured = [None] * len(self.layers)

        def capture(i):
            def on_output(out):
                if tap is not None and _backend.is_tensor(out):
                    out = tap(i, out)
                captured[i] = out
                return out
            return on_output

        recorder = None
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
            if record and not isinstance(self.layers[0], _saved_model.GraphOp):
                recorder = Recorder()
                for _, layer in _layers.walk(self.model):
                    if not (_layers.is_container(layer) or isinstance(layer, _saved_model.GraphOp)):
                        stack.enter_context(replaced_call(layer, recorder.wrapper(layer)))
            linear = self.linearize and self._how == "frozen"
            for owner, owner_taps in taps.items():
                stack.enter_context(_saved_model.intercept(owner, owner_taps, linear and owner is self.head))
            stack.enter_context(self._linearized(list(taps)))
            outputs = self.model(self.model_inputs(images, rows), training=False)
        layouts = []
        for i, act in enumerate(captured):
            if act is None:
                raise ValueError(
                    f"Layer {self.paths[i]!r} was not called when the model ran, so it has "
                    f"no activation to explain. Choose a layer on the path from the input "
                    f"to the output (keras_cam.list_layers(model) lists them)."
                )
            if not _backend.is_tensor(act):
                raise ValueError(
                    f"Layer {self.paths[i]!r} returns a {type(act).__name__} of tensors, not one "
                    f"feature map; choose a layer whose output is a single tensor "
                    f"(keras_cam.list_layers(model) shows each layer's output shape)."
                )
            layouts.append(self.feature_layout(i, act.shape, tuple(images.shape[1:-1])))
        if not record:
            return captured, layouts, outputs
        batch = images.shape[0]
        recording = (Recording(self.layers[0], {}, batch) if recorder is None
                     else recorder.recording(self.layers[0], batch))
        return captured, layouts, outputs, recording

    def forward(self, images):
        """Run the model and return ``(feature maps, outputs)``: the target layers'
        outputs as channels-last feature maps ``(N, *s, K)`` (see :meth:`capture`)."""
        raw, layouts, outputs = self.capture(images)
        return [lay.view(r) for lay, r in zip(layouts, raw)], outputs

    def selected(self, outputs):
        """The selected output (``output=``) of the model's outputs (a tensor, list or dict)."""
        return self.output_spec.select(outputs)

    def scores(self, outputs):
        """The class scores ``(N, C)`` of the selected output, as float32.

        A single sigmoid unit ``z`` becomes two columns ``[-z, z]`` (the
        logits of ``1 - p`` and ``p``), so class 0 and class 1 mean the same
        for every method.
        """
        scores = ops.cast(self.selected(outputs), "float32")
        if len(scores.shape) != 2:
            raise ValueError(
                f"The model's output has shape {tuple(scores.shape)}, not (N, classes): "
                f"pass `targets=` a target object (keras_cam.targets: Segmentation, Detection, "
                f"Similarity, Regression) or a callable that maps the outputs to one score per image."
            )
        if self.output_activation == "sigmoid" and scores.shape[-1] == 1:
            if not self.linearize:
                scores = ops.log(scores) - ops.log1p(-scores)  # back to the logit
            scores = ops.concatenate([-scores, scores], axis=-1)
        return scores

    def probabilities(self, scores):
        """Class probabilities from :meth:`scores`: the model's own activation, applied once. Where the
        output comes from a layer keras-cam cannot read (:attr:`opaque_head`: a ``Lambda``, a function
        in ``call``), a batch whose rows all are probabilities (non-negative, summing to 1 within
        ``1e-4``: a softmax keras-cam could not see) is kept as it is, and any other batch goes
        through a softmax. A layer whose activation is known (a ``Dense`` of logits) always does: a
        row of logits that happens to sum to 1 is still logits."""
        if self.output_activation == "sigmoid":
            return ops.sigmoid(scores)
        if self.output_activation == "softmax" and not self.linearize:
            return scores
        if self.opaque_head:
            return ops.where(ops.all(_rows_are_probabilities(scores, ops)), scores, ops.softmax(scores, axis=-1))
        return ops.softmax(scores, axis=-1)

    @property
    def opaque_head(self):
        """Whether the output's last operation is one keras-cam cannot read (no activation found, and
        no ``activation`` attribute that says there is none: a ``Lambda``, a custom layer, a function
        inside a subclassed model's ``call``)."""
        return self.output_activation is None and (self.head is None or not hasattr(self.head, "activation"))

    def check_probabilities(self, scores, probabilities, consequence=None, stacklevel=5):
        """After a call: warn once when the scores were probabilities the model computed with a softmax
        keras-cam could not see (:meth:`probabilities` kept them as they were), so what was meant to
        read logits read probabilities (``consequence`` says what: by default, the maps explain
        probabilities). ``scores`` and ``probabilities`` are the same entries of both, ``(N, C)`` or
        the explained class's ``(N,)``."""
        if self.warned_probabilities or not self.opaque_head or probabilities is None:
            return
        s = np.asarray(scores)
        if len(s) and (self.num_classes or 0) > 1 and np.array_equal(s, np.asarray(probabilities)) \
                and s.min() >= 0 and s.max() <= 1 and not np.all(s == 1 / self.num_classes):
            self.warn_probabilities(stacklevel=stacklevel, consequence=consequence)

    def warn_probabilities(self, stacklevel, consequence=None):
        self.warned_probabilities = True
        warnings.warn(
            f"The outputs of model {self.model.name!r} look like softmax probabilities, but the softmax "
            f"is not a layer keras-cam can see (e.g. a `Lambda` or `tf.nn.softmax` inside `call`), so "
            f"{consequence or 'the maps explain probabilities, not logits'}. Apply the softmax with a layer "
            f"(`Dense(..., activation='softmax')` or `keras.layers.Softmax()`) or return logits.",
            stacklevel=stacklevel,
        )


def _head_by_probe(model, sample, output=None):
    """:func:`find_head` for a model without a static graph (subclassed): run it once and
    take the last layer whose output is the model's output, if there is one.

    Returns:
        ``((op, kind, how), the selected output of that run)``.
    """
    calls = []

    def recorder(layer):
        def call(inner, *args, **kwargs):
            out = inner(*args, **kwargs)
            calls.append((layer, out))
            return out
        return call

    with contextlib.ExitStack() as stack:
        for _, layer in _layers.walk(model):
            if not _layers.is_container(layer) and not isinstance(layer, _saved_model.GraphOp):
                stack.enter_context(replaced_call(layer, recorder(layer)))
        final = output.select(model(_layers.as_tensors(sample), training=False))
    head = (None, None, None)
    for layer, out in reversed(calls):
        if _backend.is_tensor(out) and tuple(out.shape) == tuple(final.shape):
            if np.array_equal(_compat.to_host(out), _compat.to_host(final)):
                head = _head_of(layer)
            break
    return head, final


def _rows_are_probabilities(p, xp=np):
    """``(N,)`` bool: rows of ``p`` ``(N, C)`` that are non-negative and sum to 1 within ``1e-4``
    (``xp``: numpy, or ``keras.ops`` inside a compiled function)."""
    return xp.logical_and(xp.all(p >= 0, axis=-1), xp.abs(xp.sum(p, axis=-1) - 1.0) <= 1e-4)


def _not_a_feature_map(graph, i, shape):
    """The message for a target layer whose output is no feature map of the model's layout."""
    rank = graph.inputs.rank
    path = graph.paths[i]
    what = {1: "(N, T, C) signal maps", 2: "(N, H, W, C) feature maps or (N, tokens, C) token "
            "sequences on a grid", 3: "(N, D, H, W, C) volume maps"}[rank]
    given = graph.reshape
    if given is not None and not callable(given) and len(shape) == rank + 2:
        return (
            f"`reshape={given}` lays out a token sequence (N, tokens, C) on a grid, but layer {path!r} "
            f"outputs the spatial feature map {tuple(shape)}, which needs no reshape: drop `reshape=` "
            f"(it is for the token layers of vision transformers)."
        )
    hint = ""
    if len(shape) == 3 and rank == 2:
        if given is not None and not callable(given):
            h, w = given
            hint = (f" `reshape={given}` asks for {h * w} patch tokens after at most the leading ones, "
                    f"but the layer has {shape[1]} tokens: give the grid (h, w) of this layer's patch "
                    f"tokens (h * w <= {shape[1]}), or a callable `reshape=`.")
        else:
            hint = (" Its tokens fit no patch grid of the input (at most "
                    f"{_layout.MAX_PREFIX_TOKENS} leading class/register tokens): pass `reshape=(h, w)` "
                    f"or a callable `reshape=` that lays them out as (N, h, w, C).")
    near = [p for p in _layers.nearest_feature_layers(graph.model, path, rank) if p != path]
    close = f" The nearest layers that are: {near}." if near else ""
    return (
        f"Layer {path!r} outputs shape {tuple(shape)}, which is not a feature map of "
        f"this model's {rank}-D input: class-activation maps need {what}.{hint}{close} "
        f"(keras_cam.list_layers(model) lists every layer's output shape.)"
    )


def _fill(slots, capture):
    fns = [capture(i) for i in slots]

    def on_output(out):
        for fn in fns:
            out = fn(out)
        return out
    return on_output

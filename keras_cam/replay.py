"""Recording a forward pass, to replay it from the target layer on.

Ablation-CAM runs the model once per (image, channel) with one channel of
the target layer's output zeroed. Everything before the target layer is the
same in all those passes, so it should run once. A model cannot be cut at an
inner layer in general (nested models, subclassed models, skip connections
that cross the target), so instead the clean pass is *recorded*: while it
runs, every layer call is intercepted (``_patch.replaced_call``) and its
output kept, with when it started and ended. In a *replay*
(``ActivationGraph.run(..., recording=...)``) every call that completed
before the target's call started returns its recorded output instead of
computing, the target returns the replacement, and the layers after it
compute as usual. The model is never modified: the interception is undone
when the pass ends.
"""

from __future__ import annotations

from keras import tree

from keras_cam import backend as _backend
from keras_cam._compat import ops


class _Call:
    """One layer call of a recorded pass: when it started and ended (a shared
    counter), the call it ran inside of, and its output."""

    __slots__ = ("layer", "parent", "start", "end", "output")

    def __init__(self, layer, parent, start):
        self.layer, self.parent, self.start = layer, parent, start
        self.end = self.output = None


class Recorder:
    """Records every intercepted layer call of one forward pass, in order, with its nesting."""

    def __init__(self):
        self.calls = []
        self._stack = []
        self._clock = 0

    def _tick(self):
        self._clock += 1
        return self._clock

    def wrapper(self, layer):
        """The ``replaced_call`` function that records ``layer``'s calls."""
        def call(inner, *args, **kwargs):
            entry = _Call(layer, self._stack[-1] if self._stack else None, self._tick())
            self.calls.append(entry)
            self._stack.append(entry)
            try:
                out = inner(*args, **kwargs)
            finally:
                self._stack.pop()
            entry.output, entry.end = out, self._tick()
            return out
        return call

    def recording(self, target, batch):
        """The :class:`Recording` of the pass relative to ``target``'s last call."""
        mine = [c for c in self.calls if c.layer is target]
        if not mine:
            return Recording(target, {}, batch)
        last = mine[-1]

        def before(call):  # completed before the target's last call started
            return call.end is not None and call.end < last.start

        actions = {}
        for call in self.calls:
            parent, inside = call.parent, False
            while parent is not None:
                inside = inside or before(parent)
                parent = parent.parent
            if inside:  # never called in a replay: the call it ran in returns its output
                continue
            action = Recording.REPLACE if call is last else (call.output if before(call) else Recording.RUN)
            actions.setdefault(call.layer, []).append(action)
        # A layer whose calls all run needs no interception.
        actions = {layer: acts for layer, acts in actions.items()
                   if any(a is not Recording.RUN for a in acts)}
        return Recording(target, actions, batch)


class _Action:
    """A replay action other than a recorded output (:attr:`Recording.RUN`, :attr:`Recording.REPLACE`)."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Recording.{self.name}"


class Recording:
    """The layer calls of a clean pass that :meth:`keras_cam.graph.ActivationGraph.run` replays.

    Made by ``ActivationGraph.capture(images, record=True)``. During that pass
    every non-container layer (not a model, not a SavedModel wrapper; found
    by :func:`keras_cam.layers.walk`) is intercepted and its calls are
    recorded in order. Relative to the target layer's last call (the one
    captured), each call gets an action for a replay:

    - a call that completed before the target's call started returns its
      recorded output (a skip connection from before the target to after it
      then reads the recorded tensor, which is what it computed);
    - a call made inside such a call is not made at all in a replay;
    - the target's call returns the replacement, or computes;
    - every other call computes (the layers after the target, and a custom
      layer wrapping the target: it started before the target and completes
      after it, so it runs, its sub-layers before the target replayed).

    A layer keeps its own call order: its ``i``-th call in a replay takes its
    ``i``-th action. The recorded outputs are tensors of the trace that made
    them: a recording is used within the same compiled call (the same
    ``tf.function`` or ``jax.jit`` trace), or eagerly if it was made eagerly.

    Attributes:
        layer: the target layer (a :class:`~keras_cam.saved_model.GraphOp`
            records nothing: its replays run the whole model).
        actions: ``{layer: [action per call]}`` for the layers a replay
            intercepts: a recorded output, :attr:`RUN` or :attr:`REPLACE`.
        batch: the number of inputs of the recorded pass, as traced (None
            when unknown): a recorded output whose first axis has this
            length (or is unknown) has one row per input and is gathered.

    Tensors of every backend are handled alike (``keras.ops.take``); nested
    outputs (tuples, lists, dicts) are gathered leaf by leaf.
    """

    RUN = _Action("RUN")
    REPLACE = _Action("REPLACE")

    def __init__(self, layer, actions, batch):
        self.layer = layer
        self.actions = actions
        self.batch = batch

    @property
    def replayed(self):
        """How many layer calls return a recorded output in a replay."""
        return sum(1 for acts in self.actions.values() for a in acts
                   if a is not self.RUN and a is not self.REPLACE)

    def rows(self, output, rows):
        """A recorded output for the inputs ``rows`` (all of them when None)."""
        if rows is None:
            return output

        def gather(t):
            if not _backend.is_tensor(t) or len(t.shape) == 0:
                return t
            # One row per input when its first axis is the batch's (or, like an
            # unknown batch size, not known when traced); otherwise a constant
            # such as a position embedding (1, L, K), the same for every input.
            first = t.shape[0]
            if first is None or first == self.batch:
                return ops.take(t, rows, axis=0)
            return t
        return tree.map_structure(gather, output)

    def replayer(self, actions, rows, replace):
        """The ``replaced_call`` function of one layer in a replay (fresh call count)."""
        count = [0]

        def call(inner, *args, **kwargs):
            i = count[0]
            count[0] += 1
            action = actions[i] if i < len(actions) else self.RUN
            if action is self.REPLACE:
                return inner(*args, **kwargs) if replace is None else replace
            if action is self.RUN:
                return inner(*args, **kwargs)
            return self.rows(action, rows)
        return call

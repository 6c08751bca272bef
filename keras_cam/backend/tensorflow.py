"""The TensorFlow backend: ``tf.GradientTape`` and ``tf.function`` (Keras 3 and legacy tf-keras)."""

from __future__ import annotations

import contextlib
import functools
import warnings

import numpy as np
import tensorflow as tf

NAME = "tensorflow"


def is_tensor(x) -> bool:
    return tf.is_tensor(x)


def to_numpy(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def no_grad():
    return contextlib.nullcontext()


def executing_eagerly() -> bool:
    return tf.executing_eagerly()


def tapped_gradients(forward, inputs=()):
    """Run ``forward(tap, *inputs) -> (score (N,), aux)`` under a tape.

    ``tap(key, t)`` watches ``t`` and returns it; the last tapped value of a
    key is the one differentiated (a layer called twice: its last call).

    Returns:
        ``(score, aux, taps, grads, input_grads)``: ``taps`` and ``grads``
        are dicts by key (a gradient is None where the score does not
        depend on the tapped value); ``input_grads`` one per input (zeros
        where unconnected).
    """
    taps = {}

    def tap(key, t):
        if tf.is_tensor(t):
            tape.watch(t)
        taps[key] = t
        return t

    # Only what is watched is recorded: the backward pass stops at the taps and the inputs.
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        for x in inputs:
            tape.watch(x)
        score, aux = forward(tap, *inputs)
    keys = [k for k in taps if tf.is_tensor(taps[k])]
    grads = tape.gradient(score, [taps[k] for k in keys] + list(inputs))
    n = len(keys)
    input_grads = [tf.zeros_like(x) if g is None else g for x, g in zip(inputs, grads[n:])]
    return score, aux, taps, dict(zip(keys, grads[:n])), input_grads


def run_for_shapes(fn, *args):
    """Run ``fn(*args)`` for what it records about shapes (see the JAX backend's).

    Eager TensorFlow runs each op at once, without compiling it: ``fn`` runs as it is.
    """
    fn(*args)


def tapped_hvp(forward, vectors=None):
    """Run ``forward(tap) -> (score (N,), aux)`` under two nested tapes: the gradient of
    the summed score with respect to each tapped value ``A``, and its product with
    the Hessian, ``H v = d/dA <dS/dA, v>`` (reverse over reverse).

    ``vectors`` maps a key to ``v`` (a tensor shaped as that key's tapped value);
    by default ``v`` is the tapped value itself (held constant), so that
    ``hvps[key] = H A``. With several keys the Hessian is the joint one.

    Returns:
        ``(score, aux, taps, grads, hvps)``: ``grads`` as
        :func:`tapped_gradients` returns them, ``hvps`` by key (zeros where the
        score is linear in the taps, None where it does not depend on them).
    """
    taps = {}

    def tap(key, t):
        if tf.is_tensor(t):
            outer.watch(t)
            inner.watch(t)
        taps[key] = t
        return t

    with tf.GradientTape(watch_accessed_variables=False) as outer:
        with tf.GradientTape(watch_accessed_variables=False) as inner:
            score, aux = forward(tap)
        keys = [k for k in taps if tf.is_tensor(taps[k])]
        grads = inner.gradient(score, [taps[k] for k in keys])
        terms = []
        for k, g in zip(keys, grads):
            if g is not None:
                v = tf.stop_gradient(taps[k]) if vectors is None or k not in vectors else vectors[k]
                terms.append(tf.reduce_sum(g * tf.cast(v, g.dtype)))
    hvps = outer.gradient(tf.add_n(terms), [taps[k] for k in keys]) if terms else [None] * len(keys)
    hvps = [None if g is None else (tf.zeros_like(g) if h is None else h) for g, h in zip(grads, hvps)]
    return score, aux, taps, dict(zip(keys, grads)), dict(zip(keys, hvps))


def guided(fn, x):
    """``fn(x)`` (an element-wise ReLU) whose backward pass is ``fn'(x) * ReLU(dy)``."""
    @tf.custom_gradient
    def f(x):
        def grad(dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x)
            return tape.gradient(y, x, output_gradients=tf.nn.relu(dy))
        return fn(x), grad
    return f(tf.convert_to_tensor(x))


def is_out_of_memory(err) -> bool:
    return isinstance(err, tf.errors.ResourceExhaustedError)


def _positional(fn, *args):
    return fn(*args)


class compiled:
    """``tf.function(fn)``, optionally run eagerly on the first call of each input signature.

    Tracing a model's forward and backward pass into a graph costs several
    eager runs of it (MobileNetV2 at 224x224: about 1 s against 0.3 s), and
    pays off only when the same signature comes back. With
    ``eager_first=True`` the first call of a signature (the shapes and dtypes
    of the tensor arguments and the values of the others: what makes
    ``tf.function`` retrace) runs ``fn`` eagerly: the same Python code, so the
    same result up to float rounding. From the second call of that signature
    on it runs ``tf.function(fn)``, traced once per signature. Inside another
    ``tf.function`` (a trace) the compiled function is always called.

    The function is compiled without AutoGraph, unless the model's own code
    needs it: keras-cam's code has no tensor-dependent Python control flow,
    and converting it with AutoGraph is about a third of a trace's time
    (EfficientNetB0: 6.6 s with, 3.9 s without). A model whose ``call``
    branches on tensor values in Python does need AutoGraph: its trace raises
    ``OperatorNotAllowedInGraphError``, and from then on this function is
    compiled with AutoGraph. If that trace raises it too, the function runs
    eagerly from then on, with a warning.

    Args:
        fn: the computation, traceable, with tensor and hashable Python arguments.
        model: the model ``fn`` runs (unused here: TensorFlow reads variables as they are).
        eager_first: run the first call of each signature eagerly.
        once: unused here (``eager_first`` decides on TensorFlow).
    """

    # Signatures remembered as run once; beyond this many the memory is reset
    # (a signature then runs eagerly once more: never wrong, only slower).
    _MAX_SEEN = 64

    def __init__(self, fn, model=None, eager_first=False, once=False):
        self._fn = fn
        # A plain positional signature, so that a concrete function takes the same arguments; a
        # partial (no __code__), so that TensorFlow counts each compiled call's retracing apart.
        self._function = tf.function(functools.partial(_positional, fn), autograph=False)
        self._converted = None
        self._eager_only = False
        self._seen = set() if eager_first else None
        self._concrete = {}

    def __call__(self, *args):
        key = signature(args) if tf.executing_eagerly() else None
        if self._seen is not None and key is not None and key not in self._seen:
            if len(self._seen) >= self._MAX_SEEN:
                self._seen.clear()
            self._seen.add(key)
            return self._fn(*args)
        if self._eager_only:
            return self._fn(*args)
        if self._converted is None:
            # A signature traced before is called through its concrete function: the
            # same graph, without tf.function's per-call dispatch (about 1 ms).
            concrete = self._concrete.get(key)
            if concrete is not None:
                return concrete(*args)
            try:
                result = self._function(*args)
            except tf.errors.OperatorNotAllowedInGraphError:
                self._converted = tf.function(self._fn)
            else:
                if key is not None:
                    if len(self._concrete) >= self._MAX_SEEN:
                        self._concrete.clear()
                    self._concrete[key] = self._function.get_concrete_function(*args)
                return result
        try:
            return self._converted(*args)
        except tf.errors.OperatorNotAllowedInGraphError as err:
            self._eager_only = True
            warnings.warn(
                f"The model cannot be compiled, even with AutoGraph: its `call` uses a tensor as a "
                f"Python bool ({' '.join(str(err).split())[:200]}). It runs eagerly from now on: the "
                f"same maps, more slowly. Write the branch with tf.cond or tf.where to compile it.",
                stacklevel=4,
            )
            return self._fn(*args)

    def tracing_count(self):
        """How many times the function was traced (eager runs are not traces)."""
        return sum(f.experimental_get_tracing_count() for f in (self._function, self._converted) if f is not None)

    experimental_get_tracing_count = tracing_count


def signature(args):
    """What makes ``tf.function`` trace anew: each tensor's shape and dtype, each
    other value itself (by identity when it cannot be hashed)."""
    key = []
    for a in tf.nest.flatten(args):
        if tf.is_tensor(a) or isinstance(a, np.ndarray):
            key.append((tuple(a.shape), a.dtype.name))
        else:
            try:
                hash(a)
                key.append((type(a), a))
            except TypeError:
                key.append((type(a), id(a)))
    return tuple(key)


def fori_loop(n, body, initial):
    """``initial`` after ``body(i, value)`` for ``i`` in ``range(n)``, one iteration at a time
    (``parallel_iterations=1``: one batch of model inputs in memory at a time)."""
    return tf.while_loop(lambda i, _: i < n, lambda i, v: (i + 1, body(i, v)), (tf.constant(0), initial),
                         parallel_iterations=1)[1]


def scatter_add(values, indices, updates):
    """``values`` with ``updates`` added at ``indices`` ``(b, r)`` (duplicates summed)."""
    return tf.tensor_scatter_nd_add(values, indices, tf.cast(updates, values.dtype))


def dynamic_rows(x, start, count, size):
    """Rows ``start .. start + count - 1`` of ``x`` for a scalar tensor ``count <= size``.

    Returns ``(rows, valid)``: here the rows themselves, a dynamic shape
    (``tf.while_loop`` and ``tf.function`` take it), and ``valid`` None.
    """
    return x[start:start + count], None


def host_callback(fn, *args):
    """Call ``fn(*args)`` on the host with the values, also from inside a compiled function."""
    tf.py_function(lambda *a: fn(*(int(x) for x in a)), list(args), [])


def host_function(fn, args, shape, dtype):
    """``fn(*numpy arrays) -> numpy array`` run on the host, also from inside a compiled
    function (``tf.numpy_function``): a tensor of ``shape`` (None for a free size) and ``dtype``."""
    out = tf.numpy_function(lambda *a: np.asarray(fn(*a), dtype), list(args), tf.as_dtype(dtype), stateful=False)
    out.set_shape(shape)
    return out


def deterministic_ops():
    """Switch on TensorFlow's deterministic kernels for the whole process."""
    tf.config.experimental.enable_op_determinism()


def wide_float() -> str:
    """The widest float dtype computations can use here."""
    return "float64"

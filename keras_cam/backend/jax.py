"""The JAX backend: ``jax.jit`` over a stateless call, gradients by ``jax.grad``."""

from __future__ import annotations

import contextlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from keras_cam._compat import keras

NAME = "jax"


def is_tensor(x) -> bool:
    return isinstance(x, jax.Array)


def to_numpy(x):
    return np.asarray(x)


def no_grad():
    return contextlib.nullcontext()


def executing_eagerly() -> bool:
    """False while a function is being traced (approximately: no tracer is live here)."""
    return not isinstance(jnp.zeros(()) + 0, jax.core.Tracer)


def tapped_gradients(forward, inputs=()):
    """Run ``forward(tap, *inputs) -> (score (N,), aux)`` and differentiate the summed score.

    A tapped activation ``A`` is made differentiable by routing it through
    ``A + delta`` with ``delta = 0`` and differentiating with respect to
    ``delta`` (``dS/d delta = dS/dA``). ``delta``'s shape is read first from
    an abstract evaluation of ``forward`` (``jax.eval_shape``: tracing only,
    no computation). ``aux`` must be a tree of arrays. Returns what
    :func:`keras_cam.backend.tensorflow.tapped_gradients` returns; a tapped
    value the score does not depend on gets a zero gradient.
    """
    counts, deltas = _tapped_zeros(forward, *inputs)

    def f(deltas, inputs):
        seen, taps = {}, {}

        def tap(key, t):
            seen[key] = seen.get(key, 0) + 1
            taps[key] = t
            if key in deltas and seen[key] == counts[key]:
                return t + deltas[key]
            return t

        score, aux = forward(tap, *inputs)
        return jnp.sum(score), (score, aux, {k: taps[k] for k in deltas})

    (g_deltas, g_inputs), (score, aux, taps) = jax.grad(f, argnums=(0, 1), has_aux=True)(deltas, tuple(inputs))
    return score, aux, taps, dict(g_deltas), list(g_inputs)


def _tapped_zeros(forward, *inputs):
    """``(counts, deltas)``: how often ``forward(tap, *inputs)`` taps each key, and a zero array
    shaped like the last floating value tapped at each key, read by ``jax.eval_shape`` (a trace,
    no computation; a forward pass for a model whose ``call`` branches on values)."""
    counts, specs = {}, {}

    def probe(key, t):
        counts[key] = counts.get(key, 0) + 1
        if is_tensor(t) and jnp.issubdtype(t.dtype, jnp.floating):
            specs[key] = (t.shape, t.dtype)
        else:
            specs.pop(key, None)
        return t

    try:
        jax.eval_shape(lambda *x: (forward(probe, *x), None)[1], *inputs)
    except Exception as err:  # noqa: BLE001  (Keras re-raises a layer's error as another type)
        if _concretization(err) is None:
            raise
        # The model branches on a value, which an abstract trace does not have: one concrete run
        # instead (outside jax.jit; inside it this raises again, and the call runs eagerly).
        counts.clear()
        specs.clear()
        forward(probe, *inputs)
    return counts, {k: jnp.zeros(shape, dtype) for k, (shape, dtype) in specs.items()}


def run_for_shapes(fn, *args):
    """Run ``fn(*args)`` for what it records about shapes, not for its values.

    Traced abstractly (``jax.eval_shape``: no computation, no compilation) inside a
    ``keras.StatelessScope``, so no variable is assigned. Run op by op, JAX would
    compile every primitive for every new shape: the automatic layer choice's probe
    of a ViT-Ti at 224 px took 1.3 s that way. Where an abstract trace cannot run
    ``fn`` (a model that branches on a value, or a layer that reads one), ``fn``
    runs for real instead; it must then start from a clean slate itself.
    """
    try:
        with keras.StatelessScope():
            jax.eval_shape(lambda *a: (fn(*a), None)[1], *args)
    except Exception:  # noqa: BLE001  (whatever the abstract trace could not do, the real run does or raises)
        fn(*args)


def tapped_hvp(forward, vectors=None):
    """Run ``forward(tap) -> (score (N,), aux)``: the gradient of the summed score with
    respect to each tapped value ``A`` and its product with the Hessian, ``H v``.

    Forward over reverse: a tapped value is routed through ``A + delta + t v``
    (``delta = 0``, ``t = 0``); ``jax.grad`` in ``delta`` gives ``dS/dA`` and
    ``jax.jvp`` of that gradient in ``t`` (tangent 1) gives ``H v``. ``vectors``
    maps a key to ``v``; by default ``v`` is the tapped value itself (held
    constant), so that ``hvps[key] = H A``. Returns what
    :func:`keras_cam.backend.tensorflow.tapped_hvp` returns.
    """
    counts, deltas = _tapped_zeros(forward)

    def f(deltas, t):
        seen, taps = {}, {}

        def tap(key, a):
            seen[key] = seen.get(key, 0) + 1
            taps[key] = a
            if key in deltas and seen[key] == counts[key]:
                v = jax.lax.stop_gradient(a) if vectors is None or key not in vectors else vectors[key]
                return a + deltas[key] + t.astype(a.dtype) * jnp.asarray(v, a.dtype)
            return a

        score, aux = forward(tap)
        return jnp.sum(score), (score, aux, {k: taps[k] for k in deltas})

    def gradient(t):
        return jax.grad(f, has_aux=True)(deltas, t)

    zero = jnp.zeros((), "float32")
    (grads, (score, aux, taps)), (hvps, _) = jax.jvp(gradient, (zero,), (jnp.ones_like(zero),))
    return score, aux, taps, dict(grads), dict(hvps)


def guided(fn, x):
    """``fn(x)`` (an element-wise ReLU) whose backward pass is ``fn'(x) * ReLU(dy)``."""
    @jax.custom_vjp
    def f(x):
        return fn(x)

    def fwd(x):
        return fn(x), x

    def bwd(x, dy):
        _, vjp = jax.vjp(fn, x)
        return vjp(jnp.maximum(dy, 0))

    f.defvjp(fwd, bwd)
    return f(jnp.asarray(x))


def is_out_of_memory(err) -> bool:
    return "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower()


def _is_static(a):
    return a is None or isinstance(a, (bool, int, float, str, np.integer, np.floating))


class compiled:
    """``jax.jit(fn)`` with the model's weights as arguments, one trace per input signature.

    ``fn`` runs inside a ``keras.StatelessScope`` that maps each of the
    model's variables to the value passed in, so the weights are arguments
    of the jitted function, not constants baked into it: after the model is
    trained further, the same compiled function explains the new weights.
    Python scalars (flags) are static arguments; arrays and tuples of arrays
    are traced.

    It compiles from the first call. Unlike TensorFlow's eager mode, JAX run
    op by op compiles each primitive for each new shape, which costs more than
    compiling the whole computation at once: Grad-CAM's first call (fresh
    process, 2 shared CPU cores) took 5.2 s op by op against 1.1 s jitted on
    the demo CNN, 12.1 against 3.3 s on the demo ViT and 11.2 against 2.9 s on
    MobileNetV2 at 224 px, and the op-by-op path paid the compilation again on
    the second call. Only with ``eager_first`` *and* ``once`` (a function made
    for one call, such as an explainer's for a callable target made anew per
    call) does the first call of a signature run op by op: once the
    primitives are compiled, that is quicker than compiling a function that
    will not be called again.
    """

    _MAX_SEEN = 64

    def __init__(self, fn, model=None, eager_first=False, once=False):
        self._fn = fn
        self._variables = list(getattr(model, "variables", None) or [])
        self._jitted = {}
        self._traces = 0
        self._seen = set() if eager_first and once else None
        self._eager_only = False

    def _pure(self, state, *args):
        self._traces += 1
        with keras.StatelessScope(state_mapping=list(zip(self._variables, state))):
            return self._fn(*args)

    def __call__(self, *args):
        if self._eager_only or any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args)):
            return self._fn(*args)  # a model jax.jit cannot trace, or already inside a trace
        if self._seen is not None:
            key = signature(args)
            if key not in self._seen:
                if len(self._seen) >= self._MAX_SEEN:
                    self._seen.clear()
                self._seen.add(key)
                return self._fn(*args)
        statics = tuple(i + 1 for i, a in enumerate(args) if _is_static(a))
        jitted = self._jitted.get(statics)
        if jitted is None:
            jitted = self._jitted[statics] = jax.jit(self._pure, static_argnums=statics)
        state = [v.value for v in self._variables]
        try:
            return jitted(state, *args)
        except Exception as err:  # noqa: BLE001  (Keras re-raises a layer's error as another type)
            cause = _concretization(err)
            if cause is None:
                raise
            self._eager_only = True
            warnings.warn(
                f"The model cannot be compiled by jax.jit: its `call` uses a traced value as a Python "
                f"bool or number ({' '.join(str(cause).split())[:200]}). It runs eagerly from now on: the "
                f"same maps, more slowly. Write the branch with keras.ops.where or keras.ops.cond to compile it.",
                stacklevel=4,
            )
            return self._fn(*args)

    def tracing_count(self):
        """How many times the function was traced (once per input signature)."""
        return self._traces

    experimental_get_tracing_count = tracing_count


def _concretization(err):
    """The ``jax.errors.ConcretizationTypeError`` behind ``err`` (itself, or a cause Keras wrapped), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, jax.errors.ConcretizationTypeError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def signature(args):
    key = []
    for a in jax.tree_util.tree_leaves(args):
        key.append((tuple(a.shape), str(a.dtype)) if hasattr(a, "shape") else (type(a), a))
    return tuple(key)


def fori_loop(n, body, initial):
    """``initial`` after ``body(i, value)`` for ``i`` in ``range(n)`` (``jax.lax.fori_loop``)."""
    return jax.lax.fori_loop(0, n, body, initial)


def scatter_add(values, indices, updates):
    """``values`` with ``updates`` added at ``indices`` ``(b, r)`` (duplicates summed)."""
    return values.at[tuple(jnp.moveaxis(indices, -1, 0))].add(updates.astype(values.dtype))


def dynamic_rows(x, start, count, size):
    """Rows ``start .. start + count - 1`` of ``x`` for a scalar tensor ``count <= size``.

    JAX's shapes are static: returns ``size`` rows from ``start``
    (``x`` must have them: ``start + size <= len(x)``, else the window is
    shifted back to fit) and ``valid``, a ``(size,)`` bool mask of the first
    ``count`` rows, the ones asked for; the caller discards the others.
    """
    rows = jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)
    return rows, jnp.arange(size) < count


def host_callback(fn, *args):
    """Call ``fn(*args)`` on the host with the values, also from inside a compiled function."""
    jax.debug.callback(lambda *a: fn(*(int(x) for x in a)), *args)


def host_function(fn, args, shape, dtype):
    """``fn(*numpy arrays) -> numpy array`` run on the host, also from inside a compiled
    function (``jax.pure_callback``): an array of ``shape`` (static) and ``dtype``."""
    return jax.pure_callback(lambda *a: np.asarray(fn(*(np.asarray(x) for x in a)), dtype),
                             jax.ShapeDtypeStruct(tuple(shape), dtype), *args)


def deterministic_ops():
    """Nothing to switch on: XLA's CPU kernels are deterministic."""


def wide_float() -> str:
    """The widest float dtype computations can use here: float64 only with ``jax_enable_x64``."""
    return "float64" if jax.config.jax_enable_x64 else "float32"

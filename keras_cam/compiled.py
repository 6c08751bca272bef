"""One compiled call per input signature, through the backend.

``Compiled(fn, model=model, eager_first=..., once=...)`` compiles ``fn`` the
way the current backend compiles best (see :mod:`keras_cam.backend`):

- TensorFlow: ``tf.function`` without AutoGraph, one trace per signature (the
  shapes and dtypes of the tensors, the values of the Python flags). With
  ``eager_first=True`` the first call of a signature runs eagerly, because a
  trace costs several eager runs and pays off only when the signature comes back.
- JAX: ``jax.jit`` over the computation with the model's weights as
  arguments (a ``keras.StatelessScope`` maps the variables to them), so
  training the model further never leaves stale weights in a compiled call.
  It compiles from the first call: run op by op, JAX compiles each primitive
  for each new shape, which costs more than compiling the whole computation.
  Only a function the caller marks ``once`` (a callable target made anew per
  call, which no compiled call would serve twice) runs its first call of a
  signature op by op, when ``eager_first`` asks for it too.
- PyTorch: eager, under ``torch.no_grad`` (a method that differentiates turns
  gradients on for its own pass).

``tracing_count()`` says how many traces were made (0 on PyTorch).
"""

from __future__ import annotations

from keras_cam import backend


def Compiled(fn, model=None, eager_first=False, once=False):  # noqa: N802  (a factory that reads like the class it returns)
    """``fn`` compiled once per input signature on the current backend (see the module docstring).

    Args:
        fn: the computation, traceable.
        model: the model ``fn`` runs (its weights become arguments on JAX).
        eager_first: run the first call of each signature eagerly where that is cheaper than
            compiling it (TensorFlow; JAX only with ``once``).
        once: ``fn`` is expected to meet each signature about once (e.g. it closes over a
            callable the user makes anew per call).
    """
    return backend.get().compiled(fn, model=model, eager_first=eager_first, once=once)


def signature(args):
    """What makes the backend's compiled function trace anew for ``args``."""
    return backend.get().signature(args)

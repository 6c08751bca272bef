"""One compiled call per input signature, through the backend.

``Compiled(fn, model=model, eager_first=...)`` compiles ``fn`` the way the
current backend compiles best (see :mod:`keras_cam.backend`):

- TensorFlow: ``tf.function`` without AutoGraph, one trace per signature (the
  shapes and dtypes of the tensors, the values of the Python flags). With
  ``eager_first=True`` the first call of a signature runs eagerly, because a
  trace costs several eager runs and pays off only when the signature comes back.
- JAX: ``jax.jit`` over the computation with the model's weights as
  arguments (a ``keras.StatelessScope`` maps the variables to them), so
  training the model further never leaves stale weights in a compiled call.
- PyTorch: eager, under ``torch.no_grad`` (a method that differentiates turns
  gradients on for its own pass).

``tracing_count()`` says how many traces were made (0 on PyTorch).
"""

from __future__ import annotations

from keras_cam import backend


def Compiled(fn, model=None, eager_first=False):  # noqa: N802  (a factory that reads like the class it returns)
    """``fn`` compiled once per input signature on the current backend (see the module docstring)."""
    return backend.get().compiled(fn, model=model, eager_first=eager_first)


def signature(args):
    """What makes the backend's compiled function trace anew for ``args``."""
    return backend.get().signature(args)

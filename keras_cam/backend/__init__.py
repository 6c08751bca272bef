"""What differs between TensorFlow, JAX and PyTorch, and nothing else.

Everything above this package is written once, in ``keras.ops``. A backend
module gives the few things ``keras.ops`` does not:

- ``compiled(fn, model, eager_first)``: ``fn`` compiled once per input
  signature (``tf.function``; ``jax.jit`` with the model's weights as
  arguments; PyTorch eager), with ``tracing_count()``;
- ``tapped_gradients(forward, inputs)``: run ``forward(tap, *inputs)``, in
  which ``tap(key, tensor)`` marks a captured activation, and return the
  gradient of the summed score with respect to the last tapped value of each
  key and to ``inputs`` (``tf.GradientTape``, ``jax.grad`` of ``A + delta``
  at ``delta = 0``, ``torch.autograd.grad``);
- ``tapped_hvp(forward, vectors=None)``: the same gradient and its product with
  the Hessian of the summed score, ``H v`` (``v`` the tapped value itself by
  default; nested tapes, ``jax.jvp`` of ``jax.grad``, ``create_graph=True``);
- ``guided_relu(x)``: ReLU whose gradient passes only positive values where
  the input is positive (the guided-backpropagation rule);
- the loop of the streamed many-pass methods: ``fori_loop``, ``scatter_add``,
  ``dynamic_rows`` (a run-time number of rows; on JAX a fixed size and a
  mask) and ``host_callback`` (a progress bar from inside a compiled call);
- ``host_function(fn, args, shape, dtype)``: a numpy function's result as a tensor,
  also from inside a compiled call (``tf.numpy_function``, ``jax.pure_callback``);
- ``wide_float`` (float64 where the backend has it), ``is_out_of_memory``,
  ``to_numpy``, ``is_tensor`` and ``no_grad``;
- ``deterministic_ops()``: make the backend's kernels deterministic for the whole
  process (TensorFlow's op determinism; JAX and PyTorch on a CPU already are).

The backend is Keras's (``keras.backend.backend()``); legacy tf-keras is TensorFlow.
"""

from __future__ import annotations

import importlib

from keras_cam import _compat

_MODULES = {"tensorflow": "keras_cam.backend.tensorflow", "jax": "keras_cam.backend.jax",
            "torch": "keras_cam.backend.torch"}


def name() -> str:
    """``"tensorflow"``, ``"jax"`` or ``"torch"``: the backend keras-cam computes with."""
    if _compat.LEGACY:
        return "tensorflow"
    backend = _compat.keras.backend.backend()
    if backend not in _MODULES:
        raise RuntimeError(
            f"keras-cam runs on the TensorFlow, JAX and PyTorch backends of Keras; KERAS_BACKEND is "
            f"{backend!r}. Set KERAS_BACKEND to 'tensorflow', 'jax' or 'torch'."
        )
    return backend


def get():
    """The backend module (imported once)."""
    return importlib.import_module(_MODULES[name()])


def is_tensorflow() -> bool:
    return name() == "tensorflow"


def require_tensorflow(what: str):
    """Raise a clear error when ``what`` (a TensorFlow-only feature) is used on another backend."""
    if not is_tensorflow():
        raise RuntimeError(
            f"{what} works only on the TensorFlow backend; Keras runs on {name()!r} here. "
            f"Run with KERAS_BACKEND=tensorflow (set before Keras is imported)."
        )


def __getattr__(attr):
    """``backend.compiled``, ``backend.tapped_gradients``, ...: the current backend's function."""
    if attr.startswith("__"):
        raise AttributeError(attr)
    return getattr(get(), attr)

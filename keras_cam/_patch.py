"""Temporary, restored-on-exit interception of a layer's ``call`` or attribute.

Explainers see inside a model by wrapping a layer's ``call`` for the duration
of one forward pass (in practice: one ``tf.function`` trace). The wrapper is an
instance attribute that shadows the class method and is deleted on exit, even
when the forward pass raises, so the user's model is left exactly as it was.
Works at any nesting depth and for subclassed models, because it uses the
model as it runs instead of rebuilding its graph.
"""

from __future__ import annotations

import contextlib

from keras_cam._compat import del_attr, set_attr

_MISSING = object()


@contextlib.contextmanager
def patched_attr(obj, name, value):
    """Set ``obj.<name> = value`` for the duration of the block, then restore it."""
    saved = obj.__dict__.get(name, _MISSING)
    set_attr(obj, name, value)
    try:
        yield
    finally:
        if saved is _MISSING:
            del_attr(obj, name)
        else:
            set_attr(obj, name, saved)


@contextlib.contextmanager
def wrapped_call(layer, on_output):
    """Route every ``layer.call`` output through ``on_output(output)`` in the block.

    ``on_output`` returns the tensor that the rest of the model sees (usually
    the same tensor, after recording or watching it).
    """
    inner = layer.call

    def call(*args, **kwargs):
        return on_output(inner(*args, **kwargs))

    with patched_attr(layer, "call", call):
        yield


@contextlib.contextmanager
def replaced_call(layer, fn):
    """Replace ``layer.call`` by ``fn(inner_call, *args, **kwargs)`` in the block."""
    inner = layer.call

    def call(*args, **kwargs):
        return fn(inner, *args, **kwargs)

    with patched_attr(layer, "call", call):
        yield

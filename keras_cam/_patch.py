"""Temporary, thread-local interception of a layer's ``call`` or ``activation``.

Explainers see inside a model by wrapping a layer's ``call`` for the duration
of one forward pass (in practice: one trace of the compiled computation).
Works at any nesting depth and for subclassed models, because it uses the
model as it runs instead of rebuilding its graph, and on every Keras backend,
because a layer's ``call`` is plain Python on all of them.

The interception applies to the thread that entered it, and to nothing else:
while the block is active, the attribute is a :class:`_Dispatch` that looks up
the current thread's stack of replacements and falls back to the original.
Another thread that calls the same model (a server predicting while it also
explains) runs the original layers, and two threads can explain one model at
once. The dispatcher is installed when the first thread enters and removed
when the last one leaves, even when the forward pass raises, so the user's
model is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import threading

from keras_cam._compat import del_attr, set_attr

_MISSING = object()
_lock = threading.Lock()
_local = threading.local()
_installed = {}  # (id(obj), name) -> [dispatch, saved __dict__ entry, number of active blocks]


class _Dispatch:
    """The attribute while intercepted: this thread's replacement, or the original."""

    __slots__ = ("key", "original")

    def __init__(self, key, original):
        self.key = key
        self.original = original

    def current(self):
        stack = getattr(_local, "stacks", {}).get(self.key)
        return stack[-1] if stack else self.original

    def __call__(self, *args, **kwargs):
        return self.current()(*args, **kwargs)

    def __getattr__(self, name):
        # ``__name__`` and the like read through to the original, so code that inspects
        # the attribute (``layer.activation.__name__``) sees what it would see without us.
        if name in _Dispatch.__slots__:
            raise AttributeError(name)
        return getattr(self.original, name)


def _stacks():
    stacks = getattr(_local, "stacks", None)
    if stacks is None:
        stacks = _local.stacks = {}
    return stacks


@contextlib.contextmanager
def intercepted(obj, name, make):
    """Inside the block, this thread sees ``obj.<name>`` as ``make(inner)``.

    ``inner`` is what this thread saw before (the original attribute, or an
    outer interception of the same attribute), so blocks nest. Other threads
    see the attribute unchanged.
    """
    key = (id(obj), name)
    with _lock:
        entry = _installed.get(key)
        if entry is None:
            dispatch = _Dispatch(key, getattr(obj, name))
            entry = _installed[key] = [dispatch, obj.__dict__.get(name, _MISSING), 0]
            set_attr(obj, name, dispatch)
        entry[2] += 1
    dispatch = entry[0]
    stack = _stacks().setdefault(key, [])
    value = make(dispatch.current())
    stack.append(value)
    try:
        yield
    finally:
        # Remove this block's own entry (blocks nest, so it is the last one).
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is value:
                del stack[i]
                break
        if not stack:
            _stacks().pop(key, None)
        with _lock:
            entry[2] -= 1
            if entry[2] == 0:
                del _installed[key]
                if entry[1] is _MISSING:
                    del_attr(obj, name)
                else:
                    set_attr(obj, name, entry[1])


def patched_attr(obj, name, value):
    """In the block, this thread sees ``obj.<name>`` as ``value`` (a callable).

    To wrap what the attribute is now, use :func:`intercepted` with a ``make(inner)``:
    reading ``obj.<name>`` while another block intercepts it gives the dispatcher,
    and a value that calls it would call itself.
    """
    return intercepted(obj, name, lambda inner: value)


def wrapped_call(layer, on_output):
    """Route every ``layer.call`` output through ``on_output(output)`` in the block.

    ``on_output`` returns the tensor that the rest of the model sees (usually
    the same tensor, after recording or watching it).
    """
    def make(inner):
        def call(*args, **kwargs):
            return on_output(inner(*args, **kwargs))
        return call
    return intercepted(layer, "call", make)


def replaced_call(layer, fn):
    """Replace ``layer.call`` by ``fn(inner_call, *args, **kwargs)`` in the block."""
    def make(inner):
        def call(*args, **kwargs):
            return fn(inner, *args, **kwargs)
        return call
    return intercepted(layer, "call", make)

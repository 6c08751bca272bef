"""The PyTorch backend: eager calls, gradients by ``torch.autograd.grad``."""

from __future__ import annotations

import numpy as np
import torch

NAME = "torch"


def is_tensor(x) -> bool:
    return torch.is_tensor(x)


def to_numpy(x):
    if torch.is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def no_grad():
    return torch.no_grad()


def executing_eagerly() -> bool:
    return True


def _detached(tree):
    if torch.is_tensor(tree):
        return tree.detach()
    if isinstance(tree, (list, tuple)):
        return type(tree)(_detached(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _detached(v) for k, v in tree.items()}
    return tree


def tapped_gradients(forward, inputs=()):
    """Run ``forward(tap, *inputs) -> (score (N,), aux)`` and differentiate the summed score.

    A tapped activation that does not require a gradient (frozen layers
    before it, or no input gradient asked for: the pass up to the first
    tapped value then runs under ``torch.no_grad``) is replaced by a detached
    copy that does, which is all ``dS/dA`` needs. Returns what
    :func:`keras_cam.backend.tensorflow.tapped_gradients` returns.
    """
    inputs = [x.detach().requires_grad_(True) for x in inputs]
    taps = {}

    def tap(key, t):
        torch.set_grad_enabled(True)  # undone when the `with` below exits, also on an error
        if torch.is_tensor(t) and t.is_floating_point() and not t.requires_grad:
            t = t.detach().requires_grad_(True)
        taps[key] = t
        return t

    # Without input gradients nothing before the first tapped value needs a graph: the forward pass
    # runs as inference up to it (no recorded activations, as fast as the model's no_grad call).
    with torch.enable_grad() if inputs else torch.no_grad():
        score, aux = forward(tap, *inputs)
        keys = [k for k in taps if torch.is_tensor(taps[k]) and taps[k].requires_grad]
        wrt = [taps[k] for k in keys] + inputs
        if score.requires_grad:
            grads = torch.autograd.grad(score.sum(), wrt, allow_unused=True)
        else:
            grads = [None] * len(wrt)
    n = len(keys)
    input_grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads[n:])]
    return (score.detach(), _detached(aux), _detached(taps), dict(zip(keys, grads[:n])),
            [g.detach() for g in input_grads])


def run_for_shapes(fn, *args):
    """Run ``fn(*args)`` for what it records about shapes (see the JAX backend's).

    PyTorch runs each op at once, without compiling it: ``fn`` runs as it is, without
    recording a graph for gradients.
    """
    with torch.no_grad():
        fn(*args)


def tapped_hvp(forward, vectors=None):
    """Run ``forward(tap) -> (score (N,), aux)``: the gradient of the summed score with
    respect to each tapped value ``A`` and its product with the Hessian,
    ``H v = d/dA <dS/dA, v>`` (the gradient taken with ``create_graph=True``,
    then differentiated once more).

    ``vectors`` maps a key to ``v``; by default ``v`` is the tapped value itself
    (detached), so that ``hvps[key] = H A``. Returns what
    :func:`keras_cam.backend.tensorflow.tapped_hvp` returns.

    Attention runs on PyTorch's plain ("math") kernel during the call: the
    fused CPU kernel's backward pass cannot be differentiated again.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    taps = {}

    def tap(key, t):
        if torch.is_tensor(t) and t.is_floating_point() and not t.requires_grad:
            t = t.detach().requires_grad_(True)
        taps[key] = t
        return t

    with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
        score, aux = forward(tap)
        keys = [k for k in taps if torch.is_tensor(taps[k]) and taps[k].requires_grad]
        wrt = [taps[k] for k in keys]
        if score.requires_grad and wrt:
            grads = list(torch.autograd.grad(score.sum(), wrt, allow_unused=True, create_graph=True))
        else:
            grads = [None] * len(wrt)
        terms = []
        for k, g in zip(keys, grads):
            if g is not None and g.requires_grad:
                v = taps[k].detach() if vectors is None or k not in vectors else vectors[k]
                terms.append((g * v.to(g.dtype)).sum())
        hvps = list(torch.autograd.grad(sum(terms), wrt, allow_unused=True)) if terms else [None] * len(wrt)
    hvps = [None if g is None else (torch.zeros_like(g) if h is None else h.detach()) for g, h in zip(grads, hvps)]
    grads = [None if g is None else g.detach() for g in grads]
    return score.detach(), _detached(aux), _detached(taps), dict(zip(keys, grads)), dict(zip(keys, hvps))


class _Guided(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn):
        ctx.fn = fn
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(ctx.fn(xx), xx, grad_outputs=torch.relu(dy))
        return g, None


def guided(fn, x):
    """``fn(x)`` (an element-wise ReLU) whose backward pass is ``fn'(x) * ReLU(dy)``."""
    return _Guided.apply(x, fn)


def is_out_of_memory(err) -> bool:
    return isinstance(err, torch.OutOfMemoryError)


class compiled:
    """``fn`` run eagerly, without building an autograd graph except where a method
    asks for gradients (:func:`tapped_gradients`); PyTorch has nothing to trace."""

    def __init__(self, fn, model=None, eager_first=False, once=False):
        self._fn = fn

    def __call__(self, *args):
        with torch.no_grad():
            return self._fn(*args)

    def tracing_count(self):
        return 0

    experimental_get_tracing_count = tracing_count


def signature(args):
    return tuple((tuple(a.shape), str(a.dtype)) if hasattr(a, "shape") else (type(a), a) for a in args)


def fori_loop(n, body, initial):
    """``initial`` after ``body(i, value)`` for ``i`` in ``range(n)``."""
    value = initial
    for i in range(int(n)):
        value = body(i, value)
    return value


def scatter_add(values, indices, updates):
    """``values`` with ``updates`` added at ``indices`` ``(b, r)`` (duplicates summed)."""
    index = tuple(indices.long().T)
    return values.index_put(index, updates.to(values.dtype), accumulate=True)


def dynamic_rows(x, start, count, size):
    """Rows ``start .. start + count - 1`` of ``x`` for a scalar ``count <= size``.

    Returns ``(rows, valid)``: the rows themselves (PyTorch runs eagerly)
    and ``valid`` None.
    """
    start = int(start)
    return x[start:start + int(count)], None


def host_callback(fn, *args):
    """Call ``fn(*args)`` (PyTorch runs eagerly)."""
    fn(*(int(a) for a in args))


def host_function(fn, args, shape, dtype):
    """``fn(*numpy arrays) -> numpy array`` run on the host (PyTorch runs eagerly): a tensor
    of ``shape`` and ``dtype`` on the first argument's device."""
    out = np.asarray(fn(*(to_numpy(a) for a in args)), dtype)
    return torch.as_tensor(out, device=args[0].device if args and torch.is_tensor(args[0]) else None)


def deterministic_ops():
    """Nothing to switch on: PyTorch's CPU kernels used here are deterministic."""


def wide_float() -> str:
    """The widest float dtype computations can use here."""
    return "float64"

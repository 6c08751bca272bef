"""Non-negative matrix factorization, batched, in ``keras.ops`` (every backend).

``V ~ H W`` with ``V`` ``(n, K)`` non-negative (``n`` samples, ``K``
features: a layer's channel vectors), ``H`` ``(n, k)`` the coefficients and
``W`` ``(k, K)`` the ``k`` basis vectors, all non-negative. The loss is the
squared Frobenius error ``||V - H W||^2``, minimized by Lee and Seung's
multiplicative updates (NIPS 2001)::

    W <- W * (H^T V) / (H^T H W)
    H <- H * (V W^T) / (H W W^T)

each of which never increases the loss. A leading batch axis ``(B, n, K)``
factorizes ``B`` problems at once. The start is ``W`` drawn on the host from
``seed`` (the same on every backend, and for every problem of a batch, so a
problem gives the same factors alone or batched) and a constant ``H`` (so
reordering the rows of ``V`` reorders those of ``H``); the loop runs compiled
(:mod:`keras_cam.compiled`) in blocks of iterations, and stops early when a
block lowers the loss by less than ``tol`` of it.

Why multiplicative updates rather than scikit-learn's coordinate descent:
measured by ``python bench/bench_concepts.py --nmf`` on DFF's problem (256
images of MobileNetV2 at 96 px: ``n = 2304`` positions, ``K = 1280``
channels, ``k = 5``), the updates reach scikit-learn's loss in less time on
the CPU, run on the accelerator of any backend, and batch several problems
(see docs/concepts.md for the numbers). ``solver="sklearn"`` is kept as the
second code path.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_cam import _compat
from keras_cam import backend as _backend
from keras_cam._compat import ops
from keras_cam.compiled import Compiled

# A floor under the updates' denominators: a coefficient or basis entry whose gradient has no
# negative part stays where it is instead of dividing by zero.
EPSILON = 1e-12
# Iterations per compiled block; the early stop is checked between blocks.
BLOCK = 25


@dataclasses.dataclass
class Factorization:
    """What :func:`nmf` found.

    Attributes:
        coefficients: ``H`` ``(n, k)`` (``(B, n, k)`` batched) float32, non-negative.
        basis: ``W`` ``(k, K)`` (``(B, k, K)``) float32, non-negative.
        errors: the relative error ``||V - H W|| / ||V||`` after each block
            of iterations (after each iteration with ``history=True``),
            ``(blocks,)`` (``(blocks, B)`` batched).
        iterations: how many updates ran.
    """

    coefficients: np.ndarray
    basis: np.ndarray
    errors: np.ndarray
    iterations: int


def check_count(name, value, least=1):
    """``value`` as an int ``>= least``; anything else is a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"`{name}` must be an int >= {least}; received {value!r}.")
    return int(value)


def check_seed(seed):
    """``seed`` as an int; anything else is a ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an int; received {seed!r}.")
    return int(seed)


def _t(x):
    return ops.swapaxes(x, -1, -2)


def squared_error(v, h, w):
    """``||V - H W||^2`` per problem, from ``||V||^2 - 2 <H, V W^T> + <H^T H, W W^T>`` (no ``n x K`` product)."""
    vv = ops.sum(ops.square(v), axis=(-2, -1))
    cross = ops.sum(h * ops.matmul(v, _t(w)), axis=(-2, -1))
    gram = ops.sum(ops.matmul(_t(h), h) * ops.matmul(w, _t(w)), axis=(-2, -1))
    return ops.maximum(vv - 2.0 * cross + gram, 0.0)


def _update_w(v, h, w):
    return w * ops.matmul(_t(h), v) / ops.maximum(ops.matmul(ops.matmul(_t(h), h), w), EPSILON)


def _update_h(v, h, w):
    return h * ops.matmul(v, _t(w)) / ops.maximum(ops.matmul(h, ops.matmul(w, _t(w))), EPSILON)


def _block(v, h, w, n, fixed_basis):
    """``n`` multiplicative updates of ``(H, W)`` (of ``H`` alone with ``fixed_basis``), and the loss."""
    def body(i, hw):
        h, w = hw
        if not fixed_basis:
            w = _update_w(v, h, w)
        return _update_h(v, h, w), w
    h, w = _backend.fori_loop(n, body, (h, w))
    return h, w, squared_error(v, h, w)


# One compiled block per problem shape (each traced once: a new shape is a new problem, not a retrace),
# the most recent _MAX_SHAPES kept.
_compiled_blocks = {}
_MAX_SHAPES = 16


def _run_block(v, h, w, n, fixed_basis):
    key = (tuple(v.shape), int(h.shape[-1]), bool(fixed_basis))
    block = _compiled_blocks.pop(key, None) or Compiled(_block)
    _compiled_blocks[key] = block
    while len(_compiled_blocks) > _MAX_SHAPES:
        del _compiled_blocks[next(iter(_compiled_blocks))]
    # The count is a tensor, so blocks of any length share the trace.
    return block(v, h, w, ops.convert_to_tensor(int(n), "int32"), bool(fixed_basis))


def _as_problems(data, name):
    v = np.asarray(_compat.to_host(data), np.float32)
    if v.ndim not in (2, 3):
        raise ValueError(f"`{name}` must be (n, K) or a batch of problems (B, n, K); received shape {v.shape}.")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"`{name}` holds NaN or Inf values; NMF needs finite non-negative data.")
    if v.size and v.min() < 0:
        raise ValueError(f"`{name}` has negative values (the smallest is {float(v.min()):.4g}); NMF needs "
                         f"non-negative data: take a layer after a ReLU, or shift the data.")
    return v


def _start(k, features, seed):
    """``W``'s start ``U(0.1, 1)`` ``(k, K)``, drawn on the host (the same on every backend)."""
    return np.random.default_rng(seed).uniform(0.1, 1.0, (k, features)).astype(np.float32)


def nmf(data, k, *, iterations=200, seed=0, tol=1e-4, basis=None, history=False, solver="mu"):
    """Factorize non-negative ``data`` ``V ~ H W`` into ``k`` parts (see the module docstring).

    Args:
        data: ``(n, K)`` non-negative, or ``(B, n, K)`` for ``B`` problems at once.
        k: the number of parts, ``1 <= k <= K``.
        iterations: the most updates.
        seed: the seed of the start (the same seed gives the same factors).
        tol: stop when a block of updates lowers the loss by less than
            ``tol`` times it (0 runs every iteration).
        basis: a fixed ``W`` ``(k, K)`` (``(B, k, K)``): only ``H`` is fitted
            (the coefficients of new data on a learned basis).
        history: record the error after every update (slower; for checks).
        solver: ``"mu"`` (multiplicative updates, in ``keras.ops``) or
            ``"sklearn"`` (scikit-learn's coordinate descent, on the host;
            unbatched, no fixed basis).

    Returns:
        A :class:`Factorization`.

    Raises:
        ValueError: for negative or non-finite data, ``k`` larger than the
            features, or a non-positive count.
    """
    v = _as_problems(data, "data")
    k = check_count("k", k)
    iterations = check_count("iterations", iterations)
    seed = check_seed(seed)
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) or not tol >= 0:
        raise ValueError(f"`tol` must be a number >= 0; received {tol!r}.")
    n, features = v.shape[-2:]
    if k > features:
        raise ValueError(f"`k` is {k}, more parts than the data's {features} features (channels); "
                         f"choose k <= {features}.")
    if n < 1:
        raise ValueError("`data` has no rows to factorize.")
    if solver == "sklearn":
        return _sklearn(v, k, iterations, seed, tol, basis)
    if solver != "mu":
        raise ValueError(f"`solver` must be 'mu' or 'sklearn'; received {solver!r}.")
    batched = v.ndim == 3
    # Each problem is solved on V / max(V) (the updates are scale-free, their floor EPSILON is not: the
    # activations of an untrained deep network can be 1e-11), and W is scaled back.
    unit = v.reshape(len(v) if batched else 1, -1).max(axis=1) if v.size else np.ones(1, np.float32)
    unit = np.where(unit > 0, unit, 1.0).astype(np.float32)
    problems = (v if batched else v[None]) / unit[:, None, None]
    # Both factors start at the data's scale: mean(V) = mean(H W) when H and W hover around sqrt(mean(V) / k).
    scale = np.sqrt(np.maximum(problems.mean(axis=(1, 2)), 1e-12) / k)[:, None, None].astype(np.float32)
    h = np.broadcast_to(scale, problems.shape[:2] + (k,)).astype(np.float32)
    fixed = basis is not None
    if fixed:
        w = np.asarray(_compat.to_host(basis), np.float32)
        w = w if w.ndim == 3 else w[None]
        if w.shape != (len(problems), k, features) or (w.size and w.min() < 0):
            raise ValueError(f"`basis` must be non-negative ({'B, ' if batched else ''}k, K) = "
                             f"{(k, features)}; received shape {np.shape(basis)}.")
        w = w / unit[:, None, None]
    else:
        w = _start(k, features, seed)[None] * (scale / 0.55)
    vt, ht, wt = (ops.convert_to_tensor(a) for a in (problems, h, w))
    norm = np.sqrt(np.maximum((problems.astype(np.float64) ** 2).sum(axis=(1, 2)), 1e-30))
    step = 1 if history else BLOCK
    # Each problem stops on its own: once a block lowers its loss by less than tol, its factors stay as
    # they are while the others go on, so a problem's result does not depend on its batchmates.
    errors, done, previous = [], 0, None
    active = np.ones(len(problems), bool)
    while done < iterations:
        m = min(step, iterations - done)
        h_new, w_new, loss = _run_block(vt, ht, wt, m, fixed)
        keep = ops.convert_to_tensor(active[:, None, None])
        ht, wt = ops.where(keep, h_new, ht), ops.where(keep, w_new, wt)
        done += m
        loss = np.where(active, np.asarray(_compat.to_host(loss), np.float64), previous if previous is not None
                        else np.nan)
        errors.append(np.sqrt(loss) / norm)
        if not history and tol > 0 and previous is not None:
            active &= ~(previous - loss <= tol * previous)
            if not active.any():
                break
        previous = loss
    h, w = np.asarray(_compat.to_host(ht)), np.asarray(_compat.to_host(wt)) * unit[:, None, None]
    errors = np.stack(errors)
    if not batched:
        h, w, errors = h[0], w[0], errors[:, 0]
    return Factorization(coefficients=h, basis=w, errors=errors.astype(np.float64), iterations=done)


def _sklearn(v, k, iterations, seed, tol, basis):
    """The second code path: scikit-learn's NMF (coordinate descent, Frobenius loss)."""
    from sklearn.decomposition import NMF

    if v.ndim != 2 or basis is not None:
        raise ValueError("solver='sklearn' factorizes one (n, K) problem with a learned basis; use solver='mu' "
                         "for batches of problems or a fixed basis.")
    model = NMF(k, init="random", random_state=seed, max_iter=iterations, tol=tol)
    h = model.fit_transform(v.astype(np.float64))
    w = model.components_
    error = np.linalg.norm(v - h @ w) / max(np.linalg.norm(v), 1e-30)
    return Factorization(coefficients=h.astype(np.float32), basis=w.astype(np.float32),
                         errors=np.array([error]), iterations=int(model.n_iter_))

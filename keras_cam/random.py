"""Counter-based random numbers that are the same on every backend.

A draw depends only on ``(seed, id, element)``: each is hashed with 32-bit
integer arithmetic (``lowbias32``, a published integer hash by C. Wellons,
2018: xor-shifts and two odd multipliers), which wraps identically on
TensorFlow, JAX, PyTorch and numpy. Two hashes give two uniforms ``u1, u2`` in
(0, 1), and the Box-Muller transform gives a standard normal
``sqrt(-2 ln u1) cos(2 pi u2)``. So an image explained alone or in any batch,
at any ``batch_size``, on any backend, sees the same noise.

:func:`normal_numpy` is the same draw computed with numpy (the reference the tests hold it to).
"""

from __future__ import annotations

import math

import numpy as np

from keras_cam._compat import ops

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # as int32
_GOLDEN = 0x9E3779B9 - (1 << 32)


def _shr(x, k):
    """Logical right shift of int32 values (an arithmetic shift, then the sign bits masked)."""
    return ops.bitwise_and(ops.right_shift(x, k), (1 << (32 - k)) - 1)


def hash32(x):
    """``lowbias32`` of int32 values (wrapping arithmetic)."""
    x = ops.bitwise_xor(x, _shr(x, 16))
    x = x * _M1
    x = ops.bitwise_xor(x, _shr(x, 15))
    x = x * _M2
    return ops.bitwise_xor(x, _shr(x, 16))


def _uniform(h):
    """A uniform in (0, 1) from the top 24 bits of a hash."""
    return (ops.cast(_shr(h, 8), "float32") + 0.5) / float(1 << 24)


def normal(seed, ids, shape):
    """Standard normal draws ``(len(ids), *shape)`` float32; row ``r`` depends only on ``(seed, ids[r])``.

    Args:
        seed: an int.
        ids: ``(b,)`` integer tensor, one draw per entry.
        shape: the shape of one draw (a tuple of ints).
    """
    n = math.prod(int(s) for s in shape)
    ids = ops.cast(ids, "int32")
    key = hash32(hash32(ops.cast(ids, "int32") * _GOLDEN) ^ int(np.int32(np.uint32(seed & 0xFFFFFFFF))))
    j = ops.arange(n, dtype="int32") * 2
    h1 = hash32(ops.bitwise_xor(key[:, None], j[None]))
    h2 = hash32(ops.bitwise_xor(key[:, None], j[None] + 1))
    z = ops.sqrt(-2.0 * ops.log(_uniform(h1))) * ops.cos(2.0 * math.pi * _uniform(h2))
    return ops.reshape(z, (-1,) + tuple(int(s) for s in shape))


def uniform(seed, ids, shape):
    """Uniform draws in (0, 1) ``(len(ids), *shape)`` float32 (multiples of 2^-24 plus 2^-25);
    row ``r`` depends only on ``(seed, ids[r])``, the same on every backend.

    Args:
        seed: an int.
        ids: ``(b,)`` integer tensor, one draw per entry.
        shape: the shape of one draw (a tuple of ints).
    """
    n = math.prod(int(s) for s in shape)
    key = hash32(hash32(ops.cast(ids, "int32") * _GOLDEN) ^ int(np.int32(np.uint32(seed & 0xFFFFFFFF))))
    h = hash32(ops.bitwise_xor(key[:, None], ops.arange(n, dtype="int32")[None] * 2))
    return ops.reshape(_uniform(h), (-1,) + tuple(int(s) for s in shape))


def _hash_np(x):
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(_M1)
    x ^= x >> np.uint32(15)
    x *= np.uint32(_M2 & 0xFFFFFFFF)
    x ^= x >> np.uint32(16)
    return x


def normal_numpy(seed, ids, shape):
    """:func:`normal` computed with numpy, in float64."""
    n = math.prod(int(s) for s in shape)
    ids = np.asarray(ids).astype(np.int64).astype(np.uint32)
    with np.errstate(over="ignore"):
        key = _hash_np(_hash_np(ids * np.uint32(_GOLDEN & 0xFFFFFFFF)) ^ np.uint32(seed & 0xFFFFFFFF))
        j = np.arange(n, dtype=np.uint32) * np.uint32(2)
        h1 = _hash_np(key[:, None] ^ j[None])
        h2 = _hash_np(key[:, None] ^ (j[None] + np.uint32(1)))
    u1 = ((h1 >> np.uint32(8)).astype(np.float64) + 0.5) / (1 << 24)
    u2 = ((h2 >> np.uint32(8)).astype(np.float64) + 0.5) / (1 << 24)
    return (np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)).reshape((len(ids),) + tuple(shape))


def uniform_numpy(seed, ids, shape):
    """:func:`uniform` computed with numpy, in float64."""
    n = math.prod(int(s) for s in shape)
    ids = np.asarray(ids).astype(np.int64).astype(np.uint32)
    with np.errstate(over="ignore"):
        key = _hash_np(_hash_np(ids * np.uint32(_GOLDEN & 0xFFFFFFFF)) ^ np.uint32(seed & 0xFFFFFFFF))
        h = _hash_np(key[:, None] ^ (np.arange(n, dtype=np.uint32) * np.uint32(2))[None])
    return (((h >> np.uint32(8)).astype(np.float64) + 0.5) / (1 << 24)).reshape((len(ids),) + tuple(shape))

"""The attention kernels' internal layout against the op's public one, for tests.

The op takes ``q (b, lq, h, d)`` and ``k, v (b, lk, hk, d)``; the vendor kernels
(splash, the fused GQA form) take queries grouped by key head,
``(b, hk, h/hk, lq, d)``, and keys/values head-major, ``(b, hk, lk, d)``.
"""

import jax.numpy as jnp


def to_internal(q, k, v, hk):
    """``(q5, k4, v4)`` in float32 from public ``q, k, v`` with ``hk`` key heads."""
    b, lq, h, d = q.shape
    q5 = jnp.asarray(q, jnp.float32).reshape(b, lq, hk, h // hk, d).transpose(0, 2, 3, 1, 4)
    return q5, jnp.asarray(k, jnp.float32).transpose(0, 2, 1, 3), jnp.asarray(v, jnp.float32).transpose(0, 2, 1, 3)


def to_public(out5):
    """``(b, lq, h, dv)`` from a kernel output grouped ``(b, hk, h/hk, lq, dv)``."""
    b, hk, g, lq, dv = out5.shape
    return out5.transpose(0, 3, 1, 2, 4).reshape(b, lq, hk * g, dv)

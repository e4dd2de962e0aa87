"""``2**y`` in float32 as a short polynomial, for exponentials inside CPU scan steps.

Inside the ``"sequential"`` selective scan, whose step is otherwise a
handful of multiply-adds over the ``(b, n, d)`` state, XLA:CPU's ``jnp.exp``
of the decays ``exp(Δ A)`` took half of the forward pass (at ``(b, l, d, n) =
(16, 1024, 128, 16)`` the forward went 22 -> 11 ms with the exponential
replaced by a multiply-add, in a timing experiment). :func:`exp2` is about 14
elementwise ops that XLA fuses into the step: ``y = k + f`` with ``k =
round(y)`` and ``|f| <= 1/2``, ``2**f`` by a degree-6 polynomial (Horner,
multiply-adds), ``2**k`` written straight into the float32 exponent bits. In
that scan (``A`` scaled by :data:`LOG2_E` once per call) the forward went
22 -> 16 ms and forward+backward 90 -> 76 ms at that size on JAX 0.10.2,
25 -> 17 and 109 -> 85 ms on 0.11.2 (minimum of 7-11 alternating calls, idle
2-core VM, 2026-12-06).

The polynomial was fitted to ``2**f`` on ``[-1/2, 1/2]`` for relative error
(Lawson's reweighted least squares in float64; error of the fit 2.1e-9).
Evaluated in float32 the result is within 1.02e-7 relative of the exact
value (8.0e-8 as XLA:CPU compiles it, with fused multiply-adds; float32
``numpy.exp2``: 1.04e-7) and its errors average out (mean signed error
4e-10). A degree-5 fit, one multiply-add cheaper, was biased by 4.2e-8,
which the product of 4096 decays turned into a 1.7e-4 relative error
(2.7e-6 at most with degree 6; ``tests/ops/test_fast_exp.py``).
"""

import jax
import jax.numpy as jnp
from jax import lax

LOG2_E = 1.4426950408889634  # exp(x) = 2 ** (x * LOG2_E)

# 2**f ≈ Σ_i _COEFFS[i] f**i on [-1/2, 1/2].
_COEFFS = (
    1.0000000006025818,
    0.6931472079667853,
    0.2402264675728303,
    0.05550324609921834,
    0.009618486982745993,
    0.0013401415716844715,
    0.00015349587723585697,
)


def exp2(y: jax.Array) -> jax.Array:
    """``2**y``: the polynomial form for float32 ``y``, ``jnp.exp2`` for other dtypes.

    For float32: within 1.1e-7 relative of the exact value wherever the result
    is a normal float32 (``-126 <= y < 127.5``). Below that the exact result is
    subnormal: ``+0`` for ``y < -126.5``, and for ``-126.5 <= y < -126`` the
    subnormal or ``+0`` where the platform flushes them (XLA:CPU does).
    ``inf`` from ``y >= 127.5`` (float32 itself overflows from 128, so results
    in ``[2**127.5, 2**128)`` come out as ``inf``); NaN stays NaN.

    Args:
      y: the exponent, any shape.

    Returns:
      ``2**y`` in ``y``'s dtype.
    """
    y = jnp.asarray(y)
    if y.dtype != jnp.float32:
        return jnp.exp2(y)
    # k in [-127, 128]: its exponent field k + 127 is 0 (the value 0) at the
    # bottom and 255 (inf) at the top; in between 2**k is exact.
    y = jnp.clip(y, -127.0, 128.0)
    k = jnp.round(y)
    f = y - k  # exact: y and k are within 1/2 of each other
    p = jnp.float32(_COEFFS[-1])
    for c in _COEFFS[-2::-1]:
        p = p * f + jnp.float32(c)
    two_k = lax.bitcast_convert_type((k.astype(jnp.int32) + 127) << 23, jnp.float32)
    return p * two_k

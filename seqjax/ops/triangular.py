"""Unit lower-triangular solves ``(I + A) X = B`` that do not deadlock XLA:CPU.

The chunked delta rule solves one such system per chunk (its UT transform).
``lax.linalg.triangular_solve`` on CPU calls jaxlib's batched LAPACK kernel,
which splits the batch over XLA's intra-op thread pool and blocks until its
pieces finish. When the thunk executor runs two of these solves at once (the
forward and the backward pass of a chunked delta rule hold several), each
blocks a pool thread waiting for work queued behind the other: a deadlock.
Reproduced with jaxlib 0.10.2 on a 2-core machine: a jitted function of three
independent batched 64 x 64 solves hangs on its second call, every thread in
a futex wait (``TriMatrixEquationSolverKernel`` in ``BlockingCounter::Wait``);
one solve alone does not hang. MQAR training of ``gated_deltanet`` hung the
same way after its first step.

So on CPU the system is solved by forward substitution written in JAX (a
``fori_loop`` over the ``C`` rows, each a batched vector-matrix product: the
same ``O(C^2 m)`` work as LAPACK's ``trsm``) inside ``lax.custom_linear_solve``,
whose transpose back-substitutes the cotangent the same way and keeps no
per-row residuals; forward mode (``jvp``, ``jacfwd``) works too.
On GPU and TPU, where the solver is a device kernel, ``triangular_solve`` runs.
Substitution rather than a product-of-squares inverse: the Neumann series
``sum_j (-A)^j`` has terms of order ``binom(C, j)`` when keys align and
cancels catastrophically in float32 (see :mod:`seqjax.ops.delta_rule`).
"""

import jax
import jax.numpy as jnp

METHODS = ("auto", "substitution", "lapack")


def solve_unit_lower(a: jax.Array, b: jax.Array, *, method: str = "auto") -> jax.Array:
    """``X`` with ``(I + a) X = b``, ``a`` strictly lower triangular.

    Args:
      a: ``(..., C, C)``; only the entries below the diagonal are read.
      b: ``(..., C, m)``, the same batch shape as ``a``.
      method: ``"substitution"`` (forward substitution in JAX, ``custom_linear_solve``),
        ``"lapack"`` (``lax.linalg.triangular_solve``), or ``"auto"``:
        substitution when lowered for CPU, ``lapack`` for GPU and TPU.

    Returns:
      ``X``, ``(..., C, m)``, in the dtype of ``b``.

    Raises:
      ValueError: an unknown ``method``, or shapes that do not match.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; allowed: {', '.join(METHODS)}")
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or b.shape[:-1] != a.shape[:-1]:
        raise ValueError(f"a must be (..., C, C) and b (..., C, m) with the same leading shape; "
                         f"got a {a.shape}, b {b.shape}")
    if method == "substitution":
        return _substitute(a, b)
    if method == "lapack":
        return _lapack(a, b)
    # Chosen when lowering, per platform: a CPU executable never holds the LAPACK call.
    return jax.lax.platform_dependent(a, b, cpu=_substitute, default=_lapack)


def _lapack(a, b):
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    return jax.lax.linalg.triangular_solve(eye + a, b, left_side=True, lower=True, unit_diagonal=True)


def _forward_substitution(a, b):
    """Row ``r`` of ``X`` is ``b_r - sum_{i<r} a_ri X_i``; rows not yet solved are zero."""
    a = jnp.tril(a, -1)

    def row(r, x):
        a_r = jax.lax.dynamic_index_in_dim(a, r, axis=-2, keepdims=False)  # (..., C)
        b_r = jax.lax.dynamic_index_in_dim(b, r, axis=-2, keepdims=False)  # (..., m)
        x_r = b_r - jnp.einsum("...i,...im->...m", a_r, x)
        return jax.lax.dynamic_update_index_in_dim(x, x_r, r, axis=-2)

    return jax.lax.fori_loop(0, a.shape[-1], row, jnp.zeros_like(b))


def _substitute(a, b):
    """The substitution solve as a ``lax.custom_linear_solve``: both autodiff modes, no loop residuals.

    JAX differentiates it implicitly: forward mode solves ``(I + a) dX = db - da X``
    (the same substitution), reverse mode back-substitutes the cotangent
    (``transpose_solve``: ``db = (I + a)^-T g``) and reads ``da = -db X^T`` off the
    matvec, below the diagonal only (the matvec reads ``tril(a, -1)``).
    """
    a = jnp.tril(a, -1)

    def matvec(x):
        return x + jnp.einsum("...ri,...im->...rm", a, x)

    def solve(_, rhs):
        return _forward_substitution(a, rhs)

    def transpose_solve(_, rhs):
        # (I + a)^T is upper triangular: reversing the order of the rows and of the
        # columns turns it into a lower one, solved by the same substitution.
        upper = jnp.flip(jnp.swapaxes(a, -1, -2), (-2, -1))
        return jnp.flip(_forward_substitution(upper, jnp.flip(rhs, -2)), -2)

    return jax.lax.custom_linear_solve(matvec, b, solve, transpose_solve)


__all__ = ["METHODS", "solve_unit_lower"]

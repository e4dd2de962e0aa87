"""solve_unit_lower: both methods against NumPy's float64 solve, values and gradients, and no CPU deadlock."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.ops.triangular import solve_unit_lower
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close

METHODS = ["substitution", "lapack", "auto"]


def _system(rng, batch=(2, 3), c=7, m=5):
    # Entries above the diagonal are noise that the solve must ignore.
    a = rng.standard_normal(batch + (c, c)) * 0.4
    b = rng.standard_normal(batch + (c, m))
    return a, b


def _ref(a, b):
    """float64: X = (I + tril(a, -1))^-1 b, and the gradients of sum(w * X)."""
    m = np.eye(a.shape[-1]) + np.tril(a, -1)
    x = np.linalg.solve(m, b)
    return x, m


@pytest.mark.parametrize("method", METHODS)
def test_float64_solution(rng, method):
    a, b = _system(rng)
    with jax.enable_x64(True):
        x = solve_unit_lower(jnp.asarray(a), jnp.asarray(b), method=method)
        assert x.dtype == jnp.float64
    assert_rel_close(x, _ref(a, b)[0], RTOL_F64, method)


@pytest.mark.parametrize("method", METHODS)
def test_float32_values_and_gradients(rng, method):
    a, b = _system(rng, c=16)
    w = rng.standard_normal(b.shape)
    x_ref, m = _ref(a, b)
    # d sum(w X) / db = M^-T w;  d/da = -(M^-T w) X^T, below the diagonal only.
    db_ref = np.linalg.solve(np.swapaxes(m, -1, -2), w)
    da_ref = np.tril(-np.einsum("...rm,...im->...ri", db_ref, x_ref), -1)

    def loss(a_, b_):
        return jnp.sum(jnp.asarray(w, jnp.float32) * solve_unit_lower(a_, b_, method=method))

    x = solve_unit_lower(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), method=method)
    da, db = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    assert_rel_close(x, x_ref, RTOL_SCAN, f"{method} X")
    assert_rel_close(db, db_ref, RTOL_GRAD, f"{method} db")
    assert_rel_close(da, da_ref, RTOL_GRAD, f"{method} da")


def test_bad_inputs_are_named():
    a = jnp.zeros((3, 4, 4))
    with pytest.raises(ValueError, match="method='qr' is not allowed"):
        solve_unit_lower(a, jnp.ones((3, 4, 2)), method="qr")
    with pytest.raises(ValueError, match=r"got a \(3, 4, 4\), b \(3, 5, 2\)"):
        solve_unit_lower(a, jnp.ones((3, 5, 2)))


def test_cpu_lowering_holds_no_lapack_solve(rng):
    a, b = (jnp.asarray(x, jnp.float32) for x in _system(rng))
    text = jax.jit(lambda a_, b_: solve_unit_lower(a_, b_)).lower(a, b).as_text()
    assert not any(word in text.lower() for word in ("trsm", "lapack", "triangular_solve"))


def test_concurrent_solves_do_not_deadlock_on_cpu():
    """Three independent batched solves in one program: jaxlib 0.10.2's LAPACK kernel hangs here.

    Run in a child process with a timeout, so a regression fails this test
    instead of hanging the worker.
    """
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from seqjax.ops.triangular import solve_unit_lower
        rng = np.random.default_rng(0)
        args = [jnp.asarray(rng.normal(size=s) * 0.1, jnp.float32) for s in [(64, 32, 32), (64, 32, 48)] * 3]
        f = jax.jit(lambda a1, b1, a2, b2, a3, b3: sum(solve_unit_lower(a, b).sum()
                                                       for a, b in ((a1, b1), (a2, b2), (a3, b3))))
        for _ in range(30):
            f(*args).block_until_ready()
        print("ok")
    """)
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("method", METHODS)
def test_forward_mode_matches_the_float64_tangent(rng, method):
    """jvp (and so jacfwd / Hessians) works: dX = (I + A)^-1 (dB - tril(dA) X), against NumPy."""
    a, b = _system(rng, c=9)
    da, dbt = rng.standard_normal(a.shape), rng.standard_normal(b.shape)
    x_ref, m = _ref(a, b)
    dx_ref = np.linalg.solve(m, dbt - np.tril(da, -1) @ x_ref)
    with jax.enable_x64(True):
        x, dx = jax.jvp(lambda a_, b_: solve_unit_lower(a_, b_, method=method), (jnp.asarray(a), jnp.asarray(b)),
                        (jnp.asarray(da), jnp.asarray(dbt)))
    assert_rel_close(x, x_ref, RTOL_F64, f"{method} X")
    assert_rel_close(dx, dx_ref, RTOL_F64, f"{method} dX")

"""LSSL mixer: fixed HiPPO-LegS, Krylov kernel = unrolled recurrence, float64 loop reference and closed-form matrix.

LSSL runs S4's ConvSSM body, so its checks are ``test_s4.py``'s, with LSSL's
system (:func:`tests.mixers.ref_s4.lssl_system`). The contract (step vs
parallel, causality, segments, mixing matrix vs fast path, bfloat16, ...) is
checked for every mixer in ``test_contract.py``; the causal/bidirectional
switch and the ConvSSM field checks in ``test_s4.py``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.lssl  # noqa: F401  (registers "lssl")
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers import ref_s4 as ref
from tests.mixers.test_s4 import _init, _mk, check_gradients, check_matrix, check_reference
from tests.ops.utils import RTOL_F64, assert_rel_close


def test_init(rng):
    m = get("lssl")(d_state=64)
    p = ref.params_of(_init(m, harness.random_input(rng, 1, 1, 64)))
    # A and B are fixed (HiPPO-LegS), not parameters.
    assert set(p) == {"C", "D", "log_step", "out"}
    assert p["C"].shape == (1, 64, 64) and p["out"]["kernel"].shape == (64, 128)  # GLU: Dense(d, 2d)
    step = np.exp(p["log_step"])
    assert step.min() >= 0.001 * (1 - 1e-6) and step.max() <= 0.1 * (1 + 1e-6)
    assert abs(np.mean(step < math.sqrt(0.001 * 0.1)) - 0.5) < 0.15  # log-uniform
    assert abs(p["C"].std() - 1) < 0.05 and abs(p["C"].mean()) < 0.05  # C ~ N(0, 1)
    assert 0.6 < p["D"].std() < 1.4


def test_fixed_legs_discretisation(rng):
    # The materialised Ā is the bilinear transform of LegS (closed form here);
    # LegS is lower triangular, so Ā is too, with the LegS eigenvalues
    # (-1, ..., -N) mapped by z = (1 + Δλ/2)/(1 - Δλ/2) on its diagonal.
    N = 16
    x = harness.random_input(rng, 1, 1, 4)
    v = _init(_mk("lssl", d_state=N), x)
    with jax.enable_x64(True):
        system = _mk("lssl", d_state=N, dtype=jnp.float64).apply(v, 1, method="init_cache")["system"]
    A, B = ref.legs_closed_form(N)
    step = np.exp(ref.params_of(v)["log_step"])
    for h in range(4):
        left = np.eye(N) - step[h] / 2 * A
        assert_rel_close(system["A"][h], np.linalg.solve(left, np.eye(N) + step[h] / 2 * A), RTOL_F64, "Abar")
        assert_rel_close(system["B"][h], np.linalg.solve(left, step[h] * B), RTOL_F64, "Bbar")
        lam = -np.arange(1, N + 1)
        z = (1 + step[h] * lam / 2) / (1 - step[h] * lam / 2)
        np.testing.assert_allclose(np.diag(system["A"][h]), z, rtol=1e-12)
        assert np.abs(np.triu(system["A"][h], 1)).max() < 1e-12


@pytest.mark.parametrize("kw", [(), (("bidirectional", True), ("output_map", "linear"))])
def test_matches_reference(rng, kw):
    """Krylov kernel = unrolled recurrence; layer and step rollout = the loop reference (f32, f64)."""
    check_reference(rng, "lssl", dict(kw))


def test_gradients(rng):
    check_gradients(rng, "lssl", dict(bidirectional=True))


@pytest.mark.parametrize("kw", [(), (("bidirectional", True),)])
def test_matrix_is_the_closed_form(rng, kw):
    """The matrix read off the layer (FFT, or the masked Toeplitz with segments) is C Ā^(t-s) B̄ plus D."""
    check_matrix(rng, "lssl", dict(kw))

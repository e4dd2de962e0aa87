"""Resettable steps (Lu et al. 2023): ``step(x_t, cache, reset)`` equals the parallel form with segments.

"Structured State Space Models for In-Context Reinforcement Learning" resets
the recurrent state at episode boundaries. Here a rollout that resets rows at
random positions must give what ``__call__`` gives with ``segment_ids`` that
start a new segment at exactly those positions (the scan restarts from zero,
Mamba's conv window sees zeros before the segment).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import mixers
from tests.mixers import harness
from tests.ops.utils import rel_err

RESETTABLE = {"s5": dict(d_state=8, dt_min=0.05, dt_max=0.5), "lru": dict(d_state=8, r_min=0.5),
              "mamba": dict(d_state=4), "lmu": dict(d_state=8, theta=6.0, d_u=2),
              "gam": dict(num_slots=8), "mlstm": dict(num_heads=2, chunk_size=4),  # chunk 4 < 14: the chunked op
              "mlstm_block": dict(num_heads=2, chunk_size=4), "lstm": dict(num_heads=2),
              "hiss": dict(chunk_size=3, low=4, high=4, dt_min=0.05, dt_max=0.5),
              "convlstm": dict(frame_height=2, frame_width=2)}  # frames of 2×2 pixels × 4 channels


@pytest.mark.parametrize("name", sorted(RESETTABLE))
def test_reset_rollout_equals_segments(name, rng):
    m = mixers.get(name)(**RESETTABLE[name])
    assert m.resettable
    batch, length = 3, 14
    x = harness.random_input(rng, batch, length)
    v = harness.perturb(harness.jit_init(m, x), rng)
    J = harness.Jitted(m)
    reset = rng.random((batch, length)) < 0.3
    reset[:, 0] = rng.random(batch) < 0.5  # a reset at the start changes nothing
    reset[0, 5] = reset[1, 6] = True  # at least one restart mid-row
    reset[2, 1:] = False  # one row never restarts: reset must stay per row
    ids = jnp.asarray(np.cumsum(reset, axis=1), jnp.int32)
    y_par = J.apply(v, x, segment_ids=ids)
    cache = J.apply(v, batch, method="init_cache")
    ys = []
    for t in range(length):
        y_t, cache = J.apply(v, x[:, t], cache, jnp.asarray(reset[:, t]), method="step")
        ys.append(y_t)
    y_step = jnp.stack(ys, axis=1)
    err = rel_err(y_step, y_par)
    assert err <= harness.RTOL, f"{name}: reset rollout vs segments: relative error {err:.2e}"
    # The resets matter: the parallel form without segments differs after the first restart.
    assert rel_err(J.apply(v, x)[0, 5:], y_par[0, 5:]) > 1e-3
    # 0/1 integers work as booleans.
    cache0 = J.apply(v, batch, method="init_cache")
    y0, _ = J.apply(v, x[:, 0], cache0, jnp.asarray(reset[:, 0], jnp.int32), method="step")
    assert rel_err(y0, y_step[:, 0]) <= 1e-6


def test_reset_checks(rng):
    m = mixers.get("lru")(d_state=4)
    x = harness.random_input(rng, 2, 3)
    v = harness.jit_init(m, x)
    cache = m.apply(v, 2, method="init_cache")
    with pytest.raises(ValueError, match=r"reset must have shape \(batch,\)=\(2,\)"):
        m.apply(v, x[:, 0], cache, jnp.zeros((3,), bool), method="step")
    g = mixers.get("gru")(num_heads=2)
    vg = harness.jit_init(g, x)
    with pytest.raises(ValueError, match="gru.step: reset is not supported"):
        g.apply(vg, x[:, 0], g.apply(vg, 2, method="init_cache"), jnp.zeros((2,), bool), method="step")

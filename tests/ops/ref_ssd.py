"""Float64 reference for ssd (Mamba-2): the recurrence as a Python loop over time.

Written from the equations of Dao & Gu (2024), "Transformers are SSMs", with
nothing taken from the vectorised code: per head a state ``H_t`` of shape
``(p, n)`` evolves as

    H_t = exp(dt_t * A) * H_{t-1} + dt_t * outer(x_t, B_t)
    y_t = H_t @ C_t + D * x_t

and at a segment change the state restarts from zero before the update.

Works with ``xp = numpy`` (forward checks) and ``xp = jax.numpy`` under
``jax.enable_x64`` (autodiff of the reference for gradient checks): it uses only
operations that both support and builds the outputs with lists and ``xp.stack``.
With ``jax.numpy`` each time step is one jitted call of the same step function
(the Python loop over time stays; ``t`` is passed as an array), which keeps
autodiff of a 130-step loop fast without compiling an unrolled graph.
"""

import jax
import numpy as np


def _step(xp, state, keep, t, x, dt, A, B_heads, C_heads, D):
    """Time step ``t`` for all batch rows and heads.

    state (b, h, p, n); keep (b,) 1 to continue, 0 to restart; x (b, l, h, p);
    dt (b, l, h); A (h,); B_heads, C_heads (b, l, h, n); D (h,) or None.
    """
    x_t, dt_t, b_t, c_t = x[:, t], dt[:, t], B_heads[:, t], C_heads[:, t]
    state = state * keep[:, None, None, None]
    decay = xp.exp(dt_t * A[None, :])  # (b, h)
    inp = (dt_t[:, :, None] * x_t)[:, :, :, None] * b_t[:, :, None, :]
    state = decay[:, :, None, None] * state + inp
    y_t = xp.sum(state * c_t[:, :, None, :], axis=-1)  # (b, h, p)
    if D is not None:
        y_t = y_t + D[None, :, None] * x_t
    return state, y_t


_step_jit = jax.jit(_step, static_argnums=0)


def ssd_ref(xp, x, dt, A, B, C, D=None, initial_state=None, segment_ids=None):
    """Runs the Mamba-2 recurrence one time step at a time.

    Args:
      xp: numpy or jax.numpy.
      x: (b, l, h, p) inputs.
      dt: (b, l, h) positive step sizes.
      A: (h,) per-head scalar decay rate.
      B: (b, l, g, n) input projections; head i uses group i // (h // g).
      C: (b, l, g, n) output projections.
      D: (h,) skip connection, or None.
      initial_state: (b, h, p, n), or None for zeros; applies to the first
        segment only.
      segment_ids: (b, l) NumPy integers, or None.

    Returns:
      (y, final_state): y of shape (b, l, h, p) and the state after the last
      position, (b, h, p, n).
    """
    batch, length, heads, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    group_of_head = np.arange(heads) // (heads // groups)
    step = _step if xp is np else _step_jit
    if initial_state is None:
        state = xp.zeros((batch, heads, p, n), dtype=x.dtype)
    else:
        state = initial_state + 0 * x[:, 0, :, :, None]
    seg = None if segment_ids is None else np.asarray(segment_ids)
    # Each head's copy of its group's B and C: (b, l, h, n).
    B_heads = B[:, :, group_of_head]
    C_heads = C[:, :, group_of_head]
    ys = []
    for t in range(length):
        keep = np.ones(batch)
        if seg is not None and t > 0:
            # 1 where the sequence continues, 0 where a new segment starts.
            keep = (seg[:, t] == seg[:, t - 1]).astype(np.float64)
        # t as an array, so that the jitted step compiles once, not once per t.
        state, y_t = step(xp, state, keep, np.int32(t), x, dt, A, B_heads, C_heads, D)
        ys.append(y_t)
    return xp.stack(ys, axis=1), state

"""Float64 reference for linear_attention: the state recurrence as a Python loop.

Written from the equations, not from the vectorised code:

    S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_t^T      (S_t in R^{dk x dv})
    o_t = S_t^T q_t                                        (token t included)

with S_{-1} = initial_state (zeros if None) and S reset to zero at the first
position of each new segment. Without causality (``causal=False``, no decay, no
initial state) o_t = sum_s (q_t . k_s) v_s over t's whole segment.

Works with ``xp = numpy`` (forward checks) and ``xp = jax.numpy`` under
``jax.enable_x64`` (autodiff of the reference for gradient checks): outputs are
built with lists and ``xp.stack``, never by in-place assignment.
"""

import numpy as np


def _decay(xp, log_decay, t, shape):
    """exp(log_decay) at time t, shaped to broadcast against (b, h, dk)."""
    b, h, dk = shape
    if log_decay is None:
        return None
    if log_decay.ndim == 1:  # (h,): RetNet's fixed gamma per head
        return xp.exp(log_decay)[None, :, None] + xp.zeros((b, h, 1))
    if log_decay.ndim == 3:  # (b, l, h): one scalar per head and step
        return xp.exp(log_decay[:, t])[:, :, None]
    return xp.exp(log_decay[:, t])  # (b, l, h, dk): GLA's alpha_t per key channel


def linear_attention_ref(
    xp, q, k, v, log_decay=None, causal=True, initial_state=None, segment_ids=None
):
    """Linear attention by the literal recurrence, one time step at a time.

    Args:
      xp: numpy or jax.numpy.
      q, k: (b, l, h, dk).
      v: (b, l, h, dv).
      log_decay: None, (h,), (b, l, h) or (b, l, h, dk), entries <= 0.
      causal: False for the bidirectional sum (no decay, no initial state).
      initial_state: (b, h, dk, dv) or None.
      segment_ids: (b, l) integers (NumPy) or None; a change of id restarts S.

    Returns:
      (o, final_state): o (b, l, h, dv) and S after the last step (b, h, dk, dv).
    """
    b, l, h, dk = q.shape
    dv = v.shape[-1]
    seg = None if segment_ids is None else np.asarray(segment_ids)
    state = xp.zeros((b, h, dk, dv)) if initial_state is None else initial_state + 0.0
    states, outs = [], []
    for t in range(l):
        if seg is not None and t > 0:
            keep = xp.asarray((seg[:, t] == seg[:, t - 1]) * 1.0)[:, None, None, None]
            state = keep * state
        a = _decay(xp, log_decay, t, (b, h, dk))
        if a is not None:
            state = a[..., None] * state
        state = state + k[:, t, :, :, None] * v[:, t, :, None, :]
        states.append(state)
        outs.append(xp.sum(q[:, t, :, :, None] * state, axis=-2))
    if causal:
        return xp.stack(outs, axis=1), state
    if log_decay is not None or initial_state is not None:
        raise ValueError("the bidirectional reference takes no decay and no initial state")
    # Bidirectional: each position reads the state at the end of its segment,
    # which (without decay) is the segment's full sum of k_s v_s^T.
    outs = []
    for t in range(l):
        rows = []
        for i in range(b):
            end = t
            while end + 1 < l and (seg is None or seg[i, end + 1] == seg[i, t]):
                end += 1
            rows.append(xp.sum(q[i, t, :, :, None] * states[end][i], axis=-2))
        outs.append(xp.stack(rows))
    return xp.stack(outs, axis=1), state

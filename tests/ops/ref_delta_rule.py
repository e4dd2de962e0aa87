"""Float64 reference for delta_rule: the papers' recurrence as a Python loop.

Written from the equations in the papers' own orientation (the state ``S`` is
``dv x dk``; the op's is its transpose), not from the op's code:

    DeltaNet:       S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T
    Gated DeltaNet: S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T
    o_t = S_t q_t

with ``alpha_t = exp(log_decay_t)``, ``S_{-1}`` the transposed initial state
(zeros if None) and ``S`` set to zero before the first position of each new
segment. ``I - beta k k^T`` is built as a matrix (a dk x dk product per step),
unlike the op's rank-one update.

Works with ``xp = numpy`` (forward checks) and ``xp = jax.numpy`` under
``jax.enable_x64`` (autodiff of the reference for gradient checks): no
in-place assignment.
"""

import numpy as np


def delta_rule_ref(xp, q, k, v, beta, log_decay=None, initial_state=None, segment_ids=None):
    """The (gated) delta rule, one time step at a time.

    Args:
      xp: numpy or jax.numpy.
      q, k: ``(b, l, h, dk)``.
      v: ``(b, l, h, dv)``.
      beta: ``(b, l, h)``.
      log_decay: ``(b, l, h)`` or None.
      initial_state: ``(b, h, dk, dv)`` (the op's orientation) or None.
      segment_ids: ``(b, l)`` integers (NumPy) or None; a change of id restarts S.

    Returns:
      ``(o, final_state)``: ``o`` ``(b, l, h, dv)``, the final state ``(b, h, dk, dv)``.
    """
    b, l, h, dk = q.shape
    dv = v.shape[-1]
    seg = None if segment_ids is None else np.asarray(segment_ids)
    eye = xp.asarray(np.eye(dk))
    S = xp.zeros((b, h, dv, dk)) if initial_state is None else xp.swapaxes(initial_state, -1, -2) + 0.0
    outs = []
    for t in range(l):
        if seg is not None and t > 0:
            S = xp.asarray((seg[:, t] == seg[:, t - 1]) * 1.0)[:, None, None, None] * S
        k_t, v_t, b_t = k[:, t], v[:, t], beta[:, t][..., None, None]
        householder = eye - b_t * (k_t[..., :, None] * k_t[..., None, :])  # (b, h, dk, dk)
        S = xp.einsum("bhvk,bhkj->bhvj", S, householder)
        if log_decay is not None:
            S = xp.exp(log_decay[:, t])[..., None, None] * S
        S = S + b_t * (v_t[..., :, None] * k_t[..., None, :])
        outs.append(xp.einsum("bhvk,bhk->bhv", S, q[:, t]))
    return xp.stack(outs, axis=1), xp.swapaxes(S, -1, -2)

"""Float64 reference for mlstm: the paper's stabilised recurrence as a Python loop.

Written from xLSTM (Beck et al. 2024) §2.3 and its stabilisation (eqs. 15-17,
App. B), in the paper's orientation (``C`` is ``dv x dk``, the op's is its
transpose), not from the op's code::

    m_t = max(log f_t + m_{t-1}, i~_t)
    i'_t = exp(i~_t - m_t),  f'_t = exp(log f_t + m_{t-1} - m_t)
    C_t = f'_t C_{t-1} + i'_t v_t k_t^T,   n_t = f'_t n_{t-1} + i'_t k_t
    h~_t = C_t q_t / max(|n_t^T q_t|, exp(-m_t))

(the stabilised ``max(|n^T q|, 1)``). The state starts at the initial state
(``(0, 0, 0)`` if None) and is set to ``(0, 0, 0)`` before the first position
of each new segment. ``m`` is a stabiliser without gradient: ``stop`` (identity
for NumPy, ``jax.lax.stop_gradient`` for autodiff) is applied to it.

Works with ``xp = numpy`` (forward checks) and ``xp = jax.numpy`` under
``jax.enable_x64`` (autodiff of the reference for gradient checks): no
in-place assignment.
"""

import numpy as np


def mlstm_ref(xp, q, k, v, log_i, log_f, initial_state=None, segment_ids=None, stop=lambda x: x):
    """The stabilised mLSTM recurrence, one time step at a time.

    Args:
      xp: numpy or jax.numpy.
      q, k: ``(b, l, h, dk)``.
      v: ``(b, l, h, dv)``.
      log_i, log_f: ``(b, l, h)``.
      initial_state: ``(C (b, h, dk, dv) in the op's orientation, n (b, h, dk), m (b, h))`` or None.
      segment_ids: ``(b, l)`` integers (NumPy) or None; a change of id restarts the state.
      stop: applied to every new ``m``.

    Returns:
      ``(h~, (C, n, m))``: ``h~`` ``(b, l, h, dv)``; the final state in the op's orientation.
    """
    b, l, h, dk = q.shape
    dv = v.shape[-1]
    seg = None if segment_ids is None else np.asarray(segment_ids)
    if initial_state is None:
        C, n, m = xp.zeros((b, h, dv, dk)), xp.zeros((b, h, dk)), xp.zeros((b, h))
    else:
        C, n, m = xp.swapaxes(initial_state[0], -1, -2) + 0.0, initial_state[1] + 0.0, initial_state[2] + 0.0
    outs = []
    for t in range(l):
        if seg is not None and t > 0:
            keep = xp.asarray((seg[:, t] == seg[:, t - 1]) * 1.0)[:, None]
            C, n, m = keep[..., None, None] * C, keep[..., None] * n, keep * m
        m_new = stop(xp.maximum(log_f[:, t] + m, log_i[:, t]))
        f_s = xp.exp(log_f[:, t] + m - m_new)
        i_s = xp.exp(log_i[:, t] - m_new)
        C = f_s[..., None, None] * C + i_s[..., None, None] * (v[:, t][..., :, None] * k[:, t][..., None, :])
        n = f_s[..., None] * n + i_s[..., None] * k[:, t]
        m = m_new
        num = xp.einsum("bhvk,bhk->bhv", C, q[:, t])
        den = xp.maximum(xp.abs(xp.sum(n * q[:, t], axis=-1)), xp.exp(-m))
        outs.append(num / den[..., None])
    return xp.stack(outs, axis=1), (xp.swapaxes(C, -1, -2), n, m)

"""Float64 references for sLSTM and mLSTM (Beck et al. 2024): recurrences as loops.

Each reference loops over time (and over heads for sLSTM) in either the paper's
plain form (``stabilised=False``: ``i = exp(i~)`` as is, so it overflows for
large gates) or its stabilised form with the paper's ``m_0 = 0``. The mixer
runs differently on purpose (sLSTM: ``m_1 = i~_1``; mLSTM ``__call__``: the
parallel form), so agreement checks the algorithm, not a copy of it.

Parameters are the mixer's own (``nn.meta.unbox(variables)["params"]``), with the
layouts of ``seqjax.mixers.xlstm``. The references take the arguments of those
in ``ref_recurrent.py`` (its module docstring) plus ``stabilised``, and work
with ``xp = numpy`` and with ``xp = jax.numpy`` under ``jax.enable_x64`` (no
in-place assignment). :func:`mlstm_matrix` is the closed-form mixing matrix,
NumPy only.
"""

import math

import numpy as np

from tests.mixers.ref_recurrent import at, input_preactivations, keep_state, reset, run_heads, sigmoid


def log_sigmoid(xp, z):
    """log(sigmoid(z)) = -log(1 + exp(-z)), without overflow."""
    return -xp.logaddexp(0.0 * z, -z)


def slstm_ref(xp, params, x, num_heads, segment_ids=None, stabilised=True):
    """sLSTM: c = f c + i z, n = f n + i, h = o c / n; i = exp(i~), f = sigmoid(f~).

    ``stabilised``: run the paper's stabiliser m (eqs. 15-17, m_0 = 0) instead
    of the plain exponentials; the other arguments as ``ref_recurrent``'s.
    """

    def cell(g_in, g_rec, head, st):
        _, c, n, m = st
        g = g_in + g_rec
        i_pre, f_pre, z, o = (at(xp, g, k, 1) for k in range(4))
        z, o = xp.tanh(z), sigmoid(xp, o)
        if stabilised:
            log_f = log_sigmoid(xp, f_pre)
            m_new = xp.maximum(log_f + m, i_pre)
            i = xp.exp(i_pre - m_new)
            f = xp.exp(log_f + m - m_new)
        else:
            m_new = m
            i = xp.exp(i_pre)
            f = sigmoid(xp, f_pre)
        c = f * c + i * z
        n = f * n + i
        return [o * c / n, c, n, m_new]

    return run_heads(xp, params, x, num_heads, 4, cell, 4, segment_ids)


def mlstm_ref(xp, params, x, num_heads, segment_ids=None, stabilised=True):
    """mLSTM: C = f C + i k v^T, n = f n + i k, h~ = C^T q / max(|n^T q|, 1), h = o h~.

    ``stabilised``: the paper's stabiliser m (m_0 = 0; denominator
    ``max(|n^T q|, exp(-m))``) instead of the plain exponentials.
    """
    batch, length, d = x.shape
    head_dim = d // num_heads
    pre = input_preactivations(xp, params, x, num_heads, 4)
    gates = xp.reshape(xp.matmul(x, params["gate_proj"]["kernel"]), (batch, length, 2, num_heads))
    gates = gates + params["gate_bias"]
    scale = 1.0 / math.sqrt(head_dim)
    zero = 0.0 * at(xp, at(xp, at(xp, pre, 0, 1), 0, 1), 0, 1)  # (batch, head_dim)
    cs = [zero[:, :, None] * zero[:, None, :] for _ in range(num_heads)]
    ns = [zero for _ in range(num_heads)]
    ms = [zero[:, 0] for _ in range(num_heads)]
    outputs = []
    for t in range(length):
        keep = keep_state(segment_ids, t)
        pre_t, gates_t = at(xp, pre, t, 1), at(xp, gates, t, 1)
        heads = []
        for j in range(num_heads):
            c, n, m = reset(xp, cs[j], keep), reset(xp, ns[j], keep), reset(xp, ms[j], keep)
            q, k, v, o = (at(xp, at(xp, pre_t, j, 1), g, 1) for g in range(4))
            k = k * scale
            i_pre, f_pre = (at(xp, at(xp, gates_t, g, 1), j, 1) for g in range(2))
            if stabilised:
                log_f = log_sigmoid(xp, f_pre)
                m_new = xp.maximum(log_f + m, i_pre)
                i = xp.exp(i_pre - m_new)
                f = xp.exp(log_f + m - m_new)
                floor = xp.exp(-m_new)
            else:
                m_new = m
                i = xp.exp(i_pre)
                f = sigmoid(xp, f_pre)
                floor = 1.0 + 0.0 * m
            c = f[:, None, None] * c + i[:, None, None] * (k[:, :, None] * v[:, None, :])
            n = f[:, None] * n + i[:, None] * k
            num = xp.sum(c * q[:, :, None], axis=1)  # C^T q: (batch, dv)
            den = xp.maximum(xp.abs(xp.sum(n * q, axis=1)), floor)
            heads.append(sigmoid(xp, o) * num / den[:, None])
            cs[j], ns[j], ms[j] = c, n, m_new
        outputs.append(xp.concatenate(heads, axis=-1))
    h = xp.stack(outputs, axis=1)
    return xp.matmul(h, params["out_proj"]["kernel"])


def mlstm_matrix(params, x, num_heads, segment_ids=None):
    """The mLSTM mixing matrix from the unrolled plain recurrence, entry by entry, float64.

    Unrolling ``C_t = f_t C_{t-1} + i_t k_t v_t^T`` and ``n_t = f_t n_{t-1} + i_t k_t``
    in ``h~_t = C_t^T q_t / max(|n_t^T q_t|, 1)`` gives ``h~_t = Σ_s M[t, s] v_s`` with::

        M[b, h, t, s] = (q_t · k_s) i_s Π_{s<j≤t} f_j / max(|Σ_s' (same for s')|, 1)

    for ``s ≤ t`` with no segment start in ``(s, t]``, 0 elsewhere (a start
    restarts ``C`` and ``n`` at zero). The output gate is applied after the mix.

    Args:
      params: the mixer's unboxed params (NumPy float64).
      x: ``(batch, length, d)`` float64.
      num_heads: number of heads.
      segment_ids: optional ``(batch, length)`` ints.

    Returns:
      ``(batch, heads, length, length)`` float64.
    """
    batch, length, d = x.shape
    pre = input_preactivations(np, params, x, num_heads, 4)
    gates = np.reshape(x @ params["gate_proj"]["kernel"], (batch, length, 2, num_heads)) + params["gate_bias"]
    scale = 1.0 / math.sqrt(d // num_heads)
    M = np.zeros((batch, num_heads, length, length))
    for b in range(batch):
        for t in range(length):
            for s in range(t + 1):
                if segment_ids is not None and len(set(np.asarray(segment_ids)[b, s : t + 1].tolist())) > 1:
                    continue  # the id changes somewhere in (s, t]: a segment start between them
                for h in range(num_heads):
                    decay = np.prod(sigmoid(np, gates[b, s + 1 : t + 1, 1, h]))
                    qk = np.dot(pre[b, t, h, 0], pre[b, s, h, 1] * scale)
                    M[b, h, t, s] = qk * np.exp(gates[b, s, 0, h]) * decay
            M[b, :, t] /= np.maximum(np.abs(M[b, :, t].sum(axis=-1)), 1.0)[:, None]
    return M

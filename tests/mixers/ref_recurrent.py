"""Float64 references for the head-wise LSTM and GRU: the cell equations as loops.

Written from the equations (Hochreiter & Schmidhuber 1997; Cho et al. 2014 with
the cuDNN/PyTorch reset-after candidate), looping over time and over heads, each
head an independent small RNN with its own recurrent block. They read the
mixer's own parameters (``nn.meta.unbox(variables)["params"]``) with the layout
of ``seqjax.mixers.recurrent``: ``in_proj`` ``(d, gates*d)`` read as
``(heads, gates, head_dim)``, ``bias (heads, gates, head_dim)``, ``recurrent
(heads, head_dim, gates*head_dim)``, ``out_proj`` ``(d, d)``.

Every reference here and in ``ref_xlstm.py`` is called ``ref(xp, params, x,
num_heads, segment_ids=None, ...)``: ``xp`` is numpy or jax.numpy, ``params``
the mixer's unboxed params, ``x`` a ``(batch, length, d)`` float64 input,
``num_heads`` the heads, ``segment_ids`` ``(batch, length)`` numpy ints or None
(a change of id restarts every state at zero); it returns the ``(batch,
length, d)`` output.

Works with ``xp = numpy`` and with ``xp = jax.numpy`` under ``jax.enable_x64``
(autodiff of the reference for gradient checks): no in-place assignment. Integer
indexing goes through :func:`at` (``xp.take``): with jax, ``a[:, t]`` compiles
one slice per ``t`` in eager autodiff, ``take`` one gather for all ``t`` (10x
faster tests).
"""


def at(xp, a, i, axis):
    """``a`` at integer index ``i`` along ``axis`` (the axis is removed)."""
    return xp.take(a, i, axis=axis)


def sigmoid(xp, z):
    """1 / (1 + exp(-z))."""
    return 1.0 / (1.0 + xp.exp(-z))


def input_preactivations(xp, params, x, num_heads, gates):
    """``x W + b`` read as ``(b, l, heads, gates, head_dim)``."""
    batch, length, d = x.shape
    pre = xp.matmul(x, params["in_proj"]["kernel"])
    return xp.reshape(pre, (batch, length, num_heads, gates, d // num_heads)) + params["bias"]


def keep_state(segment_ids, t):
    """``(b,)`` numpy bools: True where position ``t`` continues the segment of ``t - 1``."""
    if segment_ids is None or t == 0:
        return None
    return segment_ids[:, t] == segment_ids[:, t - 1]


def reset(xp, state, keep):
    """Zeroes ``state[i]`` (any shape) for sequences ``i`` that start a new segment."""
    if keep is None:
        return state
    mask = keep.reshape((-1,) + (1,) * (state.ndim - 1))
    return xp.where(mask, state, 0.0 * state)


def run_heads(xp, params, x, num_heads, gates, cell, n_states, segment_ids=None):
    """Loops over time and heads; ``cell(g_in, g_rec, head, states) -> states``; h = states[0]."""
    batch, length, d = x.shape
    head_dim = d // num_heads
    pre = input_preactivations(xp, params, x, num_heads, gates)
    zero = 0.0 * at(xp, at(xp, at(xp, pre, 0, 1), 0, 1), 0, 1)  # (batch, head_dim)
    states = [[zero for _ in range(n_states)] for _ in range(num_heads)]
    outputs = []
    for t in range(length):
        keep = keep_state(segment_ids, t)
        new_states = []
        pre_t = at(xp, pre, t, 1)
        for j in range(num_heads):
            st = [reset(xp, s, keep) for s in states[j]]
            rec = xp.matmul(st[0], at(xp, params["recurrent"], j, 0))  # this head's block only
            rec = xp.reshape(rec, (batch, gates, head_dim))
            new_states.append(cell(at(xp, pre_t, j, 1), rec, j, st))
        states = new_states
        outputs.append(xp.concatenate([s[0] for s in states], axis=-1))
    h = xp.stack(outputs, axis=1)
    return xp.matmul(h, params["out_proj"]["kernel"])


def lstm_ref(xp, params, x, num_heads, segment_ids=None):
    """Head-wise LSTM (signature: module docstring): c = f c + i tanh(z~), h = o tanh(c), y = h W_out."""

    def cell(g_in, g_rec, head, st):
        h, c = st
        g = g_in + g_rec
        i, f, z, o = (at(xp, g, k, 1) for k in range(4))
        c = sigmoid(xp, f) * c + sigmoid(xp, i) * xp.tanh(z)
        return [sigmoid(xp, o) * xp.tanh(c), c]

    return run_heads(xp, params, x, num_heads, 4, cell, 2, segment_ids)


def gru_ref(xp, params, x, num_heads, segment_ids=None):
    """Head-wise GRU (signature: module docstring), reset-after candidate.

    ``r = sigmoid(r~ + h R_r)``, ``u = sigmoid(u~ + h R_u)``,
    ``n = tanh(n~ + r * (h R_n + b_hn))`` with ``b_hn = params["recurrent_bias"]``
    ``(heads, head_dim)``, ``h = (1 - u) n + u h``, ``y = h W_out``.
    """

    def cell(g_in, g_rec, head, st):
        (h,) = st
        r_in, u_in, n_in = (at(xp, g_in, k, 1) for k in range(3))
        r_rec, u_rec, n_rec = (at(xp, g_rec, k, 1) for k in range(3))
        r = sigmoid(xp, r_in + r_rec)
        u = sigmoid(xp, u_in + u_rec)
        n = xp.tanh(n_in + r * (n_rec + at(xp, params["recurrent_bias"], head, 0)))
        return [(1.0 - u) * n + u * h]

    return run_heads(xp, params, x, num_heads, 3, cell, 1, segment_ids)

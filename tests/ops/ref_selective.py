"""Float64 reference for selective_scan (Mamba-1 S6): a Python loop over time.

Written from the equations of Gu & Dao 2023 (Algorithm 2) with the semantics of
``mamba_ssm``'s ``selective_scan_ref``, one position at a time (rows of the
batch side by side).
Works with ``xp = numpy`` (forward checks) and ``xp = jax.numpy`` under
``jax.enable_x64`` (autodiff of the reference for gradient checks): only
operations both modules share, outputs built with lists and ``xp.stack``.
"""


def _softplus(xp, x):
    # log(1 + e^x), written to stay finite for large x.
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))


def _steps(xp, x):
    """[x[:, 0], x[:, 1], ...] for a (b, l, ...) array."""
    return [part[:, 0] for part in xp.split(x, x.shape[1], axis=1)]


def _silu(xp, x):
    return x / (1.0 + xp.exp(-x))


def selective_scan_ref(
    xp, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    segment_ids=None,
):
    """y_t = C_t · h_t (+ D u_t)(* silu z_t), h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t.

    Args:
      xp: numpy or jax.numpy.
      u, delta: (b, l, d); z: (b, l, d) or None.
      A: (d, n).
      B, C: (b, l, n), or (b, l, g, n) with channel i using group i // (d // g).
      D, delta_bias: (d,) or None.
      delta_softplus: apply softplus to delta (+ delta_bias).
      segment_ids: (b, l) ints or None; the state restarts from zero at the first
        position of a new segment.

    Returns:
      (y, last_state): y (b, l, d) and the state after the last position (b, d, n).
    """
    batch, length, d = u.shape
    n = A.shape[1]
    h = xp.zeros((batch, d, n), dtype=u.dtype) + 0.0 * A  # h_{-1} = 0
    # Per-position slices taken with one split (not l slicing ops): under eager
    # jax autodiff every distinct slice would otherwise compile its own program.
    u_s, delta_s, B_s, C_s = (_steps(xp, x) for x in (u, delta, B, C))
    z_s = None if z is None else _steps(xp, z)
    ys = []
    for t in range(length):
        if segment_ids is not None and t > 0:
            # Rows whose segment id changes at t start again from h_{t-1} = 0.
            same = [segment_ids[i][t] == segment_ids[i][t - 1] for i in range(batch)]
            h = h * xp.asarray([[[1.0 if s else 0.0]] for s in same], dtype=h.dtype)
        dt = delta_s[t]  # (b, d)
        if delta_bias is not None:
            dt = dt + delta_bias
        if delta_softplus:
            dt = _softplus(xp, dt)
        # Channel ch reads group ch // (d // g): each group row repeated d // g times.
        if B.ndim == 3:
            b_t, c_t = B_s[t][:, None, :], C_s[t][:, None, :]  # broadcast over d
        else:
            per = d // B.shape[2]
            b_t, c_t = xp.repeat(B_s[t], per, axis=1), xp.repeat(C_s[t], per, axis=1)
        a_bar = xp.exp(dt[:, :, None] * A)  # (b, d, n)
        bu_bar = (dt * u_s[t])[:, :, None] * b_t
        h = a_bar * h + bu_bar
        y = xp.sum(c_t * h, axis=2)  # (b, d)
        if D is not None:
            y = y + D * u_s[t]
        if z is not None:
            y = y * _silu(xp, z_s[t])
        ys.append(y)
    return xp.stack(ys, axis=1), h

"""Float64 reference for linear_scan: the recurrence written as a Python loop.

Works with ``xp = numpy`` (forward checks) and ``xp = jax.numpy`` under
``jax.enable_x64`` (autodiff of the reference for gradient checks).
"""


def linear_scan_ref(xp, a, b, h0=None, reverse=False, segment_ids=None):
    """h[:, t] = a[:, t] * h[:, t-1] + b[:, t], restarting at segment changes.

    Args:
      xp: numpy or jax.numpy.
      a: broadcastable to b's shape (same rank).
      b: (batch, length, ...).
      h0: (batch, ...) or None for zeros.
      reverse: scan from the end.
      segment_ids: (batch, length) ints or None.

    Returns:
      (h, h_last) with h of b's shape and h_last the state after the scan.
    """
    batch, length = b.shape[:2]
    a = xp.broadcast_to(a, b.shape)
    order = range(length - 1, -1, -1) if reverse else range(length)
    h = xp.zeros((batch,) + b.shape[2:], dtype=b.dtype) if h0 is None else h0 + 0 * b[:, 0]
    out = [None] * length
    prev_t = None
    for t in order:
        rows = []
        for i in range(batch):
            keep = prev_t is None or segment_ids is None or segment_ids[i][t] == segment_ids[i][prev_t]
            state = h[i] if keep else 0 * h[i]
            rows.append(a[i, t] * state + b[i, t])
        h = xp.stack(rows)
        out[t] = h
        prev_t = t
    return xp.stack(out, axis=1), h

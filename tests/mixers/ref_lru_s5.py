"""Float64 loop references for the LRU and S5 mixers, written from the papers.

Each function takes the mixer's own parameters (pulled out of the Flax
variables with :func:`params_of`) and runs the paper's recurrence as an
explicit Python loop over time. ``xp`` is ``numpy`` or ``jax.numpy``: only
operations both support are used (lists + ``xp.stack``, no in-place writes),
so tests can also differentiate these very functions with JAX in float64.

* LRU (Orvieto et al. 2023, eqs. (1)-(2) and Appendix A)::

      λ = exp(-exp(ν) + i exp(θ));  x_t = λ ⊙ x_{t-1} + γ ⊙ (B u_t);
      y_t = Re(C x_t) + D ⊙ u_t

* S5 (Smith et al. 2023, Section 3 / Appendix D, conjugate-symmetric form)::

      ZOH:      Λ̄ = exp(ΛΔ),  B̄ = Λ⁻¹(Λ̄ - I) B̃
      bilinear: Λ̄ = (I - Δ/2 Λ)⁻¹(I + Δ/2 Λ),  B̄ = (I - Δ/2 Λ)⁻¹ Δ B̃
      x_t = Λ̄ x_{t-1} + B̄ u_t;  y_t = 2 Re(C̃ x_t) + D u_t
      bidirectional: also x^b_t = Λ̄ x^b_{t+1} + B̄ u_t and
      y_t = 2 Re(C̃_fwd x_t + C̃_bwd x^b_t) + D u_t

Segments: where the id changes the state restarts from zero (for the reversed
scan: where the id of the next position differs).

The mixing matrices (:func:`lru_matrix`, :func:`s5_matrix`) are the closed
forms of those scans, entry by entry: per mode ``n``, ``M[n, t, s] =
a_n^(t-s)`` for ``s <= t`` in the same segment (``a = λ`` or ``Λ̄``), acting
on the projected input (``γ ⊙ B u`` or ``B̄ u``).
"""

import numpy as np

from tests.mixers.harness import runs_of


def params_of(variables, dtype=np.float64):
    """The ``params`` collection as a flat dict of float64 NumPy arrays."""
    import flax.linen as nn

    return {k: np.asarray(v, dtype) for k, v in nn.meta.unbox(variables)["params"].items()}


def decay_matrix(a, batch, length, segment_ids=None, reverse=False):
    """``M[b, n, t, s] = a_n^(t-s)`` (``s <= t``; ``reverse``: ``a_n^(s-t)``, ``s >= t``), 0 across segments.

    The matrix of the diagonal scan ``h_t = a ⊙ h_{t-1} + v_t`` (or of the
    reversed one), written pair by pair with integer powers, complex128.

    Args:
      a: ``(n,)`` decays.
      batch: ``b``.
      length: ``l``.
      segment_ids: optional ``(b, l)`` ids.
      reverse: the reversed (anti-causal) scan.

    Returns:
      ``(b, n, l, l)`` complex.
    """
    runs = runs_of(segment_ids, batch, length)
    M = np.zeros((batch, a.shape[0], length, length), np.complex128)
    for t in range(length):
        for s_ in range(length):
            lag = s_ - t if reverse else t - s_
            if lag >= 0:
                M[:, :, t, s_] = np.where((runs[:, t] == runs[:, s_])[:, None], a[None] ** lag, 0.0)
    return M


def _resets(segment_ids, t, reverse):
    """(b, 1) bool: whether position t starts a new segment in scan order."""
    if segment_ids is None:
        return None
    nb = t + 1 if reverse else t - 1
    if nb < 0 or nb >= segment_ids.shape[1]:
        return None
    return (segment_ids[:, t] != segment_ids[:, nb])[:, None]


def _diag_scan(xp, lam, inputs, segment_ids, reverse):
    """x_t = lam ⊙ x_prev + inputs[t] with resets; inputs is a list over t of (b, n)."""
    length = len(inputs)
    order = range(length - 1, -1, -1) if reverse else range(length)
    state = xp.zeros_like(inputs[0])
    out = [None] * length
    for t in order:
        reset = _resets(segment_ids, t, reverse)
        if reset is not None:
            state = xp.where(reset, xp.zeros_like(state), state)
        state = lam * state + inputs[t]
        out[t] = state
    return out


def lru_reference(p, u, segment_ids=None, xp=np):
    """LRU output ``(b, l, d)`` from its parameters, by a loop over time.

    Args:
      p: dict with ``nu_log, theta_log, gamma_log (N,)``, ``B_re, B_im (N, d)``,
        ``C_re, C_im (d, N)``, ``D (d,)``.
      u: ``(b, l, d)`` real input.
      segment_ids: optional ``(b, l)`` integer ids (NumPy).
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      ``(b, l, d)`` real output.
    """
    lam = xp.exp(-xp.exp(p["nu_log"]) + 1j * xp.exp(p["theta_log"]))
    gamma = xp.exp(p["gamma_log"])
    B = (p["B_re"] + 1j * p["B_im"]) * gamma[:, None]
    C = p["C_re"] + 1j * p["C_im"]
    inputs = [u[:, t] @ B.T for t in range(u.shape[1])]
    states = _diag_scan(xp, lam, inputs, segment_ids, reverse=False)
    ys = [xp.real(states[t] @ C.T) + p["D"] * u[:, t] for t in range(u.shape[1])]
    return xp.stack(ys, axis=1)


def lru_matrix(p, x, segment_ids=None):
    """LRU's mixing matrix from the paper's recurrence: ``λ_n^(t-s)`` on ``γ ⊙ B u``.

    Args:
      p: the LRU's parameters.
      x: ``(b, l, d)`` input (an LTI matrix reads only its shape).
      segment_ids: optional ``(b, l)`` ids.

    Returns:
      ``(b, N, l, l)`` complex.
    """
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    return decay_matrix(lam, x.shape[0], x.shape[1], segment_ids)


def s5_discretize(p, method="zoh", clip_eigs=False, xp=np):
    """S5's ``(Λ̄, B̄)`` from ``Lambda_re, Lambda_im, B (M, H, 2), log_step``.

    Args:
      p: parameter dict.
      method: ``"zoh"`` or ``"bilinear"``.
      clip_eigs: clip ``Re Λ`` to ``<= -1e-4`` first.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      ``Λ̄ (M,)`` and ``B̄ (M, H)``, complex.
    """
    re = xp.minimum(p["Lambda_re"], -1e-4) if clip_eigs else p["Lambda_re"]
    Lam = re + 1j * p["Lambda_im"]
    B_tilde = p["B"][..., 0] + 1j * p["B"][..., 1]
    delta = xp.exp(p["log_step"])
    if method == "zoh":
        Lam_bar = xp.exp(Lam * delta)
        B_bar = ((Lam_bar - 1.0) / Lam)[:, None] * B_tilde
    elif method == "bilinear":
        inv = 1.0 / (1.0 - delta / 2.0 * Lam)
        Lam_bar = inv * (1.0 + delta / 2.0 * Lam)
        B_bar = (inv * delta)[:, None] * B_tilde
    else:
        raise ValueError(method)
    return Lam_bar, B_bar


def s5_reference(p, u, segment_ids=None, *, method="zoh", bidirectional=False, clip_eigs=False, xp=np):
    """S5 output ``(b, l, H)`` from its parameters, by loops over time.

    Args:
      p: dict with ``Lambda_re, Lambda_im, log_step (M,)``, ``B (M, H, 2)``,
        ``C (H, dirs·M, 2)``, ``D (H,)``.
      u: ``(b, l, H)`` real input.
      segment_ids: optional ``(b, l)`` integer ids (NumPy).
      method: ``"zoh"`` or ``"bilinear"``.
      bidirectional: add the reversed scan (second half of ``C``'s modes).
      clip_eigs: as the module's field.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      ``(b, l, H)`` real output.
    """
    Lam_bar, B_bar = s5_discretize(p, method, clip_eigs, xp)
    C = p["C"][..., 0] + 1j * p["C"][..., 1]
    m = Lam_bar.shape[0]
    inputs = [u[:, t] @ B_bar.T for t in range(u.shape[1])]
    fwd = _diag_scan(xp, Lam_bar, inputs, segment_ids, reverse=False)
    if bidirectional:
        bwd = _diag_scan(xp, Lam_bar, inputs, segment_ids, reverse=True)
    ys = []
    for t in range(u.shape[1]):
        z = fwd[t] @ C[:, :m].T
        if bidirectional:
            z = z + bwd[t] @ C[:, m:].T
        ys.append(2.0 * xp.real(z) + p["D"] * u[:, t])
    return xp.stack(ys, axis=1)


def s5_matrix(p, x, segment_ids=None, *, method="zoh", bidirectional=False, clip_eigs=False):
    """S5's mixing matrix from the paper's recurrence: ``Λ̄_n^(t-s)`` on ``B̄ u``.

    Bidirectional: the reversed scan's modes ``Λ̄_n^(s-t)`` (``s >= t``)
    follow the forward ones, in the order of the concatenated state ``C̃`` reads.

    Args:
      p: the S5 parameters.
      x: ``(b, l, H)`` input (only its shape).
      segment_ids: optional ``(b, l)`` ids.
      method: ``"zoh"`` or ``"bilinear"``.
      bidirectional: add the reversed modes.
      clip_eigs: as the module's field.

    Returns:
      ``(b, M, l, l)`` or ``(b, 2M, l, l)`` complex.
    """
    lam_bar, _ = s5_discretize(p, method, clip_eigs)
    mats = [decay_matrix(lam_bar, x.shape[0], x.shape[1], segment_ids, reverse=r) for r in (False, True)]
    return np.concatenate(mats, axis=1) if bidirectional else mats[0]

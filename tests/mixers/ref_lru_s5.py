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
"""

import numpy as np


def params_of(variables, dtype=np.float64):
    """The ``params`` collection as a flat dict of float64 NumPy arrays."""
    import flax.linen as nn

    return {k: np.asarray(v, dtype) for k, v in nn.meta.unbox(variables)["params"].items()}


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

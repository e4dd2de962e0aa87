"""LongVQ (Liu, Wang, Li, Wang, Lin & Li 2024, "LongVQ: Long Sequence Modeling with
Vector Quantization on Structured Memory", IJCAI 2024), causal.

The paper's layer is MEGA's gated SSM-attention block (Ma et al. 2023) whose
attention keys are vector-quantised against a fixed-size codebook, so that the
attention over everything beyond a local window is a read of a per-code memory
(Transformer-VQ's compressive cache, Lingle 2023) and the layer runs in linear
time. Per position, with ``x_t ∈ R^d``::

    structured memory (MEGA's multi-dimensional damped EMA, expansion n, per channel c):
        h_t[c] = (1 − α[c] ⊙ δ[c]) ⊙ h_{t−1}[c] + α[c] ⊙ β[c] · x_t[c]        (h ∈ R^n)
        x'_t   = silu(η[c] · h_t[c] + ω[c] · x_t[c])
    projections (one dense map of x', one of x):
        [u_t, z_t, r_t, g_t] = x'_t W + b;   φ_t = sigmoid(u_t) (d),  Z_t = silu(z_t) (z),
        γ_t = silu(r_t) (e),  v_t = silu(x_t W_v + b_v) (e)
        q_t = κ_q ⊙ Z_t + μ_q,   k_t = κ_k ⊙ Z_t + μ_k
    vector quantisation (codebook C ∈ R^{S×z}, S = ``codebook_size``):
        c_t = argmin_s ‖k_t − C_s‖²,   k̂_t = k_t + sg(C_{c_t} − k_t)    (straight-through)
    attention with quantised keys and the local positional bias b_δ (δ < w = ``window``):
        a_{t,j} = exp(q_t·k̂_j / √z + b_{t−j}[t−j < w]),   j ≤ t (same segment)
        o_t     = Σ_j a_{t,j} v_j / Σ_j a_{t,j}
    gated output:
        H_t = silu(g_t + (γ_t ⊙ o_t) U_h + b_h),    y_t = φ_t ⊙ H_t + (1 − φ_t) ⊙ x_t

Linear time: a key ``j`` older than the window (``t − j ≥ w``) enters only
through its code, ``k̂_j = C_{c_j}``, so those keys are summed per code into the
structured memory ``(n_s, V_s) = (#{j: c_j = s}, Σ_{j: c_j = s} v_j)`` and
``Σ_{far j} a_{t,j} v_j = Σ_s exp(q_t·C_s / √z) V_s``. The fast path never
writes the per-code sums ``V_s`` at every position: with the keys shifted
``w`` places, ``Σ_s p_{t,s} V_s(t − w) = Σ_{j ≤ t−w} p_{t,c_j} v_j`` is a
causal linear attention (``linear_attention``, chunked) whose queries are
the codes' weights ``p_t ∈ R^S`` and whose keys are the one-hot codes; only
the counts ``n_s`` run as a per-code cumulative sum (``linear_scan``,
restarting at segment starts). The window is computed exactly with its
bias, in blocks of ``w`` queries against the ``2w`` keys of their block and
the one before: O(L·(w·(z + e) + S·(z + e))) time and
O(L·(w + z + e + S) + (L/64)·S·e) memory (the last term the chunk states); ``step``
keeps a ring of the last ``w`` (k̂, v, code) and the per-code memory: a state
that does not grow with the length. Given the codes (and everything else the
mix reads), the mix is linear in ``v``: the base class reads the mixing matrix
off it; it is the row-normalised ``a_{t,j}`` above.

Codebook update: as Transformer-VQ, on which the paper's VQ attention is
built, the codebook is not a gradient parameter: it is an exponential moving
average of the keys assigned to each code, kept in the non-``"params"``
collection ``"longvq"`` as ``codebook_sum (S, z)`` and ``codebook_count (S,)``
(``C = sum / count``), and moved (``count ← λ·count + (1−λ)·n_s``, ``sum ←
λ·sum + (1−λ)·Σ_{c_j = s} k_j``) only under ``deterministic=False`` with
``mutable=["longvq"]``. The keys learn to follow their codes through the
commitment loss ``‖k_t − sg(C_{c_t})‖²`` (mean over tokens):
:meth:`LongVQ.commitment_loss` returns it, and ``__call__`` sows
``commitment_weight ×`` it as ``"commitment_loss"`` into the ``"losses"``
collection when that collection is mutable; the trainer adds it to the
task's loss, averaged over the layers (:func:`seqjax.train.step.aux_losses`).

Simplifications (documented, checked by the float64 oracle in tests/mixers/ref_longvq.py):

* One attention head (MEGA's single-head gated attention); no dropout, no
  normalisation inside the layer (the model's pre-norm supplies it), no
  chunking of the attention (the paper's LRA models chunk some tasks).
* The structured memory is MEGA's damped EMA, the SSM the paper's block is
  built on, run with ``linear_scan``.
* The local bias is a learned scalar per offset ``δ < w``; beyond the window
  there is no position information (the paper's point: the codes carry the
  global content).
* Gradients: keys inside the window get the straight-through gradient; a key
  beyond the window reaches the output only through its code, so the
  straight-through gradient from the output does not reach it (it still
  learns through the window and the commitment loss). The float64 reference's
  straight-through gradients equal the fast path's whenever ``L ≤ window``.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.errors import ConfigError
from seqjax.mixers.base import AUX_LOSSES, Mixer, Projection
from seqjax.mixers.common import check_input, check_int, check_number, constant_init, dense, param, segment_runs
from seqjax.mixers.registry import register
from seqjax.ops.linear_attention import linear_attention
from seqjax.ops.linear_scan import linear_scan
from seqjax.types import SegmentIds, Seq, SeqStep

HIGHEST = jax.lax.Precision.HIGHEST
COLLECTION = "longvq"  # the non-param collection of the EMA codebook
LOSSES = AUX_LOSSES  # where __call__ sows the weighted commitment loss (the trainer adds it)
# Smallest code count used as a divisor (a code never used decays towards 0 count).
COUNT_FLOOR = 1e-6


def quantise(k: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest code of each key and the straight-through quantised keys.

    Args:
      k: ``(..., z)`` keys.
      codebook: ``(S, z)`` codes.

    Returns:
      ``(codes, k_hat)``: ``codes (...)`` int32 ``argmin_s ‖k − C_s‖²`` and
      ``k_hat = k + sg(C_codes − k)`` (the value of the code, the gradient of ``k``).
    """
    acc = jnp.promote_types(k.dtype, jnp.float32)
    kf, c = k.astype(acc), codebook.astype(acc)
    # ‖k − C_s‖² up to the term ‖k‖², which does not change the argmin.
    dist = jnp.sum(c * c, axis=-1) - 2.0 * jnp.einsum("...z,sz->...s", kf, c, precision=HIGHEST)
    codes = jnp.argmin(jax.lax.stop_gradient(dist), axis=-1).astype(jnp.int32)
    chosen = jnp.take(c, codes, axis=0)
    return codes, (kf + jax.lax.stop_gradient(chosen - kf)).astype(k.dtype)


def commitment(k: jax.Array, codebook: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The commitment loss ``mean_t ‖k_t − sg(C_{c_t})‖²`` (gradient only to the keys).

    Args:
      k: ``(b, l, z)`` keys.
      codebook: ``(S, z)`` codes.
      mask: optional ``(b, l)`` 1/0 of the tokens to count; None: all.

    Returns:
      A scalar in float32 (float64 for float64 keys).
    """
    acc = jnp.promote_types(k.dtype, jnp.float32)
    codes, _ = quantise(k, codebook)
    chosen = jax.lax.stop_gradient(jnp.take(codebook.astype(acc), codes, axis=0))
    err = jnp.sum((k.astype(acc) - chosen) ** 2, axis=-1)
    w = jnp.ones(err.shape, acc) if mask is None else jnp.asarray(mask).astype(acc)
    return jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)


def ema_codebook(count: jax.Array, total: jax.Array, k: jax.Array, codes: jax.Array, decay: float):
    """One EMA step of the codebook statistics (VQ-VAE's / Transformer-VQ's update).

    Args:
      count: ``(S,)`` smoothed code counts.
      total: ``(S, z)`` smoothed sums of the keys assigned to each code.
      k: ``(b, l, z)`` keys; ``codes``: ``(b, l)`` their codes.
      decay: ``λ`` in [0, 1).

    Returns:
      ``(count, total)`` moved by ``λ·old + (1 − λ)·batch``; the codebook is ``total / count``.
    """
    k, count, total = (jax.lax.stop_gradient(a).astype(jnp.float32) for a in (k, count, total))
    one_hot = jax.nn.one_hot(codes, count.shape[0], dtype=jnp.float32)
    n = jnp.sum(one_hot, axis=(0, 1))
    s = jnp.einsum("bls,blz->sz", one_hot, k, precision=HIGHEST)
    return decay * count + (1.0 - decay) * n, decay * total + (1.0 - decay) * s


def _near_one(key, shape, dtype=jnp.float32):
    """``1 + N(0, 0.02²)``: the per-channel scales κ of q and k start near the identity."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _codebook(count, total):
    return total / jnp.maximum(count, COUNT_FLOOR)[:, None]


@register("longvq")
class LongVQ(Mixer):
    """LongVQ: MEGA-style gated attention over vector-quantised keys (see the module docstring).

    Parameters: ``ema_alpha, ema_delta, ema_beta, ema_eta (d, n)``,
    ``ema_omega (d,)``; ``mx_proj (d, d + z + 2e)`` with bias (φ, Z, γ and
    the gate's ``x'`` part); ``v_proj (d, e)`` with bias; ``qk_gamma (2, z)``,
    ``qk_beta (2, z)``; ``rel_bias (w,)``; ``out_proj (e, d)`` with bias
    (``U_h``, ``b_h``). Non-param collection ``"longvq"``: ``codebook_sum (S,
    z)``, ``codebook_count (S,)``.

    Attributes:
      d_model: width; None takes it from the input (or the parameters).
      dtype: compute dtype of projections and activations; the scan, the
        quantisation and the attention accumulate in float32 (float64 for float64).
      impl: ``impl`` of :func:`seqjax.ops.linear_scan` (the EMA and the per-code
        counts); a tuple of ``(op, impl)`` pairs also sets
        :func:`seqjax.ops.linear_attention`'s (the per-code value sums).
      qk_dim: ``z``, width of the shared query/key ``Z`` (16).
      expand: value width ``e = expand · d`` (2, MEGA's).
      ema_dim: ``n``, the EMA's expansion per channel (8; MEGA's 16).
      codebook_size: ``S`` codes (64).
      window: ``w``, positions with an exact key and a positional bias, itself included (32).
      ema_decay: ``λ`` of the codebook EMA (0.99).
      commitment_weight: scale of the sown commitment loss (1e-4, Transformer-VQ's β).
    """

    ops = ("linear_scan", "linear_attention")
    causality = "causal"
    ssm_params = ("ema_alpha", "ema_delta")
    no_decay_params = ("qk_beta",)
    values_index = 2  # v in (q, k_hat, v, codes, runs)
    width_param = (("out_proj", "kernel"), -1)

    qk_dim: int = 16
    expand: int = 2
    ema_dim: int = 8
    codebook_size: int = 64
    window: int = 32
    ema_decay: float = 0.99
    commitment_weight: float = 1e-4

    def check_fields(self):
        name = self.mixer_name
        for field in ("qk_dim", "expand", "ema_dim", "codebook_size", "window"):
            check_int(name, field, getattr(self, field))
        check_number(name, "ema_decay", self.ema_decay, low=0.0, high=1.0)
        if self.ema_decay == 1.0:
            raise ConfigError(f"{name}.ema_decay=1.0 never moves the codebook; allowed: a number in [0, 1)")
        check_number(name, "commitment_weight", self.commitment_weight, low=0.0)

    # --- parameters and projections ---------------------------------------------------

    @nn.compact
    def parts(self, d: int) -> dict[str, Any]:
        z, e, n, s, w = self.qk_dim, self.expand * d, self.ema_dim, self.codebook_size, self.window
        count = self.variable(COLLECTION, "codebook_count", lambda: jnp.ones((s,), jnp.float32))
        total = self.variable(COLLECTION, "codebook_sum",
                              lambda: jax.random.normal(self.make_rng("params"), (s, z), jnp.float32))
        normal = nn.initializers.normal(0.2)
        return {
            "dims": (z, e),
            "count": count,
            "total": total,
            # MEGA's EMA init: α, δ logits ~ N(0, 0.2), β ~ N(0, 0.02) (±1 pattern dropped), η ~ N(0, 1).
            "ema_alpha": param(self, "ema_alpha", normal, (d, n), ("embed", "state")),
            "ema_delta": param(self, "ema_delta", normal, (d, n), ("embed", "state")),
            "ema_beta": param(self, "ema_beta", nn.initializers.normal(0.02), (d, n), ("embed", "state")),
            "ema_eta": param(self, "ema_eta", nn.initializers.normal(1.0), (d, n), ("embed", "state")),
            "ema_omega": param(self, "ema_omega", nn.initializers.normal(1.0), (d,), ("embed",)),
            "mx_proj": dense(2 * d + z + e, ("embed", "mlp"), use_bias=True, dtype=self.dtype, name="mx_proj"),
            "v_proj": dense(e, ("embed", "mlp"), use_bias=True, dtype=self.dtype, name="v_proj"),
            "qk_gamma": param(self, "qk_gamma", _near_one, (2, z), (None, None)),
            "qk_beta": param(self, "qk_beta", nn.initializers.zeros_init(), (2, z), (None, None)),
            "rel_bias": param(self, "rel_bias", constant_init(0.0), (w,), (None,)),
            "out_proj": dense(d, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="out_proj"),
        }

    def _ema(self, p, x, runs):
        """The damped EMA's coefficients: decay ``a (d, n)`` and input ``b (b, l, d, n)``."""
        acc = self.acc()
        alpha = jax.nn.sigmoid(p["ema_alpha"].astype(acc))
        delta = jax.nn.sigmoid(p["ema_delta"].astype(acc))
        return 1.0 - alpha * delta, alpha * p["ema_beta"].astype(acc) * x.astype(acc)[..., None]

    def _branches(self, p, x, h):
        """Everything after the EMA state ``h (…, d, n)``: ``x'``, the gates, ``q``, ``k``, ``v``."""
        acc = self.acc()
        d = x.shape[-1]
        z, e = p["dims"]
        ema = jnp.sum(h * p["ema_eta"].astype(acc), axis=-1) + p["ema_omega"].astype(acc) * x.astype(acc)
        xp = jax.nn.silu(ema).astype(self.dtype)
        u, zz, r, g = jnp.split(p["mx_proj"](xp), [d, d + z, d + z + e], axis=-1)
        zz = jax.nn.silu(zz.astype(acc))
        gamma, beta = p["qk_gamma"].astype(acc), p["qk_beta"].astype(acc)
        q, k = zz * gamma[0] + beta[0], zz * gamma[1] + beta[1]
        v = jax.nn.silu(p["v_proj"](x.astype(self.dtype)))
        gates = (x, jax.nn.sigmoid(u.astype(acc)), jax.nn.silu(r.astype(acc)), g.astype(acc))
        return q, k, v, gates

    def _sequence(self, p, x, segment_ids):
        """``(q, k, v, gates, runs)`` for a whole sequence."""
        b, length, _ = x.shape
        runs = segment_runs(segment_ids, b, length)
        a, inp = self._ema(p, x, runs)
        h, _ = linear_scan(a[None, None], inp, segment_ids=runs, impl=self.impl_for("linear_scan"))
        q, k, v, gates = self._branches(p, x, h)
        return q, k, v, gates, runs

    def codebook(self) -> jax.Array:
        """The current codebook ``C = codebook_sum / codebook_count``, ``(S, z)`` float32."""
        p = self.parts(self.width())
        return _codebook(p["count"].value, p["total"].value)

    def project(self, p, x: Seq, segment_ids: SegmentIds | None) -> Projection:
        q, k, v, gates, runs = self._sequence(p, x, segment_ids)
        codes, k_hat = quantise(k, _codebook(p["count"].value, p["total"].value))
        return Projection(tokens=(q, k_hat, v, codes, runs),
                          shared=(_codebook(p["count"].value, p["total"].value), p["rel_bias"]),
                          rest=(gates, k))

    def mix(self, axis, q, k_hat, v, codes, runs, codebook, rel_bias):
        del axis  # no sequence parallelism
        acc = self.acc()
        b, length, z = q.shape
        w, s = self.window, self.codebook_size
        scale = 1.0 / math.sqrt(z)
        q, k_hat, vf = q.astype(acc), k_hat.astype(acc), v.astype(acc)
        s_loc, ok_loc, local_values = _window(q, k_hat, vf, runs, rel_bias.astype(acc), w, scale)
        # The structured memory, read w positions back: key j enters position t's far
        # part when j <= t - w in t's segment. Shifting the keys w positions and
        # dropping those whose segment is not the one they land in makes that a plain
        # causal sum within t's segment (segments are contiguous runs).
        same = jnp.pad(runs, ((0, 0), (w, 0)), constant_values=-1)[:, :length] == runs
        keys = jnp.pad(jax.nn.one_hot(codes, s, dtype=acc), ((0, 0), (w, 0), (0, 0)))[:, :length]
        keys = keys * same[..., None].astype(acc)  # (b, l, S): one-hot of the code w back
        n_far, _ = linear_scan(jnp.ones((1, 1, 1), acc), keys, segment_ids=runs,
                               impl=self.impl_for("linear_scan"))  # per-code counts (b, l, S)
        v_back = jnp.pad(vf, ((0, 0), (w, 0), (0, 0)))[:, :length]
        g = jnp.einsum("blz,sz->bls", q, codebook.astype(acc), precision=HIGHEST) * scale

        def far_values(p_far):
            # Σ_s p_far[t, s] V_s(t - w) = Σ_{j <= t-w} p_far[t, c_j] v_j: a causal linear
            # attention with the weights as queries and the one-hot codes as keys, so no
            # (b, l, S, e) per-code sum is ever written.
            o, _ = linear_attention(p_far[:, :, None], keys[:, :, None], v_back[:, :, None], causal=True,
                                    segment_ids=runs, impl=self.impl_for("linear_attention"))
            return o[:, :, 0].astype(acc)

        return _combine(s_loc, ok_loc, local_values, g, n_far > 0, n_far, far_values).astype(v.dtype)

    def output(self, p, o, proj: Projection) -> Seq:
        x, phi, gamma, gx = proj.rest[0]
        acc = self.acc()
        hidden = jax.nn.silu(gx + p["out_proj"]((gamma * o.astype(acc)).astype(self.dtype)).astype(acc))
        return (phi * hidden + (1.0 - phi) * x.astype(acc)).astype(self.dtype)

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True) -> Seq:
        """Runs the mixer; sows the commitment loss and, in training, moves the codebook.

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids of packed sequences.
          deterministic: False (training) moves the codebook by :func:`ema_codebook`
            when the ``"longvq"`` collection is mutable; the output always uses
            the codebook as it was.

        Returns:
          ``(batch, length, d_model)`` in ``dtype``.
        """
        check_input(self.mixer_name, x, segment_ids)
        p = self.parts(self.width(x))
        proj = self.project(p, x, segment_ids)
        o = self.mix(None, *proj.tokens, *proj.shared)
        k = proj.rest[1]  # the keys before quantisation
        if self.is_mutable_collection(LOSSES) and not self.is_initializing():  # init keeps no losses
            self.sow(LOSSES, "commitment_loss", self.commitment_weight * commitment(k, proj.shared[0]))
        if not deterministic and self.is_mutable_collection(COLLECTION) and not self.is_initializing():
            p["count"].value, p["total"].value = ema_codebook(p["count"].value, p["total"].value, k,
                                                              proj.tokens[3], self.ema_decay)
        return self.output(p, o, proj)

    def commitment_loss(self, x: Seq, *, segment_ids: SegmentIds | None = None) -> jax.Array:
        """The commitment loss ``mean_t ‖k_t − sg(C_{c_t})‖²`` of ``x`` (unweighted; gradient to the keys).

        Args:
          x: ``(batch, length, d_model)`` input.
          segment_ids: optional ``(batch, length)`` ids.

        Returns:
          A scalar in float32 (float64 for a float64 ``dtype``).
        """
        check_input(self.mixer_name, x, segment_ids)
        p = self.parts(self.width(x))
        _, k, _, _, _ = self._sequence(p, x, segment_ids)
        return commitment(k, _codebook(p["count"].value, p["total"].value))

    # --- decoding ---------------------------------------------------------------------

    def empty_cache(self, batch_size: int, d: int, max_length: int | None) -> dict:
        """The EMA state, a ring of the last ``w`` (k̂, v, code), the per-code memory, the position.

        ``{"h": (b, d, n), "k": (b, w, z), "v": (b, w, e), "code": (b, w) int32,
        "count": (b, S), "vsum": (b, S, e), "pos": (b,) int32}``, float32 (float64
        for float64); nothing grows with the length.
        """
        del max_length
        acc, z, e, w, s = self.acc(), self.qk_dim, self.expand * d, self.window, self.codebook_size
        return {"h": jnp.zeros((batch_size, d, self.ema_dim), acc), "k": jnp.zeros((batch_size, w, z), acc),
                "v": jnp.zeros((batch_size, w, e), acc), "code": jnp.zeros((batch_size, w), jnp.int32),
                "count": jnp.zeros((batch_size, s), acc), "vsum": jnp.zeros((batch_size, s, e), acc),
                "pos": jnp.zeros((batch_size,), jnp.int32)}

    def step_mix(self, p, x_t: SeqStep, cache: dict) -> tuple[SeqStep, dict]:
        acc = self.acc()
        b = x_t.shape[0]
        w, s = self.window, self.codebook_size
        a, inp = self._ema(p, x_t, None)
        h = a * cache["h"] + inp
        q, k, v, gates = self._branches(p, x_t, h)
        codebook = _codebook(p["count"].value, p["total"].value)
        code, k_hat = quantise(k, codebook)
        pos, rows = cache["pos"], jnp.arange(b)
        slot = pos % w
        # The token w back leaves the window for the per-code memory.
        leaving = jax.nn.one_hot(cache["code"][rows, slot], s, dtype=acc) * (pos >= w)[:, None].astype(acc)
        count = cache["count"] + leaving
        vsum = cache["vsum"] + leaving[..., None] * cache["v"][rows, slot][:, None, :]
        kc = cache["k"].at[rows, slot].set(k_hat.astype(acc))
        vc = cache["v"].at[rows, slot].set(v.astype(acc))
        cc = cache["code"].at[rows, slot].set(code)
        offset = (pos[:, None] - jnp.arange(w)[None, :]) % w  # δ of each slot
        ok_loc = offset <= pos[:, None]
        scale = 1.0 / math.sqrt(self.qk_dim)
        s_loc = (jnp.einsum("bz,bwz->bw", q.astype(acc), kc, precision=HIGHEST) * scale
                 + jnp.take(p["rel_bias"].astype(acc), offset))
        g = jnp.einsum("bz,sz->bs", q.astype(acc), codebook.astype(acc), precision=HIGHEST) * scale
        o = _combine(s_loc, ok_loc, lambda p_loc: jnp.einsum("bw,bwe->be", p_loc, vc, precision=HIGHEST),
                     g, count > 0, count, lambda p_far: jnp.einsum("bs,bse->be", p_far, vsum, precision=HIGHEST))
        new = {"h": h, "k": kc, "v": vc, "code": cc, "count": count, "vsum": vsum, "pos": pos + 1}
        return self.output(p, o.astype(v.dtype), Projection(rest=(gates, k))), new


def _window(q, k_hat, v, runs, rel_bias, w, scale):
    """The window's scores, their mask and its values, in blocks of ``w`` queries.

    Block ``i`` of queries (positions ``iw .. iw + w − 1``) sees the keys of
    blocks ``i − 1`` and ``i``, ``2w`` of them, of which query ``t`` keeps
    ``j = t − δ`` for ``δ = 0..w−1`` in its own segment. The keys and values
    are laid out once per block pair (twice in all), not once per query and
    offset, so memory is O(L·(w + z + e)) rather than O(L·w·(z + e)).

    Args:
      q, k_hat: ``(b, l, z)``; ``v``: ``(b, l, e)``; ``runs``: ``(b, l)`` segment runs.
      rel_bias: ``(w,)`` bias by offset ``δ``.
      w: the window; scale: of the scores.

    Returns:
      ``(s_loc, ok_loc, local_values)``: scores and validity ``(b, l, 2w)``, and
      ``p (b, l, 2w) -> (b, l, e)``, the weights applied to the values.
    """
    b, length, _ = q.shape
    nb = -(-length // w)
    end = nb * w - length
    # Front padding: the block before the first; its keys have run -1 (no query's). End
    # padding completes the last block; its queries are dropped below.
    qb = jnp.pad(q, ((0, 0), (0, end), (0, 0))).reshape(b, nb, w, -1)

    def pairs(x, value=0):
        xb = jnp.pad(x, ((0, 0), (w, end)) + ((0, 0),) * (x.ndim - 2), constant_values=value)
        xb = xb.reshape((b, nb + 1, w) + x.shape[2:])
        return jnp.concatenate([xb[:, :-1], xb[:, 1:]], axis=2)  # (b, nb, 2w, ...)

    kb, vb, rb = pairs(k_hat), pairs(v), pairs(runs, -1)
    # Query a of a block and key c of its pair: offset δ = a + w − c, kept for 0 <= δ < w.
    delta = jnp.arange(w)[:, None] + w - jnp.arange(2 * w)[None, :]
    in_window = (delta >= 0) & (delta < w)
    bias = jnp.where(in_window, rel_bias[jnp.clip(delta, 0, w - 1)], 0)
    s_loc = jnp.einsum("bnaz,bncz->bnac", qb, kb, precision=HIGHEST) * scale + bias
    rq = jnp.pad(runs, ((0, 0), (0, end)), constant_values=-1).reshape(b, nb, w)
    ok_loc = in_window & (rb[:, :, None, :] == rq[..., None])

    def local_values(p_loc):
        pb = jnp.pad(p_loc, ((0, 0), (0, end), (0, 0))).reshape(b, nb, w, 2 * w)
        out = jnp.einsum("bnac,bnce->bnae", pb, vb, precision=HIGHEST)
        return out.reshape(b, nb * w, -1)[:, :length]

    unblock = lambda x: x.reshape(b, nb * w, 2 * w)[:, :length]  # noqa: E731
    return unblock(s_loc), unblock(ok_loc), local_values


def _combine(s_loc, ok_loc, local_values, g, ok_far, n_far, far_values):
    """Softmax over the window's scores and the codes' scores (each code weighted by its count).

    ``s_loc (…, c)`` with ``local_values(p_loc)`` the weighted sum of the window's
    values (``(…, e)``); ``g (…, S)`` with counts ``n_far (…, S)`` and
    ``far_values(p_far)`` giving ``Σ_s p_far[…, s] V_s`` for the codes' value sums
    ``V_s``. Invalid entries are masked before ``exp`` (so no gradient meets an
    overflow); the max over the valid scores steadies it.
    """
    neg = jnp.asarray(-jnp.inf, s_loc.dtype)
    s_loc, g = jnp.where(ok_loc, s_loc, neg), jnp.where(ok_far, g, neg)
    m = jax.lax.stop_gradient(jnp.maximum(jnp.max(s_loc, axis=-1), jnp.max(g, axis=-1)))[..., None]
    p_loc, p_far = jnp.exp(s_loc - m), jnp.exp(g - m)
    num = local_values(p_loc) + far_values(p_far)
    den = jnp.sum(p_loc, axis=-1) + jnp.sum(p_far * n_far, axis=-1)
    return num / den[..., None]


__all__ = ["LongVQ", "quantise", "commitment", "ema_codebook", "COLLECTION", "LOSSES"]

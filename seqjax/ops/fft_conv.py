"""Long causal (or bidirectional) depthwise convolution, by FFT or directly.

The convolution mode of every input-independent SSM (S4, S4D, LSSL, S5's
kernel view, H3, Hyena): each channel ``h`` of ``u`` is convolved with its own
kernel ``k[h]`` as long as the sequence,

    y[:, t, h] = Σ_{s ≤ t} k[h, t - s] u[:, s, h]  (+ D[h] u[:, t, h]).

Implementations (``impl``):
  * ``"fft"``: real FFTs zero-padded to ``n ≥ 2L`` (a 2·3·5-smooth size), so the
    circular convolution never wraps around; ``O(L log L)`` per channel.
  * ``"direct"``: ``lax.conv_general_dilated`` with one group per channel
    (a depthwise convolution); ``O(L · L_k)``, exact summation order aside.
  * ``"auto"``: ``"fft"``. On CPU XLA's grouped (depthwise) convolution is
    slower than the FFT path even for 4-tap kernels (b=8, h=256: L=256, lk=4:
    fft 20 ms vs direct 70 ms; L=1024, lk=1024: 124 ms vs 26 s; see
    ``benchmarks/bench_ssm_kernels.py``). The direct path stays for checking
    and for accelerators, where short kernels may favour it (not measured).

Both run in float32 at least (bfloat16 inputs are promoted) and return ``u``'s
dtype. Gradients are JAX's autodiff of either path (the FFT's transpose is an
FFT, so the backward pass costs about two forward passes). The FFT path
transforms input and kernel together, so a call and its gradient are a chain
of four FFTs with no two able to run at once (why: ``_conv_fft``).
"""

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from seqjax.ops import dispatch
from seqjax.ops.common import accum_dtype


def smooth_size(n: int) -> int:
    """The smallest ``2^a 3^b 5^c ≥ n`` (FFT sizes that are fast everywhere)."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def fft_conv(
    u: Float[Array, "b l h"],
    k: Float[Array, "h lk"] | Float[Array, "2 h lk"],
    *,
    D: Float[Array, "h"] | None = None,
    bidirectional: bool = False,
    impl: str = "auto",
) -> Float[Array, "b l h"]:
    """Depthwise causal convolution of ``u`` with per-channel kernels ``k``.

    Causal: ``y[:, t, h] = Σ_{0 ≤ t-s < lk} k[h, t-s] u[:, s, h] + D[h] u[:, t, h]``.

    Bidirectional (S4's convention): ``k = (k_fwd, k_bwd)`` of shape
    ``(2, h, lk)`` and
    ``y[:, t] = Σ_{s ≤ t} k_fwd[t-s] u[:, s] + Σ_{s > t} k_bwd[s-t-1] u[:, s] + D u[:, t]``,
    i.e. the backward kernel is applied to the reversed sequence and shifted by
    one so that the current position is counted once (by ``k_fwd[0]`` and
    ``D``). This is S4's ``pad(k_fwd, (0, L)) + pad(flip(k_bwd), (L, 0))``
    followed by a length-``2L`` FFT convolution.

    Args:
      u: ``(b, l, h)`` input.
      k: ``(h, lk)`` kernel (``(2, h, lk)`` when ``bidirectional``) with
        ``1 ≤ lk ≤ l``; a shorter kernel is a kernel padded with zeros.
      D: optional ``(h,)`` skip connection.
      bidirectional: add the anti-causal kernel ``k[1]``.
      impl: ``"auto"``, ``"fft"`` or ``"direct"``.

    Returns:
      ``y`` of shape ``(b, l, h)`` in ``u``'s dtype.
    """
    dispatch.check("fft_conv", impl)
    u, k = jnp.asarray(u), jnp.asarray(k)
    if u.ndim != 3:
        raise ValueError(f"fft_conv: u must have shape (batch, length, h), got {u.shape}")
    _, length, h = u.shape
    want = (2, h) if bidirectional else (h,)
    if k.ndim != len(want) + 1 or k.shape[:-1] != want or not 1 <= k.shape[-1] <= length:
        shape = "(2, h, lk)" if bidirectional else "(h, lk)"
        raise ValueError(
            f"fft_conv: k must have shape {shape} with h={h} and 1 <= lk <= length={length}, got {k.shape}"
        )
    if D is not None:
        D = jnp.asarray(D)
        if D.shape != (h,):
            raise ValueError(f"fft_conv: D must have shape ({h},), got {D.shape}")
    impl = dispatch.resolve("fft_conv", impl)

    dtype = accum_dtype(u.dtype, k.dtype, *(() if D is None else (D.dtype,)))
    uf, kf = u.astype(dtype), k.astype(dtype)
    if not bidirectional:
        kf = kf[None]
    y = dispatch.implementation("fft_conv", impl)(uf, kf)
    if D is not None:
        y = y + D.astype(dtype) * uf
    return y.astype(u.dtype)


@dispatch.register("fft_conv", "fft")
def _conv_fft(u, k):
    """``u (b, l, h)``, ``k (1 or 2, h, lk)`` → ``(b, l, h)`` by zero-padded rFFT."""
    batch, length, _ = u.shape
    lk = k.shape[-1]
    n = smooth_size(2 * length)
    # One length-n kernel holds both directions: the causal taps at 0..lk-1 and
    # the anti-causal ones (k_bwd[i] at n-1-i, i.e. lag -(i+1)). n ≥ 2L keeps
    # them apart and stops any wrap-around.
    kfull = jnp.zeros((k.shape[1], n), k.dtype).at[:, :lk].set(k[0])
    if k.shape[0] == 2:
        kfull = kfull.at[:, n - lk:].add(k[1, :, ::-1])
    # The kernel rides as one more batch row of the input's transform, so each
    # call is one rFFT then one inverse, and its autodiff backward one of each
    # (the cotangents of both rows meet in one array): a chain of FFTs with no
    # two independent. On JAX 0.11's XLA:CPU two FFTs running at once deadlock
    # a 2-thread pool (each FFT fans out into the pool it runs on and waits);
    # with separate transforms the S4D LRA train step hung in every try. One
    # transform is also ~5% faster (S4D step 134 -> 127 ms on JAX 0.10.2).
    x = jnp.concatenate([jnp.pad(u, ((0, 0), (0, n - length), (0, 0))), kfull.T[None]], axis=0)
    spectra = jnp.fft.rfft(x, axis=1)  # (b + 1, n//2 + 1, h)
    return jnp.fft.irfft(spectra[:batch] * spectra[batch], n=n, axis=1)[:, :length].astype(u.dtype)


@dispatch.register("fft_conv", "direct")
def _conv_direct(u, k):
    """``u (b, l, h)``, ``k (1 or 2, h, lk)`` → ``(b, l, h)`` by a depthwise conv."""
    h, lk = k.shape[1], k.shape[2]
    # conv_general_dilated correlates: y[t] = Σ_j w[j] x[t + j - pad_lo], so the
    # causal kernel is flipped and padded lk-1 on the left.
    y = lax.conv_general_dilated(
        u, k[0, :, ::-1].T[:, None, :], window_strides=(1,), padding=[(lk - 1, 0)],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=h,
        precision=lax.Precision.HIGHEST,
    )
    if k.shape[0] == 2:
        # y[t] += Σ_i k_bwd[i] u[t+1+i]: an un-flipped correlation of the
        # sequence shifted by one, reading ahead (zero past the end).
        y = y + lax.conv_general_dilated(
            u[:, 1:], k[1].T[:, None, :], window_strides=(1,), padding=[(0, lk)],
            dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=h,
            precision=lax.Precision.HIGHEST,
        )
    return y

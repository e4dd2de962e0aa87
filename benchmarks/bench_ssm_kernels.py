"""SSM convolution kernels and the long convolution, side by side.

* ``ssm_kernel``: S4D's Vandermonde kernel vs S4's DPLR kernel (Cauchy +
  Woodbury + iFFT) generating ``K (h, L)`` for ``h = 256`` channels and state
  size ``N = 64`` (32 complex modes), forward and forward+backward (the
  gradient wrt all parameters, as in training).
* ``fft_conv``: the zero-padded FFT convolution vs XLA's direct depthwise
  convolution (``lax.conv_general_dilated``) for ``u (8, L, 256)`` and a
  full-length kernel.

Cases whose planned memory (XLA's memory analysis) or estimated run time is too
large for a shared machine are reported with ``error`` instead of being run.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import peak_bytes, time_fn
from seqjax.ops import hippo
from seqjax.ops import ssm_kernels as sk
from seqjax.ops.fft_conv import fft_conv

# Skip a case whose compiled plan needs more than this (the machine is shared).
MAX_BYTES = 6 * 2**30
# Skip the direct convolution past this many multiply-adds on CPU (XLA's CPU
# grouped convolution ran at ~0.1 GMAC/s here: 2 GMAC took ~25 s).
MAX_DIRECT_MAC_CPU = 3e9


def _kernel_inputs(h, n, rng):
    m = n // 2
    lam_s4d = jnp.asarray(np.broadcast_to(hippo.s4d_init(n, "legs"), (h, m)), jnp.complex64)
    lam, p, b, _ = hippo.nplr_legs(n, conj_sym=True)
    c = rng.standard_normal((h, m)) + 1j * rng.standard_normal((h, m))
    step = jnp.asarray(np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), h)), jnp.float32)
    c = jnp.asarray(c, jnp.complex64)
    vander = (lam_s4d, jnp.ones((h, m), jnp.complex64), c, step)
    dplr = tuple(jnp.asarray(x, jnp.complex64) for x in (lam, p, b)) + (c, step)
    return vander, dplr


def _row(op, impl, shape, fn, args, repeats, skip=None):
    row = {"op": op, "impl": impl, "shape": shape, "median_ms": None, "peak_bytes": None, "error": skip}
    if skip is not None:
        return row
    row["peak_bytes"] = peak_bytes(fn, *args)
    if row["peak_bytes"] is not None and row["peak_bytes"] > MAX_BYTES:
        row["error"] = f"skipped: plans {row['peak_bytes'] / 2**30:.1f} GiB > {MAX_BYTES / 2**30:.0f} GiB"
        return row
    row["median_ms"] = time_fn(fn, *args, repeats=repeats)
    return row


def _kernel_rows(h, n, length, repeats, rng):
    vander_args, dplr_args = _kernel_inputs(h, n, rng)
    fns = {
        f"vandermonde_{impl}": (
            lambda lam, b, c, s, impl=impl: sk.vandermonde_kernel(lam, b, c, s, length, impl=impl), vander_args
        )
        for impl in ("reference", "chunked")
    }
    fns["dplr"] = (lambda lam, p, b, c, s: sk.dplr_kernel(lam, p, b, c, s, length), dplr_args)
    rows = []
    shape = f"h={h},n={n},L={length}"
    for impl, (f, args) in fns.items():
        loss = lambda *a, f=f: jnp.sum(f(*a) ** 2)  # noqa: E731
        grad = jax.jit(jax.grad(loss, tuple(range(len(args)))))
        rows.append(_row("ssm_kernel fwd", impl, shape, jax.jit(f), args, repeats))
        rows.append(_row("ssm_kernel fwd+bwd", impl, shape, grad, args, repeats))
    return rows


def _conv_rows(b, h, length, repeats, rng):
    u = jnp.asarray(rng.standard_normal((b, length, h)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((h, length)) / length, jnp.float32)
    shape = f"b={b},L={length},h={h},lk={length}"
    rows = []
    for impl in ("fft", "direct"):
        fwd = jax.jit(functools.partial(fft_conv, impl=impl))
        grad = jax.jit(jax.grad(lambda u, k, impl=impl: jnp.sum(fft_conv(u, k, impl=impl) ** 2), (0, 1)))
        for name, fn, passes in (("fwd", fwd, 1), ("fwd+bwd", grad, 3)):
            skip = None
            macs = passes * b * h * length * length  # the backward pass is two more convolutions
            if impl == "direct" and jax.default_backend() == "cpu" and macs > MAX_DIRECT_MAC_CPU:
                skip = f"skipped: {macs / 1e9:.0f} GMAC direct on CPU (> {MAX_DIRECT_MAC_CPU / 1e9:.0f})"
            rows.append(_row(f"fft_conv {name}", impl, shape, fn, (u, k), repeats, skip))
    return rows


def run(quick: bool) -> list[dict]:
    """Times kernel generation and long convolutions; see the module docstring.

    Args:
      quick: small shapes, few repeats (seconds on CPU).

    Returns:
      One row per (case, impl, pass) with op, impl, shape, median_ms,
      peak_bytes and error (the reason a case was skipped, else None).
    """
    rng = np.random.default_rng(0)
    if quick:
        h, n, b, lengths, repeats = 16, 16, 2, (256,), 3
    else:
        h, n, b, lengths, repeats = 256, 64, 8, (1024, 4096, 16384), 5
    rows = []
    for length in lengths:
        rows += _kernel_rows(h, n, length, repeats, rng)
    for length in lengths:
        rows += _conv_rows(b, 256 if not quick else h, length, repeats, rng)
    return rows


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        ms = "-" if r["median_ms"] is None else f"{r['median_ms']:.2f}"
        mb = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        print(f"{r['op']:20s} {r['impl']:12s} {r['shape']:28s} {ms:>10s} ms {mb:>9s} MiB  {r['error'] or ''}")

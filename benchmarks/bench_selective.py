"""Benchmark of selective_scan (Mamba-1 S6): "reference" vs "chunked".

For each shape, times the jitted forward pass and forward+backward (gradients
with respect to u, delta, A, B, C, D, z, delta_bias, with ``delta_softplus``, as
in a Mamba block), and reports XLA's planned peak bytes. The reference
materialises several (b, l, d, n) tensors, so its memory grows with the length
while the chunked path's grows only with the O(b·l·d) inputs and the
(b, l/chunk, d, n) chunk-boundary states.

Run: ``python -m benchmarks.bench_selective [--quick]``.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import peak_bytes, time_fn
from seqjax.ops.selective_scan import selective_scan

IMPLS = ("reference", "chunked")
CHUNK = 64
# Skip a case whose estimated memory exceeds this: the machine is shared.
MEMORY_LIMIT = 4 * 2**30
# Full (b, l, d, n) float32 tensors live at once in the reference's
# forward+backward (measured from memory_analysis: about 12).
REFERENCE_STATE_COPIES = 12


def _inputs(b, l, d, n, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    return dict(
        u=f(b, l, d), delta=f(b, l, d), A=-jnp.asarray(rng.uniform(0.5, 4.0, (d, n)), jnp.float32),
        B=f(b, l, n), C=f(b, l, n), D=f(d), z=f(b, l, d), delta_bias=f(d),
    )


def _estimate_bytes(impl, b, l, d, n):
    state = 4 * b * l * d * n
    if impl == "reference":
        return REFERENCE_STATE_COPIES * state
    return 12 * 4 * b * min(CHUNK, l) * d * n + state // min(CHUNK, l) + 40 * 4 * b * l * d


def _functions(impl):
    def fwd(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(
            u, delta, A, B, C, D, z, delta_bias, True, impl=impl, chunk_size=CHUNK
        )

    def loss(*args):
        return jnp.sum(fwd(*args).astype(jnp.float32) ** 2)

    return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=tuple(range(8))))


def run(quick: bool) -> list[dict]:
    """Times both implementations, forward and forward+backward.

    Args:
      quick: a small table (< 30 s on CPU) instead of the full one.

    Returns:
      One dict per (case, impl, pass) with keys ``op``, ``impl``, ``shape``,
      ``median_ms``, ``peak_bytes`` and ``error``.
    """
    if quick:
        cases = [(2, 128, 32, 16), (2, 512, 32, 16)]
        repeats = 3
    else:
        cases = [(2, 256, 256, 16), (2, 1024, 256, 16), (2, 4096, 256, 16)]
        repeats = 5
    rows = []
    for b, l, d, n in cases:
        args = tuple(_inputs(b, l, d, n).values())
        shape = f"b={b} l={l} d={d} n={n}"
        for impl in IMPLS:
            fwd, grad = _functions(impl)
            for op, fn in (("selective_scan_fwd", fwd), ("selective_scan_fwd_bwd", grad)):
                row = dict(op=op, impl=impl, shape=shape, median_ms=None, peak_bytes=None, error=None)
                estimate = _estimate_bytes(impl, b, l, d, n)
                if estimate > MEMORY_LIMIT:
                    row["error"] = f"skipped: needs ~{estimate / 2**30:.1f} GiB"
                else:
                    row["peak_bytes"] = peak_bytes(fn, *args)
                    row["median_ms"] = time_fn(fn, *args, repeats=repeats, warmup=1)
                rows.append(row)
    return rows


def _print(rows):
    print(f"{'op':<24}{'impl':<11}{'shape':<26}{'median_ms':>10}{'peak_MB':>10}  error")
    for r in rows:
        ms = "-" if r["median_ms"] is None else f"{r['median_ms']:.2f}"
        mb = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 1e6:.1f}"
        print(f"{r['op']:<24}{r['impl']:<11}{r['shape']:<26}{ms:>10}{mb:>10}  {r['error'] or ''}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    _print(run(parser.parse_args().quick))

"""Softmax attention: reference vs blockwise, forward and forward+backward; decode.

Causal self-attention with b=1, h=4, d=64 at L = 1024, 4096, 16384, 32768
(``quick``: 512 and 2048). The reference materialises ``(b, h, L, L)`` score
matrices and is skipped (with an ``error``) where XLA's plan for it, or failing
that an estimate, exceeds ``REFERENCE_LIMIT_BYTES``; the blockwise path keeps
O(L · block) memory and runs at every length. Also times ``decode_attention``
(split-KV) against the reference for one query over an 8192-entry cache.

Run: ``python -m benchmarks.bench_attention [--quick]``.
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import peak_bytes, time_fn
from seqjax.ops.decode_attention import decode_attention
from seqjax.ops.attention import attention

B, H, D = 1, 4, 64
REFERENCE_LIMIT_BYTES = 6 * 2**30
GiB = 2**30


def _estimate_reference_bytes(length: int, backward: bool) -> int:
    # Scores and probabilities (+ their cotangents in the backward), float32.
    matrices = 4 if backward else 2
    return matrices * B * H * length * length * 4


def _attention_fn(impl: str, backward: bool):
    fwd = functools.partial(attention, causal=True, impl=impl)
    if not backward:
        return jax.jit(fwd)

    def loss(q, k, v):
        return jnp.sum(fwd(q, k, v).astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _row(op, impl, shape, ms=None, peak=None, error=None):
    return dict(op=op, impl=impl, shape=shape, median_ms=ms, peak_bytes=peak, error=error)


def _bench_attention(length: int, rng, repeats: int) -> list[dict]:
    shape = (B, length, H, D)
    args = [jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(3)]
    specs = [jax.ShapeDtypeStruct(shape, jnp.float32)] * 3
    rows = []
    for backward in (False, True):
        op = "attention_fwd_bwd" if backward else "attention_fwd"
        for impl in ("reference", "blockwise"):
            fn = _attention_fn(impl, backward)
            name = f"b={B} L={length} h={H} d={D} causal"
            peak = None
            if impl == "reference":
                # Compiling only plans buffers; it allocates nothing.
                peak = peak_bytes(fn, *specs)
                need = peak if peak is not None else _estimate_reference_bytes(length, backward)
                if need > REFERENCE_LIMIT_BYTES:
                    rows.append(_row(op, impl, name, peak=peak,
                                     error=f"skipped: needs {need / GiB:.1f} GiB"))
                    continue
            else:
                peak = peak_bytes(fn, *specs)
            ms = time_fn(fn, *args, repeats=repeats, warmup=1)
            rows.append(_row(op, impl, name, ms, peak))
    return rows


def _bench_decode(cache: int, rng, repeats: int, batch: int = 4) -> list[dict]:
    q = jnp.asarray(rng.standard_normal((batch, H, D)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((batch, cache, H, D)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((batch, cache, H, D)), jnp.float32)
    lengths = jnp.full((batch,), cache, jnp.int32)
    name = f"b={batch} cache={cache} h={H} d={D}"

    def split_kv(splits):
        return jax.jit(lambda q, k, v, n: decode_attention(q, k, v, lengths=n, num_splits=splits))

    def full_row(impl):
        # The same row from full attention: one query at the last cache position.
        return jax.jit(lambda q, k, v, n: attention(q[:, None], k, v, causal=True, impl=impl)[:, 0])

    fns = {"decode_splits4": split_kv(4), "decode_splits1": split_kv(1),
           "reference": full_row("reference"), "blockwise": full_row("blockwise")}
    rows = []
    for impl, fn in fns.items():
        ms = time_fn(fn, q, k, v, lengths, repeats=repeats, warmup=2)
        rows.append(_row("decode_attention", impl, name, ms, peak_bytes(fn, q, k, v, lengths)))
    return rows


def run(quick: bool) -> list[dict]:
    """Times every case; see the module docstring.

    Args:
      quick: lengths 512 and 2048 only (< 30 s on CPU); else the full table.

    Returns:
      One dict per (case, impl) with ``op``, ``impl``, ``shape``, ``median_ms``,
      ``peak_bytes`` and ``error``.
    """
    rng = np.random.default_rng(0)
    lengths = (512, 2048) if quick else (1024, 4096, 16384, 32768)
    rows = []
    for length in lengths:
        # Long cases take seconds per call; one timed call after the warm-up.
        rows += _bench_attention(length, rng, repeats=1 if quick or length > 4096 else 3)
    rows += _bench_decode(2048 if quick else 8192, rng, repeats=5 if quick else 20)
    return rows


def _print(rows):
    print(f"{'op':<18} {'impl':<15} {'shape':<32} {'median_ms':>10} {'peak_MiB':>9}  error")
    for r in rows:
        ms = "" if r["median_ms"] is None else f"{r['median_ms']:.2f}"
        peak = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        print(f"{r['op']:<18} {r['impl']:<15} {r['shape']:<32} {ms:>10} {peak:>9}  {r['error'] or ''}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    _print(run(parser.parse_args().quick))

"""Benchmark of linear_attention: reference vs sequential vs chunked.

For each decay kind (none, as in Katharopoulos et al.; per key channel, as in
GLA) and each length, every implementation runs jitted in this process: the
forward pass (``op = "linear_attention"``) and the gradient of a scalar loss
with respect to q, k, v and the decay (``op = "linear_attention_grad"``). The
quadratic reference is skipped (``error`` says why) where XLA's memory plan for
it exceeds ``MAX_BYTES``, checked by compiling without running.

Run: ``python -m benchmarks.bench_linear_attention [--quick]``.
"""

import argparse

import jax
import jax.numpy as jnp

from benchmarks._timing import peak_bytes, time_fn
from seqjax.ops.linear_attention import linear_attention

IMPLS = ("reference", "sequential", "chunked")
# The machine is shared: never plan more than this for one call.
MAX_BYTES = 2 * 2**30


def _inputs(batch, length, heads, dk, dv, decay):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(keys[0], (batch, length, heads, dk)) / dk**0.5
    k = jax.random.normal(keys[1], (batch, length, heads, dk)) / dk**0.5
    v = jax.random.normal(keys[2], (batch, length, heads, dv))
    # GLA-like gates: log sigmoid of logits around 3, i.e. decays near 0.95.
    g = jax.nn.log_sigmoid(3.0 + jax.random.normal(keys[3], (batch, length, heads, dk)))
    return q, k, v, (g if decay == "gla" else None)


def _case_fns(impl, chunk_size):
    def fwd(q, k, v, g):
        return linear_attention(q, k, v, log_decay=g, impl=impl, chunk_size=chunk_size)

    def loss(q, k, v, g):
        o, s = fwd(q, k, v, g)
        return jnp.sum(o * o) + jnp.sum(s)

    argnums = (0, 1, 2, 3)
    return {
        "linear_attention": fwd,
        "linear_attention_grad": lambda q, k, v, g: jax.grad(loss, argnums=argnums[: 3 if g is None else 4])(q, k, v, g),
    }


def run(quick: bool) -> list[dict]:
    """Times every implementation side by side.

    Args:
      quick: small sizes (under ~30 s on CPU) instead of the full table.

    Returns:
      One dict per (op, decay, length, impl) with keys ``op``, ``impl``,
      ``shape``, ``median_ms``, ``peak_bytes`` and ``error``.
    """
    if quick:
        batch, heads, dk, dv, lengths, repeats = 1, 2, 32, 32, (128,), 3
    else:
        batch, heads, dk, dv, lengths, repeats = 1, 4, 64, 64, (512, 2048, 8192), 5
    chunk_size = 64
    rows = []
    for decay in ("none", "gla"):
        for length in lengths:
            q, k, v, g = _inputs(batch, length, heads, dk, dv, decay)
            shape = f"b={batch} l={length} h={heads} dk={dk} dv={dv} decay={decay}"
            for impl in IMPLS:
                for op, fn in _case_fns(impl, chunk_size).items():
                    if g is None:
                        fn = (lambda f: lambda q, k, v: f(q, k, v, None))(fn)
                        args = (q, k, v)
                    else:
                        args = (q, k, v, g)
                    row = {"op": op, "impl": impl, "shape": shape, "median_ms": None,
                           "peak_bytes": None, "error": None}
                    row["peak_bytes"] = peak_bytes(fn, *args)
                    if row["peak_bytes"] is not None and row["peak_bytes"] > MAX_BYTES:
                        row["error"] = f"skipped: plans {row['peak_bytes'] / 2**30:.1f} GiB > {MAX_BYTES / 2**30:.0f} GiB"
                    else:
                        try:
                            row["median_ms"] = time_fn(jax.jit(fn), *args, repeats=repeats)
                        except Exception as e:  # noqa: BLE001 - report, keep going
                            row["error"] = f"{type(e).__name__}: {str(e)[:80]}"
                    rows.append(row)
                    print(_format(row), flush=True)
    return rows


def _format(row):
    ms = "—" if row["median_ms"] is None else f"{row['median_ms']:10.2f} ms"
    mib = "—" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:9.1f} MiB"
    return f"{row['op']:22s} {row['impl']:10s} {row['shape']:44s} {ms:>13s} {mib:>13s} {row['error'] or ''}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)

"""ssd (Mamba-2): the quadratic form vs the chunked SSD algorithm vs the recurrence.

Shapes are one Mamba-2 layer's worth of heads: b=1, h=8, p=64, n=64, g=1 (full
table: l = 128, 512, 2048, 8192). Every implementation is first compiled only,
and XLA's memory plan (``peak_bytes``) decides whether it may run: the quadratic
form materialises ``(b, h, l, l)`` and the sequential one ``(b, l, h, p, n)``, so
past ``MAX_BYTES`` a row is reported with ``error`` set instead of being run.
"""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import peak_bytes, time_fn
from seqjax.ops.ssd import ssd

IMPLS = ("reference", "chunked", "sequential")
# Larger plans are skipped: the benchmark machine's memory is shared.
MAX_BYTES = 4 * 2**30
CHUNK = 64


def _cases(quick: bool):
    # (b, l, h, p, n, g)
    if quick:
        return [(1, 512, 4, 32, 32, 1)]
    return [(1, l, 8, 64, 64, 1) for l in (128, 512, 2048, 8192)]


def _inputs(rng, b, l, h, p, n, g):
    x = jnp.asarray(rng.standard_normal((b, l, h, p)), jnp.float32)
    dt = jnp.asarray(rng.uniform(0.01, 0.1, (b, l, h)), jnp.float32)
    A = jnp.asarray(-rng.uniform(0.5, 4.0, h), jnp.float32)
    B = jnp.asarray(rng.standard_normal((b, l, g, n)), jnp.float32)
    C = jnp.asarray(rng.standard_normal((b, l, g, n)), jnp.float32)
    return x, dt, A, B, C


def _estimate(impl, b, l, h, p, n, pass_):
    # Used only when the backend gives no memory analysis: the big buffers.
    per = {"reference": b * h * l * l * 4, "sequential": b * l * h * p * n * 4}.get(impl, 0)
    return per * (3 if pass_ == "fwd" else 6)


def run(quick: bool) -> list[dict]:
    """Times each ssd impl's forward (and forward+backward) pass per case.

    Args:
      quick: small shapes, few repeats (seconds on CPU).

    Returns:
      One row per (case, impl, pass) with op, impl, shape, median_ms,
      peak_bytes and error (why a row was not run, else None).
    """
    rows = []
    rng = np.random.default_rng(0)
    repeats = 3 if quick else 5
    for b, l, h, p, n, g in _cases(quick):
        args = _inputs(rng, b, l, h, p, n, g)
        shape = f"b{b} l{l} h{h} p{p} n{n} g{g}"
        for impl in IMPLS:
            fwd = jax.jit(lambda *a, impl=impl: ssd(*a, chunk_size=CHUNK, impl=impl))
            grad = jax.jit(
                jax.grad(
                    lambda *a, impl=impl: jnp.sum(ssd(*a, chunk_size=CHUNK, impl=impl)[0] ** 2),
                    argnums=(0, 1, 2, 3, 4),
                )
            )
            for pass_, fn in (("fwd", fwd), ("fwd+bwd", grad)):
                row = {"op": f"ssd {pass_}", "impl": impl, "shape": shape,
                       "median_ms": None, "peak_bytes": peak_bytes(fn, *args), "error": None}
                need = row["peak_bytes"] or _estimate(impl, b, l, h, p, n, pass_)
                if need > MAX_BYTES:
                    row["error"] = f"skipped: plans {need / 2**30:.1f} GiB > {MAX_BYTES / 2**30:.0f} GiB"
                else:
                    row["median_ms"] = time_fn(fn, *args, repeats=repeats)
                rows.append(row)
    return rows


if __name__ == "__main__":
    import sys

    from benchmarks.ops import format_table

    print(format_table(run("--quick" in sys.argv)))

"""linear_scan: every implementation side by side, forward and forward+backward.

Shapes follow how mixers call the scan: a per-channel state ``(b, l, d)`` (LRU,
S5 after projection) and a per-channel SSM state ``(b, l, d, n)`` (S6-style).
"""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import peak_bytes, time_fn
from seqjax.ops import linear_scan

IMPLS = ("auto", "sequential", "associative", "chunked")


def _cases(quick: bool):
    if quick:
        return [(4, 1024, 256), (2, 512, 64, 16)]
    return [(4, 1024, 256), (4, 4096, 256), (4, 16384, 256), (2, 2048, 64, 16)]


def run(quick: bool) -> list[dict]:
    """Times every linear_scan impl on each case; see the module docstring.

    Args:
      quick: small shapes, few repeats (seconds on CPU).

    Returns:
      One row per (case, impl, pass) with op, impl, shape, median_ms, peak_bytes.
    """
    rows = []
    rng = np.random.default_rng(0)
    repeats = 3 if quick else 7
    for shape in _cases(quick):
        a = jnp.asarray(rng.uniform(0.8, 1.0, shape), jnp.float32)
        b = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        for impl in IMPLS:
            fwd = jax.jit(lambda a, b, impl=impl: linear_scan(a, b, impl=impl)[0])
            grad = jax.jit(
                jax.grad(lambda a, b, impl=impl: jnp.sum(linear_scan(a, b, impl=impl)[0] ** 2), (0, 1))
            )
            for name, fn in (("fwd", fwd), ("fwd+bwd", grad)):
                rows.append(
                    {
                        "op": f"linear_scan {name}",
                        "impl": impl,
                        "shape": "x".join(map(str, shape)),
                        "median_ms": time_fn(fn, a, b, repeats=repeats),
                        "peak_bytes": peak_bytes(fn, a, b),
                        "error": None,
                    }
                )
    return rows

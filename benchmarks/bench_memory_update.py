"""memory_update (Miras' deep memories): sequential and chunked side by side, forward and forward+backward.

The three Miras configurations on the residual-MLP memory (Yaad: Huber bias +
ℓ2 retention; Moneta: ℓp bias p = 3 + ℓq retention q = 4; Memora: ℓ2 bias +
KL retention), at the shape a width-64 Miras layer with 4 heads runs in the
MQAR CPU table (batch 64, length 64, dk = dv = 16, hidden 32) and at a longer
one. Both forms keep one raw state per token in their backward's recompute
(``jax.checkpoint`` on the scan body), so the rows also show what that costs
in memory (``peak_bytes``).
"""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import peak_bytes, time_fn
from seqjax.ops.memory_update import memory_update

CONFIGS = {"yaad": ("huber", "l2"), "moneta": ("lp", "lq"), "memora": ("l2", "kl")}
IMPLS = ("sequential", "chunked")


def _cases(quick: bool):
    """(b, l, h, dk, dh) shapes."""
    if quick:
        return [(8, 64, 4, 16, 32)]
    return [(64, 64, 4, 16, 32), (4, 1024, 4, 16, 32)]


def run(quick: bool) -> list[dict]:
    """Times every (configuration, impl) on each case; see the module docstring.

    Args:
      quick: one small shape, few repeats (seconds on CPU).

    Returns:
      One row per (case, configuration, impl, pass) with op, impl, shape,
      median_ms, peak_bytes.
    """
    rows = []
    rng = np.random.default_rng(0)
    repeats = 3 if quick else 5
    for b, l, h, dk, dh in _cases(quick):
        def draw(*shape, scale=1.0):
            return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)

        q, v = draw(b, l, h, dk), draw(b, l, h, dk)
        k = draw(b, l, h, dk)
        k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)  # the mixers' L2-normalised keys
        lr = 0.1 * jax.nn.sigmoid(draw(b, l, h))
        log_decay = -jax.nn.softplus(draw(b, l, h))
        delta = jax.nn.softplus(draw(b, l, h))
        params0 = (draw(b, h, dk, dh, scale=0.1), draw(b, h, dh, dk, scale=0.1))
        for config, (loss, retention) in CONFIGS.items():
            for impl in IMPLS:
                def out(q, k, v, params0, loss=loss, retention=retention, impl=impl):
                    return memory_update(q, k, v, lr, params0=params0, log_decay=log_decay, delta=delta,
                                         loss=loss, retention=retention, impl=impl)[0]

                fwd = jax.jit(out)
                grad = jax.jit(jax.grad(lambda *a, out=out: jnp.sum(out(*a) ** 2), (0, 1, 2, 3)))
                for name, fn in (("fwd", fwd), ("fwd+bwd", grad)):
                    rows.append({
                        "op": f"memory_update {config} {name}",
                        "impl": impl,
                        "shape": f"{b}x{l}x{h}x{dk}x{dh}",
                        "median_ms": time_fn(fn, q, k, v, params0, repeats=repeats),
                        "peak_bytes": peak_bytes(fn, q, k, v, params0),
                        "error": None,
                    })
    return rows

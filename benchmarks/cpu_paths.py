"""The CPU (XLA) paths of issue 13, side by side in one process.

Usage::

    python -m benchmarks.cpu_paths            # the full run (a few minutes)
    python -m benchmarks.cpu_paths --quick    # small shapes (under a minute)

Four measurements, written to ``benchmarks/results/<host>-<device>-paths[-quick].json``
(after each one, with ``"complete": false`` until the last):

1. **selective scan**: forward and forward+backward (gradients for all eight
   inputs, ``delta_softplus``, as in a Mamba block) of ``"reference"``,
   ``"chunked"`` (CPU's ``auto`` before ``"sequential"`` existed) and
   ``"sequential"`` (CPU's ``auto`` now), past the 2**19-element row of the
   ``auto`` table and at the Mamba LRA size (b=16, l=1024, d=128, n=16); the
   ratio forward+backward / forward.
2. **train step**: tokens/s of a 2-layer Mamba and S4D classifier (width 64,
   length 1024, same batch; ``benchmarks.lra.train_step``), Mamba with
   ``auto`` and with ``impl="chunked"`` (the code before), and the ratios.
3. **precision**: chunked linear attention in float32 against the float64
   loop reference under strong decay (half the steps with log decays of -5 to
   -20, the others of 0 to -0.1), per-head and per-channel decay, beside the
   step-by-step ``"sequential"`` form.
4. **narrow heads, wide batches** (the ICL CPU shape, batch 128, length 22,
   and length 256): forward+backward of the ``"sequential"`` selective scan
   with the batch in row blocks (``STATE_BLOCK``) against one block, and of
   linear attention with a per-channel (GLA) decay, ``"sequential"`` against
   ``"chunked"``, at narrow and wide heads (the CPU ``auto`` row's threshold).

Timings: the variants of one measurement run round-robin (``rounds`` times,
each a median of ``repeats`` calls) and the minimum over rounds is reported,
so that a load change on a shared machine hits them alike; the ratios are the
figures that carry over to other machines.
"""

import argparse
import importlib
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import time_fn
from benchmarks.lra import train_step
from benchmarks.ops import RESULTS, device_label, machine
from seqjax.ops.linear_attention import linear_attention
from seqjax.ops.selective_scan import auto_impl, selective_scan
from tests.ops.ref_linear_attention import linear_attention_ref

IMPLS = ("reference", "chunked", "sequential")
# The op's module (the package attribute of the same name is the function).
SELECTIVE = importlib.import_module("seqjax.ops.selective_scan")
# Figures of the code before this change (commit 1318f51), measured on the same
# shared 2-core VM in one process each; kept here so the JSON states both.
BEFORE = {
    "selective_scan chunked b=16 l=1024 d=128 n=16": {"fwd_ms": 248, "fwd_bwd_ms": 2564, "ratio": 10.3},
    "selective_scan reference b=16 l=1024 d=128 n=16": {"fwd_ms": 546, "fwd_bwd_ms": 1084, "ratio": 2.0},
    "train step tokens/s (benchmarks/results/vm-cpu-lra.json)": {"mamba": 2924, "s4d": 19228, "ratio": 0.15},
    "linear_attention chunked max rel err, strong decay": {"scalar": 1.03e-5, "channel": 7.30e-6},
    # The "sequential" path before its contractions, keep-free steps and per-chunk slicing (commit 1b419a4;
    # same VM, quiet, 2026-12-04); the mamba/s4d ratio from the previous vm-cpu-paths.json (loaded VM).
    "selective_scan sequential b=16 l=1024 d=128 n=16 (1b419a4)": {"fwd_ms": 32.5, "fwd_bwd_ms": 176.7, "ratio": 5.4},
    "train step mamba/s4d tokens/s (1b419a4)": {"ratio": 0.387},
}
LOAD_NOTE = ("Taken on a shared 2-core VM while other jobs ran (load averages at start and end in 'load'): "
             "absolute times vary by up to 3x between runs, the round-robin ratios far less; compare ratios.")


def _interleaved(fns: dict, args: dict, rounds: int, repeats: int) -> dict:
    """The minimum over ``rounds`` of each function's median of ``repeats`` calls, in ms."""
    for name, fn in fns.items():
        jax.block_until_ready(fn(*args[name]))  # compile outside the timed rounds
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], time_fn(fn, *args[name], repeats=repeats, warmup=0))
    return best


def _selective_inputs(b, l, d, n):
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    A = -jnp.asarray(rng.uniform(0.5, 4.0, (d, n)), jnp.float32)
    return (f(b, l, d), f(b, l, d), A, f(b, l, n), f(b, l, n), f(d), f(b, l, d), f(d))


def bench_selective(cases, rounds: int, repeats: int) -> list[dict]:
    """Forward and forward+backward of both implementations at each ``(b, l, d, n)``."""
    rows = []
    for b, l, d, n in cases:
        args = _selective_inputs(b, l, d, n)
        fns = {}
        for impl in IMPLS:
            def fwd(*a, impl=impl):
                return selective_scan(*a, True, impl=impl)

            def loss(*a, fwd=fwd):
                return jnp.sum(fwd(*a) ** 2)

            fns[(impl, "fwd")] = jax.jit(fwd)
            fns[(impl, "fwd_bwd")] = jax.jit(jax.grad(loss, argnums=tuple(range(8))))
        ms = _interleaved(fns, {k: args for k in fns}, rounds, repeats)
        for impl in IMPLS:
            f, fb = ms[(impl, "fwd")], ms[(impl, "fwd_bwd")]
            rows.append({"what": "selective_scan", "impl": impl, "b": b, "l": l, "d": d, "n": n,
                         "auto_on_cpu": auto_impl("auto", (b, l, d), n) == impl, "fwd_ms": f, "fwd_bwd_ms": fb, "fwd_bwd_over_fwd": fb / f, "bwd_over_fwd": (fb - f) / f})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def bench_train(batch: int, length: int, width: int, rounds: int, repeats: int) -> list[dict]:
    """Tokens/s of the S4D and Mamba (auto, and impl="chunked") train steps, and Mamba's share of S4D's."""
    steps = {"s4d": train_step("s4d", length, width, batch), "mamba": train_step("mamba", length, width, batch),
             "mamba impl=chunked": train_step("mamba", length, width, batch, {"impl": "chunked"})}
    ms = _interleaved({k: v[0] for k, v in steps.items()}, {k: v[1] for k, v in steps.items()}, rounds, repeats)
    rows = [{"what": "train step", "model": name, "batch": batch, "length": length, "width": width, "layers": 2,
             "min_median_ms": ms[name], "tokens_per_s": batch * length / (ms[name] / 1e3)} for name in steps]
    rows.append({"what": "train step ratio", "mamba_over_s4d_tokens_per_s": ms["s4d"] / ms["mamba"],
                 "mamba_chunked_over_s4d_tokens_per_s": ms["s4d"] / ms["mamba impl=chunked"]})
    for r in rows:
        print(json.dumps(r), file=sys.stderr, flush=True)
    return rows


def bench_precision(length: int) -> list[dict]:
    """Max relative error of float32 chunked (and sequential) linear attention vs float64, strong decay."""
    rng = np.random.default_rng(0)
    b, h, dk, dv = 1, 2, 8, 8
    rows = []
    for kind in ("scalar", "channel"):
        shape = (b, length, h) if kind == "scalar" else (b, length, h, dk)
        ld = np.where(rng.random(shape) < 0.5, -rng.uniform(5.0, 20.0, shape), -rng.uniform(0.0, 0.1, shape))
        q, k, v = (rng.standard_normal((b, length, h, x)) for x in (dk, dk, dv))
        o_ref, _ = linear_attention_ref(np, q, k, v, ld)
        f32 = [jnp.asarray(x, jnp.float32) for x in (q, k, v, ld)]
        for impl in ("chunked", "sequential"):
            o, _ = jax.jit(lambda q, k, v, ld, impl=impl: linear_attention(
                q, k, v, log_decay=ld, impl=impl, chunk_size=64))(*f32)
            err = float(np.max(np.abs(np.asarray(o, np.float64) - o_ref)) / np.max(np.abs(o_ref)))
            rows.append({"what": "linear_attention precision", "decay": kind, "impl": impl, "length": length,
                         "chunk_size": 64, "max_rel_err_vs_float64": err})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _compiled(fn, args, state_block=None):
    """``fn`` jitted and compiled, traced with ``STATE_BLOCK`` set to ``state_block`` (None: as is)."""
    saved = SELECTIVE.STATE_BLOCK
    SELECTIVE.STATE_BLOCK = saved if state_block is None else state_block
    try:
        return jax.jit(fn).lower(*args).compile()
    finally:
        SELECTIVE.STATE_BLOCK = saved


def bench_narrow(lengths, rounds: int, repeats: int) -> list[dict]:
    """Forward+backward at batch 128: the selective scan's row blocks, and linear attention's scan vs chunks."""
    rows = []
    for length in lengths:
        b, d, n = 128, 128, 16
        args = _selective_inputs(b, length, d, n)

        def ss_loss(*a):
            return jnp.sum(selective_scan(*a, True, impl="sequential") ** 2)

        grad = jax.grad(ss_loss, argnums=tuple(range(8)))
        fns = {"row blocks": _compiled(grad, args), "one block": _compiled(grad, args, 2**62)}
        ms = _interleaved(fns, {k: args for k in fns}, rounds, repeats)
        rows.append({"what": "selective_scan sequential batch blocks", "b": b, "l": length, "d": d, "n": n,
                     "rows_per_block": SELECTIVE._row_blocks(b, d * n), "fwd_bwd_ms_row_blocks": ms["row blocks"],
                     "fwd_bwd_ms_one_block": ms["one block"], "speedup": ms["one block"] / ms["row blocks"]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        for heads, dk, dv in ((4, 8, 16), (4, 16, 16), (4, 32, 32), (4, 32, 64)):
            keys = jax.random.split(jax.random.PRNGKey(length), 4)
            q, k = (jax.random.normal(x, (b, length, heads, dk)) / dk**0.5 for x in keys[:2])
            v = jax.random.normal(keys[2], (b, length, heads, dv))
            g = jax.nn.log_sigmoid(3.0 + jax.random.normal(keys[3], (b, length, heads, dk)))
            fns = {}
            for impl in ("sequential", "chunked"):
                def la_loss(q, k, v, g, impl=impl):
                    return jnp.sum(linear_attention(q, k, v, log_decay=g, impl=impl)[0] ** 2)

                fns[impl] = jax.jit(jax.grad(la_loss, argnums=(0, 1, 2, 3)))
            ms = _interleaved(fns, {name: (q, k, v, g) for name in fns}, rounds, repeats)
            rows.append({"what": "linear_attention per-channel decay fwd_bwd", "b": b, "l": length, "h": heads,
                         "dk": dk, "dv": dv, "sequential_ms": ms["sequential"], "chunked_ms": ms["chunked"],
                         "sequential_speedup": ms["chunked"] / ms["sequential"]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    """Runs the four measurements and writes the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    quick = args.quick
    if quick:
        cases, rounds, repeats, batch = [(2, 512, 64, 16), (4, 1024, 128, 16)], 1, 2, 2
    else:
        cases, rounds, repeats, batch = [(2, 512, 64, 16), (2, 1024, 256, 16), (16, 1024, 128, 16)], 3, 3, 16
    info = machine()
    load = {"start": os.getloadavg()}
    kind = device_label(info)
    out = pathlib.Path(args.out) if args.out else RESULTS / f"{info['host']}-{kind}-paths{'-quick' if quick else ''}.json"
    rows = []

    def write(complete: bool) -> None:
        load["end"] = os.getloadavg()
        out.write_text(json.dumps({"machine": info, "note": LOAD_NOTE, "load": load, "before": BEFORE,
                                   "complete": complete, "rows": rows}, indent=1))

    # The JSON is rewritten after each measurement ("complete": false until the
    # last): a crash in one (XLA:CPU segfaulted in the fourth on 2026-12-07)
    # keeps the rows before it.
    for measure in (lambda: bench_selective(cases, rounds, repeats),
                    lambda: bench_train(batch, 1024, 64, rounds, repeats),
                    lambda: bench_precision(256),
                    lambda: bench_narrow((22,) if quick else (22, 256), rounds, repeats)):
        rows += measure()
        write(False)
    write(True)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

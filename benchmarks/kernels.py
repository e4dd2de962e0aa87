"""The Pallas kernels side by side with the XLA paths, vendor kernels and the physical floor.

For every op with an ``impl="pallas"`` kernel, in float32 and bfloat16:

* **correctness**: the kernel's output and gradients against the XLA path's
  (float32, on the same device), as the largest error relative to the largest
  magnitude of the XLA result;
* **time**: jitted forward and forward+backward (gradients of a weighted sum of
  the outputs with respect to every differentiable input), median of repeats,
  for the kernel, the XLA path and, for attention, cuDNN through
  ``jax.nn.dot_product_attention(implementation="cudnn")``;
* **floor**: the least time the op can take on this device: bytes it must move
  at the copy bandwidth measured here (``x * 2`` over a 1 GiB array: read +
  write), its matmul flops at the measured bf16/f32 matmul rate, and for the
  selective scan its ``b*l*d*n`` exponentials at 3.9e12/s (the FA3 paper's
  H100 figure; H200 has the same SM). Formulas: ``../shared/KERNELS.md`` and
  the ``floor_*`` functions below.

Shapes are the issue's realistic ones (selective scan b=2, l=4096, d=2048,
n=16; SSD b=2, l=4096, h=32, p=64, n=128; GLA b=2, l=4096, h=16, d=128;
attention l=8192, d=128; Gated DeltaNet b=2, l=4096, h=16, d=128); ``--quick`` shrinks them so the script also runs on a
CPU (kernels in interpret mode: a check of the script, not of speed).

Usage::

    python -m benchmarks.kernels [--quick] [--only selective_scan,ssd] [--out FILE]

Writes ``benchmarks/results/<host>-kernels[-quick].json`` (or ``--out``).
Only ``seqjax.ops`` and ``seqjax.kernels`` are imported, so it runs on a
machine with JAX alone (the lent GPU machine has no grain/TFDS).
"""

import argparse
import json
import pathlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import time_fn
from benchmarks.ops import RESULTS, machine
from seqjax import ops
from seqjax.ops import dispatch
from seqjax.ops.attention import call_sizes as attention_call_sizes
from seqjax.ops.flash import resolve_window
from seqjax.kernels import sequence_split
from seqjax.ops.selective_scan import auto_impl as selective_scan_auto

# The scan kernels whose GPU sequence is cut into segments (seqjax.kernels.sequence_split):
# their float32 rows time them uncut as well, as pallas_unsplit_*.
CUT_OPS = ("linear_scan", "selective_scan")
# Timed calls per stage stop after this many seconds (at least 3 calls): the
# 2026-12-04 H200 run spent its 450 s limit before the linear-attention,
# attention and delta-rule rows were done (kernels then took up to ~0.1 s a
# call, 20 calls a stage, besides the compiles).
STAGE_BUDGET_S = 2.0
EXP_PER_S = 3.9e12  # exponentials per second, FA3 paper (H100; H200 has the same SM)


@dataclass(frozen=True)
class Case:
    """One op at one shape.

    Attributes:
      op: the op's public name (also the dispatch key).
      xla: the XLA implementation the kernel is compared with.
      shape: the sizes, for the JSON.
      make: ``(rng, dtype) -> (fn(impl, *args), args, differentiable argnums)``.
      floor: ``(bytes per element, fwd_and_bwd) -> dict`` of the floors'
        parts: ``bytes``, ``flops``, ``exps``.
    """

    op: str
    xla: str
    shape: dict
    make: Callable
    floor: Callable


def _normal(rng, shape, dtype, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape) * scale, dtype)


def _linear_scan_case(b, l, d):
    def make(rng, dtype):
        a = jnp.asarray(rng.uniform(0.8, 0.999, (b, l, d)), dtype)
        x = _normal(rng, (b, l, d), dtype)
        return (lambda impl, a, x: ops.linear_scan(a, x, impl=impl)[0]), (a, x), (0, 1)

    def floor(s, backward):
        elements = b * l * d
        return {"bytes": s * elements * (3 + (5 if backward else 0))}

    return Case("linear_scan", "associative", dict(b=b, l=l, d=d), make, floor)


def _selective_case(b, l, d, n):
    def make(rng, dtype):
        args = (
            _normal(rng, (b, l, d), dtype), _normal(rng, (b, l, d), dtype, 0.5),
            -jnp.asarray(rng.uniform(0.5, 4.0, (d, n)), jnp.float32),
            _normal(rng, (b, l, n), dtype), _normal(rng, (b, l, n), dtype),
            jnp.asarray(rng.standard_normal(d), jnp.float32), _normal(rng, (b, l, d), dtype),
            jnp.asarray(rng.standard_normal(d), jnp.float32),
        )
        fn = lambda impl, *a: ops.selective_scan(*a, True, impl=impl)  # noqa: E731
        return fn, args, tuple(range(8))

    def floor(s, backward):
        # Forward reads u, delta, z, B, C and writes y; the backward also reads dy
        # and writes du, ddelta, dz, dB, dC (KERNELS.md).
        parts = {"bytes": s * (3 * b * l * d + 2 * b * l * n), "exps": b * l * d * n}
        if backward:
            parts["bytes"] += s * (5 * b * l * d + 4 * b * l * n)
            parts["exps"] *= 2  # the backward recomputes exp(delta * A)
        return parts

    return Case("selective_scan", "chunked", dict(b=b, l=l, d=d, n=n), make, floor)


def _ssd_case(b, l, h, p, n, chunk=64):
    def make(rng, dtype):
        args = (
            _normal(rng, (b, l, h, p), dtype),
            jnp.asarray(rng.uniform(0.01, 0.1, (b, l, h)), dtype),
            -jnp.asarray(rng.uniform(0.5, 4.0, (h,)), jnp.float32),
            _normal(rng, (b, l, 1, n), dtype), _normal(rng, (b, l, 1, n), dtype),
        )
        fn = lambda impl, *a: ops.ssd(*a, chunk_size=chunk, impl=impl)[0]  # noqa: E731
        return fn, args, (0, 1, 2, 3, 4)

    def floor(s, backward):
        elements = 2 * b * l * h * p + 2 * b * l * n + b * l * h
        # Within chunks: C.B^T (Q^2 n), its product with x (Q^2 p); across: the
        # chunk states B^T x and C.h (2 Q n p per chunk row) -- 2 flops each.
        flops = 2 * b * h * l * (chunk * (n + p) + 2 * n * p)
        parts = {"bytes": s * elements, "flops": flops}
        if backward:
            parts["bytes"] += s * (elements + b * l * h * p)
            parts["flops"] *= 3
        return parts

    return Case("ssd", "chunked", dict(b=b, l=l, h=h, p=p, n=n, chunk=chunk), make, floor)


def _gla_case(b, l, h, dk, dv, chunk=64):
    def make(rng, dtype):
        args = (
            _normal(rng, (b, l, h, dk), dtype, dk**-0.5), _normal(rng, (b, l, h, dk), dtype, dk**-0.5),
            _normal(rng, (b, l, h, dv), dtype),
            jnp.asarray(-rng.uniform(0.001, 0.1, (b, l, h, dk)), jnp.float32),
        )

        def fn(impl, q, k, v, g):
            return ops.linear_attention(q, k, v, log_decay=g, chunk_size=chunk, impl=impl)[0]

        return fn, args, (0, 1, 2, 3)

    def floor(s, backward):
        elements = b * l * h * (3 * dk + 2 * dv)  # q, k, g, v read; o written
        flops = 2 * b * h * l * (chunk * (dk + dv) + 2 * dk * dv)
        parts = {"bytes": s * elements, "flops": flops}
        if backward:
            parts["bytes"] += s * (elements + b * l * h * dv)
            parts["flops"] *= 3
        return parts

    return Case("linear_attention", "chunked", dict(b=b, l=l, h=h, dk=dk, dv=dv, chunk=chunk), make, floor)


def _delta_case(b, l, h, dk, dv, chunk=64):
    """Gated DeltaNet: unit keys, beta in (0, 1), a per-head log decay."""
    def make(rng, dtype):
        q = _normal(rng, (b, l, h, dk), jnp.float32, dk**-0.5)
        k = _normal(rng, (b, l, h, dk), jnp.float32)
        args = (
            q.astype(dtype), (k / jnp.linalg.norm(k, axis=-1, keepdims=True)).astype(dtype),
            _normal(rng, (b, l, h, dv), dtype),
            jnp.asarray(rng.uniform(0.05, 1.0, (b, l, h)), jnp.float32),
            jnp.asarray(-rng.uniform(0.001, 0.1, (b, l, h)), jnp.float32),
        )

        def fn(impl, q, k, v, beta, g):
            return ops.delta_rule(q, k, v, beta, log_decay=g, chunk_size=chunk, impl=impl)[0]

        return fn, args, (0, 1, 2, 3, 4)

    def floor(s, backward):
        elements = b * l * h * (2 * dk + 2 * dv)  # q, k, v read; o written (beta, g: float32, small)
        # Per position (approximate): k kᵀ, q kᵀ and the C-row substitution of
        # [U_v | W] (C (3 dk + 2 dv)), W S, q S and the state update (3 dk dv).
        flops = 2 * b * h * l * (chunk * (3 * dk + 2 * dv) + 3 * dk * dv)
        parts = {"bytes": s * elements + 8 * b * l * h, "flops": flops}
        if backward:
            parts["bytes"] += s * (elements + b * l * h * dv)
            parts["flops"] *= 3
        return parts

    return Case("delta_rule", "chunked", {"b": b, "l": l, "h": h, "dk": dk, "dv": dv, "chunk": chunk}, make, floor)


def _attention_case(b, l, h, d):
    def make(rng, dtype):
        args = tuple(_normal(rng, (b, l, h, d), dtype) for _ in range(3))
        fn = lambda impl, q, k, v: ops.attention(q, k, v, causal=True, impl=impl)  # noqa: E731
        return fn, args, (0, 1, 2)

    def floor(s, backward):
        flops = 2 * b * h * l * l * d  # q.k^T and p.v, each 2*l*l*d flops, halved by causality
        return {"bytes": s * 4 * b * l * h * d, "flops": flops * (3.5 if backward else 1)}

    return Case("attention", "blockwise", dict(b=b, l=l, h=h, d=d, causal=True), make, floor)


def cases(quick: bool) -> list[Case]:
    """The realistic shapes, or tiny ones with ``quick``."""
    if quick:
        return [
            _linear_scan_case(1, 64, 16), _selective_case(1, 64, 16, 4), _ssd_case(1, 64, 2, 8, 8, chunk=32),
            _gla_case(1, 64, 2, 16, 16, chunk=32), _attention_case(1, 128, 2, 32), _delta_case(1, 64, 2, 16, 16, chunk=32),
        ]
    return [
        _linear_scan_case(2, 4096, 2048), _selective_case(2, 4096, 2048, 16), _ssd_case(2, 4096, 32, 64, 128),
        _gla_case(2, 4096, 16, 128, 128), _attention_case(1, 8192, 16, 128),
        # Last: a run cut by gpu_check.sh's time limit keeps the rows above.
        _delta_case(2, 4096, 16, 128, 128),
    ]


def device_rates(quick: bool) -> dict:
    """Copy bandwidth (bytes/s, read + write) and matmul rates (flop/s) measured here."""
    size = 2**22 if quick else 2**28  # float32 elements: 16 MiB or 1 GiB
    x = jnp.ones((size,), jnp.float32)
    seconds = time_fn(jax.jit(lambda x: x * 2), x, repeats=10) / 1e3
    rates = {"copy_bytes_per_s": 2 * 4 * size / seconds}
    m = 512 if quick else 8192
    for dtype in (jnp.bfloat16, jnp.float32):
        a = jnp.ones((m, m), dtype)
        seconds = time_fn(jax.jit(lambda a: a @ a), a, repeats=10) / 1e3
        rates[f"matmul_{jnp.dtype(dtype).name}_flops_per_s"] = 2 * m**3 / seconds
    return rates


def floor_ms(parts: dict, rates: dict, dtype) -> dict:
    """Each floor's time in ms and their maximum (the op's floor)."""
    matmul = rates["matmul_bfloat16_flops_per_s" if dtype == jnp.bfloat16 else "matmul_float32_flops_per_s"]
    times = {"bytes_ms": parts["bytes"] / rates["copy_bytes_per_s"] * 1e3}
    if "flops" in parts:
        times["flops_ms"] = parts["flops"] / matmul * 1e3
    if "exps" in parts:
        times["exps_ms"] = parts["exps"] / EXP_PER_S * 1e3
    times["floor_ms"] = max(times.values())
    return times


def jitted_functions(fn: Callable, impl: str, argnums: tuple[int, ...], rng) -> tuple[Callable, Callable]:
    """``impl``'s jitted forward and gradient (of the outputs' sum weighted by fixed random weights).

    Args:
      fn: a case's ``fn(impl, *args)``.
      impl: the implementation.
      argnums: the arguments differentiated.
      rng: draws the weights at the first trace.

    Returns:
      ``(forward, gradient)``, both of ``*args``.
    """
    forward = jax.jit(lambda *a: fn(impl, *a))
    weights = {}

    def loss(*a):
        y = fn(impl, *a).astype(jnp.float32)
        if "w" not in weights:  # fixed random weights: a cotangent that is not all ones
            weights["w"] = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
        return jnp.sum(y * weights["w"])

    return forward, jax.jit(jax.grad(loss, argnums=argnums))


def _relative_error(got, want) -> float:
    got, want = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (got, want))
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def _auto_pick(op: str, args, shape: dict) -> str:
    """The implementation ``auto`` runs for this case: the op's own size keys, so the row matches the call."""
    if op == "selective_scan":
        return selective_scan_auto("auto", args[0].shape, args[2].shape[1])
    if op == "ssd":
        return dispatch.resolve(op, "auto", length=args[0].shape[1], chunk_size=shape["chunk"])
    if op == "attention":  # the cases are causal, unsegmented, one K/V head per query head
        q, k, v = args
        b, l, h, d = q.shape
        q5 = q.reshape(b, l, h, 1, d).transpose(0, 2, 3, 1, 4)
        left, right = resolve_window(None, True)
        sizes = attention_call_sizes(q5, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), None, None, None,
                                     left, right)
        return dispatch.resolve(op, "auto", **sizes)
    return dispatch.resolve(op, "auto")


def _unsplit(fn: Callable, argnums: tuple[int, ...], args) -> tuple[Callable, Callable]:
    """A scan kernel with its GPU sequence uncut (one pass each way, b * d / 128 CTAs), compiled:
    the cut's gain measured beside it (:mod:`seqjax.kernels.sequence_split`)."""
    fwd, bwd = jitted_functions(fn, "pallas", argnums, np.random.default_rng(1))
    before = sequence_split.SPLIT_PROGRAMS
    sequence_split.SPLIT_PROGRAMS = 0  # read when the call is traced: compile now
    try:
        return fwd.lower(*args).compile(), bwd.lower(*args).compile()
    finally:
        sequence_split.SPLIT_PROGRAMS = before


def _cudnn(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


# Called after every stage (main sets it to rewrite the JSON): a run killed by
# its time limit in the middle of a case keeps that case's finished stages.
AFTER_STAGE: list[Callable[[], None]] = []


def _stage(row: dict, key: str, thunk: Callable) -> None:
    """``row[key] = thunk()``, or the failure under ``row["errors"][key]`` with its traceback in the log."""
    try:
        row[key] = thunk()
        for hook in AFTER_STAGE:
            hook()
    except Exception as error:  # noqa: BLE001 - one failing stage must not hide the others
        row.setdefault("errors", {})[key] = _failure(error, f"{row['op']} {row['dtype']} {key}")


def _failure(error: Exception, where: str) -> str:
    """The error's first line for the JSON; its traceback goes to the log.

    A device run is rare, and its failures are fixed afterwards on a machine
    without one, so the log keeps the whole traceback's end.
    """
    print(f"{where}:", file=sys.stderr)
    print("".join(traceback.format_exc().splitlines(keepends=True)[-40:]), file=sys.stderr, flush=True)
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"


def run_case(case: Case, dtype, rates: dict, repeats: int, row: dict) -> dict:
    """Correctness and times of one case in one dtype, filled into ``row`` as measured.

    Filling the caller's dict keeps what was measured before a failure (a
    kernel that compiles forward but not backward still shows its forward).
    """
    rng = np.random.default_rng(0)
    fn, args, argnums = case.make(rng, dtype)
    row.update({"xla_impl": case.xla})
    s = jnp.dtype(dtype).itemsize
    row["floor_forward"] = floor_ms(case.floor(s, False), rates, dtype)
    row["floor_forward_backward"] = floor_ms(case.floor(s, True), rates, dtype)
    if "pallas" not in dispatch.implementations(case.op):
        row["pallas"] = "not registered"
        return row
    xla_fwd, xla_bwd = jitted_functions(fn, case.xla, argnums, np.random.default_rng(1))
    pal_fwd, pal_bwd = jitted_functions(fn, "pallas", argnums, np.random.default_rng(1))
    # The reference in float32 whatever the dtype: bf16 errors are measured
    # against what the inputs mean, not against another bf16 computation.
    # Compiles dominate a device run (eight per row made the H200 run overrun
    # its limit), so a float32 row's reference is its XLA path, and auto reuses
    # the jitted functions of the implementation it picks (jit caches per
    # function object: no second compile).
    args32 = tuple(jnp.asarray(a, jnp.float32) for a in args)
    if dtype == jnp.float32:
        ref_fwd, ref_bwd = xla_fwd, xla_bwd
    else:
        ref_fwd, ref_bwd = jitted_functions(fn, case.xla, argnums, np.random.default_rng(1))
    timed = {"pallas": (pal_fwd, pal_bwd), "xla": (xla_fwd, xla_bwd)}
    if jax.default_backend() != "cpu":  # what a user gets: auto's pick on this platform
        row["auto_impl"] = pick = _auto_pick(case.op, args, case.shape)
        same = {"pallas": timed["pallas"], case.xla: timed["xla"]}
        timed["auto"] = same.get(pick) or jitted_functions(fn, "auto", argnums, np.random.default_rng(1))
    if case.op in CUT_OPS and jax.default_backend() == "gpu" and dtype == jnp.float32:
        try:  # the kernel uncut beside the default (timed below as pallas_unsplit_*; float32 only: compiles cost)
            timed["pallas_unsplit"] = _unsplit(fn, argnums, args)
        except Exception as error:  # noqa: BLE001 - the other timings go on
            row.setdefault("errors", {})["pallas_unsplit"] = _failure(error, f"{case.op} {row['dtype']} unsplit")
    if case.op == "attention" and jax.default_backend() == "gpu" and dtype == jnp.bfloat16:
        cudnn_bwd = jax.jit(jax.grad(lambda q, k, v: jnp.sum(_cudnn(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2)))
        timed["cudnn"] = (jax.jit(_cudnn), cudnn_bwd)
    # Each stage on its own: a kernel whose backward does not compile still
    # reports its forward, and the XLA path's times are kept whatever fails.
    _stage(row, "error_forward", lambda: _relative_error(pal_fwd(*args), ref_fwd(*args32)))
    for name, (fwd, _) in timed.items():
        _stage(row, f"{name}_forward_ms", lambda: time_fn(fwd, *args, repeats=repeats, budget_s=STAGE_BUDGET_S))
    _stage(row, "error_gradients", lambda: max(
        _relative_error(g, r) for g, r in zip(pal_bwd(*args), ref_bwd(*args32))))
    for name, (_, bwd) in timed.items():
        _stage(row, f"{name}_forward_backward_ms", lambda: time_fn(bwd, *args, repeats=repeats, budget_s=STAGE_BUDGET_S))
    for part in ("forward", "forward_backward"):
        if f"pallas_{part}_ms" in row:
            row[f"pallas_over_floor_{part}"] = row[f"pallas_{part}_ms"] / row[f"floor_{part}"]["floor_ms"]
            if f"xla_{part}_ms" in row:
                row[f"xla_over_pallas_{part}"] = row[f"xla_{part}_ms"] / row[f"pallas_{part}_ms"]
    return row


def _num(row: dict, key: str, spec: str = ".3f") -> str:
    return format(row[key], spec) if key in row else ""


def table(results: dict) -> str:
    """A Markdown table of a ``kernels.py`` JSON (what ``docs/kernels.md`` shows).

    Args:
      results: the parsed JSON file.

    Returns:
      The table: per op and dtype, errors, forward and forward+backward times
      of the kernel, the XLA path and the floor, and the ratios the issue's
      goals are stated in.
    """
    head = ("| op | dtype | err fwd | err grad | pallas fwd ms | xla fwd ms | floor fwd ms | pallas/floor fwd "
            "| pallas f+b ms | xla f+b ms | floor f+b ms | pallas/floor f+b | xla/pallas f+b | auto "
            "| auto f+b ms | cudnn f+b ms | failed |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for row in results["rows"]:
        failed = row.get("error") or "; ".join(f"{k}: {v}" for k, v in row.get("errors", {}).items())
        if "floor_forward" not in row:
            lines.append(f"| {row['op']} | {row['dtype']} |" + " |" * 14 + f" {failed} |")
            continue
        cells = [_num(row, "error_forward", ".1e"), _num(row, "error_gradients", ".1e"),
                 _num(row, "pallas_forward_ms"), _num(row, "xla_forward_ms"),
                 f"{row['floor_forward']['floor_ms']:.3f}", _num(row, "pallas_over_floor_forward", ".2f"),
                 _num(row, "pallas_forward_backward_ms"), _num(row, "xla_forward_backward_ms"),
                 f"{row['floor_forward_backward']['floor_ms']:.3f}",
                 _num(row, "pallas_over_floor_forward_backward", ".2f"),
                 _num(row, "xla_over_pallas_forward_backward", ".2f"), row.get("auto_impl", row.get("pallas", "")),
                 _num(row, "auto_forward_backward_ms"), _num(row, "cudnn_forward_backward_ms"), failed]
        lines.append(f"| {row['op']} | {row['dtype']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a check of the script)")
    parser.add_argument("--only", default="", help="comma-separated op names")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="", help="JSON path (default benchmarks/results/<host>-kernels.json)")
    parser.add_argument("--table", default="", help="print the Markdown table of this JSON and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(pathlib.Path(args.table).read_text())))
        return 0
    only = {name for name in args.only.split(",") if name}
    started = time.time()
    rates = device_rates(args.quick)
    print(f"device {jax.devices()[0].device_kind}: copy {rates['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
          f"bf16 matmul {rates['matmul_bfloat16_flops_per_s'] / 1e12:.0f} TFLOP/s", flush=True)
    name = f"{machine()['host']}-kernels{'-quick' if args.quick else ''}.json"
    out = pathlib.Path(args.out) if args.out else RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    def write():  # after every row, so a run cut short by a time limit keeps what it measured
        out.write_text(json.dumps({"machine": machine(), "rates": rates, "rows": rows,
                                   "seconds": time.time() - started}, indent=1) + "\n")

    AFTER_STAGE.append(write)
    for case in cases(args.quick):
        if only and case.op not in only:
            continue
        for dtype in (jnp.float32, jnp.bfloat16):
            row = {"op": case.op, "dtype": jnp.dtype(dtype).name, **case.shape}
            rows.append(row)
            try:
                run_case(case, dtype, rates, 3 if args.quick else args.repeats, row)
            except Exception as error:  # noqa: BLE001 - one failing kernel must not hide the others
                row["error"] = _failure(error, f"{case.op} {row['dtype']}")
            print(json.dumps(row), flush=True)
            write()
    write()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

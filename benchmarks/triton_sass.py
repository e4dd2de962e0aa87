"""The Triton kernels compiled for a GPU on a CPU machine: registers, spills, instruction mix.

A device run costs minutes of a lent GPU; this check costs none. Every
Triton ``pallas_call`` of the ``impl="pallas"`` ops is lowered for ``cuda``
at the realistic shapes of :mod:`benchmarks.kernels` (forward and
forward+backward, float32 and bfloat16), its Triton IR captured, and the IR
compiled ahead of time for ``sm_90a`` (H100/H200) with the ``triton`` package
and its ``ptxas``. Per kernel the JSON holds the registers per thread, the
stack frame (spills), the shared memory Triton asks for, the SASS instruction
count and the counts of the instructions that tell a kernel's health:
``HGMMA`` (tensor-core matmuls), ``FFMA`` (CUDA-core float32 multiply-adds),
``LDL``/``STL`` (spill loads and stores).

What it cannot tell: time. And XLA compiles the same IR with the Triton it
bundles, whose passes can differ from the ``triton`` package's; the figures
are a proxy, to be read beside a device run. The selective-scan and
linear-scan kernels are Mosaic GPU, not Triton, and are not covered.

Usage::

    pip install triton                       # not a dependency of seqjax
    python -m benchmarks.triton_sass [--only ssd,delta_rule] [--out FILE]
    python -m benchmarks.triton_sass --table AFTER.json [BEFORE.json] [--dtype bfloat16]

Writes ``benchmarks/results/<host>-triton-sm90a.json`` (or ``--out``);
``--table`` prints the float32 rows (``--dtype bfloat16``: the bf16 rows) as
a markdown table (``before -> after`` where a second file is given). Through
the ops' front doors the SSD and linear-attention kernels take bf16
operands for bf16 inputs (since 2026-12-07; before, their bf16 rows repeated
the float32 ones); the delta rule's front door still casts to float32.
"""

import argparse
import collections
import inspect
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.kernels import cases
from benchmarks.ops import RESULTS, machine
from tests.kernels.lowering import lower

# The ops whose kernels use the Triton backend (the scans use Mosaic GPU).
TRITON_OPS = ("ssd", "linear_attention", "delta_rule", "attention")
# Shared memory one block may use on H100/H200 (227 KiB): a kernel asking
# for more fails to launch (RESOURCE_EXHAUSTED), as the linear-attention
# backward did on the H200 on 2026-12-04 at 278,528 bytes.
SHARED_LIMIT = 232_448
# Instructions counted by name in the SASS (the opcode before its first dot).
COUNTED = ("HGMMA", "FFMA", "LDL", "STL", "MUFU", "LDS", "STS", "BAR")


def capture_ttir(fn, args) -> list[dict]:
    """Lower ``fn`` for ``cuda`` and return every Triton kernel's IR and launch parameters.

    Wraps JAX's private ``lower_jaxpr_to_triton_module`` for the duration of
    the lowering (present in JAX 0.10-0.12) and reads ``num_warps`` and
    ``num_stages`` from its caller's frame.
    """
    from jax._src.pallas.triton import lowering as triton_lowering

    found, original = [], triton_lowering.lower_jaxpr_to_triton_module

    def wrapped(jaxpr, *rest, **kw):
        result = original(jaxpr, *rest, **kw)
        caller = inspect.currentframe().f_back.f_locals
        found.append({
            "source": str(getattr(jaxpr.debug_info, "func_src_info", "")),
            "grid": [int(x) for x in result.grid],
            "num_warps": int(caller.get("num_warps", 4)),
            "num_stages": int(caller.get("num_stages", 3)),
            "ttir": result.module.operation.get_asm(enable_debug_info=False),
        })
        return result

    triton_lowering.lower_jaxpr_to_triton_module = wrapped
    try:
        lower(fn, args, "cuda")
    finally:
        triton_lowering.lower_jaxpr_to_triton_module = original
    return found


def float32_dot_precisions(ttir: str) -> collections.Counter:
    """``tt.dot`` ops on float32 operands by input precision (``ieee`` when none is printed)."""
    counts = collections.Counter()
    for line in re.findall(r"tt\.dot [^\n]*", ttir):
        if re.search(r": tensor<[0-9x]+xf32> \*", line):
            match = re.search(r"inputPrecision = (\w+)", line)
            counts[match.group(1) if match else "ieee"] += 1
    return counts


def compile_sm90(ttir: str, num_warps: int, num_stages: int) -> dict:
    """Registers, stack, shared memory and instruction counts of ``ttir`` compiled for sm_90a."""
    import triton
    from triton.backends.compiler import GPUTarget

    tools = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "kernel.ttir"
        src.write_text(ttir)
        kernel = triton.compile(str(src), target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": num_warps, "num_stages": num_stages})
        cubin = pathlib.Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([tools / "cuobjdump", "-res-usage", cubin], capture_output=True, text=True).stdout
        sass = subprocess.run([tools / "cuobjdump", "-sass", cubin], capture_output=True, text=True).stdout
    regs, stack = (int(re.search(rf"{key}:(\d+)", usage).group(1)) for key in ("REG", "STACK"))
    ops = [m.group(1).split(".")[0] for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", sass)]
    counts = collections.Counter(ops)
    shared = int(kernel.metadata.shared)
    return {"registers": regs, "stack_bytes": stack, "shared_bytes": shared, "fits_shared": shared <= SHARED_LIMIT,
            "instructions": len(ops), **{name: counts[name] for name in COUNTED}}


def _specs(args) -> tuple:
    return tuple(jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in args)


def rows(only: set | None, compile_kernels: bool) -> list[dict]:
    """One row per Triton kernel of every op, dtype and pass (forward, forward+backward)."""
    out = []
    for case in cases(quick=False):
        if case.op not in TRITON_OPS or (only and case.op not in only):
            continue
        for dtype in (jnp.float32, jnp.bfloat16):
            fn, args, argnums = case.make(np.random.default_rng(0), dtype)
            specs = _specs(args)
            forward = lambda *a, fn=fn: fn("pallas", *a)  # noqa: E731
            loss = lambda *a, fn=fn: jnp.sum(fn("pallas", *a).astype(jnp.float32))  # noqa: E731
            for what, target in (("forward", forward), ("forward+backward", jax.grad(loss, argnums))):
                for i, kernel in enumerate(capture_ttir(target, specs)):
                    row = {"op": case.op, "dtype": jnp.dtype(dtype).name, "pass": what, "kernel": i, **case.shape,
                           "source": kernel["source"], "grid": kernel["grid"], "num_warps": kernel["num_warps"],
                           "num_stages": kernel["num_stages"],
                           "float32_dots": dict(float32_dot_precisions(kernel["ttir"]))}
                    if compile_kernels:
                        try:
                            row.update(compile_sm90(kernel["ttir"], kernel["num_warps"], kernel["num_stages"]))
                        except Exception as err:  # noqa: BLE001 -- a row per kernel, whatever fails
                            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                    out.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k not in ("source",)}), flush=True)
    return out


TABLE_COLUMNS = ("registers", "stack_bytes", "shared_bytes", "instructions", "HGMMA", "FFMA", "LDL", "STL")


def table(after: dict, before: dict | None = None, dtype: str = "float32") -> str:
    """The ``dtype`` rows of ``after`` as markdown, with ``before -> after`` where ``before`` is given.

    Kernels are matched by op, pass and index where the op and pass have as
    many kernels in both files; otherwise the ``before`` rows are listed on
    their own, marked "(before)".
    """
    def of_dtype(data):
        return [r for r in (data or {}).get("rows", []) if r["dtype"] == dtype]

    def group(rows):
        out = collections.defaultdict(list)
        for r in rows:
            out[r["op"], r["pass"]].append(r)
        return out

    new_rows, old_groups = of_dtype(after), group(of_dtype(before))
    new_groups = group(new_rows)
    head = ["op", "pass", "kernel", "grid", "warps", "f32 dots"] + list(TABLE_COLUMNS)
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def dots(row):
        return ", ".join(f"{n} {k}" for k, n in sorted(row["float32_dots"].items()))

    def line(row, prev, label=""):
        cells = [row["op"], row["pass"], f"{row['kernel']}{label}", "×".join(map(str, row["grid"])),
                 (f"{prev['num_warps']} → " if prev and prev["num_warps"] != row["num_warps"] else "")
                 + str(row["num_warps"]),
                 (f"{dots(prev)} → " if prev and dots(prev) != dots(row) else "") + dots(row)]
        for col in TABLE_COLUMNS:
            value = row.get(col, "")
            cells.append(f"{prev[col]} → {value}" if prev and col in prev and prev[col] != value else str(value))
        lines.append("| " + " | ".join(cells) + " |")

    for key, rows in new_groups.items():
        old = old_groups.get(key, [])
        matched = len(old) == len(rows)
        if old and not matched:
            for prev in old:
                line(prev, None, " (before)")
        for i, row in enumerate(rows):
            line(row, old[i] if matched else None)
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated ops out of {', '.join(TRITON_OPS)}")
    parser.add_argument("--ttir-only", action="store_true", help="skip the compile (no triton package needed)")
    parser.add_argument("--out", help="the JSON to write")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print AFTER [BEFORE] as a markdown table")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="the rows --table prints (default float32)")
    args = parser.parse_args(argv)
    if args.table:
        if len(args.table) > 2:
            print("--table: one or two JSON files (after, before)", file=sys.stderr)
            return 2
        after, *before = (json.loads(pathlib.Path(f).read_text()) for f in args.table)
        print(table(after, before[0] if before else None, args.dtype))
        return 0
    only = {x for x in args.only.split(",") if x}
    unknown = only - set(TRITON_OPS)
    if unknown:
        print(f"--only: unknown op(s) {', '.join(sorted(unknown))}; choose from {', '.join(TRITON_OPS)}",
              file=sys.stderr)
        return 2
    if not args.ttir_only:
        try:
            import triton  # noqa: F401
        except ImportError:
            print("the triton package is not installed: `pip install triton`, or pass --ttir-only", file=sys.stderr)
            return 2
    info = machine()
    if not args.ttir_only:
        import triton
        info["triton"] = triton.__version__
    result = {"machine": info, "target": "sm_90a", "rows": rows(only, not args.ttir_only)}
    out = pathlib.Path(args.out) if args.out else RESULTS / f"{info['host']}-triton-sm90a.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

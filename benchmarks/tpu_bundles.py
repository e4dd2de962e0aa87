"""The TPU kernels' VLIW bundles, as libtpu schedules them, on a machine without a TPU.

Usage::

    pip install -e ".[tpu-compile]"          # libtpu
    python -m benchmarks.tpu_bundles [--topology v5e:2x2] [--dtype bfloat16] [--only ssd,...] [--out FILE]
    python -m benchmarks.tpu_bundles --table FILE

Compiles each op's forward and gradient (``impl="pallas"``, activations in
float32 or ``--dtype bfloat16``, the issue's shapes) for a TPU topology with libtpu (deviceless AOT, as
``tests/kernels/lowering.compile_for_tpu``), with
``LIBTPU_INIT_ARGS=--xla_jf_dump_to=DIR``, and reads each Mosaic kernel's
``*-final_bundles.txt``: its bundles (one issue cycle each) by loop depth,
its ``exp`` pushes (``vpow2``) and its grid. ``bundle_cycles = grid steps x
(depth-1 bundles + inner trips x deeper bundles)``, with the inner trip count
the kernel's positions per grid step that its ``fori_loop`` walks (0 where the
kernel has no inner loop): a static count (no stalls, no DMA waits), for
comparing layouts, not a time; where a kernel has several inner loops (GLA's
chunk kernels, the delta rule's solve and its final-state walk) all its deeper
bundles are counted at the one trip count, an approximation. Writes
``benchmarks/results/<host>-tpu-bundles[-bfloat16].json``.
"""

import argparse
import atexit
import glob
import json
import os
import re
import shutil
import sys
import tempfile

# libtpu dumps every pass of every compiled program: gigabytes per run at the
# issue's shapes (2026-12-07: runs that kept theirs filled an 18 GB disk), so
# the dump is emptied between compiles and removed at exit.
DUMP = tempfile.mkdtemp(prefix="seqjax-tpu-bundles-")
atexit.register(shutil.rmtree, DUMP, ignore_errors=True)
# Before JAX (and libtpu) start: the dump flag is read when libtpu loads.
os.environ["LIBTPU_INIT_ARGS"] = (os.environ.get("LIBTPU_INIT_ARGS", "") + f" --xla_jf_dump_to={DUMP}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.ops import RESULTS, machine  # noqa: E402
from seqjax import ops  # noqa: E402
from seqjax.kernels import delta_rule as delta_rule_kernel  # noqa: E402
from seqjax.kernels import linear_attention as linear_attention_kernel  # noqa: E402
from seqjax.kernels import linear_scan as linear_scan_kernel  # noqa: E402
from seqjax.kernels import selective_scan as selective_scan_kernel  # noqa: E402
from tests.kernels.lowering import compile_for_tpu, specs  # noqa: E402

F32 = jnp.float32


def _selective(dtype, b=2, l=4096, d=2048, n=16):  # noqa: E741
    def fn(u, dt, A, B, C):
        return ops.selective_scan(u, dt, A, B, C, delta_softplus=True, impl="pallas")
    args = specs(((b, l, d), dtype), ((b, l, d), F32), ((d, n), F32), ((b, l, n), dtype), ((b, l, n), dtype))
    # The row-layout kernels walk their chunk with a fori_loop; the TPU forward unrolls its block.
    return "selective_scan", dict(b=b, l=l, d=d, n=n), fn, args, selective_scan_kernel.chunk_for(n)


def _linear_scan(dtype, b=2, l=4096, d=2048):  # noqa: E741
    def fn(a, x):
        return ops.linear_scan(a, x, impl="pallas")[0]
    # Real inputs: the kernel's fori_loop walks CHUNK positions, UNROLL a trip.
    trips = linear_scan_kernel.CHUNK["tpu"] // linear_scan_kernel.UNROLL["tpu"]
    return "linear_scan", dict(b=b, l=l, d=d), fn, specs(((b, l, d), F32), ((b, l, d), dtype)), trips


def _ssd(dtype, b=2, l=4096, h=32, p=64, n=128):  # noqa: E741
    def fn(x, dt, A, B, C):
        return ops.ssd(x, dt, A, B, C, impl="pallas")[0]
    args = specs(((b, l, h, p), dtype), ((b, l, h), F32), ((h,), F32), ((b, l, 1, n), dtype), ((b, l, 1, n), dtype))
    return "ssd", dict(b=b, l=l, h=h, p=p, n=n), fn, args, 0  # one chunk a grid step, no inner loop


def _linear_attention(decay, dtype, b=2, l=4096, h=16, dk=128, dv=128):  # noqa: E741
    """Linear attention with no decay or a per-key-channel (GLA) one; the chunk kernels' inner loops
    (GLA's scores, a row at a time) walk the chunk's positions."""
    def fn(q, k, v, *g):
        return ops.linear_attention(q, k, v, log_decay=g[0] if g else None, impl="pallas")[0]
    shapes = [((b, l, h, dk), dtype), ((b, l, h, dk), dtype), ((b, l, h, dv), dtype)]
    shapes += [((b, l, h, dk), F32)] if decay == "channel" else []
    return (f"linear_attention_{decay}", dict(b=b, l=l, h=h, dk=dk, dv=dv), fn, specs(*shapes),
            linear_attention_kernel.CHUNK)


def _delta_rule(dtype, b=2, l=4096, h=16, dk=128, dv=128):  # noqa: E741
    """DeltaNet's kernels (its backward is XLA's); the UT solve's inner loop walks a chunk's rows."""
    def fn(q, k, v, beta):
        return ops.delta_rule(q, k, v, beta, impl="pallas")[0]
    args = specs(((b, l, h, dk), dtype), ((b, l, h, dk), dtype), ((b, l, h, dv), dtype), ((b, l, h), F32))
    return "delta_rule", dict(b=b, l=l, h=h, dk=dk, dv=dv), fn, args, delta_rule_kernel.CHUNK


CASES = {"selective_scan": _selective, "linear_scan": _linear_scan, "ssd": _ssd,
         "linear_attention_none": lambda dtype: _linear_attention("none", dtype),
         "linear_attention_channel": lambda dtype: _linear_attention("channel", dtype), "delta_rule": _delta_rule}


def kernel_bundles(dump: str) -> list[dict]:
    """Each Mosaic kernel's bundles in a libtpu dump directory (the HLO ops that are not kernels are skipped)."""
    kernels = []
    for analysis in sorted(glob.glob(os.path.join(dump, "*-schedule-analysis_final_bundles.txt"))):
        if "tpu_custom_call" not in open(analysis).read():
            continue
        final = analysis.replace("-schedule-analysis_final_bundles.txt", "-final_bundles.txt")
        final = re.sub(r"-\d+-final_bundles\.txt$", "", final)
        matches = glob.glob(final + "-*-final_bundles.txt")
        matches = [m for m in matches if "schedule-analysis" not in m]
        if not matches:
            continue
        text = open(matches[0]).read()
        depths: dict[int, int] = {}
        exps = 0
        for line in text.splitlines():
            m = re.match(r"^ *(?:0x[0-9a-f]+|0) *: *(>*)", line)
            if m:
                depths[len(m.group(1))] = depths.get(len(m.group(1)), 0) + 1
                exps += line.count("vpow2")
        bounds = re.search(r"iteration_bounds: \(([^)]*)\)", text)
        if not bounds:  # the top-level program, which calls the kernels
            continue
        grid = [int(x) for x in bounds.group(1).split(",")]
        kernels.append({"name": os.path.basename(matches[0]).split("-")[1], "bundles_by_depth": depths,
                        "vpow2": exps, "grid": grid})
    return kernels


def _steps(grid):
    steps = 1
    for g in grid:
        steps *= g
    return steps


def measure(case, topology: str, dtype=F32) -> dict:
    """Compiles one case's forward and gradient (activations in ``dtype``); the kernels' bundles of each."""
    op, shape, fn, args, trips = case(dtype)
    row = {"op": op, **shape, "dtype": jnp.dtype(dtype).name, "topology": topology, "parts": {}}
    grad = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args))))
    for part, f in (("forward", fn), ("forward_backward", grad)):
        for old in glob.glob(os.path.join(DUMP, "*")):
            shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
        compile_for_tpu(f, args, topology)
        kernels = kernel_bundles(DUMP)
        for k in kernels:
            d = k["bundles_by_depth"]
            inner = sum(v for depth, v in d.items() if depth >= 2)
            k["inner_trips"] = trips if inner else 0
            k["bundle_cycles"] = _steps(k["grid"]) * (d.get(1, 0) + k["inner_trips"] * inner)
        row["parts"][part] = {"kernels": kernels, "bundle_cycles": sum(k["bundle_cycles"] for k in kernels)}
        print(f"{op} {part}: " + "; ".join(f"{k['name']} grid {k['grid']} depth {k['bundles_by_depth']} "
                                           f"= {k['bundle_cycles']:,}" for k in kernels), flush=True)
    return row


def table(results: dict) -> str:
    """A Markdown table of a ``tpu_bundles`` JSON."""
    lines = ["| op | part | kernel | grid steps | bundles by loop depth | inner trips | bundle-cycles | vpow2 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["rows"]:
        for part, p in row["parts"].items():
            for k in p["kernels"]:
                depth = ", ".join(f"{d}: {v}" for d, v in sorted(k["bundles_by_depth"].items(), key=lambda x: int(x[0])))
                lines.append(f"| {row['op']} | {part} | {k['name']} | {_steps(k['grid']):,} | {depth} | "
                             f"{k['inner_trips']} | {k['bundle_cycles']:,} | {k['vpow2']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="v5e:2x2", help="a TPU topology name libtpu knows (v5e:2x2, v6e:2x2, ...)")
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated ops of {sorted(CASES)}")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="the activations' dtype (decays, A and Δ stay float32)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/<host>-tpu-bundles.json)")
    parser.add_argument("--table", metavar="FILE", help="print the table of a JSON this script wrote, and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.load(open(args.table))))
        return 0
    only = [x for x in args.only.split(",") if x]
    unknown = [x for x in only if x not in CASES]
    if unknown:
        print(f"tpu_bundles: --only {unknown[0]!r} is not one of {sorted(CASES)}", file=sys.stderr)
        return 2
    import importlib.util
    if importlib.util.find_spec("libtpu") is None:
        print('tpu_bundles: libtpu is not installed (pip install -e ".[tpu-compile]")', file=sys.stderr)
        return 2
    rows = [measure(CASES[name], args.topology, jnp.dtype(args.dtype)) for name in only]
    suffix = "" if args.dtype == "float32" else f"-{args.dtype}"
    out = args.out or os.path.join(RESULTS, f"{machine()['host']}-tpu-bundles{suffix}.json")
    with open(out, "w") as f:
        json.dump({"machine": machine(), "jax": jax.__version__, "rows": rows}, f, indent=1)
        f.write("\n")
    print(table({"rows": rows}))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

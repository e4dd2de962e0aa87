"""Where the kernels' time goes on a GPU: one forward+backward under Nsight Compute (``ncu``), summarised.

``gpu_check.sh`` says how far each kernel is from its floor; this says why:
per GPU kernel of one jitted forward+backward (the case of
:mod:`benchmarks.kernels` at its realistic shape), its duration, SM and
memory throughput (% of peak), registers, shared memory, achieved occupancy
and the warp stall reasons that dominate (cycles per issued instruction, by
reason). Meant for the kernels whose device time cannot be explained offline:
the Mosaic GPU selective scan (forward+backward 18.9 ms against a 1.5 ms
forward on the H200) and the Triton chunked kernels (``benchmarks/triton_sass.py``
reads their registers and spills, not their stalls).

Usage (on the device, after ``gpu_check.sh``, when ~3 minutes are left)::

    OUT=<dir> bash benchmarks/gpu_profile.sh

which runs, per op, ``ncu ... python -m benchmarks.gpu_profile run --op OP``
(the program ncu profiles: it compiles the case's forward+backward and runs
it once; XLA's autotuning is off so that compiling launches no kernels) and
then ``python -m benchmarks.gpu_profile summarise CSV... --out JSON``, which
also prints a table. ``run --quick`` runs the tiny shapes on any machine (a
check of the script).
"""

import argparse
import csv
import json
import pathlib
import re
import sys

# The ncu metric whose name carries one stall reason: warps stalled for it per issued instruction.
STALL = re.compile(r"smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio")
# Details-page metrics kept in the summary (ncu's display names).
KEPT = {
    "Duration": "duration",
    "Compute (SM) Throughput": "sm_throughput_pct",
    "Memory Throughput": "memory_throughput_pct",
    "DRAM Throughput": "dram_throughput_pct",
    "Registers Per Thread": "registers",
    "Dynamic Shared Memory Per Block": "dynamic_shared",
    "Static Shared Memory Per Block": "static_shared",
    "Achieved Occupancy": "achieved_occupancy_pct",
    "Theoretical Occupancy": "theoretical_occupancy_pct",
    "Warp Cycles Per Issued Instruction": "cycles_per_issue",
    "Waves Per SM": "waves_per_sm",
}
# Durations in microseconds whatever unit ncu chose.
TIME_UNITS = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6,
              "second": 1e6}


def _number(text: str):
    """ncu's value as a float (thousands separators dropped), or the text when it is not a number."""
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return text


def parse(path: pathlib.Path) -> list[dict]:
    """The kernels of one ``ncu --csv --page details`` output, in launch order.

    Lines that are not CSV records of the report (ncu's ``==PROF==`` messages,
    the program's own output) are skipped.

    Returns:
      One dict per kernel: ``id``, ``name``, ``block``, ``grid``, the
      ``KEPT`` metrics under their short names (``duration`` in µs), their
      ncu units under ``units``, and ``stalls`` (reason -> warps stalled per
      issued instruction), largest first.
    """
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.startswith('"')]
    kernels: dict[str, dict] = {}
    for rec in csv.DictReader(lines):
        if "ID" not in rec or "Metric Name" not in rec:
            continue
        k = kernels.setdefault(rec["ID"], {
            "id": int(_number(rec["ID"])), "name": rec.get("Kernel Name", ""), "block": rec.get("Block Size", ""),
            "grid": rec.get("Grid Size", ""), "units": {}, "stalls": {}})
        name, value = rec["Metric Name"], _number(rec.get("Metric Value", ""))
        stall = STALL.fullmatch(name)
        if stall and isinstance(value, float):
            k["stalls"][stall.group(1)] = value
        elif name in KEPT:
            unit = rec.get("Metric Unit", "").strip()
            if name == "Duration" and isinstance(value, float):
                value, unit = value * TIME_UNITS.get(unit, float("nan")), "us"
            k[KEPT[name]] = value
            k["units"][KEPT[name]] = unit
    out = sorted(kernels.values(), key=lambda k: k["id"])
    for k in out:
        k["stalls"] = dict(sorted(k["stalls"].items(), key=lambda kv: -kv[1]))
    return out


def summarise(paths: list[pathlib.Path]) -> dict:
    """Every file's kernels, keyed by the file's stem (``ncu-<op>-<dtype>``)."""
    return {path.stem: parse(path) for path in paths}


def table(summary: dict, top: int = 8) -> str:
    """The ``top`` longest kernels of each file as markdown: time, throughputs, occupancy, main stalls."""
    head = ["run", "kernel", "grid × block", "µs", "SM %", "mem %", "regs", "occupancy %", "cycles/issue",
            "main stalls (warps per issue)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for run, kernels in summary.items():
        timed = [k for k in kernels if isinstance(k.get("duration"), float)]
        for k in sorted(timed, key=lambda k: -k["duration"])[:top]:
            stalls = ", ".join(f"{r} {v:.1f}" for r, v in list(k["stalls"].items())[:3])

            def cell(key, spec=".0f", k=k):
                value = k.get(key, "")
                return format(value, spec) if isinstance(value, float) else str(value)

            lines.append("| " + " | ".join([
                run, k["name"][:48], f"{k['grid']} × {k['block']}", cell("duration", ".1f"),
                cell("sm_throughput_pct"), cell("memory_throughput_pct"), cell("registers"),
                cell("achieved_occupancy_pct", ".1f"), cell("cycles_per_issue", ".1f"), stalls]) + " |")
    return "\n".join(lines)


def run(op: str, dtype_name: str, impl: str, quick: bool) -> None:
    """Compiles ``op``'s forward+backward at the benchmark shape and runs it once (what ncu profiles)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.kernels import cases, jitted_functions

    found = [c for c in cases(quick) if c.op == op]
    if not found:
        known = ", ".join(c.op for c in cases(quick))
        print(f"--op: {op!r} is not one of {known}", file=sys.stderr)
        raise SystemExit(2)
    rng = np.random.default_rng(0)
    fn, args, argnums = found[0].make(rng, jnp.dtype(dtype_name))
    _, forward_backward = jitted_functions(fn, impl, argnums, rng)
    compiled = forward_backward.lower(*args).compile()
    jax.block_until_ready(args)
    jax.block_until_ready(compiled(*args))
    print(f"{op} {dtype_name} {impl}: ran forward+backward once on {jax.devices()[0].device_kind}", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="compile and run one forward+backward (the program ncu profiles)")
    r.add_argument("--op", required=True)
    r.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    r.add_argument("--impl", default="pallas")
    r.add_argument("--quick", action="store_true", help="tiny shapes (any machine)")
    s = sub.add_parser("summarise", help="ncu CSV files -> JSON and a markdown table")
    s.add_argument("csv", nargs="+", type=pathlib.Path)
    s.add_argument("--out", type=pathlib.Path, help="the JSON to write")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.op, args.dtype, args.impl, args.quick)
        return 0
    missing = [str(p) for p in args.csv if not p.is_file()]
    if missing:
        print(f"summarise: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    summary = summarise(args.csv)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks every seqjax op side by side in one process and writes JSON.

Usage::

    python -m benchmarks.ops            # full table (minutes)
    python -m benchmarks.ops --quick    # small shapes (seconds)
    python -m benchmarks.ops --only scan,attention

Each ``benchmarks/bench_<name>.py`` exposes ``run(quick) -> list[dict]``; this
driver runs them, prints one table, and writes
``benchmarks/results/<host>-ops.json`` (``<host>-ops-quick.json`` for --quick)
with the rows and the machine (platform, device kind, jax version).
"""

import argparse
import importlib
import json
import pathlib
import platform
import socket
import sys
import time

import jax

# Order = the order of the printed table.
MODULES = ("scan", "selective", "ssd", "attention", "linear_attention", "ssm_kernels", "memory_update")
RESULTS = pathlib.Path(__file__).parent / "results"


def _cpu_model() -> str:
    """The host CPU's model name and widest vector extension (Linux), or "": CPU timings differ by
    machine, and every VM here is called ``vm``."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vector = next((v for v in ("avx512f", "avx2", "avx") if v in flags), "")
    return " ".join(x for x in ((names[0] if names else ""), vector) if x)


def machine() -> dict:
    """Where the numbers were taken."""
    device = jax.devices()[0]
    return {
        "host": socket.gethostname(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": __import__("os").cpu_count(),
        "cpu_model": _cpu_model(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def device_label(info: dict) -> str:
    """The device part of a results file name: ``cpu``, or the accelerator's kind without spaces."""
    return info["backend"] if info["backend"] == "cpu" else info["device_kind"].replace(" ", "_")


def format_table(rows: list[dict]) -> str:
    """Markdown table of benchmark rows (time in ms, peak memory in MiB)."""
    lines = ["| op | shape | impl | median ms | peak MiB | note |", "| --- | --- | --- | ---: | ---: | --- |"]
    for r in rows:
        ms = "" if r.get("median_ms") is None else f"{r['median_ms']:.2f}"
        mib = "" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.1f}"
        lines.append(f"| {r['op']} | {r['shape']} | {r['impl']} | {ms} | {mib} | {r.get('error') or ''} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Runs the selected benchmarks; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, seconds on CPU")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(MODULES)}")
    parser.add_argument("--out", default=None, help="output JSON path (default: benchmarks/results/<host>-ops.json)")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(MODULES)
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        parser.error(f"--only: unknown {unknown}; allowed: {', '.join(MODULES)}")

    info = machine()
    rows = []
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        start = time.perf_counter()
        part = module.run(args.quick)
        print(f"[{name}] {len(part)} rows in {time.perf_counter() - start:.1f}s", file=sys.stderr)
        rows.extend(part)
    print(format_table(rows))
    suffix = "-quick" if args.quick else ""
    kind = device_label(info)
    out = pathlib.Path(args.out) if args.out else RESULTS / f"{info['host']}-{kind}-ops{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

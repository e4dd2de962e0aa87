"""Train steps with glibc's default malloc settings against :mod:`seqjax.host_allocator`'s.

Usage::

    python -m benchmarks.host_allocator            # 3 rounds of both settings (~6 minutes on 2 cores)
    python -m benchmarks.host_allocator --quick    # short steps (under a minute)

The setting is per process and must precede JAX's backend, so the two
settings cannot share a process: each round starts one child process per
setting (``SEQJAX_HOST_ALLOCATOR=0`` and ``1``), alternating, and each child
times the 2-layer S4D and Mamba LRA classifiers' train steps
(:func:`benchmarks.lra.train_step`, width 64, length 1024, batch 16)
round-robin after a warm-up that lets the heap reach its peak. Per model and
setting it reports the minimum over rounds of the children's medians, the
minor page faults and the system and user CPU seconds per step
(``getrusage``), and Mamba's share of S4D's tokens per second. Results go to
``benchmarks/results/<host>-<device>-host-allocator[-quick].json``.
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

MODELS = ("s4d", "mamba")
SETTINGS = {"default": "0", "seqjax": "1"}


def child(length: int, batch: int, warmup: int, repeats: int) -> dict:
    """Times the train steps in this process (its allocator set by the environment) and returns a row per model."""
    import jax

    from benchmarks.lra import train_step
    from seqjax import host_allocator

    steps = {name: train_step(name, length, 64, batch) for name in MODELS}
    for fn, args in steps.values():
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))
    times = {name: [] for name in MODELS}
    usage = {name: [0, 0.0, 0.0] for name in MODELS}  # faults, system s, user s
    for _ in range(repeats):
        for name, (fn, args) in steps.items():
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append((time.perf_counter() - start) * 1e3)
            after = resource.getrusage(resource.RUSAGE_SELF)
            usage[name][0] += after.ru_minflt - before.ru_minflt
            usage[name][1] += after.ru_stime - before.ru_stime
            usage[name][2] += after.ru_utime - before.ru_utime
    return {"allocator": host_allocator.configure(), "rows": {
        name: {"median_ms": statistics.median(times[name]), "min_ms": min(times[name]),
               "minor_faults_per_step": usage[name][0] / repeats, "system_s_per_step": usage[name][1] / repeats,
               "user_s_per_step": usage[name][2] / repeats} for name in MODELS}}


def run_child(setting: str, length: int, batch: int, warmup: int, repeats: int) -> dict:
    """One child process with ``SEQJAX_HOST_ALLOCATOR`` set for ``setting``; its JSON result."""
    env = {**os.environ, "SEQJAX_HOST_ALLOCATOR": SETTINGS[setting]}
    cmd = [sys.executable, "-m", "benchmarks.host_allocator", "--child", "--length", str(length),
           "--batch", str(batch), "--warmup", str(warmup), "--repeats", str(repeats)]
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ChildFailed(f"the child with SEQJAX_HOST_ALLOCATOR={SETTINGS[setting]} exited {out.returncode}: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class ChildFailed(RuntimeError):
    """A timing child process did not finish."""


def summarise(results: dict) -> list[dict]:
    """Per setting and model: the minimum over rounds of the medians, and the mean faults and CPU seconds."""
    rows = []
    for setting, runs in results.items():
        ms = {}
        for name in MODELS:
            per = [r["rows"][name] for r in runs]
            ms[name] = min(p["median_ms"] for p in per)
            rows.append({"what": "train step", "allocator": setting, "model": name, "min_median_ms": ms[name],
                         "minor_faults_per_step": statistics.mean(p["minor_faults_per_step"] for p in per),
                         "system_s_per_step": statistics.mean(p["system_s_per_step"] for p in per),
                         "user_s_per_step": statistics.mean(p["user_s_per_step"] for p in per)})
        rows.append({"what": "ratio", "allocator": setting, "mamba_over_s4d_tokens_per_s": ms["s4d"] / ms["mamba"]})
    for name in MODELS:
        before = next(r for r in rows if r.get("model") == name and r["allocator"] == "default")["min_median_ms"]
        after = next(r for r in rows if r.get("model") == name and r["allocator"] == "seqjax")["min_median_ms"]
        rows.append({"what": "speed-up", "model": name, "default_over_seqjax": before / after})
    return rows


def main(argv=None) -> int:
    """Runs the rounds of child processes (or, with ``--child``, one child's timing) and writes the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=8, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.length, args.batch, args.warmup, args.repeats)))
        return 0
    length, batch, warmup, repeats = (256, 4, 3, 3) if args.quick else (1024, 16, 10, 8)
    rounds = args.rounds or (1 if args.quick else 3)
    results = {setting: [] for setting in SETTINGS}
    load = {"start": os.getloadavg()}
    for r in range(rounds):
        for setting in SETTINGS:
            try:
                results[setting].append(run_child(setting, length, batch, warmup, repeats))
            except ChildFailed as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            print(f"round {r + 1}/{rounds} {setting}: " + json.dumps(results[setting][-1]["rows"]), file=sys.stderr)
    load["end"] = os.getloadavg()

    import jax

    from benchmarks.ops import RESULTS, device_label, machine
    info = machine()
    kind = device_label(info)
    out = pathlib.Path(args.out) if args.out else RESULTS / f"{info['host']}-{kind}-host-allocator{'-quick' if args.quick else ''}.json"
    setup = {"length": length, "batch": batch, "width": 64, "layers": 2, "warmup": warmup, "repeats": repeats,
             "rounds": rounds, "jax": jax.__version__}
    rows = summarise(results)
    out.write_text(json.dumps({"machine": info, "setup": setup, "load": load, "rows": rows, "children": results},
                              indent=1))
    for row in rows:
        print(json.dumps(row), file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

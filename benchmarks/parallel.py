"""Sequence-parallel overhead: ring attention and the SP scans on host devices.

Usage::

    python -m benchmarks.parallel                 # L up to 16384, P = 2, 4, 8 (~10 minutes)
    python -m benchmarks.parallel --quick         # one short length, P = 2, 8 (about a minute)
    python -m benchmarks.parallel --ops linear_scan,ssd --sizes 2,8
    python -m benchmarks.parallel --markdown benchmarks/results/vm-cpu-parallel.json

For every op, length ``L`` and number of devices ``P``, in one process:

* ``T_unsharded``: the op on the whole sequence on ONE device (jit, inputs
  committed to device 0);
* ``T_shard``: wall time of the whole jitted ``jax.shard_map`` call with the
  length split over a ``P``-device mesh axis ``sequence`` (inputs already
  placed with that sharding, zigzag inputs already permuted: both are the
  data pipeline's job);
* ``overhead = P · T_shard / T_unsharded`` (1.0 = perfect scaling), for the
  forward pass and for forward+backward (gradient of the sum of all outputs
  w.r.t. every float input) separately.

Lengths: 1024, 2048, 4096 for attention (quadratic), 1024, 4096, 16384 for
the scans (``--quick``: 512 and 2048). Times are medians (and minima) of
``--repeats`` calls after one warm-up call (which compiles), each call
synchronised with ``block_until_ready``; the unsharded call and the sharded
calls for every ``P`` of one (op, L, pass) run round-robin, so that a change
in the load of a shared machine affects all of them alike. Before a time is reported, the
sharded result (outputs, or gradients for forward+backward) is compared with
the unsharded one; the max abs difference goes into the JSON and a case whose
difference exceeds ``RTOL`` times the largest reference value is reported as
an error, without an overhead.

Host devices are threads of one process sharing the machine's CPU cores
(``XLA_FLAGS=--xla_force_host_platform_device_count``, set here from
``--devices`` before JAX starts). So these figures measure the extra work and
communication of the sequence-parallel algorithms, *not* a speed-up: with
``c`` cores and ``P > c`` devices the ``P`` shards run at most ``c`` at a time,
and a single-threaded op has ``overhead >= P / c`` even with no extra work at
all; ``work_ratio = min(P, c) · T_shard / T_unsharded`` removes that floor. An
op whose unsharded run already keeps all ``c`` cores busy (matmuls) has
``overhead >= P`` and ``work_ratio >= c`` with no extra work. ``--cores 1``
pins the process to one core, where ``work_ratio = T_shard / T_unsharded`` is
exactly (work + communication of all shards) / (work of the unsharded op) for
every op. Both figures are in the JSON.

Writes ``benchmarks/results/<host>-<device>-parallel[-quick].json`` with the
machine (cores, load average before and after, jax version, device kind, git
hash), the shapes, and one row per (op, L, P, pass). ``selective_scan`` and
``linear_attention`` run only if their signature has ``sequence_axis`` (else
they are listed under ``skipped``). ``--markdown JSON`` prints the table of
``docs/parallelism.md`` from a result file.
"""

import argparse
import os
import sys


def _backends_started() -> bool:
    """Whether JAX has created its backends (after which the host device count is fixed)."""
    if "jax" not in sys.modules:
        return False
    # The package's __init__ imports seqjax (and so jax) first; importing is
    # fine, a started backend is not. Private, but present in JAX 0.10-0.12.
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()


def _early_flags(argv):
    """--devices / --cores must act before JAX starts its backends."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--cores", type=int, default=None)
    known, _ = p.parse_known_args(argv)
    if _backends_started():
        print("benchmarks.parallel: JAX's backends started before the device count was set; "
              "--devices has no effect", file=sys.stderr)
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={known.devices}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    if known.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: known.cores])


if __name__ == "__main__":
    _early_flags(sys.argv[1:])

import inspect  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import seqjax.ops as ops  # noqa: E402
from seqjax.train import results  # noqa: E402
from benchmarks.ops import RESULTS, device_label, machine  # noqa: E402

RTOL = 1e-4  # float32; the tests see <= 7e-7 relative to float64 references
SEQ = P(None, "sequence")
REP = P()
NOTE = (
    "Host devices (XLA_FLAGS=--xla_force_host_platform_device_count) are threads of one "
    "process sharing the same CPU cores, so this measures the work + communication overhead "
    "of the sequence-parallel algorithms, not a speed-up. overhead = P*T_shard/T_unsharded "
    "(1.0 = perfect scaling on P independent devices). With c cores and P > c devices at most "
    "c shards run at once: a single-threaded op has overhead >= P/c even with no extra work; "
    "work_ratio = min(P, c)*T_shard/T_unsharded removes that floor (c = cores this process may "
    "use). An op whose unsharded run already keeps all c cores busy (matmuls) has "
    "overhead >= P and work_ratio >= c with no extra work; for it T_shard/T_unsharded is the "
    "estimate. With --cores 1 both cases agree: work_ratio = T_shard/T_unsharded = (work + "
    "communication of all shards) / (work of the unsharded op). Other processes shared the "
    "cores: see load average."
)


# --- cases ----------------------------------------------------------------------
# A case: name, shape (printable), lengths, inputs(rng, L) -> tuple of arrays,
# plain(*args) -> outputs, inner(*local_args) -> local outputs (inside
# shard_map), in_specs, out_specs, layout.


def _attention_case(name, causal, layout, b=1, h=4, d=32):
    def inputs(rng, L):
        return tuple(rng.standard_normal((b, L, h, d)).astype(np.float32) for _ in range(3))

    def plain(q, k, v):
        return ops.attention(q, k, v, causal=causal)

    def inner(q, k, v):
        return ops.attention(q, k, v, causal=causal, sequence_axis="sequence", sequence_layout=layout)

    return dict(name=name, shape=f"b={b} h={h} d={d}", kind="attention", inputs=inputs,
                plain=plain, inner=inner, in_specs=(SEQ,) * 3, out_specs=SEQ, layout=layout)


def _linear_scan_case(b=1, d=64, n=16):
    def inputs(rng, L):
        a = rng.uniform(0.9, 1.0, (b, L, d, n)).astype(np.float32)
        x = rng.standard_normal((b, L, d, n)).astype(np.float32)
        return a, x

    return dict(name="linear_scan", shape=f"a,b=({b},L,{d},{n})", kind="scan", inputs=inputs,
                plain=lambda a, x: ops.linear_scan(a, x),
                inner=lambda a, x: ops.linear_scan(a, x, sequence_axis="sequence"),
                in_specs=(SEQ, SEQ), out_specs=(SEQ, REP), layout="contiguous")


def _ssd_inputs(rng, b, L, h, p, g, n):
    return (rng.standard_normal((b, L, h, p)).astype(np.float32),
            rng.uniform(0.01, 0.1, (b, L, h)).astype(np.float32),
            -rng.uniform(0.5, 1.5, h).astype(np.float32),
            rng.standard_normal((b, L, g, n)).astype(np.float32),
            rng.standard_normal((b, L, g, n)).astype(np.float32))


def _ssd_case(b=1, h=4, p=16, g=1, n=16):
    return dict(name="ssd", shape=f"x=({b},L,{h},{p}) B,C=({b},L,{g},{n})", kind="scan",
                inputs=lambda rng, L: _ssd_inputs(rng, b, L, h, p, g, n),
                plain=lambda *a: ops.ssd(*a),
                inner=lambda *a: ops.ssd(*a, sequence_axis="sequence"),
                in_specs=(SEQ, SEQ, REP, SEQ, SEQ), out_specs=(SEQ, REP), layout="contiguous")


def _selective_case(b=1, d=64, n=16):
    def inputs(rng, L):
        return (rng.standard_normal((b, L, d)).astype(np.float32),
                rng.uniform(-4.0, -2.0, (b, L, d)).astype(np.float32),
                -rng.uniform(0.5, 1.5, (d, n)).astype(np.float32),
                rng.standard_normal((b, L, n)).astype(np.float32),
                rng.standard_normal((b, L, n)).astype(np.float32))

    kw = dict(delta_softplus=True, return_last_state=True)
    return dict(name="selective_scan", shape=f"u=({b},L,{d}) A=({d},{n}) B,C=({b},L,{n})",
                kind="scan", inputs=inputs,
                plain=lambda *a: ops.selective_scan(*a, **kw),
                inner=lambda *a: ops.selective_scan(*a, **kw, sequence_axis="sequence"),
                in_specs=(SEQ, SEQ, REP, SEQ, SEQ), out_specs=(SEQ, REP), layout="contiguous")


def _linear_attention_case(b=1, h=4, d=32):
    def inputs(rng, L):
        q, k, v = (rng.standard_normal((b, L, h, d)).astype(np.float32) / np.sqrt(d)
                   for _ in range(3))
        log_decay = -rng.uniform(0.01, 0.1, (b, L, h)).astype(np.float32)
        return q, k, v, log_decay

    return dict(name="linear_attention", shape=f"q,k,v=({b},L,{h},{d}) log_decay=({b},L,{h})",
                kind="scan", inputs=inputs,
                plain=lambda q, k, v, g: ops.linear_attention(q, k, v, log_decay=g),
                inner=lambda q, k, v, g: ops.linear_attention(q, k, v, log_decay=g,
                                                              sequence_axis="sequence"),
                in_specs=(SEQ,) * 4, out_specs=(SEQ, REP), layout="contiguous")


CASES = {
    "attention_causal_contiguous": lambda: _attention_case("attention_causal_contiguous", True, "contiguous"),
    "attention_causal_zigzag": lambda: _attention_case("attention_causal_zigzag", True, "zigzag"),
    "attention_full": lambda: _attention_case("attention_full", False, "contiguous"),
    "linear_scan": _linear_scan_case,
    "ssd": _ssd_case,
    "selective_scan": _selective_case,
    "linear_attention": _linear_attention_case,
}
# Ops whose sequence_axis is being added: run only when the signature has it.
OPTIONAL = {"selective_scan": "selective_scan", "linear_attention": "linear_attention"}
DEFAULT_OPS = ("attention_causal_contiguous", "attention_causal_zigzag", "linear_scan", "ssd",
               "selective_scan", "linear_attention")
# Attention is O(L^2): shorter lengths than the scans.
LENGTHS = {"attention": (1024, 2048, 4096), "scan": (1024, 4096, 16384)}
QUICK_LENGTHS = {"attention": (512,), "scan": (2048,)}
QUICK_SIZES = (2, 8)


# --- measurement ----------------------------------------------------------------


def _interleaved(calls, repeats):
    """Times several calls round-robin so that a change of machine load hits all alike.

    Args:
      calls: ``{key: (fn, args)}``; each is called once untimed first (compiles).
      repeats: timed rounds; in each round every call runs once.

    Returns:
      ``{key: (median ms, min ms, warm-up ms, result)}``; a call that raised
      maps to the exception and is dropped from the rounds.
    """
    out, times = {}, {}
    for key, (fn, args) in calls.items():
        try:
            start = time.perf_counter()
            res = jax.block_until_ready(fn(*args))
            out[key] = [None, None, (time.perf_counter() - start) * 1e3, res]
            times[key] = []
        except Exception as e:  # noqa: BLE001 - reported in the row
            out[key] = e
    for _ in range(repeats):
        for key in times:
            fn, args = calls[key]
            start = time.perf_counter()
            out[key][3] = jax.block_until_ready(fn(*args))
            times[key].append((time.perf_counter() - start) * 1e3)
    for key, ts in times.items():
        out[key][0], out[key][1] = statistics.median(ts), min(ts)
    return out


def _sum_outputs(out):
    return sum(jnp.sum(x) for x in jax.tree.leaves(out))


def _float_argnums(args):
    return tuple(i for i, x in enumerate(args) if jnp.issubdtype(x.dtype, jnp.floating))


def _max_err(got, want):
    """(max abs difference, max abs of ``want``); inf when the structures or shapes differ."""
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    scale = max(float(np.max(np.abs(np.asarray(w)))) for w in want)
    if len(got) != len(want) or any(np.shape(g) != np.shape(w) for g, w in zip(got, want)):
        return float("inf"), scale
    err = max(float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64))))
              for g, w in zip(got, want))
    return err, scale


def _mesh(num):
    return jax.make_mesh((num,), ("sequence",), axis_types=(AxisType.Auto,),
                         devices=jax.devices()[:num])


def run_case(case, L, sizes, repeats, cores, rng):
    """Rows for one (op, L): one per (P, pass); all variants of a pass timed interleaved."""
    host = case["inputs"](rng, L)
    args1 = tuple(jax.device_put(x, jax.devices()[0]) for x in host)
    argnums = _float_argnums(args1)
    zigzag = case["layout"] == "zigzag"
    calls = {("fwd", 1): (jax.jit(case["plain"]), args1),
             ("fwd+bwd", 1): (jax.jit(jax.grad(lambda *a: _sum_outputs(case["plain"](*a)),
                                               argnums=argnums)), args1)}
    setup_errors = {}
    for num in sizes:
        try:
            mesh = _mesh(num)
            local_host = tuple(np.asarray(ops.zigzag_permute(x, num, axis=1)) if zigzag and spec == SEQ
                               else x for x, spec in zip(host, case["in_specs"]))
            argsP = tuple(jax.device_put(x, NamedSharding(mesh, spec))
                          for x, spec in zip(local_host, case["in_specs"]))
            sharded = jax.shard_map(case["inner"], mesh=mesh, in_specs=case["in_specs"],
                                    out_specs=case["out_specs"])
            calls["fwd", num] = (jax.jit(sharded), argsP)
            calls["fwd+bwd", num] = (jax.jit(jax.grad(
                lambda *a, f=sharded: _sum_outputs(f(*a)), argnums=argnums)), argsP)
        except Exception as e:  # noqa: BLE001 - reported in the row
            setup_errors[num] = e
    rows = []
    for pass_ in ("fwd", "fwd+bwd"):
        timed = _interleaved({k: v for k, v in calls.items() if k[0] == pass_}, repeats)
        base = timed[pass_, 1]
        for num in sizes:
            row = dict(op=case["name"], shape=case["shape"], length=L, devices=num,
                       local_length=L // num, layout=case["layout"], **{"pass": pass_})
            res = setup_errors.get(num, timed.get((pass_, num)))
            if isinstance(base, Exception) or isinstance(res, Exception):
                e = base if isinstance(base, Exception) else res
                row["error"] = f"{type(e).__name__}: {e}"[:300]
                rows.append(row)
                continue
            t1, min1, warm1, want = base
            ms, fastest, warm, got = res
            row.update(t_unsharded_ms=t1, t_unsharded_min_ms=min1, warmup_unsharded_ms=warm1,
                       t_shard_ms=ms, t_shard_min_ms=fastest, warmup_shard_ms=warm)
            want, got = jax.device_get(want), jax.device_get(got)
            if zigzag:  # back to natural order (sequence-sharded leaves only)
                specs = ([case["out_specs"]] if pass_ == "fwd" else
                         [case["in_specs"][i] for i in argnums])
                leaves, tree = jax.tree.flatten(got)
                got = jax.tree.unflatten(tree, [
                    np.asarray(ops.zigzag_unpermute(x, num, axis=1)) if s == SEQ else x
                    for x, s in zip(leaves, specs, strict=True)])
            err, scale = _max_err(got, want)
            row.update(max_abs_err=err, ref_max_abs=scale)
            if not err <= RTOL * max(scale, 1e-30):
                row["error"] = f"sharded result differs: max abs err {err:.3g} (ref max {scale:.3g})"
            else:
                row["overhead"] = num * ms / t1
                row["work_ratio"] = min(num, cores) * ms / t1
                row["overhead_from_min"] = num * fastest / min1
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


# --- reporting ------------------------------------------------------------------


def _git_hash():
    """The commit the benchmark ran (``results.git_hash``), with ``-dirty`` by ``results.git_dirty``'s rule."""
    commit = results.git_hash()
    return commit and commit + ("-dirty" if results.git_dirty() else "")


def format_rows(rows):
    """One line per (op, L, P, pass) with the raw times."""
    lines = ["| op | L | P | pass | T_unsharded ms | T_shard ms | P·T_shard/T_unsh | work ratio | max abs err | note |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        def f(key, fmt):
            return "" if r.get(key) is None else format(r[key], fmt)
        lines.append(f"| {r['op']} | {r['length']} | {r['devices']} | {r['pass']} | "
                     f"{f('t_unsharded_ms', '.1f')} | {f('t_shard_ms', '.1f')} | {f('overhead', '.2f')} | "
                     f"{f('work_ratio', '.2f')} | {f('max_abs_err', '.1e')} | {r.get('error', '')} |")
    return "\n".join(lines)


def format_markdown(result):
    """Compact table (overhead per P, forward and forward+backward) from a result JSON."""
    rows, sizes = result["rows"], result["config"]["sizes"]
    m = result["machine"]
    keys = []
    for r in rows:
        if (r["op"], r["length"]) not in keys:
            keys.append((r["op"], r["length"]))
    head = ["op", "L"]
    for pass_ in ("fwd", "fwd+bwd"):
        head += [f"{pass_} T₁ ms"] + [f"{pass_} P={n}" for n in sizes]
    lines = ["| " + " | ".join(head) + " |", "| --- | ---: |" + " ---: |" * (len(head) - 2)]
    for op, L in keys:
        cells = [op, str(L)]
        for pass_ in ("fwd", "fwd+bwd"):
            sel = {r["devices"]: r for r in rows if (r["op"], r["length"], r["pass"]) == (op, L, pass_)}
            t1 = next((r["t_unsharded_ms"] for r in sel.values() if "t_unsharded_ms" in r), None)
            cells.append("" if t1 is None else f"{t1:.1f}")
            for n in sizes:
                r = sel.get(n, {})
                if "overhead" in r:
                    extra = (f" ({r['work_ratio']:.2f})"
                             if abs(r["work_ratio"] - r["overhead"]) > 1e-9 else "")
                    cells.append(f"{r['overhead']:.2f}{extra}")
                else:
                    cells.append("error" if "error" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    load = m.get("loadavg_before"), m.get("loadavg_after")
    lines.append("")
    lines.append(f"Overhead = P·T_shard/T_unsharded, in brackets the work ratio "
                 f"min(P, c)·T_shard/T_unsharded where P > c (c = {m.get('cores_used')} usable cores); "
                 f"T₁ = T_unsharded (median of {result['config']['repeats']}). {m['cpu_count']} CPU cores "
                 f"({m.get('cores_used')} used), {m['device_count']} host devices, jax {m['jax']}, "
                 f"git {str(m.get('git'))[:10]}{'-dirty' if str(m.get('git')).endswith('-dirty') else ''}, "
                 f"1-min load average {load[0][0]:.1f} before / "
                 f"{load[1][0]:.1f} after, {m['time']}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Runs the selected cases; prints a table and writes the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short lengths, under a minute on CPU")
    p.add_argument("--devices", type=int, default=8, help="host devices (set before JAX starts)")
    p.add_argument("--cores", type=int, default=None, help="pin the process to this many cores")
    p.add_argument("--sizes", default=None, help="sequence-axis sizes P, comma-separated "
                   "(default 2,4,8; quick 2,8)")
    p.add_argument("--ops", default=",".join(DEFAULT_OPS), help=f"subset of {','.join(CASES)}")
    p.add_argument("--lengths", default=None, help="override all lengths, comma-separated")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 5, quick 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--markdown", default=None, metavar="JSON",
                   help="print the docs table from a result JSON and exit")
    args = p.parse_args(argv)
    if args.markdown:
        print(format_markdown(json.loads(pathlib.Path(args.markdown).read_text())))
        return 0
    names = [n for n in args.ops.split(",") if n]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        p.error(f"--ops: unknown {unknown}; allowed: {', '.join(CASES)}")
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else (
        list(QUICK_SIZES) if args.quick else [2, 4, 8])
    if max(sizes) > jax.device_count():
        p.error(f"--sizes {sizes} needs {max(sizes)} devices; have {jax.device_count()} (--devices)")
    repeats = args.repeats or (3 if args.quick else 5)
    cores = len(os.sched_getaffinity(0))

    info = machine()
    info.update(git=_git_hash(), cores_used=cores, xla_flags=os.environ.get("XLA_FLAGS"),
                loadavg_before=list(os.getloadavg()))
    skipped = {}
    rows = []
    rng = np.random.default_rng(args.seed)
    start_all = time.perf_counter()
    for name in names:
        if name in OPTIONAL and "sequence_axis" not in inspect.signature(
                getattr(ops, OPTIONAL[name])).parameters:
            skipped[name] = f"seqjax.ops.{OPTIONAL[name]} has no sequence_axis argument yet"
            print(f"[{name}] skipped: {skipped[name]}", file=sys.stderr)
            continue
        case = CASES[name]()
        table = QUICK_LENGTHS if args.quick else LENGTHS
        lengths = [int(v) for v in args.lengths.split(",")] if args.lengths else table[case["kind"]]
        for L in lengths:
            start = time.perf_counter()
            rows.extend(run_case(case, L, sizes, repeats, cores, rng))
            print(f"[{name} L={L}] {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    info["loadavg_after"] = list(os.getloadavg())
    info["wall_s"] = time.perf_counter() - start_all
    print(NOTE)
    print(f"{info['cpu_count']} CPUs, {cores} usable, 1-min load average "
          f"{info['loadavg_before'][0]:.2f} before / {info['loadavg_after'][0]:.2f} after, "
          f"{info['wall_s']:.0f} s\n")
    print(format_rows(rows))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    config = dict(quick=args.quick, sizes=sizes, repeats=repeats, warmup=1, rtol=RTOL, seed=args.seed,
                  dtype="float32", ops=names,
                  shapes={n: CASES[n]()["shape"] for n in names})
    result = {"machine": info, "note": NOTE, "config": config, "skipped": skipped, "rows": rows}
    kind = device_label(info)
    out = pathlib.Path(args.out) if args.out else RESULTS / f"{info['host']}-{kind}-parallel{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

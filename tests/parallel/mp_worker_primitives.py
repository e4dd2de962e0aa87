"""Worker for tests/parallel/test_multiprocess_primitives.py (run by mp_launch).

Each process: ``initialize()`` from the ``SEQJAX_*`` env vars; a (fsdp=2, data=4)
mesh over the 8 global devices, with the fsdp axis spanning processes (so
each process holds half of every parameter in a 2 × 4 run); a 2-layer MLP
regression with hand-written Adam; the global batch generated from a fixed
seed on every process, of which each process passes only its rows
(``local_rows``) to ``global_batch``; 3 jitted steps with explicit in/out
shardings and a donated state. Then an orbax checkpoint of the sharded state
(every process calls save into the same directory), a restore into the same
shardings, and optionally a restore of another run's checkpoint
(``--restore_from``, e.g. the 2 × 4 run's, read by a 1 × 8 run).

Prints ``RESULT {json}`` lines (see mp_launch.results).

Usage: python -m tests.parallel.mp_worker_primitives --ckpt_dir DIR [--restore_from DIR] [--steps 3]
"""

import argparse
import json
import time

_T0 = time.monotonic()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from seqjax.parallel import distributed  # noqa: E402  (imports jax; no backend yet)

GLOBAL_BATCH = 32
D_IN, D_HIDDEN = 16, 32
LR, B1, B2, EPS = 1e-2, 0.9, 0.999, 1e-8


def emit(**kwargs):
    print("RESULT " + json.dumps(kwargs), flush=True)


def make_data(seed: int, n: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D_IN)).astype(np.float32)
    w = rng.standard_normal((D_IN,)).astype(np.float32)
    y = (np.sin(x @ w) + 0.1 * rng.standard_normal(n)).astype(np.float32)[:, None]
    return {"x": x, "y": y}


def init_params():
    rng = np.random.default_rng(0)
    return {
        "w1": (rng.standard_normal((D_IN, D_HIDDEN)) / np.sqrt(D_IN)).astype(np.float32),
        "b1": np.zeros((D_HIDDEN,), np.float32),
        "w2": (rng.standard_normal((D_HIDDEN, 1)) / np.sqrt(D_HIDDEN)).astype(np.float32),
        "b2": np.zeros((1,), np.float32),
    }


def forward(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def loss_fn(params, batch):
    return jnp.mean((forward(params, batch["x"]) - batch["y"]) ** 2)


def train_step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch)
    step = state["step"] + 1
    mu = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, state["mu"], grads)
    nu = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, state["nu"], grads)
    t = step.astype(jnp.float32)
    params = jax.tree.map(
        lambda p, m, v: p - LR * (m / (1 - B1**t)) / (jnp.sqrt(v / (1 - B2**t)) + EPS), state["params"], mu, nu
    )
    return {"params": params, "mu": mu, "nu": nu, "step": step}, loss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt_dir", required=True)
    parser.add_argument("--restore_from", default=None)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    multi = distributed.initialize()  # reads SEQJAX_* (set by mp_launch for > 1 process)
    import orbax.checkpoint as ocp

    pid = jax.process_index()
    # Auto axes (GSPMD propagation): in JAX 0.10 make_mesh defaults to Explicit
    # axes, under which x @ w1 with both operands sharded on fsdp is a type error.
    mesh = jax.make_mesh((2, 4), ("fsdp", "data"), axis_types=(AxisType.Auto,) * 2)
    batch_sharding = NamedSharding(mesh, P(("fsdp", "data")))
    repl = NamedSharding(mesh, P())
    param_shardings = {
        "w1": NamedSharding(mesh, P(None, "fsdp")),
        "b1": NamedSharding(mesh, P("fsdp")),
        "w2": NamedSharding(mesh, P("fsdp", None)),
        "b2": repl,
    }
    state_shardings = {"params": param_shardings, "mu": param_shardings, "nu": param_shardings, "step": repl}

    # State: every host builds the same initial values; each device takes its slices.
    params0 = init_params()
    zeros = jax.tree.map(np.zeros_like, params0)
    state = {
        "params": jax.tree.map(distributed.host_array_to_global, params0, param_shardings),
        "mu": jax.tree.map(distributed.host_array_to_global, zeros, param_shardings),
        "nu": jax.tree.map(distributed.host_array_to_global, zeros, param_shardings),
        "step": distributed.host_array_to_global(np.zeros((), np.int32), repl),
    }

    step_fn = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, repl),
        donate_argnums=0,
    )
    rows = distributed.local_rows(batch_sharding, (GLOBAL_BATCH, D_IN))
    try:  # rows ordered data-major: with 2 processes each holds every other block
        distributed.local_rows(NamedSharding(mesh, P(("data", "fsdp"))), GLOBAL_BATCH)
        interleaved_rows_error = False
    except ValueError:
        interleaved_rows_error = True
    losses = []
    for i in range(args.steps):
        full = make_data(100 + i, GLOBAL_BATCH)  # the same global batch on every host
        local = {k: v[rows] for k, v in full.items()}  # this host reads only its rows
        batch = distributed.global_batch(local, batch_sharding)
        assert batch["x"].shape == (GLOBAL_BATCH, D_IN), batch["x"].shape
        state, loss = step_fn(state, batch)
        losses.append(float(loss))  # replicated: readable on every host

    # Eval batch that every host generated in full; predictions stay batch-sharded,
    # so fetch() must gather rows held by the other process.
    eval_data = make_data(999, GLOBAL_BATCH)
    eval_x = distributed.host_array_to_global(eval_data["x"], batch_sharding)
    preds = jax.jit(forward, out_shardings=batch_sharding)(state["params"], eval_x)
    fetched = distributed.fetch({"preds": preds, "params": state["params"], "step": state["step"]})

    emit(
        kind="train",
        process_index=pid,
        process_count=jax.process_count(),
        device_count=jax.device_count(),
        local_device_count=jax.local_device_count(),
        initialized=multi,
        is_primary=distributed.is_primary(),
        rows=[rows.start, rows.stop],
        interleaved_rows_error=interleaved_rows_error,
        params_fully_addressable=bool(state["params"]["w1"].is_fully_addressable),
        preds_fully_addressable=bool(preds.is_fully_addressable),
        losses=losses,
        preds=fetched["preds"][:, 0].tolist(),
        w1_sum=float(fetched["params"]["w1"].sum()),
        step=int(fetched["step"]),
        cpu_collectives=str(jax.config.jax_cpu_collectives_implementation),
        seconds_to_trained=round(time.monotonic() - _T0, 2),
    )

    # Checkpoint: every process calls save; orbax writes each process's shards
    # and process 0 finalises the directory.
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, state_shardings)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(args.ckpt_dir, state, force=True)
    ckptr.wait_until_finished()
    restored = ckptr.restore(args.ckpt_dir, abstract)
    shardings_ok = all(
        r.sharding == s for r, s in zip(jax.tree.leaves(restored), jax.tree.leaves(state_shardings))
    )
    mine, back = distributed.fetch(state), distributed.fetch(restored)
    equal = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(back)))
    # A step from the restored state gives the same loss as from the live one.
    nxt = distributed.global_batch({k: v[rows] for k, v in make_data(500, GLOBAL_BATCH).items()}, batch_sharding)
    _, loss_live = step_fn(state, nxt)
    _, loss_restored = step_fn(restored, nxt)
    result = dict(
        kind="checkpoint",
        process_index=pid,
        restore_equal=equal,
        restore_shardings_ok=shardings_ok,
        loss_live=float(loss_live),
        loss_restored=float(loss_restored),
    )
    if args.restore_from:
        other = distributed.fetch(ocp.StandardCheckpointer().restore(args.restore_from, abstract))
        result["cross_max_abs_diff"] = max(
            float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(mine))
        )
    result["seconds_total"] = round(time.monotonic() - _T0, 2)
    emit(**result)


if __name__ == "__main__":
    main()

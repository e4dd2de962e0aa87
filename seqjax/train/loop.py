"""The training loop: ``run(config, workdir)`` trains, evaluates, checkpoints and resumes.

One call of :func:`run`:

1. validates the config (one-line :class:`~seqjax.errors.ConfigError` naming the field);
2. checks the config against ``workdir/config.json`` (a folder holds one run:
   a different config fails naming the fields; see :data:`RESUMABLE_FIELDS`),
   and returns ``workdir/results.json`` unchanged if it exists for the same ``train.steps``;
3. builds the task, the model, the mesh (``config.mesh``: axes ``data``,
   ``fsdp``, ``sequence``, ``tensor`` and a rule preset, see
   :mod:`seqjax.parallel`) and the optimiser;
4. restores the newest checkpoint in ``workdir/checkpoints`` (state, data
   iterator, rng) or initialises a fresh state directly in its shardings
   (parameters split by their logical names; no full copy on one device);
5. trains with a step jitted with in/out shardings (batch split over the
   batch axes and, under ``fsdp+sequence``, its length over ``sequence``;
   state donated; dropout key ``fold_in(key, step)`` so a resumed run repeats
   the uninterrupted one), logging every ``log_every``, evaluating every
   ``eval_every`` and checkpointing every ``checkpoint_every`` steps;
6. evaluates at the end and writes ``results.json`` atomically.

A non-finite loss (or gradient norm) leaves the state untouched inside the
step, saves it as a checkpoint and raises :class:`TrainingDiverged`.

Multi-host: :func:`run` first calls :func:`seqjax.parallel.distributed.initialize`
with ``config.distributed``; each process's task iterator yields its rows of
the global batch, which become global arrays; every process evaluates the full
eval set (outputs gathered) and takes part in the (orbax) checkpoints, while
only process 0 writes ``results.json`` and the metric files.
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from ml_collections.config_dict import placeholder
from tqdm.auto import tqdm

import seqjax
from seqjax import parallel
from seqjax.errors import ConfigError
from seqjax.models import param_groups
from seqjax.parallel import distributed
from seqjax.train import optim as optim_lib
from seqjax.train.checkpoint import Checkpointer, abstract_like
from seqjax.train.state import (TrainState, boxed_param_shapes, create_train_state, make_init_fn, replicated,
                                state_shardings)
from seqjax.train.writers import MetricWriter, jsonable


class TrainingDiverged(RuntimeError):
    """The loss (or gradient norm) became NaN/Inf; the last good state was checkpointed."""


def default_config() -> ml_collections.ConfigDict:
    """Defaults for the sections the trainer owns: ``seed``, ``optim``, ``train``, ``mesh``, ``distributed``.

    Returns:
      A ConfigDict; experiments add ``task`` and ``model`` and override fields.
    """
    return ml_collections.ConfigDict({
        "seed": 0,
        "optim": {
            "optimizer": "adamw",
            "learning_rate": 1e-3,
            "ssm_learning_rate": placeholder(float),  # None: the base rate
            "weight_decay": 0.01,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "schedule": "cosine",
            "warmup_steps": 0,
            "min_lr_ratio": 0.0,
            "clip_norm": 1.0,
        },
        "train": {
            "steps": 1000,
            "batch_size": 32,
            "log_every": 100,
            "eval_every": 0,  # 0: evaluate only at the end
            "checkpoint_every": 1000,  # 0: checkpoint only at the end
            "keep_checkpoints": 2,
            "progress": True,
        },
        # -1: the devices the other axes leave; presets in seqjax/parallel/rules.py.
        "mesh": parallel.mesh.default_config().to_dict(),
        # Multi-host: None fields fall back to SEQJAX_* env vars or a detected cluster.
        "distributed": {
            "enabled": "auto",  # "auto", "True" or "False" (see seqjax.parallel.distributed.initialize)
            "coordinator_address": placeholder(str),
            "num_processes": placeholder(int),
            "process_id": placeholder(int),
            "local_device_ids": placeholder(tuple),
            "initialization_timeout": placeholder(int),
        },
    })


# --- validation ------------------------------------------------------------------


def _section(config, name: str):
    section = config.get(name)
    if section is None:
        raise ConfigError(f"config.{name} is missing; it must hold the {name} fields (see seqjax.train.default_config)")
    return section


def _check_int(field: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{field}={value!r} must be an int >= {minimum}")


def validate_config(config, num_devices: int | None = None) -> dict[str, int]:
    """Checks the trainer's sections of ``config``.

    Args:
      config: the full config.
      num_devices: devices available (default: ``jax.device_count()``).

    Returns:
      The mesh axis sizes (``{"data": ..., "fsdp": ..., "sequence": ..., "tensor": ...}``).

    Raises:
      ConfigError: one line naming the first bad field.
    """
    num_devices = jax.device_count() if num_devices is None else num_devices
    _check_int("config.seed", config.get("seed"), 0)
    train = _section(config, "train")
    _check_int("config.train.steps", train.get("steps"), 1)
    _check_int("config.train.batch_size", train.get("batch_size"), 1)
    _check_int("config.train.log_every", train.get("log_every"), 1)
    _check_int("config.train.eval_every", train.get("eval_every"), 0)
    _check_int("config.train.checkpoint_every", train.get("checkpoint_every"), 0)
    _check_int("config.train.keep_checkpoints", train.get("keep_checkpoints"), 1)
    if not isinstance(train.get("progress"), bool):
        raise ConfigError(f"config.train.progress={train.get('progress')!r} must be True or False")
    optim_lib.validate(_section(config, "optim"), train.steps)
    mesh_cfg = _section(config, "mesh")
    sizes = parallel.mesh_shape(mesh_cfg, num_devices)
    preset = mesh_cfg.get("preset", "dp")
    parallel.check_preset(preset, sizes)
    ways = sizes["data"] * sizes["fsdp"]
    if train.batch_size % ways:
        raise ConfigError(
            f"config.train.batch_size={train.batch_size} is not divisible by the batch split {ways} "
            f"(config.mesh.data={sizes['data']} x config.mesh.fsdp={sizes['fsdp']})"
        )
    model = config.get("model")
    axis = model.get("sequence_axis") if model is not None else None
    if sizes["sequence"] > 1 and axis != "sequence":
        raise ConfigError(
            f"config.mesh.sequence={sizes['sequence']} splits the length, so the mixers must know it: set "
            f"config.model.sequence_axis='sequence' (got {axis!r})"
        )
    procs = jax.process_count()
    if procs > 1 and jax.local_device_count() % (sizes["sequence"] * sizes["tensor"]):
        raise ConfigError(
            f"config.mesh.sequence x config.mesh.tensor = {sizes['sequence'] * sizes['tensor']} must divide the "
            f"{jax.local_device_count()} devices of one host: a host reads whole sequences"
        )
    return sizes


def check_lengths(config, task) -> None:
    """Raises when the task's sequences are longer than the model's learned positions allow."""
    model = config.get("model")
    if model is None or model.get("positions") != "learned" or model.get("max_length") is None:
        return
    if task.max_length > model.max_length:
        raise ConfigError(
            f"config.model.max_length={model.max_length}: sequence longer than the model allows "
            f"(task {task.name!r} feeds length {task.max_length}; learned positions need max_length >= it)"
        )


# --- one run per folder --------------------------------------------------------------

# Fields that may change between invocations in the same folder: they change
# bookkeeping or placement, not what is trained (train.steps may grow to
# extend a run; the mesh and the processes may change, since 8 devices train
# as 1 does and checkpoints restore into any sharding).
RESUMABLE_FIELDS = (
    "train.steps", "train.progress", "train.log_every", "train.eval_every", "train.checkpoint_every",
    "train.keep_checkpoints", "mesh.data", "mesh.fsdp", "mesh.sequence", "mesh.tensor", "mesh.preset",
    "model.sequence_axis", *(f"distributed.{k}" for k in distributed.FIELDS),
)


def _flatten(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def check_workdir_config(config, workdir: Path) -> None:
    """Checks ``config`` against ``workdir/config.json`` when the folder has one.

    :func:`run` writes that file once the config has passed every check, so a
    config that failed (say, a too-long sequence) can be fixed in place.

    Args:
      config: the full config.
      workdir: the run folder.

    Raises:
      ConfigError: the folder holds a run of another config (names up to three
        differing fields with both values).
    """
    path = workdir / "config.json"
    if not path.exists():
        return
    old, new = _flatten(json.loads(path.read_text())), _flatten(json.loads(json.dumps(jsonable(config.to_dict()))))
    diffs = [k for k in sorted(set(old) | set(new)) if k not in RESUMABLE_FIELDS and old.get(k) != new.get(k)]
    if diffs:
        shown = ", ".join(f"config.{k}={new.get(k)!r} (run has {old.get(k)!r})" for k in diffs[:3])
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise ConfigError(
            f"{workdir} holds a run of a different config: {shown}{more}; pass another --workdir or delete the folder"
        )


# --- helpers -----------------------------------------------------------------------


def git_hash() -> str | None:
    """``git rev-parse HEAD`` of the repository that holds the seqjax package, or None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(seqjax.__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


class _NullWriter:
    """The metric writer of processes other than 0: only process 0 writes the run's files."""

    def write(self, step: int, kind: str, values: dict) -> None:
        del step, kind, values

    def message(self, text: str) -> None:
        del text

    def close(self) -> None:
        pass


# Batch keys the model is applied with (besides ``inputs``), when the task provides them.
MODEL_KEYS = ("segment_ids", "mask")


def _model_inputs(batch: dict) -> dict:
    """Only what the model sees: ``inputs`` and, if present, ``segment_ids`` and ``mask``.

    ``mask`` (True at real positions) reaches the classification head's
    pooling, so padded sequences pool over their real tokens only.
    """
    out = {"inputs": batch["inputs"]}
    for key in MODEL_KEYS:
        if batch.get(key) is not None:
            out[key] = batch[key]
    return out


def _apply(model, params, batch: dict, **kwargs):
    extra = {k: batch[k] for k in MODEL_KEYS if batch.get(k) is not None}
    return model.apply({"params": params}, batch["inputs"], **extra, **kwargs)


def make_train_step(model, task, tx, lr_schedule):
    """The (unjitted) train step ``(state, batch, key) -> (state, metrics)``.

    A non-finite loss or gradient norm returns the input state unchanged, so
    that the host can checkpoint the last good state after seeing the loss.
    """

    def train_step(state: TrainState, batch, key):
        step_key = jax.random.fold_in(key, state.step)

        def loss_fn(params):
            outputs = _apply(model, params, batch, deterministic=False, rngs={"dropout": step_key})
            return task.loss(outputs, batch)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "lr": lr_schedule(state.step)}
        return new, metrics

    return train_step


# --- the run -------------------------------------------------------------------------


def run(config, workdir, *, task=None, model=None) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints) and returns the results.

    Args:
      config: the full ConfigDict (``seed``, ``task``, ``model``, ``optim``, ``train``, ``mesh``).
      workdir: the run's directory (created).
      task: a Task object to use instead of ``seqjax.tasks.build(config.task)``.
      model: a Flax module to use instead of ``seqjax.models.build(config.model)``.

    Returns:
      The contents of ``workdir/results.json``.

    Raises:
      ConfigError: a bad config field (before anything is built).
      TrainingDiverged: the loss became NaN/Inf (after checkpointing the last good state).
    """
    t_start = time.time()
    distributed.initialize(config.get("distributed"))
    primary = distributed.is_primary()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = validate_config(config)
    check_workdir_config(config, workdir)
    train_cfg, steps = config.train, config.train.steps
    results_path = workdir / "results.json"
    if results_path.exists():
        previous = json.loads(results_path.read_text())
        if previous.get("finished") and previous.get("train", {}).get("steps") == steps:
            return previous
    if task is None:
        from seqjax import tasks

        task = tasks.build(config.task)
    check_lengths(config, task)
    if model is None:
        from seqjax import models

        # The models' own limits too: mixer position tables, s4's l_max, a CLS token.
        models.check_length(config.model, task.max_length, f"task {task.name!r} max_length")
        model = models.build(config.model)
    if primary and not (workdir / "config.json").exists():
        _write_json_atomic(workdir / "config.json", jsonable(config.to_dict()))

    preset = config.mesh.get("preset", "dp")
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.get_rules(preset)
    rep = replicated(mesh)
    tx, schedules = optim_lib.make_optimizer(config.optim, steps, param_groups.labeler(config.get("model")))
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))

    # The iterator yields this process's rows of the global batch.
    iterator = task.train_iterator(config.seed, train_cfg.batch_size)
    first_state = iterator.get_state()
    sample = jax.tree.map(np.asarray, next(iterator))  # shapes for init and shardings
    iterator.set_state(first_state)
    procs = jax.process_count()
    global_sample = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((x.shape[0] * procs,) + x.shape[1:], x.dtype) if x.ndim else x, sample)
    sample_in = jax.tree.map(lambda x: x[:1], _model_inputs(sample))
    init_fn = make_init_fn(model, tx)
    # One abstract trace of the model: the boxed parameter shapes give both the
    # state's shapes and the logical names that place each parameter.
    boxed = boxed_param_shapes(model, sample_in["inputs"], sample_in.get("segment_ids"))
    abstract = jax.eval_shape(lambda p: create_train_state(p, tx), boxed)
    # Parameters split by their logical names (config.mesh.preset); moments like their parameters.
    specs = parallel.param_specs(boxed, mesh, rules)
    st_shard = state_shardings(abstract, mesh, specs)
    b_shard = parallel.batch_shardings(global_sample, mesh, rules)

    ckpt = Checkpointer(workdir, keep=train_cfg.keep_checkpoints)
    writer, bar = None, None
    # Model code is traced inside the mesh/rules context: the backbone's sharding
    # constraints and the sequence-parallel mixers read them from there.
    context = parallel.activate(mesh, rules)
    context.__enter__()
    try:
        restored = ckpt.restore_latest(abstract_like(abstract, st_shard))
        if restored is not None:
            step0, state, meta = restored
            if step0 > steps:
                raise ConfigError(
                    f"config.train.steps={steps} is below the newest checkpoint in {workdir} (step {step0})"
                )
            iterator.set_state(meta["data_iterator"])
            dropout_key = jax.random.wrap_key_data(jnp.asarray(meta["rng"], jnp.uint32))
            elapsed_before, last_loss = float(meta.get("elapsed_s", 0.0)), meta.get("loss")
        else:
            step0, elapsed_before, last_loss = 0, 0.0, None
            # Each device creates only its own shards of the parameters.
            init = jax.jit(init_fn, out_shardings=st_shard)
            state = init(init_key, sample_in["inputs"], sample_in.get("segment_ids"))
        rng_data = np.asarray(jax.random.key_data(dropout_key)).tolist()

        writer = MetricWriter(workdir, resume_step=step0) if primary else _NullWriter()
        what = f"resuming from step {step0}" if step0 else "starting"
        layout = " x ".join(f"{a}={n}" for a, n in sizes.items() if n > 1) or "1 device"
        writer.message(f"{what}: {steps} steps, batch {train_cfg.batch_size}, mesh {layout} "
                       f"(preset {preset}), {procs} process(es) "
                       f"({jax.devices()[0].device_kind})")
        step_fn = jax.jit(
            make_train_step(model, task, tx, schedules["lr"]),
            in_shardings=(st_shard, b_shard, rep),
            out_shardings=(st_shard, rep),
            donate_argnums=(0,),
        )
        # Outputs replicated: every process reads the whole prediction.
        predict_jit = jax.jit(lambda params, b: _apply(model, params, b, deterministic=True), out_shardings=rep)
        task_cfg = config.get("task")
        eval_seed = task_cfg.get("eval_seed") if task_cfg is not None else None
        eval_seed = config.seed if eval_seed is None else eval_seed

        def evaluate(step: int, params) -> dict:
            def predict(batch):
                # Every process holds the whole eval batch.
                b = jax.tree.map(np.asarray, _model_inputs(batch))
                shards = parallel.batch_shardings(b, mesh, rules)
                return distributed.fetch(predict_jit(params, jax.tree.map(distributed.host_array_to_global, b, shards)))

            metrics = task.evaluate(predict, eval_seed)
            writer.write(step, "eval", metrics)
            return metrics

        def make_meta(step: int, data_state, loss) -> dict:
            return {"step": step, "data_iterator": data_state, "rng": rng_data, "loss": loss,
                    "elapsed_s": elapsed_before + time.time() - t_start}

        tokens_per_example = int(np.prod(sample["inputs"].shape[1:2])) if sample["inputs"].ndim > 1 else 1
        # Redirected output (logs, CI) gets a redraw every 10 s instead of ~20 per second.
        interactive = sys.stderr.isatty()
        bar = tqdm(total=steps, initial=step0, disable=not (train_cfg.progress and primary), desc="train",
                   dynamic_ncols=True,
                   mininterval=0.1 if interactive else 10.0)
        timed_steps, timed_seconds = 0, 0.0
        window, window_steps, window_seconds = [], 0, 0.0
        data_state = iterator.get_state()
        batch = distributed.global_batch(next(iterator), b_shard) if step0 < steps else None
        for s in range(step0, steps):
            t_step = time.perf_counter()
            state, metrics = step_fn(state, batch, dropout_key)
            data_before, data_state = data_state, iterator.get_state()
            if s + 1 < steps:  # fetch the next batch while the device computes this step
                batch = distributed.global_batch(next(iterator), b_shard)
            loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                # The step returned its input state: save it with the iterator before the bad batch.
                msg = (f"training diverged at step {s}: loss={loss}, grad_norm={grad_norm}; "
                       f"the last good state is checkpoint {s} in {ckpt.directory}")
                ckpt.save(s, state, make_meta(s, data_before, last_loss))
                ckpt.wait()
                writer.message("ERROR " + msg)
                raise TrainingDiverged(msg)
            last_loss = loss
            seconds = time.perf_counter() - t_step
            window.append(metrics)
            if s > step0 or steps - step0 == 1:  # the first step of a process includes compilation
                timed_steps, timed_seconds = timed_steps + 1, timed_seconds + seconds
                window_steps, window_seconds = window_steps + 1, window_seconds + seconds
            elif (s + 1) % train_cfg.log_every == 0:
                # A window of only the compile step: report its (slow) rate rather than none.
                window_steps, window_seconds = 1, seconds
            done = s + 1
            if done % train_cfg.log_every == 0 or done == steps:
                values = {k: float(np.mean([float(m[k]) for m in window])) for k in window[-1] if k != "lr"}
                values["lr"] = float(window[-1]["lr"])
                ex_s = train_cfg.batch_size * window_steps / max(window_seconds, 1e-9)
                values.update(examples_per_s=ex_s, tokens_per_s=ex_s * tokens_per_example)
                writer.write(done, "train", values)
                bar.set_postfix(loss=f"{values['loss']:.4g}", ex_s=f"{ex_s:.3g}",
                                tok_s=f"{ex_s * tokens_per_example:.3g}")
                window, window_steps, window_seconds = [], 0, 0.0
            if (train_cfg.checkpoint_every and done % train_cfg.checkpoint_every == 0) or done == steps:
                ckpt.save(done, state, make_meta(done, data_state, loss))
            if train_cfg.eval_every and done % train_cfg.eval_every == 0 and done != steps:
                evaluate(done, state.params)
            bar.update(1)
        bar.close()
        final_metrics = evaluate(steps, state.params)
        ckpt.wait()
        if timed_steps == 0:
            examples_per_s = None
        else:
            examples_per_s = train_cfg.batch_size * timed_steps / max(timed_seconds, 1e-9)
        results = {
            "metrics": jsonable(final_metrics),
            "train": {
                "loss": last_loss,
                "steps": steps,
                "examples_per_s": examples_per_s,
                "tokens_per_s": None if examples_per_s is None else examples_per_s * tokens_per_example,
            },
            "config": jsonable(config.to_dict()),
            "seqjax_version": seqjax.__version__,
            "git_hash": git_hash(),
            "wall_time_s": elapsed_before + time.time() - t_start,
            "device_kind": jax.devices()[0].device_kind,
            "num_devices": math.prod(sizes.values()),
            "mesh": {**sizes, "preset": preset},
            "num_processes": procs,
            "finished": True,
        }
        if primary:
            _write_json_atomic(results_path, results)
        writer.message(f"finished {steps} steps: loss {last_loss}, metrics {json.dumps(results['metrics'])}")
        return results
    finally:
        context.__exit__(None, None, None)
        if bar is not None:
            bar.close()
        ckpt.close()
        if writer is not None:
            writer.close()


__all__ = ["run", "default_config", "validate_config", "check_workdir_config", "check_lengths", "TrainingDiverged",
           "make_train_step", "git_hash"]

"""The training loop: ``run(config, workdir)`` trains, evaluates, checkpoints and resumes.

One call of :func:`run`:

1. validates the config (one-line :class:`~seqjax.errors.ConfigError` naming
   the field, :mod:`seqjax.train.config`), checks it against
   ``workdir/config.json`` (a folder holds one run: a different config fails
   naming the fields; see :data:`~seqjax.train.config.RESUMABLE_FIELDS`), and
   returns ``workdir/results.json`` unchanged if it exists for the same
   ``train.steps``;
2. :func:`set_up`: builds the task and the model (their own checks), the
   mesh (``config.mesh``: axes ``data``, ``fsdp``, ``sequence``, ``tensor``
   and a rule preset, see :mod:`seqjax.parallel`), the optimiser (parameter
   groups from :mod:`seqjax.models.param_groups`) and the shardings of the
   state and the batch, checks ``train.init_from`` against the parameters'
   shapes, and only then creates the workdir (a config that fails leaves no
   folder behind);
3. :func:`restore_or_init`: restores the newest checkpoint in
   ``workdir/checkpoints`` (state, data iterator, rng) or initialises a fresh
   state directly in its shardings (parameters split by their logical names;
   no full copy on one device), whose parameters ``train.init_from`` may
   then replace by path (:mod:`seqjax.train.init_from`);
4. :func:`train_loop`: trains with a step jitted with in/out shardings (batch
   split over the batch axes and, under ``fsdp+sequence``, its length over
   ``sequence``; state donated; dropout key ``fold_in(key, step)`` so a
   resumed run repeats the uninterrupted one), logging every ``log_every``,
   evaluating every ``eval_every`` and checkpointing every
   ``checkpoint_every`` steps;
5. :func:`finish`: evaluates at the end and writes ``results.json`` atomically.

The checkpointer, the mesh/rules context, the metric writer, the progress
bar and the signal handlers are context managers, closed (pending checkpoint
saves finished, previous handlers back) however :func:`run` ends.

How a run stops early (:mod:`seqjax.train.guards`):

- a checkpoint that does not restore is reported, moved to
  ``checkpoints/corrupt`` and the next older one is tried
  (:class:`~seqjax.train.checkpoint.CheckpointError` when none restores);
- divergence (a NaN/Inf loss or gradient norm, or a loss above
  ``train.divergence_factor`` x its running median) leaves the state
  untouched inside the step, saves it as a checkpoint, writes
  ``results.json`` with ``"status": "diverged"`` and raises
  :class:`TrainingDiverged`;
- SIGINT/SIGTERM finish the current step, save a checkpoint and raise
  :class:`TrainingInterrupted`;
- an evaluation that meets ``train.stop_at`` ends the run there, finished.

Process 0 prints a few lines to stdout: the run folder, ``compiling...``
before the first step, ``already finished: <folder>`` for a finished run.

Multi-host: :func:`run` first calls :func:`seqjax.parallel.distributed.initialize`
with ``config.distributed``; each process's task iterator yields its rows of
the global batch, which become global arrays; every process evaluates the full
eval set (outputs gathered) and takes part in the (orbax) checkpoints, while
only process 0 writes ``results.json`` and the metric files.
"""

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from seqjax import parallel
from seqjax.errors import ConfigError
from seqjax.models import param_groups
from seqjax.parallel import distributed
from seqjax.tasks.base import PaddedIterator, padded_batch_size
from seqjax.train import init_from as init_from_lib
from seqjax.train import optim as optim_lib
from seqjax.train.checkpoint import Checkpointer, abstract_like
from seqjax.train.guards import DivergenceGuard, StopRule, StopSignals, TrainingDiverged, TrainingInterrupted
from seqjax.train.log_window import LogWindow
from seqjax.train.config import batch_padding, check_lengths, check_vocab, check_workdir_config, validate_config
from seqjax.train.results import finished_results, git_dirty, git_hash, run_record, write_diverged, write_json_atomic
from seqjax.train.state import (TrainState, abstract_variables, create_train_state, make_init_fn, replicated,
                                split_variables, state_shardings)
from seqjax.train.step import apply_model, init_extras, make_train_step, model_inputs
from seqjax.train.writers import MetricWriter, NullWriter, jsonable, open_writer

Writer = MetricWriter | NullWriter


@dataclasses.dataclass(frozen=True)
class Setup:
    """What :func:`set_up` builds for one run; the later stages only read it.

    Attributes:
      config: the full config.
      workdir: the run's directory (exists).
      task: the task object.
      model: the Flax module.
      primary: whether this is process 0 (the one that writes files).
      t_start: ``time.time()`` when :func:`run` was called.
      sizes: the mesh axis sizes.
      preset: ``config.mesh.preset``.
      mesh: the device mesh.
      rules: the logical-axis rules of ``preset``.
      tx: the optimiser.
      schedules: ``{"lr": ..., "ssm_lr": ...}`` learning-rate schedules.
      iterator: this process's train iterator (positioned at its start).
      init_key: the key that initialises the parameters.
      dropout_key: the key folded with the step for dropout.
      sample_in: one example's model inputs (shapes for the init).
      tokens_per_example: the length of ``inputs`` (1 without a length axis), plus that of ``decoder_inputs``.
      abstract_state: the state's shapes (``ShapeDtypeStruct`` leaves).
      state_shardings: where each leaf of the state lives.
      batch_shardings: where each leaf of a global batch lives.
      init_from: what ``train.init_from`` copies into a new run (:mod:`seqjax.train.init_from`), or None.
    """

    config: Any
    workdir: Path
    task: Any
    model: Any
    primary: bool
    t_start: float
    sizes: dict[str, int]
    preset: str
    mesh: jax.sharding.Mesh
    rules: Any
    tx: Any
    schedules: dict[str, Callable]
    iterator: Any
    init_key: jax.Array
    dropout_key: jax.Array
    sample_in: dict
    tokens_per_example: int
    abstract_state: Any
    state_shardings: Any
    batch_shardings: Any
    init_from: Any = None


@dataclasses.dataclass(frozen=True)
class Start:
    """Where training starts (:func:`restore_or_init`).

    Attributes:
      step: updates already applied (0 for a fresh run).
      state: the train state at ``step``, in its shardings.
      dropout_key: the run's dropout key (restored with the checkpoint).
      elapsed_s: wall time of earlier processes of this run, up to their last checkpoint.
      loss: the loss of the step before ``step`` (None for a fresh run).
      guard: the divergence guard's history (None for a fresh run).
      init_from: what ``train.init_from`` copied into this fresh state (None otherwise).
    """

    step: int
    state: TrainState
    dropout_key: jax.Array
    elapsed_s: float
    loss: float | None
    guard: dict | None = None
    init_from: dict | None = None


@dataclasses.dataclass(frozen=True)
class Trained:
    """What :func:`train_loop` hands to :func:`finish`.

    Attributes:
      state: the state after the last step.
      loss: the last step's loss (the checkpoint's when no step ran).
      examples_per_s: throughput over the timed steps (None when no step was timed).
      stopped: ``train.stop_at`` ended the run: ``{"step", "rule", "value"}`` (None: all steps ran).
      stop_metrics: the evaluation that met the rule (the run's final metrics), or None.
    """

    state: TrainState
    loss: float | None
    examples_per_s: float | None
    stopped: dict | None = None
    stop_metrics: dict | None = None


# --- the run -------------------------------------------------------------------------


def run(config, workdir, *, task=None, model=None) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints) and returns the results.

    Args:
      config: the full ConfigDict (``seed``, ``task``, ``model``, ``optim``, ``train``, ``mesh``).
      workdir: the run's directory (created once the config has passed every check).
      task: a Task object to use instead of ``seqjax.tasks.build(config.task)``.
      model: a Flax module to use instead of ``seqjax.models.build(config.model)``.

    Returns:
      The contents of ``workdir/results.json``.

    Raises:
      ConfigError: a bad config field (before anything is built or written).
      CheckpointError: checkpoints exist but none restores.
      TrainingDiverged: a NaN/Inf loss or gradient norm, or a loss above
        ``train.divergence_factor`` x its running median (after checkpointing
        the last good state and writing ``results.json`` with ``"status": "diverged"``).
      TrainingInterrupted: SIGINT or SIGTERM (after the current step and its checkpoint).
    """
    t_start = time.time()
    # The code version is read now and kept (results.json names what this process imported).
    git_hash(), git_dirty()
    distributed.initialize(config.get("distributed"))
    workdir = Path(workdir)
    sizes = validate_config(config)
    check_workdir_config(config, workdir)
    previous = finished_results(workdir, config.train.steps)
    if previous is not None:
        _say(f"already finished: {workdir}")
        return previous
    # Signals are caught from here: one during set-up or compilation stops the run after its first step.
    with StopSignals() as signals:
        setup = set_up(config, workdir, sizes, t_start, task=task, model=model)
        if setup.primary:
            _say(f"workdir: {workdir}")
        # Entered in this order, left in the reverse: the mesh/rules context first,
        # then the checkpointer (which finishes pending saves), as before the split.
        with (Checkpointer(workdir, keep=config.train.keep_checkpoints) as ckpt,
              parallel.activate(setup.mesh, setup.rules)):
            # Model code is traced inside the mesh/rules context: the backbone's sharding
            # constraints and the sequence-parallel mixers read them from there.
            start = restore_or_init(setup, ckpt)
            with open_writer(workdir, resume_step=start.step, primary=setup.primary) as writer:
                writer.message(start_message(setup, start))
                if start.init_from is not None:
                    writer.message(start.init_from["message"])
                evaluate = make_evaluate(setup, writer)
                try:
                    trained = train_loop(setup, start, ckpt, writer, evaluate, signals)
                except TrainingDiverged as e:
                    write_diverged(setup, start, e)
                    raise
                return finish(setup, start, trained, ckpt, writer, evaluate)


def set_up(config, workdir: Path, sizes: dict[str, int], t_start: float, *, task=None, model=None) -> Setup:
    """Builds the task, the model, the mesh, optimiser and shardings; checks ``train.init_from``; creates the workdir.

    Args:
      config: the full config, already passed by :func:`~seqjax.train.config.validate_config`.
      workdir: the run's directory (created here, after the last check).
      sizes: the mesh axis sizes that ``validate_config`` returned.
      t_start: ``time.time()`` at the start of :func:`run`.
      task: a Task object, or None to build ``config.task``.
      model: a Flax module, or None to build ``config.model``.

    Returns:
      The :class:`Setup`. The train iterator is at its start; one batch was
      read from it (for shapes) and rewound.

    Raises:
      ConfigError: the task or the model rejects the config, or
        ``train.init_from`` does not fit the model (the workdir is then not created).
    """
    task, model, labels = _build(config, task, model)
    batch_padding(config, sizes, task)

    steps, batch_size = config.train.steps, config.train.batch_size
    preset = config.mesh.get("preset", "dp")
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.get_rules(preset)
    tx, schedules = optim_lib.make_optimizer(config.optim, steps, labels)
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))

    # The iterator yields this process's rows of the global batch, padded with
    # rows of loss weight 0 when data x fsdp do not divide it (the LRA papers'
    # batch 50 on 4 or 8 devices): loss, gradient and metrics are the real batch's.
    iterator = task.train_iterator(config.seed, batch_size)
    rows = padded_batch_size(batch_size, sizes["data"] * sizes["fsdp"])
    if rows != batch_size:
        iterator = PaddedIterator(iterator, rows // jax.process_count())
    first_state = iterator.get_state()
    sample = jax.tree.map(np.asarray, next(iterator))  # shapes for init and shardings
    iterator.set_state(first_state)
    procs = jax.process_count()
    global_sample = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((x.shape[0] * procs,) + x.shape[1:], x.dtype) if x.ndim else x, sample)
    sample_in = jax.tree.map(lambda x: x[:1], model_inputs(sample))
    # One abstract trace of the model: the boxed parameter shapes give both the
    # state's shapes and the logical names that place each parameter.
    boxed, model_state = split_variables(abstract_variables(model, sample_in["inputs"], sample_in.get("segment_ids"),
                                                            init_extras(sample_in)))
    abstract = jax.eval_shape(lambda p, s: create_train_state(p, tx, s), boxed, model_state)
    # Parameters split by their logical names (config.mesh.preset); moments like their parameters.
    specs = parallel.param_specs(boxed, mesh, rules)
    # The last check (the source's shapes against the model's), then the folder.
    init_from = init_from_lib.plan(config, workdir, abstract.params, abstract.model_state)
    _create_workdir(config, workdir)
    return Setup(
        config=config, workdir=workdir, task=task, model=model, primary=distributed.is_primary(), t_start=t_start,
        sizes=sizes, preset=preset, mesh=mesh, rules=rules, tx=tx, schedules=schedules, iterator=iterator,
        init_key=init_key, dropout_key=dropout_key, sample_in=sample_in,
        tokens_per_example=_tokens_per_example(sample),
        abstract_state=abstract, state_shardings=state_shardings(abstract, mesh, specs),
        batch_shardings=parallel.batch_shardings(global_sample, mesh, rules), init_from=init_from,
    )


def _tokens_per_example(sample: dict) -> int:
    """Positions the model reads per example: ``inputs``' length, plus ``decoder_inputs``' (encoder–decoders)."""
    return sum(int(x.shape[1]) if x.ndim > 1 else 1
               for x in (sample["inputs"], sample.get("decoder_inputs")) if x is not None)


def _build(config, task, model):
    """``(task, model, labels)``: the objects, built and checked unless given."""
    if task is None:
        from seqjax import tasks

        task = tasks.build(config.task)
    check_lengths(config, task)
    check_vocab(config, task)
    if model is None:
        from seqjax import models

        # The models' own limits too: mixer position tables, s4's l_max, a CLS token.
        models.check_length(config.model, task.max_length, f"task {task.name!r} max_length")
        model = models.build(config.model)
    # The mixer of each layer, from the model itself: a model passed in need not
    # be described by config.model.
    labels = param_groups.labeler(layers=param_groups.layer_names(model))
    return task, model, labels


def _create_workdir(config, workdir: Path) -> None:
    """Creates ``workdir`` and (process 0, first run) writes ``config.json`` in it."""
    workdir.mkdir(parents=True, exist_ok=True)
    if distributed.is_primary() and not (workdir / "config.json").exists():
        write_json_atomic(workdir / "config.json", jsonable(config.to_dict()))


def restore_or_init(setup: Setup, ckpt: Checkpointer) -> Start:
    """The newest checkpoint of the workdir restored into its shardings, or a fresh state.

    Call it inside ``parallel.activate(setup.mesh, setup.rules)``: a fresh
    state is created by a jitted init, each device making only its shards.

    A checkpoint that does not restore is reported in one line on stderr,
    moved to ``checkpoints/corrupt`` and the next older one is tried.

    Args:
      setup: the run's set-up; a restore repositions ``setup.iterator``.
      ckpt: the workdir's checkpointer.

    Returns:
      The :class:`Start`.

    Raises:
      ConfigError: ``config.train.steps`` is below the newest checkpoint's step,
        or no checkpoint of ``train.init_from`` restores.
      CheckpointError: checkpoints exist but none restores.
    """
    steps = setup.config.train.steps
    newest = ckpt.latest_step()
    if newest is not None and newest > steps:
        raise ConfigError(
            f"config.train.steps={steps} is below the newest checkpoint in {setup.workdir} (step {newest})")

    def check_meta(meta: dict) -> None:
        jax.random.wrap_key_data(jnp.asarray(meta["rng"], jnp.uint32))
        setup.iterator.set_state(meta["data_iterator"])

    restored = ckpt.restore_latest(abstract_like(setup.abstract_state, setup.state_shardings), check_meta=check_meta,
                                   report=lambda line: _say(line, err=True) if setup.primary else None,
                                   move=setup.primary)
    if restored is not None:
        step, state, meta = restored
        return Start(
            step=step, state=state, dropout_key=jax.random.wrap_key_data(jnp.asarray(meta["rng"], jnp.uint32)),
            elapsed_s=float(meta.get("elapsed_s", 0.0)), loss=meta.get("loss"), guard=meta.get("divergence"))
    init = jax.jit(make_init_fn(setup.model, setup.tx), out_shardings=setup.state_shardings)
    state = init(setup.init_key, setup.sample_in["inputs"], setup.sample_in.get("segment_ids"),
                 init_extras(setup.sample_in))
    # A new run with train.init_from: the source's parameters (the optimiser state stays fresh).
    state, record = init_from_lib.apply(setup.init_from, state, setup.workdir, primary=setup.primary, say=_say)
    return Start(step=0, state=state, dropout_key=setup.dropout_key, elapsed_s=0.0, loss=None, init_from=record)


def start_message(setup: Setup, start: Start) -> str:
    """The ``train.log`` line that opens a run: steps, batch, mesh, processes, device kind."""
    what = f"resuming from step {start.step}" if start.step else "starting"
    layout = " x ".join(f"{a}={n}" for a, n in setup.sizes.items() if n > 1) or "1 device"
    batch = setup.config.train.batch_size
    rows = padded_batch_size(batch, setup.sizes["data"] * setup.sizes["fsdp"])
    if rows != batch:
        batch = f"{batch} (padded to {rows} rows, {rows - batch} of loss weight 0)"
    return (f"{what}: {setup.config.train.steps} steps, batch {batch}, mesh {layout} "
            f"(preset {setup.preset}), {jax.process_count()} process(es) ({jax.devices()[0].device_kind})")


def make_evaluate(setup: Setup, writer: Writer) -> Callable[..., dict]:
    """``(step, params, model_state=None) -> metrics``: ``task.evaluate`` with a jitted predict, logged as ``eval``.

    Args:
      setup: the run's set-up.
      writer: where the eval metrics go.

    Returns:
      The evaluation function (every process evaluates the whole eval set).
    """
    # Outputs replicated: every process reads the whole prediction.
    predict_jit = jax.jit(lambda params, model_state, b: apply_model(setup.model, params, b, model_state,
                                                                     deterministic=True),
                          out_shardings=replicated(setup.mesh))
    task_cfg = setup.config.get("task")
    eval_seed = task_cfg.get("eval_seed") if task_cfg is not None else None
    eval_seed = setup.config.seed if eval_seed is None else eval_seed

    def evaluate(step: int, params, model_state: dict | None = None) -> dict:
        def predict(batch):
            # Every process holds the whole eval batch.
            b = jax.tree.map(np.asarray, model_inputs(batch))
            shards = parallel.batch_shardings(b, setup.mesh, setup.rules)
            return distributed.fetch(predict_jit(params, model_state or {},
                                                 jax.tree.map(distributed.host_array_to_global, b, shards)))

        metrics = setup.task.evaluate(predict, eval_seed)
        writer.write(step, "eval", metrics)
        return metrics

    return evaluate


def train_loop(setup: Setup, start: Start, ckpt: Checkpointer, writer: Writer,
               evaluate: Callable[..., dict], signals: StopSignals | None = None) -> Trained:
    """Runs the steps ``start.step .. config.train.steps - 1``: log, checkpoint and evaluate on schedule.

    The loss and gradient norm are read after every step (one host sync; the
    next batch is fetched before it, so data loading overlaps the device step).

    Args:
      setup: the run's set-up.
      start: where to start (:func:`restore_or_init`); its state is donated.
      ckpt: the checkpointer.
      writer: the metric writer.
      evaluate: :func:`make_evaluate`'s function (the evaluations of ``eval_every``).
      signals: the run's :class:`~seqjax.train.guards.StopSignals`, checked after each step.

    Returns:
      The :class:`Trained` state, last loss and throughput.

    Raises:
      TrainingDiverged: see :class:`~seqjax.train.guards.DivergenceGuard` (the
        last good state is checkpointed first, at the step it had reached).
      TrainingInterrupted: a signal arrived (the state after the current step is checkpointed first).
      ConfigError: ``train.stop_at`` names a metric the evaluation lacks.
    """
    cfg = setup.config.train
    steps, rep = cfg.steps, replicated(setup.mesh)
    stop = StopRule.parse(cfg.get("stop_at"))
    step_fn = jax.jit(
        make_train_step(setup.model, setup.task, setup.tx, setup.schedules["lr"]),
        in_shardings=(setup.state_shardings, setup.batch_shardings, rep, rep),
        out_shardings=(setup.state_shardings, rep),
        donate_argnums=(0,),
    )
    rng_data = np.asarray(jax.random.key_data(start.dropout_key)).tolist()
    guard = DivergenceGuard(cfg.get("divergence_factor"))
    guard.set_state(start.guard)

    def meta(step: int, data_state, loss) -> dict:
        return {"step": step, "data_iterator": data_state, "rng": rng_data, "loss": loss,
                "elapsed_s": start.elapsed_s + time.time() - setup.t_start, "divergence": guard.state()}

    window = LogWindow(first_step=start.step, steps=steps, log_every=cfg.log_every, batch_size=cfg.batch_size,
                       tokens_per_example=setup.tokens_per_example)
    iterator, state, last_loss = setup.iterator, start.state, start.loss
    data_state = iterator.get_state()
    batch = distributed.global_batch(next(iterator), setup.batch_shardings) if start.step < steps else None
    # Redirected output (logs, CI) gets a redraw every 10 s instead of ~20 per second.
    interactive = sys.stderr.isatty()
    if start.step < steps and setup.primary:
        _say(("resuming from step %d" % start.step if start.step else "starting") + "; compiling the train step...")
    with tqdm(total=steps, initial=start.step, disable=not (cfg.progress and setup.primary), desc="train",
              dynamic_ncols=True, mininterval=0.1 if interactive else 10.0) as bar:
        for s in range(start.step, steps):
            t_step = time.perf_counter()
            limit = guard.limit()
            state, metrics = step_fn(state, batch, start.dropout_key, limit)
            data_before, data_state = data_state, iterator.get_state()
            if s + 1 < steps:  # fetch the next batch while the device computes this step
                batch = distributed.global_batch(next(iterator), setup.batch_shardings)
            loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
            cause = guard.cause(loss, grad_norm, limit)
            if cause is not None:
                # The step returned its input state: save it with the iterator before the bad batch.
                msg = f"training diverged at step {s}: {cause}; kept checkpoint {s} in {ckpt.directory}"
                ckpt.save(s, state, meta(s, data_before, last_loss))
                ckpt.wait()
                writer.message(msg)
                raise TrainingDiverged(msg, step=s, cause=cause)
            guard.add(loss)
            last_loss = loss
            done = s + 1
            values = window.add(s, metrics, time.perf_counter() - t_step)
            if values is not None:
                writer.write(done, "train", values)
                bar.set_postfix(loss=f"{values['loss']:.4g}", ex_s=f"{values['examples_per_s']:.3g}",
                                tok_s=f"{values['tokens_per_s']:.3g}")
            saved = (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == steps
            if saved:
                ckpt.save(done, state, meta(done, data_state, loss))
            if cfg.eval_every and done % cfg.eval_every == 0 and done != steps:
                evaluated = evaluate(done, state.params, state.model_state)
                if stop is not None and stop.reached(evaluated):  # the goal is met: the run ends here
                    if not saved:
                        ckpt.save(done, state, meta(done, data_state, loss))
                    bar.update(1)
                    stopped = {"step": done, "rule": stop.text, "value": float(evaluated[stop.metric])}
                    return Trained(state=state, loss=last_loss, examples_per_s=window.examples_per_s(),
                                   stopped=stopped, stop_metrics=evaluated)
            bar.update(1)
            if signals is not None and signals.received is not None:
                ckpt.save(done, state, meta(done, data_state, loss))
                ckpt.wait()
                interrupted = TrainingInterrupted(done, signals.received)
                writer.message(str(interrupted))
                raise interrupted
    return Trained(state=state, loss=last_loss, examples_per_s=window.examples_per_s())


def finish(setup: Setup, start: Start, trained: Trained, ckpt: Checkpointer, writer: Writer,
           evaluate: Callable[..., dict]) -> dict:
    """Evaluates the final state, waits for the last checkpoint and writes ``results.json``.

    Args:
      setup: the run's set-up.
      start: where this process started (its earlier wall time counts).
      trained: :func:`train_loop`'s result.
      ckpt: the checkpointer.
      writer: the metric writer.
      evaluate: :func:`make_evaluate`'s function.

    Returns:
      The results (also in ``workdir/results.json``, written by process 0).
    """
    steps, stopped = setup.config.train.steps, trained.stopped
    final_metrics = (trained.stop_metrics if stopped else
                     evaluate(steps, trained.state.params, trained.state.model_state))
    ckpt.wait()
    examples_per_s = trained.examples_per_s
    # A run that train.stop_at ended keeps steps = the configured ones, so that rerunning it is "already finished".
    early = {"completed_steps": stopped["step"], "stopped_at": stopped} if stopped else {}
    results = {
        "metrics": jsonable(final_metrics),
        "train": {
            "loss": trained.loss,
            "steps": steps,
            "examples_per_s": examples_per_s,
            "tokens_per_s": None if examples_per_s is None else examples_per_s * setup.tokens_per_example,
            **early,
        },
        **run_record(setup.config, setup.sizes, setup.preset, start.elapsed_s + time.time() - setup.t_start,
                     workdir=setup.workdir),
        "status": "finished",
        "finished": True,
    }
    if setup.primary:
        write_json_atomic(setup.workdir / "results.json", results)
    done = (f"stopped at step {stopped['step']} of {steps} ({stopped['rule']}: {stopped['value']:.4g})" if stopped
            else f"finished {steps} steps")
    writer.message(f"{done}: loss {trained.loss}, metrics {json.dumps(results['metrics'])}")
    return results


# --- helpers -----------------------------------------------------------------------


def _say(text: str, *, err: bool = False) -> None:
    """Prints one line for the person at the terminal (stdout, or stderr for warnings)."""
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


__all__ = ["run", "TrainingDiverged", "TrainingInterrupted", "write_diverged", "Setup", "Start", "Trained", "set_up", "restore_or_init", "train_loop",
           "finish", "finished_results", "make_evaluate", "start_message", "LogWindow", "git_hash"]

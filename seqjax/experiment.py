"""What an experiment entrypoint does, kept here so tests can reach it.

``experiments/*.py`` only parse flags; :func:`command` loads the config file,
applies the ``--config.x=y`` overrides, and :func:`main` validates the whole
config (trainer, mesh, model, task) before anything is built or written, then
trains (or resumes, or finds the run finished) and prints the run's report.
A bad config prints one ``error:`` line and the process exits with status 2;
no run folder is created for it.
"""

import dataclasses
import pathlib
import sys
from collections.abc import Callable, Sequence

from seqjax.config import Override, apply_overrides, load_config, load_module, split_spec
from seqjax.errors import ConfigError


def default_workdir(config) -> pathlib.Path:
    """``runs/<config.name>`` (``config.name`` is set by every config file)."""
    return pathlib.Path("runs") / config.get("name", "run")


def fail(error: Exception | str) -> int:
    """Prints ``error: <first line of error>`` to stderr and returns the exit status 2."""
    text = str(error).strip().splitlines()
    print(f"error: {text[0] if text else type(error).__name__}", file=sys.stderr)
    return 2


@dataclasses.dataclass
class Prepared:
    """A validated config, ready for ``seqjax.train.run``.

    Attributes:
      config: the config to train.
      task: the built task.
      note: one line about the batch padding the trainer will do, or None.
    """

    config: object
    task: object
    note: str | None = None


def prepare(config, num_devices: int | None = None) -> Prepared:
    """Validates every section of ``config`` and builds its task, writing nothing.

    Checks, in order: the multi-host runtime (``config.distributed``), the
    trainer's sections and the mesh (``seqjax.train.config.validate_config``), the
    model (``seqjax.models.validate``), the task (its constructor), the
    lengths and token ids the model allows, and the model's build (``seqjax.models.check_build``,
    an abstract ``init`` at the task's length).

    A global batch that the batch-splitting mesh axes (``data x fsdp``) do not
    divide, say the LRA papers' batch 50 on 4 or 8 devices, is padded by the
    trainer to the next multiple with rows of loss weight 0 (the loss, gradient
    and metrics are exactly the real batch's); the task must weigh rows.

    Args:
      config: the full experiment config.
      num_devices: devices available (default ``jax.device_count()``).

    Returns:
      A :class:`Prepared`.

    Raises:
      ConfigError: one line naming the first bad field.
    """
    from seqjax import models, tasks
    from seqjax.parallel import distributed
    from seqjax.train import config as train_config

    # First: JAX must not start its backends before a multi-host runtime is up.
    distributed.initialize(config.get("distributed"))
    sizes = train_config.validate_config(config, num_devices)
    model_config = config.get("model")
    if model_config is None:
        raise ConfigError("config.model is missing; it must hold the model fields (see seqjax.models.default_config)")
    models.validate(model_config)
    if config.get("task") is None:
        raise ConfigError(f"config.task is missing; allowed task names: {', '.join(tasks.names())}")
    task = tasks.build(config.task)
    train_config.check_lengths(config, task)
    train_config.check_vocab(config, task)
    if hasattr(task, "check_model"):  # a task that needs a kind of model (an LM head for LRA's causal_lm)
        task.check_model(model_config)
    models.check_length(model_config, task.max_length, f"task {task.name!r} max_length")
    # Errors that only the width reveals (heads that do not divide d_model): an abstract init.
    models.check_build(model_config, task.max_length)
    return Prepared(config, task, train_config.batch_padding(config, sizes, task))


def main(config, workdir: str | None, report: Callable[[dict], str] | None = None) -> int:
    """Validates ``config``, runs it in ``workdir`` and prints ``report(results)``.

    Args:
      config: the full experiment config.
      workdir: run folder; None → :func:`default_workdir`.
      report: results → text to print (e.g. the ICL error table).

    Returns:
      The process exit status (one line on stderr for each but 0): 0 when the
      run finished (now or before); 2 on a bad config (nothing written) or
      when no checkpoint of the folder restores; 3 when training diverged;
      130 / 143 when SIGINT / SIGTERM stopped it (checkpointed: the same
      command resumes).
    """
    try:
        prepared = prepare(config)
    except ConfigError as e:
        return fail(e)
    from seqjax import train  # imported late: flags parse before JAX starts

    workdir = pathlib.Path(workdir) if workdir else default_workdir(config)
    if prepared.note:
        print(prepared.note, flush=True)
    try:
        results = train.run(prepared.config, str(workdir), task=prepared.task)
    except (ConfigError, train.CheckpointError) as e:
        return fail(e)
    except train.TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except train.TrainingInterrupted as e:
        print(e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint of this step
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    if report is not None:
        print(report(results))
    return 0


def check_workdir(workdir: str | None) -> None:
    """Raises ConfigError for a ``--workdir`` that cannot be a run folder (before anything runs).

    Args:
      workdir: the flag's value; None (the flag left out) is fine.

    Raises:
      ConfigError: an empty value, or a path that exists and is not a folder.
    """
    if workdir is None:
        return
    if not workdir.strip():
        raise ConfigError("--workdir is empty; give a folder, or leave the flag out for runs/<config.name>")
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--workdir={workdir} is a file, not a folder; give a folder")


def command(config_spec: str, overrides: Sequence[Override | str], workdir: str | None,
            report: Callable[[dict], str] | None = None, *, print_config: bool = False) -> int:
    """An entrypoint's work after flag parsing: load, override, validate, run.

    Args:
      config_spec: ``path/to/config.py[:arg]`` (``--config``).
      overrides: the ``--config.<field>=<value>`` arguments, in order.
      workdir: ``--workdir`` (None: :func:`default_workdir`; "" is an error).
      report: results → text to print.
      print_config: print the final config and exit without running.

    Returns:
      The exit status: 0, or 2 for a bad config (one ``error:`` line on stderr).
    """
    try:
        check_workdir(workdir)
        config = load_config(*split_spec(config_spec))
        apply_overrides(config, overrides)
    except ConfigError as e:
        return fail(e)
    if print_config:
        print(config)
        return 0
    return main(config, workdir, report)


def reproduce(table: str, scale: str, root: str, *, only=None, train: bool = True,
              repo: str | pathlib.Path = ".") -> int:
    """Runs the missing cells of ``configs/tables/<table>.py`` and writes the report.

    Args:
      table: a file of ``configs/tables/`` without ``.py`` ("icl", "icll", "lra", "mqar", "video", "forecast").
      scale: "cpu" or "paper".
      root: folder holding one run folder per cell (``<root>/<table>-<scale>/<cell>``).
      only: optional cell names to run (others are only reported if finished).
      train: False rebuilds the report without training.
      repo: the folder holding ``configs/`` (cells name their config files relative to it).

    Returns:
      Exit status: 0; 1 if a cell diverged (the others still run, and the
      report shows that cell as "diverged"); 2 on a bad cell config (every
      selected cell is checked before the first one trains).
    """
    from seqjax import train as trainer
    from seqjax.report import build_report
    from seqjax.report import diverged as report_diverged

    repo = pathlib.Path(repo)
    try:
        tab = load_module(repo / "configs" / "tables" / f"{table}.py").get_table(scale)
    except ConfigError as e:
        return fail(e)
    base = pathlib.Path(root) / f"{table}-{scale}"
    cells = [c for c in tab["cells"] if only is None or c.name in only]
    if only is not None and len(cells) != len(only):
        known = ", ".join(c.name for c in tab["cells"])
        print(f"error: --only names cells that are not in the table; cells: {known}", file=sys.stderr)
        return 2
    if tab.get("runner") == "rl":  # in-context RL cells train with PPO (seqjax.rl), not seqjax.train
        from seqjax.rl.command import reproduce_cells

        return reproduce_cells(tab, cells, base, train=train, repo=repo)
    # Every selected cell is validated before any trains: a bad cell fails in seconds, not hours in.
    prepared = {}
    order = [c.name for c in tab["cells"]]
    for cell in cells if train else []:
        if cell.init_from is not None and cell.init_from not in order[:order.index(cell.name)]:
            print(f"error: cell {cell.name}: init_from={cell.init_from!r} is not an earlier cell of the table",
                  file=sys.stderr)
            return 2
        try:
            prepared[cell.name] = prepare(load_config(repo / cell.config, cell.arg))
        except ConfigError as e:
            print(f"error: cell {cell.name}: {e}", file=sys.stderr)
            return 2
        if cell.init_from is not None:
            # Read when the cell starts (its source cell runs first): a missing source is one line then.
            prepared[cell.name].config.train.init_from = str(base / cell.init_from)
    diverged = []
    for i, cell in enumerate(cells if train else []):
        print(f"[{i + 1}/{len(cells)}] {cell.name}: {cell.config}:{cell.arg}", flush=True)
        run = prepared[cell.name]
        if run.note:
            print(run.note, flush=True)
        try:
            results = trainer.run(run.config, str(base / cell.name), task=run.task)
        except ConfigError as e:
            print(f"error: cell {cell.name}: {e}", file=sys.stderr)
            return 2
        except trainer.TrainingDiverged as e:
            # One diverged cell should not cost the others.
            print(f"error: cell {cell.name}: {e}", file=sys.stderr)
            diverged.append(cell.name)
            continue
        if report_diverged(results):  # a run that stopped itself (results.json: "status": "diverged")
            print(f"error: cell {cell.name}: training diverged (see {base / cell.name})", file=sys.stderr)
            diverged.append(cell.name)
    paths = build_report(tab, base)
    for path in paths:
        print(f"wrote {path}")
    if diverged:
        print(f"cells that diverged: {', '.join(diverged)}", file=sys.stderr)
        return 1
    return 0


__all__ = ["default_workdir", "fail", "Prepared", "prepare", "main", "check_workdir", "command", "reproduce",
           "load_config"]

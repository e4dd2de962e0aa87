"""What ``python -m experiments.icrl`` and the ``icrl`` table of ``experiments.reproduce`` do.

:func:`command` loads the config file, applies the ``--config.x=y``
overrides, checks every section (:func:`seqjax.rl.train.build`) before a folder
is made, trains with PPO and prints :func:`summary`; a bad config is one
``error:`` line and exit status 2, as the supervised entrypoints
(``seqjax.experiment``). :func:`reproduce_cells` runs a table's missing cells
the same way and rebuilds its report.
"""

import pathlib
import sys
from collections.abc import Sequence

from seqjax.config import apply_overrides, load_config, split_spec
from seqjax.errors import ConfigError


def _fail(error: Exception) -> int:
    text = str(error).strip().splitlines()
    print(f"error: {text[0] if text else type(error).__name__}", file=sys.stderr)
    return 2


def summary(results: dict) -> str:
    """The lines ``experiments.icrl`` prints: the run, its final mean return and the random policy's.

    Args:
      results: a run's ``results.json``.

    Returns:
      Two lines of text.
    """
    m = results["metrics"]
    name = results.get("config", {}).get("name", "icrl run")
    per = ", ".join(f"{x:.3f}" for x in m["final_return_per_episode"])
    return (f"{name}: {m['env_steps']:,} env steps, {results.get('wall_time_s', 0):.0f} s\n"
            f"final mean episode return {m['final_return']:.4f} (per episode of a unit: {per})   "
            f"random policy {m['random_return']:.4f}   ({m['eval_episodes']} evaluation episodes each)")


def command(config_spec: str, overrides: Sequence[str], workdir: str | None, report=summary, *,
            print_config: bool = False) -> int:
    """Loads, overrides, checks and runs one in-context RL config.

    Args:
      config_spec: ``path/to/config.py[:arg]``.
      overrides: ``--config.<field>=<value>`` arguments.
      workdir: the run folder (None: ``runs/<config.name>``).
      report: results → text to print.
      print_config: print the config and exit.

    Returns:
      The exit status: 0, or 2 for a bad config (nothing written).
    """
    from seqjax.rl import train

    try:
        if workdir is not None and not workdir.strip():
            raise ConfigError("--workdir is empty; give a folder, or leave the flag out for runs/<config.name>")
        config = load_config(*split_spec(config_spec))
        apply_overrides(config, overrides)
        if print_config:
            print(config)
            return 0
        train.build(config)
    except ConfigError as e:
        return _fail(e)
    results = train.run(config, pathlib.Path(workdir) if workdir else pathlib.Path("runs") / config.name)
    if report is not None:
        print(report(results))
    return 0


def reproduce_cells(table: dict, cells: list, base: pathlib.Path, *, train: bool, repo: pathlib.Path) -> int:
    """Runs ``cells`` of an in-context RL table (``runner = "rl"``) that are missing, then writes the report.

    Args:
      table: the spec from ``configs/tables/<name>.py``.
      cells: the cells to run.
      base: the table's folder of run folders.
      train: False only rebuilds the report.
      repo: the folder holding ``configs/``.

    Returns:
      0, or 2 for a bad cell config (every cell is checked before the first one trains).
    """
    from seqjax.report import build_report
    from seqjax.rl import train as rl_train

    configs = {}
    for cell in cells if train else []:
        try:
            configs[cell.name] = load_config(repo / cell.config, cell.arg)
            rl_train.build(configs[cell.name])
        except ConfigError as e:
            print(f"error: cell {cell.name}: {e}", file=sys.stderr)
            return 2
    for i, cell in enumerate(cells if train else []):
        print(f"[{i + 1}/{len(cells)}] {cell.name}: {cell.config}:{cell.arg}", flush=True)
        rl_train.run(configs[cell.name], base / cell.name)
    for path in build_report(table, base):
        print(f"wrote {path}")
    return 0


__all__ = ["summary", "command", "reproduce_cells"]

"""What an experiment entrypoint does, kept here so tests can reach it.

``experiments/*.py`` only parse flags; :func:`main` validates the config,
trains (or resumes, or finds the run finished), and prints the run's report.
Bad configs print one ``error:`` line and exit with status 2.
"""

import importlib
import importlib.util
import pathlib
import sys
from collections.abc import Callable

from seqjax.errors import ConfigError


def default_workdir(config) -> pathlib.Path:
    """``runs/<config.name>`` (``config.name`` is set by every config file)."""
    return pathlib.Path("runs") / config.get("name", "run")


def main(config, workdir: str | None, report: Callable[[dict], str] | None = None) -> int:
    """Runs ``config`` in ``workdir`` and prints ``report(results)``.

    Args:
      config: the full experiment config.
      workdir: run folder; None → :func:`default_workdir`.
      report: results → text to print (e.g. the ICL error table).

    Returns:
      The process exit status: 0 on success, 2 on a bad config.
    """
    from seqjax import train  # imported late: flags parse before JAX starts

    workdir = pathlib.Path(workdir) if workdir else default_workdir(config)
    try:
        results = train.run(config, str(workdir))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"workdir: {workdir}")
    if report is not None:
        print(report(results))
    return 0


def load_config(path: str, arg: str):
    """Calls ``get_config(arg)`` of the config file at ``path`` (as config_flags would).

    Config files import ``configs.common``; the folder holding ``configs/`` is
    put on ``sys.path`` so this works from any working directory.
    """
    for parent in pathlib.Path(path).resolve().parents:
        if (parent / "configs" / "__init__.py").is_file():
            if str(parent) not in sys.path:
                sys.path.insert(0, str(parent))
            break
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def reproduce(table: str, scale: str, root: str, *, only=None, train: bool = True) -> int:
    """Runs the missing cells of ``configs/tables/<table>.py`` and writes the report.

    Args:
      table: "icl" or "icll".
      scale: "cpu" or "paper".
      root: folder holding one run folder per cell (``<root>/<table>-<scale>/<cell>``).
      only: optional cell names to run (others are only reported if finished).
      train: False rebuilds the report without training.

    Returns:
      Exit status: 0; 1 if a cell diverged (the others still run); 2 on a bad
      cell config.
    """
    from seqjax import train as trainer
    from seqjax.report import build_report

    tab = importlib.import_module(f"configs.tables.{table}").get_table(scale)
    base = pathlib.Path(root) / f"{table}-{scale}"
    cells = [c for c in tab["cells"] if only is None or c.name in only]
    if only is not None and len(cells) != len(only):
        known = ", ".join(c.name for c in tab["cells"])
        print(f"error: --only names cells that are not in the table; cells: {known}", file=sys.stderr)
        return 2
    diverged = []
    for i, cell in enumerate(cells if train else []):
        print(f"[{i + 1}/{len(cells)}] {cell.name}: {cell.config}:{cell.arg}", flush=True)
        try:
            trainer.run(load_config(cell.config, cell.arg), str(base / cell.name))
        except ConfigError as e:
            print(f"error: cell {cell.name}: {e}", file=sys.stderr)
            return 2
        except trainer.TrainingDiverged as e:
            # One diverged cell should not cost the others; the report leaves it empty.
            print(f"error: cell {cell.name}: {e}", file=sys.stderr)
            diverged.append(cell.name)
    paths = build_report(tab, base)
    for path in paths:
        print(f"wrote {path}")
    if diverged:
        print(f"cells that diverged (not in the report): {', '.join(diverged)}", file=sys.stderr)
        return 1
    return 0

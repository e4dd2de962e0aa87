"""The command line every entrypoint shares: ``--config``, ``--config.x=y``, ``--workdir``.

``--config.<field>=<value>`` overrides are split off and applied by
:func:`seqjax.config.apply_overrides` (a misspelt field fails naming the
closest valid ones); absl parses the rest. Any bad flag or config prints one
``error:`` line and exits with status 2, before JAX starts or a folder is made.
"""

import pathlib
import sys
from collections.abc import Callable

from absl import flags

# The default configs live beside this package, so the defaults work from any directory.
REPO = pathlib.Path(__file__).resolve().parents[1]

USAGE = """usage: python -m {module} [--config=path/to/config.py[:arg]] [--config.<field>=<value> ...]
                              [--workdir=DIR] [--print_config]

  --config          config file and its argument (default: {default})
  --config.<field>  override one field, e.g. --config.train.steps=500 --config.task.dim=10
                    (lists: --config.task.baselines=least_squares,ridge; None: --config.x=None;
                    bools: --config.train.progress=false or --noconfig.train.progress)
  --workdir         run folder (default: runs/<config.name>); a finished run is reported, not rerun
  --print_config    print the config after the overrides (every settable field) and exit
"""


def main(argv: list[str], module: str, doc: str, default_config: str, report: Callable[[], Callable] | None,
         command: Callable[[], Callable] | None = None) -> None:
    """Parses ``argv``, then runs :func:`seqjax.experiment.command` and exits with its status.

    Args:
      argv: ``sys.argv``.
      module: the entrypoint's module name (for the usage text).
      doc: the entrypoint's docstring (printed by ``--help``).
      default_config: ``configs/...py:arg`` relative to the repository root.
      report: returns the results → text function (imported late: after parsing).
      command: returns the function that runs the parsed command (default
        ``seqjax.experiment.command``; ``seqjax.rl.command.command`` for RL).
    """
    from seqjax.config import split_overrides

    config = flags.DEFINE_string("config", str(REPO / default_config), "path/to/config.py[:arg]")
    workdir = flags.DEFINE_string("workdir", None, "run folder (default: runs/<config.name>)")
    print_config = flags.DEFINE_bool("print_config", False, "print the config after the overrides and exit")
    overrides, rest = split_overrides(argv[1:])
    if any(a in ("-h", "--help", "-help", "--helpshort", "--helpfull") for a in rest):
        print(USAGE.format(module=module, default=default_config) + "\n" + (doc or "").strip())
        sys.exit(0)
    try:
        flags.FLAGS(argv[:1] + rest)
    except flags.Error as e:
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    if command is None:
        from seqjax import experiment

        run = experiment.command
    else:
        run = command()
    sys.exit(run(config.value, overrides, workdir.value, report() if report else None,
                 print_config=print_config.value))

"""Reproduce a paper table: ``python -m experiments.reproduce --table icl --scale cpu``.

Runs the table's missing cells (finished ones are skipped, interrupted ones
resume), then writes ``<root>/<table>-<scale>/report.md`` and PNG plots built only
from the cells' ``results.json`` files. The tables are the files of
``configs/tables/``; a bad flag (an unknown table or scale) prints one
``error:`` line and exits with status 2.
"""

import pathlib
import sys

from absl import app, flags, logging

# configs/tables/ and the cells' config files are found beside this package, from any directory.
REPO = pathlib.Path(__file__).resolve().parents[1]

TABLES = sorted(p.stem for p in (REPO / "configs" / "tables").glob("*.py") if not p.stem.startswith("_"))

TABLE = flags.DEFINE_enum("table", None, TABLES, "which table (configs/tables/<table>.py)")
SCALE = flags.DEFINE_enum("scale", "cpu", ["cpu", "paper"], "scale of every cell")
ROOT = flags.DEFINE_string("root", "runs/tables", "folder of the cells' run folders")
ONLY = flags.DEFINE_list("only", None, "run only these cell names (the report still uses all finished cells)")
REPORT_ONLY = flags.DEFINE_bool("report_only", False, "train nothing; rebuild the report from finished cells")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad flag is one ``error:`` line and exit status 2 (as the other entrypoints)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    del argv
    # app.run logs INFO to stderr; orbax and tfds would print a line per checkpoint.
    logging.set_verbosity(logging.WARNING)
    from seqjax import experiment  # after the flags: a bad flag fails before JAX is imported

    return experiment.reproduce(TABLE.value, SCALE.value, ROOT.value, only=ONLY.value, train=not REPORT_ONLY.value,
                               repo=REPO)


if __name__ == "__main__":
    flags.mark_flag_as_required("table")
    sys.exit(app.run(main, flags_parser=parse_flags))

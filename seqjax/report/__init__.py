"""Read run folders and build tables and plots from their ``results.json`` files.

Nothing here trains or hard-codes a result: every number in a table comes
from a ``results.json`` that a run wrote, and paper numbers (where a paper
gives them) sit in their own, labelled rows.
"""

from seqjax.report.io import DIVERGED, diverged, find_results, load_results
from seqjax.report.tables import markdown_table



def build_report(table: dict, base) -> list:
    """Writes ``report.md`` and plots for a table from the finished (and diverged) cells under ``base``.

    A diverged cell is shown as "diverged" in the table and left out of the plots.

    Args:
      table: a spec from ``configs/tables/<name>.py`` (``kind``, ``title``, ``cells``, ``paper``).
      base: the table's folder of run folders.

    Returns:
      Paths written; empty when no cell has finished or diverged.
    """
    import importlib
    import pathlib

    base = pathlib.Path(base)
    results = load_results(base, with_diverged=True) if base.exists() else []
    if not results:
        return []
    return importlib.import_module(f"seqjax.report.{table['kind']}").build(table, base, results)


__all__ = ["build_report", "find_results", "load_results", "diverged", "DIVERGED", "markdown_table"]

"""What the per-table reports share: a table's cells matched with their runs, status rows, and ``report.md``.

Every report module of ``seqjax/report/`` (one per ``configs/tables/*.py``
kind) fills one row per cell of the table's ``grid`` from the cells'
``results.json`` files: a cell whose run folder has no results reads
:data:`MISSING`, one whose run diverged :data:`~seqjax.report.io.DIVERGED`,
and only a finished cell shows numbers (:func:`match_cells`,
:func:`status_row`). Each then writes ``report.md`` the same way — title,
what the columns mean, the table, the paper's note, the figures
(:func:`write_report`).
"""

import dataclasses
import pathlib
from collections.abc import Callable, Sequence

from seqjax.report.io import DIVERGED, diverged, save_png

MISSING = "missing"
"""The table entry of a cell that has no ``results.json``."""

FINISHED = "finished"
"""The status of a cell whose run finished (its numbers are shown)."""


def match_cells(grid: Sequence[dict], results: Sequence[dict]) -> list[tuple[dict, dict | None, str]]:
    """Each grid entry with its cell's result and status.

    Args:
      grid: the table's ``grid``: one dict per cell, ``cell`` the run folder's name.
      results: finished and diverged cells' results (``workdir``'s folder name is the cell name).

    Returns:
      ``(entry, result, status)`` per entry, in grid order: ``status`` is
      :data:`FINISHED`, :data:`~seqjax.report.io.DIVERGED` or :data:`MISSING`;
      ``result`` is None unless the cell finished.
    """
    by_name = {pathlib.Path(r["workdir"]).name: r for r in results if r.get("workdir")}
    out = []
    for entry in grid:
        r = by_name.get(entry["cell"])
        status = MISSING if r is None else DIVERGED if diverged(r) else FINISHED
        out.append((entry, r if status == FINISHED else None, status))
    return out


def status_row(head: Sequence, status: str, numbers: int, blanks: int = 1) -> list:
    """The markdown row of a cell without numbers: ``head``, its status in each number column, then blanks.

    Args:
      head: the row's identifying entries (model, task, ...).
      status: :data:`MISSING` or :data:`~seqjax.report.io.DIVERGED`.
      numbers: columns that would hold the cell's metrics.
      blanks: trailing columns left empty (seconds, steps).

    Returns:
      The row.
    """
    return list(head) + [status] * numbers + [None] * blanks


def seconds(value) -> str | None:
    """A wall time for a table: whole seconds, or None when unknown."""
    return None if value is None else f"{value:.0f}"


@dataclasses.dataclass(frozen=True)
class Figure:
    """One PNG of a report.

    Attributes:
      file: its file name in the table's folder.
      draw: returns the matplotlib figure (called with the file-only backend set).
      alt: the image's alt text in ``report.md``.
      caption: markdown lines written before the image (optional).
    """

    file: str
    draw: Callable
    alt: str
    caption: tuple[str, ...] = ()


def write_report(base: pathlib.Path, title: str, intro: str, body: Sequence[str], paper: str | None,
                 figures: Sequence[Figure] = ()) -> list[pathlib.Path]:
    """Writes ``base/report.md`` (and each figure's PNG) and returns the paths written.

    Args:
      base: the table's run folder.
      title: the table's title (the first heading).
      intro: the paragraph that says what the columns mean.
      body: markdown lines after it (the tables).
      paper: the paper's note (written after the tables), or None.
      figures: PNGs to draw and link, in order (pass only those with something to draw).

    Returns:
      ``[report.md, *PNGs]``.
    """
    parts = [f"# {title}", "", intro, "", *body]
    if paper:
        parts += [paper, ""]
    written = []
    for fig in figures:
        written.append(save_png(fig.draw, pathlib.Path(base) / fig.file))
        parts += [*fig.caption, *([""] if fig.caption else []), f"![{fig.alt}]({fig.file})", ""]
    md = pathlib.Path(base) / "report.md"
    md.write_text("\n".join(parts))
    return [md] + written


__all__ = ["MISSING", "FINISHED", "Figure", "match_cells", "status_row", "seconds", "write_report"]

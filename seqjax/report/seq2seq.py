"""Report of the seq2seq table (``configs/tables/seq2seq.py``): accuracies per cell and greedy accuracy per position.

One row per cell: the task, the layout (encoder–decoder or decoder-only), the
decoder's mixer, the held-out greedy (free-running) token accuracy, the exact
match rate, the teacher-forced token accuracy and the wall time, all from the
cell's ``results.json`` (``seqjax.tasks.seq2seq`` writes them). A cell without
results reads "missing"; one that diverged reads "diverged". The figure is the
greedy accuracy at each target index (``greedy_accuracy_per_position``), one
line per finished cell: where free-running decoding loses its way.
"""

import pathlib

from seqjax.report.cells import FINISHED, MISSING, Figure, match_cells, seconds, status_row, write_report
from seqjax.report.tables import markdown_table

METRICS = ["greedy_token_accuracy", "exact_match", "token_accuracy"]
"""The task's metrics that the table shows, in column order."""

HEADER = ["task", "layout", "decoder", "greedy token acc.", "exact match", "teacher-forced acc.", "seconds"]
LAYOUT_NAMES = {"encoder_decoder": "encoder–decoder", "decoder_only": "decoder-only"}


def cells(table: dict, results: list[dict]) -> list[dict]:
    """One row per cell of the table, filled from ``results``.

    Args:
      table: the spec from ``configs/tables/seq2seq.py`` (``grid``).
      results: finished and diverged cells' results (``workdir``'s folder name is the cell name).

    Returns:
      Dicts ``cell, kind, layout, decoder, status, seconds, per_position`` and one key per name of
      :data:`METRICS`; ``status`` is "finished", "diverged" or "missing", the numbers None unless finished.
    """
    rows = []
    for g, r, status in match_cells(table["grid"], results):
        row = {**g, "status": status, "seconds": None, "per_position": None, **{k: None for k in METRICS}}
        if status == FINISHED:
            m = r["metrics"]
            row.update({k: float(m[k]) if k in m else None for k in METRICS})
            row["per_position"] = m.get("greedy_accuracy_per_position")
            row["seconds"] = r.get("wall_time_s")
        rows.append(row)
    return rows


def table_rows(rows: list[dict]) -> list[list]:
    """The markdown rows of :func:`cells`: a finished cell's numbers, its status on every column otherwise."""
    out = []
    for r in rows:
        head = [r["kind"], LAYOUT_NAMES[r["layout"]], r["decoder"]]
        if r["status"] != FINISHED:
            out.append(status_row(head, r["status"], len(METRICS)))
            continue
        out.append(head + [r[k] for k in METRICS] + [seconds(r["seconds"])])
    return out


def build(table: dict, base: pathlib.Path, results: list[dict]) -> list[pathlib.Path]:
    """The seq2seq report: every cell's accuracies, and the per-position figure.

    Args:
      table: the spec from ``configs/tables/seq2seq.py``.
      base: the table's run folder.
      results: finished and diverged cells' results.

    Returns:
      Paths written (``report.md``, and ``seq2seq-positions.png`` when a cell finished with per-position accuracy).
    """
    rows = cells(table, results)
    intro = ("Built from results.json files under this folder: 512 held-out strings of 1–8 symbols. Greedy token "
             "accuracy and exact match: free-running decoding (each argmax fed back), at every target position up "
             "to and including EOS; teacher-forced: the true prefix fed. Encoder–decoder: 2 + 2 layers (encoder "
             "mha); decoder-only: 4 layers of the decoder's mixer reading source, BOS and target as one sequence. "
             "Seconds: the run's wall time. A cell without results reads \"missing\".")
    figures = [Figure("seq2seq-positions.png", lambda: figure(rows), "greedy accuracy per target position")]
    return write_report(base, table["title"], intro, [markdown_table(HEADER, table_rows(rows), digits=4), ""],
                        table.get("paper"), figures if any(r["per_position"] for r in rows) else [])


def figure(rows: list[dict]):
    """Greedy accuracy against the target index, one line per finished cell.

    Args:
      rows: the output of :func:`cells`.

    Returns:
      The matplotlib figure (the caller saves or shows it).
    """
    import matplotlib.pyplot as plt  # the caller's backend: a notebook shows it inline

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r["status"] != "finished" or not r["per_position"]:
            continue
        points = [(i, a) for i, a in enumerate(r["per_position"]) if a is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                label=f"{r['kind']}, {LAYOUT_NAMES[r['layout']]}, {r['decoder']}")
    ax.set(xlabel="target position", ylabel="greedy token accuracy", title="Free-running accuracy per position")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["MISSING", "METRICS", "HEADER", "cells", "table_rows", "build", "figure"]

"""Report of the forecast table (``configs/tables/forecast.py``): test errors per cell and forecast figures.

One row per cell: dataset, horizon, model, the standardised test ``mse`` /
``mae`` of the model and of the baselines on the same windows
(``baseline_*``: repeat the last history value; ``linear_*``: the
least-squares linear map from the history), and the run's wall time, all from
the cell's ``results.json`` (``seqjax.tasks.forecast`` writes these metrics).
A cell without results reads "missing"; one that diverged reads "diverged".
The figure (:func:`figure`) draws, per dataset, the kept example windows:
history, truth and every model's forecast of the target column.
"""

import pathlib

from seqjax.report.cells import FINISHED, MISSING, Figure, match_cells, seconds, status_row, write_report
from seqjax.report.io import save_png
from seqjax.report.tables import markdown_table

METRICS = ["mse", "mae", "baseline_mse", "baseline_mae", "linear_mse", "linear_mae"]
"""The task's metrics that the table shows, in column order."""

HEADER = ["dataset", "horizon", "model", "mse", "mae", "repeat-last mse", "repeat-last mae", "linear mse",
          "linear mae", "seconds"]


def cells(table: dict, results: list[dict]) -> list[dict]:
    """One row per cell of the table, filled from ``results``.

    Args:
      table: the spec from ``configs/tables/forecast.py`` (``grid``).
      results: finished and diverged cells' results (``workdir``'s folder name is the cell name).

    Returns:
      Dicts ``cell, dataset, pred_len, model, status, seconds, examples`` and one
      key per name of :data:`METRICS`; ``status`` is "finished", "diverged" or
      "missing", and the numbers are None unless finished.
    """
    rows = []
    for g, r, status in match_cells(table["grid"], results):
        row = {**g, "status": status, "seconds": None, "examples": None, **{k: None for k in METRICS}}
        if status == FINISHED:
            m = r["metrics"]
            row.update({k: float(m[k]) if m.get(k) is not None else None for k in METRICS})
            row["seconds"], row["examples"] = r.get("wall_time_s"), m.get("examples")
        rows.append(row)
    return rows


def table_rows(rows: list[dict]) -> list[list]:
    """The markdown rows of :func:`cells`: the numbers of a finished cell, its status on every column otherwise."""
    out = []
    for r in rows:
        head = [r["dataset"], r["pred_len"], r["model"]]
        if r["status"] != FINISHED:
            out.append(status_row(head, r["status"], len(METRICS)))
            continue
        out.append(head + [r[k] for k in METRICS] + [seconds(r["seconds"])])
    return out


def build(table: dict, base: pathlib.Path, results: list[dict]) -> list[pathlib.Path]:
    """The forecast report: every cell's errors beside the baselines, and the forecast figure.

    Args:
      table: the spec from ``configs/tables/forecast.py``.
      base: the table's run folder.
      results: finished and diverged cells' results.

    Returns:
      Paths written (``report.md``, and ``forecast-examples.png`` when a cell finished with examples).
    """
    rows = cells(table, results)
    intro = ("Built from results.json files under this folder: MSE / MAE (↓) over every value (window × horizon "
             "step × channel) of the test windows, on the standardised scale (train-segment mean and std, as the "
             "paper reports). Baselines of the same windows: repeat-last (the last history value held over the "
             "horizon) and linear (a least-squares map from the history to the horizon, fit on the training "
             "windows). Seconds: the run's wall time. A cell without results reads \"missing\".")
    figures = [Figure("forecast-examples.png", lambda: figure(rows), "forecasts vs truth")]
    return write_report(base, table["title"], intro, [markdown_table(HEADER, table_rows(rows), digits=4), ""],
                        table.get("paper"), figures if any(r["examples"] for r in rows) else [])


def plot(rows: list[dict], path) -> pathlib.Path:
    """Writes :func:`figure` to the PNG ``path`` and returns ``path``."""
    return save_png(lambda: figure(rows), path)


def figure(rows: list[dict], windows: int = 2):
    """History, truth and each model's forecast for the first ``windows`` kept windows of every dataset.

    Args:
      rows: the output of :func:`cells`.
      windows: example windows per dataset (columns of the grid).

    Returns:
      The matplotlib figure (the caller saves or shows it).
    """
    import matplotlib.pyplot as plt  # the caller's backend: a notebook shows it inline

    groups = {}
    for r in rows:
        if r["status"] == "finished" and r["examples"]:
            groups.setdefault((r["dataset"], r["pred_len"]), []).append(r)
    fig, axes = plt.subplots(max(len(groups), 1), windows, figsize=(5 * windows, 3 * max(len(groups), 1)),
                             squeeze=False)
    for row_axes, ((dataset, horizon), group) in zip(axes, groups.items()):
        ex0 = group[0]["examples"]
        for j, ax in enumerate(row_axes[:len(ex0["history"])]):
            hist, truth = ex0["history"][j], ex0["truth"][j]
            t_h = range(-len(hist), 0)
            t_f = range(0, len(truth))
            ax.plot(t_h, hist, color="black", lw=1, label="history")
            ax.plot(t_f, truth, color="black", lw=1, ls="--", label="truth")
            for r in group:
                ax.plot(t_f, r["examples"]["forecast"][j], lw=1.2, label=r["model"])
            ax.set(title=f"{dataset}, horizon {horizon}, window at step {ex0['starts'][j]}", xlabel="step",
                   ylabel="standardised value")
            ax.axvline(0, color="gray", lw=0.5)
        row_axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["MISSING", "METRICS", "HEADER", "cells", "table_rows", "build", "plot", "figure"]

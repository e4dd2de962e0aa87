"""Report of the csp table (``configs/tables/csp.py``): MSE per model beside the baselines, and a bar figure.

One row per cell of the table: ``mse`` on standardised targets of the held-out
sequences (the HiSS paper's metric), the per-target MSEs, the train-mean and
linear-readout baselines on the same targets (``baseline_mean_mse``,
``baseline_linear_mse``), the ratio ``mse / baseline_mean_mse`` and the run's
wall time, all from the cell's ``results.json`` (``seqjax.tasks.csp`` writes
these metrics). A cell without results reads "missing"; one that diverged
reads "diverged". Two figures: one bar per finished model with the two
baselines as dashed levels (:func:`figure`), and the predicted vs true
targets of the first held-out sequence (``trace_predicted``,
``trace_target``, which the task writes) as traces over the target index and,
summed, as a path (:func:`trace_figure`).
"""

import pathlib

from seqjax.report.cells import FINISHED, MISSING, Figure, match_cells, seconds, status_row, write_report
from seqjax.report.io import save_png
from seqjax.report.tables import markdown_table


METRICS = ["mse", "baseline_mean_mse", "baseline_linear_mse"]
"""The task's scalar metrics that the table shows, in column order."""

HEADER = ["model", "mse", "per target", "mse / train-mean", "train-mean mse", "linear-readout mse", "steps",
          "seconds"]


def cells(table: dict, results: list[dict]) -> list[dict]:
    """One row per cell of the table, filled from ``results``.

    Args:
      table: the spec from ``configs/tables/csp.py`` (``grid``).
      results: finished and diverged cells' results (``workdir``'s folder name is the cell name).

    Returns:
      Dicts ``cell, model, status, seconds, steps, per_target, ratio`` and one
      key per name of :data:`METRICS`; ``status`` is "finished", "diverged" or
      "missing", and the numbers are None unless finished.
    """
    rows = []
    for g, r, status in match_cells(table["grid"], results):
        row = {"cell": g["cell"], "model": g["model"], "status": status, "seconds": None, "steps": None,
               "per_target": None, "ratio": None, "trace_target": None, "trace_predicted": None,
               **{k: None for k in METRICS}}
        if status == FINISHED:
            m = r["metrics"]
            row.update({k: float(m[k]) if k in m else None for k in METRICS})
            row["per_target"] = [float(x) for x in m.get("mse_per_target") or []] or None
            if row["mse"] is not None and row["baseline_mean_mse"]:
                row["ratio"] = row["mse"] / row["baseline_mean_mse"]
            row["trace_target"], row["trace_predicted"] = m.get("trace_target"), m.get("trace_predicted")
            row["seconds"] = r.get("wall_time_s")
            row["steps"] = r.get("train", {}).get("steps")
        rows.append(row)
    return rows


def table_rows(rows: list[dict]) -> list[list]:
    """The markdown rows of :func:`cells`: the numbers of a finished cell, its status on every column otherwise."""
    out = []
    for r in rows:
        if r["status"] != FINISHED:
            out.append(status_row([r["model"]], r["status"], 5, blanks=2))
            continue
        per = ", ".join(f"{x:.4f}" for x in r["per_target"] or [])
        out.append([r["model"], r["mse"], per, r["ratio"], r["baseline_mean_mse"], r["baseline_linear_mse"],
                    r["steps"], seconds(r["seconds"])])
    return out


def build(table: dict, base: pathlib.Path, results: list[dict]) -> list[pathlib.Path]:
    """The csp report: the MSE of every cell beside the baselines, and the bar figure.

    Args:
      table: the spec from ``configs/tables/csp.py``.
      base: the table's run folder.
      results: finished and diverged cells' results.

    Returns:
      Paths written (``report.md``, and ``csp-mse.png`` when a cell finished).
    """
    rows = cells(table, results)
    intro = ("Built from results.json files under this folder: MSE (↓) on standardised targets over every target "
             "of the held-out sequences (the HiSS paper's metric); per target in the task's order. Baselines on "
             "the same targets: train-mean (predict the training mean: 0 after standardising) and "
             "linear-readout (least squares on the chunk's own sensor samples, fitted on training sequences). "
             "Seconds: the run's wall time. A cell without results reads \"missing\".")
    figures = []
    if any(r["status"] == FINISHED for r in rows):
        figures.append(Figure("csp-mse.png", lambda: figure(rows), "MSE per model"))
    if any(r["trace_target"] for r in rows):
        figures.append(Figure("csp-traces.png", lambda: trace_figure(rows), "predicted vs true targets",
                              ("Predicted vs true targets of the first held-out sequence (left: per target index; "
                               "right: summed, the path):",)))
    return write_report(base, table["title"], intro, [markdown_table(HEADER, table_rows(rows), digits=4), ""],
                        table.get("paper"), figures)


def plot(rows: list[dict], path) -> pathlib.Path:
    """Writes :func:`figure` to the PNG ``path`` and returns ``path``."""
    return save_png(lambda: figure(rows), path)


def figure(rows: list[dict]):
    """One bar per finished model (MSE on standardised targets), with the baselines as dashed levels.

    Args:
      rows: the output of :func:`cells`.

    Returns:
      The matplotlib figure (the caller saves or shows it).
    """
    import matplotlib.pyplot as plt  # the caller's backend: a notebook shows it inline

    done = [r for r in rows if r["status"] == "finished"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([r["model"] for r in done], [r["mse"] for r in done], color="tab:blue")
    if done:
        # The cells share the eval set (eval_seed), so one level per baseline stands for all.
        for key, label, color in (("baseline_mean_mse", "train mean", "gray"),
                                  ("baseline_linear_mse", "linear readout", "tab:orange")):
            if done[0][key] is not None:
                ax.axhline(done[0][key], linestyle="--", color=color, label=label)
        ax.legend(fontsize=8)
    ax.set(ylabel="MSE (standardised targets)", title="CSP: held-out MSE per model", ylim=(0, None))
    fig.tight_layout()
    return fig


def trace_figure(rows: list[dict]):
    """The first held-out sequence's targets, true and predicted per finished model.

    Left: the first target dimension against the target index; right: the
    running sums of the first two dimensions (for the IMU task: the path in
    the plane). The cells share the eval set (``eval_seed``), so the true
    trace of the first finished cell stands for all.

    Args:
      rows: the output of :func:`cells`.

    Returns:
      The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    done = [r for r in rows if r["status"] == "finished" and r["trace_target"]]
    fig, (ax, path) = plt.subplots(1, 2, figsize=(10, 4))
    if done:
        true = np.asarray(done[0]["trace_target"])
        ax.plot(true[:, 0], color="black", linewidth=2, label="true")
        if true.shape[1] > 1:
            walk = np.cumsum(true, axis=0)
            path.plot(walk[:, 0], walk[:, 1], color="black", linewidth=2, label="true")
        for r in done:
            pred = np.asarray(r["trace_predicted"])
            ax.plot(pred[:, 0], label=r["model"])
            if pred.shape[1] > 1:
                walk = np.cumsum(pred, axis=0)
                path.plot(walk[:, 0], walk[:, 1], label=r["model"])
        ax.legend(fontsize=8)
    ax.set(xlabel="target index", ylabel="target 0 (data units)", title="first held-out sequence")
    path.set(xlabel="Σ target 0", ylabel="Σ target 1", title="summed targets (the path)")
    path.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    return fig


__all__ = ["HEADER", "METRICS", "MISSING", "build", "cells", "figure", "plot", "table_rows", "trace_figure"]

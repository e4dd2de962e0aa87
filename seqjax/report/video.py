"""Report of the video table (``configs/tables/video.py``): next-frame error per model and the rollout figure.

One row per cell of the table: the teacher-forced ``mse`` / ``mae`` and the
rollout ``rollout_mse`` / ``rollout_mae`` on the held-out videos, the
copy-last-frame baselines of the same frames (``baseline_mse``,
``baseline_mae``, ``baseline_rollout_mse``: the last context frame repeated),
and the run's wall time, all from the cell's ``results.json``
(``seqjax.tasks.video`` writes these metrics). A cell without results reads
"missing"; one that diverged reads "diverged". The figure is the per-frame
rollout MSE (``rollout_mse_per_frame``) against the frame index, one line per
model, with the repeat-last-context-frame baseline as a dashed level (the task
writes that baseline's mean over the scored frames, not per frame).
"""

import pathlib

from seqjax.report.cells import FINISHED, MISSING, Figure, match_cells, seconds, status_row, write_report
from seqjax.report.io import save_png
from seqjax.report.tables import markdown_table

METRICS = ["mse", "mae", "rollout_mse", "rollout_mae", "baseline_mse", "baseline_mae", "baseline_rollout_mse"]
"""The task's metrics that the table shows, in column order."""

HEADER = ["model", "mse", "mae", "rollout mse", "rollout mae", "copy-last mse", "copy-last mae",
          "repeat-context mse", "seconds"]


def cells(table: dict, results: list[dict]) -> list[dict]:
    """One row per cell of the table, filled from ``results``.

    Args:
      table: the spec from ``configs/tables/video.py`` (``grid``).
      results: finished and diverged cells' results (``workdir``'s folder name is the cell name).

    Returns:
      Dicts ``cell, model, status, seconds, per_frame, context_frames`` and one
      key per name of :data:`METRICS`; ``status`` is "finished", "diverged" or
      "missing", and the numbers are None unless finished.
    """
    rows = []
    for g, r, status in match_cells(table["grid"], results):
        row = {"cell": g["cell"], "model": g["model"], "status": status, "seconds": None, "per_frame": None,
               "context_frames": None, **{k: None for k in METRICS}}
        if status == FINISHED:
            m = r["metrics"]
            row.update({k: float(m[k]) if k in m else None for k in METRICS})
            row["per_frame"] = [float(x) for x in m.get("rollout_mse_per_frame") or []] or None
            row["seconds"] = r.get("wall_time_s")
            row["context_frames"] = r.get("config", {}).get("task", {}).get("context_frames")
        rows.append(row)
    return rows


def table_rows(rows: list[dict]) -> list[list]:
    """The markdown rows of :func:`cells`: the numbers of a finished cell, its status on every column otherwise."""
    out = []
    for r in rows:
        if r["status"] != FINISHED:
            out.append(status_row([r["model"]], r["status"], len(METRICS)))
            continue
        out.append([r["model"]] + [r[k] for k in METRICS] + [seconds(r["seconds"])])
    return out


def build(table: dict, base: pathlib.Path, results: list[dict]) -> list[pathlib.Path]:
    """The video report: the error of every cell beside the copy baselines, and the rollout figure.

    Args:
      table: the spec from ``configs/tables/video.py``.
      base: the table's run folder.
      results: finished and diverged cells' results.

    Returns:
      Paths written (``report.md``, and ``video-rollout.png`` when a cell finished with per-frame errors).
    """
    rows = cells(table, results)
    intro = ("Built from results.json files under this folder: per-pixel error (↓) on the held-out videos over "
             "the frames after the true context. mse / mae: teacher-forced (every input frame true); rollout: "
             "the model's own predictions fed back after the context. Baselines of the same frames: copy-last "
             "(frame t+1 predicted as the true frame t; compare with mse / mae) and repeat-context (the last "
             "context frame repeated; compare with rollout mse). Seconds: the run's wall time. A cell without "
             "results reads \"missing\".")
    figures = [Figure("video-rollout.png", lambda: figure(rows), "rollout MSE per frame")]
    return write_report(base, table["title"], intro, [markdown_table(HEADER, table_rows(rows), digits=4), ""],
                        table.get("paper"), figures if any(r["per_frame"] for r in rows) else [])


def plot(rows: list[dict], path) -> pathlib.Path:
    """Writes :func:`figure` to the PNG ``path`` and returns ``path``."""
    return save_png(lambda: figure(rows), path)


def figure(rows: list[dict]):
    """Rollout MSE per predicted frame against the frame index, one line per finished model, and the baseline.

    Args:
      rows: the output of :func:`cells`.

    Returns:
      The matplotlib figure (the caller saves or shows it).
    """
    import matplotlib.pyplot as plt  # the caller's backend: a notebook shows it inline

    fig, ax = plt.subplots(figsize=(6, 4))
    baselines = []
    for r in rows:
        if r["status"] != "finished" or not r["per_frame"]:
            continue
        # Frame index of the first scored frame: the context length (frames 0 … context-1 are given).
        first = r["context_frames"] or 0
        frames = list(range(first, first + len(r["per_frame"])))
        ax.plot(frames, r["per_frame"], marker="o", label=r["model"])
        if r["baseline_rollout_mse"] is not None:
            baselines.append((frames, r["baseline_rollout_mse"]))
    if baselines:
        # The cells share the eval videos (eval_seed), so one baseline level stands for all.
        frames, level = baselines[0]
        ax.plot([frames[0], frames[-1]], [level, level], linestyle="--", color="gray",
                label="repeat last context frame (mean)")
    ax.set(xlabel="frame index", ylabel="rollout MSE per pixel", title="Moving Digits: rollout error per frame",
           ylim=(0, None))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["MISSING", "METRICS", "HEADER", "cells", "table_rows", "build", "plot", "figure"]

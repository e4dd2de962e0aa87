"""Finding and loading the ``results.json`` files that runs write, and writing figures.

A run that diverged writes a ``results.json`` with ``"status": "diverged"``
(and no usable metrics); ``load_results(..., with_diverged=True)`` keeps those
beside the finished runs and :func:`diverged` tells them apart, so the tables show such a cell as
"diverged" instead of leaving it out or printing a number.
"""

import json
import pathlib


def save_png(make_figure, path) -> pathlib.Path:
    """Draws ``make_figure()`` with matplotlib's file-only backend and writes it as a PNG.

    Args:
      make_figure: a function of no arguments returning a matplotlib figure
        (it is called after the backend is set, so it may import pyplot).
      path: the PNG file.

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig = make_figure()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return pathlib.Path(path)


def find_results(root) -> list[pathlib.Path]:
    """Every ``results.json`` under ``root`` (recursive), sorted by path.

    Args:
      root: a run folder or a folder of run folders.

    Returns:
      The paths; empty when there are none.
    """
    root = pathlib.Path(root)
    if (root / "results.json").is_file():
        return [root / "results.json"]
    return sorted(root.rglob("results.json"))


DIVERGED = "diverged"
"""The table entry of a cell whose run diverged."""


def diverged(result: dict) -> bool:
    """Whether ``result`` is that of a run that diverged (``"status": "diverged"``)."""
    return result.get("status") == DIVERGED


def load_results(root, *, finished_only: bool = True, with_diverged: bool = False) -> list[dict]:
    """Loads every ``results.json`` under ``root``.

    Args:
      root: a run folder or a folder of run folders.
      finished_only: skip runs whose results do not say ``"finished": true``.
      with_diverged: keep the runs that diverged too (``"status": "diverged"``,
        no usable metrics; the report builders show them as such).

    Returns:
      The parsed dicts, each with ``"workdir"`` (its folder) added.
    """
    out = []
    for path in find_results(root):
        result = json.loads(path.read_text())
        if finished_only and not (result.get("finished", False) or (with_diverged and diverged(result))):
            continue
        result["workdir"] = str(path.parent)
        out.append(result)
    return out


def train_curve(workdir: str | None, key: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` of ``key`` in the training records of ``workdir/metrics.jsonl`` ([] if absent).

    Args:
      workdir: a run folder, or None.
      key: a training metric (``"loss"``, ``"acc"``).

    Returns:
      The points in file order.
    """
    path = pathlib.Path(workdir) / "metrics.jsonl" if workdir else None
    if path is None or not path.exists():
        return []
    records = (json.loads(line) for line in path.read_text().splitlines())
    return [(rec["step"], rec[key]) for rec in records if rec.get("split") == "train" and key in rec]

"""LRA reports: test accuracy per task and model, with the papers' rows beside ours.

Reads the ``metrics`` that ``seqjax.tasks.lra.LRATask.evaluate`` wrote into
``results.json`` (per split: ``accuracy``, ``ce``, ``label_counts``,
``majority``; ``accuracy`` = the last eval split's; for a pretraining
objective ``ce`` and token ``acc``) and the training curve from each run's
``metrics.jsonl``. A cell is ``<task>-<model>`` (from scratch),
``<task>-<model>+pretrain`` (self-pretraining: a denoising run on the task's
inputs) or ``<task>-<model>+spt`` (the classifier fine-tuned from it, at the
same total steps as from scratch); every cell of the table has an entry, a
cell without results reads "missing".
"""

import pathlib

from seqjax.report.cells import FINISHED, MISSING, Figure, match_cells, seconds, write_report
from seqjax.report.io import train_curve
from seqjax.report.tables import markdown_table

SUFFIXES = {"+pretrain": "pretrain", "+spt": "spt"}


def split_cell(name: str) -> tuple[str, str, str]:
    """``"<task>-<model>[+pretrain|+spt]"`` → ``(task, model, stage)``; stage ``scratch``, ``pretrain`` or ``spt``."""
    task, model = name.split("-", 1)
    for suffix, stage in SUFFIXES.items():
        if model.endswith(suffix):
            return task, model.removesuffix(suffix), stage
    return task, model, "scratch"


def grid(table: dict) -> list[dict]:
    """One entry per cell of the table: ``cell``, ``task``, ``model``, ``stage``."""
    out = []
    for cell in table["cells"]:
        task, model, stage = split_cell(cell.name)
        out.append({"cell": cell.name, "task": task, "model": model, "stage": stage})
    return out


def run_summary(results: dict) -> str:
    """What ``python -m experiments.lra`` prints: accuracy per split beside the majority class (or token metrics)."""
    m = results["metrics"]
    cfg = results.get("config", {})
    lines = [f"{cfg.get('name', 'lra run')} (mixers: {cfg.get('model', {}).get('mixers', '?')}, "
             f"{results['train']['steps']} steps, {results.get('wall_time_s', 0):.0f} s)"]
    for split, s in m.items():
        if isinstance(s, dict) and "accuracy" in s:
            lines.append(f"{split:>10}: accuracy {s['accuracy']:.4f}   majority class {s['majority']:.4f}   "
                         f"cross-entropy {s['ce']:.4f}   ({s['num_examples']} examples)")
        elif isinstance(s, dict) and "acc" in s:
            lines.append(f"{split:>10}: token accuracy {s['acc']:.4f}   cross-entropy {s['ce']:.4f}   "
                         f"({s['num_tokens']} scored tokens of {s['num_examples']} examples)")
    return "\n".join(lines)


def _pct(v) -> str | None:
    return None if v is None else f"{100 * v:.2f}"


def _last_split(r: dict) -> str:
    # The split that ``accuracy`` reports: the config's last eval split (results.json sorts keys).
    return (r["config"]["task"].get("eval_splits") or ["test"])[-1]


def build(table: dict, base: pathlib.Path, results: list[dict]) -> list[pathlib.Path]:
    """Markdown tables (models × tasks, test accuracy %; SPT against scratch; cells) and training curves.

    Args:
      table: the spec from ``configs/tables/lra.py`` (``cells``, ``columns``, ``paper`` rows).
      base: the table's run folder.
      results: finished and diverged cells' results (a diverged one reads "diverged").

    Returns:
      Paths written.
    """
    columns = table["columns"]
    matched = match_cells(grid(table), results)
    entry = entries(matched)

    def accuracy(task, model, stage):
        r, status = entry.get((task, model, stage), (None, None))
        if status is None:
            return None  # not a cell at this scale
        return _pct(r["metrics"]["accuracy"]) if status == FINISHED else status

    rows, seen = [], []
    for e, _, _ in matched:
        key = (e["model"], e["stage"])
        if e["stage"] != "pretrain" and key not in seen:
            seen.append(key)
    for model, stage in seen:
        label = f"{model} +SPT (ours)" if stage == "spt" else f"{model} (ours)"
        rows.append([label] + [accuracy(t, model, stage) for t in columns])
    majority = majority_class(entry)
    rows.append(["majority class (ours, test split)"] + [_pct(majority.get(t)) for t in columns])
    for name, values in (table.get("paper") or {}).items():
        # None: the paper reports a failure (chance); a string (e.g. "n/r", not reported) is shown as is.
        rows.append([name] + ["fail" if v is None else v if isinstance(v, str) else f"{v:.2f}" for v in values])
    body = [markdown_table(["model"] + columns, rows), ""]
    body += _spt_section(entry)
    body += _cells_section(matched)
    curves = train_curves(matched)
    figures = []
    if any(curves.values()):
        figures.append(Figure("lra-train-accuracy.png", lambda: figure(curves, majority), "training accuracy"))
    intro = ("Ours: test accuracy from the cells' results.json files (scale in the folder name); a cell without "
             "results reads \"missing\".")
    if table.get("paper"):
        intro += (" Paper rows are the papers' reported numbers (REFERENCES.md), not runs of ours. At CPU scale the "
                  "tasks are smaller variants and the models small (configs/lra/_base.py): not comparable with the "
                  "paper rows.")
    return write_report(base, table["title"], intro, body, table.get("paper_note"), figures)


def entries(matched: list) -> dict:
    """``match_cells``' output keyed by ``(task, model, stage)`` → ``(result or None, status)``."""
    return {(e["task"], e["model"], e["stage"]): (r, status) for e, r, status in matched}


def majority_class(entry: dict) -> dict:
    """Per task, the majority-class accuracy of the reported split (from any finished classifier cell)."""
    out = {}
    for (task, _, stage), (r, status) in entry.items():
        if status == FINISHED and stage != "pretrain" and isinstance(r["metrics"].get(_last_split(r)), dict):
            out[task] = r["metrics"][_last_split(r)]["majority"]
    return out


def spt_rows(entry: dict) -> list[list]:
    """Per +SPT cell: task, model, scratch and +SPT test accuracy (%), gap (points), pretraining token accuracy."""
    rows = []
    for (task, model, stage), (r, status) in entry.items():
        if stage != "spt":
            continue
        scratch, s_status = entry.get((task, model, "scratch"), (None, MISSING))
        pre, p_status = entry.get((task, model, "pretrain"), (None, MISSING))
        a = scratch["metrics"]["accuracy"] if s_status == FINISHED else None
        b = r["metrics"]["accuracy"] if status == FINISHED else None
        gap = None if a is None or b is None else f"{100 * (b - a):+.2f}"
        token = None
        if p_status == FINISHED:
            token = _pct(pre["metrics"][_last_split(pre)]["acc"])
        rows.append([task, model, _pct(a) if a is not None else s_status, _pct(b) if b is not None else status,
                     gap, token if p_status == FINISHED else p_status])
    return rows


def _spt_section(entry: dict) -> list[str]:
    """Self-pretrained against from-scratch, per task and model, at the same total steps."""
    rows = spt_rows(entry)
    if not rows:
        return []
    return ["## Self-pretraining (+SPT) against training from scratch", "",
            "+SPT: masked denoising on the task's own inputs for half the steps, then the classifier for the other "
            "half from those parameters (the head fresh) — the same total steps as from scratch (Amos et al. 2023). "
            "Gap = +SPT − scratch, test accuracy points; token accuracy = the pretraining run's masked-token "
            "accuracy on the test split.", "",
            markdown_table(["task", "model", "scratch", "+SPT", "gap", "pretrain token acc."], rows), ""]


def cell_rows(matched: list) -> list[list]:
    """One row per cell: name, status, steps × batch, wall seconds."""
    rows = []
    for e, r, status in matched:
        if status != FINISHED:
            rows.append([e["cell"], status, None, None])
            continue
        batch = r["config"].get("train", {}).get("batch_size")
        rows.append([e["cell"], status, f"{r['train']['steps']} × {batch}", seconds(r.get("wall_time_s"))])
    return rows


def _cells_section(matched: list) -> list[str]:
    return ["## Cells", "", markdown_table(["cell", "status", "steps × batch", "seconds"], cell_rows(matched)), ""]


def train_curves(matched: list) -> dict:
    """``(task, model, stage)`` → ``[(step, train accuracy)]`` of each finished classifier cell."""
    return {(e["task"], e["model"], e["stage"]): train_curve(r["workdir"], "acc") for e, r, status in matched
            if status == FINISHED and e["stage"] != "pretrain" and r.get("workdir")}


def figure(curves: dict, majority: dict):
    """Training accuracy against step, one panel per task (+SPT dashed), the majority class dotted.

    Args:
      curves: from :func:`train_curves`.
      majority: from :func:`majority_class`.

    Returns:
      The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    tasks = sorted({t for t, _, _ in curves})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (t, model, stage), pts in sorted(curves.items()):
            if t == task and pts:
                ax.plot(*zip(*pts), label=f"{model} +SPT" if stage == "spt" else model,
                        linestyle="--" if stage == "spt" else "-")
        if task in majority:
            ax.axhline(majority[task], color="gray", linestyle=":", label="majority (test)")
        ax.set(title=task, xlabel="step", ylabel="train accuracy (log window mean)", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["build", "cell_rows", "entries", "figure", "grid", "majority_class", "run_summary", "split_cell", "spt_rows",
           "train_curves"]

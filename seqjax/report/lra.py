"""LRA reports: test accuracy per task and model, with the papers' rows beside ours.

Reads the ``metrics`` that ``seqjax.tasks.lra.LRATask.evaluate`` wrote into
``results.json`` (per split: ``accuracy``, ``ce``, ``label_counts``,
``majority``; ``accuracy`` = the last eval split's) and the training curve
from each run's ``metrics.jsonl``.
"""

import json
import pathlib

from seqjax.report.io import DIVERGED, diverged
from seqjax.report.tables import markdown_table


def _task_model(r: dict) -> tuple[str, str]:
    # config.name = "lra-<task>-<model>-<scale>"
    parts = r["config"].get("name", "lra-?-?-?").split("-")
    return parts[1], "-".join(parts[2:-1])


def run_summary(results: dict) -> str:
    """What ``python -m experiments.lra`` prints: accuracy per split beside the majority class."""
    m = results["metrics"]
    cfg = results.get("config", {})
    lines = [f"{cfg.get('name', 'lra run')} (mixers: {cfg.get('model', {}).get('mixers', '?')}, "
             f"{results['train']['steps']} steps, {results.get('wall_time_s', 0):.0f} s)"]
    for split, s in m.items():
        if isinstance(s, dict) and "accuracy" in s:
            lines.append(f"{split:>10}: accuracy {s['accuracy']:.4f}   majority class {s['majority']:.4f}   "
                         f"cross-entropy {s['ce']:.4f}   ({s['num_examples']} examples)")
    return "\n".join(lines)


def _curve(workdir: str) -> list[tuple[int, float]]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") == "train" and "acc" in rec:
            out.append((rec["step"], rec["acc"]))
    return out


def build(table: dict, base: pathlib.Path, results: list[dict]) -> list[pathlib.Path]:
    """Markdown table (models × tasks, test accuracy %) with paper rows, and training curves.

    Args:
      table: the spec from ``configs/tables/lra.py`` (``columns``, ``paper`` rows).
      base: the table's run folder.
      results: finished and diverged cells' results (a diverged one reads "diverged").

    Returns:
      Paths written.
    """
    columns = table.get("columns") or sorted({_task_model(r)[0] for r in results})
    cell = {_task_model(r): r for r in results}
    models = sorted({m for _, m in cell})

    def pct(v):
        return None if v is None else f"{100 * v:.2f}"

    header = ["model"] + columns
    def entry(key):
        if key not in cell:
            return None
        return DIVERGED if diverged(cell[key]) else pct(cell[key]["metrics"]["accuracy"])

    rows = [[f"{model} (ours)"] + [entry((t, model)) for t in columns] for model in models]
    majority = {}
    for (t, _), r in cell.items():
        if diverged(r):
            continue
        # The split that ``accuracy`` reports: the config's last eval split (results.json sorts keys).
        split = (r["config"]["task"].get("eval_splits") or ["test"])[-1]
        if isinstance(r["metrics"].get(split), dict):
            majority[t] = r["metrics"][split]["majority"]
    rows.append(["majority class (ours, test split)"] + [pct(majority.get(t)) for t in columns])
    for name, values in (table.get("paper") or {}).items():
        # None: the paper reports a failure (chance); a string (e.g. "n/r", not reported) is shown as is.
        rows.append([name] + ["fail" if v is None else v if isinstance(v, str) else f"{v:.2f}" for v in values])
    parts = [f"# {table['title']}", "",
             "Ours: test accuracy from the cells' results.json files (scale in the folder name). "
             "Paper rows are the papers' reported numbers (REFERENCES.md), not runs of ours. "
             "At CPU scale the tasks are smaller variants (configs/lra/_base.py): not comparable with the paper rows.",
             "", markdown_table(header, rows), ""]
    written = []
    curves = {key: _curve(r["workdir"]) for key, r in cell.items() if r.get("workdir") and not diverged(r)}
    if any(curves.values()):
        png = base / "lra-train-accuracy.png"
        written.append(_plot_curves(curves, majority, png))
        parts += ["![training accuracy](lra-train-accuracy.png)", ""]
    md = base / "report.md"
    md.write_text("\n".join(parts))
    return [md] + written


def _plot_curves(curves: dict, majority: dict, path: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for t, _ in curves})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (t, model), pts in sorted(curves.items()):
            if t == task and pts:
                ax.plot(*zip(*pts), label=model)
        if task in majority:
            ax.axhline(majority[task], color="gray", linestyle="--", label="majority (test)")
        ax.set(title=task, xlabel="step", ylabel="train accuracy (log window mean)", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return pathlib.Path(path)

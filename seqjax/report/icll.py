"""ICLL reports: DFA accuracy and TVD per model and number of training DFAs.

Reads the ``metrics`` that ``seqjax.tasks.icll.ICLLTask.evaluate`` wrote into
``results.json`` (``accuracy``, ``tvd``, and ``ngram`` baselines when present:
``{"1": {"accuracy", "tvd"}, ...}``), and each cell's budget (steps, batch,
how many prompts per training language, last training loss, seconds) and
training-loss curve (``metrics.jsonl``): a model that fits its training
languages one by one reaches a low training loss at many prompts per language
without learning in context, so the report shows both.
"""

import pathlib

from seqjax.report.cells import seconds
from seqjax.report.io import DIVERGED, diverged, save_png, train_curve
from seqjax.report.tables import markdown_table


def _model(r: dict) -> str:
    return r["config"].get("name", "icll-?").split("-")[1]


def run_summary(results: dict) -> str:
    """What ``python -m experiments.icll`` prints."""
    m = results["metrics"]
    cfg = results.get("config", {})
    lines = [f"{cfg.get('name', 'icll run')} (mixers: {cfg.get('model', {}).get('mixers', '?')})",
             f"DFA accuracy {m['accuracy']:.4f}   TVD {m['tvd']:.4f}   ({m.get('num_examples', '?')} test prompts)"]
    for n, b in sorted(m.get("ngram", {}).items()):
        lines.append(f"in-context {n}-gram baseline: accuracy {b['accuracy']:.4f}   TVD {b['tvd']:.4f}")
    return "\n".join(lines)


def build(table: dict, base: pathlib.Path, results: list[dict]) -> list[pathlib.Path]:
    """Markdown table (models × training DFAs, accuracy / TVD) and a PNG per metric.

    Args:
      table: the table spec from ``configs/tables/icll.py``.
      base: the table's run folder.
      results: finished and diverged cells' results (a diverged one reads "diverged").

    Returns:
      Paths written.
    """
    sizes = sorted({r["config"]["task"]["num_train_dfas"] for r in results})
    models = sorted({_model(r) for r in results})
    cell = {(_model(r), r["config"]["task"]["num_train_dfas"]): DIVERGED if diverged(r) else r["metrics"]
            for r in results}
    header = ["model"] + [f"{n} DFAs: acc / TVD" for n in sizes]

    def fmt(m):
        if m is None or m == DIVERGED:
            return m
        return f"{m['accuracy']:.3f} / {m['tvd']:.3f}"

    rows = [[model] + [fmt(cell.get((model, n))) for n in sizes] for model in models]
    # The in-context n-gram baselines depend only on the test prompts; take them from any run.
    ngram = next((r["metrics"]["ngram"] for r in results if not diverged(r) and "ngram" in r["metrics"]), {})
    rows += [[f"baseline: in-context {n}-gram"] + [fmt(b)] * len(sizes) for n, b in sorted(ngram.items())]
    parts = [f"# {table['title']}", "", "Built from results.json files under this folder; accuracy ↑, TVD ↓.", "",
             markdown_table(header, rows), ""]
    if table.get("paper"):
        parts += [table["paper"], ""]
    written = []
    done = {key: m for key, m in cell.items() if m != DIVERGED}  # the plots show trained cells only
    plotted = sorted({model for model, _ in done})
    if done and len(sizes) > 1:
        written.append(save_png(lambda: _plot(plotted, sizes, done), base / "icll-accuracy.png"))
        parts += ["![accuracy](icll-accuracy.png)", ""]
    elif done:
        written.append(save_png(lambda: _bars(plotted, sizes[0], done, ngram), base / "icll-accuracy.png"))
        parts += ["![accuracy](icll-accuracy.png)", ""]
    parts += ["## Cells", "", "Prompts per DFA: training prompts seen (steps × batch) per training language "
              "(each language has one stored prompt).", "",
              markdown_table(["model", "DFAs", "steps × batch", "prompts per DFA", "last train loss", "seconds"],
                             cell_rows(results)), ""]
    curves = {(_model(r), r["config"]["task"]["num_train_dfas"]): train_curve(r.get("workdir"), "loss") for r in results}
    curves = {key: pts for key, pts in curves.items() if pts}
    if curves:
        written.append(save_png(lambda: loss_figure(curves), base / "icll-train-loss.png"))
        parts += ["![training loss](icll-train-loss.png)", ""]
    md = base / "report.md"
    md.write_text("\n".join(parts))
    return [md] + written


def cell_rows(results: list[dict]) -> list[list]:
    """One row per cell: model, training DFAs, steps × batch, prompts per DFA, last training loss, seconds.

    Args:
      results: the cells' ``results.json`` dicts (missing fields read "–").

    Returns:
      Rows for :func:`markdown_table`, sorted by DFAs then model.
    """
    rows = []
    for r in sorted(results, key=lambda r: (r["config"]["task"]["num_train_dfas"], _model(r))):
        dfas = r["config"]["task"]["num_train_dfas"]
        steps, batch = r.get("train", {}).get("steps"), r["config"].get("train", {}).get("batch_size")
        loss, wall = r.get("train", {}).get("loss"), r.get("wall_time_s")
        rows.append([_model(r), dfas, f"{steps} × {batch}" if steps and batch else None,
                     f"{steps * batch / dfas:.1f}" if steps and batch else None,
                     None if loss is None else f"{loss:.3f}", seconds(wall)])
    return rows


def loss_figure(curves: dict):
    """Training loss against step, one panel per number of training DFAs, one line per model.

    Args:
      curves: ``(model, DFAs)`` → ``[(step, loss)]``.

    Returns:
      The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    sizes = sorted({n for _, n in curves})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for (model, n), pts in sorted(curves.items()):
            if n == size:
                ax.plot(*zip(*pts), label=model)
        ax.set(title=f"{size} training DFAs", xlabel="step", ylabel="train loss (next-letter CE)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _plot(models, sizes, cell):
    """Accuracy against the number of training DFAs, one line per model (a figure for ``save_png``)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in models:
        pts = [(n, cell[(model, n)]["accuracy"]) for n in sizes if (model, n) in cell]
        ax.plot(*zip(*pts), marker="o", label=model)
    ax.set(xscale="log", xlabel="training DFAs", ylabel="DFA accuracy", ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _bars(models, size, cell, ngram):
    """Accuracy and TVD per model and n-gram baseline at one DFA count (a figure for ``save_png``)."""
    import matplotlib.pyplot as plt

    names = [m for m in models if (m, size) in cell] + [f"{n}-gram" for n in sorted(ngram)]
    acc = [cell[(m, size)]["accuracy"] for m in models if (m, size) in cell] + [ngram[n]["accuracy"] for n in sorted(ngram)]
    tvd = [cell[(m, size)]["tvd"] for m in models if (m, size) in cell] + [ngram[n]["tvd"] for n in sorted(ngram)]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, vals, label in ((axes[0], acc, "DFA accuracy ↑"), (axes[1], tvd, "TVD ↓")):
        ax.bar(range(len(names)), vals)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set(ylabel=label, ylim=(0, 1), title=f"{size} training DFAs")
    fig.tight_layout()
    return fig

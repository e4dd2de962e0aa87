"""ICL reports: error/d per number of in-context examples, model beside baselines.

Reads the ``metrics`` that ``seqjax.tasks.icl.ICLTask.evaluate`` wrote into
``results.json``: ``n`` (the n-th prediction sees n − 1 examples), ``dim`` and
``error_per_n`` (``model`` and one list per baseline).
"""

import pathlib

import numpy as np

from seqjax.report.cells import MISSING
from seqjax.report.io import DIVERGED, diverged, save_png
from seqjax.report.tables import markdown_table

SUMMARY_BASELINES = ("least_squares", "knn3", "averaging")
# Class-specific baselines shown in the table report when a run evaluated them.
CLASS_BASELINES = ("lasso", "nn_gd", "tree4", "bayes_fourier", "bayes_linear_mixture", "bayes_class_mixture")
LABELS = {"model": "model", "least_squares": "least squares", "knn3": "3-NN", "averaging": "averaging",
          "zero": "zero", "ridge": "ridge", "gd": "GD", "lasso": "Lasso", "nn_gd": "2-layer NN (Adam)",
          "tree4": "greedy tree (depth 4)", "bayes_fourier": "Bayes (Fourier mixture)",
          "bayes_linear_mixture": "Bayes (dense/sparse mixture)", "bayes_class_mixture": "Bayes (class mixture)"}


def examples_axis(metrics: dict) -> np.ndarray:
    """Number of in-context examples of each prediction (``n − 1``)."""
    return np.asarray(metrics["n"]) - 1


def claims(metrics: dict, *, target: float = 0.1) -> dict:
    """The README's success criteria, measured.

    Args:
      metrics: an ICL run's ``results["metrics"]``.
      target: the error/d the model must reach at 2d examples.

    Returns:
      ``{"error_at_2d", "meets_target", "below_knn3_and_averaging", "dim"}``;
      ``error_at_2d`` is None when the run has fewer than 2d + 1 points.
    """
    d = metrics["dim"]
    ex = examples_axis(metrics)
    err = metrics["error_per_n"]
    model = np.asarray(err["model"])
    at = np.flatnonzero(ex == 2 * d)
    e2d = float(model[at[0]]) if at.size else None
    mask = ex >= d
    others = [np.asarray(err[b]) for b in ("knn3", "averaging") if b in err]
    below = bool(all(np.all(model[mask] < o[mask]) for o in others)) if others and mask.any() else None
    return {"dim": d, "error_at_2d": e2d, "meets_target": e2d is not None and e2d <= target,
            "below_knn3_and_averaging": below}


def error_table(metrics: dict, baselines=SUMMARY_BASELINES) -> str:
    """Markdown: one row per number of examples, model then ``baselines`` (error/d)."""
    err = metrics["error_per_n"]
    cols = ["model"] + [b for b in baselines if b in err]
    rows = [[int(k)] + [float(err[c][i]) for c in cols] for i, k in enumerate(examples_axis(metrics))]
    return markdown_table(["examples"] + [LABELS.get(c, c) for c in cols], rows)


def run_summary(results: dict) -> str:
    """What ``python -m experiments.icl`` prints: the table and the measured criteria."""
    m = results["metrics"]
    c = claims(m)
    cfg = results.get("config", {})
    name = cfg.get("name", "icl run")
    mixers = cfg.get("model", {}).get("mixers", "?")
    lines = [f"{name} (mixers: {mixers}; d = {c['dim']}; error/d, lower is better)", error_table(m), ""]
    if c["error_at_2d"] is not None:
        lines.append(f"model error/d at 2d = {2 * c['dim']} examples: {c['error_at_2d']:.4f} "
                     f"({'≤' if c['meets_target'] else '>'} 0.1)")
    if c["below_knn3_and_averaging"] is not None:
        lines.append(f"below 3-NN and averaging for every n ≥ d: {'yes' if c['below_knn3_and_averaging'] else 'no'}")
    train = results.get("train", {})
    if "wall_time_s" in results:
        lines.append(f"wall time: {results['wall_time_s']:.0f} s; final train loss {train.get('loss', float('nan')):.4f}")
    return "\n".join(lines)


def plot_errors(runs: list[dict], path, title: str) -> pathlib.Path:
    """Writes :func:`errors_figure` of ``runs`` as a PNG at ``path`` and returns ``path``."""
    return save_png(lambda: errors_figure(runs, title), path)


def errors_figure(runs: list[dict], title: str):
    """Error/d vs examples: each run's model (solid), the first run's baselines (dashed; the class's own dotted).

    Args:
      runs: finished results of one function class (same d and points).
      title: the plot title.

    Returns:
      The matplotlib figure (its y-range follows the models' errors).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    top = 1.0
    for r in runs:
        m = r["metrics"]
        # "icl-<fc>-<model>-<scale>[-labelnoise<p>]" -> "<model>[-labelnoise<p>]"
        parts = r["config"].get("name", "icl-fc-model").split("-")[2:] if r.get("config") else ["model"]
        label = "-".join(p for p in parts if p not in ("cpu", "paper")) or "model"
        ax.plot(examples_axis(m), m["error_per_n"]["model"], marker="o", ms=3, label=label)
        top = max(top, *m["error_per_n"]["model"])
    m0 = runs[0]["metrics"]
    for b in SUMMARY_BASELINES:
        if b in m0["error_per_n"]:
            ax.plot(examples_axis(m0), m0["error_per_n"][b], ls="--", label=LABELS[b])
    for b in CLASS_BASELINES:  # the class's own (Lasso, the 2-layer net, the tree, the Bayes predictors)
        if b in m0["error_per_n"]:
            ax.plot(examples_axis(m0), m0["error_per_n"][b], ls=":", label=LABELS[b])
    ax.axvline(m0["dim"], color="grey", lw=0.5)
    # The y-range follows the models' errors (classes differ in scale: the Fourier series' error/d is ~10);
    # baselines that blow up (least squares at n = d) run off the top instead of flattening the rest.
    ax.set(xlabel="in-context examples", ylabel="squared error / d", title=title, ylim=(0, 1.5 * top))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def build(table: dict, base: pathlib.Path, results: list[dict]) -> list[pathlib.Path]:
    """The ICL table report: per class, error/d at d/2, d, 2d examples and the longest prompt per model.

    Args:
      table: the table spec from ``configs/tables/icl.py``.
      base: the table's run folder.
      results: finished and diverged cells' results (a diverged one is a row of "diverged").

    Returns:
      Paths written (markdown, PNGs).
    """
    by_fc: dict[str, list[dict]] = {}
    for r in results:
        by_fc.setdefault(r["config"]["task"]["function_class"], []).append(r)
    # Cells of the table without a results.json read "missing" under their class.
    ran = {pathlib.Path(r["workdir"]).name for r in results if r.get("workdir")}
    missing: dict[str, list[str]] = {}
    for cell in table.get("cells", []):
        if cell.name not in ran:
            args = dict(p.split("=", 1) for p in cell.arg.split(",") if "=" in p)
            missing.setdefault(args.get("fc", "linear"), []).append(cell.name)
    intro = ("Built from results.json files under this folder; error/d, lower is better. "
             "A run with randomised in-context labels has `labelnoise<p>` in its name (docs/icl.md).")
    parts = [f"# {table['title']}", "", intro, ""]
    written = []
    for fc in sorted(set(by_fc) | set(missing)):
        runs = by_fc.get(fc, [])
        done = [r for r in runs if not diverged(r)]
        if not runs:
            parts += [f"## {fc}", "", markdown_table(["run", "status"], [[c, MISSING] for c in missing[fc]]), ""]
            continue
        d = done[0]["metrics"]["dim"] if done else runs[0]["config"]["task"]["dim"]
        # d/2, d and 2d examples, and the longest prompt: at d = 1 (the Fourier classes) 2d is 2
        # examples, where no model has yet learned anything the curves show later.
        longest = {int(examples_axis(r["metrics"])[-1]) for r in done}
        ks = sorted({max(d // 2, 1), d, 2 * d} | longest)
        rows = []
        for r in runs:
            if diverged(r):
                rows.append([r["config"]["name"]] + [DIVERGED] * len(ks))
                continue
            ex = list(examples_axis(r["metrics"]))
            rows.append([r["config"]["name"]] + [r["metrics"]["error_per_n"]["model"][ex.index(k)] if k in ex else None for k in ks])
        rows += [[c] + [MISSING] * len(ks) for c in missing.get(fc, [])]
        parts += [f"## {fc} (d = {d})", ""]
        if done:
            # Baselines from a run on clean context labels where there is one (they read the same labels).
            clean = [r for r in done if not r["metrics"].get("label_noise", {}).get("eval")]
            m0 = (clean or done)[0]["metrics"]
            ex0 = list(examples_axis(m0))
            for b in SUMMARY_BASELINES + CLASS_BASELINES:
                if b in m0["error_per_n"]:
                    rows.append([f"baseline: {LABELS[b]}"] + [m0["error_per_n"][b][ex0.index(k)] if k in ex0 else None for k in ks])
        parts += [markdown_table(["run"] + [f"{k} example" + ("s" if k != 1 else "") for k in ks], rows), ""]
        if done:
            png = base / f"icl-{fc}.png"
            written.append(plot_errors(done, png, f"{fc}, d = {d}"))
            parts += [f"![{fc}]({png.name})", ""]
    md = base / "report.md"
    md.write_text("\n".join(parts))
    return [md] + written

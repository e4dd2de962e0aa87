"""Reports of the recall synthetics (``seqjax.tasks.mqar``): one run's summary and the MQAR table.

The table (``configs/tables/mqar.py``) lists every cell of the grid, mixer ×
sequence length × width (× learning rate at paper scale, where the best
learning rate of each mixer, length and width is kept, as Zoology reports):
its held-out ``accuracy`` and wall time from the cell's ``results.json``, and
its recurrent state per layer (:func:`seqjax.models.layer_state_sizes`, bytes
per sequence) from the config the run wrote, or, for a cell that has not run,
from the cell's config file. A cell without results reads "missing"; one that
diverged reads "diverged". The figure is Zoology's: accuracy against state
size (log axis) and against width, one line per mixer, per sequence length.

Cells of the table's equal-budget block (``steps`` in the grid: a longer
budget that stops above 0.99 held-out accuracy) get their own section, with
the steps each ran, and stars in the figure's state-size panel; the width
pivot and the lines keep the config's budget only, so that no line mixes two
budgets.
"""

import pathlib

from seqjax.report.cells import FINISHED, MISSING, Figure, write_report
from seqjax.report.io import DIVERGED, diverged, save_png
from seqjax.report.tables import markdown_table


def run_summary(results: dict) -> str:
    """What ``python -m experiments.mqar`` prints: the run, its accuracy at the scored positions and its CE."""
    m = results["metrics"]
    cfg = results.get("config", {})
    task = cfg.get("task", {})
    if m.get("kind", task.get("kind")) == "set_disjointness":
        setting = f"sets of {task.get('size_a', '?')} then {task.get('size_b', '?')}, answer={task.get('answer', '?')}"
    else:
        setting = f"{task.get('num_kv_pairs', '?')} key-value pairs in {task.get('seq_len', '?')} tokens"
    return "\n".join([
        f"{cfg.get('name', 'mqar run')} (mixers: {cfg.get('model', {}).get('mixers', '?')}; {setting})",
        f"accuracy {m['accuracy']:.4f}   sequence accuracy {m['sequence_accuracy']:.4f}   CE {m['ce']:.4f}   "
        f"({m['num_positions']} scored positions in {m['num_examples']} held-out examples)",
    ])


def state_bytes(config: dict) -> int | None:
    """Recurrent state per layer (bytes per sequence; the mean over layers) of a run's config, or None.

    Args:
      config: the config a run wrote (``results["config"]``) or a ConfigDict;
        the length is ``config["task"]["seq_len"]``.

    Returns:
      The bytes, or None when the model has a layer without recurrent state.
    """
    from seqjax.errors import ConfigError
    from seqjax.models import layer_state_sizes

    try:
        sizes = layer_state_sizes(config["model"], int(config["task"]["seq_len"]))
    except ConfigError:
        return None
    return round(sum(sizes) / len(sizes))


def cells(table: dict, results: list[dict]) -> list[dict]:
    """One row per (mixer, sequence length, width, budget, pairs) of the table's grid, filled from ``results``.

    Args:
      table: the spec from ``configs/tables/mqar.py`` (``grid``, ``cells``, ``repo``).
      results: finished and diverged cells' results (``workdir``'s folder name is the cell name).

    Returns:
      Dicts ``mixer, seq_len, num_kv_pairs, d_model, steps, state_bytes,
      accuracy, seconds, completed_steps, lr, status`` with ``status``
      "finished", "diverged" or "missing" (``accuracy``, ``seconds`` and
      ``completed_steps`` None unless finished; ``steps`` is the grid's: None
      for the config's budget; ``num_kv_pairs``, ``eval_every`` and ``stop_at``
      the cell's config's). ``completed_steps`` is where ``train.stop_at``
      ended the run, else its configured steps. Across swept learning rates the best finished cell is
      kept.
    """
    from seqjax.config import load_config

    by_name = {pathlib.Path(r["workdir"]).name: r for r in results if r.get("workdir")}
    specs = {c.name: c for c in table["cells"]}
    rows: dict[tuple, dict] = {}
    for g in table["grid"]:
        key = (g["mixer"], g["seq_len"], g["d_model"], g.get("steps"), g.get("num_kv_pairs"))
        r = by_name.get(g["cell"])
        status = MISSING if r is None else DIVERGED if diverged(r) else FINISHED
        if r is not None and r.get("config", {}).get("model"):
            config = r["config"]
        else:  # not run (or no config written): the cell's own config says what it would hold
            spec = specs[g["cell"]]
            config = load_config(pathlib.Path(table["repo"]) / spec.config, spec.arg)
        size = state_bytes(config)
        row = {"mixer": g["mixer"], "seq_len": g["seq_len"], "num_kv_pairs": config["task"].get("num_kv_pairs"),
               "d_model": g["d_model"], "steps": g.get("steps"), "eval_every": config["train"].get("eval_every"),
               "stop_at": config["train"].get("stop_at"), "state_bytes": size, "lr": g["lr"], "status": status,
               "accuracy": None, "seconds": None, "completed_steps": None}
        if status == FINISHED:
            row["accuracy"] = float(r["metrics"]["accuracy"])
            row["seconds"] = r.get("wall_time_s")
            trained = r.get("train", {})
            row["completed_steps"] = trained.get("completed_steps", trained.get("steps"))
        old = rows.get(key)
        rank = {MISSING: 0, DIVERGED: 1, FINISHED: 2}
        if old is None or (rank[status], row["accuracy"] or 0.0) > (rank[old["status"]], old["accuracy"] or 0.0):
            rows[key] = row
    return list(rows.values())


def _entry(row: dict):
    return row["accuracy"] if row["status"] == FINISHED else row["status"]


def build(table: dict, base: pathlib.Path, results: list[dict]) -> list[pathlib.Path]:
    """The MQAR report: accuracy per mixer × width, every cell with its state size, and the figure.

    Args:
      table: the spec from ``configs/tables/mqar.py``.
      base: the table's run folder.
      results: finished and diverged cells' results.

    Returns:
      Paths written (``report.md``, and ``mqar-accuracy.png`` when a cell finished).
    """
    rows = cells(table, results)
    swept = any(g["lr"] is not None for g in table["grid"])
    intro = ("Built from results.json files under this folder: held-out accuracy at the queries (↑). "
             "State = recurrent (inference) state per layer in bytes per sequence, computed from each cell's "
             "config (`seqjax.models.layer_state_sizes`; attention: its key-value cache at the sequence length). "
             "A cell without results reads \"missing\"; \"-\" marks a width outside that mixer's grid."
             + (" The best learning rate of each cell is kept." if swept else ""))
    parts = []
    for seq_len in table["seq_lens"]:
        at = [r for r in rows if r["seq_len"] == seq_len and r["steps"] is None]
        parts += [f"## Sequence length {seq_len}", "", "Accuracy by width (d_model):", ""]
        # "-": the width is not in that mixer's grid (the memories run one width on CPU).
        pivot = [[m] + [next((_entry(r) for r in at if r["mixer"] == m and r["d_model"] == d), "-")
                        for d in table["widths"]] for m in table["mixers"]]
        parts += [markdown_table(["mixer"] + [f"d={d}" for d in table["widths"]], pivot), "", "Every cell:", ""]
        header = ["mixer", "d_model", "state / layer (bytes)", "accuracy", "seconds"] + (["lr"] if swept else [])
        long = [[r["mixer"], r["d_model"], r["state_bytes"], _entry(r),
                 None if r["seconds"] is None else f"{r['seconds']:.0f}"]
                + ([r["lr"] if r["status"] == "finished" else None] if swept else []) for r in at]
        parts += [markdown_table(header, long, digits=4), ""]
        parts += _budget_section([r for r in rows if r["seq_len"] == seq_len and r["steps"] is not None])
    figures = [Figure("mqar-accuracy.png", lambda: figure(rows, table), "accuracy vs state size")]
    return write_report(base, table["title"], intro, parts, table.get("paper"),
                        figures if any(r["status"] == FINISHED for r in rows) else [])


def _budget_section(rows: list[dict]) -> list[str]:
    """The equal-budget block of one sequence length: per key-value count, each cell's accuracy and steps run."""
    if not rows:
        return []
    budget = rows[0]["steps"]
    pairs = sorted({r["num_kv_pairs"] for r in rows})
    text = (f"### Equal budget: up to {budget:,} steps\n\nThe baselines with {budget:,} steps, evaluated every "
            f"{rows[0]['eval_every']:,} steps and stopped at `{rows[0]['stop_at']}` (Zoology's rule): a budget long "
            "enough for attention to leave its plateau at the smallest width; with the config's key-value pairs and "
            "more (a fixed state must hold more). \"steps\" is where the run ended. The state does not depend "
            "on the pairs.")
    header = ["mixer", "d_model", "state / layer (bytes)"]
    for n in pairs:
        header += [f"{n} pairs: accuracy", "steps", "seconds"]
    body = []
    for mixer, d in dict.fromkeys((r["mixer"], r["d_model"]) for r in rows):
        line = [mixer, d, next(r["state_bytes"] for r in rows if (r["mixer"], r["d_model"]) == (mixer, d))]
        for n in pairs:
            r = next((r for r in rows if (r["mixer"], r["d_model"], r["num_kv_pairs"]) == (mixer, d, n)), None)
            line += ([None] * 3 if r is None else
                     [_entry(r), r["completed_steps"], None if r["seconds"] is None else f"{r['seconds']:.0f}"])
        body.append(line)
    return [text, "", markdown_table(header, body, digits=4), ""]


def plot(rows: list[dict], table: dict, path) -> pathlib.Path:
    """Writes :func:`figure` to the PNG ``path`` and returns ``path``."""
    return save_png(lambda: figure(rows, table), path)


def figure(rows: list[dict], table: dict):
    """Zoology's figure: accuracy vs state size (log x) and vs width, one line per mixer, per sequence length.

    Only finished cells are drawn; a diverged or missing cell is a gap.

    Args:
      rows: the output of :func:`cells`.
      table: the table spec (``seq_lens``, ``mixers``, ``widths``).

    Returns:
      The matplotlib figure (the caller saves or shows it).
    """
    import matplotlib.pyplot as plt  # the caller's backend: a notebook shows it inline

    lengths = table["seq_lens"]
    fig, axes = plt.subplots(2, len(lengths), figsize=(5 * len(lengths) + 2, 7), squeeze=False)
    # 20 mixers: tab20's distinct colours (the default cycle repeats after 10) and, past 10, square markers.
    palette = plt.get_cmap("tab20").colors
    # The long-budget points' key-value counts (two at most: a star and a cross).
    pairs = sorted({r["num_kv_pairs"] for r in rows if r["steps"] is not None and r["status"] == FINISHED})[:2]
    style = {m: dict(color=palette[(2 * i) % 20 + (i // 10) % 2], marker="os"[(i // 10) % 2])
             for i, m in enumerate(table["mixers"])}
    for j, seq_len in enumerate(lengths):
        for mixer in table["mixers"]:
            finished = [r for r in rows
                        if r["mixer"] == mixer and r["seq_len"] == seq_len and r["status"] == FINISHED]
            done = [r for r in finished if r["steps"] is None]
            budget = [r for r in finished if r["steps"] is not None and r["state_bytes"]]
            by_state = sorted((r for r in done if r["state_bytes"]), key=lambda r: r["state_bytes"])
            if by_state:
                axes[0, j].plot([r["state_bytes"] for r in by_state], [r["accuracy"] for r in by_state],
                                label=mixer, **style[mixer])
            for n, marker in zip(pairs, "*X"):  # the long budget: a star (config's pairs) or a cross, mixer's colour
                at = [r for r in budget if r["num_kv_pairs"] == n]
                if at:
                    axes[0, j].scatter([r["state_bytes"] for r in at], [r["accuracy"] for r in at], marker=marker,
                                       s=110 if marker == "*" else 70, color=style[mixer]["color"],
                                       edgecolors="black", linewidths=0.5, zorder=3,
                                       label=None if by_state or n != pairs[0] else mixer)
            by_width = sorted(done, key=lambda r: r["d_model"])
            if by_width:
                axes[1, j].plot([r["d_model"] for r in by_width], [r["accuracy"] for r in by_width], label=mixer,
                                **style[mixer])
        for n, marker in zip(pairs, "*X"):
            axes[0, j].scatter([], [], marker=marker, s=110 if marker == "*" else 70, color="white",
                               edgecolors="black", linewidths=0.5,
                               label=f"up to {table['budget_steps']:,} steps, {n} pairs")
        axes[0, j].set(xscale="log", xlabel="recurrent state per layer (bytes / sequence)", ylabel="accuracy",
                       ylim=(0, 1.02), title=f"MQAR, sequence length {seq_len}")
        axes[1, j].set(xscale="log", xlabel="model width (d_model)", ylabel="accuracy", ylim=(0, 1.02))
        axes[1, j].set_xticks(table["widths"], [str(w) for w in table["widths"]])
        axes[1, j].minorticks_off()
    # One legend for both panels, outside the axes: inside, 20 entries cover the points.
    handles, labels = axes[0, -1].get_legend_handles_labels()
    right = 1 - 2 / fig.get_figwidth()  # the last 2 inches hold the legend
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(right, 0.5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, right, 1))
    return fig


"""Report of the in-context RL table (``configs/tables/icrl.py``): final returns and learning curves.

One row per cell: the environment, the model, the final mean episode return
of the trained (sampling) policy and of a uniformly random policy on the same
evaluation episodes, the return of the first and last episode of a unit (for
the meta task: the first and last episode of a trial, so in-context
improvement shows as last > first), the environment steps and the wall time,
all from the cell's ``results.json`` (``seqjax.rl.train`` writes them). A cell
without results reads "missing". The figure: the learning curves (mean return
per update against environment steps), one panel per environment, one line per
model, the random policy as a dashed level.
"""

import pathlib

from seqjax.report.cells import FINISHED, MISSING, Figure, match_cells, seconds, status_row, write_report
from seqjax.report.tables import markdown_table

HEADER = ["env", "model", "final return", "random policy", "first episode", "last episode", "env steps",
          "seconds"]


def cells(table: dict, results: list[dict]) -> list[dict]:
    """One row per cell of the table, filled from ``results``.

    Args:
      table: the spec from ``configs/tables/icrl.py`` (``grid``).
      results: finished and diverged cells' results (``workdir``'s folder name is the cell name).

    Returns:
      Dicts ``cell, env, model, status, final_return, random_return, first_episode, last_episode,
      env_steps, seconds, curve_env_steps, curve_return``; the numbers are None unless finished.
    """
    rows = []
    for g, r, status in match_cells(table["grid"], results):
        row = {"cell": g["cell"], "env": g["env"], "model": g["model"], "status": status}
        row.update(dict.fromkeys(["final_return", "random_return", "first_episode", "last_episode", "env_steps",
                                  "seconds", "curve_env_steps", "curve_return"]))
        if status == FINISHED:
            m = r["metrics"]
            per = m["final_return_per_episode"]
            row.update(final_return=float(m["final_return"]), random_return=float(m["random_return"]),
                       first_episode=float(per[0]), last_episode=float(per[-1]), env_steps=int(m["env_steps"]),
                       seconds=r.get("wall_time_s"), curve_env_steps=list(m["curve_env_steps"]),
                       curve_return=[float(x) for x in m["curve_return"]])
        rows.append(row)
    return rows


def table_rows(rows: list[dict]) -> list[list]:
    """The markdown rows of :func:`cells`: a finished cell's numbers, its status otherwise."""
    out = []
    for r in rows:
        if r["status"] != FINISHED:
            out.append(status_row([r["env"], r["model"]], r["status"], 4, blanks=2))
            continue
        out.append([r["env"], r["model"], r["final_return"], r["random_return"], r["first_episode"],
                    r["last_episode"], f"{r['env_steps']:,}", seconds(r["seconds"])])
    return out


def build(table: dict, base: pathlib.Path, results: list[dict]) -> list[pathlib.Path]:
    """The icrl report: ``report.md`` (the table) and ``icrl-curves.png`` (the learning curves).

    Args:
      table: the spec from ``configs/tables/icrl.py``.
      base: the table's run folder.
      results: finished and diverged cells' results.

    Returns:
      Paths written.
    """
    rows = cells(table, results)
    intro = ("Built from results.json files under this folder. final return: mean episode return (↑) of the "
             "trained policy (actions sampled) on fresh evaluation episodes; random policy: a uniform policy on "
             "the same episodes; first / last episode: the mean return of the first and last episode of a reset "
             "unit (meta_bandit: of a 4-episode trial, so last > first is in-context improvement; "
             "repeat_previous: one episode per unit). RepeatPrevious returns lie in [−1, 1]; a bandit episode "
             "has 4 pulls (at most 3.6 expected for the 0.9 arm). Seconds: the run's wall time.")
    figures = [Figure("icrl-curves.png", lambda: figure(rows), "learning curves")]
    return write_report(base, table["title"], intro, [markdown_table(HEADER, table_rows(rows), digits=3), ""],
                        table.get("paper"), figures if any(r["curve_return"] for r in rows) else [])


def figure(rows: list[dict]):
    """Learning curves: mean return per update against environment steps, one panel per environment.

    Args:
      rows: the output of :func:`cells`.

    Returns:
      The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(r["env"] for r in rows))
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        randoms = []
        for r in rows:
            if r["env"] != env or r["status"] != "finished":
                continue
            ax.plot(r["curve_env_steps"], r["curve_return"], label=r["model"], linewidth=1)
            randoms.append(r["random_return"])
        if randoms:
            ax.axhline(sum(randoms) / len(randoms), linestyle="--", color="gray", label="random policy")
        ax.set(xlabel="environment steps", ylabel="mean episode return", title=env)
        if randoms:  # an environment without finished cells has nothing to label
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["cells", "table_rows", "build", "figure", "MISSING", "HEADER"]

"""In-context RL cells (Lu et al. 2023): S5 with resets vs LSTM vs S5 without resets, at CPU scale.

One cell is one PPO run of ``configs/icrl/icrl.py`` (``model``, ``env``,
``scale``): the final mean episode return of the trained (sampling) policy
beside a uniformly random policy's on the same evaluation episodes, and the
learning curve (mean return per update against environment steps), from the
run's ``results.json`` (``docs/icrl.md``).

* ``scale=cpu``: the three models on POPGym's RepeatPrevious (memory) and on
  the multi-episode Bernoulli bandit (meta-RL), one seed each, a few minutes
  per run on 2 CPU cores.
* ``scale=paper``: the same cells at the authors' public-code hyper-parameters
  (not run here; 15M environment steps each).

The paper's numbers are not typed in: its POPGym and meta-RL results were not
verified from a stored copy of the paper in this project (only its abstract was), and its environments
differ from these (its meta-RL task is randomly projected continuous control),
so the report carries ``PAPER_NOTE`` instead.
"""

from seqjax.config import Cell

MODELS = ["s5", "lstm", "s5_noreset"]
ENVS = ["repeat_previous", "meta_bandit"]
CONFIG = "configs/icrl/icrl.py"
PAPER_NOTE = ("Paper (Lu et al. 2023, NeurIPS; its abstract): the resettable S5 \"performs better than RNN's on a "
              "simple memory-based task\" and outperforms RNNs on partially-observable (POPGym) environments while "
              "running over five times faster. Its numbers are not verified from a stored copy of the paper in this "
              "project, so none is given; the rows above are our CPU-scale runs on our environments "
              "(RepeatPrevious Easy; a two-armed bandit trial), not the paper's settings.")


def cell_name(env: str, model: str, scale: str) -> str:
    """The run folder of one cell, e.g. ``repeat_previous-s5-cpu``."""
    return f"{env}-{model}-{scale}"


def get_table(scale: str) -> dict:
    """The cells at ``scale`` ("cpu" or "paper") and how to report them.

    Args:
      scale: "cpu" or "paper".

    Returns:
      The table spec: ``kind`` ("icrl"), ``runner`` ("rl": the cells train with
      ``seqjax.rl``), ``title``, ``cells``, ``grid`` (``cell``, ``env``,
      ``model``), ``models``, ``envs``, ``paper`` (the note).
    """
    cells, grid = [], []
    for env in ENVS:
        for model in MODELS:
            name = cell_name(env, model, scale)
            cells.append(Cell(name, CONFIG, f"model={model},env={env},scale={scale}"))
            grid.append({"cell": name, "env": env, "model": model})
    return {"kind": "icrl", "runner": "rl", "cells": cells, "grid": grid, "models": MODELS, "envs": ENVS,
            "paper": PAPER_NOTE,
            "title": "In-context RL: final mean episode return with PPO, S5 with resets vs LSTM vs S5 without "
                     "resets (Lu et al. 2023, at CPU scale)"}

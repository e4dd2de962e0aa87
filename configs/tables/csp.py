"""CSP cells: continuous sequence-to-sequence prediction (HiSS, Bhirangi et al. 2024) at CPU scale.

One cell is one run of ``configs/csp/imu.py`` (``model``, ``scale``): the MSE
on standardised targets of held-out sequences (the paper's metric), beside the
train-mean and linear-readout baselines that the task writes (``docs/csp.md``).
The rows are the paper's comparison: HiSS (``hiss``: the registry's linear
two-level mixer in every layer; ``hiss_net``: the authors' construction, an
S4D network per chunk and an S4D network over the chunk features), the flat
SSMs (S4 → ``s4d`` here, Mamba), LSTM and a causal Transformer.

* ``scale=cpu``: the generated IMU odometry task (50 Hz IMU → 5 Hz planar
  displacements, 320 samples), every model 2 layers × 64, 200 steps of batch
  16, one seed.
* ``scale=paper``: the same five models at the authors' sizes on CSP-Bench's
  RoNIN file from a manual directory (not run here).

The paper's CSP-Bench numbers are not verified from a stored copy of the paper
in this project, so none is typed in: the report carries ``PAPER_NOTE``.
"""

from seqjax.config import Cell

MODELS = ["hiss", "hiss_net", "s4d", "mamba", "lstm", "transformer"]
CONFIG = "configs/csp/imu.py"
PAPER_NOTE = ("Paper (Bhirangi et al. 2024, HiSS, CSP-Bench; MSE on standardised targets, 5 seeds): its table "
              "is not verified from a stored copy of the paper in this project, so no paper number is given. What "
              "the paper reports in its abstract: HiSS beats causal Transformers, LSTMs, S4 and Mamba by at least "
              "23% MSE across six CSP-Bench datasets. The rows above are the generated IMU odometry task at CPU "
              "scale, not CSP-Bench.")


def cell_name(model: str, scale: str) -> str:
    """The run folder of one cell, e.g. ``hiss-cpu``."""
    return f"{model}-{scale}"


def get_table(scale: str) -> dict:
    """The cells at ``scale`` ("cpu" or "paper") and how to report them.

    Args:
      scale: "cpu" or "paper".

    Returns:
      The table spec: ``kind`` ("csp"), ``title``, ``cells``, ``grid`` (one
      dict per cell: ``cell``, ``model``), ``models``, ``paper`` (the note).
    """
    cells = [Cell(cell_name(m, scale), CONFIG, f"model={m},scale={scale}") for m in MODELS]
    grid = [{"cell": cell_name(m, scale), "model": m} for m in MODELS]
    source = "the generated IMU odometry task" if scale == "cpu" else "CSP-Bench RoNIN"
    return {"kind": "csp", "cells": cells, "grid": grid, "models": MODELS, "paper": PAPER_NOTE,
            "title": f"CSP: continuous sequence-to-sequence prediction on {source}, MSE on standardised targets "
                     f"(HiSS setting, Bhirangi et al. 2024, {scale} scale)"}

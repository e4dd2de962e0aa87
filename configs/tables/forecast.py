"""Forecast cells: long-sequence time-series forecasting (Informer, Zhou et al. 2021).

One cell is one run of ``configs/forecast/informer.py`` (``model``,
``decoder``, ``dataset``, ``pred_len``, ``scale``): standardised MSE / MAE on
the test windows beside the repeat-last-value and least-squares linear
baselines of the same windows, which the task writes (``docs/forecast.md``).

* ``scale=cpu``: statsmodels' weekly ``co2`` (univariate, 104-week history,
  26-week horizon) and monthly ``elnino`` (48-month history, 12-month
  horizon), each with ``informer`` (ProbSparse encoder with distilling, masked
  ProbSparse decoder), ``mha`` (the same encoder–decoder with full attention:
  the paper's canonical-attention comparison) and ``lstm`` without a decoder
  (the recurrent baseline: the last state → the whole horizon), one seed.
* ``scale=paper``: the paper's ETTh1 rows, multivariate (``features=M``), for
  every horizon of its grid {24, 48, 168, 336, 720}, Informer only (needs
  ``ETTh1.csv`` in ``$SEQJAX_DATA/informer`` and an accelerator).

The paper's numbers are not typed in: the table values seen on third-party
pages disagree between the arXiv and AAAI versions, and no stored copy of the
paper's tables could be read here (``PAPER_NOTE``).
"""

from seqjax.config import Cell

CPU_GRID = [("co2", 26), ("elnino", 12)]
CPU_MODELS = [("informer", "yes"), ("mha", "yes"), ("lstm", "no")]
PAPER_HORIZONS = [24, 48, 168, 336, 720]
CONFIG = "configs/forecast/informer.py"
PAPER_NOTE = ("Paper (Zhou et al. 2021, Informer, Table 2: ETTh1 multivariate, horizons 24 / 48 / 168 / 336 / 720): "
              "its MSE / MAE are not given here: they could not be verified from a stored copy of the paper in this "
              "project (third-party pages quote different numbers for the arXiv and AAAI versions). The CPU rows "
              "are statsmodels' series at small scale, not the paper's datasets.")


def model_label(model: str, decoder: str) -> str:
    """The row label of a model: ``informer``, ``mha``, ``lstm (no decoder)``."""
    return model if decoder == "yes" else f"{model} (no decoder)"


def cell_name(dataset: str, pred_len: int, model: str, decoder: str, scale: str) -> str:
    """The run folder of one cell, e.g. ``co2-26-informer-cpu`` or ``co2-26-lstm-nodec-cpu``."""
    return f"{dataset}-{pred_len}-{model}{'' if decoder == 'yes' else '-nodec'}-{scale}"


def get_table(scale: str) -> dict:
    """The cells at ``scale`` ("cpu" or "paper") and how to report them.

    Args:
      scale: "cpu" or "paper".

    Returns:
      The table spec: ``kind`` ("forecast"), ``title``, ``cells``, ``grid`` (one
      dict per cell: ``cell``, ``dataset``, ``pred_len``, ``model``), ``paper`` (the note).
    """
    if scale == "paper":
        combos = [("ETTh1", h, "informer", "yes") for h in PAPER_HORIZONS]
    else:
        combos = [(d, h, m, dec) for d, h in CPU_GRID for m, dec in CPU_MODELS]
    cells, grid = [], []
    for dataset, horizon, model, decoder in combos:
        name = cell_name(dataset, horizon, model, decoder, scale)
        arg = f"model={model},decoder={decoder},dataset={dataset},pred_len={horizon},scale={scale}"
        cells.append(Cell(name, CONFIG, arg))
        grid.append({"cell": name, "dataset": dataset, "pred_len": horizon, "model": model_label(model, decoder)})
    return {"kind": "forecast", "cells": cells, "grid": grid, "paper": PAPER_NOTE,
            "title": "Forecast: standardised test MSE / MAE of Informer and baselines "
                     f"({'ETTh1, the paper grid' if scale == 'paper' else 'statsmodels series at CPU scale'})"}

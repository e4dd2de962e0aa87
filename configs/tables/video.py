"""Video cells: next-frame prediction of Moving Digits (ConvS5, Smith et al. 2023, at CPU scale).

One cell is one run of ``configs/video/moving_digits.py`` (``model``,
``scale``): teacher-forced and rollout error on held-out videos, beside the
copy-last-frame baselines that the task writes (``docs/video.md``).

* ``scale=cpu``: ``convs5`` (2 layers, 16×16 latent frames × 4 channels),
  ``transformer`` (2 layers × 128, attention over frames) and ``lstm`` (the
  registry's LSTM mixer over the flattened frames, 2 layers × 128: the
  recurrent baseline) and ``convlstm`` (ConvLSTM, Shi et al. 2015, on the
  same latent frames as ``convs5``: the convolutional recurrent baseline) on
  16×16 Moving Digits, 1,000 steps of batch 16, one seed.
* ``scale=paper``: ``convs5`` only, at the ConvS5 paper's Moving-MNIST model
  settings (the config refuses other models there; needs Moving MNIST in a
  manual directory and an accelerator).

The paper's Moving-MNIST numbers are not verified from a stored copy in this
project (``docs/mixers.md``), so none is typed in: the report carries
``PAPER_NOTE`` instead.
"""

from seqjax.config import Cell

MODELS = {"cpu": ["convs5", "transformer", "lstm", "convlstm"], "paper": ["convs5"]}
CONFIG = "configs/video/moving_digits.py"
PAPER_NOTE = ("Paper (Smith et al. 2023, ConvS5, Moving MNIST): its numbers are not reproduced here and not "
              "verified from a stored copy in this project, so no paper number is given; the rows above are "
              "Moving Digits (16×16) at CPU scale, not the paper's setting.")


def cell_name(model: str, scale: str) -> str:
    """The run folder of one cell, e.g. ``convs5-cpu``."""
    return f"{model}-{scale}"


def get_table(scale: str) -> dict:
    """The cells at ``scale`` ("cpu" or "paper") and how to report them.

    Args:
      scale: "cpu" or "paper".

    Returns:
      The table spec: ``kind`` ("video"), ``title``, ``cells``, ``grid`` (one
      dict per cell: ``cell``, ``model``), ``models``, ``paper`` (the note).
    """
    models = MODELS[scale]
    cells = [Cell(cell_name(m, scale), CONFIG, f"model={m},scale={scale}") for m in models]
    grid = [{"cell": cell_name(m, scale), "model": m} for m in models]
    return {"kind": "video", "cells": cells, "grid": grid, "models": models, "paper": PAPER_NOTE,
            "title": "Video: next-frame prediction of Moving Digits, teacher-forced and rollout error "
                     "(ConvS5 setting, Smith et al. 2023, at CPU scale)"}

"""MQAR cells: Zoology (Arora et al. 2023), accuracy against model width and
against recurrent state size, per mixer.

One cell is one run of ``configs/mqar/mqar.py`` (``model``, ``seq_len``,
``d_model``, and at paper scale ``lr``). The mixers are attention (``mha``) and
the causal recurrent mixers of the registry that Zoology's question is about.

* ``scale=cpu``: widths 32, 64, 128 × the baseline mixers at the config's CPU
  scale (sequence length 64, 4 key-value pairs, vocab 64, 1,000 steps of batch
  64), one seed and one learning rate: 27 cells; the memories of the "Mixer zoo
  III" issue (``MEMORY_MIXERS``) at width 64 only: 11 more cells.
* ``scale=paper``: Zoology's Figure 2 grid from its public config
  (``iclr24_zoology_figure2/configs.py``): sequence length 64, 128, 256, 512
  (4, 8, 16, 64 pairs) × d_model 64, 128, 256, 512 × the learning rates
  logspace(-4, -2, 4); the report keeps the best learning rate of each
  (mixer, length, width), as the paper does.

REFERENCES.md gives the paper's grid, not its numbers, so no paper numbers are
typed in: the report states the paper's finding beside ours.
"""

import pathlib

from seqjax.config import Cell

BASELINE_MIXERS = ["mha", "s4d", "lru", "mamba", "gla", "retnet", "linear_attention", "mamba2", "deltanet"]
# The delta-rule, Miras, MoM, GAM, LMU, JRT, HiSS and xLSTM memories (causal, token
# inputs; convs5 takes frames, not tokens). One CPU width each: a cell takes
# minutes, and the width sweep of the baselines already shows the trend.
MEMORY_MIXERS = ["gated_deltanet", "mom", "moneta", "yaad", "memora", "gam", "lmu", "jrt", "hiss",
                 "mlstm_block", "slstm_block"]
MIXERS = BASELINE_MIXERS + MEMORY_MIXERS
WIDTHS = {"cpu": [32, 64, 128], "paper": [64, 128, 256, 512]}
MEMORY_CPU_WIDTHS = [64]
SEQ_LENS = {"cpu": [64], "paper": [64, 128, 256, 512]}
# Zoology sweeps np.logspace(-4, -2, 4); written as the config's ``lr=`` argument (2 significant digits).
LRS = {"cpu": [None], "paper": [1e-4, 4.6e-4, 2.2e-3, 1e-2]}
CONFIG = "configs/mqar/mqar.py"
# The folder holding configs/: the report computes the state size of a cell that has not run from its config.
REPO = pathlib.Path(__file__).resolve().parents[2]
PAPER_FINDING = ("Paper (Arora et al. 2023, Zoology, Fig. 2): attention solves MQAR at every width and length; "
                 "gated-convolution and recurrent models need a width (state) that grows with the sequence length "
                 "and the number of pairs (finding only; REFERENCES.md has no numbers).")


def cell_name(mixer: str, seq_len: int, d_model: int, lr: float | None = None) -> str:
    """The run folder of one cell, e.g. ``mamba-L64-d128`` (``-lr0.0022`` when the learning rate is swept)."""
    return f"{mixer}-L{seq_len}-d{d_model}" + ("" if lr is None else f"-lr{lr:g}")


def widths_of(mixer: str, scale: str) -> list[int]:
    """The widths ``mixer`` runs at ``scale``: the memories one width on CPU, every mixer all at paper scale."""
    return MEMORY_CPU_WIDTHS if scale == "cpu" and mixer in MEMORY_MIXERS else WIDTHS[scale]


def get_table(scale: str) -> dict:
    """The cells at ``scale`` ("cpu" or "paper") and how to report them.

    Args:
      scale: "cpu" or "paper".

    Returns:
      The table spec: ``kind``, ``title``, ``cells``, ``paper`` and ``grid``
      (one dict per cell: ``cell``, ``mixer``, ``seq_len``, ``d_model``,
      ``lr``), ``widths``, ``seq_lens``, ``mixers``, ``repo``.
    """
    grid, cells = [], []
    for seq_len in SEQ_LENS[scale]:
        for mixer in MIXERS:
            for d in widths_of(mixer, scale):
                for lr in LRS[scale]:
                    name = cell_name(mixer, seq_len, d, lr)
                    arg = f"model={mixer},seq_len={seq_len},d_model={d},scale={scale}"
                    cells.append(Cell(name, CONFIG, arg if lr is None else f"{arg},lr={lr:g}"))
                    grid.append({"cell": name, "mixer": mixer, "seq_len": seq_len, "d_model": d, "lr": lr})
    return {"kind": "mqar", "cells": cells, "grid": grid, "paper": PAPER_FINDING, "mixers": MIXERS,
            "widths": WIDTHS[scale], "seq_lens": SEQ_LENS[scale], "repo": str(REPO),
            "title": "MQAR: accuracy vs model width and recurrent state size per mixer (Arora et al. 2023, Zoology)"}

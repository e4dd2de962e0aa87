"""MQAR cells: Zoology (Arora et al. 2023), accuracy against model width and
against recurrent state size, per mixer.

One cell is one run of ``configs/mqar/mqar.py`` (``model``, ``seq_len``,
``d_model``, and at paper scale ``lr``). The mixers are attention (``mha``) and
the causal recurrent mixers of the registry that Zoology's question is about.

* ``scale=cpu``: widths 32, 64, 128 × the baseline mixers at the config's CPU
  scale (sequence length 64, 4 key-value pairs, vocab 64, 1,000 steps of batch
  64), one seed and one learning rate: 27 cells; the memories of the "Mixer zoo
  III" issue (``MEMORY_MIXERS``) at width 64 only: 11 more cells. Then the
  equal-budget block: the baseline mixers at the smallest width (32) with
  12,000 steps, evaluated every 500 steps and stopped above 0.99 held-out
  accuracy (Zoology's rule), with the config's 4 key-value pairs and with 16
  (every query slot of the 64 tokens used): 18 cells. At 1,000 steps
  attention at width 32 has not left its plateau (it does at about 3,000
  steps), so the 1,000-step block alone cannot show whether a mixer fails
  for want of state or of training; the block gives every mixer the budget
  attention needs, and the 16 pairs ask a fixed state to hold 4× more.
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
# The equal-budget block (steps, widths, key-value pairs; None: the config's); paper scale's budget is
# already Zoology's.
BUDGET = {"cpu": (12_000, [32], [None, 16]), "paper": (None, [], [])}
# Zoology sweeps np.logspace(-4, -2, 4); written as the config's ``lr=`` argument (2 significant digits).
LRS = {"cpu": [None], "paper": [1e-4, 4.6e-4, 2.2e-3, 1e-2]}
CONFIG = "configs/mqar/mqar.py"
# The folder holding configs/: the report computes the state size of a cell that has not run from its config.
REPO = pathlib.Path(__file__).resolve().parents[2]
PAPER_FINDING = ("Paper (Arora et al. 2023, Zoology, Fig. 2): attention solves MQAR at every width and length; "
                 "gated-convolution and recurrent models need a width (state) that grows with the sequence length "
                 "and the number of pairs (finding only; REFERENCES.md has no numbers).")


def cell_name(mixer: str, seq_len: int, d_model: int, lr: float | None = None, steps: int | None = None,
              pairs: int | None = None) -> str:
    """The run folder of one cell, e.g. ``mamba-L64-d128``.

    ``-lr0.0022`` is added when the learning rate is swept, ``-s12000`` for a
    cell of the equal-budget block, ``-kv16`` (after the length) for key-value
    pairs other than the config's.
    """
    return (f"{mixer}-L{seq_len}" + ("" if pairs is None else f"-kv{pairs}") + f"-d{d_model}"
            + ("" if lr is None else f"-lr{lr:g}") + ("" if steps is None else f"-s{steps}"))


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
      ``lr``, ``steps`` — None for the config's budget, else the
      equal-budget block's, ``num_kv_pairs`` — None for the config's),
      ``widths``, ``seq_lens``, ``mixers``, ``budget_steps``, ``repo``.
    """
    grid, cells = [], []

    def add(mixer, seq_len, d, lr=None, steps=None, pairs=None):
        name = cell_name(mixer, seq_len, d, lr, steps, pairs)
        arg = f"model={mixer},seq_len={seq_len},d_model={d},scale={scale}"
        arg += ("" if pairs is None else f",num_kv_pairs={pairs}")
        arg += ("" if lr is None else f",lr={lr:g}") + ("" if steps is None else f",steps={steps}")
        cells.append(Cell(name, CONFIG, arg))
        grid.append({"cell": name, "mixer": mixer, "seq_len": seq_len, "d_model": d, "lr": lr, "steps": steps,
                     "num_kv_pairs": pairs})

    budget, budget_widths, budget_pairs = BUDGET[scale]
    for seq_len in SEQ_LENS[scale]:
        for mixer in MIXERS:
            for d in widths_of(mixer, scale):
                for lr in LRS[scale]:
                    add(mixer, seq_len, d, lr)
        for pairs in budget_pairs:
            for mixer in BASELINE_MIXERS:
                for d in budget_widths:
                    add(mixer, seq_len, d, steps=budget, pairs=pairs)
    return {"kind": "mqar", "cells": cells, "grid": grid, "paper": PAPER_FINDING, "mixers": MIXERS,
            "widths": WIDTHS[scale], "seq_lens": SEQ_LENS[scale], "budget_steps": budget, "repo": str(REPO),
            "title": "MQAR: accuracy vs model width and recurrent state size per mixer (Arora et al. 2023, Zoology)"}

"""Seq2seq cells: string transduction by encoder–decoders and decoder-only LMs (CPU scale).

One cell is one run of ``configs/seq2seq/strings.py`` (``kind``, ``decoder``,
``layout``; the encoder is ``mha``): held-out greedy (free-running) token
accuracy, exact match and teacher-forced accuracy, and the greedy accuracy per
target position (the figure).

* ``scale=cpu``: reverse with an encoder–decoder (``mha`` / ``mha`` and
  ``mha`` / ``mamba2``) and with a decoder-only LM of as many layers (``mha``,
  ``mamba2``), the comparison of Fu et al. 2023 ("Decoder-Only or
  Encoder-Decoder? Interpreting Language Model as a Regularized
  Encoder-Decoder") on a task of Sutskever et al. 2014; copy with ``mha`` in
  both layouts. 2,000 steps of batch 64, one seed.
* ``scale=paper``: none. Both papers measure translation (WMT'14 BLEU), which
  needs data and compute this table does not pretend to; no paper number fits
  these synthetic rows, so none is typed in (``PAPER_NOTE``).
"""

from seqjax.config import Cell
from seqjax.errors import ConfigError

CONFIG = "configs/seq2seq/strings.py"
GRID = [("reverse", "encoder_decoder", "mha"), ("reverse", "encoder_decoder", "mamba2"),
        ("reverse", "decoder_only", "mha"), ("reverse", "decoder_only", "mamba2"),
        ("copy", "encoder_decoder", "mha"), ("copy", "decoder_only", "mha")]
PAPER_NOTE = ("Papers (Sutskever et al. 2014; Fu et al. 2023): both report WMT translation (BLEU), not these "
              "synthetic tasks, so no paper number stands beside these rows.")


def cell_name(kind: str, layout: str, decoder: str) -> str:
    """The run folder of one cell, e.g. ``reverse-encdec-mha``."""
    return f"{kind}-{'encdec' if layout == 'encoder_decoder' else 'lm'}-{decoder}"


def get_table(scale: str) -> dict:
    """The cells at ``scale`` and how to report them.

    Args:
      scale: "cpu" ("paper" has no cells: a one-line ConfigError).

    Returns:
      The table spec: ``kind`` ("seq2seq"), ``title``, ``cells``, ``grid`` (one dict per cell:
      ``cell``, ``kind``, ``layout``, ``decoder``), ``paper`` (the note).
    """
    if scale != "cpu":
        raise ConfigError(f"table seq2seq has no scale={scale!r} cells (the papers' WMT translation is not "
                          "attempted); allowed: cpu")
    cells = [Cell(cell_name(*g), CONFIG, f"kind={g[0]},layout={g[1]},decoder={g[2]}") for g in GRID]
    grid = [{"cell": cell_name(*g), "kind": g[0], "layout": g[1], "decoder": g[2]} for g in GRID]
    return {"kind": "seq2seq", "cells": cells, "grid": grid, "paper": PAPER_NOTE,
            "title": "Seq2seq: copy and reverse strings, encoder–decoder vs decoder-only (CPU scale)"}

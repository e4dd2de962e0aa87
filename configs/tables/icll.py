"""ICLL cells: Akyürek et al. 2024 (RegBench), accuracy and TVD per model and
number of training DFAs.

REFERENCES.md gives the paper's finding, not its numbers: Transformers clearly
beat recurrent and convolutional models, and adding n-gram heads closes much of
the gap. The report states that ordering beside ours instead of typed numbers.
"""

from seqjax.config import Cell

MODELS = ["mha", "mamba", "lstm", "s4d", "gla", "mha+ngram"]
TRAIN_DFAS = {"cpu": [40000], "paper": [625, 1250, 2500, 5000, 10000, 20000, 40000]}
PAPER_FINDING = ("Paper (Akyürek et al. 2024): Transformers clearly beat recurrent and convolutional "
                 "models; n-gram heads close much of the gap (ordering only; REFERENCES.md has no numbers).")


def get_table(scale: str) -> dict:
    """The cells at ``scale`` ("cpu" or "paper") and how to report them."""
    cells = [
        Cell(f"{model}-{n}", "configs/icll/regbench.py", f"model={model},train_dfas={n},scale={scale}")
        for n in TRAIN_DFAS[scale]
        for model in MODELS
    ]
    return {"kind": "icll", "cells": cells, "paper": PAPER_FINDING,
            "title": "ICLL on RegBench: DFA accuracy and TVD per model (Akyürek et al. 2024)"}

"""ICL cells: Garg et al. 2022, Figure 2 (error vs in-context examples) and the
function-class panels, per model.

The papers report curves, not tables, so no paper numbers are typed in; the
report draws the baselines (least squares, 3-NN, averaging) that the papers
draw beside the models, computed on the same prompts.
"""

from seqjax.config import Cell

MODELS = ["transformer", "mamba", "lstm", "s4d", "gla"]
FUNCTION_CLASSES = ["linear", "sparse_linear", "noisy_linear", "relu2nn", "decision_tree", "fourier_mixture",
                    "linear_mixture"]


def get_table(scale: str) -> dict:
    """The cells at ``scale`` ("cpu" or "paper") and how to report them."""
    cells = [
        Cell(f"{fc}-{model}", "configs/icl/regression.py", f"fc={fc},model={model},scale={scale}")
        for fc in FUNCTION_CLASSES
        for model in MODELS
    ]
    return {"kind": "icl", "cells": cells, "paper": None,
            "title": "ICL of function classes: error/d vs in-context examples (Garg et al. 2022, Fig. 2)"}

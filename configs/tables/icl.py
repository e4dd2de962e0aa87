"""ICL cells: Garg et al. 2022, Figure 2 (error vs in-context examples) and the
function-class panels, per model, for every class of ``seqjax.data.icl`` (with
Panwar et al.'s mixtures), plus Campbell et al.'s randomised-label runs of the
sliding-window class.

The papers report curves, not tables, so no paper numbers are typed in; the
report draws the baselines (least squares, 3-NN, averaging) that the papers
draw beside the models, computed on the same prompts.
"""

from seqjax.config import Cell

MODELS = ["transformer", "mamba", "lstm", "s4d", "gla"]
FUNCTION_CLASSES = ["linear", "sparse_linear", "noisy_linear", "quadratic", "linear_classification", "relu2nn",
                    "decision_tree", "fourier", "sliding_window", "fourier_mixture", "linear_mixture",
                    "class_mixture"]
# Campbell et al.'s randomised-label experiment on the sliding-window class (transformer, as the
# paper's GPT-2 models); the fractions are ours (the paper's could not be read).
LABEL_NOISE = ["0.25", "0.5", "0.75"]


def get_table(scale: str) -> dict:
    """The cells at ``scale`` ("cpu" or "paper") and how to report them."""
    cells = [
        Cell(f"{fc}-{model}", "configs/icl/regression.py", f"fc={fc},model={model},scale={scale}")
        for fc in FUNCTION_CLASSES
        for model in MODELS
    ] + [
        Cell(f"sliding_window-labelnoise{p}-transformer", "configs/icl/regression.py",
             f"fc=sliding_window,model=transformer,scale={scale},label_noise={p}")
        for p in LABEL_NOISE
    ]
    return {"kind": "icl", "cells": cells, "paper": None,
            "title": "ICL of function classes: error/d vs in-context examples (Garg et al. 2022, Fig. 2)"}

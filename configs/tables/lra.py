"""LRA cells: tasks × models, with the papers' reported accuracies as reference rows.

The paper rows are REFERENCES.md's table (Tay et al. 2020 for the efficient
transformers; the S4D paper for S4-LegS and S4D-LegS, marked "(check)" there;
the S5 paper for S5) and the mixer papers' own LRA tables (PoNet, ...),
labelled as the papers'. Ours come only from the
cells' ``results.json`` (test accuracy).

At ``scale=cpu`` only the generated tasks (ListOps, short variant; Pathfinder-32,
20k images) are cells (each under 20 minutes on 2 cores): the archive-backed ones need the official archives in
``$SEQJAX_DATA/lra_manual`` (see ``docs/lra_archives.md``); add them with
``--only`` once the archives are there.
"""

from seqjax.config import Cell

TASKS = {"cpu": ["listops", "pathfinder"],
         "paper": ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]}
MODELS = {"cpu": ["transformer", "s4d", "s5", "mamba", "lru"],
          "paper": ["transformer", "s4", "s4d", "s5", "mamba", "lru"]}
# Self-pretrained rows ("+SPT", Amos et al. 2023): a masked-denoising run on the task's inputs for half
# the steps, then the classifier for the other half from its parameters (configs/lra/_base.py, stage=).
SPT_MODELS = ["transformer", "s4d"]
# The SPT paper's finding, from its abstract (arXiv 2310.02980); its LRA table's numbers are not typed in (not verified).
SPT_NOTE = ("Self-pretraining, the paper's finding (Amos, Berant and Gupta 2023, abstract): denoising pretraining on "
            "only the task's data gives \"dramatic gains across multiple architectures and ... very small gaps "
            "between Transformers and state space models\"; pretrained vanilla Transformers match S4 on LRA. Its "
            "per-task numbers are not typed here (not verified from its text).")
COLUMNS = ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]
# Accuracy (%) per COLUMNS; None = "fail" (chance) in the paper; "n/r" = not reported.
PAPER_ROWS = {
    "Transformer (LRA paper)": [36.37, 64.27, 57.46, 42.44, 71.40, None],
    "Performer (LRA paper)": [18.01, 65.40, 53.82, 42.77, 77.05, None],
    "Linear Transformer (LRA paper)": [16.13, 65.90, 53.09, 42.34, 75.30, None],
    "BigBird (LRA paper)": [36.05, 64.02, 59.29, 40.83, 74.87, None],
    "S4 (S4D paper's S4-LegS, check)": [59.60, 86.82, 90.90, 88.65, 94.20, 96.35],
    "S4D-LegS (S4D paper, check)": [60.47, 86.18, 89.46, 88.19, 93.06, 91.95],
    "S5 (S5 paper)": [62.15, 89.31, 91.40, 88.00, 95.33, 98.58],
    # Tan et al. 2022, PoNet, Table 1 (docs/mixers.md, ponet row).
    "PoNet (PoNet paper)": [37.80, 69.82, 80.35, 46.88, 70.39, "n/r"],
    # Ren et al. 2021, Combiner, Table 4 (its Pathfinder column is the "Pathfinder-inter" setting).
    "Combiner-Fixed (Combiner paper)": [36.65, 64.99, 59.81, 41.67, 88.59, "n/r"],
    "Combiner-Axial (Combiner paper)": [36.15, 64.36, 56.10, 41.33, 88.43, "n/r"],
}


def get_table(scale: str) -> dict:
    """The cells at ``scale`` ("cpu" or "paper") and how to report them."""
    cells = []
    for task in TASKS[scale]:
        config = f"configs/lra/{task}.py"
        cells += [Cell(f"{task}-{model}", config, f"model={model},scale={scale}") for model in MODELS[scale]]
        for model in SPT_MODELS if task != "retrieval" else ():  # pretraining takes one sequence
            pre = f"{task}-{model}+pretrain"
            cells += [Cell(pre, config, f"model={model},scale={scale},stage=pretrain"),
                      Cell(f"{task}-{model}+spt", config, f"model={model},scale={scale},stage=finetune",
                           init_from=pre)]
    return {"kind": "lra", "cells": cells, "paper": PAPER_ROWS, "columns": COLUMNS, "paper_note": SPT_NOTE,
            "title": "Long Range Arena: test accuracy (%) per task and model"}

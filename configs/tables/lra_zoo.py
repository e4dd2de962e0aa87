"""The zoo II mixers on Long Range Arena: one cell per mixer and task.

At ``scale=cpu`` every mixer of the "Mixer zoo II" issue trains on ListOps
(short variant, generated locally) for 500 steps of batch 32 — a quarter of
the LRA CPU table's 2,000, so all fifteen fit in about an hour on 2 cores —
at the LRA CPU table's settings otherwise (2 layers, width 64,
``configs/lra/_base.py``). The question it answers is whether each mixer
learns the task at all: the report prints the majority class of the test
split beside the accuracies (14.1 % on this split), and at 500 steps the
LRA table's models are at 20–31 % training accuracy. It is not a ranking of
the mixers (one seed, a short budget, no tuning). The mixers whose 500-step
test accuracy was not above the majority class (run on 2026-12-04: ``fit``
13.8 %, ``low_rank`` 12.0 %) have a second cell, ``listops-<mixer>@2000``, at
the LRA CPU table's full budget of 2,000 steps; both rows are reported
(2026-12-05: ``fit@2000`` 17.0 %, ``low_rank@2000`` 14.1 %).

At ``scale=paper`` the cells are the six LRA tasks for every mixer at the
paper scale of ``configs/lra/_base.py``; none of these papers' own LRA
hyperparameters are typed in there, so the mixers run with the S4
repository's settings (its documented choice for mixers without their own).
The PoNet and Combiner papers' rows are in the LRA table (``lra.py``).
"""

from seqjax.config import Cell

MIXERS = ["combiner", "ponet", "routing", "probsparse", "landmark", "sea", "urpe", "longvq", "seqboat",
          "relative_mha", "fit", "toeplitz", "vandermonde", "cauchy", "low_rank"]
TASKS = {"cpu": ["listops"], "paper": ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]}
STEPS = {"cpu": 500, "paper": None}
# Second cells at the LRA CPU table's 2,000 steps, for the mixers not above the majority class at 500.
LONGER = {"cpu": (2000, ["fit", "low_rank"]), "paper": (None, [])}


def get_table(scale: str) -> dict:
    """The cells at ``scale`` ("cpu" or "paper") and how to report them."""
    budget = f",steps={STEPS[scale]}" if STEPS[scale] else ""
    cells = [Cell(f"{task}-{mixer}", f"configs/lra/{task}.py", f"model={mixer},scale={scale}{budget}")
             for task in TASKS[scale] for mixer in MIXERS]
    steps, longer = LONGER[scale]
    cells += [Cell(f"{task}-{mixer}@{steps}", f"configs/lra/{task}.py", f"model={mixer},scale={scale},steps={steps}")
              for task in TASKS[scale] for mixer in longer]
    return {"kind": "lra", "cells": cells, "paper": {}, "columns": TASKS[scale],
            "title": "Mixer zoo II on Long Range Arena: test accuracy (%) per task and mixer"
                     + (f" ({STEPS[scale]} steps)" if STEPS[scale] else "")}

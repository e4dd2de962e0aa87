"""Long Range Arena: ``python -m experiments.lra``.

With no flags it trains the CPU-scale ListOps run (a shorter-length variant,
generated locally) with ``s4d`` and prints validation/test accuracy beside
the majority-class floor. ``--config=configs/lra/<task>.py:model=...,scale=...``
picks the task (listops, text, retrieval, image, pathfinder, pathx), the
model and the scale; ``--config.x=y`` overrides any field.
"""

import sys

from experiments import _flags
from seqjax import experiment

CONFIG, WORKDIR = _flags.define("configs/lra/listops.py:model=s4d,scale=cpu")

if __name__ == "__main__":
    _flags.parse(sys.argv)
    from seqjax.report import lra as lra_report

    sys.exit(experiment.main(CONFIG.value, WORKDIR.value, lra_report.run_summary))

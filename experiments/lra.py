"""Long Range Arena: ``python -m experiments.lra``.

With no flags it trains the CPU-scale ListOps run (a shorter-length variant,
generated locally) with ``s4d`` and prints validation/test accuracy beside
the majority-class floor. ``--config=configs/lra/<task>.py:model=...,scale=...``
picks the task (listops, text, retrieval, image, pathfinder, pathx), the
model and the scale; ``--config.x=y`` overrides any field. A batch that the
devices do not divide (the papers' 50 on 4 or 8 devices) is padded with rows of
loss weight 0, so the papers' batch size is kept exactly.
"""

import sys

from experiments import _flags


def _report():
    from seqjax.report import lra

    return lra.run_summary


if __name__ == "__main__":
    _flags.main(sys.argv, "experiments.lra", __doc__, "configs/lra/listops.py:model=s4d,scale=cpu", _report)

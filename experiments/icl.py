"""In-context learning of function classes: ``python -m experiments.icl``.

With no flags it runs the README's default: linear regression at CPU scale,
then prints the transformer's error per number of examples beside least
squares, 3-NN and averaging. ``--config=configs/icl/regression.py:fc=...,
model=...,scale=...`` and ``--config.train.steps=...`` change it.
"""

import sys

from experiments import _flags
from seqjax import experiment

CONFIG, WORKDIR = _flags.define("configs/icl/regression.py:fc=linear,model=transformer,scale=cpu")

if __name__ == "__main__":
    _flags.parse(sys.argv)
    from seqjax.report import icl as icl_report

    sys.exit(experiment.main(CONFIG.value, WORKDIR.value, icl_report.run_summary))

"""In-context language learning on RegBench: ``python -m experiments.icll``.

``--config=configs/icll/regbench.py:model=...,train_dfas=...,scale=...``;
prints the DFA accuracy and TVD of the trained model.
"""

import sys

from experiments import _flags
from seqjax import experiment

CONFIG, WORKDIR = _flags.define("configs/icll/regbench.py:model=transformer,scale=cpu")

if __name__ == "__main__":
    _flags.parse(sys.argv)
    from seqjax.report import icll as icll_report

    sys.exit(experiment.main(CONFIG.value, WORKDIR.value, icll_report.run_summary))

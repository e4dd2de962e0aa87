"""In-context language learning on RegBench: ``python -m experiments.icll``.

``--config=configs/icll/regbench.py:model=...,train_dfas=...,scale=...``;
``--config.x=y`` overrides any field. Prints the DFA accuracy and TVD of the
trained model beside the n-gram baselines.
"""

import sys

from experiments import _flags


def _report():
    from seqjax.report import icll

    return icll.run_summary


if __name__ == "__main__":
    _flags.main(sys.argv, "experiments.icll", __doc__, "configs/icll/regbench.py:model=transformer,scale=cpu",
                _report)

"""Runs the toy training in a fresh process (the kill -9 resume test starts and kills it).

Usage: ``python tests/train/resume_script.py WORKDIR STEPS DELAY_SECONDS``; prints the
results as one JSON line when training finishes.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from seqjax.train import run  # noqa: E402
from tests.train.toy import ToyModel, ToyTask, make_config  # noqa: E402


def main(argv):
    workdir, steps, delay = argv[1], int(argv[2]), float(argv[3])
    config = make_config(steps=steps, checkpoint_every=5, log_every=1)
    results = run(config, workdir, task=ToyTask(delay=delay), model=ToyModel())
    print(json.dumps({"metrics": results["metrics"], "loss": results["train"]["loss"]}))


if __name__ == "__main__":
    main(sys.argv)

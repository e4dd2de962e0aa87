"""Worker for tests/parallel/test_multiprocess_train.py (run by mp_launch on every process).

Runs ``seqjax.train.run`` on the tiny ICL experiment of test_mesh_training with a
2 x 2 x 2 data x fsdp x sequence mesh over all global devices: first 2 steps,
then (same folder, a second ``run``) extended to 4 steps, which restores the
step-2 checkpoint that all processes wrote together. Prints ``RESULT {json}``
with the process index, the returned results and the per-step losses read back
from metrics.jsonl (process 0 writes it).

Usage: python -m tests.parallel.mp_worker_train WORKDIR
"""

import json
import sys
import time

_T0 = time.monotonic()

from seqjax import train
from tests.parallel.tiny import STEPS, tiny_icl


def main(workdir: str) -> None:
    config = tiny_icl(data=2, fsdp=2, sequence=2, preset="fsdp+sequence")
    config.train.steps, config.train.checkpoint_every = 2, 2
    t_import = time.monotonic() - _T0
    train.run(config, workdir)
    t_first = time.monotonic() - _T0 - t_import
    config.train.steps = STEPS
    results = train.run(config, workdir)
    t_second = time.monotonic() - _T0 - t_import - t_first

    import jax  # initialised by train.run

    print("RESULT " + json.dumps({
        "process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
        "metrics": results["metrics"], "loss": results["train"]["loss"], "num_devices": results["num_devices"],
        "seconds": {"import": t_import, "first_run": t_first, "resumed_run": t_second},
    }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

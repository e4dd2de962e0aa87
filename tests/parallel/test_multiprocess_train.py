"""Two processes x 4 host devices train the tiny ICL experiment as one device does.

The processes talk over CPU collectives (gloo) through ``jax.distributed``,
started by ``seqjax.train.run`` from the ``SEQJAX_*`` variables the launcher
sets. Each process reads its own rows of the global batch; the run stops at
step 2, is restarted (restoring the checkpoint both processes wrote) and
extended to 4 steps. Its losses must equal the one-device run's.
"""

import json

import numpy as np

from tests.parallel import mp_launch
from tests.parallel.tiny import STEPS
from tests.train.toy import losses


def test_two_processes_train_like_one_device(tmp_path, one_device_icl):
    work = tmp_path / "mp"
    done = mp_launch.run_processes("tests.parallel.mp_worker_train", [str(work)], num_processes=2,
                                   devices_per_process=4, timeout=420)
    reports = [mp_launch.results(c)[-1] for c in done]
    assert sorted(r["process"] for r in reports) == [0, 1]
    assert all(r["processes"] == 2 and r["devices"] == 8 and r["num_devices"] == 8 for r in reports)
    # Every process evaluated the whole eval set and got the same numbers.
    assert reports[0]["metrics"] == reports[1]["metrics"]
    # Both processes' shards went into the shared checkpoint of step 2, which the second run restored.
    steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert 2 in steps and STEPS in steps
    assert json.loads((work / "results.json").read_text())["num_processes"] == 2

    one, one_dir = one_device_icl
    a = np.array([losses(one_dir)[s] for s in range(1, STEPS + 1)])
    b = np.array([losses(work)[s] for s in range(1, STEPS + 1)])
    np.testing.assert_allclose(b, a, rtol=1e-4)
    key = sorted(one["metrics"])[0]
    np.testing.assert_allclose(reports[0]["metrics"][key], one["metrics"][key], rtol=1e-3)

"""``seqjax.train.run`` on data x fsdp x sequence (and tensor) meshes trains as one device does.

A tiny real experiment (ICL linear regression, prompts of 16 tokens) runs for a
few steps on one device and on meshes of the 8 host devices; the per-step
losses and the final evaluation must agree to float32 tolerance, and the
checkpoint of a sharded run must resume on another mesh.
"""

import json

import numpy as np
import pytest

from seqjax import tasks, train
from seqjax.errors import ConfigError
from tests.parallel.tiny import STEPS, tiny_icl
from tests.train.toy import losses


def _curve(workdir):
    curve = losses(workdir)
    return np.array([curve[s] for s in range(1, STEPS + 1)])


def test_meshes_and_a_move_between_them_train_like_one_device(tmp_path, one_device_icl):
    """2 steps on data x fsdp x sequence = 2 x 2 x 2, then (restoring that sharded
    checkpoint) 2 more on data x fsdp x tensor = 2 x 2 x 2: the 4 losses and the
    final evaluation equal 4 steps on one device.

    One run covers both presets that split more than the batch and the restore
    of a checkpoint into another layout; mamba/mamba2/s5/gla on sequence meshes
    are checked model by model in test_sequence_models.py (forward and
    gradients), and two processes in test_multiprocess_train.py.
    """
    one, straight = one_device_icl
    work = tmp_path / "moved"
    first = tiny_icl(data=2, fsdp=2, sequence=2, preset="fsdp+sequence")
    first.train.steps, first.train.checkpoint_every = 2, 2
    train.run(first, work)
    second = tiny_icl(data=2, fsdp=2, tensor=2, preset="fsdp+tensor")
    second.model.sequence_axis = "sequence"  # placement fields may differ in the same folder
    results = train.run(second, work)
    assert results["mesh"]["preset"] == "fsdp+tensor" and results["mesh"]["tensor"] == 2
    assert results["num_devices"] == 8
    a, b = _curve(straight), _curve(work)
    assert len(set(np.round(a, 6))) == STEPS  # the loss moves
    np.testing.assert_allclose(b, a, rtol=1e-4)
    key = sorted(one["metrics"])[0]
    np.testing.assert_allclose(results["metrics"][key], one["metrics"][key], rtol=1e-3)
    config = json.loads((work / "config.json").read_text())
    assert config["mesh"]["preset"] == "fsdp+sequence"  # the folder keeps its first config


def test_sequence_mesh_without_sequence_axis_is_a_config_error(tmp_path):
    c = tiny_icl()
    c.mesh.update({"sequence": 2, "preset": "fsdp+sequence"})
    with pytest.raises(ConfigError, match=r"config.mesh.sequence=2 splits the length.*config.model.sequence_axis"):
        train.run(c, tmp_path)
    c = tiny_icl()
    c.mesh.update({"fsdp": 2, "preset": "dp"})
    with pytest.raises(ConfigError, match=r"config.mesh.fsdp=2 but config.mesh.preset='dp'"):
        train.run(c, tmp_path)
    # A batch that data x fsdp do not divide is padded with rows of weight 0, but
    # only for a task that weighs rows.
    c = tiny_icl(data=8)
    c.train.batch_size = 12
    unweighted = tasks.build(c.task)
    unweighted.weighted_rows = False  # an instance attribute over the class's True
    with pytest.raises(ConfigError, match=r"config.train.batch_size=12 is not divisible by the batch split 8.*"
                                          r"cannot weigh rows"):
        train.run(c, tmp_path / "unweighted", task=unweighted)
    assert not (tmp_path / "unweighted").exists()

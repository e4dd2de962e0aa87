"""``seqjax.train.run`` on data x fsdp x sequence (and tensor) meshes trains as one device does.

A tiny real experiment (ICL linear regression, prompts of 16 tokens) runs for a
few steps on one device and on meshes of the 8 host devices; the per-step
losses and the final evaluation must agree to float32 tolerance, and the
checkpoint of a sharded run must resume on another mesh.
"""

import json

import numpy as np
import pytest

from seqjax import train
from seqjax.errors import ConfigError
from seqjax.experiment import load_config
from tests.train.toy import losses

STEPS = 4


def tiny_icl(mixer="mha", **mesh):
    """ICL linear regression, d=3, 8 points (length 16), one layer of ``mixer``, width 16."""
    c = load_config("configs/icl/regression.py", "fc=linear,model=transformer,scale=cpu")
    c.task.dim, c.task.n_points, c.model.input_dim, c.model.max_length = 3, 8, 3, 16
    c.model.num_layers, c.model.d_model = 1, 16
    c.model.mixers = mixer
    c.model.mixer_kwargs = {"mha": {"num_heads": 2}, "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4}}[mixer]
    c.model.mixer_kwargs = {mixer: c.model.mixer_kwargs.to_dict()}
    c.task.eval_batch_size, c.task.ilwd_batch_size = 16, 8
    c.task.baselines = ()
    c.train.steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = STEPS, 16, 1, STEPS
    c.train.progress = False
    c.optim.warmup_steps = 1
    c.mesh.update({"data": 1, "fsdp": 1, "sequence": 1, "tensor": 1, "preset": "dp", **mesh})
    if c.mesh.sequence > 1:
        c.model.sequence_axis = "sequence"
    return c


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """``mixer -> (results, workdir)`` of the one-device run, made once per module."""
    runs = {}

    def get(mixer):
        if mixer not in runs:
            workdir = tmp_path_factory.mktemp(f"one-{mixer}")
            runs[mixer] = (train.run(tiny_icl(mixer), workdir), workdir)
        return runs[mixer]

    return get


def _curve(workdir):
    curve = losses(workdir)
    return np.array([curve[s] for s in range(1, STEPS + 1)])


# mamba/mamba2/s5/gla on sequence meshes are checked model by model in
# test_sequence_models.py (forward and gradients); here one full training run
# per preset keeps the suite's time in budget.
@pytest.mark.parametrize("mixer, mesh", [
    ("mha", {"data": 2, "fsdp": 2, "sequence": 2, "preset": "fsdp+sequence"}),
])
def test_mesh_trains_like_one_device(tmp_path, one_device, mixer, mesh):
    one, one_dir = one_device(mixer)
    many = train.run(tiny_icl(mixer, **mesh), tmp_path / "many")
    assert many["num_devices"] == 8 and many["mesh"]["preset"] == mesh["preset"]
    a, b = _curve(one_dir), _curve(tmp_path / "many")
    assert len(set(np.round(a, 6))) == STEPS  # the loss moves
    np.testing.assert_allclose(b, a, rtol=1e-4)
    key = "error_at_2d" if "error_at_2d" in one["metrics"] else sorted(one["metrics"])[0]
    np.testing.assert_allclose(many["metrics"][key], one["metrics"][key], rtol=1e-3)


def test_sharded_checkpoint_resumes_on_another_mesh(tmp_path, one_device):
    """2 steps on data x fsdp x sequence, then 2 more on data x fsdp x tensor: equals 4 steps on one device.

    The second half also trains the fsdp+tensor preset (heads/mlp/vocab over
    ``tensor``) against the one-device curve.
    """
    _, straight = one_device("mha")
    work = tmp_path / "moved"
    first = tiny_icl(data=2, fsdp=2, sequence=2, preset="fsdp+sequence")
    first.train.steps, first.train.checkpoint_every = 2, 2
    train.run(first, work)
    second = tiny_icl(data=2, fsdp=2, tensor=2, preset="fsdp+tensor")
    second.model.sequence_axis = "sequence"  # placement fields may differ in the same folder
    results = train.run(second, work)
    assert results["mesh"]["preset"] == "fsdp+tensor" and results["mesh"]["tensor"] == 2
    np.testing.assert_allclose(_curve(work), _curve(straight), rtol=1e-4)
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
    c = tiny_icl(data=8)
    c.train.batch_size = 12
    with pytest.raises(ConfigError, match=r"config.train.batch_size=12 is not divisible by the batch split 8"):
        train.run(c, tmp_path)

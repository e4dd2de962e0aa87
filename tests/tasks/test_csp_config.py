"""The csp configs (configs/csp/imu.py) and a tiny end-to-end run through the entrypoint's code."""

import json
import pathlib

import numpy as np
import pytest

from experiments.csp import run_summary
from seqjax import experiment
from seqjax.config import apply_overrides
from seqjax.data import csp_bench
from seqjax.errors import ConfigError
from seqjax.experiment import load_config, prepare

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/csp/imu.py"


@pytest.mark.parametrize("model, mixers", [("hiss", "hiss"), ("s4d", "s4d"), ("mamba", "mamba"), ("lstm", "lstm"),
                                           ("transformer", "mha")])
def test_cpu_configs_pass_every_check_of_a_run(model, mixers):
    c = load_config(CONFIG, f"model={model}")
    task = prepare(c, num_devices=1).task
    assert (task.source, task.chunk, task.num_chunks, task.max_length) == ("imu_odometry", 10, 32, 320)
    assert (c.model.input, c.model.input_dim, c.model.head, c.model.output_dim) == ("continuous", 3, "regression", 2)
    assert (c.model.causal, c.model.mixers, c.model.num_layers, c.model.d_model) == (True, mixers, 2, 64)
    if model == "hiss":
        assert c.model.mixer_kwargs.hiss.chunk_size == 10
    assert c.name == f"csp-imu-{model}-cpu"


def test_hiss_net_is_the_two_network_architecture():
    c = load_config(CONFIG, "model=hiss_net")
    task = prepare(c, num_devices=1).task
    assert (c.model.architecture, c.model.chunk, c.model.input_dim, c.model.output_dim) == ("hierarchical", 10, 3, 2)
    assert (c.model.low.mixers, c.model.low.num_layers, c.model.high.mixers, c.model.high.num_layers) == (
        "s4d", 1, "s4d", 1)
    assert task.max_length == 320 and c.name == "csp-imu-hiss_net-cpu"
    with pytest.raises(ConfigError, match="config.model.output_dim=3 is not allowed with task 'csp'"):
        prepare(apply_overrides(c, ["model.output_dim=3"]), num_devices=1)


def _ronin(root, rng):
    """A tiny RoNIN pair of files in the authors' layout (train: 3 episodes, test: 1)."""
    import h5py

    spec = csp_bench.DATASETS["ronin"]
    for test, lengths in ((False, [3, 4, 2]), (True, [3])):
        path = spec.path(root, test=test)
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            for m, width, rate in (("acce", 3, 10), ("gyro", 3, 10), ("tango_pose", 7, 1)):
                eps = [rng.normal(size=(c * rate, width)) for c in lengths]
                f.create_dataset(m, data=np.concatenate(eps))
                f.create_dataset(f"{m}_episode_ids", data=np.concatenate([[0], np.cumsum([len(e) for e in eps])]))


def test_paper_config_reads_the_manual_dir(tmp_path, rng, monkeypatch):
    pytest.importorskip("h5py")
    monkeypatch.setenv("SEQJAX_DATA", str(tmp_path / "data"))
    with pytest.raises(ConfigError, match=f"^CSP-Bench file {tmp_path}/data/csp_bench/ronin/ronin_i50o5_test.h5 "
                                          "not found; make it with the HiSS authors' scripts"):
        prepare(load_config(CONFIG, "model=s4d,scale=paper"), num_devices=1)
    _ronin(tmp_path / "data" / "csp_bench", rng)
    c = load_config(CONFIG, "model=transformer,scale=paper")
    task = prepare(c, num_devices=1).task
    assert (task.source, task.num_chunks, task.eval_examples, task.input_dim, task.output_dim) == (
        "csp_bench", 4, 1, 6, 2)
    assert (c.model.num_layers, c.model.d_model, c.model.mixer_kwargs.mha.num_heads, c.model.dropout) == (
        6, 128, 2, 0.1)
    assert (c.optim.learning_rate, c.optim.schedule, c.train.batch_size) == (1e-4, "constant", 4)
    with pytest.raises(ConfigError, match="config.model.input_dim"):  # tactile widths: the user must set them
        prepare(load_config(CONFIG, "model=s4d,scale=paper,dataset=marker_writing"), num_devices=1)
    with pytest.raises(ConfigError, match="model='gru' is not allowed"):
        load_config(CONFIG, "model=gru")


@pytest.mark.slow  # ~30 s on 2 loaded cores: compiles a train step and a predict
def test_a_tiny_hiss_run_writes_results(tmp_path, capsys):
    overrides = ["train.steps=3", "optim.warmup_steps=1", "train.batch_size=2", "train.progress=false",
                 "task.num_chunks=4", "model.max_length=40", "task.stats_examples=8", "task.eval_examples=3",
                 "task.eval_batch_size=2", "model.d_model=16"]
    status = experiment.command(f"{CONFIG}:model=hiss", overrides, str(tmp_path / "w"), run_summary)
    assert status == 0
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    m = results["metrics"]
    assert m["num_targets"] == 12 and len(m["mse_per_target"]) == 2 and np.isfinite(m["mse"])
    out = capsys.readouterr().out
    assert "MSE (standardised)" in out and "train-mean baseline" in out

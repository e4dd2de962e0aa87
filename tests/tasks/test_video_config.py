"""The video configs (configs/video/moving_digits.py) and a tiny end-to-end run through the entrypoint's code."""

import json
import pathlib

import numpy as np
import pytest

from experiments.video import run_summary
from seqjax import experiment
from seqjax.config import apply_overrides
from seqjax.data import moving_digits as md
from seqjax.errors import ConfigError
from seqjax.experiment import load_config, prepare

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/video/moving_digits.py"


@pytest.mark.parametrize("model", ["convs5", "transformer", "convlstm"])
def test_cpu_configs_pass_every_check_of_a_run(model):
    c = load_config(CONFIG, f"model={model}")
    task = prepare(c, num_devices=1).task
    assert (task.source, task.frame_size, task.num_frames, task.context_frames) == ("moving_digits", 16, 20, 10)
    assert c.model.input_dim == c.model.output_dim == task.pixels == 256
    assert (c.model.input, c.model.head, c.model.causal, c.model.max_length) == ("continuous", "regression", True, 19)
    if model in ("convs5", "convlstm"):  # the same latent layout: 16×16 frames × 4 channels, 2 layers
        kw = c.model.mixer_kwargs[model]
        assert c.model.mixers == model and (c.model.num_layers, c.model.mlp_ratio) == (2, 1.0)
        assert (kw.frame_height, kw.frame_width) == (16, 16)
        assert c.model.d_model == kw.frame_height * kw.frame_width * 4 == 1024
    if model == "convlstm":
        assert (kw.kernel_size, kw.peephole) == (3, True) and "convs5" not in c.model.mixer_kwargs
    if model != "transformer":  # the CPU optimiser and steps are the table's, whatever the model
        assert (c.optim.learning_rate, c.optim.warmup_steps, c.train.steps, c.train.batch_size) == (1e-3, 100, 1000, 16)
    assert c.name == f"video-moving-digits-{model}-cpu"


def test_paper_config_reads_the_manual_dir(tmp_path, rng, monkeypatch):
    np.save(tmp_path / md.MOVING_MNIST_FILE, rng.integers(0, 256, size=(20, 3, 64, 64), dtype=np.uint8))
    # The default folder is $SEQJAX_DATA/moving_mnist: absent there, one line names the file.
    monkeypatch.setenv("SEQJAX_DATA", str(tmp_path / "data"))
    expected = tmp_path / "data" / "moving_mnist" / md.MOVING_MNIST_FILE
    with pytest.raises(ConfigError, match=f"^Moving MNIST file {expected} not found"):
        prepare(load_config(CONFIG, "scale=paper"), num_devices=1)
    (tmp_path / "data" / "moving_mnist").mkdir(parents=True)
    (tmp_path / md.MOVING_MNIST_FILE).rename(expected)
    c = apply_overrides(load_config(CONFIG, "scale=paper"), ["task.eval_examples=1"])
    task = prepare(c, num_devices=1).task
    assert (task.source, task.frame_size, task.num_frames, task.num_train_videos) == ("moving_mnist", 64, 20, 2)
    kw = c.model.mixer_kwargs.convs5
    assert (c.model.num_layers, kw.frame_height, kw.frame_width, kw.d_state) == (8, 16, 16, 256)
    assert c.model.d_model == 16 * 16 * 256 and c.model.input_dim == 64 * 64
    assert (kw.b_kernel_size, kw.c_kernel_size, kw.clip_eigs, kw.dt_min, kw.dt_max) == (3, 3, True, 0.001, 0.1)
    assert (c.optim.learning_rate, c.train.steps, c.train.batch_size) == (1e-3, 300_000, 8)
    with pytest.raises(ConfigError, match="model='transformer' is not allowed with scale=paper; allowed: convs5"):
        load_config(CONFIG, "model=transformer,scale=paper")
    with pytest.raises(ConfigError, match="model='convlstm' is not allowed with scale=paper; allowed: convs5"):
        load_config(CONFIG, "model=convlstm,scale=paper")


@pytest.mark.slow  # ~20 s each: compiles a train step, a predict and runs the rollout
@pytest.mark.parametrize("model", ["convs5", "convlstm"])
def test_a_tiny_frame_model_run_writes_results(tmp_path, capsys, model):
    overrides = ["train.steps=3", "optim.warmup_steps=1", "train.batch_size=2", "train.progress=false",
                 "task.frame_size=12", "task.num_frames=5", "task.context_frames=2", "task.eval_examples=3",
                 "task.eval_batch_size=2", "model.input_dim=144", "model.output_dim=144", "model.max_length=4",
                 "model.num_layers=1", "model.d_model=256"]  # 16×16 latent frames × 1 channel
    if model == "convs5":
        overrides.append("model.mixer_kwargs.convs5.d_state=4")
    status = experiment.command(f"{CONFIG}:model={model}", overrides, str(tmp_path / "w"), run_summary)
    out = capsys.readouterr().out
    assert status == 0
    m = json.loads((tmp_path / "w" / "results.json").read_text())["metrics"]
    for key in ("mse", "mae", "baseline_mse", "rollout_mse", "baseline_rollout_mse"):
        assert np.isfinite(m[key]) and m[key] > 0
    assert len(m["rollout_mse_per_frame"]) == m["num_predicted_frames"] == 3 and m["num_examples"] == 3
    assert "copy-last-frame MSE" in out and "rollout MSE" in out
    assert run_summary({"metrics": m}).splitlines()[1].startswith(f"teacher-forced MSE {m['mse']:.5f}")


def test_every_task_field_is_in_the_config_and_documented():
    import seqjax.tasks.video as video

    c = load_config(CONFIG)
    assert set(video._DEFAULTS) <= set(c.task.keys())  # every field the task reads can be overridden
    text = (ROOT / "docs/video.md").read_text()
    assert not [k for k in c.task.keys() if k != "name" and f"`{k}`" not in text]
    apply_overrides(c, ["task.context_frames=4", "task.rollout=false"])
    task = experiment.prepare(c, num_devices=1).task
    assert (task.context_frames, task.rollout) == (4, False)

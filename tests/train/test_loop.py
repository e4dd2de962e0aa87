"""Tests of seqjax.train.run on the toy task: learning, data parallelism, resume, divergence, config errors."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from seqjax import models
from seqjax.errors import ConfigError
from seqjax.train import TrainingDiverged, run
from tests.train.toy import ToyModel, ToyTask, final_params, losses, make_config

RESULT_KEYS = {"metrics", "train", "config", "seqjax_version", "git_hash", "git_dirty", "wall_time_s", "device_kind",
               "num_devices", "mesh", "num_processes", "host_allocator", "status", "finished"}


def _assert_contexts_left():
    """No mesh or logical-axis rules stay active after run() (it enters them with ``with``)."""
    assert jax.sharding.get_abstract_mesh().empty
    assert not nn.get_logical_axis_rules()


def _assert_same_params(a, b, tol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol, err_msg=k)


def test_loss_goes_down_and_outputs(tmp_path):
    config = make_config(steps=60, log_every=1, checkpoint_every=25, eval_every=30)
    workdir = tmp_path / "new" / "run"  # created, parents too
    results = run(config, workdir, task=ToyTask(), model=ToyModel())
    assert {p.name for p in workdir.iterdir()} == {"config.json", "results.json", "metrics.jsonl", "train.log", "tb",
                                                  "checkpoints"}
    curve = losses(workdir)
    assert sorted(curve) == list(range(1, 61))
    first, last = np.mean([curve[s] for s in (1, 2, 3)]), np.mean([curve[s] for s in (58, 59, 60)])
    assert last < 0.5 * first, (first, last)
    # results.json: all keys, written to disk, the final eval equals the returned one.
    on_disk = json.loads((workdir / "results.json").read_text())
    assert set(on_disk) == RESULT_KEYS and on_disk == results
    assert results["finished"] is True and results["status"] == "finished" and results["train"]["steps"] == 60
    assert results["train"]["loss"] == pytest.approx(curve[60])
    assert results["train"]["examples_per_s"] > 0 and results["num_devices"] == 1
    assert results["config"]["train"]["steps"] == 60 and results["metrics"]["num_batches"] == 2
    # metrics.jsonl: train lines every step, eval at 30 and at the end.
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "eval"] == [30, 60]
    assert {"loss", "mse", "grad_norm", "lr", "examples_per_s", "tokens_per_s"} <= set(records[0])
    # TensorBoard reads the same losses back.
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(workdir / "tb"))
    acc.Reload()
    tb = {s.step: s.value for s in acc.Scalars("train/loss")}
    np.testing.assert_allclose([tb[s] for s in range(1, 61)], [curve[s] for s in range(1, 61)], rtol=1e-6)
    assert acc.Scalars("eval/mse")[-1].value == pytest.approx(results["metrics"]["mse"], rel=1e-6)
    # Checkpoints: keep_checkpoints=2 of {25, 50, 60}.
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [50, 60]
    # Same steps again: results.json is returned without training (no iterator is made).
    task = ToyTask()
    assert run(config, workdir, task=task, model=ToyModel()) == results
    assert task.iterators_made == 0


def test_data_mesh_8_equals_1(tmp_path):
    curves = {}
    for data in (1, 8):
        config = make_config(steps=6, log_every=1, checkpoint_every=0)
        config.mesh.data = data
        results = run(config, tmp_path / str(data), task=ToyTask(), model=ToyModel())
        assert results["num_devices"] == data
        curves[data] = losses(tmp_path / str(data))
    assert curves[1].keys() == curves[8].keys() == set(range(1, 7))
    np.testing.assert_allclose([curves[8][s] for s in range(1, 7)], [curves[1][s] for s in range(1, 7)], rtol=1e-5)
    assert len(set(curves[1].values())) == 6  # the losses do change from step to step


def test_resume_in_process_equals_straight_run(tmp_path):
    def config(steps):
        c = make_config(steps=steps, log_every=1, checkpoint_every=4, progress=True)
        c.optim.schedule = "constant"  # a cosine's length depends on steps, so it would differ
        return c

    run(config(10), tmp_path / "resumed", task=ToyTask(), model=ToyModel())
    resumed = run(config(16), tmp_path / "resumed", task=ToyTask(), model=ToyModel())
    straight = run(config(16), tmp_path / "straight", task=ToyTask(), model=ToyModel())
    assert "resuming from step 10" in (tmp_path / "resumed" / "train.log").read_text()
    assert resumed["metrics"] == pytest.approx(straight["metrics"], rel=1e-6)
    assert resumed["train"]["loss"] == pytest.approx(straight["train"]["loss"], rel=1e-6)
    a, b = losses(tmp_path / "resumed"), losses(tmp_path / "straight")
    assert a.keys() == b.keys() == set(range(1, 17))
    np.testing.assert_allclose([a[s] for s in range(1, 17)], [b[s] for s in range(1, 17)], rtol=1e-6)
    (pa, meta_a), (pb, meta_b) = final_params(tmp_path / "resumed"), final_params(tmp_path / "straight")
    _assert_same_params(pa, pb)
    assert meta_a["step"] == meta_b["step"] == 16 and meta_a["data_iterator"] == {"step": 16}
    # Killed after the final checkpoint but before results.json: only the evaluation runs again.
    (tmp_path / "straight" / "results.json").unlink()
    again = run(config(16), tmp_path / "straight", task=ToyTask(), model=ToyModel())
    assert again["metrics"] == straight["metrics"] and again["train"]["loss"] == straight["train"]["loss"]
    assert again["train"]["examples_per_s"] is None  # no step ran in that call


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    steps, script = 40, Path(__file__).with_name("resume_script.py")
    workdir = tmp_path / "killed"
    cmd = [sys.executable, str(script), str(workdir), str(steps), "0.05"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt_dir = workdir / "checkpoints"
    deadline = time.time() + 240
    try:
        while not (ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir())):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "results.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = json.loads(done.stdout.strip().splitlines()[-1])
    assert "resuming from step" in (workdir / "train.log").read_text()

    config = make_config(steps=steps, checkpoint_every=5, log_every=1)
    straight = run(config, tmp_path / "straight", task=ToyTask(), model=ToyModel())
    assert killed["metrics"] == pytest.approx(straight["metrics"], rel=1e-6)
    assert killed["loss"] == pytest.approx(straight["train"]["loss"], rel=1e-6)
    a, b = losses(workdir), losses(tmp_path / "straight")
    assert a.keys() == b.keys() == set(range(1, steps + 1))
    np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], rtol=1e-6)
    _assert_same_params(final_params(workdir)[0], final_params(tmp_path / "straight")[0])


def test_nan_loss_raises_and_checkpoints_last_good_state(tmp_path):
    config = make_config(steps=20, log_every=1, checkpoint_every=3)
    with pytest.raises(TrainingDiverged) as info:
        run(config, tmp_path, task=ToyTask(nan_at=7), model=ToyModel())
    message = str(info.value)
    assert "\n" not in message and "step 7" in message and "nan" in message
    params, meta = final_params(tmp_path)
    assert meta["step"] == meta["state_step"] == 7 and meta["data_iterator"] == {"step": 7}
    assert all(np.isfinite(v).all() for v in params.values())
    assert "diverged at step 7" in (tmp_path / "train.log").read_text()
    diverged = json.loads((tmp_path / "results.json").read_text())
    assert diverged["status"] == "diverged" and diverged["finished"] is False and diverged["diverged"]["step"] == 7
    assert info.value.step == 7 and info.value.cause == "loss is nan"
    assert max(losses(tmp_path)) == 7  # steps 1..7 were logged, nothing after
    _assert_contexts_left()


def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


@pytest.mark.parametrize(
    "field,value",
    [
        ("optim.learning_rate", 0.0),
        ("optim.learning_rate", -1e-3),
        ("optim.optimizer", "sgd"),
        ("optim.schedule", "linear"),
        ("optim.warmup_steps", 30),
        ("optim.clip_norm", -1.0),
        ("optim.b2", 1.0),
        ("train.steps", 0),
        ("train.log_every", 0),
        ("train.batch_size", 12),
        ("mesh.data", 9),
        ("mesh.data", 0),
    ],
)
def test_config_errors_name_the_field(tmp_path, field, value):
    config = make_config(steps=20)
    config.mesh.data = 8 if field == "train.batch_size" else 1
    _set(config, field, value)
    task, workdir = ToyTask(), tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        run(config, workdir, task=task, model=ToyModel())
    message = str(info.value)
    named = "config.mesh.data" if field == "train.batch_size" else f"config.{field}"
    assert "\n" not in message and f"config.{field}" in message and named in message, message
    assert repr(value) in message or str(value) in message
    assert task.iterators_made == 0  # raised before anything was built
    assert not workdir.exists()  # nor written


def _real_model_config(**fields):
    """A real seqjax model that fits the toy task: continuous inputs (4 wide), regression head."""
    config = make_config(steps=2)
    config.model = models.default_config()
    config.model.update(dict(mixers="mha", num_layers=1, d_model=8, input="continuous", input_dim=4,
                             head="regression", output_dim=1, mixer_kwargs={"mha": {"num_heads": 2}}))
    config.model.update(fields)
    return config


@pytest.mark.parametrize(
    "fields,match",
    [
        # The model's own check (models.check_length): mha's position table is shorter than the task's 6.
        ({"max_length": 4, "mixer_kwargs": {"mha": {"num_heads": 2, "positions": "learned"}}},
         r"sequence longer than the model allows \(mixer 'mha'"),
        ({"d_model": 0}, r"config\.model\.d_model=0"),  # models.build
    ],
)
def test_a_failing_model_config_creates_no_workdir(tmp_path, fields, match):
    """The checks that need the task or build the model run before the workdir is made too."""
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=match):
        run(_real_model_config(**fields), workdir, task=ToyTask())
    assert not workdir.exists()


def test_a_model_passed_in_need_not_match_config_model(tmp_path):
    """The parameter groups come from the model object: config.model may hold fields seqjax.models does not know."""
    config = make_config(steps=2, log_every=1, checkpoint_every=0)
    config.model.width = 16  # describes the toy model, not a seqjax model
    results = run(config, tmp_path, task=ToyTask(), model=ToyModel())
    assert math.isfinite(results["train"]["loss"])


def test_sequence_longer_than_learned_positions(tmp_path):
    config = make_config(steps=5)
    config.model.positions = "learned"
    config.model.max_length = 4  # the toy task feeds length 6
    with pytest.raises(ConfigError, match=r"config\.model\.max_length=4.*sequence longer than the model allows"):
        run(config, tmp_path / "run", task=ToyTask(), model=ToyModel())
    assert not (tmp_path / "run").exists()
    config.model.positions = "sinusoidal"  # no table to run past: allowed
    assert math.isfinite(run(config, tmp_path / "run", task=ToyTask(), model=ToyModel())["train"]["loss"])


def test_a_folder_holds_one_config(tmp_path):
    config = make_config(steps=4, checkpoint_every=0)
    run(config, tmp_path, task=ToyTask(), model=ToyModel())
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["learning_rate"] == config.optim.learning_rate
    # A different learning rate in the same folder would resume or return the other run's results.
    changed = make_config(steps=4, checkpoint_every=0)
    changed.optim.learning_rate = config.optim.learning_rate * 3
    task = ToyTask()
    with pytest.raises(ConfigError, match=r"holds a run of a different config: config\.optim\.learning_rate=") as info:
        run(changed, tmp_path, task=task, model=ToyModel())
    assert "\n" not in str(info.value) and task.iterators_made == 0
    # Bookkeeping fields may change: more steps extend the run.
    longer = make_config(steps=6, checkpoint_every=0, log_every=2)
    assert run(longer, tmp_path, task=ToyTask(), model=ToyModel())["train"]["steps"] == 6
    # Fewer steps than the newest checkpoint: an error raised inside the mesh
    # context and the open checkpointer, which are left as the error passes.
    (tmp_path / "results.json").unlink()
    with pytest.raises(ConfigError, match=r"config\.train\.steps=3 is below the newest checkpoint .* \(step 6\)"):
        run(make_config(steps=3, checkpoint_every=0), tmp_path, task=ToyTask(), model=ToyModel())
    _assert_contexts_left()


def test_fields_added_after_a_run_started_resume_at_their_default(tmp_path):
    from seqjax import models
    from seqjax.train.config import check_workdir_config

    config = make_config(steps=4)
    config.model = models.default_config()
    saved = json.loads(json.dumps(config.to_dict(), default=str))
    # A run written before the model had `pooling_heads` (and the trainer `log_every`).
    del saved["model"]["pooling_heads"], saved["train"]["log_every"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_workdir_config(config, tmp_path)  # both at their defaults: the same run
    config.model.pooling_heads = config.model.pooling_heads + 3
    with pytest.raises(ConfigError, match=r"config\.model\.pooling_heads=.*\(run has None\)"):
        check_workdir_config(config, tmp_path)


def test_tokens_per_example_counts_the_decoder_side(rng):
    """tokens/s: an encoder–decoder batch counts its source and its decoder inputs; a flat one its length."""
    from seqjax.train.loop import _tokens_per_example

    ls, lt = (int(v) for v in rng.integers(3, 40, size=2))
    src, tgt = np.zeros((2, ls), np.int32), np.zeros((2, lt), np.int32)
    assert _tokens_per_example({"inputs": src, "decoder_inputs": tgt}) == ls + lt
    assert _tokens_per_example({"inputs": src}) == ls
    assert _tokens_per_example({"inputs": np.zeros((2,), np.float32)}) == 1


def test_code_version_is_read_once_per_process(monkeypatch):
    # results.json names the commit the run imported: a commit made while it
    # trains (git answering differently later) must not change it.
    from seqjax.train import provenance, results

    answers = iter(["aaa111\n", " M seqjax/x.py\n", "bbb222\n", ""])
    monkeypatch.setattr(provenance, "run_git", lambda cwd, *args: next(answers))
    monkeypatch.setattr(results, "_built", lambda: None)  # a checkout, not a built install
    results.git_hash.cache_clear()
    results.git_dirty.cache_clear()
    try:
        assert (results.git_hash(), results.git_dirty()) == ("aaa111", True)
        assert (results.git_hash(), results.git_dirty()) == ("aaa111", True)
        monkeypatch.setattr(provenance, "run_git", lambda cwd, *args: None)  # no git: null fields
        results.git_hash.cache_clear()
        results.git_dirty.cache_clear()
        assert (results.git_hash(), results.git_dirty()) == (None, None)
        # Untracked: a new module is code the commit lacks; a run's outputs are not.
        for status, dirty in (("?? seqjax/mixers/new.py\n", True), ("?? runs/a/results.json\n?? b.txt\n", False),
                              ("", False), (" M configs/x.py\n", True)):
            monkeypatch.setattr(provenance, "run_git", lambda cwd, *args, s=status: s)
            results.git_dirty.cache_clear()
            assert results.git_dirty() is dirty, status
    finally:
        results.git_hash.cache_clear()
        results.git_dirty.cache_clear()

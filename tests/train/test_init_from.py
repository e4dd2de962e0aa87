"""``train.init_from``: a new run starts from another run's parameters, copied by path.

The toy task and model of ``tests/train/toy.py`` (in-process) for what is
copied, the report and resuming; ``python -m experiments.icl`` (a subprocess,
as a user runs it) for the one-line errors and their exit status.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from seqjax import parallel
from seqjax.errors import ConfigError
from seqjax.train import run
from seqjax.train.checkpoint import Checkpointer
from seqjax.train.config import validate_config
from seqjax.train.init_from import flat_params
from seqjax.train.loop import restore_or_init, set_up
from tests.train.toy import ToyModel, ToyTask, final_params, make_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


class HeadModel(nn.Module):
    """ToyModel's trunk (``Dense_0``, ``LayerNorm_0``) with another head: ``head`` instead of ``Dense_1``."""

    width: int = 16

    @nn.compact
    def __call__(self, x, segment_ids=None, deterministic=True):
        del segment_ids, deterministic
        h = nn.LayerNorm(name="LayerNorm_0")(nn.gelu(nn.Dense(self.width, name="Dense_0")(x)))
        return nn.Dense(1, name="head")(h)


MATCHED = ["Dense_0/bias", "Dense_0/kernel", "LayerNorm_0/bias", "LayerNorm_0/scale"]
NEW = ["head/bias", "head/kernel"]
DROPPED = ["Dense_1/bias", "Dense_1/kernel"]


def _listing(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A toy run of 3 steps (its only checkpoint: 3) and its final parameters."""
    workdir = tmp_path_factory.mktemp("source") / "run"
    run(make_config(steps=3, checkpoint_every=0), workdir, task=ToyTask(), model=ToyModel())
    params, meta = final_params(workdir)
    assert meta["state_step"] == 3
    return workdir, {k.replace("']['", "/").strip("[']"): v for k, v in params.items()}


def _start(config, workdir, model):
    """set_up + restore_or_init as ``run`` does them: the state before the first step."""
    setup = set_up(config, workdir, validate_config(config), time.time(), task=ToyTask(), model=model)
    with Checkpointer(workdir, keep=config.train.keep_checkpoints) as ckpt, parallel.activate(setup.mesh,
                                                                                             setup.rules):
        return restore_or_init(setup, ckpt)


def test_matched_params_are_the_sources_new_ones_keep_their_init(source, tmp_path, capsys):
    src, src_params = source
    before = _listing(src)
    fresh = _start(make_config(steps=2), tmp_path / "fresh", HeadModel())
    config = make_config(steps=2)
    config.train.init_from = str(src)
    start = _start(config, tmp_path / "run", HeadModel())
    got, init = flat_params(start.state.params), flat_params(fresh.state.params)
    assert sorted(got) == sorted(MATCHED + NEW)
    for path in MATCHED:
        np.testing.assert_array_equal(np.asarray(got[path]), src_params[path], err_msg=path)
        # The source trained 3 steps: its values are not the fresh init's (so the copy did something).
        assert np.max(np.abs(np.asarray(init[path]) - src_params[path])) > 1e-4, path
    for path in NEW:
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(init[path]), err_msg=path)
    # Same shardings as a fresh state (the jitted step's in_shardings), fresh optimiser state, step 0.
    for path in got:
        assert got[path].sharding == init[path].sharding and got[path].dtype == init[path].dtype
    for a, b in zip(jax.tree.leaves(start.state.opt_state), jax.tree.leaves(fresh.state.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(start.state.step) == 0 and start.step == 0
    assert start.init_from["matched"] == MATCHED and start.init_from["new"] == NEW
    assert start.init_from["dropped"] == DROPPED and start.init_from["step"] == 3
    assert (f"init_from {src} (step 3): 4 matched, 2 new (head/bias, head/kernel), 2 dropped "
            "(Dense_1/bias, Dense_1/kernel)") in capsys.readouterr().out
    assert _listing(src) == before  # read-only: nothing created, cleaned or moved in the source


def test_results_record_it_and_a_resume_ignores_init_from(source, tmp_path, capsys):
    src, _ = source
    workdir = tmp_path / "run"
    config = make_config(steps=2, checkpoint_every=0)
    config.train.init_from = str(src / "checkpoints")  # the checkpoints folder works as well
    results = run(config, workdir, task=ToyTask(), model=HeadModel())
    record = results["init_from"]
    assert (len(record["matched"]), len(record["new"]), len(record["dropped"])) == (4, 2, 2)
    assert record["source"] == str(src) and record["step"] == 3
    assert json.loads((workdir / "results.json").read_text())["init_from"] == record
    assert record["message"] in (workdir / "train.log").read_text()
    capsys.readouterr()
    # Resuming (more steps): the run's own checkpoint 2 is restored, init_from not even looked at.
    config.train.steps = 4
    config.train.init_from = str(tmp_path / "missing")
    again = run(config, workdir, task=ToyTask(), model=HeadModel())
    out = capsys.readouterr().out
    assert "resuming from step 2" in out and "init_from" not in out
    assert again["train"]["steps"] == 4 and again["init_from"] == record


def test_a_shape_mismatch_names_the_path_and_both_shapes(source, tmp_path):
    config = make_config(steps=2)
    config.train.init_from = str(source[0])
    with pytest.raises(ConfigError) as e:
        run(config, tmp_path / "run", task=ToyTask(), model=ToyModel(width=8))
    assert str(e.value) == (f"config.train.init_from={str(source[0])!r}: parameter Dense_0/bias has shape (16,) in "
                            "the source but (8,) in this model")
    assert not (tmp_path / "run").exists()


class WideHeadModel(nn.Module):
    """ToyModel with two outputs: ``Dense_1`` (16, 2) where the source has (16, 1)."""

    @nn.compact
    def __call__(self, x, segment_ids=None, deterministic=True):
        del segment_ids, deterministic
        h = nn.LayerNorm(name="LayerNorm_0")(nn.gelu(nn.Dense(16, name="Dense_0")(x)))
        return nn.Dense(2, name="Dense_1")(h)[..., :1]


def test_init_from_skip_keeps_a_prefix_at_its_init(source, tmp_path):
    src, src_params = source
    config = make_config(steps=2)
    config.train.init_from = str(src)
    with pytest.raises(ConfigError, match=r"parameter Dense_1/bias has shape \(1,\) in the source but \(2,\)"):
        run(config, tmp_path / "refused", task=ToyTask(), model=WideHeadModel())
    config.train.init_from_skip = " Dense_1/ , Dense"  # "Dense" is no path component: it skips nothing
    start = _start(config, tmp_path / "run", WideHeadModel())
    fresh = _start(make_config(steps=2), tmp_path / "fresh", WideHeadModel())
    got, init = flat_params(start.state.params), flat_params(fresh.state.params)
    assert start.init_from["skipped"] == DROPPED and start.init_from["matched"] == MATCHED
    assert start.init_from["new"] == [] and start.init_from["dropped"] == []
    assert start.init_from["message"].endswith("4 matched, 0 new, 0 dropped, 2 skipped (Dense_1/bias, Dense_1/kernel)")
    for path in MATCHED:
        np.testing.assert_array_equal(np.asarray(got[path]), src_params[path], err_msg=path)
    for path in DROPPED:
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(init[path]), err_msg=path)


class StateModel(nn.Module):
    """ToyModel with model state: random features in ``constants`` and a running input mean in ``stats``
    (the kinds ``performer``/``sea`` and ``routing``/``longvq`` keep)."""

    @nn.compact
    def __call__(self, x, segment_ids=None, deterministic=True):
        del segment_ids, deterministic
        omega = self.variable("constants", "omega", lambda: jax.random.normal(self.make_rng("params"), x.shape[-1:]))
        mean = self.variable("stats", "mean", lambda: jax.numpy.zeros(x.shape[-1:]))
        if self.is_mutable_collection("stats") and not self.is_initializing():  # training only
            mean.value = 0.5 * mean.value + 0.5 * x.mean(axis=(0, 1))
        h = nn.LayerNorm(name="LayerNorm_0")(nn.gelu(nn.Dense(16, name="Dense_0")(x * omega.value - mean.value)))
        return nn.Dense(1, name="Dense_1")(h)


def test_model_state_is_copied_with_the_params(tmp_path, capsys):
    # The params were trained with the source's random features and statistics: both come along.
    src = tmp_path / "source"
    run(make_config(steps=3, checkpoint_every=0), src, task=ToyTask(), model=StateModel())
    with Checkpointer(src, keep=10, async_save=False) as ckpt:
        _, saved, _ = ckpt.restore_latest()
    other_seed = make_config(steps=2)
    other_seed.seed = 1  # a fresh init draws other features
    fresh = _start(other_seed, tmp_path / "fresh", StateModel())
    config = make_config(steps=2)
    config.seed = 1
    config.train.init_from = str(src)
    start = _start(config, tmp_path / "run", StateModel())
    state_paths = ["constants:omega", "stats:mean"]
    assert start.init_from["matched"] == sorted(MATCHED + DROPPED + state_paths) and start.init_from["new"] == []
    for collection, name in (("constants", "omega"), ("stats", "mean")):
        got, init = np.asarray(start.state.model_state[collection][name]), np.asarray(
            fresh.state.model_state[collection][name])
        np.testing.assert_array_equal(got, np.asarray(saved["model_state"][collection][name]), err_msg=name)
        assert np.max(np.abs(got - init)) > 1e-3, name  # not what a fresh init gives
        assert start.state.model_state[collection][name].sharding == fresh.state.model_state[collection][name].sharding
    # A skip prefix reads the path after the collection: "omega" keeps its fresh init.
    config.train.init_from_skip = "omega"
    skipped = _start(config, tmp_path / "skipped", StateModel())
    assert skipped.init_from["skipped"] == ["constants:omega"]
    np.testing.assert_array_equal(np.asarray(skipped.state.model_state["constants"]["omega"]),
                                  np.asarray(fresh.state.model_state["constants"]["omega"]))
    capsys.readouterr()


def test_bad_sources_are_one_line_errors(source, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    cases = [(tmp_path / "missing", "does not exist"), (tmp_path / "plain", "is not a run folder"),
             (tmp_path / "empty", "no finished checkpoint in"),
             (source[0] / "checkpoints" / "7", "does not exist")]
    for path, phrase in cases:
        config = make_config(steps=2)
        config.train.init_from = str(path)
        with pytest.raises(ConfigError, match=phrase) as e:
            run(config, tmp_path / "run", task=ToyTask(), model=ToyModel())
        assert "\n" not in str(e.value)
        assert not (tmp_path / "run").exists()
    config = make_config(steps=2)  # the placeholder refuses an int; a config file's plain dict need not
    config.train = ml_collections.ConfigDict(dict(config.train.to_dict(), init_from=3))
    with pytest.raises(ConfigError, match=r"config\.train\.init_from=3 must be a path"):
        validate_config(config)


def test_a_pinned_step_folder_is_read(source, tmp_path):
    src, src_params = source
    config = make_config(steps=2)
    config.train.init_from = str(src / "checkpoints" / "3")
    start = _start(config, tmp_path / "run", ToyModel())
    assert start.init_from["step"] == 3 and start.init_from["new"] == [] and start.init_from["dropped"] == []
    for path, value in flat_params(start.state.params).items():
        np.testing.assert_array_equal(np.asarray(value), src_params[path], err_msg=path)


# --- through the command line -----------------------------------------------------------------

TINY = ["--config.task.dim=3", "--config.task.n_points=5", "--config.model.input_dim=3",
        "--config.model.max_length=10", "--config.model.num_layers=1", "--config.model.d_model=8",
        "--config.task.eval_batch_size=16", "--config.train.batch_size=8", "--noconfig.train.progress",
        "--config.optim.warmup_steps=1", "--config.train.steps=2"]


def _cli(workdir, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "experiments.icl", *TINY, *extra, f"--workdir={workdir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def test_cli_missing_source_exits_2_with_one_line(tmp_path):
    r = _cli(tmp_path / "run", f"--config.train.init_from={tmp_path / 'nowhere'}")
    assert r.returncode == 2
    assert _one_error_line(r) == (f"error: config.train.init_from={str(tmp_path / 'nowhere')!r} does not exist; "
                                  "give a run folder or its checkpoints folder")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_extra_layer_starts_and_a_wider_model_exits_2(tmp_path):
    src = tmp_path / "src"
    r = _cli(src)
    assert r.returncode == 0, r.stderr[-3000:]
    # One more layer: block_1 is new, everything else is copied.
    r = _cli(tmp_path / "deeper", "--config.model.num_layers=2", f"--config.train.init_from={src}")
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "deeper" / "results.json").read_text())["init_from"]
    assert record["new"] and all(p.startswith("backbone/block_1/") for p in record["new"])
    assert record["dropped"] == [] and len(record["matched"]) > 0
    assert record["message"] in r.stdout
    # A wider model: the first matched path's shapes differ, before anything is written.
    r = _cli(tmp_path / "wider", "--config.model.d_model=16", f"--config.train.init_from={src}")
    assert r.returncode == 2
    line = _one_error_line(r)
    assert line.startswith(f"error: config.train.init_from={str(src)!r}: parameter ") and "in the source but" in line
    assert not (tmp_path / "wider").exists()

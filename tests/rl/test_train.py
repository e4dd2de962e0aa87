"""The PPO loop: rollouts hold whole reset units, a run writes its records, bad configs fail in one line."""

import json

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.config import load_config
from seqjax.errors import ConfigError
from seqjax.rl import train
from seqjax.rl.command import command, summary

CONFIG = "configs/icrl/icrl.py"


def _tiny(arg, **ppo):
    c = load_config(CONFIG, arg)
    c.model.d_model = 8
    c.ppo.update(dict(num_envs=4, num_minibatches=2, update_epochs=1, units_per_rollout=2, num_updates=2, **ppo))
    c.eval.update(num_envs=8, log_every=1)
    return c


def test_rollout_holds_whole_units_and_resets_follow_dones():
    c = _tiny("model=s5,env=meta_bandit")
    c.env.episode_length, c.env.num_episodes = 3, 2
    s = train.build(c)
    assert s.T == 2 * 6
    params = s.net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 4)))
    traj = train.rollout(s, params, jax.random.PRNGKey(1), 5)
    dones, starts, ends = (np.asarray(traj[k]) for k in ("dones", "starts", "episode_ends"))
    np.testing.assert_array_equal(dones, np.tile(np.arange(12) % 6 == 5, (5, 1)))  # trial ends
    np.testing.assert_array_equal(ends, np.tile(np.arange(12) % 3 == 2, (5, 1)))  # episode ends
    np.testing.assert_array_equal(starts[:, 0], True)
    np.testing.assert_array_equal(starts[:, 1:], dones[:, :-1])  # reset = the previous step's done
    # The recorded log-probs and values are the parallel form's on the rollout (float32 tolerance).
    logits, values = s.net.apply(params, traj["obs"], traj["starts"])
    logp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(traj["actions"])[..., None], -1)
    np.testing.assert_allclose(traj["log_probs"], logp[..., 0], atol=1e-5)
    np.testing.assert_allclose(traj["values"], values, atol=1e-5)
    # Episode returns: a hand sum over each episode's three steps.
    r = np.asarray(traj["rewards"])
    np.testing.assert_allclose(train.episode_returns(s, traj["rewards"]), r.reshape(5, 2, 2, 3).sum(-1))


def test_tiny_run_writes_results_and_curve(tmp_path, capsys):
    c = _tiny("model=s5,env=repeat_previous")
    results = train.run(c, tmp_path / "run")
    m = results["metrics"]
    assert results["finished"] and results["status"] == "finished" and results["train"]["steps"] == 2
    assert m["env_steps"] == 2 * 4 * 2 * 51 and m["curve_env_steps"] == [408, 816]
    assert -1.0 <= m["final_return"] <= 1.0 and -1.0 <= m["random_return"] <= 1.0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all("mean_return" in x and "env_steps" in x for x in lines)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["metrics"] == m
    # A finished folder is reported, not rerun.
    assert train.run(c, tmp_path / "run")["wall_time_s"] == results["wall_time_s"]
    assert "random policy" in summary(results)


@pytest.mark.parametrize("field, value, match", [
    ("model.name", "gru", "config.model.name='gru' is not allowed"),
    ("ppo.num_minibatches", 3, "config.ppo.num_minibatches=3 must divide config.ppo.num_envs=4"),
    ("ppo.lr", "fast", "config.ppo.lr='fast' must be a float"),
    ("ppo.anneal_lr", 1, "config.ppo.anneal_lr=1 must be a bool"),
    ("env.k", 60, r"config.env.k=60 must be an int in \[1, 51\]"),
    ("eval.num_envs", 0, "config.eval.num_envs=0 must be a positive int"),
])
def test_bad_configs_fail_in_one_line(field, value, match, tmp_path):
    c = _tiny("model=s5,env=repeat_previous")
    section, name = field.split(".")
    fields = c[section].to_dict()
    fields[name] = value  # past ConfigDict's own type checks: as a config file could write it
    c[section] = ml_collections.ConfigDict(fields)
    with pytest.raises(ConfigError, match=match) as e:
        train.build(c)
    assert "\n" not in str(e.value)


def test_command_exit_status(tmp_path, capsys):
    assert command(f"{CONFIG}:model=mamba", [], str(tmp_path / "a")) == 2
    assert command(CONFIG, ["ppo.num_envs=0"], str(tmp_path / "b")) == 2
    assert "error: config.ppo.num_envs=0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_ppo_learns_the_meta_bandit(tmp_path):
    """A short run beats the random policy, and the resettable S5 improves across a trial's episodes."""
    c = load_config(CONFIG, "model=s5,env=meta_bandit")
    c.ppo.num_updates = 150
    m = train.run(c, tmp_path / "run")["metrics"]
    assert m["final_return"] > m["random_return"] + 0.5
    assert m["final_return_per_episode"][-1] > m["final_return_per_episode"][0] + 0.1


@pytest.mark.parametrize("scale", ["cpu", pytest.param("paper", marks=pytest.mark.slow)])
def test_every_table_cell_builds(scale):
    """Each cell of configs/tables/icrl.py passes every check a PPO run makes before it starts."""
    from seqjax.config import load_module

    tab = load_module("configs/tables/icrl.py").get_table(scale)
    names = set()
    for cell in tab["cells"]:
        c = load_config(cell.config, cell.arg)
        s = train.build(c)
        assert s.T % s.env.reset_length == 0 and c.name not in names
        names.add(c.name)
    assert len(names) == 6


def test_entrypoint_bad_field_is_one_line_and_exit_2(tmp_path):
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-m", "experiments.icrl", "--config.ppo.num_envs=0",
                        f"--workdir={tmp_path / 'w'}"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stderr.strip().splitlines()) == (2, ["error: config.ppo.num_envs=0 must be a positive int"])
    assert not (tmp_path / "w").exists()

"""``train.stop_at``: a run ends, finished, at the first evaluation that meets its rule (Zoology's 0.99 stop)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seqjax.errors import ConfigError
from seqjax.train import run
from seqjax.train.config import validate_config
from seqjax.train.guards import StopRule
from tests.train.toy import ToyModel, ToyTask, logged, make_config

ROOT = Path(__file__).resolve().parents[2]


def _evals(workdir: Path) -> dict[int, float]:
    return logged(workdir, "eval", "mse")


def test_the_run_ends_at_the_first_evaluation_that_meets_the_rule(tmp_path, capsys):
    full = tmp_path / "full"
    run(make_config(steps=40, eval_every=5, checkpoint_every=0), full, task=ToyTask(), model=ToyModel())
    evals = _evals(full)
    # A threshold that the run meets at an evaluation before its last (the toy's MSE falls as it trains).
    threshold = evals[15]
    expected = min(s for s, v in evals.items() if v <= threshold)
    assert 5 <= expected <= 15

    config = make_config(steps=40, eval_every=5, checkpoint_every=0)
    config.train.stop_at = f"mse<={threshold!r}"
    stopped = tmp_path / "stopped"
    res = run(config, stopped, task=ToyTask(), model=ToyModel())
    assert res["finished"] and res["status"] == "finished"
    assert res["train"]["steps"] == 40 and res["train"]["completed_steps"] == expected
    assert res["train"]["stopped_at"] == {"step": expected, "rule": config.train.stop_at, "value": evals[expected]}
    assert res["metrics"]["mse"] == evals[expected]  # the evaluation that met the rule, not another one
    assert _evals(stopped) == {s: v for s, v in evals.items() if s <= expected}  # no evaluation after it
    assert (stopped / "checkpoints" / str(expected)).is_dir()
    assert json.loads((stopped / "results.json").read_text())["train"]["completed_steps"] == expected
    assert f"stopped at step {expected} of 40" in (stopped / "train.log").read_text()
    capsys.readouterr()
    # Rerunning the command: already finished, nothing trained.
    again = run(config, stopped, task=ToyTask(), model=ToyModel())
    assert "already finished" in capsys.readouterr().out and again == res


def test_a_rule_never_met_runs_every_step(tmp_path):
    config = make_config(steps=10, eval_every=5, checkpoint_every=0)
    config.train.stop_at = "mse<=-1"
    res = run(config, tmp_path / "run", task=ToyTask(), model=ToyModel())
    assert res["train"]["steps"] == 10 and "stopped_at" not in res["train"] and "completed_steps" not in res["train"]


@pytest.mark.parametrize("rule", ["accuracy=0.99", "accuracy=>0.99", "accuracy>=x", ">=0.9", "accuracy>=inf"])
def test_bad_rules_are_one_line_config_errors(rule):
    config = make_config(eval_every=5)
    config.train.stop_at = rule
    with pytest.raises(ConfigError, match=r"^config\.train\.stop_at=.* must be '<eval metric><op><number>'"):
        validate_config(config)


def test_the_four_comparisons_at_the_threshold():
    # Zoology's rule is strict ("> 0.99"): at exactly the threshold it does not stop.
    got = {op: StopRule.parse(f"accuracy{op}0.99").reached({"accuracy": 0.99}) for op in (">=", ">", "<=", "<")}
    assert got == {">=": True, ">": False, "<=": True, "<": False}
    assert StopRule.parse(" ce < 0.5 ").reached({"ce": 0.4}) and StopRule.parse("ce>0.5").reached({"ce": 0.6})


def test_a_rule_needs_evaluations_and_a_metric_the_evaluation_has(tmp_path):
    config = make_config(eval_every=0)
    config.train.stop_at = "mse<=0.1"
    with pytest.raises(ConfigError, match=r"needs config\.train\.eval_every > 0"):
        validate_config(config)
    with pytest.raises(ConfigError) as e:
        StopRule.parse("accuracy>=0.99").reached({"mse": 0.5, "num_batches": 2})
    assert str(e.value) == ("config.train.stop_at='accuracy>=0.99': the evaluation has no metric 'accuracy'; "
                            "allowed: mse, num_batches")


def test_cli_bad_rule_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "experiments.mqar", "--config.train.eval_every=100",
                        "--config.train.stop_at=accuracy=0.99", f"--workdir={tmp_path / 'run'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert [line for line in r.stderr.splitlines() if line.strip()] == [
        "error: config.train.stop_at='accuracy=0.99' must be '<eval metric><op><number>' with <op> one of >=, >, <=, "
        "< (e.g. 'accuracy>0.99'), or '' (never)"]
    assert not (tmp_path / "run").exists()

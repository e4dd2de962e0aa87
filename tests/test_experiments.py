"""The entrypoints end to end: bad configs fail in one line; tiny real runs feed the
reports and the notebooks (which CI executes here)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from seqjax.experiment import load_config, reproduce
from tests.notebooks import execute_notebook

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize(
    "args, field",
    [
        (["--config=configs/icl/regression.py:model=mambo"], "model='mambo'"),
        (["--config=configs/icl/regression.py:fc=cubic"], "fc='cubic'"),
        (["--config.optim.learning_rate=-0.1"], "config.optim.learning_rate"),
        (["--config.model.positions=learned", "--config.task.n_points=40"], "max_length"),
        (["--config.model.mixers=mha,foo"], "config.model.mixers"),
        # Unknown and misspelt fields name the closest valid ones.
        (["--config.task.foo=1"], "config.task has no field 'foo'; its fields: baselines, boosting_depth"),
        (["--config.task.ilwd_batchsize=0"], "did you mean config.task.ilwd_batch_size"),
        (["--config.task.dim=abc"], "config.task.dim must be an int, not 'abc'"),
        # A kwarg of another function class: the task names the classes that take it.
        (["--config.task.task_kwargs.window=5"], "'window' is a kwarg of function_class=sliding_window"),
    ],
)
def test_bad_config_fails_at_start_in_one_line(tmp_path, args, field):
    r = _cli("experiments.icl", *args, f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "w").exists()  # a bad config writes nothing


def _tiny_icl(steps=30):
    c = load_config("configs/icl/regression.py", "fc=linear,model=transformer,scale=cpu")
    c.task.dim, c.task.n_points, c.model.input_dim, c.model.max_length = 3, 7, 3, 14
    c.model.num_layers, c.model.d_model = 1, 16
    c.task.eval_batch_size, c.task.ilwd_batch_size = 64, 8
    c.train.steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = steps, 16, 10, steps
    c.train.progress = False
    c.optim.warmup_steps = 5
    return c


def _tiny_icll(data_dir, model):
    c = load_config("configs/icll/regbench.py", f"model={model},train_dfas=40,scale=cpu")
    c.task.data_dir = str(data_dir)
    c.task.num_eval_dfas, c.task.eval_examples = 10, 10
    c.task.num_strings, c.task.string_length, c.task.max_length = (2, 3), (1, 4), 24
    c.model.max_length = 24
    c.model.d_model = 16
    c.model.mixers, c.model.num_layers = ("ngram,mha", 2) if model.endswith("+ngram") else (model, 1)
    c.train.steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = 20, 8, 10, 20
    c.train.progress = False
    c.optim.warmup_steps = 5
    return c


def test_tiny_runs_reports_and_notebooks(tmp_path):
    from seqjax import train

    icl_dir = tmp_path / "icl"
    res = train.run(_tiny_icl(), str(icl_dir / "linear-transformer"))
    assert res["finished"] and len(res["metrics"]["error_per_n"]["model"]) == 7
    icll_dir = tmp_path / "icll"
    for model in ("mha", "mha+ngram"):
        res = train.run(_tiny_icll(tmp_path / "data", model), str(icll_dir / model))
        assert 0.0 <= res["metrics"]["accuracy"] <= 1.0 and set(res["metrics"]["ngram"]) == {"1", "2", "3"}
        lines = (icll_dir / model / "metrics.jsonl").read_text().splitlines()
        losses = [m["loss"] for m in map(json.loads, lines) if m.get("split") == "train" and "loss" in m]
        # From ~ln 20 = 3.0: even 20 steps learn the letter/separator frequencies.
        assert losses[-1] < losses[0] - 0.2, f"{model}: training did not move the loss: {losses}"
    for name, folder in (("icl", icl_dir), ("icll", icll_dir)):
        outputs, images = execute_notebook(name, folder)
        assert "finished" in outputs and " 0 finished" not in outputs
        assert images, f"{name} notebook drew nothing"


def test_reproduce_runs_cells_skips_finished_and_survives_divergence(tmp_path, monkeypatch, capsys):
    from seqjax import experiment, train

    calls = []
    real_run = train.run

    def fake_load(path, arg):
        return _tiny_icl(steps=12)

    def run(config, workdir, **kwargs):
        calls.append(pathlib.Path(workdir).name)
        if workdir.endswith("linear-mamba"):
            raise train.TrainingDiverged("loss=nan at step 3")
        return real_run(config, workdir, **kwargs)

    monkeypatch.setattr(experiment, "load_config", fake_load)
    monkeypatch.setattr(train, "run", run)
    only = ["linear-transformer", "linear-mamba"]
    assert reproduce("icl", "cpu", str(tmp_path), only=only, repo=ROOT) == 1
    err = capsys.readouterr().err
    assert "error: cell linear-mamba: loss=nan" in err and "cells that diverged: linear-mamba" in err
    assert calls == only
    assert "transformer" in (tmp_path / "icl-cpu" / "report.md").read_text()
    # Again: the finished cell returns its results.json without training; the diverged one is retried.
    assert reproduce("icl", "cpu", str(tmp_path), only=["linear-transformer"], repo=ROOT) == 0
    assert json.loads((tmp_path / "icl-cpu" / "linear-transformer" / "results.json").read_text())["finished"]
    log = (tmp_path / "icl-cpu" / "linear-transformer" / "train.log").read_text()
    assert log.count("starting") == 1 and "resuming" not in log


def _table_repo(tmp_path, cells: str) -> pathlib.Path:
    repo = tmp_path / "repo"
    (repo / "configs" / "tables").mkdir(parents=True)
    (repo / "configs" / "tables" / "chain.py").write_text(
        "from seqjax.config import Cell\n\n"
        f"def get_table(scale):\n    return {{'kind': 'lra', 'columns': ['listops'], 'title': 't', 'cells': {cells}}}\n")
    return repo


def test_reproduce_starts_a_cell_from_an_earlier_cells_run(tmp_path, monkeypatch, capsys):
    """``Cell.init_from``: the cell's config gets ``train.init_from`` = the source cell's run folder."""
    from seqjax import experiment, train

    seen = {}
    monkeypatch.setattr(experiment, "load_config", lambda path, arg: _tiny_icl(steps=12))
    monkeypatch.setattr(train, "run", lambda config, workdir, **kw: seen.update(
        {pathlib.Path(workdir).name: config.train.init_from}) or {})
    cells = "[Cell('a+pretrain', 'x.py', ''), Cell('a+spt', 'x.py', '', init_from='a+pretrain')]"
    assert reproduce("chain", "cpu", str(tmp_path / "runs"), repo=_table_repo(tmp_path, cells)) == 0
    assert seen == {"a+pretrain": None, "a+spt": str(tmp_path / "runs" / "chain-cpu" / "a+pretrain")}


def test_reproduce_refuses_init_from_a_later_or_unknown_cell(tmp_path, monkeypatch, capsys):
    from seqjax import experiment

    monkeypatch.setattr(experiment, "load_config", lambda path, arg: _tiny_icl(steps=12))
    cells = "[Cell('a+spt', 'x.py', '', init_from='a+pretrain'), Cell('a+pretrain', 'x.py', '')]"
    assert reproduce("chain", "cpu", str(tmp_path / "runs"), repo=_table_repo(tmp_path, cells)) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: cell a+spt: init_from='a+pretrain' is not an earlier cell of the table"
    assert not (tmp_path / "runs" / "chain-cpu").exists()

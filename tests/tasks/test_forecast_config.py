"""The forecast configs (configs/forecast/informer.py): CPU and paper settings, the manual dir, bad arguments,
every task field documented, and a tiny end-to-end run through the trainer."""

import json
import pathlib

import numpy as np
import pytest

from experiments.forecast import run_summary
from seqjax import experiment, models, tasks
from seqjax.config import load_config
from seqjax.errors import ConfigError
from seqjax.models import informer

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/forecast/informer.py"


@pytest.mark.parametrize("arg,channels,marks", [("model=informer", 1, 2), ("model=mha,dataset=elnino", 1, 1),
                                                ("model=lstm,decoder=no,dataset=macrodata", 12, 1)])
def test_cpu_configs_build_task_and_model(arg, channels, marks):
    c = load_config(CONFIG, arg)
    task = experiment.prepare(c, num_devices=1).task  # every check a run makes before training
    model = models.build(c.model)  # dispatched on config.model.architecture = "informer"
    assert isinstance(model, informer.Informer)
    assert (task.num_channels, task.num_marks) == (channels, marks) and c.model.channels == channels
    assert task.max_length == task.seq_len and c.model.architecture == "informer"
    assert (c.train.batch_size, c.optim.learning_rate, c.model.d_model) == (32, 1e-3, 64)
    assert bool(model.decoder_layers) == ("decoder=no" not in arg)


def _ett_file(path, rows=14400):
    dates = np.datetime64("2016-07-01T00:00") + np.arange(rows).astype("timedelta64[h]")
    values = np.random.default_rng(0).normal(size=(rows, 7))
    lines = ["date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT"] + [
        str(d).replace("T", " ") + ":00," + ",".join(f"{v:.3f}" for v in row) for d, row in zip(dates, values)]
    path.write_text("\n".join(lines) + "\n")


def test_paper_config_reads_the_manual_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQJAX_DATA", str(tmp_path))
    c = load_config(CONFIG, "scale=paper,pred_len=168")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'informer' / 'ETTh1.csv'} not found; expected ETTh1.csv"):
        tasks.build(c.task)
    (tmp_path / "informer").mkdir()
    _ett_file(tmp_path / "informer" / "ETTh1.csv")
    task = experiment.prepare(c, num_devices=1).task  # the paper cell passes every check of a run
    assert (task.num_channels, task.num_marks, task.seq_len, task.label_len, task.pred_len) == (7, 4, 168, 168, 168)
    assert task.borders["test"] == (11520 - 168, 14400)
    m = c.model
    assert (m.d_model, m.num_heads, m.num_encoder_layers, m.num_decoder_layers, m.mlp_ratio, m.dropout) == (
        512, 8, 2, 1, 4.0, 0.05)
    assert m.mixer_kwargs.probsparse.factor == 5.0 and m.distil and m.channels == 7
    assert (c.optim.learning_rate, c.train.batch_size, c.train.steps) == (1e-4, 32, 6 * ((8640 - 168 - 168 + 1) // 32))
    s = load_config(CONFIG, "scale=paper,features=S,pred_len=720")
    assert (s.task.seq_len, s.task.label_len, s.model.channels) == (720, 336, 1)


@pytest.mark.parametrize("arg,match", [("dataset=ETTh1", "dataset='ETTh1' is not allowed with scale=cpu"),
                                       ("model=nope", "model='nope' is not allowed"),
                                       ("scale=paper,pred_len=100", "pred_len=100 is not allowed"),
                                       ("decoder=maybe", "decoder='maybe' is not allowed"),
                                       ("pred_len=abc", r"^config argument pred_len='abc' must be an int > 0"),
                                       ("scale=paper,pred_len=-24", "pred_len='-24' must be an int > 0")])
def test_bad_arguments(arg, match):
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIG, arg)


def test_every_task_field_is_in_the_config_and_documented():
    import seqjax.tasks.forecast as forecast

    c = load_config(CONFIG)
    assert set(forecast._DEFAULTS) <= set(c.task.keys())
    text = (ROOT / "docs/forecast.md").read_text()
    assert not [k for k in c.task.keys() if k != "name" and f"`{k}`" not in text]


@pytest.mark.slow  # ~50 s on 2 shared cores (26 s CPU): compiles a train step and a predict
def test_a_tiny_informer_run_writes_results(tmp_path, capsys):
    overrides = ["train.steps=4", "optim.warmup_steps=1", "train.batch_size=4", "train.progress=false",
                 "task.eval_examples=5", "task.eval_batch_size=4", "model.d_model=16"]
    status = experiment.command(f"{CONFIG}:model=informer,dataset=elnino", overrides, str(tmp_path / "w"),
                                run_summary)
    assert status == 0
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    m = results["metrics"]
    assert m["num_windows"] == 5 and "repeat-last MSE" in capsys.readouterr().out
    for key in ("mse", "mae", "baseline_mse", "linear_mse"):
        assert np.isfinite(m[key]) and m[key] > 0
    assert run_summary(results).splitlines()[1].startswith(f"MSE {m['mse']:.4f}  MAE {m['mae']:.4f}")

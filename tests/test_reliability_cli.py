"""Reliability of the command line: every bad config file, bad ``--workdir`` and structural
model error ends as one ``error:`` line, exit status 2, no traceback, and nothing written;
``reproduce`` shows a diverged cell as "diverged" and keeps going.

Cases whose point is the real process (exit status, no traceback on stderr) run
``python -m experiments.icl`` as a subprocess; the others call
:func:`seqjax.experiment.command` in-process (the same code after flag parsing).
Every case fails before training, so the file takes seconds.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from seqjax import experiment
from seqjax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
ICL = str(ROOT / "configs/icl/regression.py")
# Fail fast if a case ever got as far as training: one step, no warm-up.
QUICK = ["train.steps=1", "optim.warmup_steps=0", "train.progress=false"]


def _cli(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "experiments.icl", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _command(capsys, spec, overrides, workdir):
    """``seqjax.experiment.command`` in-process: (exit status, stderr lines)."""
    status = experiment.command(spec, [*QUICK, *overrides], workdir)
    return status, capsys.readouterr().err.strip().splitlines()


# --- config files ---------------------------------------------------------------------------

FILES = {
    "empty": ("", "config file '{f}' defines no get_config(arg)"),
    "no_get_config": ("x = 1\n", "config file '{f}' defines no get_config(arg)"),
    "raises": ("import os\nraise RuntimeError('boom')\n", "config file '{f}' failed to load (line 2): RuntimeError: boom"),
    "syntax": ("def get_config(arg:\n", "config file '{f}' failed to load (line 1): SyntaxError: '(' was never closed"),
    "get_config_raises": ("def get_config(arg):\n    m = {}\n    return m['mixer_kwargs']\n",
                          "config file '{f}': get_config(None) failed (line 3): KeyError: 'mixer_kwargs'"),
    "wrong_signature": ("def get_config():\n    return {}\n",
                        "config file '{f}': get_config(None) failed: TypeError: get_config() takes 0 positional "
                        "arguments but 1 was given"),
    "returns_int": ("def get_config(arg):\n    return 5\n", "config file '{f}': get_config returned int, not a ConfigDict"),
}


@pytest.mark.parametrize("case", sorted(FILES))
def test_a_bad_config_file_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    text, line = FILES[case]
    path = tmp_path / f"{case}.py"
    path.write_text(text)
    status, err = _command(capsys, str(path), [], str(tmp_path / "w"))
    assert (status, err) == (2, ["error: " + line.format(f=path)])
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("spec, line", [
    ("", "--config is empty; give a config file: --config=path/to/config.py[:arg]"),
    (":fc=linear", "--config is empty; give a config file: --config=path/to/config.py[:arg]"),
    ("missing.py", "config file 'missing.py' does not exist (relative paths start at {cwd})"),
    (".", "config file '.' is not a file (relative paths start at {cwd})"),
])
def test_an_empty_or_missing_config_path_is_one_line(spec, line, tmp_path, capsys):
    status, err = _command(capsys, spec, [], str(tmp_path / "w"))
    assert (status, err) == (2, ["error: " + line.format(cwd=pathlib.Path.cwd())])
    assert not (tmp_path / "w").exists()


def test_a_plain_dict_from_get_config_is_a_config(tmp_path):
    path = tmp_path / "plain.py"
    path.write_text("def get_config(arg):\n    return {'name': 'x', 'train': {'steps': 3}}\n")
    from seqjax.config import load_config

    config = load_config(path)
    assert config.train.steps == 3 and config.name == "x"


@pytest.mark.parametrize("workdir, line", [
    ("", "--workdir is empty; give a folder, or leave the flag out for runs/<config.name>"),
    ("  ", "--workdir is empty; give a folder, or leave the flag out for runs/<config.name>"),
    ("{file}", "--workdir={file} is a file, not a folder; give a folder"),
])
def test_a_bad_workdir_is_one_line(workdir, line, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default folder runs/<name> would land here
    (tmp_path / "afile").write_text("x")
    file = str(tmp_path / "afile")
    status, err = _command(capsys, ICL, [], workdir.format(file=file))
    assert (status, err) == (2, ["error: " + line.format(file=file)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# --- structural model errors: one line, before the run folder exists -----------------------

MODEL_ERRORS = [
    ("model=transformer", ["model.d_model=65"],
     "config.model.mixer_kwargs.mha.num_heads=4 must divide d_model=65 (config.model.d_model=65)"),
    ("model=mamba2", ["model.mixer_kwargs.mamba2.headdim=48"],
     "config.model.mixer_kwargs.mamba2.headdim=48 must divide d_inner = expand * d_model = 128 "
     "(config.model.d_model=64)"),
    ("model=retnet", ["model.mixer_kwargs.retnet.num_heads=3"],
     "config.model.mixer_kwargs.retnet.num_heads=3 must divide d_model=64 (config.model.d_model=64)"),
    ("model=mlstm", ["model.mixer_kwargs.mlstm.num_heads=3"],
     "config.model.mixer_kwargs.mlstm.num_heads=3 must divide d_model=64 (config.model.d_model=64)"),
    ("model=transformer", ["model.d_model=12"],
     "config.model.mixer_kwargs.mha.positions='rope' needs an even head dimension, got d_model // num_heads = 3; "
     "set head_dim (config.model.d_model=12)"),
    ("model=mamba2", ["model.mixer_kwargs.mamba2.ngroups=3"],
     "config.model.mixer_kwargs.mamba2.ngroups=3 must divide the 2 heads (d_inner / headdim)"),
    ("model=transformer", ["model.mixers=foo"],
     "config.model.mixers='foo': unknown mixer 'foo'; allowed: "),
    ("model=transformer", ["model.mixer_kwargs.mha.heads=2"],
     "config.model.mixer_kwargs.mha.heads is not a field of mixer 'mha'; allowed: "),
    ("model=transformer", ["model.mixer_kwargs.mha.num_heads=0"],
     "config.model.mixer_kwargs.mha.num_heads=0 must be an int >= 1"),
    ("model=transformer", ["model.mixer_kwargs.foo.d_state=4"],
     "config.model.mixer_kwargs has unknown mixer"),
]


@pytest.mark.parametrize("arg, overrides, line", MODEL_ERRORS, ids=[o[0] for _, o, _ in MODEL_ERRORS])
def test_structural_model_errors_are_one_line_before_the_workdir(arg, overrides, line, tmp_path, capsys):
    status, err = _command(capsys, f"{ICL}:{arg}", overrides, str(tmp_path / "w"))
    assert status == 2 and len(err) == 1 and err[0].startswith("error: " + line), err
    assert not (tmp_path / "w").exists()


def test_a_missing_mixer_kwargs_key_takes_the_defaults(tmp_path):
    """A config file whose model section lacks ``mixer_kwargs`` (or sets it to None) is valid."""
    path = tmp_path / "c.py"
    path.write_text(f"from seqjax.config import load_config\n\ndef get_config(arg):\n"
                    f"    c = load_config({ICL!r})\n    del c.model['mixer_kwargs']\n    return c\n")
    from seqjax.config import load_config

    assert experiment.prepare(load_config(path)).task.name == "icl"


# --- through the real command line ----------------------------------------------------------


def test_the_real_command_line_heads_error_then_the_fixed_rerun_in_the_same_folder(tmp_path):
    """The issue's case: the heads error wrote config.json, so the corrected rerun was refused."""
    work = tmp_path / "w"
    r = _cli(f"--config={ICL}", "--config.model.d_model=65", f"--workdir={work}", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: config.model.mixer_kwargs.mha.num_heads=4 must divide d_model=65 (config.model.d_model=65)"]
    assert not work.exists()
    # The fixed command must now pass every check that comes before the run folder.
    config = experiment.load_config(ICL)
    config.model.d_model = 64
    experiment.prepare(config)


@pytest.mark.parametrize("args, line", [
    (["--config={tmp}/raises.py"], "error: config file '{tmp}/raises.py' failed to load (line 1): RuntimeError: boom"),
    (["--config=" + ICL, "--workdir="],
     "error: --workdir is empty; give a folder, or leave the flag out for runs/<config.name>"),
])
def test_the_real_command_line_prints_one_line_and_exits_2(args, line, tmp_path):
    (tmp_path / "raises.py").write_text("raise RuntimeError('boom')\n")
    r = _cli(*[a.format(tmp=tmp_path) for a in args], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [line.format(tmp=tmp_path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raises.py"]  # no runs/ folder either


# --- reproduce: a diverged cell ---------------------------------------------------------------


def _icl_results(name, fc, error, *, status=None):
    n = list(range(1, 12))
    result = {"config": {"name": name, "task": {"name": "icl", "function_class": fc, "dim": 5},
                         "model": {"mixers": "mha"}}}
    if status:
        return {**result, "status": status, "finished": False}
    curve = [error] * len(n)
    return {**result, "finished": True, "metrics": {"n": n, "dim": 5, "error_per_n": {
        "model": curve, "least_squares": curve, "knn3": curve, "averaging": curve}}}


def test_reproduce_shows_a_diverged_cell_and_runs_the_others(tmp_path, capsys, monkeypatch):
    """The first cell diverges (its results.json says so); the second still trains; the report says "diverged"."""
    (tmp_path / "configs" / "tables").mkdir(parents=True)
    (tmp_path / "configs" / "tables" / "icl.py").write_text(
        "from seqjax.config import Cell\n\n"
        "def get_table(scale):\n"
        f"    cells = [Cell('bad', {ICL!r}, 'fc=linear'), Cell('good', {ICL!r}, 'fc=linear,model=lstm')]\n"
        "    return {'kind': 'icl', 'cells': cells, 'paper': None, 'title': 'T'}\n")
    ran = []

    def fake_run(config, workdir, task=None):
        ran.append(pathlib.Path(workdir).name)
        diverged = pathlib.Path(workdir).name == "bad"
        results = _icl_results(config.name, "linear", 0.25, status="diverged" if diverged else None)
        pathlib.Path(workdir).mkdir(parents=True)
        (pathlib.Path(workdir) / "results.json").write_text(json.dumps(results))
        return results

    monkeypatch.setattr("seqjax.train.run", fake_run)
    status = experiment.reproduce("icl", "cpu", str(tmp_path / "runs"), repo=tmp_path)
    err = capsys.readouterr().err
    assert status == 1 and ran == ["bad", "good"]
    assert f"error: cell bad: training diverged (see {tmp_path / 'runs' / 'icl-cpu' / 'bad'})" in err
    assert "cells that diverged: bad" in err
    md = (tmp_path / "runs" / "icl-cpu" / "report.md").read_text()
    assert "| icl-linear-transformer-cpu | diverged | diverged | diverged |" in md
    assert "| icl-linear-lstm-cpu | 0.250 | 0.250 | 0.250 |" in md


def test_reproduce_continues_past_a_cell_that_raises_diverged(tmp_path, capsys, monkeypatch):
    from seqjax import train

    (tmp_path / "configs" / "tables").mkdir(parents=True)
    (tmp_path / "configs" / "tables" / "icl.py").write_text(
        "from seqjax.config import Cell\n\n"
        "def get_table(scale):\n"
        f"    return {{'kind': 'icl', 'paper': None, 'title': 'T', 'cells': [Cell('a', {ICL!r}, ''), "
        f"Cell('b', {ICL!r}, 'model=lstm')]}}\n")
    ran = []

    def fake_run(config, workdir, task=None):
        ran.append(pathlib.Path(workdir).name)
        if len(ran) == 1:
            raise train.TrainingDiverged("training diverged at step 3: loss=nan")
        return _icl_results(config.name, "linear", 0.5)

    monkeypatch.setattr("seqjax.train.run", fake_run)
    assert experiment.reproduce("icl", "cpu", str(tmp_path / "runs"), repo=tmp_path) == 1
    assert ran == ["a", "b"]
    assert "error: cell a: training diverged at step 3: loss=nan" in capsys.readouterr().err


def test_config_error_type_is_what_the_entrypoint_catches():
    """The data errors below are ConfigErrors, so ``main`` turns them into one line and exit 2."""
    from seqjax.data.builders import _manual

    assert issubclass(_manual.MissingArchiveError, ConfigError)
    assert issubclass(_manual.MissingArchiveError, FileNotFoundError)
    assert issubclass(_manual.DamagedArchiveError, ConfigError)

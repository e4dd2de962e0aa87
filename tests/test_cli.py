"""The command line: ``--config.x=y`` overrides, every documented task field settable, one-line
errors, config files loaded from anywhere, and batches that the devices do not divide.

Most checks run in-process on :mod:`seqjax.config` and :func:`seqjax.experiment.prepare`;
the ones about the real command line (exit status, no traceback, a run that trains)
run ``python -m experiments.<x>`` as a subprocess.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

from seqjax import experiment
from seqjax.config import Override, apply_overrides, fields, load_config, load_module, split_overrides
from seqjax.errors import ConfigError
from seqjax.tasks import build
from seqjax.tasks import icl as icl_task

ROOT = pathlib.Path(__file__).resolve().parents[1]
ICL = str(ROOT / "configs/icl/regression.py")


def _cli(*args, devices=None, cwd=ROOT, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# --- parsing overrides ---------------------------------------------------------------------


def test_split_overrides_accepts_the_absl_forms():
    argv = ["--config=c.py:a=1", "--config.train.steps=5", "--config.optim.learning_rate", "-0.1",
            "--noconfig.train.progress", "-config.task.dim=3", "--config.train.progress", "--workdir=w"]
    overrides, rest = split_overrides(argv)
    assert rest == ["--config=c.py:a=1", "--workdir=w"]
    assert overrides == [Override("train.steps", "5"), Override("optim.learning_rate", "-0.1"),
                         Override("train.progress", None, negated=True), Override("task.dim", "3"),
                         Override("train.progress", None)]


def test_values_parse_as_the_field_type():
    c = ConfigDict({"i": 1, "f": 0.5, "b": True, "s": "x", "t": (1, 2), "names": ("a",), "p": placeholder(float),
                    "n": None, "d": {"k": 1}})
    apply_overrides(c, ["i=1e3", "f=2", "b=false", "s=3", "t=4,5", "names=x,y", "p=1", "n=[1, 2]", "d.k=7"])
    assert (c.i, c.f, c.b, c.s, c.t, c.names, c.p, c.n, c.d.k) == (1000, 2.0, False, "3", (4, 5), ("x", "y"), 1.0,
                                                                  [1, 2], 7)
    apply_overrides(c, ["p=None", "t=(7,)", "b", "s=none"])
    assert c.p is None and c.t == (7,) and c.b is True and c.s == "none"  # only "None" is None
    for bad, msg in [("i=2.5", "config.i must be an int, not '2.5'"), ("b=maybe", "must be true or false"),
                     ("f=fast", "config.f must be a float"), ("i", "config.i is an int; give a value"),
                     ("d=3", "config.d is a section (fields: k)")]:
        with pytest.raises(ConfigError, match=re.escape(msg)) as e:
            apply_overrides(c, [bad])
        assert "\n" not in str(e.value)


def test_unknown_fields_name_the_closest_valid_ones():
    c = load_config(ICL)
    with pytest.raises(ConfigError, match=r"^--config.task.ilwd_batchsize=0: config.task has no field "
                                          r"'ilwd_batchsize'; did you mean config.task.ilwd_batch_size"):
        apply_overrides(c, [Override("task.ilwd_batchsize", "0")])
    with pytest.raises(ConfigError, match=r"config.train has no field 'learning_rate'; did you mean "
                                          r"config.optim.learning_rate\?"):
        apply_overrides(c, ["train.learning_rate=0.1"])
    with pytest.raises(ConfigError, match=r"config has no field 'trian'; did you mean config.train\?"):
        apply_overrides(c, ["trian.steps=3"])


def test_open_maps_take_new_keys_and_their_owner_checks_them():
    c = load_config(ROOT / "configs/lra/pathx.py", "model=mamba,scale=paper")
    apply_overrides(c, ["model.mixer_kwargs.mamba.d_state=8", "task.builder_config=None",
                        "task.builder_kwargs.size=32", "task.builder_kwargs.difficulty=easy"])
    assert c.model.mixer_kwargs.mamba.d_state == 8
    assert c.task.builder_kwargs.to_dict() == {"size": 32, "difficulty": "easy"}
    assert build(c.task).builder_config().name.startswith("32_easy")
    apply_overrides(c, ["model.mixer_kwargs.mamba.d_stat=8"])
    with pytest.raises(ConfigError, match=r"config.model.mixer_kwargs.mamba.d_stat is not a field of mixer 'mamba'"):
        experiment.prepare(c, num_devices=1)
    cpu = apply_overrides(load_config(ROOT / "configs/lra/pathfinder.py"), ["task.builder_kwargs=None",
                                                                            "task.builder_config=32_hard"])
    assert cpu.task.builder_kwargs is None and build(cpu.task).builder_config() == "32_hard"


@pytest.mark.parametrize("config, doc", [("configs/icll/regbench.py", "docs/regbench.md"),
                                         ("configs/lra/listops.py", "seqjax/tasks/lra.py"),
                                         ("configs/mqar/mqar.py", "docs/mqar.md"),
                                         ("configs/mqar/set_disjointness.py", "docs/mqar.md")])
def test_every_icll_lra_and_mqar_task_field_is_in_the_config_and_documented(config, doc):
    c = load_config(ROOT / config)
    module = sys.modules[type(build(c.task)).__module__]
    assert set(module._DEFAULTS) <= set(c.task.keys())  # every field the task reads can be overridden
    text = (ROOT / doc).read_text()
    assert not [k for k in c.task.keys() if k != "name" and f"``{k}``" not in text and f"`{k}`" not in text]
    apply_overrides(c, ["task.eval_batch_size=5", "task.eval_examples=7"])
    task = build(c.task)
    assert (task.eval_batch_size, task.eval_examples) == (5, 7)


# --- every documented ICL field -----------------------------------------------------------

# (config argument, override, what the built task must show). Together they set every
# field of seqjax.tasks.icl.default_config (checked below).
ICL_FIELDS = [
    ("", "function_class=quadratic", lambda t: t.function_class == "quadratic"),
    ("", "dim=4", lambda t: t.dim == 4),
    ("", "n_points=9", lambda t: t.n_points == 9 and t.max_length == 18),
    ("", "noise_std=0.25", lambda t: t.noise_std == 0.25),
    ("fc=sliding_window", "task_kwargs.window=5", lambda t: t.task_kwargs == {"window": 5}),
    ("fc=sparse_linear", "task_kwargs.sparsity=2", lambda t: t.task_kwargs == {"sparsity": 2}),
    ("fc=relu2nn", "task_kwargs.hidden_size=10", lambda t: t.task_kwargs == {"hidden_size": 10}),
    ("fc=decision_tree", "task_kwargs.depth=2", lambda t: t.task_kwargs == {"depth": 2}),
    ("fc=fourier", "task_kwargs.max_freq=4", lambda t: t.task_kwargs["max_freq"] == 4),
    ("fc=fourier", "task_kwargs.half_period=2.5", lambda t: t.task_kwargs["half_period"] == 2.5),
    ("fc=fourier_mixture", "task_kwargs.min_freq=3", lambda t: t.task_kwargs["min_freq"] == 3
     and t.baseline_kwargs["bayes_fourier"]["max_freqs"] == tuple(range(3, 11))),
    ("", "curriculum.enabled=true", lambda t: t.curriculum is not None),
    ("scale=paper", "curriculum.dim_start=6", lambda t: t.curriculum.dim_start == 6),
    ("scale=paper", "curriculum.dim_end=19", lambda t: t.curriculum.dim_end == 19),
    ("scale=paper", "curriculum.dim_inc=2", lambda t: t.curriculum.dim_inc == 2),
    ("scale=paper", "curriculum.points_start=13", lambda t: t.curriculum.points_start == 13),
    ("scale=paper", "curriculum.points_end=40", lambda t: t.curriculum.points_end == 40),
    ("scale=paper", "curriculum.points_inc=3", lambda t: t.curriculum.points_inc == 3),
    ("scale=paper", "curriculum.interval=100", lambda t: t.curriculum.interval == 100),
    ("", "eval_batch_size=32", lambda t: t.eval_batch_size == 32),
    ("", "eval_seed=7", lambda t: t.eval_seed == 7),
    ("", "eval_chunk_size=64", lambda t: t.eval_chunk_size == 64),
    ("", "baselines=least_squares,knn5", lambda t: t.baselines == ("least_squares", "knn5")),
    ("", "ridge_lambda=0.5", lambda t: t.baseline_kwargs["ridge"]["lam"] == 0.5),
    ("", "gd_steps=3", lambda t: t.baseline_kwargs["gd"]["steps"] == 3),
    ("", "gd_lr=0.05", lambda t: t.baseline_kwargs["gd"]["lr"] == 0.05),
    ("fc=sparse_linear", "lasso_alpha=0.1", lambda t: t.baseline_kwargs["lasso"]["alpha"] == 0.1),
    ("fc=sparse_linear", "lasso_iters=50", lambda t: t.baseline_kwargs["lasso"]["iters"] == 50),
    ("fc=linear_mixture", "task_kwargs.dense_prob=0.25", lambda t: t.task_kwargs["dense_prob"] == 0.25
     and t.baseline_kwargs["bayes_linear_mixture"]["dense_prob"] == 0.25),
    ("fc=relu2nn", "nn_hidden=7", lambda t: t.baseline_kwargs["nn_gd"]["hidden"] == 7),
    ("fc=relu2nn", "nn_steps=9", lambda t: t.baseline_kwargs["nn_gd"]["steps"] == 9),
    ("fc=relu2nn", "nn_lr=0.01", lambda t: t.baseline_kwargs["nn_gd"]["lr"] == 0.01),
    ("fc=decision_tree", "boosting_estimators=7",
     lambda t: t.baseline_kwargs["boosting"]["n_estimators"] == 7),
    ("fc=decision_tree", "boosting_lr=0.3", lambda t: t.baseline_kwargs["boosting"]["learning_rate"] == 0.3),
    ("fc=decision_tree", "boosting_depth=2", lambda t: t.baseline_kwargs["boosting"]["max_depth"] == 2),
    ("", "train_label_noise=0.25", lambda t: t.train_label_noise == 0.25 and t.eval_label_noise == 0),
    ("", "eval_label_noise=0.5", lambda t: t.eval_label_noise == 0.5 and t.train_label_noise == 0),
    ("fc=class_mixture", "task_kwargs.p_linear=0.25", lambda t: t.task_kwargs["p_linear"] == 0.25),
    ("fc=class_mixture", "task_kwargs.p_sparse_linear=2", lambda t: t.task_kwargs["p_sparse_linear"] == 2.0),
    ("fc=class_mixture", "task_kwargs.p_quadratic=1", lambda t: t.task_kwargs["p_quadratic"] == 1.0),
    ("fc=class_mixture", "task_kwargs.p_relu2nn=0.5", lambda t: t.task_kwargs["p_relu2nn"] == 0.5),
    ("fc=class_mixture", "task_kwargs.p_decision_tree=0",
     lambda t: t.task_kwargs["p_decision_tree"] == 0.0 and t.task_kwargs["p_linear"] == 0.5),
    ("", "ilwd_batch_size=0", lambda t: t.ilwd_batch_size == 0),
    ("", "ilwd_probes=7", lambda t: t.ilwd_probes == 7),
]


@pytest.mark.parametrize("arg, override, check", ICL_FIELDS, ids=[o for _, o, _ in ICL_FIELDS])
def test_every_icl_field_is_settable_and_takes_effect(arg, override, check):
    c = load_config(ICL, arg)
    apply_overrides(c, [f"task.{override}"])
    assert check(build(c.task))


def test_the_icl_fields_are_those_documented():
    """Every field of the ICL task's config (any class) is set above and named in docs/icl.md."""
    from seqjax.data.icl import FUNCTION_CLASSES

    names = {f for fc in FUNCTION_CLASSES for f in fields(icl_task.default_config(fc)) if f != "name"}
    assert names == {o.split("=")[0] for _, o, _ in ICL_FIELDS} | {"task_kwargs", "curriculum"}
    docs, doc = (ROOT / "docs/icl.md").read_text(), icl_task.ICLTask.__doc__
    assert not [n for n in names if not re.search(rf"\b{n.rsplit('.', 1)[-1]}\b", docs)]
    assert not [n for n in names if "." not in n and n not in doc]  # the task's docstring lists the top level


def test_icl_fields_from_the_real_command_line_take_effect(tmp_path):
    """A tiny run through ``python -m experiments.icl``: the overrides reach the task's results."""
    work = tmp_path / "w"
    tiny = ["--config.task.dim=3", "--config.task.n_points=5", "--config.model.input_dim=3",
            "--config.model.max_length=10", "--config.model.num_layers=1", "--config.model.d_model=8",
            "--config.task.eval_batch_size=16", "--config.train.steps=2", "--config.train.batch_size=8",
            "--config.train.log_every=1", "--config.train.checkpoint_every=2", "--noconfig.train.progress",
            "--config.optim.warmup_steps=1"]
    r = _cli("-m", "experiments.icl", "--config=configs/icl/regression.py:fc=sliding_window",
             "--config.task.task_kwargs.window=5", "--config.task.ilwd_batch_size=0",
             "--config.task.baselines=least_squares,ridge", "--config.task.ridge_lambda=0.5", *tiny,
             f"--workdir={work}")
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    task = results["config"]["task"]
    assert task["task_kwargs"] == {"window": 5} and task["ridge_lambda"] == 0.5
    assert "ilwd" not in results["metrics"]  # ilwd_batch_size=0 turned it off
    assert set(results["metrics"]["error_per_n"]) == {"model", "zero", "least_squares", "ridge"}


# --- config files load from anywhere -------------------------------------------------------


def test_config_files_load_from_any_directory_without_sys_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    for path in sorted((ROOT / "configs").rglob("*.py")):
        if path.parent.name in ("icl", "icll", "lra", "mqar") and not path.name.startswith("_"):
            assert load_config(path).name
    assert load_module(ROOT / "configs/tables/icll.py").get_table("cpu")["cells"]
    assert sys.path == before
    with pytest.raises(ConfigError, match="config file 'configs/icl/regression.py' does not exist"):
        load_config("configs/icl/regression.py")


def test_reproduce_finds_its_tables_from_another_directory(tmp_path):
    """``python -m experiments.reproduce`` from elsewhere; the config files never import ``configs``."""
    cell = tmp_path / "runs" / "icl-cpu" / "linear-transformer"  # the README run's results as a finished cell
    cell.mkdir(parents=True)
    shutil.copy(ROOT / "docs/results/icl-cpu/linear-transformer/results.json", cell)
    r = _cli("-m", "experiments.reproduce", "--table=icl", "--report_only", f"--root={tmp_path / 'runs'}",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "linear" in (tmp_path / "runs" / "icl-cpu" / "report.md").read_text()
    code = ("import sys; from seqjax.config import load_config, load_module; "
            f"load_config({str(ROOT / 'configs/lra/text.py')!r}); "
            f"load_module({str(ROOT / 'configs/tables/lra.py')!r}).get_table('paper'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'configs'))")
    r = _cli("-c", code, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-3000:]


# --- batches the devices do not divide ------------------------------------------------------


def _doc_command() -> tuple[str, list]:
    """The "one host, several accelerators" LRA command of docs/parallelism.md: (config spec, overrides)."""
    text = (ROOT / "docs/parallelism.md").read_text()
    block = text[text.index("**One host, several accelerators**"):]
    command = re.search(r"```bash\n(.*?)```", block, re.S).group(1).replace("\\\n", " ")
    args = command.split()
    assert args[:3] == ["python", "-m", "experiments.lra"], command
    overrides, rest = split_overrides(args[3:])
    spec = next(a.split("=", 1)[1] for a in rest if a.startswith("--config="))
    return spec, overrides


def _paper_lra_cells():
    table = load_module(ROOT / "configs/tables/lra.py").get_table("paper")
    return [(cell.name, ROOT / cell.config, cell.arg) for cell in table["cells"]]


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_every_lra_paper_cell_and_the_documented_command_fit_the_devices(devices):
    """The global batch is kept: padded to a multiple of data x fsdp when it does not split."""
    spec, overrides = _doc_command()
    path, arg = spec.split(":", 1)
    runs = [("docs/parallelism.md", apply_overrides(load_config(ROOT / path, arg), overrides))]
    runs += [(name, load_config(path, arg)) for name, path, arg in _paper_lra_cells()]
    scratch = [name for name, _, _ in _paper_lra_cells() if "+" not in name]
    assert len(scratch) == 36 and len(runs) == 1 + 36 + 20  # 6 tasks x 6 models, 10 self-pretrained (+SPT) pairs
    padded = 0
    for name, config in runs:
        p = experiment.prepare(config, num_devices=devices)
        batch = config.train.batch_size
        assert p.config.train.batch_size == batch, name  # the trainer pads; the config keeps the real batch
        if batch % devices:
            padded += 1
            assert f"batch_size={batch} does not split" in p.note
        else:
            assert p.note is None, name
    # The papers' batch 50 (S4 and S5 ListOps and CIFAR, S5 IMDb, and S4D's SPT pairs on ListOps and CIFAR)
    # is what does not split 4 or 8 ways.
    assert padded == {1: 0, 2: 0, 4: 16, 8: 16}[devices]


def test_a_padded_8_device_step_equals_the_1_device_step():
    """Batch 12 split 8 ways: the trainer's step on the 16-row padded batch (4 rows of weight 0),
    sharded over 8 devices, gives the loss, metrics and update of one device on the 12 real rows."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from seqjax import models, parallel
    import optax

    from seqjax.tasks.base import PaddedIterator

    from seqjax.train.state import create_train_state
    from seqjax.train.step import make_train_step

    c = load_config(ICL)
    apply_overrides(c, ["task.dim=3", "task.n_points=4", "model.input_dim=3", "model.max_length=8",
                        "model.num_layers=1", "model.d_model=16", "model.mixer_kwargs.mha.num_heads=2"])
    task = build(c.task)
    real = jax.tree.map(np.asarray, next(task.train_iterator(0, 12)))
    padded = next(PaddedIterator(task.train_iterator(0, 12), 16))  # the same stream, padded (as the trainer does)
    assert padded["weight"].tolist() == [1.0] * 12 + [0.0] * 4
    np.testing.assert_array_equal(padded["inputs"][:12], real["inputs"])
    model = models.build(c.model)
    params = model.init(jax.random.key(0), real["inputs"][:1], deterministic=True)["params"]
    tx = optax.adam(1e-2)
    state, key = create_train_state(params, tx), jax.random.key(1)
    step = make_train_step(model, task, tx, lambda count: 1e-2)
    one, m_one = jax.jit(step)(state, real, key)
    mesh = parallel.make_mesh({"data": 8})
    rows, whole = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    eight, m_eight = jax.jit(step, in_shardings=(whole, rows, whole), out_shardings=(whole, whole))(state, padded, key)
    for k in ("loss", "mse", "error_last", "grad_norm"):
        np.testing.assert_allclose(m_eight[k], m_one[k], rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(eight.params), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_the_documented_multi_device_lra_command_trains_on_8_devices(tmp_path):
    """docs/parallelism.md's command (S5, ListOps, the paper's batch 50) through the real CLI on 8
    host devices, shrunk to a tiny generated ListOps and a one-layer model."""
    spec, overrides = _doc_command()
    tiny = ["--config.task.builder_kwargs.num_train=64", "--config.task.builder_kwargs.num_validation=8",
            "--config.task.builder_kwargs.num_test=8", "--config.task.builder_kwargs.min_length=10",
            "--config.task.builder_kwargs.max_length=40", "--config.task.max_length=48",
            "--config.model.max_length=48", "--config.task.eval_examples=8", "--config.task.eval_batch_size=8",
            "--config.model.num_layers=1", "--config.model.d_model=16", "--config.train.steps=2",
            "--config.train.log_every=1", "--config.train.checkpoint_every=2", "--noconfig.train.progress",
            "--config.optim.warmup_steps=1", f"--config.task.data_dir={tmp_path / 'data'}"]
    r = _cli("-m", "experiments.lra", f"--config={spec}", *[o.flag for o in overrides], *tiny,
             f"--workdir={tmp_path / 'w'}", devices=8)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "config.train.batch_size=50 does not split 8 ways" in r.stdout
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert results["num_devices"] == 8 and results["mesh"]["fsdp"] == 8
    assert results["config"]["train"]["batch_size"] == 50  # the real batch; the trainer pads each step
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0


@pytest.mark.parametrize("task_name", ["icl", "icll", "lra", "mqar"])
def test_padding_rows_do_not_change_a_tasks_loss(task_name, rng):
    import jax.numpy as jnp

    from seqjax.tasks.base import pad_rows

    b = 5
    if task_name == "icl":
        task = icl_task.ICLTask(icl_task.default_config())
        batch = {"inputs": rng.normal(size=(b, 4, 3)), "ys": rng.normal(size=(b, 2))}
        outputs = rng.normal(size=(b, 4, 1))
    elif task_name == "icll":
        from seqjax.tasks.icll import ICLLTask, default_config

        task = ICLLTask(default_config())
        batch = {"inputs": rng.integers(0, 20, (b, 6)), "targets": rng.integers(0, 20, (b, 6))}
        outputs = rng.normal(size=(b, 6, 20))
    elif task_name == "mqar":
        from seqjax.tasks.mqar import MQARTask, default_config

        task = MQARTask(default_config())
        targets = np.where(rng.random((b, 6)) < 0.5, rng.integers(0, 30, (b, 6)), -100)
        batch = {"inputs": rng.integers(0, 30, (b, 6)), "targets": targets}
        outputs = rng.normal(size=(b, 6, 30))
    else:
        from seqjax.tasks.lra import LRATask, default_config

        cfg = default_config()
        cfg.dataset, cfg.max_length = "lra_listops", 8
        task = LRATask(cfg)
        batch = {"inputs": rng.integers(1, 17, (b, 8)), "label": rng.integers(0, 10, (b,))}
        outputs = rng.normal(size=(b, 10))
    padded = pad_rows(batch, 8)
    assert padded["weight"].tolist() == [1] * b + [0] * 3
    out_padded = np.concatenate([outputs, np.repeat(outputs[:1] * 7.0, 3, axis=0)])  # padding rows differ
    loss, metrics = task.loss(jnp.asarray(outputs), batch)
    loss_p, metrics_p = task.loss(jnp.asarray(out_padded), padded)
    np.testing.assert_allclose(loss_p, loss, rtol=1e-6)
    for key in metrics:
        np.testing.assert_allclose(metrics_p[key], metrics[key], rtol=1e-6)


# --- the recall synthetics' entrypoint (experiments.mqar) ---------------------------------------

MQAR = str(ROOT / "configs/mqar/mqar.py")
SD = str(ROOT / "configs/mqar/set_disjointness.py")


@pytest.mark.parametrize("args, line", [
    (["--config.task.num_kv_pairs=20"],
     "error: config.task.seq_len=64 is not allowed; allowed: an int >= 80 = 4 * config.task.num_kv_pairs (2n tokens "
     "of pairs, then n query slots of 2 tokens)"),
    ([f"--config={SD}:size_a=40,size_b=30"],
     "error: config.task.vocab_size=64 is not allowed; allowed: an int >= 76 = 6 special ids + config.task.size_a + "
     "config.task.size_b (distinct elements)"),
])
def test_a_bad_mqar_field_through_the_entrypoint_is_one_line_and_exit_2(args, line, tmp_path):
    r = _cli("-m", "experiments.mqar", *args, f"--workdir={tmp_path / 'w'}")
    assert (r.returncode, r.stderr.strip().splitlines()) == (2, [line]), r.stderr[-3000:]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("spec, overrides, line", [
    (MQAR, ["task.kind=mqr"], "config.task.kind='mqr' is not allowed; allowed: mqar, set_disjointness"),
    (MQAR, ["task.power_a=0"], "config.task.power_a=0.0 is not allowed; allowed: a number > 0 (1 = uniform query slots)"),
    (MQAR, ["task.vocab_size=9"], "config.task.vocab_size=9 is not allowed; allowed: an int >= 10 = 2 * "
                                  "config.task.num_kv_pairs + 2 (distinct keys in [1, vocab_size // 2))"),
    (MQAR, ["task.vocab_size=1024"], "config.model.vocab_size=64 is smaller than the vocabulary of task 'mqar' (ids "
                                     "below 1024); allowed: config.model.vocab_size >= 1024"),
    (MQAR, ["task.num_train_examples=-5"], "config.task.num_train_examples=-5 is not allowed; allowed: an int >= 0 "
                                           "(0: a fresh example for every row)"),
    (f"{MQAR}:seq_len=x", [], "config argument seq_len='x' must be an int > 0"),
    (f"{MQAR}:steps=-3", [], "config argument steps='-3' must be an int > 0"),
    (SD, ["task.answer=both"], "config.task.answer='both' is not allowed; allowed: label, element"),
    (SD, ["task.seq_len=20"], "config.task.seq_len=20 is not allowed; allowed: an int >= 23 = config.task.size_a + "
                              "config.task.size_b + 3 (BOS, SEP, ANS)"),
])
def test_bad_mqar_configs_are_one_line_and_write_nothing(spec, overrides, line, tmp_path, capsys):
    status = experiment.command(spec, ["train.progress=false", *overrides], str(tmp_path / "w"))
    assert (status, capsys.readouterr().err.strip().splitlines()) == (2, [f"error: {line}"])
    assert not (tmp_path / "w").exists()

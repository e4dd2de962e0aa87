"""Experiment configs: every table cell passes every check of a run; bad arguments fail in one line."""

import pathlib

import pytest

from seqjax import models
from seqjax.config import load_module, parse_arg
from seqjax.errors import ConfigError
from seqjax.experiment import load_config, prepare

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_parse_arg():
    allowed = {"model": None, "scale": ["cpu", "paper"]}
    assert parse_arg("model=mamba", allowed, {"model": "mha", "scale": "cpu"}) == {"model": "mamba", "scale": "cpu"}
    for bad, field in [("scale=gpu", "scale='gpu'"), ("size=3", "'size' is unknown"), ("mamba", "not key=value")]:
        with pytest.raises(ConfigError, match=field) as e:
            parse_arg(bad, allowed, {})
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("table, scale", [(t, s) for t in ("icl", "icll", "lra", "lra_zoo") for s in ("cpu", "paper")]
                         + [("mqar", "cpu"), pytest.param("mqar", "paper", marks=pytest.mark.slow)]  # 576 cells
                         + [("video", "cpu"), ("csp", "cpu")]  # video, csp paper: need data in task.manual_dir
                         + [("forecast", "cpu")]  # forecast paper: needs ETTh1.csv in task.manual_dir
                         + [("seq2seq", "cpu")])  # seq2seq has no paper scale
def test_every_table_cell_builds(table, scale):
    """Each cell passes what a run checks before training (trainer, mesh, model, task, lengths)."""
    tab = load_module(ROOT / "configs" / "tables" / f"{table}.py").get_table(scale)
    names = set()
    for cell in tab["cells"]:
        config = load_config(ROOT / cell.config, cell.arg)
        prepare(config, num_devices=1)
        assert config.name not in names
        names.add(config.name)


def test_ngram_suffix_prepends_a_layer():
    config = load_config("configs/icll/regbench.py", "model=mamba+ngram")
    layers = models.layer_mixers(config.model)
    assert layers[0] == "ngram" and layers[1:] == ["mamba"] * (len(layers) - 1)


@pytest.mark.parametrize("bad", ["0", "-40", "4e4", "many"])
def test_bad_train_dfas_is_one_config_error(bad):
    with pytest.raises(ConfigError, match=rf"^config argument train_dfas='{bad}' must be an int > 0 \(training languages\)$"):
        load_config("configs/icll/regbench.py", f"train_dfas={bad}")


def test_unknown_model_lists_allowed():
    with pytest.raises(ConfigError, match=r"model='mambo'.*allowed: .*mamba"):
        load_config("configs/icl/regression.py", "model=mambo")


def test_docs_state_what_the_configs_and_builders_are():
    """The README and docs/ numbers that once drifted from the code."""
    import seqjax.data.builders as builders

    icl = load_config(ROOT / "configs/icl/regression.py")
    row = next(line for line in (ROOT / "docs/experiments.md").read_text().splitlines()
               if line.startswith("| `configs/icl/regression.py`"))
    assert f"{icl.train.steps:,} steps of batch {icl.train.batch_size}" in row
    assert f"Adam {icl.optim.learning_rate:.0e}".replace("e-0", "e-") in row  # "Adam 3e-3"
    lra = [n for n in builders.__all__ if n.startswith("Lra") and not n.endswith("Config")]
    assert len(lra) == 5
    assert "(5 offline builders," in (ROOT / "README.md").read_text()
    assert "five TFDS builders" in (ROOT / "docs/lra.md").read_text()
    lssl = next(line for line in (ROOT / "docs/mixers.md").read_text().splitlines() if line.startswith("| `lssl`"))
    assert lssl.split("|")[-2].strip().startswith("yes / yes / yes")  # step / bidir / segments


@pytest.mark.parametrize("config, arg", [
    ("mqar", ""), ("mqar", "model=mamba"), ("mqar", "scale=paper"), ("mqar", "scale=paper,seq_len=128"),
    ("mqar", "scale=paper,seq_len=256,d_model=64"), ("mqar", "scale=paper,seq_len=512,d_model=512,lr=1e-2"),
    ("mqar", "scale=paper,model=mamba,seq_len=256"), ("mqar", "model=mha,d_model=32,steps=12000"),
    ("set_disjointness", ""),
    ("set_disjointness", "scale=paper,size_a=256,size_b=16"), ("set_disjointness", "model=mamba,size_a=16,size_b=4"),
])
def test_recall_configs_build(config, arg):
    """The recall configs pass every check of a run; paper scale follows Zoology's grid."""
    c = load_config(ROOT / "configs" / "mqar" / f"{config}.py", arg)
    task = prepare(c, num_devices=1).task
    assert c.model.vocab_size == task.vocab_size and c.model.max_length == task.max_length
    if config == "mqar" and "scale=paper" in arg:
        pairs = {64: 4, 128: 8, 256: 16, 512: 64}[task.max_length]
        assert (task.vocab_size, task.sampler_kwargs["num_kv_pairs"], c.model.num_layers) == (8192, pairs, 2)
        assert c.train.steps == 64 * -(-100_000 // c.train.batch_size)  # 64 epochs of 100,000 examples
        # Zoology evaluates after every epoch and stops above 0.99 held-out accuracy.
        assert (c.train.eval_every, c.train.stop_at) == (c.train.steps // 64, "accuracy>0.99")
    elif config == "mqar":  # CPU: the 1,000-step table runs to the end; its own budget stops as Zoology does
        long = "steps=" in arg
        assert c.train.steps == (12_000 if long else 1000) and c.name.endswith("-s12000-cpu" if long else "d128-cpu")
        assert (c.train.eval_every, c.train.stop_at) == ((500, "accuracy>0.99") if long else (0, ""))


def test_docs_state_the_recall_cpu_config():
    c = load_config(ROOT / "configs/mqar/mqar.py")
    text = (ROOT / "docs/mqar.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| training |"))
    assert f"Adam {c.optim.learning_rate:.0e}".replace("e-0", "e-") in row
    assert f"{c.train.steps:,} steps of batch {c.train.batch_size}" in row
    data = next(line for line in text.splitlines() if line.startswith("| data |"))
    assert f"L {c.task.seq_len}, {c.task.num_kv_pairs} pairs, vocab {c.task.vocab_size}," in data

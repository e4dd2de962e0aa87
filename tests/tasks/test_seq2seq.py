"""The seq2seq task (copy / reverse strings), its data, its metrics vs NumPy, the encoder–decoder in the trainer."""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.seq2seq import run_summary
from seqjax import experiment, models
from seqjax.data import seq2seq as data
from seqjax.errors import ConfigError
from seqjax.experiment import load_config, prepare
from seqjax.models import encoder_decoder as ed
from seqjax.tasks.seq2seq import Seq2SeqTask, default_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/seq2seq/strings.py"
SETTINGS = dict(num_symbols=6, min_length=2, max_length=5)


@pytest.mark.parametrize("kind", ["copy", "reverse"])
def test_examples_follow_the_definition(kind):
    b = data.batch(7, range(40), kind=kind, **SETTINGS)
    for src, dec, tgt, mask in zip(b["inputs"], b["decoder_inputs"], b["targets"], b["mask"]):
        n = int((src != data.PAD).sum())
        assert 2 <= n <= 5 and np.all(src[:n] >= data.FIRST_SYMBOL) and np.all(src[:n] < data.FIRST_SYMBOL + 6)
        assert np.all(src[n:] == data.PAD) and np.array_equal(mask, src != data.PAD)
        body = src[:n] if kind == "copy" else src[:n][::-1]
        assert np.array_equal(tgt, np.concatenate([body, [data.EOS], np.zeros(5 - n, np.int32)]))
        assert dec[0] == data.BOS and np.array_equal(dec[1:], tgt[:-1])
    lengths = (b["inputs"] != data.PAD).sum(axis=1)
    assert set(lengths.tolist()) == {2, 3, 4, 5}  # every length occurs in 40 draws


def test_examples_depend_on_seed_and_index_only():
    one = data.batch(3, [5, 9], kind="reverse", **SETTINGS)
    many = data.batch(3, range(12), kind="reverse", **SETTINGS)
    for key in one:
        np.testing.assert_array_equal(one[key], many[key][[5, 9]])
    other = data.batch(4, [5, 9], kind="reverse", **SETTINGS)
    assert not np.array_equal(one["inputs"], other["inputs"])


@pytest.mark.parametrize("field,value,match", [
    ("kind", "sort", "config.task.kind='sort' is not allowed; allowed: copy, reverse"),
    ("num_symbols", 1, "config.task.num_symbols=1 must be an int >= 2"),
    ("min_length", 6, "config.task.min_length=6 must be <= config.task.max_length=5"),
    ("eval_examples", 0, "config.task.eval_examples=0 must be an int >= 1"),
])
def test_bad_fields_fail_in_one_line(field, value, match):
    cfg = default_config()
    cfg.update(dict(SETTINGS, **{field: value}))
    with pytest.raises(ConfigError, match=match):
        Seq2SeqTask(cfg)


def _task(**overrides):
    cfg = default_config()
    cfg.update(dict(SETTINGS, eval_examples=37, eval_batch_size=16, **overrides))
    return Seq2SeqTask(cfg)


def test_loss_matches_numpy(rng):
    task = _task()
    batch = task.examples(0, 0, range(6))
    batch["weight"] = np.asarray([1, 1, 0, 1, 1, 1], np.float32)
    logits = rng.normal(size=batch["targets"].shape + (task.vocab_size,)).astype(np.float32)
    ce, metrics = task.loss(jnp.asarray(logits), {k: jnp.asarray(v) for k, v in batch.items()})
    lg = logits.astype(np.float64)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    t = batch["targets"]
    w = (t != data.PAD) * batch["weight"][:, None]
    nll = -np.take_along_axis(logp, t[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(ce), (nll * w).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["acc"]), ((lg.argmax(-1) == t) * w).sum() / w.sum(), rtol=1e-6)


def test_evaluate_feeds_greedy_tokens_back():
    """A fake decoder that predicts ``(input token + 1) mod V``: teacher-forced and free-running answers differ."""
    task = _task()
    v = task.vocab_size

    def predict(batch):
        return jax.nn.one_hot((np.asarray(batch["decoder_inputs"]) + 1) % v, v) * 5.0

    m = task.evaluate(predict, seed=11)
    b = task.examples(11, 1, range(37))
    t, real = b["targets"], b["targets"] != data.PAD
    forced = (b["decoder_inputs"] + 1) % v
    # Free-running: BOS, then each output fed back: token t = (BOS + t + 1) mod V.
    greedy = np.broadcast_to((data.BOS + 1 + np.arange(t.shape[1])) % v, t.shape)
    assert m["num_examples"] == 37 and m["num_positions"] == int(real.sum())
    np.testing.assert_allclose(m["token_accuracy"], (forced == t)[real].mean())
    np.testing.assert_allclose(m["greedy_token_accuracy"], (greedy == t)[real].mean())
    np.testing.assert_allclose(m["exact_match"], np.mean(np.all((greedy == t) | ~real, axis=1)))
    assert m["token_accuracy"] != m["greedy_token_accuracy"]
    # An oracle that reads the source gets everything right, free-running too.
    oracle = task.evaluate(lambda batch: jax.nn.one_hot(_truth(batch), v) * 5.0, seed=11)
    assert oracle["greedy_token_accuracy"] == oracle["exact_match"] == oracle["token_accuracy"] == 1.0


def _truth(batch):
    out = np.zeros(np.asarray(batch["decoder_inputs"]).shape, np.int32)
    for i, src in enumerate(np.asarray(batch["inputs"])):
        body = src[src != data.PAD][::-1]
        out[i, :len(body)], out[i, len(body)] = body, data.EOS
    return out


def test_models_build_dispatches_on_the_architecture():
    cfg = ed.default_config()
    cfg.vocab_size = 9
    assert isinstance(models.build(cfg), ed.EncoderDecoder)
    assert models.architecture(cfg) == "encoder_decoder"
    assert models.architecture(ml_collections.ConfigDict({"mixers": "mha"})) == "sequence"  # written before the field
    cfg.architecture = "transformer"
    with pytest.raises(ConfigError, match="architecture='transformer' is not allowed; allowed: sequence, "
                                          "encoder_decoder"):
        models.validate(cfg)
    seq = models.default_config()
    seq.architecture = "encoder_decoder"  # the sequence fields under the other architecture: named in one line
    with pytest.raises(ConfigError, match=r"config.model.\w+ is not an encoder–decoder field; allowed: arch"):
        models.validate(seq)
    cfg = ed.default_config()
    cfg.vocab_size, cfg.decoder_mixers, cfg.mixer_kwargs = 9, "mamba2", {"mamba2": {"headdim": 48}}
    models.validate(cfg)  # the width rule shows only at init
    with pytest.raises(ConfigError, match="does not build"):
        models.check_build(cfg, 8)


def test_trainer_keywords_equal_the_positional_call(rng):
    cfg = ed.default_config()
    cfg.vocab_size, cfg.d_model, cfg.num_heads, cfg.num_encoder_layers, cfg.num_decoder_layers = 9, 16, 2, 1, 1
    model = ed.build(cfg)
    src = jnp.asarray(rng.integers(3, 9, (2, 5)), jnp.int32).at[1, 3:].set(0)
    tgt = jnp.asarray(rng.integers(1, 9, (2, 4)), jnp.int32)
    variables = model.init(jax.random.key(0), src, decoder_inputs=tgt)
    ref = model.apply(variables, src, tgt, src_mask=src != 0)
    np.testing.assert_array_equal(model.apply(variables, src, decoder_inputs=tgt, mask=src != 0), ref)
    with pytest.raises(ValueError, match="give the decoder inputs once"):
        model.apply(variables, src, tgt, decoder_inputs=tgt)


def test_config_passes_every_check_and_refuses_a_sequence_model():
    c = load_config(CONFIG, "kind=copy,decoder=mamba2")
    task = prepare(c, num_devices=1).task
    assert (task.kind, task.max_length, task.vocab_size, c.model.vocab_size) == ("copy", 8, 13, 13)
    assert c.train.steps == 2000 and c.name == "seq2seq-copy-mha-mamba2"
    c = load_config(ROOT / "configs/mqar/mqar.py", "")
    c.task = default_config()
    c.model.vocab_size = 13
    with pytest.raises(ConfigError, match="layout 'encoder_decoder' feeds a source and decoder inputs; allowed: "
                                          "'encoder_decoder'"):
        prepare(c, num_devices=1)
    with pytest.raises(ConfigError, match="config argument kind='sort' is not allowed"):
        load_config(CONFIG, "kind=sort")


def test_a_tiny_run_through_the_trainer_writes_results(tmp_path, capsys):
    overrides = ["train.steps=4", "optim.warmup_steps=1", "train.batch_size=8", "train.progress=false",
                 "task.eval_examples=10", "task.eval_batch_size=8", "model.d_model=16", "model.num_heads=2",
                 "model.num_encoder_layers=1", "model.num_decoder_layers=1", "train.checkpoint_every=2"]
    status = experiment.command(f"{CONFIG}:kind=reverse", overrides, str(tmp_path / "w"), run_summary)
    assert status == 0
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    m = results["metrics"]
    assert m["num_examples"] == 10 and 0.0 <= m["greedy_token_accuracy"] <= 1.0 and np.isfinite(m["ce"])
    assert "greedy token accuracy" in capsys.readouterr().out
    # The parameters are the encoder–decoder's (the trainer built it from config.model).
    assert results["config"]["model"]["architecture"] == "encoder_decoder"


@pytest.mark.slow  # ~1 min on 2 cores: the default config end to end
def test_the_default_run_learns_to_reverse(tmp_path):
    status = experiment.command(f"{CONFIG}:kind=reverse", ["train.progress=false"], str(tmp_path / "w"), run_summary)
    assert status == 0
    m = json.loads((tmp_path / "w" / "results.json").read_text())["metrics"]
    assert m["greedy_token_accuracy"] >= 0.99, m


def test_decoder_only_layout_is_one_sequence_scored_on_the_target():
    enc, dec = _task(), _task(layout="decoder_only")
    assert (enc.max_length, dec.max_length) == (5, 11)
    a, b = enc.examples(4, 0, range(6)), dec.examples(4, 0, range(6))
    np.testing.assert_array_equal(b["inputs"], np.concatenate([a["inputs"], a["decoder_inputs"]], axis=1))
    np.testing.assert_array_equal(b["targets"][:, :5], 0)
    np.testing.assert_array_equal(b["targets"][:, 5:], a["targets"])
    assert set(b) == {"inputs", "targets"}
    # Greedy decoding feeds back from the BOS (position 5) on; the source part is never rewritten.
    v = dec.vocab_size
    seen = []

    def predict(batch):
        seen.append(np.asarray(batch["inputs"])[:, :5].copy())
        return jax.nn.one_hot((np.asarray(batch["inputs"]) + 1) % v, v) * 5.0

    m = dec.evaluate(predict, seed=2)
    assert all(np.array_equal(s, seen[0]) for s in seen[:6])
    t = dec.examples(2, 1, range(37))["targets"]
    real = t != data.PAD
    greedy = np.zeros_like(t)
    greedy[:, 5:] = (data.BOS + 1 + np.arange(6)) % v
    np.testing.assert_allclose(m["greedy_token_accuracy"], (greedy == t)[real].mean())
    per = m["greedy_accuracy_per_position"]
    assert len(per) == 6 and per[0] == np.mean(greedy[:, 5] == t[:, 5])


def test_decoder_only_layout_needs_a_causal_lm():
    c = load_config(CONFIG, "layout=decoder_only")
    assert c.model.architecture == "sequence" and c.model.num_layers == 4 and c.model.max_length == 17
    assert prepare(c, num_devices=1).task.max_length == 17
    c.model.causal = False
    with pytest.raises(ConfigError, match="layout='decoder_only' needs a causal token LM"):
        prepare(c, num_devices=1)
    c = load_config(CONFIG, "layout=encoder_decoder")
    c.task.layout = "decoder_only"
    with pytest.raises(ConfigError, match="layout='decoder_only' needs a causal token LM"):
        prepare(c, num_devices=1)
    c.task.layout = "both"
    with pytest.raises(ConfigError, match="config.task.layout='both' is not allowed; allowed: encoder_decoder, "
                                          "decoder_only"):
        prepare(c, num_devices=1)


def test_the_training_stream_resumes_from_its_state():
    task = _task()
    it = task.train_iterator(seed=3, batch_size=4)
    first = [next(it) for _ in range(3)]
    assert first[1]["inputs"].shape == (4, 5)
    np.testing.assert_array_equal(first[2]["inputs"], task.examples(3, 0, range(8, 12))["inputs"])
    state = it.get_state()
    after = next(it)
    again = task.train_iterator(seed=3, batch_size=4)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["targets"], after["targets"])
    assert not np.array_equal(first[0]["inputs"], first[1]["inputs"])

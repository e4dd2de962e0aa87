"""Generation through the mixers' step (seqjax.models.decode) against the parallel forward."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import models
from seqjax.errors import ConfigError
from seqjax.models.decode import generate

VOCAB = 5


def _lm(mixers="mha,mamba2,gla,mlp", channel="mlp"):
    cfg = models.default_config()
    cfg.mixers, cfg.num_layers, cfg.d_model, cfg.vocab_size, cfg.channel = mixers, len(mixers.split(",")), 16, VOCAB, channel
    cfg.mixer_kwargs = {"mha": {"num_heads": 2}, "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4},
                        "gla": {"num_heads": 2, "chunk_size": 4}}
    model = models.build(cfg)
    variables = model.init(jax.random.key(3), jnp.zeros((1, 8), jnp.int32))
    # Larger weights than the init, so the next-token distributions are far from uniform.
    variables = jax.tree.map(lambda a: a * 2.0 if a.ndim >= 2 else a, variables)
    return model, variables


def _logp(model, variables, seq):
    return np.asarray(jax.nn.log_softmax(jax.jit(model.apply)(variables, seq), axis=-1))


def test_greedy_equals_the_parallel_forward(rng):
    model, variables = _lm()
    prompt = jnp.asarray(rng.integers(0, VOCAB, (3, 6)), jnp.int32)
    out = generate(model, variables, prompt, max_new_tokens=5)
    tokens = np.asarray(out["tokens"])
    seq = jnp.concatenate([prompt, out["tokens"]], axis=1)
    logp = _logp(model, variables, seq)[:, 5:-1]  # the prediction of each generated token
    np.testing.assert_allclose(np.asarray(out["logits"]), logp, rtol=1e-4, atol=1e-4)
    assert (tokens == logp.argmax(-1)).all()
    np.testing.assert_allclose(np.asarray(out["score"]), np.take_along_axis(logp, tokens[..., None], 2).sum((1, 2)),
                               rtol=1e-4)
    assert len({tuple(r) for r in tokens}) > 1  # the prompt matters: not one fixed continuation


def test_beam_search_is_exhaustive_at_full_width_and_greedy_at_width_one(rng):
    model, variables = _lm("mamba2,mha")
    prompt = jnp.asarray(rng.integers(0, VOCAB, (2, 4)), jnp.int32)
    steps = 3
    out = generate(model, variables, prompt, max_new_tokens=steps, beam_size=VOCAB ** (steps - 1))
    # Brute force over every continuation, scored by the parallel forward.
    conts = np.asarray(list(itertools.product(range(VOCAB), repeat=steps)), np.int32)  # (V^n, n)
    for row in range(prompt.shape[0]):
        seqs = jnp.concatenate([jnp.broadcast_to(prompt[row], (len(conts), prompt.shape[1])), conts], axis=1)
        logp = _logp(model, variables, seqs)[:, prompt.shape[1] - 1:-1]
        scores = np.take_along_axis(logp, conts[..., None], 2).sum((1, 2))
        best = scores.argmax()
        assert (np.asarray(out["tokens"][row]) == conts[best]).all()
        np.testing.assert_allclose(float(out["score"][row]), scores[best], rtol=1e-4)
        assert np.all(np.diff(np.asarray(out["beam_scores"][row])) <= 1e-6)  # best first
    greedy = generate(model, variables, prompt, max_new_tokens=steps)
    one = generate(model, variables, prompt, max_new_tokens=steps, beam_size=1)
    assert (np.asarray(one["tokens"]) == np.asarray(greedy["tokens"])).all()
    two = generate(model, variables, prompt, max_new_tokens=steps, beam_size=2)
    assert np.all(np.asarray(two["score"]) >= np.asarray(two["beam_scores"][:, 1]) - 1e-6)


def test_bad_requests_are_one_line_errors():
    model, variables = _lm("mamba2")
    prompt = jnp.zeros((1, 3), jnp.int32)
    for kwargs, match in (({"max_new_tokens": 0}, "max_new_tokens=0"), ({"max_new_tokens": 2, "beam_size": 0},
                                                                          "beam_size=0")):
        with pytest.raises(ConfigError, match=match):
            generate(model, variables, prompt, **kwargs)
    with pytest.raises(ConfigError, match="prompt must be"):
        generate(model, variables, jnp.zeros((3,), jnp.int32), max_new_tokens=2)
    cfg = models.default_config()
    cfg.mixers, cfg.num_layers, cfg.vocab_size, cfg.causal = "mha", 1, VOCAB, False
    bidir = models.build(cfg)
    v = bidir.init(jax.random.key(0), prompt)
    with pytest.raises(ConfigError, match="not causal"):
        generate(bidir, v, prompt, max_new_tokens=2)


def _stopped(conts: np.ndarray, logp_rows: np.ndarray, eos: int):
    """The continuations valid under a stop token (only EOS after the first EOS), their scores and lengths."""
    valid, scores, lens = [], [], []
    for c, lp in zip(conts, logp_rows):
        hit = np.flatnonzero(c == eos)
        n = hit[0] + 1 if len(hit) else len(c)
        if np.all(c[n:] == eos):
            valid.append(c)
            scores.append(lp[np.arange(n), c[:n]].sum())  # log-probs up to and including the EOS
            lens.append(n)
    return np.asarray(valid), np.asarray(scores), np.asarray(lens)


def test_greedy_stops_at_the_eos_token(rng):
    model, variables = _lm()
    prompt = jnp.asarray(rng.integers(0, VOCAB, (4, 5)), jnp.int32)
    free = generate(model, variables, prompt, max_new_tokens=6)
    tokens = np.asarray(free["tokens"])
    eos = int(tokens[0, 1])  # a token the greedy path emits early in row 0
    out = generate(model, variables, prompt, max_new_tokens=6, eos_id=eos)
    logp = np.take_along_axis(np.asarray(free["logits"]), tokens[..., None], 2)[..., 0]
    for row in range(4):
        hit = np.flatnonzero(tokens[row] == eos)
        n = hit[0] + 1 if len(hit) else 6
        expected = np.concatenate([tokens[row, :n], np.full(6 - n, eos)])
        assert (np.asarray(out["tokens"][row]) == expected).all() and int(out["length"][row]) == n
        np.testing.assert_allclose(float(out["score"][row]), logp[row, :n].sum(), rtol=1e-4, atol=1e-5)
    assert int(out["length"][0]) <= 2


@pytest.mark.parametrize("penalty", [0.0, 1.0])
def test_beam_search_with_eos_and_length_penalty_is_exhaustive(rng, penalty):
    model, variables = _lm("mamba2,mha")
    prompt = jnp.asarray(rng.integers(0, VOCAB, (2, 4)), jnp.int32)
    steps, eos = 3, 2
    # Width V^n keeps every hypothesis: the search is exhaustive, so the best must equal brute force's.
    out = generate(model, variables, prompt, max_new_tokens=steps, beam_size=VOCAB ** steps, eos_id=eos,
                   length_penalty=penalty)
    conts = np.asarray(list(itertools.product(range(VOCAB), repeat=steps)), np.int32)
    for row in range(prompt.shape[0]):
        seqs = jnp.concatenate([jnp.broadcast_to(prompt[row], (len(conts), prompt.shape[1])), conts], axis=1)
        logp = _logp(model, variables, seqs)[:, prompt.shape[1] - 1:-1]
        valid, scores, lens = _stopped(conts, logp, eos)
        ranked = scores / ((5.0 + lens) / 6.0) ** penalty
        best = ranked.argmax()
        assert (np.asarray(out["tokens"][row]) == valid[best]).all(), (row, out["tokens"][row], valid[best])
        np.testing.assert_allclose(float(out["score"][row]), scores[best], rtol=1e-4, atol=1e-5)
        assert int(out["length"][row]) == lens[best]
        assert np.isfinite(np.asarray(out["beam_scores"][row])).sum() == len(valid)  # one beam per valid sequence
    with pytest.raises(ConfigError, match=r"eos_id=5 must be None or an int in \[0, 5\)"):
        generate(model, variables, prompt, max_new_tokens=2, eos_id=5)
    with pytest.raises(ConfigError, match="length_penalty=-1 must be a number >= 0"):
        generate(model, variables, prompt, max_new_tokens=2, length_penalty=-1)

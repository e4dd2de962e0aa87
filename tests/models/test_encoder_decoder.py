"""The encoder–decoder (seqjax.models.encoder_decoder): cached decoding against the teacher-forced
forward, source padding, beam search, config errors, and (slow) the reverse task learned to >= 0.99."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax.errors import ConfigError
from seqjax.models import encoder_decoder as ed

VOCAB = 7
KWARGS = {"mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4}, "gla": {"num_heads": 2, "chunk_size": 4}}


def _model(encoder="mha", decoder="mha", layers=1):
    cfg = ed.default_config()
    cfg.vocab_size, cfg.d_model, cfg.num_heads, cfg.mixer_kwargs = VOCAB, 16, 2, KWARGS
    cfg.encoder_mixers, cfg.decoder_mixers = encoder, decoder
    cfg.num_encoder_layers, cfg.num_decoder_layers = layers, layers
    model = ed.build(cfg)
    src, tgt = jnp.ones((1, 5), jnp.int32), jnp.ones((1, 4), jnp.int32)
    variables = jax.jit(model.init)(jax.random.key(1), src, tgt)
    # Larger weights than the init, so that the next-token distributions are far from uniform.
    return model, jax.tree.map(lambda a: a * 2.0 if a.ndim >= 2 else a, variables)


def _source(rng, b=3, ls=6):
    """Random right-padded sources (pad id 0) of lengths 2..ls-1 (every row has padding)."""
    lens = rng.integers(2, ls, b)
    return jnp.asarray(np.where(np.arange(ls) < lens[:, None], rng.integers(1, VOCAB, (b, ls)), 0), jnp.int32)


def _teacher_forced(forward, variables, src, bos, tokens):
    """Log-probs of the parallel forward (``forward = jax.jit(model.apply)``) on BOS + ``tokens[:, :-1]``."""
    tgt_in = jnp.concatenate([jnp.full((src.shape[0], 1), bos, jnp.int32), tokens[:, :-1]], axis=1)
    return np.asarray(jax.nn.log_softmax(forward(variables, src, tgt_in, src_mask=src != 0), axis=-1))


@pytest.mark.parametrize("encoder,decoder", [("mha", "mha"), ("gla", "mamba2")])
def test_cached_decoding_equals_the_teacher_forced_forward(rng, encoder, decoder):
    model, variables = _model(encoder, decoder)
    forward = jax.jit(model.apply)
    src = _source(rng)
    out = ed.generate_seq2seq(model, variables, src, max_new_tokens=4, bos_id=1)
    logp = _teacher_forced(forward, variables, src, 1, out["tokens"])
    np.testing.assert_allclose(np.asarray(out["logits"]), logp, rtol=1e-4, atol=1e-4)
    tokens = np.asarray(out["tokens"])
    assert (tokens == logp.argmax(-1)).all()
    assert np.abs(logp[0] - logp[1]).max() > 1e-2  # the source matters
    # The encoder and the cross-attention never read padding: garbage under the mask and extra
    # padding columns change nothing.
    tgt_in = jnp.concatenate([jnp.ones((3, 1), jnp.int32), out["tokens"][:, :-1]], axis=1)
    mask = src != 0
    ref = forward(variables, src, tgt_in, src_mask=mask)
    garbage = jnp.where(mask, src, jnp.asarray(rng.integers(1, VOCAB, src.shape), jnp.int32))
    np.testing.assert_allclose(forward(variables, garbage, tgt_in, src_mask=mask), ref, rtol=1e-5, atol=1e-5)
    longer = jnp.concatenate([src, jnp.zeros((3, 2), jnp.int32)], axis=1)
    np.testing.assert_allclose(forward(variables, longer, tgt_in, src_mask=longer != 0), ref, rtol=1e-5, atol=1e-5)
    if decoder != "mha":
        return
    # Beam search at width 1 is greedy; wider beams score their hypotheses as the parallel forward does.
    one = ed.generate_seq2seq(model, variables, src, max_new_tokens=4, bos_id=1, beam_size=1)
    assert (np.asarray(one["tokens"]) == tokens).all()
    beam = ed.generate_seq2seq(model, variables, src, max_new_tokens=4, bos_id=1, beam_size=3)
    assert np.all(np.asarray(beam["score"]) >= np.asarray(out["score"]) - 1e-5)
    for j in range(3):
        hyp = beam["beams"][:, j]
        lp = _teacher_forced(forward, variables, src, 1, hyp)
        np.testing.assert_allclose(np.asarray(beam["beam_scores"][:, j]),
                                   np.take_along_axis(lp, np.asarray(hyp)[..., None], 2).sum((1, 2)), rtol=1e-4)


@pytest.mark.parametrize("field,value,match", [
    ("decoder_mixers", "hydra", "decoder_mixers: 'hydra' is bidirectional only"),
    ("encoder_mixers", "nope", "encoder_mixers='nope' is not allowed"),
    ("num_heads", 3, "num_heads=3 must divide"),
    ("num_decoder_layers", 0, "num_decoder_layers=0 must be an int > 0"),
    ("norm", "batch", "norm='batch' is not allowed"),
    ("pad_id", 99, "pad_id=99"),
    ("mixer_kwargs", {"mha": {"causal": True}}, "set by the side"),
    ("mixer_kwargs", {"mha": {"heads": 2}}, "mha.heads is not a field"),
    ("layers", 2, "layers is not an encoder–decoder field"),
])
def test_bad_configs_are_one_line_errors(field, value, match):
    cfg = ed.default_config().to_dict()
    cfg.update(vocab_size=VOCAB, d_model=16, num_heads=2)
    cfg[field] = value
    with pytest.raises(ConfigError, match=match) as err:
        ed.build(cfg)
    assert "\n" not in str(err.value)


def test_bad_generate_requests_are_one_line_errors():
    cfg = ed.default_config()
    cfg.vocab_size = VOCAB
    model, variables = ed.build(cfg), {}  # the requests are checked before the variables are read
    src = jnp.ones((1, 3), jnp.int32)
    for kwargs, match in (({"max_new_tokens": 0, "bos_id": 1}, "max_new_tokens=0"),
                          ({"max_new_tokens": 2, "bos_id": 1, "beam_size": 0}, "beam_size=0"),
                          ({"max_new_tokens": 2, "bos_id": VOCAB}, "bos_id=7")):
        with pytest.raises(ConfigError, match=match):
            ed.generate_seq2seq(model, variables, src, **kwargs)
    with pytest.raises(ConfigError, match="src must be"):
        ed.generate_seq2seq(model, variables, jnp.ones((3,), jnp.int32), max_new_tokens=2, bos_id=1)


# ----------------------------------------------------------------------------- the reverse task

PAD, BOS, EOS, FIRST, SYMBOLS, MAX_LEN = 0, 1, 2, 3, 10, 8


def reverse_batch(rng, n):
    """Sources of 1..MAX_LEN random symbols (right-padded), targets = reversed source + EOS (padded)."""
    lens = rng.integers(1, MAX_LEN + 1, n)
    src = np.where(np.arange(MAX_LEN) < lens[:, None], rng.integers(FIRST, FIRST + SYMBOLS, (n, MAX_LEN)), PAD)
    tgt = np.zeros((n, MAX_LEN + 1), np.int32)
    for i, length in enumerate(lens):
        tgt[i, :length] = src[i, :length][::-1]
        tgt[i, length] = EOS
    tgt_in = np.concatenate([np.full((n, 1), BOS), tgt[:, :-1]], axis=1)
    return (jnp.asarray(a, jnp.int32) for a in (src, tgt_in, tgt))


def train_reverse(decoder="mha", steps=1500, batch=64, seed=0):
    """Trains a 2 + 2 layer, d=64 model on the reverse task; returns (model, params, seconds)."""
    cfg = ed.default_config()
    cfg.vocab_size, cfg.d_model, cfg.num_heads, cfg.decoder_mixers = FIRST + SYMBOLS, 64, 4, decoder
    cfg.mixer_kwargs = {"mamba2": {"d_state": 16, "headdim": 16, "chunk_size": 8}}
    model = ed.build(cfg)
    rng = np.random.default_rng(seed)
    src, tgt_in, _ = reverse_batch(rng, batch)
    params = model.init(jax.random.key(seed), src, tgt_in)
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 100, steps), weight_decay=0.01)
    state = opt.init(params)

    @jax.jit
    def update(params, state, src, tgt_in, tgt):
        def loss(p):
            logp = jax.nn.log_softmax(model.apply(p, src, tgt_in), axis=-1)
            nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
            real = tgt != PAD
            return (nll * real).sum() / real.sum()

        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    start = time.time()
    for _ in range(steps):
        params, state = update(params, state, *reverse_batch(rng, batch))
    return model, params, time.time() - start


@pytest.mark.slow
@pytest.mark.parametrize("decoder,steps", [("mha", 1500), ("mamba2", 2000)])
def test_reverse_task_is_learned_to_99_percent(decoder, steps):
    model, params, seconds = train_reverse(decoder, steps)
    src, _, tgt = reverse_batch(np.random.default_rng(123), 512)  # held out: another seed
    out = ed.generate_seq2seq(model, params, src, max_new_tokens=MAX_LEN + 1, bos_id=BOS)
    real = np.asarray(tgt) != PAD
    accuracy = (np.asarray(out["tokens"]) == np.asarray(tgt))[real].mean()
    print(f"reverse task, decoder {decoder}: token accuracy {accuracy:.4f} after {steps} steps in {seconds:.1f} s")
    assert accuracy >= 0.99

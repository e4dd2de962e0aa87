"""ngram (Akyürek et al. 2024 n-gram heads): a float64 loop that literally finds matching n-grams.

The contract (step, causality, segments, mixing matrix vs fast path,
bfloat16, state_size vs cache bytes, no retrace, default construction) is
checked for every mixer in ``test_contract.py``; here: the references, token
ids (in the parallel form, the matrix and the step) and the n-gram pattern.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.ngram  # noqa: F401  (registers "ngram")
from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers.harness import Jitted
from tests.mixers.ref_attention_mixers import (
    assert_gradients_match, ngram_matches, ngram_matrix, ngram_reference, params_of, random_variables)
from tests.ops.utils import RTOL_F64, RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL


def _tokens(rng, batch, length, vocab=3):
    return rng.integers(0, vocab, (batch, length))


def _embed(rng, tokens, width=16, vocab=3):
    """Vectors from a small vocabulary, so that exact matches occur."""
    table = rng.standard_normal((vocab, width)).astype(np.float32)
    return jnp.asarray(table[tokens])


def _segments(rng, batch, length):
    return np.cumsum(rng.random((batch, length)) < 0.2, axis=1) % 2


def _setup(rng, batch=2, length=13, width=16, **kw):
    kw.setdefault("max_length", 40)
    m = Jitted(get("ngram")(**kw))
    tok = _tokens(rng, batch, length)
    x = _embed(rng, tok, width)
    return m, tok, x, random_variables(m.module, x, rng)


def _ref(m, v, x, keys, seg=None, xp=np):
    return ngram_reference(params_of(v, xp), x, keys, n=m.n, num_heads=m.num_heads, head_dim=m.head_dim,
                           segment_ids=seg, xp=xp)


def test_default_parameters(rng):
    m = Jitted(get("ngram")())
    tok = _tokens(rng, 2, 13)
    x = _embed(rng, tok)
    v = harness.init(m, x)
    assert m.n == 2 and m.num_heads == 1
    p = params_of(v)
    assert set(p) == {"v_proj", "out_proj"} and p["v_proj"].shape == (16, 16)
    assert_rel_close(m.apply(v, x), _ref(m, v, np.asarray(x, np.float64), np.asarray(x)), RTOL, "default ngram")


def test_bigram_by_hand(rng):
    # tokens 0 1 2 0 1 0 1: a bigram head at t attends to the s right after earlier copies of token t.
    tok = np.array([[0, 1, 2, 0, 1, 0, 1]])
    expected = {0: [], 1: [], 2: [], 3: [1], 4: [2], 5: [1, 4], 6: [2, 5]}
    assert ngram_matches(tok, 2) == [[expected[t] for t in range(7)]]
    m, _, x, v = _setup(rng, 1, 7, n=2)
    M = np.asarray(m.apply(v, x, token_ids=jnp.asarray(tok), method="mixing_matrix"))[0, 0]
    for t in range(7):
        row = np.zeros(7)
        row[expected[t]] = 1.0 / max(len(expected[t]), 1)
        np.testing.assert_array_equal(M[t], row)
    # Trigram: (x_{s-2}, x_{s-1}) == (x_{t-1}, x_t). The pair (0, 1) ends at t=4 and t=6 and
    # precedes s=2 and s=5; (1, 0) ends at t=5 but precedes only s=6 > 5.
    assert ngram_matches(tok, 3)[0][4:] == [[2], [], [2, 5]]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_matches_reference_float32(rng, n):
    m, tok, x, v = _setup(rng, n=n, num_heads=2)
    x64 = np.asarray(x, np.float64)
    seg = _segments(rng, 2, 13)
    y_ref = _ref(m, v, x64, tok)
    matched = [len(r) > 0 for row in ngram_matches(tok, n) for r in row]
    assert any(matched) and not all(matched)  # both kinds of rows occur
    # Vectors from a vocabulary: exact equality of x is the same as equality of tokens.
    assert_rel_close(m.apply(v, x), y_ref, RTOL, f"n={n} vectors")
    assert_rel_close(m.apply(v, x, token_ids=jnp.asarray(tok)), y_ref, RTOL, f"n={n} token ids")
    y_seg = _ref(m, v, x64, tok, seg)
    assert_rel_close(m.apply(v, x, token_ids=jnp.asarray(tok), segment_ids=jnp.asarray(seg)), y_seg, RTOL, "segments")
    assert rel_err(y_seg, y_ref) > 1e-3
    # Token ids that differ from the vectors' identity change the pattern.
    other = (tok + (np.arange(13) % 2)) % 3
    assert_rel_close(m.apply(v, x, token_ids=jnp.asarray(other)), _ref(m, v, x64, other), RTOL, "other ids")


@pytest.mark.parametrize("length, impl", [(1, "reference"), (37, "blockwise")])
def test_lengths(rng, length, impl):
    m, tok, x, v = _setup(rng, 1, length, n=2, impl=impl)
    y = m.apply(v, x)
    assert_rel_close(y, _ref(m, v, np.asarray(x, np.float64), tok), RTOL, f"l={length}")
    if length == 1:
        np.testing.assert_array_equal(np.asarray(y), 0.0)  # nothing earlier to match


def test_float64_exact(rng):
    tok = _tokens(rng, 2, 13)
    seg = _segments(rng, 2, 13)
    with jax.enable_x64(True):
        m = Jitted(get("ngram")(n=2, num_heads=2, max_length=16, dtype=jnp.float64))
        x = jnp.asarray(rng.standard_normal((3, 16))[tok])
        v = random_variables(m.module, x, rng)
        y = m.apply(v, x, segment_ids=jnp.asarray(seg))
        M = m.apply(v, x, segment_ids=jnp.asarray(seg), method="mixing_matrix")
        y_m = m.apply(v, x, M, method="apply_mixing_matrix")
        cache = m.apply(v, 2, method="init_cache")
        ys = []
        for t in range(13):
            y_t, cache = m.apply(v, x[:, t], cache, method="step")
            ys.append(y_t)
    assert y.dtype == jnp.float64 and cache["keys"].dtype == jnp.float64
    x64 = np.asarray(x)
    assert_rel_close(y, _ref(m, v, x64, tok, seg), RTOL_F64, "f64")
    assert_rel_close(y_m, _ref(m, v, x64, tok, seg), RTOL_F64, "f64 matrix")
    assert_rel_close(jnp.stack(ys, 1), _ref(m, v, x64, tok), RTOL_F64, "f64 step")


@pytest.mark.parametrize("impl", ["reference", "blockwise"])
def test_gradients(rng, impl):
    m, tok, x, v = _setup(rng, 2, 11, n=2, num_heads=2, impl=impl)
    seg = _segments(rng, 2, 11)
    assert_gradients_match(m.module, v, np.asarray(x), seg,
                           lambda p, xx: ngram_reference(p, xx, tok, n=2, num_heads=2, segment_ids=seg, xp=jnp),
                           RTOL_GRAD)


@pytest.mark.parametrize("tokens", [False, True])
def test_matrix_is_the_closed_form(rng, tokens):
    """The matrix read off the op is 1[s ∈ S_t] / |S_t| for every head, with segments (vectors or token ids)."""
    m, tok, x, v = _setup(rng, n=2, num_heads=2)
    seg = _segments(rng, 2, 13)
    kw = dict(token_ids=jnp.asarray((tok + 1) % 3)) if tokens else {}  # ids that differ from the vectors'
    M = m.apply(v, x, segment_ids=jnp.asarray(seg), method="mixing_matrix", **kw)
    want = ngram_matrix((tok + 1) % 3 if tokens else np.asarray(x), n=2, num_heads=2, segment_ids=seg)
    assert M.shape == (2, 2, 13, 13)
    assert_rel_close(M, want, 1e-6, "ngram matrix vs closed form")
    sums = want.sum(-1)
    assert (sums == 0).any() and (sums > 0).any()  # rows without a match and rows with one


def test_step_with_token_ids_and_longer_grams(rng):
    # The contract steps n = 2 on vectors; here n = 3, and token mode.
    m, tok, x, v = _setup(rng, n=3, num_heads=2, max_length=16)
    harness.check_step_matches_parallel(m, v, x)
    # Token mode: the cache keeps int32 tokens; step needs token_ids.
    m, tok, x, v = _setup(rng, n=2, max_length=16)
    other = (tok + (np.arange(13) % 2)) % 3  # not the tokens that x encodes
    y = m.apply(v, x, token_ids=jnp.asarray(other))
    cache = m.apply(v, 2, method="init_cache", use_token_ids=True)
    assert cache["keys"].shape == (2, 16) and cache["keys"].dtype == jnp.int32
    ys = []
    for t in range(13):
        y_t, cache = m.apply(v, x[:, t], cache, token_ids=jnp.asarray(other[:, t]), method="step")
        ys.append(y_t)
    assert_rel_close(jnp.stack(ys, 1), y, RTOL, "token step rollout")
    with pytest.raises(ValueError, match="token_ids"):
        m.apply(v, x[:, 0], cache, method="step")
    with pytest.raises(ValueError, match="token_ids must have shape"):
        m.apply(v, x[:, 0], cache, token_ids=jnp.zeros((3,), jnp.int32), method="step")


def test_bfloat16_cache(rng):
    _, tok, x, v = _setup(rng, n=2)
    m16 = Jitted(get("ngram")(n=2, max_length=40, dtype=jnp.bfloat16))
    cache = m16.apply(v, 2, method="init_cache")
    # Values in bfloat16; vector keys in float32, so that equality stays exact.
    assert cache["v"].dtype == jnp.bfloat16 and cache["keys"].dtype == jnp.float32
    y_t, _ = m16.apply(v, x[:, 0].astype(jnp.bfloat16), cache, method="step")
    assert y_t.dtype == jnp.bfloat16


def test_state_size():
    m = get("ngram")(d_model=16, num_heads=2, max_length=10)
    # Per position: the input vector (16 float32) + values (2·8 float32); plus the counter.
    assert m.apply({}, 100, method="state_size") == 100 * (16 * 4 + 16 * 4) + 4
    assert m.apply({}, 100, True, method="state_size") == 100 * (4 + 16 * 4) + 4
    cache = jax.eval_shape(lambda: m.apply({}, 3, 100, use_token_ids=True, method="init_cache"))
    size = m.apply({}, 100, True, method="state_size")
    assert sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(cache)) == 3 * size


def test_errors(rng):
    with pytest.raises(ConfigError, match=r"^ngram\.n=0 must be an int >= 1"):
        get("ngram")(n=0)
    with pytest.raises(ConfigError, match=r"^ngram\.impl='fast' .*allowed: auto, reference, blockwise"):
        get("ngram")(impl="fast")
    with pytest.raises(ConfigError, match=r"^ngram\.num_heads=3 must divide d_model=16"):
        get("ngram")(d_model=16, num_heads=3)
    x = harness.random_input(rng, 1, 4, 16)
    m = Jitted(get("ngram")())
    v = random_variables(m.module, x, rng)
    with pytest.raises(ValueError, match="token_ids"):
        m.apply(v, x, token_ids=jnp.zeros((1, 3), jnp.int32))
    with pytest.raises(ValueError, match="max_length is required"):
        m.apply(v, 1, method="init_cache")

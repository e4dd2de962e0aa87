"""JRT-Prompt (seqjax.data.recall.jrt_prompt): the context repeated, targets moved with their tokens."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.data import mqar, recall
from seqjax.data.mqar import IGNORE
from seqjax.errors import ConfigError


def _expected(inputs, targets, c, repeats, start):
    """Row by row, in plain Python lists."""
    out_in, out_t = [], []
    for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
        ctx, ctx_t = row_in[start:start + c], row_t[start:start + c]
        out_in.append(row_in[:start] + ctx * repeats + row_in[start + c:])
        out_t.append(row_t[:start] + [IGNORE] * c * (repeats - 1) + ctx_t + row_t[start + c:])
    return np.asarray(out_in), np.asarray(out_t)


@pytest.mark.parametrize("repeats, start", [(2, 0), (3, 0), (1, 0), (2, 1)])
def test_mqar_context_read_twice(rng, repeats, start):
    n, length = 4, 24
    batch = mqar.sample_batch(jax.random.key(int(rng.integers(2**31))), batch_size=8, seq_len=length,
                              num_kv_pairs=n, vocab_size=32)
    # Random targets inside the context too, so the test sees where each copy's targets go.
    batch["targets"] = batch["targets"].at[:, 1].set(jnp.arange(8, dtype=jnp.int32))
    c = 2 * n - start
    fn = jax.jit(functools.partial(recall.jrt_prompt, context_length=c, repeats=repeats, start=start))
    out = fn(batch)
    e_in, e_t = _expected(np.asarray(batch["inputs"]), np.asarray(batch["targets"]), c, repeats, start)
    assert out["inputs"].shape == out["targets"].shape == (8, length + (repeats - 1) * c)
    assert out["inputs"].dtype == out["targets"].dtype == jnp.int32
    np.testing.assert_array_equal(out["inputs"], e_in)
    np.testing.assert_array_equal(out["targets"], e_t)
    # The scored values are the original ones, each still right after its query key.
    t_old, t_new = np.asarray(batch["targets"]), np.asarray(out["targets"])
    for r in range(8):
        assert sorted(t_old[r][t_old[r] != IGNORE]) == sorted(t_new[r][t_new[r] != IGNORE])
        for pos in np.flatnonzero(t_new[r] != IGNORE):
            if pos >= start + repeats * c:  # a query: its token is the key bound to the target value
                k = np.asarray(out["inputs"])[r, pos]
                pairs = np.asarray(batch["inputs"])[r, :2 * n].reshape(n, 2)
                assert pairs[pairs[:, 0] == k, 1][0] == t_new[r, pos]


def test_set_disjointness_answer_moves(rng):
    m, n = 3, 5
    batch = recall.set_disjointness(jax.random.key(int(rng.integers(2**31))), batch_size=6, size_a=m, size_b=n,
                                    vocab_size=32)
    out = recall.jrt_prompt(batch, m + n + 2)
    ans = m + n + 2 + (m + n + 2)
    assert (np.asarray(out["inputs"])[:, ans] == recall.ANS).all()
    np.testing.assert_array_equal(np.asarray(out["targets"])[:, ans], np.asarray(batch["targets"])[:, m + n + 2])
    assert ((np.asarray(out["targets"]) != IGNORE).sum(1) == 1).all()
    np.testing.assert_array_equal(out["inputs"][:, :m + n + 2], out["inputs"][:, m + n + 2:2 * (m + n + 2)])


@pytest.mark.parametrize("kwargs, field", [(dict(context_length=0), "context_length"),
                                           (dict(context_length=9), "context_length"),
                                           (dict(context_length=2, repeats=0), "repeats"),
                                           (dict(context_length=2, start=-1), "start"),
                                           (dict(context_length=8, start=1), "context_length")])
def test_bad_arguments(kwargs, field):
    batch = {"inputs": jnp.zeros((2, 8), jnp.int32), "targets": jnp.zeros((2, 8), jnp.int32)}
    with pytest.raises(ConfigError, match=rf"^{field}="):
        recall.jrt_prompt(batch, **kwargs)
    with pytest.raises(ConfigError, match=r"^batch="):
        recall.jrt_prompt({**batch, "segment_ids": batch["inputs"]}, 2)

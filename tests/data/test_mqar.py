"""Tests of the MQAR sampler (seqjax.data.mqar) against a brute-force walk over the tokens.

The walk reads each row as a reader would: the first ``2n`` tokens bind keys to
values; every scored position must hold a key whose bound value is the target.
The query slots are checked against the power law of Zoology's generator with
chi-square tests at a fixed seed (the tests would fail for a wrong law: one of
them shows that a uniform law is rejected).
"""

import functools
import math

import jax
import numpy as np
import pytest

from seqjax.data import mqar
from seqjax.errors import ConfigError


@functools.cache
def _sampler(**kw):
    return jax.jit(functools.partial(mqar.sample_batch, **kw))  # one compile per setting


def _sample(key, **kw):
    """``sample_batch`` under jit, as numpy (eager dispatch of every op is slow on a busy CPU)."""
    out = _sampler(**kw)(key)
    return np.asarray(out["inputs"]), np.asarray(out["targets"])


def _walk(inputs, targets, n, vocab_size):
    """Brute-force check of every row; returns the query slot of each key, ``(rows, n)`` (key order)."""
    half = vocab_size // 2
    slots = []
    for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
        keys, values = row_in[0:2 * n:2], row_in[1:2 * n:2]
        assert all(1 <= k < half for k in keys) and len(set(keys)) == n  # keys: distinct, lower half, not 0
        assert all(half <= v < vocab_size for v in values) and len(set(values)) == n  # values: upper half
        bound = dict(zip(keys, values))
        queried = {}
        for t, (tok, tgt) in enumerate(zip(row_in, row_t)):
            assert 0 <= tok < vocab_size
            if tgt == mqar.IGNORE:
                continue
            assert t >= 2 * n and (t - 2 * n) % 2 == 0  # queries sit on the even slots after the pairs
            assert tok in bound and tgt == bound[tok]  # the scored target is the value bound to its key
            assert tok not in queried  # each key queried once
            queried[tok] = (t - 2 * n) // 2
        assert sorted(queried) == sorted(keys)  # ... and every key is queried
        slots.append([queried[k] for k in keys])
    return np.asarray(slots)


def _law(num_slots, power_a):
    p = power_a * np.arange(1, num_slots + 1, dtype=np.float64) ** (power_a - 1)
    return p / p.sum()


def _chi2_critical(df, z=3.09):
    """Wilson-Hilferty approximation of the chi-square quantile at the normal quantile ``z`` (0.999)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(counts, expected):
    return float(np.sum((counts - expected) ** 2 / expected))


@pytest.mark.parametrize("seq_len, n, vocab, fill", [(16, 2, 12, False), (64, 4, 64, True), (70, 8, 40, True),
                                                     (65, 16, 8192, False)])
def test_every_scored_target_is_the_value_bound_to_its_key(seq_len, n, vocab, fill, rng):
    key = jax.random.key(int(rng.integers(2**31)))
    inputs, targets = _sample(key, batch_size=64, seq_len=seq_len, num_kv_pairs=n, vocab_size=vocab,
                              random_fill=fill)
    assert inputs.shape == targets.shape == (64, seq_len) and inputs.dtype == targets.dtype == np.int32
    _walk(inputs, targets, n, vocab)
    assert np.all((targets != mqar.IGNORE).sum(axis=1) == n)
    unused = (targets == mqar.IGNORE) & (np.arange(seq_len) >= 2 * n)
    if fill:  # random filler, from the whole vocabulary
        assert len(np.unique(inputs[unused])) > min(vocab, 200) // 2
    else:
        assert np.all(inputs[unused] == 0)


def test_query_slots_follow_the_power_law():
    """n = 1: the slot is drawn from p(g) ∝ a (g + 1)^(a - 1); a uniform law fails the same test."""
    num_slots, rows, key = 30, 20000, jax.random.key(7)
    expected = rows * _law(num_slots, 0.01)
    counts = {}
    for a in (0.01, 1.0):
        inputs, targets = _sample(key, batch_size=rows, seq_len=2 + 2 * num_slots, num_kv_pairs=1, vocab_size=8,
                                  power_a=a, random_fill=False)
        pos = np.argmax(targets != mqar.IGNORE, axis=1)  # one scored position per row
        counts[a] = np.bincount((pos - 2) // 2, minlength=num_slots)
    crit = _chi2_critical(num_slots - 1)
    assert _chi2(counts[0.01], expected) < crit
    assert counts[0.01][0] > 0.2 * rows  # the law is steep: a quarter of the queries right after the pairs
    assert _chi2(counts[1.0], rows / num_slots * np.ones(num_slots)) < crit  # power_a = 1: uniform
    assert _chi2(counts[1.0], expected) > 10 * crit  # ... which the power-law test rejects


def test_several_queries_match_numpy_draws_without_replacement():
    """n = 4 of 20 slots: the slot of each key has the law of NumPy's choice(replace=False, p) (Zoology's)."""
    num_slots, n, rows, a = 20, 4, 20000, 0.01
    inputs, targets = _sample(jax.random.key(3), batch_size=rows, seq_len=2 * n + 2 * num_slots, num_kv_pairs=n,
                              vocab_size=4 * n, power_a=a, random_fill=False)
    slots = _walk(inputs[:500], targets[:500], n, 4 * n)  # the brute-force walk on a part
    pos = np.nonzero(targets != mqar.IGNORE)[1].reshape(rows, n)
    ours = np.bincount(((pos - 2 * n) // 2).ravel(), minlength=num_slots)
    assert np.array_equal(np.bincount(slots.ravel(), minlength=num_slots),
                          np.bincount(((pos[:500] - 2 * n) // 2).ravel(), minlength=num_slots))
    gen = np.random.default_rng(0)
    draws = np.stack([gen.choice(num_slots, n, replace=False, p=_law(num_slots, a)) for _ in range(rows)])
    theirs = np.bincount(draws.ravel(), minlength=num_slots)
    # Two-sample chi-square on the slot counts (negatively correlated within a row: conservative).
    stat = float(np.sum((ours - theirs) ** 2 / (ours + theirs)))
    assert stat < _chi2_critical(num_slots - 1)
    # The first key's slot is the first draw: exactly the power law.
    first = np.argmax((targets != mqar.IGNORE) & (inputs == inputs[:, :1]), axis=1)
    counts = np.bincount((first - 2 * n) // 2, minlength=num_slots)
    assert _chi2(counts, rows * _law(num_slots, a)) < _chi2_critical(num_slots - 1)


def test_jit_is_deterministic_and_keys_differ():
    kw = dict(batch_size=8, seq_len=32, num_kv_pairs=4, vocab_size=100, power_a=0.1)
    first = _sample(jax.random.key(1), **kw)
    again = jax.jit(functools.partial(mqar.sample_batch, **kw))(jax.random.key(1))  # another trace, same batch
    np.testing.assert_array_equal(np.asarray(again["inputs"]), first[0])
    np.testing.assert_array_equal(np.asarray(again["targets"]), first[1])
    other = _sample(jax.random.key(2), **kw)
    assert not np.array_equal(other[0], first[0])


@pytest.mark.parametrize("kw, message", [
    (dict(seq_len=15, num_kv_pairs=4), "seq_len=15 is not allowed; allowed: an int >= 16 = 4 * num_kv_pairs"),
    (dict(num_kv_pairs=0), "num_kv_pairs=0 is not allowed; allowed: an int >= 1"),
    (dict(num_kv_pairs=2.0), "num_kv_pairs=2.0 is not allowed; allowed: an int >= 1"),
    (dict(vocab_size=9, num_kv_pairs=4), "vocab_size=9 is not allowed; allowed: an int >= 10 = 2 * num_kv_pairs + 2"),
    (dict(batch_size=0), "batch_size=0 is not allowed; allowed: an int >= 1"),
    (dict(power_a=0.0), "power_a=0.0 is not allowed; allowed: a number > 0"),
    (dict(power_a=float("nan")), "power_a=nan is not allowed; allowed: a number > 0"),
])
def test_bad_arguments_raise_one_line(kw, message):
    args = dict(batch_size=2, seq_len=64, num_kv_pairs=4, vocab_size=64) | kw
    with pytest.raises(ValueError) as e:
        mqar.sample_batch(jax.random.key(0), **args)
    assert isinstance(e.value, ConfigError) and str(e.value).startswith(message) and "\n" not in str(e.value)


def test_field_prefix_names_the_config_field():
    with pytest.raises(ConfigError, match=r"^config.task.seq_len=8 is not allowed; allowed: an int >= 16 = "
                                          r"4 \* config.task.num_kv_pairs"):
        mqar.validate(batch_size=1, seq_len=8, num_kv_pairs=4, vocab_size=64, power_a=0.01, prefix="config.task.")

"""Tests of the set-disjointness sampler (seqjax.data.recall) against a brute-force reading of each row."""

import functools

import jax
import numpy as np
import pytest

from seqjax.data import recall
from seqjax.data.mqar import IGNORE
from seqjax.errors import ConfigError


@functools.cache
def _sampler(**kw):
    return jax.jit(functools.partial(recall.set_disjointness, **kw))  # one compile per setting


def _sample(key, **kw):
    out = _sampler(**kw)(key)
    return np.asarray(out["inputs"]), np.asarray(out["targets"])


def _read(row_in, row_t, m, n, vocab):
    """Parses one row; returns (A, B, the scored target) after checking the layout."""
    assert row_in[0] == recall.BOS and row_in[m + 1] == recall.SEP and row_in[m + n + 2] == recall.ANS
    assert all(t == recall.PAD for t in row_in[m + n + 3:])
    a, b = row_in[1:m + 1], row_in[m + 2:m + n + 2]
    for s in (a, b):
        assert len(set(s)) == len(s) and all(recall.FIRST_ELEMENT <= x < vocab for x in s)
    scored = [t for t, y in enumerate(row_t) if y != IGNORE]
    assert scored == [m + n + 2]  # the answer position only
    return set(a), set(b), row_t[m + n + 2]


@pytest.mark.parametrize("m, n, vocab, seq_len", [(4, 16, 64, None), (16, 4, 64, 24), (1, 1, 8, None),
                                                  (8, 32, 2048, 50)])
def test_every_label_agrees_with_a_brute_force_check(m, n, vocab, seq_len, rng):
    key = jax.random.key(int(rng.integers(2**31)))
    inputs, targets = _sample(key, batch_size=400, size_a=m, size_b=n, vocab_size=vocab, seq_len=seq_len)
    length = seq_len or m + n + 3
    assert inputs.shape == targets.shape == (400, length) and inputs.dtype == targets.dtype == np.int32
    labels = []
    for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
        a, b, label = _read(row_in, row_t, m, n, vocab)
        assert label == (recall.YES if a & b else recall.NO)
        assert len(a & b) <= 1  # an intersecting example shares exactly one element
        labels.append(label == recall.YES)
    # Balanced: 400 fair coins, 4.5 standard deviations.
    assert abs(np.mean(labels) - 0.5) < 4.5 * 0.5 / np.sqrt(400)


def test_element_answer_is_the_one_shared_element(rng):
    m, n, vocab = 5, 7, 40
    inputs, targets = _sample(jax.random.key(int(rng.integers(2**31))), batch_size=300, size_a=m, size_b=n,
                              vocab_size=vocab, answer="element")
    where_a, where_b = [], []
    for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
        a, b, answer = _read(row_in, row_t, m, n, vocab)
        assert a & b == {answer}
        where_a.append(row_in[1:m + 1].index(answer))
        where_b.append(row_in[m + 2:m + n + 2].index(answer))
    # The shared element is a uniform element of A placed at a uniform position of B (chi-square, 0.999).
    for where, k, crit in ((where_a, m, 18.5), (where_b, n, 22.5)):
        counts = np.bincount(where, minlength=k)
        expected = len(where) / k
        assert np.sum((counts - expected) ** 2 / expected) < crit, counts


def test_jit_is_deterministic_and_keys_differ():
    kw = dict(batch_size=16, size_a=3, size_b=9, vocab_size=50)
    first, again, other = (_sample(jax.random.key(k), **kw) for k in (4, 4, 5))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("kw, message", [
    (dict(size_a=0), "size_a=0 is not allowed; allowed: an int >= 1"),
    (dict(size_b=-1), "size_b=-1 is not allowed; allowed: an int >= 1"),
    (dict(vocab_size=25), "vocab_size=25 is not allowed; allowed: an int >= 26 = 6 special ids + size_a + size_b"),
    (dict(seq_len=22), "seq_len=22 is not allowed; allowed: an int >= 23 = size_a + size_b + 3"),
    (dict(answer="yes"), "answer='yes' is not allowed; allowed: label, element"),
    (dict(batch_size=0), "batch_size=0 is not allowed; allowed: an int >= 1"),
])
def test_bad_arguments_raise_one_line(kw, message):
    args = dict(batch_size=2, size_a=4, size_b=16, vocab_size=64) | kw
    with pytest.raises(ValueError) as e:
        recall.set_disjointness(jax.random.key(0), **args)
    assert isinstance(e.value, ConfigError) and str(e.value).startswith(message) and "\n" not in str(e.value)

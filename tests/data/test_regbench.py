"""RegBench DFAs, prompts and metrics against independent brute-force references."""

import itertools

import numpy as np
import pytest

from seqjax.data import regbench as rb
from seqjax.errors import ConfigError

# --- independent references (walk tables directly, no seqjax helpers) -------


def _walk(table, start, string):
    """State after reading ``string`` from ``start``; -1 when an edge is missing."""
    s = start
    for c in string:
        s = int(table[s][c])
        if s < 0:
            return -1
    return s


def _language(table, max_len, start=0):
    """All accepted strings (tuples) of length <= max_len (all states accept)."""
    letters = [c for c in range(20) if any(row[c] >= 0 for row in table)]
    out = {()}
    frontier = [((), start)]
    for _ in range(max_len):
        nxt = []
        for string, s in frontier:
            for c in letters:
                t = int(table[s][c])
                if t >= 0:
                    nxt.append((string + (c,), t))
        out.update(w for w, _ in nxt)
        frontier = nxt
    return out


def _equivalent(t1, s1, t2, s2):
    """Exact language equality of (t1 from s1) and (t2 from s2) by product-automaton search."""
    seen = {(s1, s2)}
    stack = [(s1, s2)]
    while stack:
        p, q = stack.pop()
        for c in range(20):
            a, b = int(t1[p][c]), int(t2[q][c])
            if (a < 0) != (b < 0):
                return False
            if a >= 0 and (a, b) not in seen:
                seen.add((a, b))
                stack.append((a, b))
    return True


def _reachable(table):
    seen, stack = {0}, [0]
    while stack:
        s = stack.pop()
        for t in table[s]:
            if t >= 0 and int(t) not in seen:
                seen.add(int(t))
                stack.append(int(t))
    return seen


# --- vocabulary ---------------------------------------------------------------


def test_vocabulary_is_fixed():
    assert rb.VOCAB_SIZE == 20 and rb.VOCAB[0] == "." and rb.VOCAB[19] == "|"
    assert "".join(rb.VOCAB[1:19]) == "abcdefghijklmnopqr"
    np.testing.assert_array_equal(rb.encode("ab|r."), [1, 2, 19, 18, 0])
    assert rb.decode(rb.encode("qr|ab")) == "qr|ab"
    with pytest.raises(ConfigError, match="text="):
        rb.encode("abz")


# --- DFAs ---------------------------------------------------------------------


def test_sampled_graph_constraints(rng):
    for _ in range(200):
        t, alphabet = rb.sample_graph(rng)
        n = t.shape[0]
        assert 4 <= n <= 12 and t.shape[1] == 20 and t.dtype == np.int32
        assert 4 <= len(alphabet) <= 18 and len(set(alphabet.tolist())) == len(alphabet)
        assert set(alphabet.tolist()) <= set(range(1, 19))
        for s in range(n):
            letters = np.flatnonzero(t[s] >= 0)
            targets = t[s, letters]
            assert 1 <= len(letters) <= 3
            assert set(letters.tolist()) <= set(alphabet.tolist())
            assert s not in targets.tolist()  # no self loops
            assert len(set(targets.tolist())) == len(targets)  # distinct targets


def test_minimised_dfa_same_language_brute_force(rng):
    for _ in range(60):
        raw, _ = rb.sample_graph(rng)
        dfa = rb.DFA(rb.minimize(rb.trim(raw)))
        assert dfa.num_states <= raw.shape[0]
        # Strings up to length 7 (out-degree <= 3 keeps this small) and exact product check.
        assert _language(raw, 7) == _language(dfa.transitions, 7)
        assert _equivalent(raw, 0, dfa.transitions, 0)


def test_minimised_dfa_is_minimal_trimmed_and_canonical(rng):
    for _ in range(60):
        dfa = rb.sample_dfa(rng)
        t = dfa.transitions
        n = dfa.num_states
        assert _reachable(t) == set(range(n))
        assert ((t >= 0).sum(axis=1) >= 1).all()  # no dead ends after minimisation
        for p, q in itertools.combinations(range(n), 2):
            assert not _equivalent(t, p, t, q), (p, q)
        np.testing.assert_array_equal(rb.minimize(t), t)  # idempotent
        np.testing.assert_array_equal(rb.canonicalize(t), t)


def test_minimize_hand_example():
    # 1 and 2 are equivalent (both only 'c' back to 0); 3 is unreachable.
    t = np.full((4, 20), -1, np.int32)
    t[0, 1], t[0, 2] = 1, 2  # a → 1, b → 2
    t[1, 3] = 0  # c → 0
    t[2, 3] = 0
    t[3, 4] = 0
    expect = np.full((2, 20), -1, np.int32)
    expect[0, 1] = expect[0, 2] = 1
    expect[1, 3] = 0
    np.testing.assert_array_equal(rb.minimize(rb.trim(t)), expect)


def test_canonical_form_invariant_to_relabelling(rng):
    for _ in range(40):
        raw, _ = rb.sample_graph(rng)
        n = raw.shape[0]
        perm = np.concatenate([[0], 1 + rng.permutation(n - 1)])  # keep the start at 0
        relabelled = np.full_like(raw, -1)
        for s in range(n):
            relabelled[perm[s]] = np.where(raw[s] >= 0, perm[np.maximum(raw[s], 0)], -1)
        assert rb.DFA(rb.minimize(rb.trim(raw))) == rb.DFA(rb.minimize(rb.trim(relabelled)))
        # Any start label: canonicalize(start=...) recovers the same table.
        m = rb.minimize(rb.trim(raw))
        p = rng.permutation(m.shape[0])
        moved = np.full_like(m, -1)
        for s in range(m.shape[0]):
            moved[p[s]] = np.where(m[s] >= 0, p[np.maximum(m[s], 0)], -1)
        np.testing.assert_array_equal(rb.canonicalize(moved, start=int(p[0])), m)


def test_dfa_validation():
    with pytest.raises(ConfigError, match="shape"):
        rb.DFA(np.zeros((3, 19), np.int32))
    bad = np.full((2, 20), -1, np.int32)
    bad[0, 19] = 1
    with pytest.raises(ConfigError, match="separator"):
        rb.DFA(bad)
    with pytest.raises(ConfigError, match="num_states"):
        rb.sample_dfa(np.random.default_rng(0), num_states=(1, 3))
    with pytest.raises(ConfigError, match="alphabet_size"):
        rb.sample_dfa(np.random.default_rng(0), alphabet_size=(4, 19))


def test_make_dfas_dedupes_and_splits_disjointly():
    train, val, test = rb.make_dfas(3, 40, 10)
    assert (len(train), len(val), len(test)) == (40, 5, 5)
    keys = [d.key() for d in train + val + test]
    assert len(set(keys)) == len(keys)
    # Eval sets do not depend on the train size; smaller train sets are prefixes.
    train2, val2, test2 = rb.make_dfas(3, 15, 10)
    assert val2 == val and test2 == test and train2 == train[:15]
    # Two states, one letter: 0 -x-> 1 -x-> 0 minimises to the one-state x*, so there are
    # exactly 18 languages; dedupe finds all 18 and cannot find a 19th.
    one = dict(num_states=(2, 2), alphabet_size=(1, 1), out_edges=(1, 1))
    all18 = rb.make_dfas(0, 18, 0, **one)[0]
    assert sorted(int(np.flatnonzero(d.transitions[0] >= 0)[0]) for d in all18) == list(range(1, 19))
    assert all(d.num_states == 1 for d in all18)
    with pytest.raises(ConfigError, match="distinct DFAs"):
        rb.make_dfas(0, 19, 0, max_attempts=2000, **one)


# --- prompts ------------------------------------------------------------------


def test_prompts_follow_the_dfa(rng):
    for _ in range(30):
        dfa = rb.sample_dfa(rng)
        tokens = rb.sample_prompt(dfa, rng, num_strings=(2, 5), string_length=(1, 9))
        assert tokens.dtype == np.int32 and (tokens != rb.PAD).all()
        strings = rb.decode(tokens).split("|")
        assert 2 <= len(strings) <= 5
        for s in strings:
            assert 1 <= len(s) <= 9
            assert _walk(dfa.transitions, 0, rb.encode(s)) >= 0  # every step legal


def test_prompt_cap_and_dead_end():
    t = np.full((2, 20), -1, np.int32)
    t[0, 1] = 1  # a → 1, then no edges: walks stop after one letter
    dfa = rb.DFA(t)
    tokens = rb.sample_prompt(dfa, np.random.default_rng(0), num_strings=(4, 4), string_length=(5, 5))
    assert rb.decode(tokens) == "a|a|a|a"
    dfa2 = rb.sample_dfa(np.random.default_rng(1))
    capped = rb.sample_prompt(dfa2, np.random.default_rng(2), max_chars=37)
    full = rb.sample_prompt(dfa2, np.random.default_rng(2), max_chars=10_000)
    assert len(capped) == 37 and len(full) > 37
    np.testing.assert_array_equal(capped, full[:37])


# --- legal_next and metrics ---------------------------------------------------


def _legal_brute(table, tokens):
    out = np.zeros((len(tokens), 20), bool)
    for i in range(len(tokens)):
        text = rb.decode(tokens[: i + 1])
        if "." in text.split("|")[-1]:
            continue
        current = rb.encode(text.split("|")[-1])
        for c in range(1, 19):
            out[i, c] = _walk(table, 0, list(current) + [c]) >= 0
    return out


def test_legal_next_matches_brute_force(rng):
    for _ in range(20):
        dfa = rb.sample_dfa(rng)
        tokens = rb.sample_prompt(dfa, rng, num_strings=(2, 4), string_length=(1, 8))
        # Also an illegal letter and padding: no legal letters until the next "|".
        noisy = np.concatenate([tokens, [19, int(rng.integers(1, 19)), 5, 19], tokens[:3], [0, 0]]).astype(np.int32)
        np.testing.assert_array_equal(rb.legal_next(dfa, noisy), _legal_brute(dfa.transitions, noisy))


def _metrics_brute(probs, inputs, targets, table):
    correct = tvd = count = 0
    for i in range(len(targets)):
        if not (1 <= targets[i] <= 18):
            continue
        text = rb.decode(inputs[: i + 1]).split("|")[-1]
        legal = [c for c in range(1, 19) if _walk(table, 0, list(rb.encode(text)) + [c]) >= 0]
        p_dfa = np.zeros(20)
        p_dfa[legal] = 1.0 / len(legal)
        correct += int(np.argmax(probs[i])) in legal
        tvd += 0.5 * sum(abs(probs[i][v] - p_dfa[v]) for v in range(20))
        count += 1
    return correct, tvd, count


def test_dfa_metrics_match_brute_force(rng):
    for _ in range(10):
        dfa = rb.sample_dfa(rng)
        tokens = rb.sample_prompt(dfa, rng, num_strings=(2, 4), string_length=(1, 8))
        inputs, targets = tokens[:-1], tokens[1:]
        logits = rng.normal(size=(len(inputs), 20)) * 3
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        m = rb.dfa_metrics(probs, inputs, targets, dfa.transitions)
        c, t, n = _metrics_brute(probs, inputs, targets, dfa.transitions)
        assert m["count"] == n == int(rb.scored(targets).sum()) > 0
        assert m["correct"] == c
        np.testing.assert_allclose(m["tvd"], t, rtol=1e-12)


def test_exact_and_uniform_predictors(rng):
    dfa = rb.sample_dfa(rng)
    tokens = rb.sample_prompt(dfa, rng, num_strings=(3, 5), string_length=(2, 9))
    inputs, targets = tokens[:-1], tokens[1:]
    legal = rb.legal_next(dfa, inputs)
    exact = legal / np.maximum(legal.sum(-1, keepdims=True), 1)
    m = rb.dfa_metrics(exact, inputs, targets, dfa.transitions)
    assert m["correct"] == m["count"] and m["tvd"] == pytest.approx(0.0, abs=1e-12)
    # Uniform over all 20 tokens: TVD = ½(k·(1/k − 1/20) + (20 − k)/20) = 1 − k/20 with k legal letters;
    # greedy ties pick token 0 (pad), never legal.
    uniform = np.full((len(inputs), 20), 1 / 20)
    m = rb.dfa_metrics(uniform, inputs, targets, dfa.transitions)
    use = rb.scored(targets)
    k = legal[use].sum(-1)
    assert m["correct"] == 0
    np.testing.assert_allclose(m["tvd"], np.sum(1 - k / 20), rtol=1e-12)
    # Renormalising over letters: uniform over 18 letters gives TVD = 1 − k/18.
    m = rb.dfa_metrics(uniform, inputs, targets, dfa.transitions, renormalize_letters=True)
    np.testing.assert_allclose(m["tvd"], np.sum(1 - k / 18), rtol=1e-12)

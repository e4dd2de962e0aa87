"""ICLL task (RegBench): data stream, masked loss, DFA accuracy/TVD evaluation, n-gram baselines."""

import json
from collections import Counter

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from seqjax.data import regbench as rb
from seqjax.errors import ConfigError
from seqjax.tasks.icll import ICLLTask, evaluate_examples
from seqjax.tasks.icll_baselines import ngram_baseline, ngram_probs

MAX_LEN = 24


def _config(data_dir, **overrides):
    cfg = ml_collections.ConfigDict(dict(
        name="icll", data_dir=str(data_dir), num_train_dfas=20, num_eval_dfas=8, seed=1, max_length=MAX_LEN,
        num_strings=(2, 3), string_length=(1, 8), max_chars=4096, eval_split="test", eval_examples=0,
        eval_batch_size=3))
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    tfds.disable_progress_bar()
    return ICLLTask(_config(tmp_path_factory.mktemp("tfds")))


def test_train_iterator_shapes_and_resume(task):
    it = task.train_iterator(seed=0, batch_size=4)
    b = next(it)
    assert set(b) == {"inputs", "targets"}
    assert b["inputs"].shape == b["targets"].shape == (4, MAX_LEN) and b["inputs"].dtype == np.int32
    assert ((b["inputs"] >= 0) & (b["inputs"] < 20)).all()
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it)["inputs"] for _ in range(7)]  # 20 records / 4: crosses epochs
    again = task.train_iterator(seed=0, batch_size=4)
    again.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(again)["inputs"], w)


def test_loss_matches_numpy(rng, task):
    targets = rng.integers(0, 20, size=(3, 7)).astype(np.int32)
    logits = rng.normal(size=(3, 7, 20)).astype(np.float32) * 2
    loss, metrics = jax.jit(task.loss)(jnp.asarray(logits), {"targets": jnp.asarray(targets)})
    lg = logits.astype(np.float64)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    nll = acc = n = 0.0
    for b in range(3):
        for t in range(7):
            y = targets[b, t]
            if 1 <= y <= 18:
                nll -= logp[b, t, y]
                acc += float(np.argmax(lg[b, t]) == y)
                n += 1
    assert n > 0
    np.testing.assert_allclose(float(loss), nll / n, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["ce"]), nll / n, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["acc"]), acc / n, rtol=1e-6)


def _oracle(examples, kind):
    """predict() that looks rows up by their inputs: exact DFA distribution, or uniform logits."""
    table = {np.asarray(ex["inputs"])[:MAX_LEN].tobytes(): ex for ex in examples}

    def predict(batch):
        out = np.zeros(batch["inputs"].shape + (20,), np.float32)
        if kind == "uniform":
            return out
        for r, row in enumerate(batch["inputs"]):
            nonpad = np.flatnonzero(row != rb.PAD)  # real inputs never contain pad
            ex = table.get(row[: nonpad[-1] + 1].tobytes()) if len(nonpad) else None
            if ex is None:  # filler row of the last batch
                continue
            n = min(len(ex["inputs"]), MAX_LEN)
            legal = rb.legal_next(ex["transitions"], ex["inputs"][:n])
            out[r, :n] = np.where(legal, 0.0, -1e9)
        return out

    return predict


def test_evaluate_exact_and_uniform(task):
    examples = task.eval_examples_list()
    assert len(examples) == 4  # half of 8 eval DFAs
    exact = task.evaluate(_oracle(examples, "exact"), seed=0)
    assert exact["num_examples"] == 4 and exact["num_positions"] > 0
    assert exact["accuracy"] == 1.0 and exact["tvd"] == pytest.approx(0.0, abs=1e-6)
    json.dumps(exact)
    # Uniform logits: greedy picks token 0 (pad, never legal) and TVD = 1 − k/20 per position.
    uni = task.evaluate(_oracle(examples, "uniform"), seed=0)
    ks = []
    for ex in examples:
        x, y = ex["inputs"][:MAX_LEN], ex["targets"][:MAX_LEN]
        legal = rb.legal_next(ex["transitions"], x)
        ks.extend(legal[rb.scored(y)].sum(-1).tolist())
    assert uni["num_positions"] == len(ks) == exact["num_positions"]
    assert uni["accuracy"] == 0.0
    np.testing.assert_allclose(uni["tvd"], np.mean(1 - np.array(ks) / 20), rtol=1e-9)


def test_prompts_longer_than_max_length_are_cut(tmp_path):
    t = ICLLTask(_config(tmp_path, num_strings=(4, 4), string_length=(8, 8), max_length=10, num_train_dfas=4,
                         num_eval_dfas=2, eval_batch_size=2))
    examples = t.eval_examples_list()
    assert all(len(ex["inputs"]) == 4 * 8 + 3 - 1 for ex in examples)
    seen = []

    def predict(batch):
        seen.append(batch["inputs"].shape)
        return np.zeros(batch["inputs"].shape + (20,), np.float32)

    m = t.evaluate(predict, seed=0)
    assert seen == [(2, 10)]
    assert m["num_positions"] == sum(int(rb.scored(ex["targets"][:10]).sum()) for ex in examples)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config.task.eval_split"):
        ICLLTask(_config(tmp_path, eval_split="train"))
    with pytest.raises(ConfigError, match="config.task.num_strings"):
        ICLLTask(_config(tmp_path, num_strings=(3, 2)))
    with pytest.raises(ConfigError, match="config.task.max_length"):
        ICLLTask(_config(tmp_path, max_length=0))


# --- n-gram baselines ---------------------------------------------------------


def test_ngram_hand_computed():
    # "abc|bca|ab", predicting after the final "ab".
    # order 1: counts a=3, b=3, c=2                          → 3/8, 3/8, 2/8
    # order 2: after "b": 3 occurrences (2 past + now), c twice → P(c)=2/3; β=1/3 split over a, b by
    #          the unigram (3/11 each)                       → 1/6, 1/6, 2/3
    # order 3: after "ab": 2 occurrences, c once → P(c)=1/2; β=1/2 split over a, b by order 2
    #                                                        → 1/4, 1/4, 1/2
    tokens = rb.encode("abc|bca|ab")
    want = {1: [3 / 8, 3 / 8, 2 / 8], 2: [1 / 6, 1 / 6, 2 / 3], 3: [1 / 4, 1 / 4, 1 / 2]}
    for n, p in want.items():
        row = ngram_probs(tokens, n)[-1]
        np.testing.assert_allclose(row[[1, 2, 3]], p, rtol=1e-12)
        assert row.sum() == pytest.approx(1.0)
    # Right after "|": order 2 conditions on "string start": 3 starts (2 past + now), "a" and "b"
    # began one string each → 1/3 each; β = 1/3 goes to "c", the only unseen letter.
    row = ngram_probs(rb.encode("abc|bca|"), 2)[-1]
    np.testing.assert_allclose(row[[1, 2, 3]], [1 / 3, 1 / 3, 1 / 3], rtol=1e-12)


def _ngram_brute(tokens, n):
    """From-scratch recount at every position on the decoded text (independent of the incremental code)."""
    out = np.zeros((len(tokens), 20))
    for i in range(len(tokens)):
        parts = rb.decode(tokens[: i + 1]).split("|")
        letters = sorted(set("".join(parts)))
        ctx = [Counter() for _ in range(n + 1)]
        cont = [Counter() for _ in range(n + 1)]
        for s in parts:
            for k in range(1, n + 1):
                padded = "^" * (k - 1) + s
                for j in range(len(s) + 1):
                    h = padded[j:j + k - 1]
                    ctx[k][h] += 1
                    if j < len(s):
                        cont[k][h + s[j]] += 1
        cur = "^" * n + parts[-1]
        dist = None
        for k in range(1, n + 1):
            h = cur[len(cur) - (k - 1):] if k > 1 else ""
            p = {c: cont[k][h + c] / ctx[k][h] for c in letters}
            unseen = [c for c in letters if p[c] == 0]
            if dist is not None and unseen:
                beta = 1 - sum(p.values())
                z = sum(dist[c] for c in unseen)
                for c in unseen:
                    p[c] = beta * dist[c] / z
            dist = p
        total = sum(dist.values())
        for c in letters:
            out[i, rb.VOCAB.index(c)] = dist[c] / total
    return out


def test_ngram_matches_brute_force(rng):
    for _ in range(4):
        dfa = rb.sample_dfa(rng)
        tokens = rb.sample_prompt(dfa, rng, num_strings=(3, 5), string_length=(1, 7))
        for n in (1, 2, 3):
            np.testing.assert_allclose(ngram_probs(tokens, n), _ngram_brute(tokens, n), rtol=1e-10, atol=1e-14)


def test_ngram_baseline_uses_the_shared_metrics(task):
    examples = task.eval_examples_list()
    for n in (1, 3):
        base = ngram_baseline(examples, n, max_length=MAX_LEN)
        probs = {np.asarray(ex["inputs"])[:MAX_LEN].tobytes(): ngram_probs(ex["inputs"][:MAX_LEN], n)
                 for ex in examples}

        def predict(batch):
            out = np.full(batch["inputs"].shape + (20,), -1e9)  # float64: keep exact ties
            for r, row in enumerate(batch["inputs"]):
                for key, p in probs.items():
                    k = len(p)
                    if row[:k].tobytes() == key and not row[k:].any():
                        out[r, :k] = np.log(np.maximum(p, 1e-30))
            return out

        via_task = evaluate_examples(examples, predict, max_length=MAX_LEN, batch_size=3)
        assert base["num_positions"] == via_task["num_positions"] > 0
        assert base["accuracy"] == pytest.approx(via_task["accuracy"], abs=1e-12)
        assert base["tvd"] == pytest.approx(via_task["tvd"], abs=1e-5)
        assert 0.0 <= base["tvd"] <= 1.0 and 0.0 < base["accuracy"] <= 1.0

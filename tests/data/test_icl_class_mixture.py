"""Tests of the class_mixture sampler and of randomised in-context labels (seqjax.data.icl)."""

import jax
import numpy as np
import pytest

from seqjax.data import icl
from seqjax.data.icl_mixtures import CLASS_MIXTURE_MEMBERS, class_mixture_members
from seqjax.errors import ConfigError


def _key(rng):
    return jax.random.key(int(rng.integers(2**31)))


def _sample(key, task, b, n, d, **kw):
    return jax.jit(lambda k: icl.sample_batch(k, task, b, n, d, **kw))(key)


def _lstsq_residual(feats, y):
    """Relative float64 least-squares residual of ``y`` on ``feats`` (0 when y is in their span)."""
    w, *_ = np.linalg.lstsq(feats, y, rcond=None)
    return np.linalg.norm(feats @ w - y) / np.linalg.norm(y)


def test_each_prompt_is_exactly_its_members_function(rng):
    # n = 12 > d = 3 points: a linear prompt is exactly linear in x, a quadratic one exactly
    # linear in x*x, and a depth-2 tree takes at most 4 values; no member passes another's test.
    kw = {"p_linear": 1.0, "p_quadratic": 1.0, "p_decision_tree": 1.0, "depth": 2}
    out = _sample(_key(rng), "class_mixture", 96, 12, 3, **kw)
    xs, ys, member = (np.asarray(out[k], np.float64) for k in ("xs", "ys", "member"))
    member = member.astype(int)
    seen = set()
    for b in range(96):
        name = CLASS_MIXTURE_MEMBERS[member[b]]
        seen.add(name)
        lin, quad = _lstsq_residual(xs[b], ys[b]), _lstsq_residual(xs[b] ** 2, ys[b])
        distinct = len(np.unique(np.round(ys[b], 5)))
        if name == "linear":
            assert lin < 1e-5 and quad > 1e-3, (b, lin, quad)
        elif name == "quadratic":
            assert quad < 1e-5 and lin > 1e-3, (b, lin, quad)
        else:
            assert name == "decision_tree" and distinct <= 4 and lin > 1e-3, (b, distinct, lin)
    assert seen == {"linear", "quadratic", "decision_tree"}


def test_member_frequencies_follow_the_weights(rng):
    out = _sample(_key(rng), "class_mixture", 4000, 2, 2, p_linear=1.0, p_relu2nn=3.0, p_decision_tree=0.0,
                  hidden_size=4)
    member = np.asarray(out["member"])
    assert set(np.unique(member)) == {CLASS_MIXTURE_MEMBERS.index("linear"), CLASS_MIXTURE_MEMBERS.index("relu2nn")}
    frac = np.mean(member == CLASS_MIXTURE_MEMBERS.index("linear"))
    assert abs(frac - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 4000), frac  # weights are normalised: 1/(1+3)


def test_members_and_defaults():
    kw = icl.task_kwargs_with_defaults("class_mixture")
    # Default: Panwar et al.'s DR + DT mixture, 0.5 each.
    assert class_mixture_members(kw) == (("linear", "decision_tree"), (0.5, 0.5))
    kw = icl.task_kwargs_with_defaults("class_mixture", {"p_linear": 0, "p_decision_tree": 0, "p_sparse_linear": 2, "p_quadratic": 6})
    assert class_mixture_members(kw) == (("sparse_linear", "quadratic"), (0.25, 0.75))


@pytest.mark.parametrize("kwargs, field", [
    ({"p_linear": 0, "p_decision_tree": 0}, "p_<member> are all 0"),
    ({"p_linear": -0.5}, "task_kwargs.p_linear=-0.5 must be a number >= 0"),
    ({"sparsity": 0}, "task_kwargs.sparsity=0 must be a number > 0"),
    ({"p_fourier": 1.0}, "task_kwargs.p_fourier is not allowed"),
    ({"window": 2}, "task_kwargs.window is not allowed"),
    ({"sparsity": 2.7}, "task_kwargs.sparsity=2.7 must be a whole number"),
    ({"depth": 3.5}, "task_kwargs.depth=3.5 must be a whole number"),
])
def test_errors(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace("<", ".").replace(">", ".")) as info:
        icl.task_kwargs_with_defaults("class_mixture", kwargs)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------
# Randomised labels.


def test_randomized_labels_come_from_other_prompts_and_the_rest_is_untouched(rng):
    ys = rng.normal(size=(16, 30)).astype(np.float32)  # distinct values: each label identifies its prompt
    ctx, replaced = jax.jit(icl.randomize_labels)(_key(rng), ys, 0.4)
    ctx, replaced = np.asarray(ctx), np.asarray(replaced)
    np.testing.assert_array_equal(ctx[~replaced], ys[~replaced])  # untouched, bit for bit
    for b, i in zip(*np.nonzero(replaced)):
        rows = np.flatnonzero(ys[:, i] == ctx[b, i])
        assert rows.size == 1 and rows[0] != b  # the same point's label of another prompt
    # The fraction is Bernoulli(0.4) per label: 480 draws, 4 sigma.
    assert abs(replaced.mean() - 0.4) < 4 * np.sqrt(0.24 / replaced.size), replaced.mean()


def test_randomized_labels_are_reproducible_and_extremes(rng):
    ys = rng.normal(size=(5, 7)).astype(np.float32)
    key = _key(rng)
    a, b = icl.randomize_labels(key, ys, 0.5), icl.randomize_labels(key, ys, 0.5)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
    other = icl.randomize_labels(jax.random.fold_in(key, 1), ys, 0.5)
    assert not np.array_equal(np.asarray(other[1]), np.asarray(a[1]))
    none_ctx, none = icl.randomize_labels(key, ys, 0.0)
    assert not np.asarray(none).any() and np.array_equal(np.asarray(none_ctx), ys)
    all_ctx, every = icl.randomize_labels(key, ys, 1.0)
    assert np.asarray(every).all() and not np.any(np.asarray(all_ctx) == ys)
    with pytest.raises(ConfigError, match="batch of >= 2"):
        icl.randomize_labels(key, ys[:1], 0.5)

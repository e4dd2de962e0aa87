"""SEA (Lee et al., ICLR 2024) against its float64 reference (``ref_sea``), in the sparse regime.

The contract row (``test_contract.py``) runs SEA with ``top_k`` large enough
that every visible key is kept (so float32 and bfloat16 pick the same keys);
here ``K = 4, k = 2``: rows keep ``c(n) = round(8 / n)`` of their columns, a
strict subset once ``n >= 3``. Checked: the pure selection functions, the
output and the mixing matrix (the sparse softmax rows) against the reference,
with and without packed segments; gradients (at inputs whose kept and dropped
column scores are well apart); the ``step`` rollout and causality; linear
memory growth (and, slow, that the check fails when ``L > k·K``); lengths 1 and
prime in bfloat16 (4,096: slow).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import mixers
from seqjax.mixers.sea import column_bounds, column_count, key_slots, select_keys
from seqjax.models.param_groups import group_of
from tests.mixers import harness
from tests.mixers import ref_sea as ref
from tests.ops.utils import assert_rel_close

WIDTH = 16
CONFIG = dict(num_heads=2, compressed_width=4, top_k=2, num_features=4, max_length=16)
GAP = 1e-3  # kept vs dropped column scores at least this far apart: float32 picks what float64 picks


def _module(**kw):
    return mixers.get("sea")(**{**CONFIG, **kw})


_BASE = {}


def _setup(rng, segment_ids=None, tries=20):
    """The module, a ``(2, 13)`` input, perturbed variables and the float64 selection (score gap > ``GAP``).

    One ``init`` per module (parameters do not depend on the length), shared by the tests.
    """
    module = _module()
    if "variables" not in _BASE:
        _BASE["variables"] = harness.jit_init(module, harness.random_input(rng, 2, 13, WIDTH))
    for _ in range(tries):
        x = harness.random_input(rng, 2, 13, WIDTH)
        variables = harness.perturb(_BASE["variables"], rng, 0.3)
        p = ref.params(variables)
        C, pos, starts = ref.estimate(p, x, num_heads=2, compressed_width=4, segment_ids=segment_ids)
        sel, gap = ref.selections(C, pos, starts, top_k=2)
        if gap > GAP:
            return module, x, variables, p, sel
    raise AssertionError("no input with a clear selection")


def test_pure_selection_functions(rng):
    assert [column_count(n, 2, 4) for n in (1, 2, 3, 4, 5, 6, 11, 100)] == [4, 4, 3, 2, 2, 1, 1, 1]
    assert [ref.column_count(n, 2, 4) for n in (1, 2, 3, 4, 5, 6, 11, 100)] == [4, 4, 3, 2, 2, 1, 1, 1]
    # G = max_n min(c(n), n, K)·⌈n/K⌉: bounded (~2k) while L <= k·K, growing as ⌈L/K⌉ beyond.
    assert key_slots(1, 2, 4) == 1 and key_slots(256, 8, 32) == key_slots(64, 8, 32) == 16
    assert key_slots(1024, 1, 4) == 256
    start, end = column_bounds(jnp.arange(1, 40), 7)
    for n in range(1, 40):  # the columns tile [0, n) in order
        covered = [s for j in range(7) for s in range(int(start[n - 1, j]), int(end[n - 1, j]))]
        assert covered == list(range(n))
    # select_keys against the reference's ranking on random scores.
    K, n, lo, k = 6, np.arange(1, 30), 3, 3
    scores = rng.standard_normal((len(n), K))
    idx, valid = select_keys(jnp.asarray(scores), jnp.asarray(n), lo, k, key_slots(29, k, K))
    C = scores[None, :, None, :]
    sel, _ = ref.selections(C, [list(n - 1)], [[lo] * len(n)], k)
    for t in range(len(n)):
        assert np.asarray(idx[t])[np.asarray(valid[t])].tolist() == sel[0][t][0]


@pytest.mark.parametrize("segmented", [False, True])
def test_output_and_mixing_matrix_match_reference(segmented, rng):
    seg = np.asarray([[0] * 5 + [1] * 8, [3] * 9 + [0] * 4]) if segmented else None
    module, x, variables, p, sel = _setup(rng, segment_ids=seg)
    J = harness.Jitted(module)
    kw = {} if seg is None else {"segment_ids": jnp.asarray(seg)}
    y = J.apply(variables, x, **kw)
    assert_rel_close(y, ref.sea_output(p, np.asarray(x, np.float64), sel, 2), 2e-5, "y")
    M = J.apply(variables, x, method="mixing_matrix", **kw)
    want = ref.probabilities(p, x, sel, 2)
    assert_rel_close(M, want, 2e-5, "M")
    keys = (want > 0).sum(-1)  # the selection is sparse: later rows keep fewer keys than they see
    assert keys[:, :, -1].max() < 13 - (5 if segmented else 0) and keys.min() >= 1


def test_gradients_match_reference(rng):
    module, x, variables, p, sel = _setup(rng)
    x, sel = x[:1, :6], sel[:1][0][:6]  # a causal prefix keeps its selection (and its score gap)
    sel = [sel]
    w = rng.standard_normal(x.shape)

    def loss(params, x):
        return jnp.sum(module.apply({**variables, "params": params}, x) * w)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)
    names = ("q_proj", "k_proj", "v_proj", "out_proj")
    with jax.enable_x64(True):
        def ref_loss(kernels, x):
            return jnp.sum(ref.sea_output({**p, **kernels}, x, sel, 2, xp=jnp) * w)

        r_p, r_x = jax.jit(jax.grad(ref_loss, argnums=(0, 1)))({n: jnp.asarray(p[n]) for n in names},
                                                              jnp.asarray(np.asarray(x, np.float64)))
    assert_rel_close(g_x, r_x, 2e-4, "dx")
    for n in names:
        assert_rel_close(nn.meta.unbox(g_p[n]["kernel"]), r_p[n], 2e-4, f"d{n}")
    # The selection is piecewise constant: the estimator gets no gradient from the output,
    # so it is kept out of weight decay (which alone would shrink it to zero).
    for n in ("enc", "dec", "cnn"):
        assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(nn.meta.unbox(g_p[n])))
    for leaf in (("enc", "kernel"), ("dec", "kernel"), ("cnn",)):
        assert group_of(("backbone", "block_0", "mixer") + leaf, 2, ["sea"]) == "no_decay"


def test_step_equals_parallel_and_is_causal(rng):
    module, x, variables, _, _ = _setup(rng)
    J = harness.Jitted(module)
    harness.check_step_matches_parallel(J, variables, x, rtol=1e-5)
    harness.check_causal(J, variables, x, rng)


@pytest.mark.parametrize("grad", [pytest.param(True, marks=pytest.mark.slow), False])
def test_memory_grows_linearly(grad, rng):
    """Temp memory, L = 64 -> 256 with K = 32, k = 8 (L <= k·K: G = 16 slots): 4.0x measured (both ways).

    Forward only by default (the compiles of forward + backward are slow: ``-m slow``).
    """
    # Jitted: a compiled init (the eager one costs seconds per module).
    ratio = harness.check_memory_growth(harness.Jitted(_module(compressed_width=32, top_k=8)), rng, length=64,
                                        width=WIDTH, grad=grad)
    assert ratio < 6, ratio


@pytest.mark.slow
@pytest.mark.parametrize("grad", [True, False])
def test_memory_check_fails_beyond_k_times_K(grad, rng):
    """K = 2, k = 1: each row keeps one column of ⌈n/2⌉ keys, G = L/2 slots: quadratic (15.7x), the check fails."""
    with pytest.raises(AssertionError, match="temp memory grew"):
        harness.check_memory_growth(harness.Jitted(_module(compressed_width=2, top_k=1)), rng, length=64,
                                    width=WIDTH, grad=grad)


def test_lengths_one_and_prime_in_bfloat16(rng):
    module = _module(dtype=jnp.bfloat16)
    J = harness.Jitted(module)
    variables = harness.perturb(_BASE.get("variables") or harness.jit_init(_module(), harness.random_input(rng)), rng)
    for length in (1, 17):
        x = harness.random_input(rng, 2, length, WIDTH).astype(jnp.bfloat16)
        y = J.apply(variables, x)
        assert y.shape == x.shape and y.dtype == jnp.bfloat16 and bool(jnp.isfinite(y.astype(jnp.float32)).all())


@pytest.mark.slow
def test_long_bfloat16_is_finite(rng):
    module = mixers.get("sea")(num_heads=4, dtype=jnp.bfloat16)
    x = harness.random_input(rng, 1, 4096, 32).astype(jnp.bfloat16)
    variables = harness.jit_init(module, x)
    y, g = jax.jit(jax.value_and_grad(lambda v, x: jnp.sum(module.apply(v, x).astype(jnp.float32) ** 2),
                                      argnums=1))(variables, x)
    assert np.isfinite(float(y)) and bool(jnp.isfinite(g.astype(jnp.float32)).all())


@pytest.mark.parametrize("segmented", [False, True])
def test_distillation_loss_matches_reference(segmented, rng):
    """The estimator's KL to the compressed exact attention, against float64 loops."""
    seg = np.asarray([[0] * 5 + [1] * 8, [3] * 9 + [0] * 4]) if segmented else None
    module, x, variables, p, _ = _setup(rng, segment_ids=seg)
    C, _, starts = ref.estimate(p, x, num_heads=2, compressed_width=4, segment_ids=seg)
    kw = {} if seg is None else {"segment_ids": jnp.asarray(seg)}
    got = jax.jit(lambda v, x: module.apply(v, x, method="distillation_loss", **kw))(variables, x)
    want = ref.distillation_loss(p, x, C, starts, num_heads=2)
    assert want > 1e-3  # a random estimator is far from the teacher
    np.testing.assert_allclose(float(got), want, rtol=2e-5)


def test_distillation_trains_the_estimator_only_in_training(rng):
    """Sown ×distill_weight when "losses" is mutable; its gradient reaches the estimator, not q/k/v; eval sows nothing."""
    module, x, variables, _, _ = _setup(rng)
    weighted = _module(distill_weight=0.5)
    apply = jax.jit(lambda v, x: weighted.apply(v, x, mutable=["losses"]))
    y, written = apply(variables, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jax.jit(weighted.apply)(variables, x)))
    unweighted = jax.jit(lambda v, x: module.apply(v, x, method="distillation_loss"))(variables, x)
    np.testing.assert_allclose(float(written["losses"]["distill_loss"][0]), 0.5 * float(unweighted), rtol=1e-6)

    grads = jax.jit(jax.grad(lambda params: module.apply({**variables, "params": params}, x,
                                                         method="distillation_loss")))(variables["params"])
    norms = {name: float(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads[name]))) for name in grads}
    assert norms["enc"] > 0 and norms["dec"] > 0 and norms["cnn"] > 0
    assert norms["q_proj"] == norms["k_proj"] == norms["v_proj"] == norms["out_proj"] == 0
    zero = _module(distill_weight=0.0)
    _, none = jax.jit(lambda v, x: zero.apply(v, x, mutable=["losses"]))(variables, x)
    assert "distill_loss" not in none.get("losses", {})

"""``pooling="lowrank_mha"`` (LAMA, Mehta et al.): output and gradients against a float64 NumPy
reference written from the paper's equations, padding, the heads in a model, config errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import models
from seqjax.errors import ConfigError
from seqjax.models import param_groups
from seqjax.models.pooling import LowRankAttentionPool
from tests.models.test_models import apply, cfg, init, params64, tokens
from tests.ops.utils import rel_err

B, L, D, K, M = 3, 6, 5, 3, 2


def lama_ref(x, context, U, V, P, mask=None):
    """Float64, position by position: f_t = Pᵀ(tanh(Uᵀh_t) ∘ tanh(Vᵀc)); per head a softmax over
    the real positions; o_i = Σ_t a_{t,i} h_t; the heads concatenated (zeros for a row of padding)."""
    x = np.asarray(x, np.float64)
    b, l, d = x.shape
    m = P.shape[1]
    mask = np.ones((b, l), bool) if mask is None else np.asarray(mask, bool)
    vc = np.tanh(V.T @ context)
    out = np.zeros((b, m * d))
    for bi in range(b):
        real = [t for t in range(l) if mask[bi, t]]
        if not real:
            continue
        f = np.stack([P.T @ (np.tanh(U.T @ x[bi, t]) * vc) for t in real])  # (n, m)
        for i in range(m):
            e = np.exp(f[:, i] - f[:, i].max())
            a = e / e.sum()
            out[bi, i * d:(i + 1) * d] = sum(a[j] * x[bi, t] for j, t in enumerate(real))
    return out


def _setup(rng):
    x = rng.standard_normal((B, L, D)).astype(np.float32)
    mask = np.ones((B, L), bool)
    mask[0, 4:] = False  # right padding
    mask[1, :2] = False  # left padding
    mask[2, :] = False  # nothing real: pools to 0
    module = LowRankAttentionPool(heads=M, rank=K)
    variables = nn.unbox(module.init(jax.random.PRNGKey(0), jnp.asarray(x)))
    # Fresh random parameters of a useful size (the context's init is small).
    p = {"context": rng.standard_normal(D), "U": {"kernel": rng.standard_normal((D, K))},
         "V": {"kernel": rng.standard_normal((D, K))}, "P": {"kernel": rng.standard_normal((K, M))}}
    assert jax.tree.structure(p) == jax.tree.structure(variables["params"])
    p32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float32).astype(np.float64), p)
    return module, x, mask, p32, p64


def _ref(p, x, mask):
    return lama_ref(x, p["context"], p["U"]["kernel"], p["V"]["kernel"], p["P"]["kernel"], mask)


def test_output_matches_the_float64_reference(rng):
    module, x, mask, p32, p64 = _setup(rng)
    y = module.apply({"params": p32}, jnp.asarray(x), jnp.asarray(mask))
    expected = _ref(p64, x, mask)
    assert y.shape == (B, M * D) and y.dtype == jnp.float32
    assert rel_err(y, expected) <= 2e-5
    assert np.all(np.asarray(y)[2] == 0)
    # Padding is not read: changing it changes nothing; without the mask the result moves.
    x2 = np.where(mask[..., None], x, x + 3.0).astype(np.float32)
    assert rel_err(module.apply({"params": p32}, jnp.asarray(x2), jnp.asarray(mask)), expected) <= 2e-5
    assert rel_err(module.apply({"params": p32}, jnp.asarray(x)), _ref(p64, x, None)) <= 2e-5
    assert rel_err(_ref(p64, x, None)[:2], expected[:2]) > 1e-3
    # The heads differ (distinct distributions), so concatenation is not a copy.
    assert rel_err(expected[:2, :D], expected[:2, D:]) > 1e-3


def test_gradients_match_central_differences_of_the_reference(rng):
    module, x, mask, p32, p64 = _setup(rng)
    w = rng.standard_normal((B, M * D))

    def loss(p, x):
        return jnp.sum(module.apply({"params": p}, x, jnp.asarray(mask)) * w)

    gp, gx = jax.grad(loss, argnums=(0, 1))(p32, jnp.asarray(x))
    x64 = x.astype(np.float64)
    leaves, tree = jax.tree.flatten(p64)

    def ref_loss(leaves, x):
        return float(np.sum(_ref(jax.tree.unflatten(tree, leaves), x, mask) * w))

    eps = 1e-6

    def numeric(arr, f):
        g = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            hi, lo = arr.copy(), arr.copy()
            hi[idx] += eps
            lo[idx] -= eps
            g[idx] = (f(hi) - f(lo)) / (2 * eps)
        return g

    for n, (leaf, got) in enumerate(zip(leaves, jax.tree.leaves(gp))):
        def f(a, n=n):
            return ref_loss(leaves[:n] + [a] + leaves[n + 1:], x64)
        assert rel_err(got, numeric(leaf, f)) <= 1e-4, n
    expected_gx = numeric(x64, lambda a: ref_loss(leaves, a))
    assert rel_err(gx, expected_gx) <= 1e-4
    assert np.all(np.asarray(gx)[~mask] == 0)  # padding gets no gradient


def test_classification_head_with_lowrank_pooling(rng):
    """Logits = Dense(LAMA pool of the unmasked backbone outputs); right padding changes nothing."""
    model = models.build(cfg(head="classification", num_classes=3, pooling="lowrank_mha", pooling_heads=M,
                             pooling_rank=K))
    x = tokens(rng, 3, 8)
    mask = np.ones((3, 8), bool)
    mask[0, 5:] = False
    mask[1, 2:] = False
    v = init(model, x)
    logits, state = apply(model, v, x, mask=jnp.asarray(mask), capture_intermediates=True)
    feats = np.asarray(state["intermediates"]["backbone"]["__call__"][0], np.float64)
    p = params64(v)
    pooled = _ref(p["head"]["pool"]["lowrank_mha"], feats, mask)
    expected = pooled @ p["head"]["logits"]["kernel"] + p["head"]["logits"]["bias"]
    assert p["head"]["logits"]["kernel"].shape == (M * 16, 3)
    assert rel_err(logits, expected) <= 2e-5
    x2 = np.array(x)
    x2[~mask] = (x2[~mask] + 1) % 13
    assert rel_err(apply(model, v, jnp.asarray(x2), mask=jnp.asarray(mask)), logits) <= 1e-6
    # The context vector is a rank-1 leaf (no decay); the projections are decayed matrices.
    c = cfg(head="classification", num_classes=3, pooling="lowrank_mha", pooling_heads=M, pooling_rank=K)
    labels = param_groups.param_labels(v["params"], c)
    assert labels["head"]["pool"]["lowrank_mha"]["context"] == "no_decay"
    assert labels["head"]["pool"]["lowrank_mha"]["U"]["kernel"] == "decay"
    # bfloat16 compute: float32 params and logits, close to float32.
    b16 = models.build(cfg(head="classification", num_classes=3, pooling="lowrank_mha", pooling_heads=M,
                           pooling_rank=K, dtype="bfloat16"))
    y16 = apply(b16, v, x, mask=jnp.asarray(mask))
    assert y16.dtype == jnp.float32 and rel_err(y16, logits) <= 5e-2


def test_retrieval_head_pools_each_document(rng):
    model = models.build(cfg(head="retrieval", num_classes=2, pooling="lowrank_mha", pooling_heads=2, pooling_rank=4,
                             causal=False))
    x = jnp.asarray(rng.integers(0, 13, (2, 2, 6)), jnp.int32)

    def forward(x):  # shapes only (no compile): one pool shared by both documents
        v = model.init(jax.random.PRNGKey(0), x)
        return model.apply(v, x), nn.unbox(v)["params"]

    y, p = jax.eval_shape(forward, x)
    assert y.shape == (2, 2) and y.dtype == jnp.float32
    assert p["pool"]["lowrank_mha"]["U"]["kernel"].shape == (16, 4)
    assert p["head"]["hidden"]["kernel"].shape == (4 * 2 * 16, 16)  # [u, v, u*v, u-v] of 2·d each


@pytest.mark.parametrize("field,value", [("pooling_heads", 0), ("pooling_rank", -1), ("pooling_rank", 1.5),
                                         ("pooling_heads", True)])
def test_bad_pooling_fields_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^config\.model\.{field}={value!r} must be an int > 0$"):
        models.build({**cfg(head="classification", num_classes=2, pooling="lowrank_mha").to_dict(), field: value})
    with pytest.raises(ConfigError, match="config.model.pooling='lowrank'"):
        models.build(cfg(head="classification", num_classes=2, pooling="lowrank"))

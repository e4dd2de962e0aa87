"""SeqBoat (``seqboat``) against the float64 reference of the paper's equations.

The contract (step vs parallel, causality, segments, matrix path, bfloat16,
no retrace) is checked in ``test_contract.py``; here: outputs and the mixing
matrix against ``ref_seqboat`` (causal and bidirectional, softmax and relu²
attention, with segments, lengths 1 and 13), gradients w.r.t. x and every
parameter (the configurator's through the chosen option's probability), the
step with a working memory that wraps around, that attention reaches
activated tokens further back than ``window`` positions, field errors, and
the linear memory growth of the compressed local attention.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.mixers import get
from tests.mixers import harness
from tests.mixers import ref_seqboat as ref
from tests.ops.utils import RTOL_GRAD, assert_rel_close, rel_err

RTOL = harness.RTOL
WIDTH = 16


def _module(**kw):
    kw.setdefault("d_state", 2)
    kw.setdefault("z_dim", 8)
    kw.setdefault("window", 3)
    kw.setdefault("max_positions", 8)
    return get("seqboat")(**kw)


def _setup(m, rng, batch, length):
    x = harness.random_input(rng, batch, length, WIDTH)
    return x, harness.perturb(harness.jit_init(m, x), rng, scale=0.3)


def _config(m):
    return dict(window=m.window, causal=m.causal, attention=m.attention, z_dim=m.z_dim)


_SLOW = pytest.mark.slow


@pytest.mark.parametrize("causal, attention, length", [
    (True, "softmax", 13),  # 13: a prime
    pytest.param(False, "softmax", 13, marks=_SLOW), pytest.param(True, "relu2", 13, marks=_SLOW),
    pytest.param(False, "relu2", 1, marks=_SLOW), pytest.param(True, "softmax", 1, marks=_SLOW)])
def test_matches_reference_and_matrix(rng, causal, attention, length):
    m = _module(causal=causal, attention=attention)
    x, v = _setup(m, rng, 2, length)
    J = harness.Jitted(m)
    p, x64 = ref.params_of(v), np.asarray(x, np.float64)
    active = ref.routing(p, x64, None, causal)
    assert_rel_close(J.apply(v, x), ref.reference(p, x64, active, **_config(m)), RTOL, "output")
    M = J.apply(v, x, method="mixing_matrix")
    A = ref.weights(p, x64, active, **_config(m))
    assert_rel_close(M, np.broadcast_to(A[:, None], M.shape), RTOL, "mixing matrix")
    seg = harness.segments(rng, 2, length)  # (the matrix with segments: test_contract.py)
    active_seg = ref.routing(p, x64, seg, causal)
    assert_rel_close(J.apply(v, x, segment_ids=jnp.asarray(seg)),
                     ref.reference(p, x64, active_seg, segment_ids=seg, **_config(m)), RTOL, "output, segments")
    if length > 1:
        assert 0 < active.mean() < 1, active.mean()  # the choice is not trivial on these inputs
    if length > 1 and causal and attention == "softmax":
        # Skipped tokens do not use up the working memory: on this draw some query attends to an
        # activated token more than w positions back (whether a draw has such a pair is chance).
        t, s = np.nonzero(np.abs(np.asarray(M)[:, 0]).max(axis=0) > 0)  # softmax: nonzero where allowed
        assert np.abs(t - s).max() > m.window, "no attention beyond the window: nothing was skipped"


@pytest.mark.parametrize("causal, attention", [(True, "softmax"), pytest.param(False, "relu2", marks=_SLOW)])
def test_gradients(rng, causal, attention):
    m = _module(causal=causal, attention=attention)
    x, v = _setup(m, rng, 2, 7)
    seg = harness.segments(rng, 2, 7)
    w = jnp.asarray(rng.standard_normal((2, 7, WIDTH)), jnp.float32)

    def loss(v, x):
        return jnp.sum(m.apply(v, x, segment_ids=jnp.asarray(seg)) * w)

    g_v, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v, x)
    p64, x64 = ref.params_of(v), np.asarray(x, np.float64)
    active = ref.routing(p64, x64, seg, causal)
    with jax.enable_x64(True):
        def ref_loss(p, x):
            y = ref.reference(p, x, active, segment_ids=seg, xp=jnp, **_config(m))
            return jnp.sum(y * jnp.asarray(np.asarray(w, np.float64)))

        r_p, r_x = jax.jit(jax.grad(ref_loss, argnums=(0, 1)))(ref.params_of(v, xp=jnp), jnp.asarray(x64))
        r_p = jax.tree.map(np.asarray, r_p)
    assert_rel_close(g_x, np.asarray(r_x), RTOL_GRAD, "d/dx")
    got = ref.params_of({"params": g_v["params"]})
    for name, want in r_p.items():
        assert_rel_close(got[name], want, RTOL_GRAD, f"d/d{name}")
    assert np.abs(got["router/kernel"]).max() > 0, "the configurator gets no gradient"


@pytest.mark.parametrize("attention", ["softmax", pytest.param("relu2", marks=_SLOW)])
def test_step_with_wrapping_working_memory(rng, attention):
    """Window 2 over 13 positions: the ring buffer of activated keys wraps several times."""
    m = _module(window=2, attention=attention)
    x, v = _setup(m, rng, 2, 13)
    # Lean the configurator towards "activate" so that more than 2w tokens are activated per row.
    v["params"]["router"]["bias"] = jnp.asarray([-1.0, 1.0])
    harness.check_step_matches_parallel(harness.Jitted(m), v, x)
    assert ref.routing(ref.params_of(v), np.asarray(x, np.float64)).sum(axis=1).min() > 2 * m.window


@pytest.mark.parametrize("field, value", [("d_state", 0), ("z_dim", 0), ("expand", 0), ("window", 0),
                                          ("attention", "laplace"), ("max_positions", 0),
                                          ("init_temp_scale", 0.0), ("causal", "yes")])
def test_bad_fields(field, value):
    with pytest.raises(ConfigError, match=rf"^seqboat\.{field}={value!r}"):
        get("seqboat")(**{field: value})


def test_bidirectional_has_no_step():
    with pytest.raises(ValueError, match="not causal"):
        _module(causal=False, d_model=WIDTH).bind({}).init_cache(1)


def test_state_does_not_grow():
    """The working memory holds w activated tokens, whatever the length."""
    bound = _module(window=4, d_model=WIDTH).bind({})
    assert bound.state_size(16) == bound.state_size(4096) > 0


@pytest.mark.parametrize("causal", [True, pytest.param(False, marks=_SLOW)])
def test_memory_grows_linearly(rng, causal):
    """Forward + backward temp memory from L = 32 to 128 at w = 4: linear (blocks of w against 2w or 3w keys)."""
    m = _module(causal=causal, window=4)
    # Jitted: a jitted init (the harness inits eagerly otherwise, 5 s of small compiles).
    ratio = harness.check_memory_growth(harness.Jitted(m), rng, length=32, width=WIDTH, exponent=1.0)
    print(f"causal={causal}: L=32 -> 128, w=4: temp memory x{ratio:.2f}")
    # The measurement discriminates: the ratio is above what a sub-linear claim (exponent 0.5) allows.
    assert ratio > 4**0.5 * 1.5, ratio


@pytest.mark.slow
def test_memory_check_can_fail(rng):
    """The harness check itself rejects a claim the layer does not meet (sub-linear growth)."""
    with pytest.raises(AssertionError, match="temp memory grew"):
        harness.check_memory_growth(harness.Jitted(_module(window=4)), rng, length=32, width=WIDTH, exponent=0.5)


@pytest.mark.slow
def test_bfloat16_is_finite_at_length_1_and_a_prime(rng):
    """Forward only here (the gradient in bfloat16: the 4,096 test; length 8: test_contract.py)."""
    m = _module(dtype=jnp.bfloat16)
    x = harness.random_input(rng, 2, 13, WIDTH)
    v = harness.jit_init(m, x)
    for length in (1, 13):
        y = jax.jit(m.apply)(v, x[:, :length].astype(jnp.bfloat16))
        assert y.dtype == jnp.bfloat16 and np.isfinite(np.asarray(y, np.float32)).all()


@pytest.mark.slow
@pytest.mark.parametrize("causal", [True, False])
def test_long_bfloat16_is_finite(rng, causal):
    m = get("seqboat")(causal=causal, dtype=jnp.bfloat16, d_state=16, window=128)
    x = harness.random_input(rng, 1, 4096, 32).astype(jnp.bfloat16)
    v = harness.jit_init(m, x)
    y, g = jax.jit(jax.value_and_grad(lambda v, x: jnp.sum(m.apply(v, x).astype(jnp.float32) ** 2),
                                      argnums=1))(v, x)
    assert np.isfinite(float(y)) and np.isfinite(np.asarray(g, np.float32)).all()
    y32 = jax.jit(get("seqboat")(causal=causal, d_state=16, window=128).apply)(v, x.astype(jnp.float32))
    assert rel_err(jax.jit(m.apply)(v, x).astype(jnp.float32), y32) < 0.1

"""S4 and S4D mixers: HiPPO inits, kernel = unrolled recurrence, float64 loop reference, contract."""

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.s4  # noqa: F401  (registers "s4", "s4d")
from seqjax.mixers import get
from seqjax.ops.hippo import nplr_legs
from tests.mixers import harness
from tests.mixers import ref_s4 as ref
from tests.ops.utils import RTOL_F64, RTOL_GRAD, RTOL_SCAN, assert_rel_close, rel_err

RTOL = harness.RTOL  # 2e-4, float32 mixers


# XLA's CPU backend spends most of a small test's time optimising machine code
# that then runs for microseconds: compile the tests' functions at LLVM -O0.
# The HLO (hence the arithmetic) is the same; only code generation is cheaper.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_COMPILED = {}


def _signature(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves), jax.config.jax_enable_x64


def _run(fn, *args):
    """``jax.jit(fn)(*args)``, compiled once per (fn, signature) with ``_FAST_COMPILE``."""
    key = (fn, _signature(args))
    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(fn).lower(*args).compile(_FAST_COMPILE)
    return _COMPILED[key](*args)


class _Jitted:
    """The module as the harness sees it (``.apply``), with every method compiled.

    Python ints and None among the positional arguments (batch size, length)
    are static; arrays are traced. Same computation as ``module.apply``, but
    one compilation per method and shape instead of op-by-op dispatch, which
    keeps this file's CPU time small.
    """

    def __init__(self, module):
        self.module = module
        self._fns = {}

    def apply(self, variables, *args, method=None, **kwargs):
        static = tuple(isinstance(a, int) or a is None for a in args)
        consts = tuple(a for a, s in zip(args, static) if s)
        arrays = [a for a, s in zip(args, static) if not s]
        key = (method, static, consts, tuple(sorted(kwargs)))
        if key not in self._fns:
            def fn(variables, arrays, kwargs):
                it, ct = iter(arrays), iter(consts)
                full = [next(ct) if s else next(it) for s in static]
                return self.module.apply(variables, *full, method=method, **kwargs)

            self._fns[key] = fn
        return _run(self._fns[key], variables, arrays, kwargs)


@functools.lru_cache(maxsize=None)
def _mk(name, **kw):
    """A compiled module; steps larger than the default [0.001, 0.1] so that the
    SSM part of the output is not swamped by the D u skip at short lengths."""
    kw.setdefault("d_state", 16)
    kw.setdefault("dt_min", 0.05)
    kw.setdefault("dt_max", 0.5)
    return _Jitted(get(name)(**kw))


# Fields that do not change the parameters: modules differing only in these
# share one initialisation.
_NOT_PARAMS = ("dtype", "discretization", "conv_impl", "kernel_impl", "scan_impl", "parent", "name")
_INITS = {}


def _init(m, x, seed=0):
    module = m.module if isinstance(m, _Jitted) else m
    fields = tuple(
        (f, repr(getattr(module, f))) for f in sorted(module.__dataclass_fields__) if f not in _NOT_PARAMS
    )
    key = (type(module), fields, x.shape[-1], seed, jax.config.jax_enable_x64)
    if key not in _INITS:
        args = (jax.random.PRNGKey(seed), jnp.ones((1, 1, x.shape[-1]), jnp.float32))
        _INITS[key] = jax.jit(module.init).lower(*args).compile(_FAST_COMPILE)(*args)
    return _INITS[key]


def _system(m, p, length, xp=np):
    """The reference's full discrete system for module ``m`` at ``length``."""
    m = m.module if isinstance(m, _Jitted) else m
    if m.mixer_name == "s4d":
        return ref.s4d_system(p, m.discretization, xp)
    return ref.s4_system(p, m.l_max or length, xp)


def _segments(rng, batch, length):
    # Random contiguous runs; ids repeat non-contiguously (cumsum % 3).
    return np.cumsum(rng.random((batch, length)) < 0.25, axis=1) % 3


def _legs_normal_eig(n):
    """Eigenpairs of the normal part S = A + p pᵀ of LegS, from the closed form."""
    A, _ = ref.legs_closed_form(n)
    p = np.sqrt(np.arange(n) + 0.5)
    return np.linalg.eig(A + np.outer(p, p))


# --- construction and initialisation ------------------------------------------


@pytest.mark.parametrize("name", ["s4d", "s4"])
def test_default_construction(rng, name):
    m = get(name)()
    x = harness.random_input(rng, 2, 13, 16)
    v = _init(m, x)
    y = _Jitted(m).apply(v, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y)))
    p = ref.params_of(v)
    assert p["Lambda_log_re"].shape == (16, 32) and p["B"].shape == (16, 32, 2)
    assert p["out"]["kernel"].shape == (16, 32)  # GLU: Dense(d, 2d)
    assert m.causal is True and m.bidirectional is False and m.output == "glu"
    assert get(name)(causal=False).bidirectional is True
    assert get(name)(bidirectional=True).causal is False


@pytest.mark.parametrize("a_init, N, d", [("legs", 64, 64), ("lin", 16, 3), ("inv", 16, 3)])
def test_s4d_init(rng, a_init, N, d):
    p = ref.params_of(_init(get("s4d")(d_state=N, a_init=a_init), harness.random_input(rng, 1, 1, d)))
    lam = -np.exp(p["Lambda_log_re"]) + 1j * p["Lambda_im"]
    n = np.arange(N // 2)
    if a_init == "lin":
        expected = -0.5 + 1j * np.pi * n
    elif a_init == "inv":
        expected = -0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1)
    else:
        w, _ = _legs_normal_eig(N)
        expected = w[w.imag > 0]
    by_imag = lambda z: z[np.argsort(z.imag)]  # noqa: E731
    for h in range(d):
        np.testing.assert_allclose(by_imag(lam[h]), by_imag(expected), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(p["B"][..., 0], 1.0)  # S4D default B = 1
    np.testing.assert_array_equal(p["B"][..., 1], 0.0)
    if d == 64:
        _check_random_inits(p, p["C"])


def _check_random_inits(p, C):
    step = np.exp(p["log_step"])
    assert step.min() >= 0.001 * (1 - 1e-6) and step.max() <= 0.1 * (1 + 1e-6)
    # log-uniform: half below the geometric mean (uniform on [0.001, 0.1]: 9%).
    assert abs(np.mean(step < math.sqrt(0.001 * 0.1)) - 0.5) < 0.15
    # torch.randn(cfloat): parts N(0, 1/2), E|C|² = 1.
    assert abs(np.mean(C[..., 0] ** 2 + C[..., 1] ** 2) - 1) < 0.1 and abs(C.mean()) < 0.05
    assert 0.6 < p["D"].std() < 1.4  # D ~ N(0, 1)


def test_s4d_b_init_legs(rng):
    # B = V* B_legs: per mode, |B_n| = |v_n* B_legs| for the unit eigenvector
    # of its eigenvalue (the phase of v_n is arbitrary, the modulus is not).
    N = 16
    p = ref.params_of(_init(get("s4d")(d_state=N, b_init="legs"), harness.random_input(rng, 1, 1, 2)))
    w, V = _legs_normal_eig(N)
    _, B_legs = ref.legs_closed_form(N)
    lam = -np.exp(p["Lambda_log_re"][1]) + 1j * p["Lambda_im"][1]
    B = p["B"][1, :, 0] + 1j * p["B"][1, :, 1]
    for k in range(N // 2):
        j = np.argmin(np.abs(w - lam[k]))
        v = V[:, j] / np.linalg.norm(V[:, j])
        assert abs(abs(B[k]) - abs(np.vdot(v, B_legs))) < 1e-4 * np.abs(B_legs).max()


def test_s4_init_reconstructs_legs(rng):
    # V (Λ - P P*) V* = A_legs and V B = B_legs on the full (conjugate) basis,
    # for every channel; plus the random parts' distributions.
    N, d = 64, 64
    p = ref.params_of(_init(get("s4")(d_state=N), harness.random_input(rng, 1, 1, d)))
    V = nplr_legs(N, conj_sym=True)[3]
    Vf = np.concatenate([V, V.conj()], axis=1)
    A_legs, B_legs = ref.legs_closed_form(N)
    for h in (0, 17, 63):
        lam = -np.exp(p["Lambda_log_re"][h]) + 1j * p["Lambda_im"][h]
        np.testing.assert_allclose(lam.real, -0.5, rtol=1e-6)
        P = p["P"][h, :, 0] + 1j * p["P"][h, :, 1]
        B = p["B"][h, :, 0] + 1j * p["B"][h, :, 1]
        Pf, Bf = np.concatenate([P, P.conj()]), np.concatenate([B, B.conj()])
        A_rec = Vf @ (np.diag(np.concatenate([lam, lam.conj()])) - np.outer(Pf, Pf.conj())) @ Vf.conj().T
        assert rel_err(A_rec, A_legs) < 1e-5, rel_err(A_rec, A_legs)
        assert rel_err(Vf @ Bf, B_legs) < 1e-5
    _check_random_inits(p, p["C_tilde"])


def test_s4_l_max_init_converts_c(rng):
    # With l_max, init draws a plain C ~ CN(0, 1) and stores C̃ = C (I - Ā^L).
    # The same seed without l_max stores that raw draw as C̃ itself, so
    # converting the l_max parameter back must give exactly it.
    x = harness.random_input(rng, 1, 1, 8)
    p_raw = ref.params_of(_init(get("s4")(d_state=16), x, seed=3))
    p_64 = ref.params_of(_init(get("s4")(d_state=16, l_max=64), x, seed=3))
    np.testing.assert_array_equal(p_raw["log_step"], p_64["log_step"])
    (_, _, C), = ref.s4_system(p_64, 64)
    C_raw = p_raw["C_tilde"][0, ..., 0] + 1j * p_raw["C_tilde"][0, ..., 1]
    assert_rel_close(C[:, :8], C_raw, 1e-4, "C from C̃(l_max) vs the raw draw")
    assert rel_err(p_64["C_tilde"], p_raw["C_tilde"]) > 1e-2  # C̃ ≠ C


# --- kernel and layer against the loop reference ---------------------------------

CASES = [
    ("s4d", ()),
    ("s4d", (("discretization", "bilinear"), ("bidirectional", True), ("a_init", "lin"), ("output", "linear"))),
    ("s4", ()),
    ("s4", (("bidirectional", True), ("l_max", 40), ("output", "linear"))),
]


@pytest.mark.parametrize("name, kw", CASES)
def test_matches_reference(rng, name, kw):
    """Kernel = unrolled recurrence, and the whole layer = the loop reference (f32, f64)."""
    kw = dict(kw)
    L = 37
    m = _mk(name, **kw)
    x = harness.random_input(rng, 2, L, 16)
    v = _init(m, x)
    p = ref.params_of(v)
    x64 = np.asarray(x, np.float64)
    system = _system(m, p, L)
    K_ref = ref.kernel_reference(system, L)
    assert np.abs(K_ref[..., 0]).max() > 1e-2  # not a trivial kernel
    K = m.apply(v, L, method="kernel")
    assert K.shape == (m.module.directions, 16, L)
    assert_rel_close(K, K_ref, RTOL_SCAN, f"{name} kernel f32")
    y_ref = ref.layer_reference(p, system, x64, output=m.module.output)
    assert_rel_close(m.apply(v, x), y_ref, RTOL, f"{name} layer f32")
    pre = ref.ssm_reference(system, p["D"], x64)
    assert rel_err(pre - p["D"] * x64, pre) > 0.05  # the SSM part is visible
    with jax.enable_x64(True):
        m64 = _mk(name, dtype=jnp.float64, **kw)
        K64 = m64.apply(v, L, method="kernel")
        y64 = m64.apply(v, jnp.asarray(x64))
        assert K64.dtype == y64.dtype == jnp.float64
    assert_rel_close(K64, K_ref, RTOL_F64, f"{name} kernel f64")
    assert_rel_close(y64, y_ref, RTOL_F64, f"{name} layer f64")


@pytest.mark.parametrize("name, kw", CASES)
def test_length_one(rng, name, kw):
    m = _mk(name, **dict(kw))
    x = harness.random_input(rng, 2, 1, 16)
    v = _init(m, x)
    p = ref.params_of(v)
    y_ref = ref.layer_reference(p, _system(m, p, 1), np.asarray(x, np.float64), output=m.module.output)
    assert_rel_close(m.apply(v, x), y_ref, RTOL, f"{name} L=1")


def test_segments_against_reference(rng):
    # S4D with segment_ids: the segmented scan (and the masked mixing matrix)
    # equal the loop reference with state resets, in f32 and f64.
    L = 29
    x = harness.random_input(rng, 2, L, 16)
    seg = _segments(rng, 2, L)
    x64 = np.asarray(x, np.float64)
    for kw in ((), CASES[1][1]):
        m = _mk("s4d", **dict(kw))
        v = _init(m, x)
        p = ref.params_of(v)
        y_ref = ref.layer_reference(p, _system(m, p, L), x64, seg, output=m.module.output)
        assert_rel_close(m.apply(v, x, segment_ids=jnp.asarray(seg)), y_ref, RTOL, f"s4d segments {kw}")
    with jax.enable_x64(True):
        m64 = _mk("s4d", dtype=jnp.float64, **dict(kw))
        y_s = m64.apply(v, jnp.asarray(x64), segment_ids=jnp.asarray(seg))
        M = m64.apply(v, jnp.asarray(x64), segment_ids=jnp.asarray(seg), method="mixing_matrix")
        y_m = m64.apply(v, jnp.asarray(x64), M, method="apply_mixing_matrix")
    assert_rel_close(y_s, y_ref, RTOL_F64, "s4d f64 segmented scan")
    assert_rel_close(y_m, y_ref, RTOL_F64, "s4d f64 segmented mixing matrix")


@pytest.mark.parametrize("name, kw", [("s4d", (("bidirectional", True),)), ("s4", ())])
def test_gradients(rng, name, kw):
    L = 7
    x = rng.standard_normal((2, L, 4))
    w = rng.standard_normal((2, L, 4))
    kw = dict(d_state=8, **dict(kw))

    def grads(m, params, x, w):
        def loss(p, x):
            return jnp.sum(m.module.apply({"params": p}, x) * w)

        return _run(jax.grad(loss, argnums=(0, 1)), params, x)

    m32 = _mk(name, **kw)
    v = nn.meta.unbox(_init(m32, jnp.float32(x)))
    g32 = grads(m32, v["params"], jnp.float32(x), jnp.float32(w))
    with jax.enable_x64(True):
        p64 = jax.tree.map(jnp.asarray, ref.params_of(v))

        def ref_loss(p, x):
            y = ref.layer_reference(p, _system(m32, p, L, xp=jnp), x, output=m32.module.output, xp=jnp)
            return jnp.sum(y * w)

        g_ref = _run(jax.grad(ref_loss, argnums=(0, 1)), p64, jnp.asarray(x))
        g64 = grads(_mk(name, dtype=jnp.float64, **kw), p64, jnp.asarray(x), jnp.asarray(w))
    flat_ref = jax.tree_util.tree_flatten_with_path(g_ref[0])[0]
    for (path, gr), g6, g3 in zip(flat_ref, jax.tree.leaves(g64[0]), jax.tree.leaves(g32[0])):
        key = jax.tree_util.keystr(path)
        assert np.abs(np.asarray(gr)).max() > 0, key
        assert_rel_close(g6, gr, RTOL_F64, f"f64 d{key}")
        assert_rel_close(g3, gr, RTOL_GRAD, f"f32 d{key}")
    assert_rel_close(g64[1], g_ref[1], RTOL_F64, "f64 dx")
    assert_rel_close(g32[1], g_ref[1], RTOL_GRAD, "f32 dx")


# --- the mixer contract ------------------------------------------------------------


STEP_CASES = [("s4d", ()), ("s4d", (("discretization", "bilinear"),)), ("s4", (("l_max", 13),))]


@pytest.mark.parametrize("name, kw", STEP_CASES)
def test_step_matches_parallel(rng, name, kw):
    m = _mk(name, **dict(kw))
    x = harness.random_input(rng, 2, 13, 16)
    v = _init(m, x)
    harness.check_step_matches_parallel(m, v, x)
    cache = m.apply(v, 2, method="init_cache")
    assert cache["x"].shape == (2, 16, 8) and cache["x"].dtype == jnp.complex64
    # Width inferred from the parameters when d_model is None, or given.
    y_t, _ = _mk(name, d_model=16, **dict(kw)).apply(v, x[:, 0], cache, method="step")
    assert_rel_close(y_t, m.apply(v, x)[:, 0], RTOL, "first step")


def _rollout(m, v, x, max_length):
    cache = m.apply(v, x.shape[0], max_length, method="init_cache")
    ys = []
    for t in range(x.shape[1]):
        y_t, cache = m.apply(v, x[:, t], cache, method="step")
        ys.append(y_t)
    return jnp.stack(ys, axis=1)


def test_s4_step_c_tilde_lengths(rng):
    # l_max None: C̃ stands for the input length, so init_cache needs it.
    x = harness.random_input(rng, 2, 13, 16)
    m = _mk("s4")
    v = _init(m, x)
    assert_rel_close(_rollout(m, v, x, 13), m.apply(v, x), RTOL, "rollout, max_length = L")
    with pytest.raises(ValueError, match="max_length"):
        m.apply(v, 2, method="init_cache")
    # l_max = 20 > L: the length-20 kernel truncated equals the recurrence.
    m20 = _mk("s4", l_max=20)
    v20 = _init(m20, x)
    assert_rel_close(_rollout(m20, v20, x, None), m20.apply(v20, x), RTOL, "rollout, l_max = 20")
    with pytest.raises(ValueError, match="l_max=20"):
        m20.apply(v20, harness.random_input(rng, 1, 21, 16))


@pytest.mark.parametrize("name", ["s4d", "s4"])
def test_causal_and_bidirectional(rng, name):
    x = harness.random_input(rng, 2, 13, 16)
    m = _mk(name)
    harness.check_causal(m, _init(m, x), x, rng)
    mb = _mk(name, bidirectional=True)
    v = _init(mb, x)
    x2 = np.array(x)
    x2[:, 7:] = rng.standard_normal(x2[:, 7:].shape)
    # Not causal: changing the future moves past outputs.
    assert rel_err(mb.apply(v, jnp.asarray(x2))[:, :7], mb.apply(v, x)[:, :7]) > 1e-3
    with pytest.raises(ValueError, match="not causal"):
        mb.module.apply(v, 2, method="init_cache")
    with pytest.raises(ValueError, match="not causal"):
        mb.module.apply(v, x[:, 0], {"x": None, "system": {}}, method="step")


def test_segments(rng):
    # Causal S4D segments: test_segments_against_reference.
    m = _mk("s4d", bidirectional=True)
    x = harness.random_input(rng, 1, 16, 16)
    harness.check_segments(m, _init(m, x), rng)
    # S4 (DPLR, no diagonal recurrence): the same-segment-masked Toeplitz path.
    # l_max pins C̃ to one length, so a segment alone uses the same kernel.
    for kw in ({}, {"bidirectional": True}):
        m = _mk("s4", l_max=16, **kw)
        x = harness.random_input(rng, 1, 16, 16)
        harness.check_segments(m, _init(m, x), rng)


@pytest.mark.parametrize("name", ["s4d", "s4"])
def test_mixing_matrix(rng, name):
    x = harness.random_input(rng, 2, 13, 16)
    m = _mk(name)
    v = _init(m, x)
    M = np.asarray(harness.check_mixing_matrix(m, v, x, causal=True))
    assert M.shape == (2, 16, 13, 13)
    K = np.asarray(m.apply(v, 13, method="kernel"))[0]
    D = ref.params_of(v)["D"]
    np.testing.assert_allclose(M[1, :, 9, 4], K[:, 5], rtol=1e-6)  # Toeplitz: K[t - s]
    np.testing.assert_allclose(M[0, :, 6, 6], K[:, 0] + D, rtol=1e-6)  # D on the diagonal

    # S4 with l_max: a shorter run uses the same (truncated) kernel.
    mb = _mk(name, bidirectional=True, **({"l_max": 13} if name == "s4" else {}))
    vb = _init(mb, x)
    M = np.asarray(harness.check_mixing_matrix(mb, vb, x, causal=False))
    Kb = np.asarray(mb.apply(vb, 13, method="kernel"))
    np.testing.assert_allclose(M[0, :, 4, 9], Kb[1, :, 4], rtol=1e-6)  # k_bwd[s - t - 1]
    np.testing.assert_allclose(M[0, :, 9, 4], Kb[0, :, 5], rtol=1e-6)
    assert np.abs(np.triu(M, 1)).max() > 0
    # Segments: zero across runs; the dense path equals separate runs.
    seg = jnp.asarray([[0] * 4 + [1] * 9, [2] * 6 + [0] * 7])
    Ms = np.asarray(mb.apply(vb, x, segment_ids=seg, method="mixing_matrix"))
    assert np.abs(Ms[0, :, :4, 4:]).max() == 0.0 and np.abs(Ms[0, :, 4:, :4]).max() == 0.0
    y_m = mb.apply(vb, x, jnp.asarray(Ms), method="apply_mixing_matrix")
    assert_rel_close(y_m[1:, 6:], mb.apply(vb, x[1:, 6:]), RTOL, "second segment alone")


@pytest.mark.parametrize("name", ["s4d", "s4"])
def test_bfloat16(rng, name):
    x = harness.random_input(rng, 2, 13, 16)
    extra = {"l_max": 13} if name == "s4" else {}  # S4's step needs the length of C̃
    m32, m16 = _mk(name, **extra), _mk(name, dtype=jnp.bfloat16, **extra)
    v = _init(m32, x)
    y16 = m16.apply(v, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    assert rel_err(y16.astype(jnp.float32), m32.apply(v, x)) < 3e-2
    cache = m16.apply(v, 2, method="init_cache")
    y_t, cache = m16.apply(v, x[:, 0].astype(jnp.bfloat16), cache, method="step")
    assert y_t.dtype == jnp.bfloat16 and cache["x"].dtype == jnp.complex64
    assert rel_err(y_t.astype(jnp.float32), m32.apply(v, x)[:, 0]) < 3e-2


@pytest.mark.parametrize("name", ["s4d", "s4"])
def test_state_size(rng, name):
    v = {"params": {"D": jnp.zeros(16)}}
    # N/2 = 32 complex64 modes per channel, 16 channels (width from the params).
    assert get(name)().apply(v, None, method="state_size") == 16 * 32 * 8
    assert get(name)(d_model=4, d_state=8).apply({}, 100, method="state_size") == 4 * 4 * 8
    assert get(name)(d_model=4, d_state=8, bidirectional=True).apply({}, None, method="state_size") == 2 * 4 * 4 * 8
    with pytest.raises(ValueError, match="d_model"):
        get(name)().apply({}, None, method="state_size")


def test_no_retrace(rng):
    m = _mk("s4", bidirectional=True).module
    x = harness.random_input(rng, 2, 13, 16)
    v = _init(m, x)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(v, x):
        return m.apply(v, x)

    f(v, x)
    f(v, x + 1.0)


def test_bad_arguments(rng):
    x = harness.random_input(rng, 2, 5, 8)
    for kw, match in [
        (dict(d_state=15), "d_state"),
        (dict(a_init="fourier"), "'legs', 'lin', 'inv'"),
        (dict(b_init="random"), "'ones', 'legs'"),
        (dict(discretization="euler"), "'zoh', 'bilinear'"),
        (dict(output="gelu"), "'glu', 'linear'"),
        (dict(dt_min=0.5, dt_max=0.1), "dt_min"),
        (dict(conv_impl="fast"), "'fft', 'direct'"),
        (dict(kernel_impl="fast"), "'reference', 'chunked'"),
    ]:
        with pytest.raises(ValueError, match=match):
            get("s4d")(**kw).init(jax.random.PRNGKey(0), x)
    for kw, match in [(dict(d_state=7), "d_state"), (dict(l_max=0), "l_max")]:
        with pytest.raises(ValueError, match=match):
            get("s4")(**kw).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="contradicts"):
        get("s4")(causal=True, bidirectional=True)
    m = _mk("s4d")
    v = _init(m, x)
    with pytest.raises(ValueError, match="batch, length, d_model"):
        m.apply(v, x[0])
    with pytest.raises(ValueError, match="segment_ids"):
        m.apply(v, x, segment_ids=jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="M must have shape"):
        m.apply(v, x, jnp.zeros((2, 8, 4, 4)), method="apply_mixing_matrix")
    with pytest.raises(ValueError, match="x_t"):
        m.apply(v, x, {"x": jnp.zeros((2, 8, 8), jnp.complex64), "system": {}}, method="step")

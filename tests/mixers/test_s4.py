"""S4 and S4D mixers: HiPPO inits, kernel = unrolled recurrence, float64 loop reference and closed-form matrix.

Also the pieces ``test_lssl.py`` shares (LSSL runs the same ConvSSM body) and
the causal/bidirectional switch of the whole LTI family (S4, S4D, LSSL, S5).
The contract (step vs parallel, causality, segments, mixing matrix vs fast
path, bfloat16, ...) is checked for every mixer in ``test_contract.py``.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax.mixers.s4  # noqa: F401  (registers "s4", "s4d")
from seqjax.errors import ConfigError
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
_NOT_PARAMS = ("dtype", "discretization", "impl", "parent", "name")
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
    if m.mixer_name == "lssl":
        return ref.lssl_system(p, xp)
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


# --- kernel, layer and step against the loop reference ---------------------------


def check_reference(rng, name, kw, length=37):
    """Kernel = unrolled recurrence; the layer (and, causal, the step rollout) = the loop reference, f32 and f64."""
    m = _mk(name, **kw)
    x = harness.random_input(rng, 2, length, 16)
    v = _init(m, x)
    p = ref.params_of(v)
    x64 = np.asarray(x, np.float64)
    system = _system(m, p, length)
    K_ref = ref.kernel_reference(system, length)
    assert np.abs(K_ref[..., 0]).max() > 1e-2  # not a trivial kernel
    K = m.apply(v, length, method="kernel")
    assert K.shape == (m.module.directions, 16, length)
    assert_rel_close(K, K_ref, RTOL_SCAN, f"{name} kernel f32")
    y_ref = ref.layer_reference(p, system, x64, output=m.module.output_map)
    assert_rel_close(m.apply(v, x), y_ref, RTOL, f"{name} layer f32")
    pre = ref.ssm_reference(system, p["D"], x64)
    assert rel_err(pre - p["D"] * x64, pre) > 0.05  # the SSM part is visible
    # Length 1: the kernel is its first tap alone (S4 without l_max: C̃ for L = 1).
    y1_ref = ref.layer_reference(p, _system(m, p, 1), x64[:, :1], output=m.module.output_map)
    assert_rel_close(m.apply(v, x[:, :1]), y1_ref, RTOL, f"{name} L=1")
    if m.module.causal:
        cache = m.apply(v, 2, length, method="init_cache")  # max_length: S4's C̃ without l_max
        ys = []
        for t in range(length):
            y_t, cache = m.apply(v, x[:, t], cache, method="step")
            ys.append(y_t)
        assert_rel_close(jnp.stack(ys, axis=1), y_ref, RTOL, f"{name} step rollout")
    with jax.enable_x64(True):
        m64 = _mk(name, dtype=jnp.float64, **kw)
        K64 = m64.apply(v, length, method="kernel")
        y64 = m64.apply(v, jnp.asarray(x64))
        assert K64.dtype == y64.dtype == jnp.float64
    assert_rel_close(K64, K_ref, RTOL_F64, f"{name} kernel f64")
    assert_rel_close(y64, y_ref, RTOL_F64, f"{name} layer f64")


CASES = [
    ("s4d", ()),
    ("s4d", (("discretization", "bilinear"), ("b_init", "legs"))),
    ("s4d", (("discretization", "bilinear"), ("bidirectional", True), ("a_init", "lin"), ("output_map", "linear"))),
    ("s4", ()),
    ("s4", (("bidirectional", True), ("l_max", 40), ("output_map", "linear"))),
]


@pytest.mark.parametrize("name, kw", CASES)
def test_matches_reference(rng, name, kw):
    check_reference(rng, name, dict(kw))


def test_segments_against_reference(rng):
    # S4D with segment_ids: the segmented scan (and the masked mixing matrix)
    # equal the loop reference with state resets, in f32 and f64; the impl
    # mapping reaches every op.
    L = 29
    x = harness.random_input(rng, 2, L, 16)
    seg = _segments(rng, 2, L)
    x64 = np.asarray(x, np.float64)
    impls = {"fft_conv": "direct", "vandermonde_kernel": "reference", "linear_scan": "associative"}
    for kw in ((), CASES[2][1]):
        m = _mk("s4d", **dict(kw))
        v = _init(m, x)
        p = ref.params_of(v)
        y_ref = ref.layer_reference(p, _system(m, p, L), x64, seg, output=m.module.output_map)
        assert_rel_close(m.apply(v, x, segment_ids=jnp.asarray(seg)), y_ref, RTOL, f"s4d segments {kw}")
        mi = _Jitted(m.module.clone(impl=impls))
        assert_rel_close(mi.apply(v, x, segment_ids=jnp.asarray(seg)), y_ref, RTOL, f"s4d segments {kw} {impls}")
        y_nseg = ref.layer_reference(p, _system(m, p, L), x64, output=m.module.output_map)
        assert_rel_close(mi.apply(v, x), y_nseg, RTOL, f"s4d {kw} {impls}")
    with jax.enable_x64(True):
        m64 = _mk("s4d", dtype=jnp.float64, **dict(kw))
        y_s = m64.apply(v, jnp.asarray(x64), segment_ids=jnp.asarray(seg))
        M = m64.apply(v, jnp.asarray(x64), segment_ids=jnp.asarray(seg), method="mixing_matrix")
        y_m = m64.apply(v, jnp.asarray(x64), M, method="apply_mixing_matrix")
    assert_rel_close(y_s, y_ref, RTOL_F64, "s4d f64 segmented scan")
    assert_rel_close(y_m, y_ref, RTOL_F64, "s4d f64 segmented mixing matrix")


def check_gradients(rng, name, kw):
    """Gradients (parameters and input) = autodiff of the float64 loop reference, in f64 and f32."""
    L = 7
    x = rng.standard_normal((2, L, 4))
    w = rng.standard_normal((2, L, 4))
    kw = dict(d_state=8, **kw)

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
            y = ref.layer_reference(p, _system(m32, p, L, xp=jnp), x, output=m32.module.output_map, xp=jnp)
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


@pytest.mark.parametrize("name, kw", [("s4d", (("bidirectional", True),)), ("s4", ())])
def test_gradients(rng, name, kw):
    check_gradients(rng, name, dict(kw))


def test_s4_step_c_tilde_lengths(rng):
    # l_max None: C̃ stands for the input length, so init_cache needs it.
    x = harness.random_input(rng, 2, 13, 16)
    m = _mk("s4")
    v = _init(m, x)
    with pytest.raises(ValueError, match="max_length"):
        m.apply(v, 2, method="init_cache")
    # l_max = 20 > L: the length-20 kernel truncated equals the recurrence.
    m20 = _mk("s4", l_max=20)
    v20 = _init(m20, x)
    cache = m20.apply(v20, 2, None, method="init_cache")
    ys = []
    for t in range(13):
        y_t, cache = m20.apply(v20, x[:, t], cache, method="step")
        ys.append(y_t)
    assert_rel_close(jnp.stack(ys, axis=1), m20.apply(v20, x), RTOL, "rollout, l_max = 20")
    with pytest.raises(ValueError, match="l_max=20"):
        m20.apply(v20, harness.random_input(rng, 1, 21, 16))


# --- the mixing matrix ----------------------------------------------------------------


def check_matrix(rng, name, kw):
    """The matrix read off the layer's mix is the kernels' Toeplitz matrix plus D (closed form), with segments."""
    m = _mk(name, **kw)
    x = harness.random_input(rng, 2, 13, 16)
    v = _init(m, x)
    p = ref.params_of(v)
    system = _system(m, p, 13)
    seg = _segments(rng, 2, 13)
    for ids in (None, seg):
        extra = {} if ids is None else {"segment_ids": jnp.asarray(ids)}
        M = m.apply(v, x, method="mixing_matrix", **extra)
        assert M.shape == (2, 16, 13, 13)
        assert_rel_close(M, ref.conv_matrix(system, p["D"], 2, 13, ids), RTOL,
                         f"{name} {kw} matrix vs closed form, segments={ids is not None}")


@pytest.mark.parametrize("name, kw", [
    ("s4d", ()),
    ("s4d", (("bidirectional", True), ("discretization", "bilinear"))),
    ("s4", (("l_max", 16),)),
    ("s4", (("bidirectional", True),)),
])
def test_matrix_is_the_closed_form(rng, name, kw):
    check_matrix(rng, name, dict(kw))


# --- the family's fields ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["s4", "s4d", "lssl", "s5"])
def test_one_switch(name):
    """``causal`` and ``bidirectional`` name one switch; a bidirectional layer has no step, twice the state."""
    cls = get(name)
    assert cls().causal is True and cls().bidirectional is False and cls().is_causal
    assert cls(causal=False).bidirectional is True and cls(bidirectional=True).causal is False
    assert cls(causal=True, bidirectional=False).causal is True
    with pytest.raises(ConfigError, match=rf"^{name}\.causal=True contradicts {name}\.bidirectional=True"):
        cls(causal=True, bidirectional=True)
    bidir = cls(d_model=4, d_state=8, bidirectional=True)
    with pytest.raises(ValueError, match="not causal"):
        bidir.apply({}, 2, method="init_cache")
    causal_size = cls(d_model=4, d_state=8).apply({}, None, method="state_size")
    assert bidir.apply({}, None, method="state_size") == 2 * causal_size > 0


@pytest.mark.parametrize("name, kw, match", [
    ("s4d", dict(d_state=15), r"^s4d\.d_state=15 must be even"),
    ("s4d", dict(b_init="random"), r"^s4d\.b_init='random' is not allowed; allowed: 'ones', 'legs'"),
    ("s4d", dict(discretization="euler"), r"^s4d\.discretization='euler' is not allowed; allowed: 'zoh', 'bilinear'"),
    ("s4d", dict(output_map="gelu"), r"^s4d\.output_map='gelu' is not allowed; allowed: 'glu', 'linear'"),
    ("s4d", dict(dt_min=0.5, dt_max=0.1), r"^s4d\.dt_min=0.5 must be <= s4d\.dt_max=0.1"),
    ("s4d", dict(impl="fast"), r"^s4d\.impl='fast' is not an implementation of fft_conv; allowed: auto, fft, direct"),
    ("s4d", dict(impl={"vandermonde_kernel": "direct"}),
     r"^s4d\.impl='direct' is not an implementation of vandermonde_kernel; allowed: auto, reference, chunked"),
    ("s4", dict(impl={"linear_scan": "sequential"}), r"^s4\.impl names op 'linear_scan'; allowed ops: fft_conv"),
    ("s4", dict(l_max=0), r"^s4\.l_max=0 must be an int >= 1 or None"),
    ("lssl", dict(dt_min=0.0), r"^lssl\.dt_min=0.0 must be a number > 0.0"),
])
def test_config_errors(name, kw, match):
    with pytest.raises(ConfigError, match=match):
        get(name)(**kw)

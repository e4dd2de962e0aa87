"""Checks every mixer must pass, written once and used by each family's tests.

Each check takes a bound-free Flax module, its variables and a fresh random
input, and asserts one property of the mixer contract (ARCHITECTURE.md):
  * the parallel form equals the step-by-step ``step`` rollout (causal mixers);
  * changing future inputs never changes past outputs (causal mixers);
  * packed sequences with ``segment_ids`` equal separate runs;
  * the output equals the mixer applied with its own materialised
    ``mixing_matrix`` (mixers linear in a projection of x), and a causal mixer's
    matrix is lower triangular.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tests.ops.utils import rel_err

RTOL = 2e-4


def init(module, x, seed=0, **kwargs):
    """Initialises ``module`` on ``x``; returns its variables."""
    return module.init(jax.random.PRNGKey(seed), jnp.asarray(x), **kwargs)


def random_input(rng, batch=2, length=13, width=16):
    """A fresh (batch, length, width) float32 input, never zeros."""
    return jnp.asarray(rng.standard_normal((batch, length, width)), jnp.float32)


def check_step_matches_parallel(module, variables, x, rtol=RTOL):
    """The ``step`` rollout from ``init_cache`` reproduces ``__call__``."""
    y = module.apply(variables, x)
    cache = module.apply(variables, x.shape[0], method="init_cache")
    ys = []
    for t in range(x.shape[1]):
        y_t, cache = module.apply(variables, x[:, t], cache, method="step")
        assert y_t.shape == (x.shape[0],) + y.shape[2:], y_t.shape
        ys.append(y_t)
    err = rel_err(jnp.stack(ys, axis=1), y)
    assert err <= rtol, f"step rollout vs parallel: relative error {err:.2e} > {rtol:.0e}"


def check_causal(module, variables, x, rng, cut=None, rtol=1e-6):
    """Outputs before ``cut`` do not move when inputs from ``cut`` on change."""
    cut = x.shape[1] // 2 if cut is None else cut
    x2 = np.array(x)
    x2[:, cut:] = rng.standard_normal(x2[:, cut:].shape)
    y1 = module.apply(variables, x)
    y2 = module.apply(variables, jnp.asarray(x2))
    err = rel_err(y2[:, :cut], y1[:, :cut])
    assert err <= rtol, f"past outputs moved by {err:.2e} when the future changed"
    assert rel_err(y2[:, cut:], y1[:, cut:]) > 1e-3, "future outputs ignore the changed inputs"


def check_segments(module, variables, rng, lengths=(5, 8, 3), width=16, rtol=RTOL, make=None):
    """One packed row with segment ids equals each segment run on its own.

    ``make(n)`` returns a ``(1, n, width)`` piece (default: fresh normals).
    """
    if make is None:
        make = lambda n: jnp.asarray(rng.standard_normal((1, n, width)), jnp.float32)  # noqa: E731
    pieces = [make(n) for n in lengths]
    packed = jnp.concatenate(pieces, axis=1)
    ids = jnp.asarray(np.repeat(np.arange(len(lengths)), lengths)[None], jnp.int32)
    y = module.apply(variables, packed, segment_ids=ids)
    start = 0
    for piece in pieces:
        n = piece.shape[1]
        err = rel_err(y[:, start : start + n], module.apply(variables, piece))
        assert err <= rtol, f"segment at {start}: packed vs separate error {err:.2e}"
        start += n


def check_mixing_matrix(module, variables, x, causal, rtol=RTOL):
    """``__call__`` equals the mixer applied with its materialised matrix.

    The mixer's ``mixing_matrix(x)`` returns ``(batch, channels, l, l)`` and
    ``apply_mixing_matrix(x, M)`` runs the same projections as ``__call__`` but
    mixes with the dense ``M``. A causal mixer's ``M`` must be lower triangular.
    """
    y = module.apply(variables, x)
    m = module.apply(variables, x, method="mixing_matrix")
    length = x.shape[1]
    assert m.ndim == 4 and m.shape[0] == x.shape[0] and m.shape[2:] == (length, length), m.shape
    y_m = module.apply(variables, x, m, method="apply_mixing_matrix")
    err = rel_err(y_m, y)
    assert err <= rtol, f"mixing_matrix path vs fast path: relative error {err:.2e}"
    if causal:
        # Exactly 0 for a scan; an FFT convolution leaves rounding (~1e-7 of the
        # largest entry) above the diagonal, far below any real look-ahead.
        mag = np.abs(np.asarray(m)).astype(np.float64)  # abs first: complex matrices (LRU, S5)
        upper = np.triu(mag, k=1)
        assert upper.max(initial=0.0) <= 1e-5 * mag.max(), "causal mixer has weight on future positions"
    return m


def jit_init(module, x, seed=0):
    """``module.init`` under ``jax.jit`` (one compile instead of an eager forward pass)."""
    return jax.jit(module.init)(jax.random.PRNGKey(seed), jnp.asarray(x))


def perturb(variables, rng, scale=0.1):
    """Moves every parameter off its init by ``scale · N(0, 1)`` (so no init value hides a bug).

    At init many parameters are constants (``D = 1``, norm scales 1, biases 0)
    that would hide a missing term.
    """

    def move(leaf):
        leaf = np.asarray(leaf)
        return jnp.asarray(leaf + scale * rng.standard_normal(leaf.shape).astype(leaf.dtype))

    return {**variables, "params": jax.tree.map(move, variables["params"])}


@functools.partial(jax.jit, static_argnames=("module", "kind", "method", "statics", "static_kw"))
def _run_jitted(variables, dynamic, dynamic_kw, *, module, kind, method, statics, static_kw):
    args = list(dynamic)
    for i, value in statics:
        args.insert(i, value)
    kwargs = dict(static_kw, **dynamic_kw)
    if kind == "init":
        return module.init(variables, *args, method=method, **kwargs)
    return module.apply(variables, *args, method=method, **kwargs)


class Jitted:
    """A mixer whose ``apply`` (and ``init``) run under ``jax.jit``, for the checks and family tests.

    Eager Flax compiles one small program per primitive and shape; this compiles
    one per method and shape. The module is a static argument of one shared
    jitted function, so equal modules in different tests share their compiles.
    Python scalars (batch sizes, lengths, flags, None) are static, arrays and
    pytrees of arrays traced. Attribute reads fall through to the module.

    Attributes:
      module: the wrapped Flax module.
      eager_init: run ``init`` eagerly (cheaper when it holds one large
        primitive, such as the Performer's QR).
    """

    def __init__(self, module, eager_init=False):
        self.module, self.eager_init = module, eager_init

    def __getattr__(self, name):
        return getattr(self.module, name)

    @staticmethod
    def _static(value):
        return value is None or isinstance(value, (bool, int, float, str))

    def _call(self, kind, variables, args, method, kwargs):
        statics = tuple((i, a) for i, a in enumerate(args) if self._static(a))
        static_kw = tuple(sorted((k, v) for k, v in kwargs.items() if self._static(v)))
        dynamic = [a for a in args if not self._static(a)]
        dynamic_kw = {k: v for k, v in kwargs.items() if not self._static(v)}
        return _run_jitted(variables, dynamic, dynamic_kw, module=self.module, kind=kind, method=method,
                           statics=statics, static_kw=static_kw)

    def apply(self, variables, *args, method=None, **kwargs):
        return self._call("apply", variables, args, method, kwargs)

    def init(self, key, *args, method=None, **kwargs):
        if self.eager_init:
            return self.module.init(key, *args, method=method, **kwargs)
        return self._call("init", key, args, method, kwargs)


def default_run(name, rng, batch=2, length=13, width=16):
    """A default-constructed mixer ``name`` run on a fresh input; checks shape, dtype, finiteness.

    Returns:
      ``(module, x, variables, y)``.
    """
    from seqjax import mixers

    m = mixers.get(name)()
    x = random_input(rng, batch, length, width)
    v = jit_init(m, x)
    y = jax.jit(m.apply)(v, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y)))
    return m, x, v, y


def segments(rng, batch, length, p=0.25):
    """Random contiguous segments whose ids repeat non-adjacently (``cumsum % 3``): only changes matter."""
    return np.cumsum(rng.random((batch, length)) < p, axis=1) % 3


def max_shift(x, axis, xp):
    """A reference softmax's max shift along ``axis``, its gradient not taken under ``jax.numpy``.

    The shift cancels, so its gradient is exactly zero; autodiff of ``max``
    divides by the number of entries equal to it, 0/0 when XLA recomputes
    ``x`` in another fusion with different rounding (seen in float32 at
    LLVM -O0; ``seqjax.ops.online_softmax.from_scores`` does the same).
    """
    m = xp.max(x, axis=axis, keepdims=True)
    return m if xp is np else jax.lax.stop_gradient(m)


def runs_of(segment_ids, batch, length):
    """Segment index per position, NumPy: a new segment wherever the id changes (zeros for None)."""
    if segment_ids is None:
        return np.zeros((batch, length), np.int64)
    ids = np.asarray(segment_ids)
    return np.concatenate([np.zeros((batch, 1), np.int64), np.cumsum(ids[:, 1:] != ids[:, :-1], axis=1)], axis=1)


def compiled_temp_bytes(module, variables, x, *, grad=True):
    """XLA's temporary bytes for one compiled call of ``module`` on ``x`` (forward+backward when ``grad``).

    What the complexity tests compare across lengths: the scratch memory the
    compiler allocates (``memory_analysis().temp_size_in_bytes``), not the
    inputs or parameters.
    """
    if grad:
        fn = jax.jit(jax.grad(lambda v, x: jnp.sum(module.apply(v, x) ** 2), argnums=1))
    else:
        fn = jax.jit(module.apply)
    return fn.lower(variables, x).compile().memory_analysis().temp_size_in_bytes


def check_memory_growth(module, rng, *, length, width=16, batch=1, exponent=1.0, slack=1.5, grad=True):
    """The compiled temporary memory from ``length`` to ``4 * length`` grows at most as ``length ** exponent``.

    ``exponent`` is the paper's claim (1 for linear, 2 for quadratic, 1.5 for
    O(L^1.5), ...); the ratio may exceed ``4 ** exponent`` by ``slack``
    (constants and padding), and it must stay below quadratic's ``16`` when
    ``exponent < 2`` so a test of a sub-quadratic claim can fail.

    Returns:
      The measured ratio (for the test's message).
    """
    x1 = random_input(rng, batch, length, width)
    x4 = random_input(rng, batch, 4 * length, width)
    # A jitted init: eager Flax init compiles one program per primitive (2-8 s per call on CPU).
    variables = init(module, x1) if isinstance(module, Jitted) else jax.jit(module.init)(jax.random.PRNGKey(0), x1)
    small = compiled_temp_bytes(module, variables, x1, grad=grad)
    large = compiled_temp_bytes(module, variables, x4, grad=grad)
    ratio = large / max(small, 1)
    bound = 4**exponent * slack
    if exponent < 2:
        bound = min(bound, 0.9 * 16)
    assert ratio <= bound, f"temp memory grew {ratio:.2f}x from L={length} to {4 * length}; allowed {bound:.2f}x"
    return ratio

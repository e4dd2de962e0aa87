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
        mag = np.abs(np.asarray(m, np.float64))
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


class Jitted:
    """A module stand-in for the checks whose ``apply`` is jit-compiled per method.

    Op-by-op dispatch compiles each small op for every new shape; one jit per
    method is far faster. Calls with a Python ``int``/``None`` argument
    (``init_cache``, ``state_size``) stay eager.
    """

    def __init__(self, module):
        self.module = module
        self._cache = {}

    def apply(self, variables, *args, method=None, **kwargs):
        if any(isinstance(a, int) or a is None for a in args):
            return self.module.apply(variables, *args, method=method, **kwargs)
        if method not in self._cache:
            module, name = self.module, method

            def run(variables, *args, **kwargs):
                return module.apply(variables, *args, method=name, **kwargs)

            self._cache[method] = jax.jit(run)
        return self._cache[method](variables, *args, **kwargs)


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


def runs_of(segment_ids, batch, length):
    """Segment index per position, NumPy: a new segment wherever the id changes (zeros for None)."""
    if segment_ids is None:
        return np.zeros((batch, length), np.int64)
    ids = np.asarray(segment_ids)
    return np.concatenate([np.zeros((batch, 1), np.int64), np.cumsum(ids[:, 1:] != ids[:, :-1], axis=1)], axis=1)

"""The ops' front door: one implementation vocabulary, one registry, one ``auto`` table.

Every public op (``linear_scan``, ``selective_scan``, ``ssd``, ``attention``,
``linear_attention``, ``delta_rule``, ``mlstm``, ``memory_update``,
``fft_conv``) takes ``impl=`` (and all but ``fft_conv`` ``sequence_axis=``)
and routes them through this module only:

* **Vocabulary.** ``impl`` is one of :data:`VOCABULARY`; each op (and the
  S4D kernel ``vandermonde_kernel``) implements a
  subset, listed by :func:`implementations`. A value outside the op's subset
  is a ``ValueError`` naming the op, the value and the allowed values.
* **Registry.** An op's module registers each implementation with
  :func:`register` (``register("ssd", "chunked")(fn)``), and its
  sequence-parallel variant (the ``*_sp`` module beside it, which imports the
  op, never the other way round) with :func:`register_sequence_parallel`. The
  op's public function calls :func:`sequence_parallel` when
  ``sequence_axis`` is set and :func:`implementation` otherwise, so a base op
  never imports its variant. Pallas kernels (``seqjax/kernels``, which import
  the ops) join the same way, as ``impl="pallas"``, and add rows to the table.
* **The ``auto`` table.** :data:`AUTO_TABLE` holds, per op, rules
  ``(platform, condition on the problem size, implementation)`` tried in
  order; :func:`resolve` returns the first rule whose platform matches and
  whose condition holds for the call's sizes (and whose implementation is
  registered). The numbers behind each rule are in the op's module docstring
  and in ``benchmarks/results``.

Mixers never name implementations in code: they pass their ``impl`` field
through, so a new implementation (and its ``auto`` rows) reaches every mixer
without touching one.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax

VOCABULARY = (
    "auto",  # the first matching row of AUTO_TABLE
    "reference",  # materialises the op's full intermediate (for checks and short inputs)
    "sequential",  # a lax.scan over time
    "associative",  # lax.associative_scan (log depth)
    "chunked",  # parallel inside chunks, sequential across them
    "blockwise",  # online-softmax blocks (flash attention)
    "fft",  # zero-padded real FFTs
    "direct",  # a direct (depthwise) convolution
    "pallas",  # a Pallas kernel of seqjax.kernels
    "cudnn",  # cuDNN's fused attention, through jax.nn.dot_product_attention (GPU only)
    "splash",  # jax.experimental.pallas.ops.tpu.splash_attention (TPU only)
)

_IMPLS: dict[str, dict[str, Callable]] = {}
_SEQUENCE_PARALLEL: dict[str, Callable] = {}


def register(op: str, impl: str) -> Callable[[Callable], Callable]:
    """Decorator: registers ``fn`` as implementation ``impl`` of ``op``.

    Args:
      op: the op's public name (``"linear_scan"``).
      impl: a name from :data:`VOCABULARY` other than ``"auto"``.

    Returns:
      The decorator; it returns the function unchanged.
    """
    if impl not in VOCABULARY or impl == "auto":
        raise ValueError(f"register({op!r}, {impl!r}): impl must be one of {VOCABULARY[1:]}")

    def decorator(fn):
        _IMPLS.setdefault(op, {})[impl] = fn
        return fn

    return decorator


def register_sequence_parallel(op: str) -> Callable[[Callable], Callable]:
    """Decorator: registers ``fn`` as the sequence-parallel variant of ``op``.

    Args:
      op: the op's public name.

    Returns:
      The decorator; it returns the function unchanged.
    """

    def decorator(fn):
        _SEQUENCE_PARALLEL[op] = fn
        return fn

    return decorator


def implementations(op: str) -> tuple[str, ...]:
    """The values ``impl`` may take for ``op``: ``"auto"`` then the registered ones.

    Args:
      op: the op's public name.

    Returns:
      A tuple in vocabulary order.
    """
    have = _IMPLS.get(op, {})
    return ("auto",) + tuple(name for name in VOCABULARY[1:] if name in have)


def check(op: str, impl: str) -> None:
    """Raises a ValueError unless ``impl`` is ``"auto"`` or registered for ``op``.

    Args:
      op: the op's public name, for the message.
      impl: the value the caller passed.
    """
    allowed = implementations(op)
    if impl not in allowed:
        raise ValueError(f"{op}: impl={impl!r} is not one of {', '.join(map(repr, allowed))}")


def implementation(op: str, impl: str) -> Callable:
    """The function registered as ``impl`` of ``op`` (``impl`` already resolved)."""
    check(op, impl)
    return _IMPLS[op][impl]


def sequence_parallel(op: str) -> Callable:
    """The sequence-parallel variant of ``op``.

    Raises:
      NotImplementedError: ``op`` has no sequence-parallel variant.
    """
    if op not in _SEQUENCE_PARALLEL:
        have = ", ".join(sorted(_SEQUENCE_PARALLEL))
        raise NotImplementedError(f"{op}: no sequence-parallel variant (sequence_axis=); ops with one: {have}")
    return _SEQUENCE_PARALLEL[op]


def platform() -> str:
    """The platform of the default backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
    return jax.default_backend()


@dataclass(frozen=True)
class Rule:
    """One row of the ``auto`` table.

    Attributes:
      op: the op's public name.
      platform: ``"cpu"``, ``"gpu"``, ``"tpu"`` or ``"*"`` (any).
      impl: the implementation this row picks.
      when: a condition on the call's sizes (see :func:`resolve`), or None
        (always).
      why: the measurement behind the row, for the docs.
    """

    op: str
    platform: str
    impl: str
    when: Callable[[Mapping[str, int]], bool] | None = None
    why: str = ""


# Tried in order, first match wins. The size keys each op passes to resolve():
#   linear_scan: (none); selective_scan: state = b*l*d*n, n; ssd: length,
#   chunk_size; attention: scores = lq*lk; linear_attention: per_channel (0/1: a (b, l, h, dk)
#   decay), dv; fft_conv: (none);
#   delta_rule, memory_update, mlstm: length, chunk_size; ring_attention_block (ring attention's
#   per-block kernels, seqjax.ops.ring_attention.BlockKernels): bits (of the accumulation dtype).
AUTO_TABLE: tuple[Rule, ...] = (
    Rule("linear_scan", "cpu", "sequential",
         why="lax.scan beats associative_scan ~3x on CPU (benchmarks/results)"),
    Rule("linear_scan", "*", "associative",
         why="log-depth scan on accelerators; on an H200 (b=2, l=4096, d=2048) 0.55 ms forward+backward vs 0.76 "
             "for the Pallas kernel (benchmarks/results/h200-kernels.json)"),
    Rule("selective_scan", "cpu", "sequential",
         why="one scan step per position over a cached (b, n, d) state: at every size ~3x faster forward and "
             "2-5x faster forward+backward than both others (CPU, benchmarks/results/vm-cpu-paths.json)"),
    Rule("selective_scan", "*", "reference", lambda s: s["state"] <= 2**19,
         why="up to 2**19 state elements the materialised scan's backward is faster (CPU)"),
    Rule("selective_scan", "*", "chunked",
         why="beyond, the lean chunked scan: 2.5-6x faster, 10x less memory; on an H200 (b=2, l=4096, d=2048, "
             "n=16) 14.4 ms forward+backward vs 18.9 for the Pallas kernel (whose forward alone is 2x faster)"),
    Rule("ssd", "*", "reference", lambda s: s["length"] <= s["chunk_size"],
         why="one chunk: the quadratic form without the chunk scan (CPU: 0.44 vs 0.76 ms)"),
    Rule("ssd", "*", "chunked",
         why="from two chunks on the SSD algorithm wins (CPU: 7 vs 108 ms at l=512); on an H200 (b=2, l=4096, "
             "h=32, p=64, n=128) 2.3 ms forward+backward vs 113 for the Pallas kernel"),
    Rule("attention", "*", "reference", lambda s: s["scores"] < 256 * 256,
         why="below 256^2 scores the materialised softmax is as fast and its L^2 memory small"),
    Rule("attention", "*", "blockwise", why="flash attention: O(l) memory, 2.5-3.6x faster at L >= 512 (CPU)"),
    Rule("ring_attention_block", "*", "blockwise",
         why="the XLA flash kernel per K/V block (seqjax.ops.flash); seqjax.kernels.attention adds the Pallas "
             "rows for GPU and TPU"),
    Rule("linear_attention", "cpu", "sequential", lambda s: s["per_channel"] and s["dv"] <= 32,
         why="narrow heads with a per-channel decay: the scan is 1.4-4.3x faster with gradients at dv = 16 and on "
             "par at dv = 32 (b=128, l=22-256, idle CPU, benchmarks/results/vm-cpu-paths.json); chunked wins "
             "from dv = 64"),
    Rule("linear_attention", "*", "chunked",
         why="chunked beats the recurrence 4-10x with gradients (CPU) and 20-40x on an H100; on an H200 the "
             "Pallas kernel's backward did not launch at dk = dv = 128 float32 (shared memory; value tiles "
             "since, not re-run on a device)"),
    Rule("delta_rule", "*", "chunked",
         why="the UT-transform chunks beat the per-position scan with gradients (CPU: see ops/delta_rule.py); "
             "on an H200 (b=2, l=4096, h=16, d=128) 8.0 ms forward+backward vs 125 for the Pallas kernel"),
    Rule("mlstm", "*", "reference", lambda s: s["length"] <= s["chunk_size"],
         why="one chunk: the parallel form without the chunk scan (the same computation)"),
    Rule("mlstm", "*", "chunked",
         why="with gradients chunked beats the scan 4-10x and the quadratic form 13-100x from l=256 (CPU: "
             "ops/mlstm.py)"),
    Rule("memory_update", "*", "chunked",
         why="the paper's chunk-wise training: gradients of a chunk in parallel (an approximation for C > 1)"),
    Rule("fft_conv", "*", "fft", why="XLA's depthwise conv is slower than the FFT even for 4 taps (CPU)"),
    Rule("vandermonde_kernel", "*", "chunked",
         why="O(sqrt L) exponentials: 1.1 vs 19 ms at L=64, 48 ms vs 1.16 s at L=4096 (CPU)"),
)


def add_rules(*rules: Rule) -> None:
    """Puts ``rules`` at the top of :data:`AUTO_TABLE` (so they win over the existing rows).

    How a new implementation joins ``"auto"`` (a Pallas kernel for the GPU, say)
    without touching any op's or mixer's code; a row whose implementation is
    not registered is skipped by :func:`resolve`.

    Args:
      *rules: the new rows, in the order they are tried.
    """
    global AUTO_TABLE
    AUTO_TABLE = tuple(rules) + AUTO_TABLE


def resolve(op: str, impl: str, **sizes: int) -> str:
    """The implementation a call runs: ``impl`` itself, or the ``auto`` table's pick.

    Args:
      op: the op's public name.
      impl: the requested implementation (checked).
      **sizes: the problem sizes the op's rules read (static ints).

    Returns:
      A registered implementation name (never ``"auto"``).
    """
    check(op, impl)
    if impl != "auto":
        return impl
    here = platform()
    registered = _IMPLS.get(op, {})
    for rule in AUTO_TABLE:
        if rule.op != op or rule.platform not in ("*", here) or rule.impl not in registered:
            continue
        if rule.when is None or rule.when(sizes):
            return rule.impl
    raise ValueError(f"{op}: the auto table has no row for platform {here!r} and sizes {sizes}")


__all__ = [
    "VOCABULARY", "AUTO_TABLE", "Rule", "register", "register_sequence_parallel", "implementations",
    "check", "implementation", "sequence_parallel", "platform", "add_rules", "resolve",
]

"""Keeps XLA:CPU's per-call scratch memory mapped between calls (glibc's malloc settings).

XLA:CPU allocates one temporary arena per call of a compiled program (513 MB
for a 2-layer Mamba LRA train step at batch 16, length 1024, width 64) with
``posix_memalign`` from its worker threads. glibc serves a thread's request
from that thread's own arena, whose heaps are capped at 64 MB, so a larger
request always becomes a fresh ``mmap`` that is unmapped when the call ends:
every call page-faults its whole scratch space back in, zero-filled by the
kernel. Measured on a 2-core VM (2026-12-06, JAX 0.10.2): 125,000 minor
faults and 0.22 s of system time per Mamba train step, 70,000 and 0.12 s per
S4D step (``benchmarks/host_allocator.py``).

:func:`configure` sets three ``mallopt`` parameters so that those requests
come from the main heap and stay there: one arena for all threads
(``M_ARENA_MAX = 1``), no ``mmap`` for large blocks (``M_MMAP_MAX = 0``) and
no returning of the heap's free top to the system below 2 GiB
(``M_TRIM_THRESHOLD``). After a few calls the heap holds the largest arena
and later calls fault nothing. The cost: the process keeps its peak heap
(what a training run touches anyway), and threads that allocate small
blocks concurrently share one lock.

It must run before JAX starts its CPU backend (whose worker threads would
otherwise already own arenas of their own): the experiment entrypoints
(``experiments/__init__.py``), the benchmarks and the test suite's
``conftest.py`` call it first thing. Anyone else (a notebook, a script of
one's own) calls ``seqjax.host_allocator.configure()`` before the first JAX
computation. ``SEQJAX_HOST_ALLOCATOR=0`` turns it off. Outside Linux with
glibc it does nothing.
"""

import ctypes
import os
import platform
import sys

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 2**31 - 1  # bytes; mallopt takes an int
ENV = "SEQJAX_HOST_ALLOCATOR"
OFF_VALUES = ("0", "off", "false", "no")  # values of ENV that turn it off

_state: dict | None = None


def configure(enable: bool | None = None) -> dict:
    """Sets glibc's malloc so that XLA:CPU's per-call scratch memory stays mapped.

    Idempotent: the first call decides, later calls return its result.

    Args:
      enable: None (default) reads ``SEQJAX_HOST_ALLOCATOR`` (``0``, ``off``,
        ``false`` or ``no`` turn it off; anything else, or unset, on); True or
        False overrides the variable.

    Returns:
      ``{"applied": bool, "reason": str}``; ``reason`` says why not, or names
      the settings.
    """
    global _state
    if _state is not None:
        return _state
    if enable is None:
        enable = os.environ.get(ENV, "1").strip().lower() not in OFF_VALUES
    if not enable:
        _state = {"applied": False, "reason": f"turned off ({ENV}=0 or enable=False)"}
    elif sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        _state = {"applied": False, "reason": f"not Linux with glibc ({sys.platform}, {platform.libc_ver()[0] or '?'})"}
    else:
        _state = _apply()
    return _state


def state() -> dict:
    """What :func:`configure` did in this process, without deciding anything.

    Returns:
      ``configure``'s result, or ``{"applied": False, "reason": "not
      configured in this process"}`` when it was never called.
    """
    return _state if _state is not None else {"applied": False, "reason": "not configured in this process"}


def _apply() -> dict:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError as e:
        return {"applied": False, "reason": f"libc.so.6 not loadable: {e}"}
    settings = ((M_ARENA_MAX, 1, "M_ARENA_MAX=1"), (M_MMAP_MAX, 0, "M_MMAP_MAX=0"),
                (M_TRIM_THRESHOLD, TRIM_THRESHOLD, f"M_TRIM_THRESHOLD={TRIM_THRESHOLD}"))
    # mallopt returns 1 on success and 0 on error.
    failed = [name for param, value, name in settings if libc.mallopt(param, value) != 1]
    if failed:
        return {"applied": False, "reason": "mallopt refused " + ", ".join(failed)}
    return {"applied": True, "reason": ", ".join(name for _, _, name in settings)}

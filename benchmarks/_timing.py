"""Timing and memory helpers shared by the benchmark modules.

Timings are medians over repeats after a warm-up, each call synchronised with
``block_until_ready`` so that asynchronous dispatch does not hide device work.
"""

import statistics
import time

import jax


def time_fn(fn, *args, repeats: int = 5, warmup: int = 1, budget_s: float | None = None) -> float:
    """Median wall time of ``fn(*args)`` in milliseconds.

    Args:
      fn: a (typically jitted) function.
      *args: its arguments.
      repeats: timed calls after warm-up.
      warmup: untimed calls first (compilation happens here).
      budget_s: if given, stop repeating once the timed calls have taken this
        long (after at least 3), so that a slow function does not eat a
        time-limited device run.

    Returns:
      The median time of one call, in ms.
    """
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
        if budget_s is not None and i >= 2 and sum(times) >= budget_s * 1e3:
            break
    return statistics.median(times)


def peak_bytes(fn, *args) -> int | None:
    """Peak device memory of one call of ``jax.jit(fn)`` as XLA plans it.

    Sums the compiled executable's argument, output and temporary buffers (the
    temporaries are where materialised score matrices or state tensors show up).

    Args:
      fn: the function (jitted or not).
      *args: its arguments (arrays or ShapeDtypeStructs).

    Returns:
      Bytes, or None when the backend gives no memory analysis.
    """
    try:
        stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if stats is None:
        return None
    return int(
        stats.temp_size_in_bytes
        + stats.argument_size_in_bytes
        + stats.output_size_in_bytes
    )

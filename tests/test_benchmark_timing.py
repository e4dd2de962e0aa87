"""``benchmarks._timing.time_fn``: the repeat budget that keeps a slow function from eating a device run."""

import time

from benchmarks._timing import time_fn


def _counting(seconds):
    calls = []

    def fn():
        calls.append(1)
        time.sleep(seconds)
        return 0

    return fn, calls


def test_budget_stops_repeats_after_three_calls_at_least():
    fn, calls = _counting(0.03)
    ms = time_fn(fn, repeats=50, warmup=1, budget_s=0.1)
    # 1 warm-up + timed calls until 0.1 s is spent: 4 of ~30 ms (not 50).
    assert 1 + 3 <= len(calls) <= 1 + 6
    assert 25 <= ms <= 200


def test_without_budget_every_repeat_runs():
    fn, calls = _counting(0.0)
    time_fn(fn, repeats=7, warmup=2)
    assert len(calls) == 9

"""``benchmarks.cpu_paths`` keeps what it measured when a later measurement dies."""

import json

import pytest

from benchmarks import cpu_paths


def _fake(monkeypatch, fail_at=None):
    names = ("bench_selective", "bench_train", "bench_precision", "bench_narrow")
    for i, name in enumerate(names):
        def measure(*args, i=i, name=name):
            if i == fail_at:
                raise RuntimeError(f"{name} died")
            return [{"what": name}]
        monkeypatch.setattr(cpu_paths, name, measure)


def test_rows_before_a_failed_measurement_are_written(monkeypatch, tmp_path):
    out = tmp_path / "paths.json"
    _fake(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError, match="bench_precision died"):
        cpu_paths.main(["--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["complete"] is False
    assert [r["what"] for r in data["rows"]] == ["bench_selective", "bench_train"]


def test_a_full_run_is_marked_complete(monkeypatch, tmp_path):
    out = tmp_path / "paths.json"
    _fake(monkeypatch)
    assert cpu_paths.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["complete"] is True and len(data["rows"]) == 4

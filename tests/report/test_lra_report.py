"""The LRA report: ours from results.json (test split), the majority floor of the
same split, the papers' rows labelled, and the training-curve plot."""

import json
import shutil
from pathlib import Path

from configs.tables.lra import get_table
from seqjax.report import build_report
from seqjax.report.lra import run_summary

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def test_report_from_kept_listops_runs(tmp_path):
    for name, src in (("listops-s4d", "lra-listops-s4d-cpu"), ("listops-transformer", "lra-listops-transformer-cpu-1000")):
        shutil.copytree(RESULTS / src, tmp_path / name)
    paths = build_report(get_table("cpu"), tmp_path)
    assert [p.name for p in paths] == ["report.md", "lra-train-accuracy.png"]
    md = (tmp_path / "report.md").read_text()
    s4d = json.loads((tmp_path / "listops-s4d" / "results.json").read_text())["metrics"]
    row = next(line for line in md.splitlines() if line.startswith("| s4d (ours)"))
    assert f"{100 * s4d['test']['accuracy']:.2f}" in row
    floor = next(line for line in md.splitlines() if line.startswith("| majority class"))
    assert f"{100 * s4d['test']['majority']:.2f}" in floor  # the test split's, not validation's
    assert "| S5 (S5 paper) | 62.15 |" in md and "fail" in md
    summary = run_summary(json.loads((tmp_path / "listops-s4d" / "results.json").read_text()))
    assert "majority class" in summary and "validation" in summary and "test" in summary


def test_a_diverged_cell_reads_diverged(tmp_path):
    """A cell whose results.json says ``"status": "diverged"`` is a "diverged" entry, not a number or a gap."""
    shutil.copytree(RESULTS / "lra-listops-s4d-cpu", tmp_path / "listops-s4d")
    config = json.loads((tmp_path / "listops-s4d" / "results.json").read_text())["config"]
    (tmp_path / "listops-gla").mkdir()
    diverged = {"status": "diverged", "finished": False, "config": {**config, "name": "lra-listops-gla-cpu"}}
    (tmp_path / "listops-gla" / "results.json").write_text(json.dumps(diverged))
    build_report(get_table("cpu"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert next(line for line in md.splitlines() if line.startswith("| gla (ours)")).startswith("| gla (ours) | diverged |")
    assert next(line for line in md.splitlines() if line.startswith("| s4d (ours)")).split(" | ")[1][0].isdigit()

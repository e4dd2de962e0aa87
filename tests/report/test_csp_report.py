"""The csp table: built only from results.json files (a cell without results reads "missing"),
the baselines beside each model, both figures written, the notebook run on the same results,
and the kept CPU cells' numbers in the rebuilt table."""

import json
import pathlib

import pytest

from configs.tables.csp import get_table
from seqjax.config import load_config
from seqjax.report import build_report
from seqjax.report.csp import MISSING, cells
from tests.notebooks import execute_notebook

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEPT = ROOT / "docs/results/csp-cpu"


def _fake(base, name, model, **fields):
    """A results.json as a run writes it: the cell's full config plus ``fields``."""
    config = load_config(ROOT / "configs/csp/imu.py", f"model={model},scale=cpu").to_dict()
    (base / name).mkdir(parents=True)
    (base / name / "results.json").write_text(json.dumps({"config": config, **fields}))


def _metrics(k: float) -> dict:
    """Distinct csp metrics for model number ``k`` (the baselines shared, as one eval set)."""
    return {"mse": 0.1 * k, "mse_per_target": [0.09 * k, 0.11 * k], "baseline_mean_mse": 1.0672,
            "baseline_linear_mse": 0.9893, "trace_target": [[0.1, 0.0], [0.2, 0.1], [0.1, 0.3]],
            "trace_predicted": [[0.1 * k, 0.0], [0.2, 0.1 * k], [0.1, 0.2]], "num_examples": 256,
            "num_targets": 8192, "source": "imu_odometry"}


def _row(md, start):
    return next(line for line in md.splitlines() if line.startswith(start))


def test_table_lists_every_cell_and_draws_the_figures(tmp_path):
    table = get_table("cpu")
    assert [c.name for c in table["cells"]] == ["hiss-cpu", "hiss_net-cpu", "s4d-cpu", "mamba-cpu", "lstm-cpu",
                                                 "transformer-cpu"]
    assert "no paper number is given" in table["paper"]
    _fake(tmp_path, "hiss-cpu", "hiss", finished=True, wall_time_s=358.4, train={"steps": 200}, metrics=_metrics(3))
    _fake(tmp_path, "s4d-cpu", "s4d", finished=True, wall_time_s=35.0, train={"steps": 200}, metrics=_metrics(5))
    _fake(tmp_path, "lstm-cpu", "lstm", finished=False)  # interrupted: not a result
    paths = build_report(table, tmp_path)
    assert [p.name for p in paths] == ["report.md", "csp-mse.png", "csp-traces.png"]
    assert all(p.stat().st_size > 10_000 for p in paths[1:])
    md = (tmp_path / "report.md").read_text()
    for model, k, seconds in [("hiss", 3, "358"), ("s4d", 5, "35")]:
        per = f"{0.09 * k:.4f}, {0.11 * k:.4f}"
        assert _row(md, f"| {model} | ") == (f"| {model} | {0.1 * k:.4f} | {per} | {0.1 * k / 1.0672:.4f} | "
                                             f"1.0672 | 0.9893 | 200 | {seconds} |")
    assert _row(md, "| lstm | ") == "| lstm | " + "missing | " * 5 + "– | – |"
    assert _row(md, "| mamba | ").startswith("| mamba | missing")
    assert "Paper (Bhirangi et al. 2024" in md
    assert all(r["status"] == MISSING for r in cells(table, []))
    _run_notebook(tmp_path)


def test_a_diverged_cell_reads_diverged(tmp_path):
    _fake(tmp_path, "lstm-cpu", "lstm", finished=False, status="diverged")
    build_report(get_table("cpu"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert _row(md, "| lstm | ").startswith("| lstm | diverged | ")
    assert not (tmp_path / "csp-mse.png").exists()  # nothing finished: no figure


def _run_notebook(results):
    """notebooks/csp.ipynb on these results: it lists the cells and draws both figures."""
    outputs, images = execute_notebook("csp", results)
    assert "2 finished of 6 csp cells" in outputs
    assert "| hiss | 0.3000 | " in outputs and "| lstm | missing |" in outputs
    assert len(images) == 2


@pytest.mark.skipif(not KEPT.exists(), reason="no kept CPU cells")
def test_kept_cpu_cells_are_in_the_rebuilt_table(tmp_path):
    """Every kept cell's MSE and baselines appear in its row of the kept report (rebuilt from them)."""
    import shutil

    shutil.copytree(KEPT, tmp_path / "csp-cpu")
    build_report(get_table("cpu"), tmp_path / "csp-cpu")
    rebuilt = (tmp_path / "csp-cpu" / "report.md").read_text()
    assert rebuilt == (KEPT / "report.md").read_text()
    kept = [json.loads(p.read_text()) for p in sorted(KEPT.glob("*/results.json"))]
    assert kept
    for r in kept:
        model = r["config"]["name"].split("-")[2]  # csp-imu-<model>-cpu
        m = r["metrics"]
        row = _row(rebuilt, f"| {model} | ")
        for key in ("mse", "baseline_mean_mse", "baseline_linear_mse"):
            assert f" {m[key]:.4f} " in row

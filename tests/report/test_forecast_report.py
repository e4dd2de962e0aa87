"""The forecast table: built only from results.json files (a cell without results reads "missing"), the
baselines beside each model, the forecast figure written, the notebook run on the same results, and the kept
CPU cells' numbers in the rebuilt table."""

import json
import pathlib

from configs.tables.forecast import get_table
from seqjax.config import load_config
from seqjax.report import build_report
from seqjax.report.forecast import MISSING, cells
from tests.notebooks import execute_notebook

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _fake(base, cell, **fields):
    """A results.json as a run writes it: the cell's full config plus ``fields``."""
    config = load_config(ROOT / cell.config, cell.arg).to_dict()
    (base / cell.name).mkdir(parents=True)
    (base / cell.name / "results.json").write_text(json.dumps({"config": config, **fields}))


def _metrics(k: float, horizon: int) -> dict:
    """Distinct forecast metrics for model number ``k`` (the baselines shared: one set of windows)."""
    ex = {"starts": [10, 20], "history": [[0.1 * i for i in range(8)]] * 2, "truth": [[0.2] * horizon] * 2,
          "forecast": [[0.01 * k] * horizon] * 2}
    return {"mse": 0.01 * k, "mae": 0.1 * k, "baseline_mse": 0.5, "baseline_mae": 0.6, "linear_mse": 0.05,
            "linear_mae": 0.15, "examples": ex, "num_windows": 100, "pred_len": horizon}


def _row(md, start):
    return next(line for line in md.splitlines() if line.startswith(start))


def test_table_lists_every_cell_and_draws_the_figure(tmp_path):
    table = get_table("cpu")
    names = [c.name for c in table["cells"]]
    assert names == ["co2-26-informer-cpu", "co2-26-mha-cpu", "co2-26-lstm-nodec-cpu", "elnino-12-informer-cpu",
                     "elnino-12-mha-cpu", "elnino-12-lstm-nodec-cpu"]
    assert "not given here" in table["paper"]
    by = {c.name: c for c in table["cells"]}
    _fake(tmp_path, by["co2-26-informer-cpu"], finished=True, wall_time_s=240.2, metrics=_metrics(3, 26))
    _fake(tmp_path, by["co2-26-lstm-nodec-cpu"], finished=True, wall_time_s=60.0, metrics=_metrics(5, 26))
    _fake(tmp_path, by["co2-26-mha-cpu"], finished=False)  # interrupted: not a result
    paths = build_report(table, tmp_path)
    assert [p.name for p in paths] == ["report.md", "forecast-examples.png"]
    assert (tmp_path / "forecast-examples.png").stat().st_size > 10_000
    md = (tmp_path / "report.md").read_text()
    assert _row(md, "| co2 | 26 | informer | ") == (
        "| co2 | 26 | informer | 0.0300 | 0.3000 | 0.5000 | 0.6000 | 0.0500 | 0.1500 | 240 |")
    lstm = "| co2 | 26 | lstm (no decoder) | "
    assert _row(md, lstm).startswith(lstm + "0.0500 | 0.5000 | ")
    assert _row(md, "| co2 | 26 | mha | ") == "| co2 | 26 | mha | " + "missing | " * 6 + "– |"
    assert "Paper (Zhou et al. 2021" in md
    rows = cells(table, [])
    assert all(r["status"] == MISSING for r in rows)
    outputs, images = execute_notebook("forecast", tmp_path)
    assert "2 finished of 6 forecast cells" in outputs and "| co2 | 26 | informer | 0.0300 |" in outputs
    assert images


def test_the_paper_table_is_the_etth1_grid():
    table = get_table("paper")
    assert [c.name for c in table["cells"]] == [f"ETTh1-{h}-informer-paper" for h in (24, 48, 168, 336, 720)]
    assert all("scale=paper" in c.arg for c in table["cells"])


def test_report_from_the_kept_cpu_cells(tmp_path):
    """docs/results/forecast-cpu: every kept cell's numbers are in the rebuilt table, read from its results.json."""
    import shutil

    kept = ROOT / "docs" / "results" / "forecast-cpu"
    names = [c.name for c in kept.iterdir() if (c / "results.json").is_file()]
    assert names
    table = get_table("cpu")
    grid = {g["cell"]: g for g in table["grid"]}
    for name in names:
        shutil.copytree(kept / name, tmp_path / name)
    build_report(table, tmp_path)
    md = (tmp_path / "report.md").read_text()
    for name in names:
        m = json.loads((kept / name / "results.json").read_text())["metrics"]
        g = grid[name]
        want = " | ".join(f"{m[k]:.4f}" for k in ["mse", "mae", "baseline_mse", "baseline_mae", "linear_mse",
                                                  "linear_mae"])
        start = f"| {g['dataset']} | {g['pred_len']} | {g['model']} | "
        assert _row(md, start).startswith(start + want + " | ")

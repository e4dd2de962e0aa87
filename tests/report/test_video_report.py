"""The video table: built only from results.json files (a cell without results reads
"missing"), the copy baselines beside each model, the rollout figure written, the
notebook run on the same results, and the kept CPU cells' numbers in the rebuilt table."""

import json
import pathlib

from configs.tables.video import get_table
from seqjax.config import load_config
from seqjax.report import build_report
from seqjax.report.video import MISSING, cells
from tests.notebooks import execute_notebook

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _fake(base, name, model, **fields):
    """A results.json as a run writes it: the cell's full config plus ``fields``."""
    config = load_config(ROOT / "configs/video/moving_digits.py", f"model={model},scale=cpu").to_dict()
    (base / name).mkdir(parents=True)
    (base / name / "results.json").write_text(json.dumps({"config": config, **fields}))


def _metrics(k: float) -> dict:
    """Distinct video metrics for model number ``k`` (10 scored frames; the baselines shared, as one eval set)."""
    per_frame = [0.01 * k + 0.001 * i for i in range(10)]
    return {"mse": 0.01 * k, "mae": 0.1 * k, "rollout_mse": sum(per_frame) / 10, "rollout_mae": 0.11 * k,
            "baseline_mse": 0.1076, "baseline_mae": 0.1529, "baseline_rollout_mse": 0.1418,
            "rollout_mse_per_frame": per_frame, "num_examples": 256, "num_predicted_frames": 10,
            "source": "moving_digits"}


def _row(md, start):
    return next(line for line in md.splitlines() if line.startswith(start))


def test_table_lists_every_cell_and_draws_the_figure(tmp_path):
    table = get_table("cpu")
    assert [c.name for c in table["cells"]] == ["convs5-cpu", "transformer-cpu", "lstm-cpu", "convlstm-cpu"]
    assert table["cells"][-1].arg == "model=convlstm,scale=cpu"
    assert "not reproduced" in table["paper"]
    _fake(tmp_path, "convs5-cpu", "convs5", finished=True, wall_time_s=358.4, metrics=_metrics(3))
    _fake(tmp_path, "transformer-cpu", "transformer", finished=True, wall_time_s=35.0, metrics=_metrics(5))
    _fake(tmp_path, "lstm-cpu", "lstm", finished=False)  # interrupted: not a result
    _fake(tmp_path, "convlstm-cpu", "convlstm", finished=True, wall_time_s=301.2, metrics=_metrics(4))
    paths = build_report(table, tmp_path)
    assert [p.name for p in paths] == ["report.md", "video-rollout.png"]
    assert (tmp_path / "video-rollout.png").stat().st_size > 10_000
    md = (tmp_path / "report.md").read_text()
    for model, k, seconds in [("convs5", 3, "358"), ("transformer", 5, "35"), ("convlstm", 4, "301")]:
        m = _metrics(k)
        want = " | ".join(f"{m[key]:.4f}" for key in ["mse", "mae", "rollout_mse", "rollout_mae"])
        assert _row(md, f"| {model} | ") == f"| {model} | {want} | 0.1076 | 0.1529 | 0.1418 | {seconds} |"
    assert _row(md, "| lstm | ") == "| lstm | " + "missing | " * 7 + "– |"
    assert "Paper (Smith et al. 2023" in md and "not reproduced" in md
    rows = {r["model"]: r for r in cells(table, [])}
    assert all(r["status"] == MISSING for r in rows.values())
    _run_notebook(tmp_path)


def test_a_diverged_cell_reads_diverged(tmp_path):
    _fake(tmp_path, "lstm-cpu", "lstm", finished=False, status="diverged")
    build_report(get_table("cpu"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert _row(md, "| lstm | ").startswith("| lstm | diverged | ")
    assert not (tmp_path / "video-rollout.png").exists()  # nothing finished: no figure


def test_the_paper_table_is_convs5_only():
    table = get_table("paper")
    assert [(c.name, c.arg) for c in table["cells"]] == [("convs5-paper", "model=convs5,scale=paper")]


def _run_notebook(results):
    """notebooks/video.ipynb on these results: it lists the cells and draws the figure."""
    outputs, images = execute_notebook("video", results)
    assert "3 finished of 4 video cells" in outputs
    assert "| convs5 | 0.0300 | 0.3000 | " in outputs and "| lstm | missing |" in outputs
    assert "| convlstm | 0.0400 | 0.4000 | " in outputs
    assert images



def test_report_from_the_kept_cpu_cells(tmp_path):
    """docs/results/video-cpu: every kept cell's numbers are in the rebuilt table, read from its results.json."""
    import shutil

    kept = ROOT / "docs" / "results" / "video-cpu"
    names = [c.name for c in kept.iterdir() if (c / "results.json").is_file()]
    assert names
    for name in names:
        shutil.copytree(kept / name, tmp_path / name)
    build_report(get_table("cpu"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    for name in names:
        m = json.loads((kept / name / "results.json").read_text())["metrics"]
        model = name.removesuffix("-cpu")
        want = " | ".join(f"{m[k]:.4f}" for k in ["mse", "mae", "rollout_mse", "rollout_mae", "baseline_mse",
                                                  "baseline_mae", "baseline_rollout_mse"])
        assert _row(md, f"| {model} | ").startswith(f"| {model} | {want} | ")

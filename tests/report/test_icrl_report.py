"""The icrl table: built only from results.json files (a cell without results reads "missing"),
the random-policy baseline beside each model, the learning-curve figure written, the notebook run
on the same results, and the kept CPU cells' numbers in the rebuilt table."""

import json
import pathlib
import shutil

from configs.tables.icrl import get_table
from seqjax.config import load_config
from seqjax.report import build_report
from seqjax.report.icrl import MISSING, cells
from tests.notebooks import execute_notebook

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _fake(base, name, model, env, **fields):
    """A results.json as a run writes it: the cell's full config plus ``fields``."""
    config = load_config(ROOT / "configs/icrl/icrl.py", f"model={model},env={env},scale=cpu").to_dict()
    (base / name).mkdir(parents=True)
    (base / name / "results.json").write_text(json.dumps({"config": config, **fields}))


def _metrics(k: float) -> dict:
    per = [0.1 * k + 0.01 * i for i in range(4)]
    return {"final_return": sum(per) / 4, "random_return": -0.5, "final_return_per_episode": per,
            "random_return_per_episode": [-0.5] * 4, "env_steps": 1000 * k, "curve_env_steps": [10, 20, 30],
            "curve_return": [-0.5, 0.1 * k, 0.2 * k], "eval_episodes": 256}


def _row(md, start):
    return next(line for line in md.splitlines() if line.startswith(start))


def test_table_lists_every_cell_and_draws_the_figure(tmp_path):
    table = get_table("cpu")
    assert len(table["cells"]) == 6 and table["runner"] == "rl"
    assert "not verified" in table["paper"]
    _fake(tmp_path, "meta_bandit-s5-cpu", "s5", "meta_bandit", finished=True, wall_time_s=61.2, metrics=_metrics(3))
    _fake(tmp_path, "meta_bandit-lstm-cpu", "lstm", "meta_bandit", finished=True, wall_time_s=99.0,
          metrics=_metrics(5))
    _fake(tmp_path, "meta_bandit-s5_noreset-cpu", "s5_noreset", "meta_bandit", finished=False)  # interrupted
    paths = build_report(table, tmp_path)
    assert [p.name for p in paths] == ["report.md", "icrl-curves.png"]
    assert (tmp_path / "icrl-curves.png").stat().st_size > 10_000
    md = (tmp_path / "report.md").read_text()
    for model, k, seconds in [("s5", 3, "61"), ("lstm", 5, "99")]:
        m = _metrics(k)
        per = m["final_return_per_episode"]
        want = f"| meta_bandit | {model} | {m['final_return']:.3f} | -0.500 | {per[0]:.3f} | {per[-1]:.3f} | "
        assert _row(md, f"| meta_bandit | {model} | ") == want + f"{1000 * k:,} | {seconds} |"
    assert _row(md, "| meta_bandit | s5_noreset | ") == "| meta_bandit | s5_noreset | " + "missing | " * 4 + "– | – |"
    assert _row(md, "| repeat_previous | s5 | ").startswith("| repeat_previous | s5 | missing")
    rows = cells(table, [])
    assert all(r["status"] == MISSING for r in rows)
    outputs, images = execute_notebook("icrl", tmp_path)
    assert "2 finished of 6 icrl cells" in outputs and "| meta_bandit | lstm | 0.515 |" in outputs
    assert images


def test_report_from_the_kept_cpu_cells(tmp_path):
    """docs/results/icrl-cpu: every kept cell's numbers are in the rebuilt table, read from its results.json."""
    kept = ROOT / "docs" / "results" / "icrl-cpu"
    names = [c.name for c in kept.iterdir() if (c / "results.json").is_file()]
    assert names
    for name in names:
        shutil.copytree(kept / name, tmp_path / name)
    build_report(get_table("cpu"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    for name in names:
        r = json.loads((kept / name / "results.json").read_text())
        m = r["metrics"]
        env, model = r["config"]["env"]["name"], r["config"]["model"]["name"]
        want = f"| {env} | {model} | {m['final_return']:.3f} | {m['random_return']:.3f} | "
        assert _row(md, f"| {env} | {model} | ").startswith(want)

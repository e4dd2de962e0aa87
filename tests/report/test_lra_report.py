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
    assert "Paper rows are the papers' reported numbers" in md
    summary = run_summary(json.loads((tmp_path / "listops-s4d" / "results.json").read_text()))
    assert "majority class" in summary and "validation" in summary and "test" in summary


def test_a_diverged_cell_reads_diverged(tmp_path):
    """A cell whose results.json says ``"status": "diverged"`` is a "diverged" entry, not a number or a gap."""
    shutil.copytree(RESULTS / "lra-listops-s4d-cpu", tmp_path / "listops-s4d")
    config = json.loads((tmp_path / "listops-s4d" / "results.json").read_text())["config"]
    (tmp_path / "listops-mamba").mkdir()
    diverged = {"status": "diverged", "finished": False, "config": {**config, "name": "lra-listops-mamba-cpu"}}
    (tmp_path / "listops-mamba" / "results.json").write_text(json.dumps(diverged))
    build_report(get_table("cpu"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert _row(md, "| mamba (ours)").startswith("| mamba (ours) | diverged |")
    assert _row(md, "| s4d (ours)").split(" | ")[1][0].isdigit()
    assert _row(md, "| lru (ours)").startswith("| lru (ours) | missing | – | – | – | missing |")


def _row(md: str, start: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(start))


def _fake_run(path: Path, config: dict, name: str, metrics: dict, steps: int) -> None:
    path.mkdir(parents=True)
    results = {"finished": True, "config": {**config, "name": name}, "metrics": metrics,
               "train": {"steps": steps}, "wall_time_s": 12.0}
    (path / "results.json").write_text(json.dumps(results))


def test_spt_rows_gap_and_pretraining_accuracy(tmp_path, rng):
    """+SPT rows, the SPT-vs-scratch gap from the two runs' numbers, the pretraining run's token accuracy."""
    config = json.loads((RESULTS / "lra-listops-s4d-cpu" / "results.json").read_text())["config"]
    scratch, spt, token = (float(v) for v in rng.uniform(0.2, 0.6, size=3))
    split = {"majority": 0.1, "ce": 1.0, "num_examples": 10, "label_counts": [10]}
    _fake_run(tmp_path / "listops-transformer", config, "lra-listops-transformer-cpu",
              {"accuracy": scratch, "test": {**split, "accuracy": scratch}}, 2000)
    _fake_run(tmp_path / "listops-transformer+pretrain", config, "lra-listops-transformer+pretrain-cpu",
              {"ce": 0.5, "test": {"ce": 0.5, "acc": token, "num_examples": 10, "num_tokens": 99}}, 1000)
    _fake_run(tmp_path / "listops-transformer+spt", config, "lra-listops-transformer+spt-cpu",
              {"accuracy": spt, "test": {**split, "accuracy": spt}}, 1000)
    build_report(get_table("cpu"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert _row(md, "| transformer +SPT (ours)").startswith(f"| transformer +SPT (ours) | {100 * spt:.2f} |")
    assert _row(md, "| listops | transformer |") == (
        f"| listops | transformer | {100 * scratch:.2f} | {100 * spt:.2f} | {100 * (spt - scratch):+.2f} | "
        f"{100 * token:.2f} |")
    assert _row(md, "| listops | s4d |") == "| listops | s4d | missing | missing | – | missing |"
    assert _row(md, "| listops-transformer+pretrain |").startswith("| listops-transformer+pretrain | finished | 1000")
    assert "+pretrain (ours)" not in md  # a pretraining run is not a classifier row


def test_spt_cells_start_from_their_pretraining_cell():
    """Every +spt cell names its +pretrain cell as init_from, and that cell comes first."""
    for scale in ("cpu", "paper"):
        cells = get_table(scale)["cells"]
        names = [c.name for c in cells]
        spt = [c for c in cells if c.name.endswith("+spt")]
        assert spt and all(c.init_from == c.name.replace("+spt", "+pretrain") for c in spt)
        assert all(names.index(c.init_from) < names.index(c.name) for c in spt)
        assert all("stage=finetune" in c.arg for c in spt)


def test_notebook_lists_every_cell_and_draws_the_curves(tmp_path):
    """notebooks/lra.ipynb on two kept runs: every cell listed (the rest "missing"), accuracy, curves."""
    from tests.notebooks import execute_notebook

    shutil.copytree(RESULTS / "lra-listops-s4d-cpu", tmp_path / "listops-s4d")
    outputs, images = execute_notebook("lra", tmp_path)
    cells = get_table("cpu")["cells"]
    assert f"1 finished of {len(cells)} LRA cells" in outputs
    assert "| listops-transformer+spt | missing |" in outputs and "| listops | s4d | " in outputs
    s4d = json.loads((tmp_path / "listops-s4d" / "results.json").read_text())["metrics"]["test"]["accuracy"]
    assert f"| s4d | {100 * s4d:.2f} |" in outputs and images


def test_notebook_shows_the_zoo_table(tmp_path):
    """notebooks/lra.ipynb with SEQJAX_TABLE=lra_zoo: the zoo table's cells, a kept zoo run's accuracy."""
    from configs.tables.lra_zoo import get_table as zoo_table
    from tests.notebooks import execute_notebook

    shutil.copytree(RESULTS / "lra_zoo-cpu" / "listops-combiner", tmp_path / "listops-combiner")
    outputs, images = execute_notebook("lra", tmp_path, env={"SEQJAX_TABLE": "lra_zoo"})
    assert f"1 finished of {len(zoo_table('cpu')['cells'])} LRA cells" in outputs
    assert "| listops-vandermonde | missing |" in outputs and images
    acc = json.loads((tmp_path / "listops-combiner" / "results.json").read_text())["metrics"]["test"]["accuracy"]
    assert f"| combiner | {100 * acc:.2f} |" in outputs


def test_report_of_a_table_without_paper_rows(tmp_path):
    """The zoo table has no paper rows: its report does not speak of any."""
    from configs.tables.lra_zoo import get_table as zoo_table

    shutil.copytree(RESULTS / "lra_zoo-cpu" / "listops-combiner", tmp_path / "listops-combiner")
    md = build_report(zoo_table("cpu"), tmp_path)[0].read_text()
    acc = json.loads((tmp_path / "listops-combiner" / "results.json").read_text())["metrics"]["test"]["accuracy"]
    assert f"| combiner (ours) | {100 * acc:.2f} |" in md and "| listops-fit@2000 | missing |" in md
    assert "Paper rows" not in md and "majority class" in md

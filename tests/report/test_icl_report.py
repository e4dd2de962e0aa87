"""The ICL table report: the new classes' cells, their baselines, randomised-label runs and missing cells."""

import json
import pathlib

import numpy as np

from seqjax.config import load_module
from seqjax.report import build_report
from tests.report.test_report import _icl_result

ROOT_CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path, cell, result):
    d = tmp_path / cell
    d.mkdir()
    (d / "results.json").write_text(json.dumps(result))


def test_new_cells_baselines_and_missing_rows(tmp_path, rng):
    table = load_module(ROOT_CONFIGS / "tables" / "icl.py").get_table("cpu")
    names = {c.name for c in table["cells"]}
    assert {"class_mixture-transformer", "sliding_window-labelnoise0.5-transformer", "quadratic-gla"} <= names
    mix = _icl_result(rng, "icl-class_mixture-transformer-cpu", 1.0)
    mix["config"]["task"]["function_class"] = "class_mixture"
    mix["metrics"]["error_per_n"]["bayes_class_mixture"] = [0.123456] * 7
    _write(tmp_path, "class_mixture-transformer", mix)
    noisy = _icl_result(rng, "icl-sliding_window-transformer-cpu-labelnoise0.5", 1.0)
    noisy["config"]["task"]["function_class"] = "sliding_window"
    noisy["metrics"]["label_noise"] = {"train": 0.5, "eval": 0.5, "eval_replaced_fraction": 0.5}
    _write(tmp_path, "sliding_window-labelnoise0.5-transformer", noisy)
    paths = build_report(table, tmp_path)
    md = paths[0].read_text()
    section = md.split("## class_mixture")[1].split("## ")[0]
    assert "baseline: Bayes (class mixture) | 0.123 |" in section  # the run's own number, not typed in
    assert "class_mixture-mamba | missing" in section
    sw = md.split("## sliding_window")[1].split("## ")[0]
    assert "icl-sliding_window-transformer-cpu-labelnoise0.5" in sw and "sliding_window-transformer | missing" in sw
    assert "## decision_tree" in md and "decision_tree-lstm | missing" in md  # a class with no run at all
    assert any(p.name == "icl-class_mixture.png" for p in paths)
    assert np.isfinite(mix["metrics"]["error_per_n"]["model"]).all()

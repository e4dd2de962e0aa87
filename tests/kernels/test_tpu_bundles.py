"""``benchmarks.tpu_bundles``: reading libtpu's bundle dumps (a dump of libtpu's layout, written here)."""

from benchmarks import tpu_bundles

ANALYSIS = 'Schedule analysis:\n\ttotal scheduled bundles: 5\n ... custom_call_target="tpu_custom_call" ...\n'
BUNDLES = """= control target key start
LH: loop header
     0   :  { %s1 = inlined_call_operand.hbm }
  0x1   : > { %v2 = vld [vmem:[%s1]] }
  0x2   : > { %v3 = vpow2.f32 %v2 ;; %v4 = vpow2.f32 %v2 }
  0x3   : >> { %v5 = vmul.f32 %v3, %v4 }
  0x4   : >> { %v6 = vadd.f32 %v5, %v5 }
/* iteration_bounds: (2, 16, 32)
*/
"""


def test_reads_bundles_by_depth_exps_and_grid(tmp_path):
    (tmp_path / "123-branch_0_fun.1-71-schedule-analysis_final_bundles.txt").write_text(ANALYSIS)
    (tmp_path / "123-branch_0_fun.1-72-final_bundles.txt").write_text(BUNDLES)
    # An HLO op that is not a Mosaic kernel, and the top-level program (no grid): skipped.
    (tmp_path / "124-fusion.3-71-schedule-analysis_final_bundles.txt").write_text("Schedule analysis: fusion\n")
    (tmp_path / "124-fusion.3-72-final_bundles.txt").write_text(BUNDLES)
    (tmp_path / "125-TLP-71-schedule-analysis_final_bundles.txt").write_text(ANALYSIS)
    (tmp_path / "125-TLP-72-final_bundles.txt").write_text("  0x1   : > { %v2 = vld }\n")
    (kernel,) = tpu_bundles.kernel_bundles(str(tmp_path))
    assert kernel == {"name": "branch_0_fun.1", "bundles_by_depth": {0: 1, 1: 2, 2: 2}, "vpow2": 2,
                      "grid": [2, 16, 32]}


def test_table_renders_a_json():
    row = {"op": "selective_scan", "parts": {"forward": {"kernels": [
        {"name": "k", "bundles_by_depth": {"1": 2, "2": 2}, "vpow2": 2, "grid": [2, 16, 32], "inner_trips": 8,
         "bundle_cycles": 1024 * (2 + 8 * 2)}]}}}
    text = tpu_bundles.table({"rows": [row]})
    assert "| selective_scan | forward | k | 1,024 | 1: 2, 2: 2 | 8 | 18,432 | 2 |" in text

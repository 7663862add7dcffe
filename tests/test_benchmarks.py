"""The benchmark entry point runs in --quick mode and writes well-formed results (no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmarks_write_well_formed_json_and_markdown(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("bench_eval_quick", "bench_conv_quick", "bench_gradient_matching_quick"):
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["benchmark"] == name and result["machine"] and result["rows"]
        for row in result["rows"]:
            timings = [v for k, v in row.items() if k in ("seconds", "s_per_step")]
            assert all(isinstance(t, float | int) and t > 0 for t in timings), row
        table = (tmp_path / f"{name}.md").read_text()
        assert table.count("\n|") >= 1 + len(result["rows"])  # header, separator, one line per row

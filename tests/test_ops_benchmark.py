"""``benchmarks/ops.py`` still runs: its chain of dependent products, a step's cost, keeps
the rounds of 100 sequential 2-round products and its error bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.system
def test_the_product_chain_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "ops.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ops.py"), "--only", "mul_fxp_chain_100x576",
         "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    chain = json.loads(out.read_text())["mul_fxp_chain_100x576"]
    assert chain["rounds"] == 2 * 100  # mul_fxp: 2 rounds each, one after the other
    assert chain["max_error_ulp"] <= 100  # at most 1 ulp per truncation, |y| <= 1
    assert 0 < chain["seconds_per_product"] == pytest.approx(chain["seconds"] / 100)

"""``benchmarks/ops.py`` still runs: its chain of dependent products, a step's cost, keeps
the rounds of 100 sequential 2-round products and its error bound."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.system
def test_the_product_chain_benchmark_runs(benchmark_script, tmp_path: Path) -> None:
    results, _ = benchmark_script.run(tmp_path, "ops.py", "--only", "mul_fxp_chain_100x576",
                                      "--repeats", "1")
    chain = results["mul_fxp_chain_100x576"]
    assert chain["rounds"] == 2 * 100  # mul_fxp: 2 rounds each, one after the other
    assert chain["max_error_ulp"] <= 100  # at most 1 ulp per truncation, |y| <= 1
    assert 0 < chain["seconds_per_product"] == pytest.approx(chain["seconds"] / 100)

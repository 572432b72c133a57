"""``benchmarks/deployment.py`` still runs: five ``puma_async.party`` processes over loopback
TLS with the per-role certificate flow, on the tiny model (the SmolLM2 figures in the README
come from the same script)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.mark.system
def test_the_deployment_benchmark_runs_on_the_tiny_model(benchmark_script, tmp_path: Path) -> None:
    figures, _ = benchmark_script.run(tmp_path, "deployment.py", "--model", "tiny",
                                      "--prompt", "1 2 3", "--max-new-tokens", "2")
    assert figures["prompt_tokens"] > 0 and len(figures["per_token_seconds"]) == 1
    for mb in (figures["prompt_pass"]["mb_parties"], *figures["per_token_mb_parties"]):
        assert mb["online"] > 0 and mb["offline"] > 0
    assert set(figures["peak_memory_bytes"]) == {"P0", "P1", "P2", "model-owner", "client"}
    cpu = figures["cpu_seconds_per_pass"]
    assert set(cpu) == {"P0", "P1", "P2"}
    if sys.platform == "linux":  # from /proc: the prompt pass and the one new token
        for party in cpu.values():
            assert len(party["process"]) == len(party["event_loop"]) == 2
            assert sum(party["process"]) > 0 and min(party["process"]) >= 0

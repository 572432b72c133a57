"""``benchmarks/llama.py`` still runs (on the tiny model, ``--tiny``: the SmolLM2 figures in the
README come from the same script) and writes every pass's event-loop CPU time beside its
seconds."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.system
def test_the_llama_benchmark_runs_on_the_tiny_model(benchmark_script, tmp_path: Path) -> None:
    results, stdout = benchmark_script.run(tmp_path, "llama.py", "--tiny")
    (prompt,) = results["tiny"]["prompts"]
    passes = [prompt["prompt_pass"], *prompt["new_tokens"]]
    assert len(passes) == 2
    for figures in passes:  # every pass runs Python on the event loop's thread
        assert figures["event_loop_cpu_seconds"] > 0 and figures["rounds"] > 0
    mean = prompt["new_token_mean"]
    assert mean["event_loop_cpu_seconds"] == prompt["new_tokens"][0]["event_loop_cpu_seconds"]
    assert "event loop CPU" in stdout

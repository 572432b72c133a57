"""``benchmarks/long_prompt.py`` still runs, on the tiny model: each prompt length in a
process of its own, its passes as ``prompt_passes`` cuts them, the prompt's rounds and bytes
over all its passes, and a peak memory (the README's SmolLM2 figures come from the same
script)."""

from __future__ import annotations

from pathlib import Path

import pytest

from puma_async.session.state import prompt_passes


@pytest.mark.system
def test_the_long_prompt_benchmark_runs_on_the_tiny_model(benchmark_script,
                                                          tmp_path: Path) -> None:
    figures, stdout = benchmark_script.run(tmp_path, "long_prompt.py", "--tiny",
                                           "--lengths", "3,9", "--per-pass", "4",
                                           "--tokens", "1")
    short, long = figures["runs"]
    assert (short["length"], long["length"]) == (3, 9)
    assert (short["passes"], long["passes"]) == (1, len(prompt_passes(9, 4))) == (1, 4)
    assert long["prompt_rounds"] > 2 * short["prompt_rounds"] > 0
    assert long["prompt_bytes_sent_p0"] > short["prompt_bytes_sent_p0"] > 0
    for run in (short, long):
        assert run["max_pass_positions"] == 4 and len(run["new_token_seconds"]) == 1
        assert run["peak_rss_bytes"] > 0 and run["prompt_seconds"] > 0
    assert "9 tokens in 4 pass(es) of <= 4" in stdout

"""``benchmarks/llama.py`` still runs (on the tiny model, ``--tiny``: the SmolLM2 figures in the
README come from the same script) and writes every pass's event-loop CPU time beside its
seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.system
def test_the_llama_benchmark_runs_on_the_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "llama.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "llama.py"), "--tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (prompt,) = json.loads(out.read_text())["tiny"]["prompts"]
    passes = [prompt["prompt_pass"], *prompt["new_tokens"]]
    assert len(passes) == 2
    for figures in passes:  # every pass runs Python on the event loop's thread
        assert figures["event_loop_cpu_seconds"] > 0 and figures["rounds"] > 0
    mean = prompt["new_token_mean"]
    assert mean["event_loop_cpu_seconds"] == prompt["new_tokens"][0]["event_loop_cpu_seconds"]
    assert "event loop CPU" in done.stdout

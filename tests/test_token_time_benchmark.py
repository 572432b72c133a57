"""``benchmarks/token_time.py`` still runs (on the tiny model, ``--tiny``: the README's split of
a SmolLM2 token comes from the same script) and writes each new token's split."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.system

KEYS = {"seconds", "loop_cpu_seconds", "workers_cpu_seconds", "loop_idle_seconds"}


@pytest.mark.parametrize("recorded", [False, True])
def test_the_token_time_benchmark_runs_on_the_tiny_model(benchmark_script, tmp_path: Path,
                                                         recorded: bool) -> None:
    args = ["--tiny", "--tokens", "3", *(["--recorded"] if recorded else [])]
    results, stdout = benchmark_script.run(tmp_path, "token_time.py", *args)
    assert results["recorded"] is recorded and results["model"] == "tiny"
    assert results["components"] is False
    tokens = results["new_tokens"]
    assert len(tokens) == 3 and all(set(token) == KEYS for token in tokens)
    for token in tokens:  # every token runs Python on the loop's thread and waits for I/O
        assert token["seconds"] > 0 and token["loop_idle_seconds"] > 0
        assert token["loop_cpu_seconds"] >= 0 and token["workers_cpu_seconds"] >= 0
    assert set(results["mean"]) == KEYS
    assert "3 new tokens" in stdout and "event loop CPU" in stdout
    # the host's speeds beside the figures: its Python and its memory (a token's products)
    assert results["machine"]["python_loop_1e7_seconds"] > 0
    assert results["machine"]["memory_read_gbps"] > 0 and "GB/s of a cold matrix" in stdout


def test_a_token_count_below_one_is_refused(benchmark_script, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="--tokens must be at least 1"):
        benchmark_script.run(tmp_path, "token_time.py", "--tiny", "--tokens", "0")


def test_components_name_the_layer_rows_of_the_llama_tables(benchmark_script,
                                                            tmp_path: Path) -> None:
    """``--components``: per token, the loop's seconds by the llama tables' rows (layer
    components in any layer, the pass's own scopes, offline work apart: the next pass's
    material, all in scope ``tuples``, and none in a layer's components)."""
    results, stdout = benchmark_script.run(tmp_path, "token_time.py", "--tiny", "--tokens",
                                           "2", "--components")
    assert results["components"] is True
    for token in results["new_tokens"]:
        spent = token["loop_seconds_by_component"]
        assert {"attn.norm", "attn.softmax.neg_exp", "mlp.silu", "mlp.down", "head",
                "tuples (offline)"} <= set(spent)
        assert not any(name.endswith("(offline)") for name in spent
                       if name != "tuples (offline)")
        assert not any(name.startswith(("layer", "p0")) for name in spent)
        assert all(seconds >= 0 for seconds in spent.values())
    assert all(name in stdout for name in results["mean"]["loop_seconds_by_component"])


def test_the_timeline_splits_each_token_into_windows(benchmark_script, tmp_path: Path) -> None:
    """``--timeline``: per token, 8 windows from its start and 5 to its end, each the loop's
    online, offline and idle seconds, none above the window's 20 ms, and the rest between; each
    token makes the next pass's material (offline steps)."""
    results, stdout = benchmark_script.run(tmp_path, "token_time.py", "--tiny", "--tokens",
                                           "2", "--timeline")
    assert results["timeline"] is True
    for token in results["new_tokens"]:
        timeline = token["timeline"]
        assert len(timeline["from_start"]) == 8 and len(timeline["to_end"]) == 5
        for window in [*timeline["from_start"], *timeline["to_end"]]:
            assert len(window) == 3 and all(v >= 0 for v in window)
            assert sum(window) <= 0.02 + 1e-6
        assert len(timeline["between"]) == 3
        windows = [*timeline["from_start"], *timeline["to_end"], timeline["between"]]
        assert sum(window[1] for window in windows) > 0
    assert set(results["mean"]["timeline"]) == {"from_start", "to_end", "between"}
    assert "from start" in stdout and "to end" in stdout

"""The README's tables of figures are what ``benchmarks/tables.py`` renders from the committed
``benchmarks/results/*.json``."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def tables() -> ModuleType:
    """``benchmarks/tables.py`` (a script folder, not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))  # for its ``import reporting``, as a script
    spec = importlib.util.spec_from_file_location("benchmark_tables",
                                                  ROOT / "benchmarks" / "tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_readme_tables_equal_their_json(tables: ModuleType) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    names = [m["name"] for m in tables.SECTION.finditer(text)]
    assert set(tables.TABLES) <= set(names)  # every benchmark table is in the README
    for name in tables.TABLES:  # llama.json needs a run of 8-12 GB: its table may be by hand
        assert tables.render(name) is not None or name == "llama", f"no JSON for {name}"
    assert tables.rewrite(text) == text, "README tables are stale: python benchmarks/tables.py"


def test_check_flags_a_stale_table(tables: ModuleType, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    assert tables.main(["--check", "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    readme.write_text(text.replace("| in-memory |", "| in-memory (edited) |", 1),
                      encoding="utf-8")
    assert tables.main(["--check", "--readme", str(readme)]) == 1
    assert tables.main(["--readme", str(readme)]) == 0  # rewrites it
    assert readme.read_text(encoding="utf-8") == text


def test_a_table_without_its_json_is_left_as_it_is(tables: ModuleType, tmp_path: Path) -> None:
    text = "a\n<!-- table: ops -->\nhand-written\n<!-- end -->\nb\n"
    assert tables.rewrite(text, tmp_path) == text  # no ops.json in tmp_path
    with pytest.raises(KeyError, match="unknown table"):
        tables.rewrite("<!-- table: nope -->\n<!-- end -->\n", tmp_path)


def test_the_cost_renderer(tables: ModuleType) -> None:
    row = {"op": "arith.mul", "name": "mul", "shapes": ((256,), (256,)), "per": "element",
           "online_rounds": 1, "online_bytes": 24.0, "offline_rounds": 0, "offline_bytes": 0.0,
           "error": "exact for |x| < 2^62"}
    assert tables.render_costs([row, {**row, "shapes": ((8, 8),), "per": "output element"}]) == [
        "| op | inputs | rounds | bytes per element | error |", "|---|---|---|---|---|",
        "| `arith.mul` | (256,), (256,) | 1 | 24 | exact for \\|x\\| < 2^62 |",
        "|  | (8, 8) | 1 | 24 per output element |  |",
    ]
    variant = tables.render_costs([row, {**row, "name": 'mul (method="puma")', "error": "1"}])
    assert variant[3] == '| `arith.mul (method="puma")` | (256,), (256,) | 1 | 24 | 1 |'
    offline = tables.render_costs([{**row, "offline_rounds": 1, "offline_bytes": 8.0}])
    assert offline[0].endswith("| offline | error |")
    assert offline[2] == ("| `arith.mul` | (256,), (256,) | 1 | 24 | 1 round, 8 "
                          "| exact for \\|x\\| < 2^62 |")
    deeper = tables.render_costs([{**row, "offline_rounds": 2, "offline_bytes": 8.0}])
    assert "| 2 rounds, 8 |" in deeper[2]


def test_the_llama_renderer(tables: ModuleType) -> None:
    """On the layout ``benchmarks/llama.py`` writes."""
    token = {"seconds": 2.5, "online": {"rounds": 2509, "bytes": 35.6e6},
             "offline": {"rounds": 2, "bytes": 8.86e6}}
    step = {"seconds": 4.1, "online": {"rounds": 2509, "bytes": 165e6},
            "offline": {"rounds": 2, "bytes": 43.8e6}}
    data = {
        "spu_reference": {"smollm2_forward_5_tokens": {"seconds": 12.8, "bytes_all_parties":
                                                       296e6, "peak_memory_bytes": 8.2e9},
                          "llama7b_block_8_tokens": {"seconds": 44.4, "bytes_all_parties": 123e6}},
        "smollm2": {"setup": {"seconds": 9.0, "model_owner_bytes_sent": 2.15e9},
                    "prompts": [{"prompt_tokens": 5, "prompt_pass": step,
                                 "new_tokens": [token, {**token, "seconds": 3.0}]}],
                    "peak_memory_bytes": 7.9e9},
        "block7b": {"config": {"tokens": 8}, "forward": {"seconds": 3.2},
                    "block": {"bytes_all_parties": 71.9e6, "rounds": 102,
                              "offline": {"rounds": 2, "bytes": 12.9e6}},
                    "peak_memory_bytes": 11.5e9},
        "llama7b_derived": {"seconds": 110.0, "bytes_all_parties": 2.3e9,
                            "puma": {"seconds": 200.473, "bytes": 1.794e9}},
    }
    lines = tables.render_llama(data)
    assert lines[2] == ("| SmolLM2-135M, 5-token prompt pass | 4.1 s | 2509 rounds, 165 MB "
                        "| 2 rounds, 43.8 MB | 12.8 s, 296 MB |")
    assert lines[3] == ("| SmolLM2-135M, each of 2 new tokens (KV cache) | 2.5-3.0 s "
                        "| 2509 rounds, 35.6 MB | 2 rounds, 8.86 MB | (no cache: a full pass) |")
    assert lines[4] == ("| one LLaMA-7B-shape block, 8 tokens | 3.2 s (the forward) "
                        "| 102 rounds, 71.9 MB | 2 rounds, 12.9 MB | 44.4 s, 123 MB |")
    assert lines[5] == ("| LLaMA-7B (8 -> 1), derived from the block | 110 s "
                        "| 2.300 GB online and offline together | "
                        "| PUMA's paper: 200 s, 1.794 GB |")
    assert "7.9 GB (SPU's forward: 8.2 GB), the 7B-shape block 11.5 GB" in lines[-1]
    long = {"online": {"rounds": 2779, "bytes": 1.176e9}, "offline": {"rounds": 2, "bytes": 311e6}}
    assert tables._phases([long]) == ("2779 rounds, 1.18 GB", "2 rounds, 311 MB")


def test_the_ops_renderer_shows_the_offline_part(tables: ModuleType) -> None:
    op = {"description": "op", "seconds": 0.5, "median_seconds": 0.6, "bytes_all_parties": 39e6,
          "rounds": 4, "messages_p0": 9, "wrong": 0}
    lines = tables.render_ops({"a": {**op, "offline_rounds": 2,
                                     "offline_bytes_all_parties": 36e6}, "b": op})
    assert lines[2] == "| op | 0.5 s; 0.6 s | 39 MB | 4 | 2 rounds, 36 MB | 9 | 0 wrong |  |"
    assert lines[3] == "| op | 0.5 s; 0.6 s | 39 MB | 4 |  | 9 | 0 wrong |  |"


def test_the_llama_components_renderer(tables: ModuleType) -> None:
    def component(rounds: list[int], kb: float, offline_kb: float) -> dict:
        return {"online": {"rounds": rounds, "bytes": [kb * 1e3] * len(rounds)},
                "offline": {"rounds": [2] * len(rounds), "bytes": [offline_kb * 1e3] * len(rounds)}}

    token = {"online": {"rounds": 31, "bytes": 2.5e6}, "offline": {"rounds": 2, "bytes": 0.6e6},
             "components": {"io": component([1], 786.4, 0),
                            "attn.norm": component([14, 15], 82.5, 6),
                            "mlp.down": component([2, 2], 24.3, 0)}}
    lines = tables.render_llama_components({"smollm2": {"prompts": [{"new_tokens": [token]}]}})
    assert lines[2:] == [
        "| `io` (once) | 1 | 786.4 |  |",
        "| `attn.norm` | 14-15 | 82.5 | 6.0 |",
        "| `mlp.down` | 2 | 24.3 |  |",
        "| a layer (its components) | 16-17 | | |",
        "| the pass (2 layers; online, offline) | 31 rounds | 2.5 MB | 0.6 MB |",
    ]


DEPLOYMENT_JSON = {  # the layout benchmarks/deployment.py writes (figures made up)
    "prompt_tokens": 5, "time_to_first_token_seconds": 19.34, "owner_loaded_seconds": 5.61,
    "setup_seconds_client": 7.84,
    "prompt_pass": {"seconds": 4.031, "mb_parties": {"online": 128.42, "offline": 62.63}},
    "per_token_seconds": [2.504, 2.449],
    "per_token_mb_parties": [{"online": 27.44, "offline": 12.71},
                             {"online": 27.52, "offline": 12.81}],
    "peak_memory_bytes": {"P0": 2 * 2**30, "P1": 2.5 * 2**30, "P2": 2 * 2**30,
                          "model-owner": 2**30, "client": 0.5 * 2**30},
    "cpu_seconds_per_pass": {
        "P0": {"process": [2.25, 1.2, 1.3], "event_loop": [1.58, 1.0, 1.0]},
        "P1": {"process": [2.32, 1.31, 1.35], "event_loop": [1.69, 1.07, 1.1]},
        "P2": {"process": [1.89, 1.0, 1.04], "event_loop": [1.3, 0.75, 0.8]},
    },
}


def test_the_deployment_renderer(tables: ModuleType) -> None:
    """On the layout ``benchmarks/deployment.py`` writes; without ``/proc`` (CPU figures
    null) the CPU rows are left out."""
    lines = tables.render_deployment(DEPLOYMENT_JSON)
    assert lines[2:] == [
        "| time to first token from start (processes started, owner loaded its file at "
        "5.6 s, set-up, prompt pass) | 19.3 s |",
        "| set-up as the client saw it (connected until every party stored its shares) "
        "| 7.8 s |",
        "| prompt pass (5 tokens): seconds, MB sent by the three parties | 4.03 s, 128.4 MB "
        "online + 62.6 MB offline |",
        "| each new token | 2.45-2.50 s, 27.4-27.5 MB online + 12.7-12.8 MB offline |",
        "| CPU seconds of each new token, per party: whole process (its event loop) | "
        "P0 1.20-1.30 (1.00), P1 1.31-1.35 (1.07-1.10), P2 1.00-1.04 (0.75-0.80) |",
        "| CPU seconds of the prompt pass, per party: whole process (its event loop) | "
        "P0 2.25 (1.58), P1 2.32 (1.69), P2 1.89 (1.30) |",
        "| peak memory: each party / model owner / client | 2.50 GiB / 1.00 GiB / 0.50 GiB |",
    ]
    no_proc = {**DEPLOYMENT_JSON, "cpu_seconds_per_pass": dict.fromkeys(("P0", "P1", "P2"))}
    assert not any("CPU" in line for line in tables.render_deployment(no_proc))
    prompt_only = {**DEPLOYMENT_JSON, "per_token_seconds": [], "per_token_mb_parties": []}
    assert "| each new token | - s, - MB online + - MB offline |" in (
        tables.render_deployment(prompt_only))


SPU_JSON = {  # the layout benchmarks/measure_spu.py writes (figures made up)
    "spu_version": "0.9.5", "date": "2026-12-06",
    "smollm2_forward_5_tokens": {"seconds": 30.0, "bytes_all_parties": 400e6,
                                 "send_actions_max": 11500, "peak_memory_bytes": 8.5e9,
                                 "load_average_at_start": [4.0, 3.0, 2.0]},
    "llama7b_block_8_tokens": {"skipped": "9.0 GB available, 12.0 GB needed"},
    "ops": {"gelu_128x3072": {"seconds": 2.0, "bytes_all_parties": 300e6,
                              "send_actions_max": 60, "load_average_at_start": [2.5, 2.0, 1.0],
                              "ops_benchmarks": ["gelu_puma_128x3072", "gelu_128x3072"]}},
}


def test_spu_figures_come_from_spu_json(tables: ModuleType, tmp_path: Path) -> None:
    """The SPU columns are rendered from ``spu.json`` (named, with its date), not from the copy
    a benchmark's JSON carries; a skipped SPU run leaves its cell empty."""
    reporting = sys.modules["reporting"]
    assert reporting.spu_figures(tmp_path / "spu.json") is None
    (tmp_path / "spu.json").write_text(json.dumps(SPU_JSON))
    figures = reporting.spu_figures(tmp_path / "spu.json")
    assert "llama7b_block_8_tokens" not in figures
    assert reporting.spu_op(figures, "gelu_puma_128x3072")["date"] == "2026-12-06"
    assert reporting.spu_op(figures, "softmax_12x128x128") is None
    assert reporting.spu_summary(figures, "smollm2_forward_5_tokens") == (
        "SPU 0.9.5 (benchmarks/results/spu.json, 2026-12-06): 30 s, 400 MB all parties, "
        "11500 messages per party (max), peak 8.5 GB")
    op = {"description": "gelu", "seconds": 0.5, "median_seconds": 0.6,
          "bytes_all_parties": 39e6, "rounds": 4, "messages_p0": 9, "max_abs_error": 0.01,
          "spu": {"seconds": 2.85, "bytes_all_parties": 362e6, "messages_p0": 55}}
    machine = {"python_loop_1e7_seconds": 0.4, "load_average_at_start": [1.0, 1.0, 1.0]}
    (tmp_path / "ops.json").write_text(json.dumps(
        {"machine": machine, "gelu_128x3072": op, "softmax_12x128x128": op}))
    body = tables.render("ops", tmp_path).splitlines()
    assert "memory check" not in body[0]  # a JSON from before stop 36 has none
    assert body[0].endswith("; the SPU column: `python benchmarks/measure_spu.py` -> "
                            "`benchmarks/results/spu.json`, 2026-12-06, load average "
                            "2.5 at its runs' starts.")
    assert body[4].endswith("| 2 s, 300 MB, 60 messages per party (max) |")
    assert body[5].endswith("| 0.01 |  |")  # no SPU op beside softmax in this spu.json
    machine["memory_read_gbps"] = 23.4
    (tmp_path / "ops.json").write_text(json.dumps(
        {"machine": machine, "gelu_128x3072": op, "softmax_12x128x128": op}))
    assert ("host and proportionally slower times), memory check 23 GB/s (a one-row ring "
            "product's reads of a cold matrix), load average 1.0 at start"
            in tables.render("ops", tmp_path).splitlines()[0])

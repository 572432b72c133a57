"""The README's tables of figures are what ``benchmarks/tables.py`` renders from the committed
``benchmarks/results/*.json``."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def tables() -> ModuleType:
    """``benchmarks/tables.py`` (a script folder, not a package)."""
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
    for name in tables.TABLES:
        assert tables.render(name) is not None, f"benchmarks/results has no JSON for {name}"
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
    rows = [{"op": "mul", "rounds": 1, "bytes_per_element": 24, "error": "exact"}]
    assert tables.render_costs(rows) == [
        "| op | rounds | bytes per element | error |", "|---|---|---|---|",
        "| `mul` | 1 | 24 | exact |",
    ]

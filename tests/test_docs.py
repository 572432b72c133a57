"""The code in the docs runs: every ```python block of a document, in order, in one namespace
(so a later block uses what an earlier one defined), as a reader pasting them would."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCUMENTS = ["docs/writing-a-protocol.md", "README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_blocks_are_found() -> None:
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a\n```\n"
    assert python_blocks(text) == [(3, "a = 1\n"), (9, "b = a\n")]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_python_blocks_run(document: str) -> None:
    blocks = python_blocks((ROOT / document).read_text(encoding="utf-8"))
    assert blocks, f"no python block in {document}"
    namespace: dict[str, object] = {"__name__": document}
    for line, code in blocks:
        # Blank lines in front keep tracebacks pointing at the document's own line numbers.
        exec(compile("\n" * (line - 1) + code, document, "exec"), namespace)

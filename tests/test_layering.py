"""Transports move opaque frames: nothing under ``transports/`` imports messages or protocols.

Every module of ``transports/`` is parsed (ast, every import statement, also inside functions)
and the project modules it reaches are followed transitively: they must stay within the
transport package and three leaf modules, :mod:`puma_async.errors` (typed errors),
:mod:`puma_async.roles` (the role names every error shows) and :mod:`puma_async.files` (private
key files, for :mod:`puma_async.transports.tls`). Libraries are the standard library, Trio,
cryptography and structlog.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGE_DIRS = {"puma_async.transports": ROOT / "transports",
                "puma_async.protocols": ROOT / "protocols", "puma_async": ROOT / "puma_async"}
ALLOWED_PROJECT = {"puma_async.errors", "puma_async.roles", "puma_async.files"}
ALLOWED_LIBRARIES = {"trio", "cryptography", "structlog"}


def module_path(name: str) -> Path | None:
    """The source file of project module ``name`` (None if it is not one)."""
    for prefix, directory in PACKAGE_DIRS.items():  # the most specific prefix first
        if name == prefix or name.startswith(prefix + "."):
            rest = name[len(prefix):].lstrip(".").split(".") if name != prefix else []
            base = directory.joinpath(*rest)
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
    return None


def imported(name: str, path: Path) -> set[str]:
    """Every module the source of ``name`` imports (``from a import b``: ``a.b`` if that is
    a module, else ``a``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if module_path(full) is not None else base)
    return found


def transport_modules() -> dict[str, Path]:
    return {
        f"puma_async.transports.{path.stem}".removesuffix(".__init__"): path
        for path in sorted((ROOT / "transports").glob("*.py"))
    }


def test_transports_import_only_the_transport_layer_and_its_leaves() -> None:
    seen: dict[str, str] = {}  # module -> the module that imported it first
    todo = list(transport_modules().items())
    while todo:
        name, path = todo.pop()
        for target in imported(name, path):
            top = target.split(".")[0]
            if top != "puma_async":
                assert top in sys.stdlib_module_names or top in ALLOWED_LIBRARIES, (
                    f"{name} imports the library {target}"
                )
                continue
            allowed = target.startswith("puma_async.transports") or target in ALLOWED_PROJECT
            assert allowed, f"{name} imports {target} (via {seen.get(name, 'transports/')})"
            if target not in seen:
                seen[target] = name
                source = module_path(target)
                assert source is not None, target
                todo.append((target, source))
    assert {"puma_async.transports.base", "puma_async.errors"} <= set(seen)


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The parser finds imports however they are written (so the test above can fail)."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from __future__ import annotations\n"
        "import puma_async.codec as codec\n"
        "def late():\n    from puma_async.codec import Abort\n"
        "from ..session import settings\n"
        "from . import framing\n"
    )
    found = imported("puma_async.transports.mod", source)
    assert {"puma_async.codec", "puma_async.session.settings",
            "puma_async.transports.framing"} <= found

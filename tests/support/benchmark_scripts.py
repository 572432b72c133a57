"""A script of ``benchmarks/`` run as a process (the ``benchmark_script`` fixture; system
tests only): its JSON output and its stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).parent.parent.parent / "benchmarks"
HANG_GUARD = 600
"""Seconds a test waits for the script before failing (a hang guard, never a timing assert)."""


class BenchmarkScripts:
    """``run(tmp_path, "ops.py", *args)``: the script with ``--out`` in ``tmp_path``; fails the
    test (with the script's stderr) unless it exits 0."""

    def run(self, tmp_path: Path, script: str, *args: str) -> tuple[dict[str, Any], str]:
        out = tmp_path / f"{Path(script).stem}.json"
        done = subprocess.run(
            [sys.executable, str(BENCHMARKS / script), *args, "--out", str(out)],
            capture_output=True, text=True, timeout=HANG_GUARD, check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(out.read_text()), done.stdout

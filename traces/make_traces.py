"""Write the example traces of ``traces/``: one session of the tiny model, one trace per role.

Every role runs in one process (as ``python -m puma_async.local --record DIR`` does) with a
fixed entropy per role, so the traces are reproducible. They hold the keys and shares of this
toy session only (random tiny weights, a public example prompt): fine to publish, unlike a
trace of a real session.

Usage: ``python traces/make_traces.py [--out traces/tiny] [--max-new-tokens 1]``; prints the
size of each trace. Replay them with ``python -m puma_async.replay traces/tiny/*.trace``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import trio

from puma_async.cluster import SessionSettings
from puma_async.party import build_programs, local_recording
from puma_async.roles import ALL_ROLES, CLIENT, role_name
from puma_async.runner import run_roles

OUT = Path(__file__).parent / "tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--prompt", default="1 2")
    parser.add_argument("--max-new-tokens", type=int, default=1)
    args = parser.parse_args()
    settings = SessionSettings("example-tiny", prompt=args.prompt,
                               max_new_tokens=args.max_new_tokens)
    wrap, entropy = local_recording(args.out, settings, seed="e1", cluster="example")
    run = trio.run(lambda: run_roles(build_programs(settings), session=settings.session,
                                     entropy=entropy, wrap_transport=wrap))
    print(f"client output: {run.results[CLIENT]}")
    for role in ALL_ROLES:
        path = args.out / f"{role_name(role)}.trace"
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()

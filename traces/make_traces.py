"""Write the example traces of ``traces/``: one session of the tiny model, one trace per role.

Every role runs in one process (as ``python -m puma_async.local --record DIR`` does) with a
fixed entropy per role, so the traces are reproducible. They hold the keys and shares of this
toy session only (the tiny model's public random weights, a public example prompt): fine to
publish, unlike a trace of a real session.

Usage: ``python traces/make_traces.py [--out traces/tiny] [--prompt TEXT]
[--max-new-tokens 1]``; replaces the traces in ``--out`` and prints the size of each.
Replay them with ``python -m puma_async.replay traces/tiny/*.trace``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from puma_async.model import TinyTokenizer, random_weights
from puma_async.roles import ALL_ROLES, CLIENT, MODEL_OWNER, role_name
from puma_async.session import GenerationOptions, SessionSettings, run_session
from puma_async.session.recording import client_inputs, local_recording, owner_inputs

OUT = Path(__file__).parent / "tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--prompt", default="hi")
    parser.add_argument("--max-new-tokens", type=int, default=1)
    args = parser.parse_args()
    settings = SessionSettings("example-tiny", max_new_tokens=args.max_new_tokens)
    prompts = [TinyTokenizer().encode(args.prompt)]
    options = GenerationOptions()
    inputs = {MODEL_OWNER: owner_inputs(None), CLIENT: client_inputs(prompts, options)}
    wrap, entropy = local_recording(args.out, settings, inputs, seed="e1", cluster="example",
                                    force=True)
    weights = random_weights(settings.config, seed=settings.model_seed)
    result = run_session(weights, prompts, options, settings=settings, entropy=entropy,
                         wrap_transport=wrap)
    print(f"client output: token ids {result.prompts[0].tokens}")
    for role in ALL_ROLES:
        path = args.out / f"{role_name(role)}.trace"
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()

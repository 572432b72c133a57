"""The client's results as plain data (``--json``) and as text, for ``local`` and ``party``.

Per prompt: its token ids, the generated ids and text (up to and including the first EOS),
and one entry per pass with its token, the token's text, its wall time as the client saw it
and whether it was ``discarded`` (generated after the EOS only to hide the length). Callers
add what they know beyond the client: ``puma_async.local`` the bytes and rounds of every
party per pass (keys ``bytes_sent`` and ``rounds`` of each step) and the plaintext
comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from puma_async.session.generation import PromptResult

MB = 1e6


class Decoder(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


def prompt_entries(results: Sequence[PromptResult], tokenizer: Decoder) -> list[dict[str, Any]]:
    """Each prompt's ids, generated ids and text, and its passes (see the module docstring)."""
    entries = []
    for prompt in results:
        steps = [
            {
                "token": record.token,
                "text": tokenizer.decode([record.token]),
                "kind": "prompt" if t == 0 else "token",
                "positions": len(prompt.prompt_ids) if t == 0 else 1,
                "seconds": record.seconds,
                "discarded": record.discarded,
            }
            for t, record in enumerate(prompt.records)
        ]
        entries.append({
            "prompt_ids": list(prompt.prompt_ids),
            "generated_ids": prompt.tokens,
            "text": tokenizer.decode(prompt.tokens),
            "steps": steps,
        })
    return entries


def format_text(data: dict[str, Any]) -> str:
    """The human-readable form of a report: model, set-up, then per prompt its text and a
    table of passes (with each party's MB sent and the rounds when the report has them)."""
    setup = data["setup"]
    line = f"setup: {setup['seconds']:.1f} s"
    if "model_owner_bytes_sent" in setup:
        line += (f", model owner sent {setup['model_owner_bytes_sent'] / MB:.1f} MB "
                 f"(weights, once per session)")
    lines = [f"model: {data['model']}", line]
    for i, prompt in enumerate(data["prompts"]):
        costs = bool(prompt["steps"]) and "bytes_sent" in prompt["steps"][0]
        lines += ["", f"prompt {i}: {len(prompt['prompt_ids'])} tokens",
                  f"generated: {prompt['text']!r}  ids {prompt['generated_ids']}"]
        head = f"  {'step':<12}{'token':<16}{'seconds':>8}"
        if costs:
            head += f"{'P0 MB':>9}{'P1 MB':>9}{'P2 MB':>9}{'rounds':>8}"
        lines.append(head)
        for t, step in enumerate(prompt["steps"]):
            name = f"prompt({step['positions']})" if t == 0 else f"token {t}"
            row = f"  {name:<12}{step['text']!r:<16}{step['seconds']:>8.2f}"
            if costs:
                sent = step["bytes_sent"]
                row += (f"{sent['P0'] / MB:>9.2f}{sent['P1'] / MB:>9.2f}{sent['P2'] / MB:>9.2f}"
                        f"{step['rounds']:>8}")
            if step["discarded"]:
                row += "  (after EOS: discarded)"
            lines.append(row)
        if "plaintext_ids" in prompt:
            line = (f"plaintext: ids {prompt['plaintext_ids']}; top-1 agreement "
                    f"{prompt['top1_agreement']:.0%}; max |logit error| "
                    f"{prompt['max_logit_error']:.4f}")
            if "max_kl" in prompt:
                line += f"; max KL {prompt['max_kl']:.1e}; near ties {prompt['near_ties']}"
            lines.append(line)
    return "\n".join(lines)


__all__ = ["format_text", "prompt_entries"]

"""The client's command-line options, shared by ``puma_async.local`` and ``puma_async.party``.

Prompts come from the client's own command line (``--prompt TEXT``, repeatable), a file
(``--prompt-file FILE``, one prompt a line) or, when neither is given and stdin is not a
terminal, stdin (one prompt a line): never from a shared file. Decoding options are checked
here, before anything loads or connects (:func:`generation_options`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from puma_async.errors import SettingsError
from puma_async.model.config import LlamaConfig
from puma_async.model.tokenizer import Tokenizer
from puma_async.session.generation import GenerationOptions, check_prompts

CLIENT_OPTIONS = ("prompt", "prompt_file", "chat", "temperature", "seed", "stop_at_eos")
"""The options that belong to the client (``puma_async.party`` refuses them elsewhere)."""


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """Prompts and decoding options (see the module docstring)."""
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--prompt-file", help="a file of prompts, one a line ('-': stdin)")
    parser.add_argument("--chat", action="store_true", help="use the model's chat template")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature (0, the default: greedy)")
    parser.add_argument("--seed", type=int, default=None, help="the client's sampling seed")
    parser.add_argument("--stop-at-eos", action="store_true",
                        help="end each prompt's passes at its EOS (reveals the output length "
                             "to the parties; by default the passes continue to "
                             "--max-new-tokens and the tokens after EOS are discarded)")


def generation_options(args: argparse.Namespace) -> GenerationOptions:
    """The decoding options of ``args`` (EOS unset: the tokenizer gives it); SettingsError."""
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise SettingsError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    return GenerationOptions(temperature=args.temperature or 0.0, seed=args.seed,
                             stop_at_eos=args.stop_at_eos)


def read_prompts(args: argparse.Namespace, stdin: TextIO | None = None,
                 default: str | None = None) -> list[str]:
    """The prompts of ``--prompt`` and ``--prompt-file`` (see the module docstring), else
    stdin's lines if stdin is not a terminal, else ``[default]``; SettingsError if none."""
    stdin = stdin if stdin is not None else sys.stdin
    prompts = list(args.prompt or [])
    if args.prompt_file == "-":
        prompts += _lines(stdin.read())
    elif args.prompt_file:
        try:
            prompts += _lines(Path(args.prompt_file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"cannot read prompt file {args.prompt_file}: "
                                f"{exc.strerror or exc}") from None
    elif not prompts and default is None and stdin is not None and not stdin.isatty():
        prompts = _lines(stdin.read())
    if not prompts and default is not None:
        prompts = [default]
    if not prompts:
        raise SettingsError("no prompt: give --prompt TEXT, --prompt-file FILE, or prompts on "
                            "stdin (one a line)")
    return prompts


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def encode_prompts(texts: Sequence[str], tokenizer: Tokenizer, *, chat: bool,
                   config: LlamaConfig, context: int, max_new_tokens: int) -> list[list[int]]:
    """The prompts' token ids, checked against the vocabulary and the session's context
    (ContextLengthError / ValueError before anything runs)."""
    if chat:
        texts = [tokenizer.apply_chat_template(t) for t in texts]
    return check_prompts(config, context, max_new_tokens, [tokenizer.encode(t) for t in texts])


def with_eos(options: GenerationOptions, tokenizer: Tokenizer) -> GenerationOptions:
    """``options`` with the tokenizer's EOS."""
    return dataclasses.replace(options, eos_id=tokenizer.eos_id)


__all__ = [
    "CLIENT_OPTIONS", "add_client_options", "encode_prompts", "generation_options",
    "read_prompts", "with_eos",
]

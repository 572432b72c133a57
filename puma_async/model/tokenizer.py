"""The model's tokenizer, rebuilt from GGUF metadata with the ``tokenizers`` library.

Supported: gpt2-style byte-level BPE (``tokenizer.ggml.model == "gpt2"``) with the
pre-tokenisers of SmolLM2 (``"smollm"``: single digits, then GPT-2's regex) and GPT-2
(``"gpt-2"``/``"default"``). Control and user-defined tokens (``<|im_start|>`` ...) are added
tokens, so they are matched whole in the input text. The BOS token is prepended only if the
file asks for it (``tokenizer.ggml.add_bos_token``; SmolLM2 does not).

The model owner exports a tokenizer for the client (:meth:`Tokenizer.save`): Hugging Face's
``tokenizer.json`` and a ``tokenizer_config.json`` with the BOS and EOS tokens, ``add_bos_token``
and the chat template; the client loads that folder (:meth:`Tokenizer.from_dir`) and never
opens the model file. The ``tiny`` test model has a built-in tokenizer,
:class:`TinyTokenizer` (one character per token).
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gguf
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from puma_async.errors import ModelFileError
from puma_async.model.gguf_loader import default_model_path, gguf_path, metadata, open_gguf

# Pre-tokenisers by ``tokenizer.ggml.pre`` (llama.cpp's names).
_PRE_TOKENIZERS = {
    "smollm": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ]),
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "default": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
}
_CONTROL, _USER_DEFINED = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# SmolLM2's chat template without Jinja: ChatML, with this system message unless one is given.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


class Tokenizer:
    """Text <-> token ids, and the chat prompt format, for one model."""

    def __init__(
        self, backend: tokenizers.Tokenizer, *, bos_id: int | None = None,
        eos_id: int | None = None, add_bos: bool = False, chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos
        self.chat_template = chat_template

    @classmethod
    def from_gguf(cls, path: str | Path | None = None) -> Tokenizer:
        """The tokenizer in a GGUF's metadata (default: SmolLM2-135M-Instruct's)."""
        reader = open_gguf(default_model_path() if path is None else path)
        return cls.from_reader(reader)

    @classmethod
    def from_reader(cls, reader: gguf.GGUFReader) -> Tokenizer:
        """The tokenizer in an open GGUF's metadata; ``ModelFileError`` if unsupported."""
        where = gguf_path(reader)
        kind = metadata(reader, "tokenizer.ggml.model", required=True)
        pre = metadata(reader, "tokenizer.ggml.pre", "default")
        if kind != "gpt2" or pre not in _PRE_TOKENIZERS:
            raise ModelFileError(
                f"{where}: unsupported tokenizer {kind!r} with pre-tokenizer {pre!r} "
                f"(supported: 'gpt2' with {sorted(_PRE_TOKENIZERS)})"
            )
        tokens: list[str] = metadata(reader, "tokenizer.ggml.tokens", required=True)
        merges: list[str] = metadata(reader, "tokenizer.ggml.merges", required=True)
        types: list[int] = metadata(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
        vocab = {token: i for i, token in enumerate(tokens)}
        pairs = [tuple(m.split(" ")) for m in merges]
        if len(vocab) != len(tokens) or len(types) != len(tokens):
            raise ModelFileError(f"{where}: duplicate tokens or a token_type list of wrong length")
        if any(len(p) != 2 for p in pairs):
            raise ModelFileError(f"{where}: a BPE merge is not two space-separated tokens")
        try:
            backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs))
        except Exception as exc:  # the Rust builder rejects merges of unknown tokens
            raise ModelFileError(f"{where}: inconsistent BPE vocabulary: {exc}") from exc
        backend.pre_tokenizer = _PRE_TOKENIZERS[pre]()
        backend.decoder = decoders.ByteLevel()
        backend.add_tokens([
            AddedToken(tokens[i], special=t == _CONTROL, normalized=False)
            for i, t in enumerate(types) if t in (_CONTROL, _USER_DEFINED)
        ])
        bos = metadata(reader, "tokenizer.ggml.bos_token_id")
        eos = metadata(reader, "tokenizer.ggml.eos_token_id")
        return cls(
            backend,
            bos_id=None if bos is None else int(bos),
            eos_id=None if eos is None else int(eos),
            add_bos=bool(metadata(reader, "tokenizer.ggml.add_bos_token", False)),
            chat_template=metadata(reader, "tokenizer.chat_template"),
        )

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        """The tokenizer :meth:`save` wrote to ``directory``; ``ModelFileError`` if unreadable."""
        folder = Path(directory)
        try:
            backend = tokenizers.Tokenizer.from_file(os.fspath(folder / TOKENIZER_FILE))
            settings = json.loads((folder / TOKENIZER_CONFIG_FILE).read_text(encoding="utf-8"))
        except Exception as exc:  # OSError, bad JSON, or the Rust parser's plain Exception
            raise ModelFileError(f"cannot read the tokenizer in {folder}: {exc}") from None
        if not isinstance(settings, dict):
            raise ModelFileError(f"{folder / TOKENIZER_CONFIG_FILE}: not a JSON object")

        def token_id(key: str) -> int | None:
            token = settings.get(key)
            if token is None:
                return None
            found = backend.token_to_id(token) if isinstance(token, str) else None
            if found is None:
                raise ModelFileError(f"{folder}: {key} {token!r} is not in the vocabulary")
            return int(found)

        template = settings.get("chat_template")
        return cls(
            backend, bos_id=token_id("bos_token"), eos_id=token_id("eos_token"),
            add_bos=settings.get("add_bos_token") is True,
            chat_template=template if isinstance(template, str) else None,
        )

    def save(self, directory: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` to ``directory`` (created);
        existing files only with ``force``. Returns the paths written."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / TOKENIZER_FILE, folder / TOKENIZER_CONFIG_FILE]
        existing = [os.fspath(p) for p in paths if p.exists()]
        if existing and not force:
            raise FileExistsError(f"{', '.join(existing)} exist (use --force to overwrite)")
        config: dict[str, Any] = {
            "bos_token": self._token(self.bos_id) or None,
            "eos_token": self._token(self.eos_id) or None,
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
        }
        self.backend.save(os.fspath(paths[0]))
        paths[1].write_text(json.dumps(config, indent=1, ensure_ascii=False), encoding="utf-8")
        return paths

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (BOS first if the model file asks for it)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if self.add_bos and self.bos_id is not None else ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; special tokens are kept unless ``skip_special_tokens``."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, user_message: str, system_message: str | None = None) -> str:
        """The prompt text for one user turn, ending where the assistant's answer begins.

        Renders the model file's Jinja template (in jinja2's sandbox, since the template comes
        from the file) when the file has one and jinja2 is installed. Otherwise falls back to
        SmolLM2's format: ChatML with ``SMOLLM2_DEFAULT_SYSTEM`` as the system message when
        none is given, which is exactly what SmolLM2's template renders.
        """
        messages = [{"role": "user", "content": user_message}]
        if system_message is not None:
            messages.insert(0, {"role": "system", "content": system_message})
        if self.chat_template is not None:
            try:
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError:
                pass
            else:
                env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
                return env.from_string(self.chat_template).render(
                    messages=messages, add_generation_prompt=True,
                    bos_token=self._token(self.bos_id), eos_token=self._token(self.eos_id),
                )
        if system_message is None:
            messages.insert(0, {"role": "system", "content": SMOLLM2_DEFAULT_SYSTEM})
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"

    def _token(self, token_id: int | None) -> str:
        return "" if token_id is None else self.backend.id_to_token(token_id) or ""


TINY_ALPHABET = " " + string.ascii_lowercase + string.ascii_uppercase + string.digits + "."
"""The ``tiny`` model's 64 tokens: token i is character i of this string."""


class TinyTokenizer(Tokenizer):
    """The ``tiny`` model's tokenizer: one token per character of :data:`TINY_ALPHABET`.

    Built in (nothing to load), the same in ``puma_async.local`` and ``puma_async.party``;
    no BOS, no EOS, no chat template (``--chat`` leaves the text as it is).
    """

    def __init__(self) -> None:
        backend = tokenizers.Tokenizer(
            models.BPE(vocab={c: i for i, c in enumerate(TINY_ALPHABET)}, merges=[])
        )
        backend.decoder = decoders.Fuse()
        super().__init__(backend)

    def encode(self, text: str) -> list[int]:
        """One id per character; ValueError naming a character outside the alphabet."""
        unknown = sorted(set(text) - set(TINY_ALPHABET))
        if unknown:
            raise ValueError(
                f"the tiny model's tokenizer knows letters, digits, space and '.', not "
                f"{''.join(unknown)!r}"
            )
        return super().encode(text)

    def apply_chat_template(self, user_message: str, system_message: str | None = None) -> str:
        return user_message

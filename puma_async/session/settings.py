"""Public session settings and the configuration digest every role checks at the handshake.

A session is one model architecture, one set of weight shares and any number of prompts.
Everything the roles must agree on is public: the session id, the model's name and
architecture (a preset, :data:`~.models.PRESETS`, or the table the model owner exported),
the tiny model's weight seed (public: tiny weights are test data), the model file's SHA-256
if given (the owner checks its file against it), the token budget per prompt, the context
(positions per prompt), the most positions one pass covers (longer prompts come in passes
of their first positions: :data:`DEFAULT_PASS_POSITIONS`), the largest frame
(:mod:`.frames`: the piece size plus slack), which logits the client receives
(:data:`REVEAL_LOGITS`: the model owner consents to it), which protocols trade rounds for
bytes (:data:`~puma_async.protocols.llama.TRADEOFFS`), and the liveness settings
(:class:`~puma_async.liveness.Liveness`: a role whose heartbeat interval exceeded a peer's
``dead_after`` would be declared dead by it). These go into the
:meth:`SessionSettings.config_digest` that the TCP handshake compares before any secret
moves, with the version of the message format (:data:`puma_async.codec.VERSION`: the
handshake is the transport's own and names no message). Timeouts are local and left out;
prompts are not settings at all (they exist only in the client process).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from puma_async import codec
from puma_async.errors import SettingsError
from puma_async.liveness import DEFAULT_LIVENESS, Liveness
from puma_async.model.config import LlamaConfig
from puma_async.protocols.llama import LayerPlan, layer_plan
from puma_async.session.frames import ELEMENT_BYTES, INPUT_BLOCK_BYTES, max_frame_bytes
from puma_async.session.models import PRESETS, TINY, preset_architecture

DIGEST_VERSION = 14
"""Bumped whenever what the digested settings imply changes: 5, the weight plan (the norms'
gains folded into the QKV and gate/up matrices, ``protocols.llama.weight_plan``); 6, the
architecture's certified gate bounds (``LlamaConfig.gate_bounds``: SiLU's comparison chains);
7, the folded matrices shared at 6 more fractional bits (``protocols.llama.weight_tensors``);
8, messages above the piece size sent in pieces (:mod:`puma_async.pieces`); 9, the
tradeoff's layer plan (``protocols.llama.layer_plan``: multi-head attention's norm before
its QKV product when balanced); 10, SiLU's and negExp's comparisons drop their tables'
slack bits (``protocols.activations.TablePolynomial.slack``: shorter chains), SiLU's
selected rows' exchange runs beside the powers (other step paths), and SiLU's bits go to
the evaluators under every tradeoff; 11, "fewer-bytes" evaluates SiLU by Horner's split
and truncates the norms' and reciprocals' candidates in 2 rounds without TP1 tuples, and
"fewer-rounds" scales the gate/up product by the MLP norm's rho after it
(``protocols.llama.LayerPlan``'s ``silu_horner``, ``candidate_tuples`` and
``normalise_mlp_input``: other messages); 12, "balanced" takes those two bytes-side choices
in passes over more than one row (``LayerPlan.prompt``: a prompt pass's other messages); 13,
a 2-round truncated product masks its shares with the truncation's own streams
(``protocols.trunc``: other PRG labels, and masks that cancel only between parties that agree
on it); 14, passes of at most ``max_pass_positions`` positions (a longer prompt's first
positions in ``Prefill`` passes: other messages)."""
REVEAL_LOGITS = ("last", "all")
"""What a prompt pass reveals to the client: the logits of its last position (enough to
choose the next token), or of every position (teacher-forced perplexity of a text in one
pass per window). "all" tells the client n x vocab logits per prompt of n tokens instead of
vocab: more about the model (its predictions at every prefix, which ease distilling or
extracting it), so it is a digested setting the model owner must agree to."""
DEFAULT_CONTEXT = 512
"""Positions per prompt when none is set (at most the model's own context): the context
bounds the KV cache and every pass's arrays, so it is not the model's 8k by default."""
DEFAULT_PASS_POSITIONS = 64
"""N, the most positions one pass covers when none is set (and N^2 its query-key pairs, past
one position: ``state.fits_one_pass``). A pass's memory grows with both (every layer's
offline material is made at its start): with all roles in one process, SmolLM2's session
peaked at 9.8 GiB for a 64-token prompt in one pass and 16.2 GiB for 128
(``benchmarks/long_prompt.py``), so a prompt of a few hundred tokens in one pass no longer
fit a 24 GB host; in passes of N = 64, 9.9 GiB for 200. A longer prompt runs as ``Prefill``
passes of its first positions, each extending the KV cache, then the ``Run`` of its last
ones (``state.prompt_passes``)."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    """What one session computes (public, agreed by every role) and the local timeouts.

    ``architecture`` None means the preset named by ``model``; ``context`` None means the
    model's context length, at most :data:`DEFAULT_CONTEXT`. Both are resolved at
    construction (read them as :attr:`config` and :attr:`positions`). ``input_block_bytes``:
    inputs are shared in row blocks of at most this size (:mod:`.frames`).
    ``reveal_logits``: "last" (default) or "all", what a prompt pass reveals to the client
    (:data:`REVEAL_LOGITS`; "all" tells it more about the model, so the model owner must
    consent, and costs a head of n rows instead of 1 per prompt of n tokens).
    ``tradeoff``: "balanced" (default), "fewer-rounds" or "fewer-bytes", which protocols the
    layers take where two trade rounds for bytes (:attr:`plan`).
    ``max_pass_positions``: the most positions one pass covers (every role holds the others
    to it: :class:`~.state.SessionState`); a longer prompt runs in passes of at most this
    many (:data:`DEFAULT_PASS_POSITIONS`).
    ``heartbeat_interval`` and ``dead_after``: every role's :attr:`liveness`. Raises
    :class:`SettingsError` naming a bad setting.
    """

    session_id: str
    model: str = TINY
    architecture: LlamaConfig | None = None
    model_seed: int = 0
    model_sha256: str | None = None
    max_new_tokens: int = 4
    context: int | None = None
    input_block_bytes: int = INPUT_BLOCK_BYTES
    reveal_logits: str = "last"
    tradeoff: str = "balanced"
    max_pass_positions: int = DEFAULT_PASS_POSITIONS
    heartbeat_interval: float = DEFAULT_LIVENESS.heartbeat_interval
    dead_after: float = DEFAULT_LIVENESS.dead_after
    connect_timeout: float = 600.0
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.session_id:
            raise SettingsError("session id must not be empty")
        if self.architecture is None:
            object.__setattr__(self, "architecture", preset_architecture(self.model))
        elif self.model in PRESETS and self.architecture != PRESETS[self.model]:
            raise SettingsError(f"model {self.model!r} is a preset: its architecture is fixed")
        config = self.config
        if self.context is None:
            object.__setattr__(self, "context", min(config.context_length, DEFAULT_CONTEXT))
        if self.max_new_tokens < 1:
            raise SettingsError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.max_new_tokens < self.positions <= config.context_length:
            raise SettingsError(
                f"context must be above max_new_tokens ({self.max_new_tokens}) and at most "
                f"the model's context length {config.context_length}, got {self.positions}"
            )
        if self.max_pass_positions < 1:
            raise SettingsError(f"max_pass_positions must be >= 1, got {self.max_pass_positions}")
        if self.input_block_bytes < ELEMENT_BYTES:
            raise SettingsError(f"input_block_bytes must be >= {ELEMENT_BYTES}, "
                                f"got {self.input_block_bytes}")
        if self.reveal_logits not in REVEAL_LOGITS:
            raise SettingsError(f"reveal_logits must be one of {', '.join(REVEAL_LOGITS)}, "
                                f"got {self.reveal_logits!r}")
        try:
            layer_plan(config, self.tradeoff)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if self.model_seed < 0:
            raise SettingsError(f"model_seed must be >= 0, got {self.model_seed}")
        try:
            Liveness(self.heartbeat_interval, self.dead_after)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        for name in ("connect_timeout", "handshake_timeout"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")
        if self.model_sha256 is not None and not _SHA256.match(self.model_sha256):
            raise SettingsError("model_sha256 must be 64 lower-case hex digits")

    @property
    def config(self) -> LlamaConfig:
        """The model's public architecture."""
        assert self.architecture is not None  # resolved by __post_init__
        return self.architecture

    @property
    def positions(self) -> int:
        """The context: positions per prompt (prompt + new tokens)."""
        assert self.context is not None  # resolved by __post_init__
        return self.context

    @property
    def plan(self) -> LayerPlan:
        """The layers' protocols for :attr:`tradeoff`
        (:func:`~puma_async.protocols.llama.layer_plan`)."""
        return layer_plan(self.config, self.tradeoff)

    @property
    def liveness(self) -> Liveness:
        """Heartbeats and when a silent peer is dead, for every role of the session."""
        return Liveness(self.heartbeat_interval, self.dead_after)

    @property
    def session(self) -> bytes:
        """The 16-byte session id of the wire format."""
        return hashlib.blake2b(self.session_id.encode(), digest_size=16).digest()

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame any role of this session may receive (:mod:`.frames`)."""
        return max_frame_bytes()

    def public(self) -> dict[str, Any]:
        """The settings every role must agree on (no timeouts): plain data."""
        return {
            "session_id": self.session_id, "model": self.model,
            "architecture": dataclasses.asdict(self.config),
            "model_seed": self.model_seed if self.model == TINY else None,
            "model_sha256": self.model_sha256, "max_new_tokens": self.max_new_tokens,
            "context": self.positions, "max_frame_bytes": self.max_frame_bytes,
            "input_block_bytes": self.input_block_bytes, "reveal_logits": self.reveal_logits,
            "tradeoff": self.tradeoff, "max_pass_positions": self.max_pass_positions,
            "heartbeat_interval": float(self.heartbeat_interval),
            "dead_after": float(self.dead_after),
        }

    def config_digest(self, cluster: str, roles: tuple[int, ...]) -> bytes:
        """BLAKE2b-256 of the agreed settings, the cluster name, the roles and the message
        format's version (for the Hello)."""
        data = codec.packb([DIGEST_VERSION, codec.VERSION, cluster, sorted(roles),
                            sorted(self.public().items())])
        return hashlib.blake2b(data, digest_size=32).digest()

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain data (trace headers)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionSettings:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        fields = dict(data)
        try:
            if isinstance(fields.get("architecture"), Mapping):
                fields["architecture"] = LlamaConfig(**fields["architecture"])
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"bad session settings: {exc}") from None


__all__ = [
    "DEFAULT_CONTEXT", "DEFAULT_PASS_POSITIONS", "DIGEST_VERSION", "REVEAL_LOGITS",
    "SessionSettings",
]

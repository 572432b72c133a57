"""Secure LLaMA layers on replicated shares: embedding, RMSNorm, RoPE, GQA attention, SwiGLU.

All three parties run these steps (SPMD) on their shares of the weights and of the residual
stream (fixed point, f = 18 fractional bits, rows = token positions). The architecture,
shapes, positions and the causal mask are public; weights, tokens and activations are not.

Weight layout (:class:`SecureModel`, built once per session from the model owner's shares:
:func:`stored_form` per tensor of :func:`weight_plan`, received into, then
:func:`assemble_model`):

- Every projection W (k, n) used as ``x @ W`` is held as a :class:`SecureWeight`: the party's
  two halves stacked as rows [W_i; W_{i+1}] (2k, n) in one C-contiguous array, so that the
  ABY3 product (x_i + x_{i+1}) W_i + x_i W_{i+1} is one ring matmul of inner size 2k on the
  stored array, with no per-call copy of the weight (only the small activation side is
  concatenated). Q, K and V share one matrix (hidden, q + 2 kv), gate and up another
  (hidden, 2 ffn): one product, one message and one truncation each, which overlaps their
  rounds completely (better than running three products side by side in ``ctx.gather``).
- The embedding E (vocab, hidden) is held side by side, [E_i | E_{i+1}] (vocab, 2 hidden):
  the token lookup is one-hot (client-shared, integer) @ E and the tied LM head is
  E @ h^T, both one ring matmul reading E once, with no transposed copy of the table.

Costs per layer for n new tokens and T cached + new positions (per party; R = rounds;
M = :func:`weight_matmul`: 2 R, about 14 bytes per output element; see ``arith`` and
``trunc``): attention RMSNorm as rho only (``norms.rms_rsqrt``: 4 R; its wide copy comes from
the product that made the stream, :func:`residual_matmul`) beside x @ W'qkv (M, the gain
folded into W'qkv) and RoPE of its q and k columns (truncation: 2 R, ~8 bytes per q/k
element), then (RoPE(x W'qkv)) rho (2 R, n (q + 2kv) outputs: :func:`normalised_qkv`); with
multi-head attention (q + 2 kv = 3 hidden, LLaMA-7B: the balanced :func:`layer_plan`) instead
the MLP's order, RMSNorm with its product x rho (6 R, n hidden outputs), x rho @ W'qkv (M) and
RoPE (2 R): 4 rounds more, 2 of every 3 products by rho fewer;
scores (2 R, all heads batched by
key/value group; the maximum's comparisons start in their first round), softmax
numerators (maximum and negExp: ``softmax``, ``exp``), then 1/sum beside e @ V and
(e @ V) x 1/sum (2 R) for one new row or T >= head_dim, else (e x 1/sum) @ V (2 + 2 R;
:func:`attend`), output projection (M, and the wide copy of the stream for the next norm:
about 9 bytes per element per party, opened by M's swap),
MLP RMSNorm (6 R, its gain folded into W_gate_up), gate/up (M),
SiLU (``activations``, 6 R; its comparisons as long as the layer's certified gate bound
needs less the 10 low bits its table's slack lets go, their bits opened to their
evaluators, who select the coefficient row, 66 bytes per element fewer than with the bits
opened to all, :mod:`.evaluators`, and exchange it beside the powers; 7 R in a prompt
pass's layers of gate bound 2^8, whose comparisons' 2 tree levels start no earlier than
the powers), SiLU x up (2 R),
down (M, and the next wide copy).
Critical path of a new SmolLM2 token per layer (``benchmarks/llama.py``, measured: 42
rounds; 1,271 per token with the embedding's 2, the head's 8 and the logits' reveal):
attn.norm 4 (the rsqrt
from the sums of squares' 3-out-of-3 shares: no resharing round), qkv 2 (x W'qkv and its
RoPE beside the norm), RoPE 0, scores 1, maximum 4,
negExp 6, reciprocal 3 (its comparisons' leaves in negExp's last round; e @ V beside it),
(e @ V) x r 2, O 2, mlp.norm 6, gate/up 2, SiLU 6, x up 2, down 2.
Embedding: 2 rounds (the first norm's wide copy), 2 n hidden elements; head (last position
only): RMSNorm (given its wide copy) and a local product: the logits are not truncated, the
client gets their 3-out-of-3 shares' bits [f, 64) (:func:`lm_head`, ``io.reveal_product_to``).
Offline: every TP1 tuple of the pass (per layer the two norms' and the softmax reciprocal's,
and the head norm's), one preparation per truncation width for all of them, and those
components' comparisons' material (the norms' with the products of two of its random bits),
with the comparisons' material of the softmax's exponential, of its maximum's first step and
of SiLU, one preparation per kind of comparison, are made ahead (:func:`prepare_tuples`:
scope ``tuples``): a new
token's during the pass before (``session.programs``), the prompt pass's at its start,
beside the embedding (its first norm waits 2 latencies for them). So no online round waits
on an offline one made inline after it: a 2-layer SmolLM2-shaped new token's longest chain
of messages (client's rows in to logits out, 50 ms latency) went from 103 messages (95
online rounds + the client's rows + 4 of the tuples instead of the embedding's 2 + one
r_a r_i product per norm) to 96; the local work of the tuples does not grow with the number
of norms (a SmolLM2-shaped 2-layer token 0.330 -> 0.208 s against per-norm preparations).
Statistics: scopes ``embed``, ``tuples``, ``layer{i}`` and ``head``; inside a layer one scope per
component, :data:`COMPONENTS` (``attn.norm``, ``attn.qkv``, ..., ``mlp.down``), and inside
those the protocols' own (``rms_norm``, ``softmax`` with ``max_along``, ``neg_exp`` and
``reciprocal``; ``silu``). Every message of a layer belongs to one component, so their
critical-path rounds (:mod:`puma_async.critical_path`) sum to the layer's.

**Probes** (accuracy measurements only). A :class:`LayerProbe` installed as the party's state
(``ctx.install(LayerProbe(fn))``) is called as ``fn(role, point, share)`` with this party's
share at every point of :data:`PROBE_POINTS` (at ``logits`` the
:class:`~.shares.ProductShare` the party sends the client, so a probe sees what the client
decodes); with none installed (:data:`NO_PROBE`), nothing is called (one state lookup per
point; no messages either way). A probe sees a party's shares,
and whoever collects all three parties' shares sees the secrets: probes exist only where every
role runs in one process (``puma_async.session.run_session(probe=...)``: tests,
``benchmarks/accuracy.py``, ``local --compare``), to compare the secure pass with the float64
reference (``puma_async.accuracy``). No deployed party installs one.

One module of about 480 lines: the weight plan, the layers and the pass refer to each other's
shapes, and a reader checks them against the LLaMA architecture in one place.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from puma_async.context import OFFLINE_PHASE, Context
from puma_async.errors import ContextLengthError
from puma_async.model.config import LlamaConfig
from puma_async.model.rope import rope_tables
from puma_async.model.weights import LlamaWeights
from puma_async.workers import in_thread

from .activations import SILU_ACCURATE, Selection, silu, table_compare_spec
from .arith import (
    finish_product_wide,
    matmul_fxp,
    matmul_stacked,
    mul_fxp,
    product_share,
    stack_left,
    stacked_share,
)
from .evaluators import EvaluatorCompare, prepare_evaluator_compare
from .exp import neg_exp_compare_spec
from .fastcmp import (
    CompareMaterial,
    MaximumMaterial,
    prepare_compare_batches,
    prepare_maximum_batches,
)
from .fixedpoint import FixedPoint, fixed_point
from .norms import MAX_ABS, rms_norm, rms_norm_tuples, rms_rsqrt, wide_shift
from .offload import offload
from .polynomial import repeat_last
from .ring import RingArray
from .ringmatmul import ring_matmul
from .segments import SegmentMaterial, prepare_segment_batches
from .shares import AShare, ProductShare, concatenate
from .softmax import (
    exp_rows,
    matmul_max,
    normalise_after,
    probabilities,
    product_maximum_spec,
    row_reciprocals,
    row_reciprocals_tuples,
    scale_rows,
)
from .trunc import truncate

COMPONENTS = (
    "attn.norm", "attn.qkv", "attn.rope", "attn.scores", "attn.softmax.max_along",
    "attn.softmax.neg_exp", "attn.softmax.reciprocal", "attn.softmax", "attn.pv", "attn.o",
    "mlp.norm", "mlp.gate_up", "mlp.silu", "mlp.silu_up", "mlp.down",
)
"""The scopes of a decoder layer's components (``layer{i}.attn.norm``, ...), in order; the
softmax's maximum, exponential and reciprocal are its own protocols' scopes, and
``attn.softmax`` keeps the rest of it (the masking and the product by 1/sum, of e @ V or of
e: :func:`attend`); ``attn.pv`` is the product with V, which for a new token runs beside the
reciprocal (no rounds of its own on the critical path); ``attn.qkv`` is the product on the raw
residual, beside the norm's rsqrt, and the product by its rho, ``attn.rope`` the rotation of
that raw product's q and k, beside the rsqrt too (none on the critical path either), or,
where the norm scales the input (:class:`LayerPlan`), ``attn.norm`` holds its product x rho
and ``attn.qkv`` and ``attn.rope`` follow it (:func:`normalised_qkv`)."""


def forward_scopes(n_layers: int) -> tuple[str, ...]:
    """Every scope :func:`forward` sends in, nested ones before none: ``embed``, ``tuples``
    (the pass's offline material made at its start: :func:`prepare_tuples`), each layer's
    :data:`COMPONENTS` (``layer0.attn.norm``, ...), ``head``. Each message of a pass is in
    exactly one of them (the longest that contains its scope)."""
    layers = tuple(f"layer{i}.{c}" for i in range(n_layers) for c in COMPONENTS)
    return ("embed", "tuples", *layers, "head")


Probe = Callable[[int, str, AShare | ProductShare], None]
"""``fn(role, point, share)``: what a :class:`LayerProbe` calls at every probe point."""


@dataclasses.dataclass(frozen=True)
class LayerProbe:
    """Per-party state: the in-process observer of this party's shares (module docstring)."""

    fn: Probe


def _see_nothing(role: int, point: str, share: AShare | ProductShare) -> None:
    """The function of :data:`NO_PROBE` (never called)."""


NO_PROBE = LayerProbe(_see_nothing)
"""The state of a party with no probe installed: every deployed party."""

PROBE_POINTS = (
    "qkv", "scores", "exp", "attn_out", "o_proj", "attn_residual",
    "ffn_norm", "gate_up", "silu", "silu_up", "down", "residual",
)
"""Per-layer probe points, named ``layer{i}.{point}`` (then ``final_norm`` and ``logits``).

Layouts (n new rows, T = cached + new positions): o_proj, attn_residual, ffn_norm, down,
residual (n, hidden), ffn_norm the MLP norm's output *before* its gain (x / rms(x): the gains
are folded into the next weights, :func:`weight_tensors`; not probed where rho scales the
gate/up product, which never forms it, :func:`normalised_gate_up`); the attention norm's output is
not probed (where rho scales the QKV product it is never formed, :func:`normalised_qkv`), so
its error shows in qkv (n, q + 2 kv), with q and k rotated, the query heads times the
attention scale 1/sqrt(head_dim); scores
and exp (kv heads, heads per kv head, n, T), exp = e^(score - row max), zero where masked
(softmax's numerators: the probabilities themselves are not formed when the rows are
normalised after P @ V, :func:`attend`); attn_out (n, q) before the output projection;
gate_up (n, 2 ffn); silu and silu_up (n, ffn); final_norm (1, hidden) and logits (1, vocab)
of the last row, or (n, hidden) and (n, vocab) of every row (``forward``'s ``all_positions``).
"""


def probe(ctx: Context, point: str, share: AShare | ProductShare) -> None:
    """Hand this party's share at ``point`` to the installed probe, if any (no-op otherwise)."""
    installed = ctx.state(LayerProbe, NO_PROBE)
    if installed is not NO_PROBE:
        installed.fn(ctx.role, point, share)


# ----------------------------------------------------------------------------- weights


@dataclasses.dataclass(frozen=True)
class SecureWeight:
    """One party's share of a matrix W (k, n): rows [W_i; W_{i+1}] of one (2k, n) array."""

    stacked: RingArray

    @property
    def shape(self) -> tuple[int, int]:
        """The shape (k, n) of W."""
        rows, cols = self.stacked.shape
        return rows // 2, cols


@dataclasses.dataclass(frozen=True)
class SecureLayer:
    """One decoder block's weight shares; the norms' gains are folded into ``wqkv`` and
    ``w_gate_up`` (:func:`weight_tensors`)."""

    wqkv: SecureWeight  # (hidden, q_dim + 2 kv_dim): diag(attn gain) [Wq | Wk | Wv]
    wo: SecureWeight  # (q_dim, hidden)
    w_gate_up: SecureWeight  # (hidden, 2 ffn): diag(ffn gain) [W_gate | W_up]
    w_down: SecureWeight  # (ffn, hidden)


@dataclasses.dataclass(frozen=True)
class SecureModel:
    """A party's shares of a whole model; ``lm_head`` is None when tied to the embedding;
    ``plan``: the protocols its layers take (public, the session's :func:`layer_plan`)."""

    config: LlamaConfig
    embed: RingArray  # [E_i | E_{i+1}], (vocab, 2 hidden)
    layers: tuple[SecureLayer, ...]
    final_norm: AShare  # (hidden,)
    lm_head: SecureWeight | None  # (hidden, vocab) when untied
    plan: LayerPlan


TRADEOFFS = ("balanced", "fewer-rounds", "fewer-bytes")
"""Where two protocols compute the same layer step, one in fewer rounds, the other in fewer
bytes (:class:`LayerPlan`), which a session takes: "balanced" (the default: the fewer bytes
where they save much, and in prompt passes, :func:`layer_plan`), "fewer-rounds" (links of
high latency) or "fewer-bytes" (links of low bandwidth)."""


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """The protocols every layer takes where two trade rounds for bytes (public; every
    party the same): ``normalise_input``, whether the attention norm scales the residual
    before the QKV product (4 rounds more per layer, n (q + 2 kv - hidden) products by rho
    fewer: :func:`normalised_qkv`); ``normalise_mlp_input``, the same for the MLP's norm
    and its gate/up product (rho after the product: 2 rounds fewer per layer, n (2 ffn -
    hidden) products by rho more: :func:`normalised_gate_up`); ``silu_horner``, whether
    SiLU makes v^2 only and its
    dot product by Horner's split (2 rounds more per layer, 43.5 bytes per element fewer:
    :func:`mlp`); ``candidate_tuples``, whether the norms' rsqrt and the softmax's 1/sum
    truncate their segments' candidates by TP1 from offline tuples (1 round each) or by the
    2-round truncation with no offline material (3 rounds more per norm, 1-2 per
    reciprocal; about 28 kB per norm row of 576 fewer: :func:`prepare_tuples`). (SiLU's
    comparison bits, once a fourth such choice, are always opened to their two evaluators
    only: 66 bytes per element fewer than to all three, and, with the selected rows'
    exchange beside the powers, a round more only in a prompt pass's layers of gate bound
    2^8.) ``prompt``: the plan of passes over more than one row, where it differs
    (:meth:`for_rows`; balanced's: :func:`layer_plan`)."""

    normalise_input: bool
    silu_horner: bool = False
    candidate_tuples: bool = True
    normalise_mlp_input: bool = True
    prompt: LayerPlan | None = None

    def for_rows(self, rows: int) -> LayerPlan:
        """The plan of a pass over ``rows`` new rows (with no :attr:`prompt` of its own):
        :attr:`prompt` (where set) for more than one, else this plan's own choices."""
        if self.prompt is None:
            return self
        return self.prompt if rows > 1 else dataclasses.replace(self, prompt=None)


def layer_plan(config: LlamaConfig, tradeoff: str = "balanced") -> LayerPlan:
    """The layers' protocols for ``tradeoff`` (:data:`TRADEOFFS`): "fewer-rounds" the rounds
    side everywhere, "fewer-bytes" the bytes side everywhere (the norm first, SiLU by
    Horner's split, the segments' candidates without TP1 tuples). "balanced" scales the
    attention's input where that saves 2 of 3 products by rho (:func:`normalises_input`)
    and the MLP's input; a new token (one row: its rounds are its price across machines)
    takes the rounds side of the other choices, a prompt pass (more than one row:
    :attr:`LayerPlan.prompt`) SiLU by Horner and the candidates without tuples, which save
    about 4 MB per row for about 300 rounds per pass (the norm first would add 90 rounds
    for 0.5 MB per row: not taken). Measured (``benchmarks/llama.py --tradeoff``, online +
    offline, all parties): a new SmolLM2 token after 5 prompt tokens balanced 1,271 rounds
    and 36.0 MB, fewer-rounds 1,211 and 39.3, fewer-bytes 1,636 and 31.4; the 5-token
    prompt pass 1,636 rounds and 149.5 MB, fewer-rounds 1,273 and 186.2, fewer-bytes 1,726
    and 147.0; a 7B-shape block of 8 tokens (a prompt pass) balanced 58 rounds and 54.8 MB,
    fewer-rounds 42 and 68.5, fewer-bytes 58 and 54.8."""
    if tradeoff not in TRADEOFFS:
        raise ValueError(f"tradeoff must be one of {', '.join(TRADEOFFS)}, got {tradeoff!r}")
    if tradeoff == "fewer-rounds":
        return LayerPlan(normalise_input=False, normalise_mlp_input=False)
    if tradeoff == "fewer-bytes":
        return LayerPlan(normalise_input=True, silu_horner=True, candidate_tuples=False)
    normalise_input = normalises_input(config)
    return LayerPlan(normalise_input, prompt=LayerPlan(normalise_input, silu_horner=True,
                                                       candidate_tuples=False))


def weight_plan(config: LlamaConfig) -> list[tuple[str, tuple[int, ...]]]:
    """The public order and shapes in which the model owner shares the weights."""
    h, q, kv, f = config.hidden, config.q_dim, config.kv_dim, config.ffn
    plan: list[tuple[str, tuple[int, ...]]] = [("embed", (config.vocab, h))]
    for i in range(config.n_layers):
        plan += [
            (f"layer{i}.wqkv", (h, q + 2 * kv)), (f"layer{i}.wo", (q, h)),
            (f"layer{i}.w_gate_up", (h, 2 * f)), (f"layer{i}.w_down", (f, h)),
        ]
    plan.append(("final_norm", (h,)))
    if not config.tied_embeddings:
        plan.append(("lm_head", (h, config.vocab)))
    return plan


FOLDED_EXTRA_BITS = 6
"""Fractional bits the folded matrices carry beyond the fixed point's (module docstring of
:func:`weight_tensors`): they are shared as 2^6 W' and their products truncated 6 bits more."""


def weight_tensors(weights: LlamaWeights) -> Iterator[npt.NDArray[np.floating]]:
    """The model owner's plaintext tensors in :func:`weight_plan` order (fused lazily).

    The RMSNorm gains g of a layer are folded into the matrix that reads the norm's output:
    (x rho g) @ W = (x rho) @ (diag(g) W), so W'qkv = diag(g_attn) [Wq | Wk | Wv] and
    W'gate_up = diag(g_ffn) [W_gate | W_up] (in float64: one rounding, the encoding's). The
    same function with one fixed-point rounding per weight instead of a secret product and
    its truncation per normalised element (2 rounds and ~45 bytes per element saved per
    norm). The final norm keeps its gain (the tied head reads the embedding).

    Precision: the gains are small (SmolLM2: median 0.25-0.31, 10% below 0.11-0.14), so
    diag(g) W at f = 18 bits would keep log2(1/g) bits fewer of each weight than W does, and
    the products' error from the weights' rounding (|h| 2^-19 per term, h the unit-RMS norm
    output) would grow by 1/g (measured: 4x on gate/up). The folded matrices are therefore
    shared as 2^6 diag(g) W (:data:`FOLDED_EXTRA_BITS`, an exact scaling), i.e. at 24
    fractional bits, and their products are truncated by 6 more bits: no worse than before
    for every gain >= 2^-6, at no cost in rounds or bytes. Headroom: the products' values
    before truncation are |h W'| 2^42 (gate/up: below the certified gate bound 2^8, and up
    alike: 2^50) and, for :func:`normalised_qkv`, |x W'| 2^42 with rho after (below 2^20:
    SmolLM2's 6,967) or |h W'| 2^46 with rho first (h at 22 bits: below 2^16).
    """
    yield weights.embed
    for layer in weights.layers:
        yield _fold_gain(layer.attn_norm, layer.wq, layer.wk, layer.wv)
        yield layer.wo
        yield _fold_gain(layer.ffn_norm, layer.w_gate, layer.w_up)
        yield layer.w_down
    yield weights.final_norm
    if not weights.config.tied_embeddings:
        yield weights.lm_head


def _fold_gain(gain: npt.ArrayLike, *matrices: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """2^FOLDED_EXTRA_BITS diag(gain) [W_1 | W_2 | ...]: the row k of every matrix times
    gain_k, in float64 (the power of two is exact)."""
    g = np.asarray(gain, dtype=np.float64)[:, None] * 2.0**FOLDED_EXTRA_BITS
    return np.concatenate([g * np.asarray(w, dtype=np.float64) for w in matrices], axis=1)


Stored = AShare | SecureWeight | RingArray


def stored_form(name: str, shape: tuple[int, ...]) -> tuple[Stored, AShare] | None:
    """Weight ``name``'s stored form, allocated empty, and the share halves to receive into
    (views of it): the embedding side by side, projections stacked, so that set-up writes
    each received block once and copies nothing afterwards. None for a 1-d tensor (the final
    norm's gain): it is stored as received."""
    if len(shape) == 1:
        return None
    rows, cols = shape
    if name == "embed":
        whole = np.empty((rows, 2 * cols), np.uint64)
        return whole, AShare(whole[:, :cols], whole[:, cols:])
    whole = np.empty((2 * rows, cols), np.uint64)
    return SecureWeight(whole), AShare(whole[:rows], whole[rows:])


def assemble_model(config: LlamaConfig, stored: dict[str, Stored],
                   plan: LayerPlan) -> SecureModel:
    """A party's :class:`SecureModel` from its stored weights (:func:`stored_form`) by plan
    name, its layers taking ``plan``."""

    def get(name: str, kind: type) -> Any:
        value = stored[name]
        if not isinstance(value, kind):
            raise TypeError(f"weight {name!r} is a {type(value).__name__}, not {kind.__name__}")
        return value

    layers = tuple(
        SecureLayer(
            get(f"layer{i}.wqkv", SecureWeight), get(f"layer{i}.wo", SecureWeight),
            get(f"layer{i}.w_gate_up", SecureWeight), get(f"layer{i}.w_down", SecureWeight),
        )
        for i in range(config.n_layers)
    )
    head = None if config.tied_embeddings else get("lm_head", SecureWeight)
    return SecureModel(
        config, get("embed", np.ndarray), layers, get("final_norm", AShare), head, plan
    )


# ----------------------------------------------------------------------------- products


async def weight_matmul(
    ctx: Context, x: AShare, w: SecureWeight, bits: int | None = None
) -> AShare:
    """x @ W for activations x (..., k) and a stacked weight: as ``arith.matmul_fxp``.

    z_i = [x_i + x_{i+1} | x_i] @ [W_i; W_{i+1}]: one ring matmul on the stored weight.
    Cost: 2 rounds (1 without truncation, bits = 0); about 14 bytes per output per party.
    """
    return await matmul_stacked(ctx, stack_left(x), w.stacked, bits)


@dataclasses.dataclass(frozen=True)
class Stream:
    """The residual stream x (n, hidden) and its wide copy x / 2^k (k = :func:`norm_shift`),
    made by the product that made x, for the norm that reads x (no truncation of its own)."""

    x: AShare
    wide: AShare

    def rows(self, index: Any) -> Stream:
        return Stream(self.x[index], self.wide[index])


def norm_shift(ctx: Context, config: LlamaConfig) -> int:
    """The shift of the norms' wide path (:func:`.norms.wide_shift`) for the model's rows."""
    return wide_shift(config.hidden, MAX_ABS, fixed_point(ctx).frac_bits)


async def residual_matmul(
    ctx: Context, config: LlamaConfig, x: AShare, w: SecureWeight, residual: Stream
) -> tuple[AShare, Stream]:
    """p = x @ W (as :func:`weight_matmul`) and the stream residual + p, its wide copy from
    the same product in the same rounds (:func:`.arith.finish_product_wide`).

    Cost: 2 rounds; about 14 + 9 bytes per output per party (p, and the wide copy opened
    by p's swap: :func:`.trunc.truncate_additive_twin`).
    """
    z = await stacked_share(stack_left(x), w.stacked)
    p, wide = await finish_product_wide(
        ctx, z, fixed_point(ctx).frac_bits, residual.x, norm_shift(ctx, config))
    return p, Stream(residual.x + p, wide)


@dataclasses.dataclass(frozen=True)
class EmbedAhead:
    """P_0's embedding product of the client's input of ``label``, made before the input
    arrives (:func:`embed_ahead`): ``part`` (n, hidden), the z_0 of :func:`embed_tokens`."""

    label: bytes
    part: RingArray


def _embedding_product(one_hot: AShare, table: RingArray, inline: bool = False) -> RingArray:
    """z_i = (o_i + o_{i+1}) E_i + o_i E_{i+1} for one-hot share halves (n, vocab) and
    ``table`` = [E_i | E_{i+1}]: read off one product [o_i + o_{i+1}; o_i] @ [E_i | E_{i+1}]
    (E read once; ``inline``: ``ring_matmul``'s)."""
    n, h = one_hot.shape[0], table.shape[1] // 2
    left = np.concatenate([one_hot.first + one_hot.second, one_hot.first], axis=0)
    both = ring_matmul(left, table, inline=inline)
    return both[:n, :h] + both[n:, h:]


def embed_ahead(model: SecureModel, label: bytes, one_hot: AShare) -> EmbedAhead:
    """P_0's embedding product of the client's next input (``io.input_ahead``: its label and
    P_0's share, both halves from the client's input seeds), made during the pass before
    (``session.programs``): local, in a worker thread and on one core (not on the kernel pool,
    where it would hold up the pass's own products)."""
    return EmbedAhead(label, _embedding_product(one_hot, model.embed, inline=True))


async def embed_tokens(ctx: Context, model: SecureModel, one_hot: AShare,
                       ahead: EmbedAhead | None = None) -> Stream:
    """Rows of E selected by secret one-hot rows (n, vocab): exact, no truncation, with the
    wide copy for the first norm; ``ahead``: P_0's product made before the rows arrived
    (:func:`embed_ahead`; its label is the caller's to check).

    z_i = (o_i + o_{i+1}) E_i + o_i E_{i+1}, read off one product [o_i + o_{i+1}; o_i] @
    [E_i | E_{i+1}] (E read once; :func:`_embedding_product`). For a new token P_0 made its
    product during the pass before, so only P_1 and P_2 read their table (SmolLM2: 453 MB
    each) when the row arrives. Cost: 2 rounds (the wide copy's truncation; the rows
    themselves are ready after 1), 2 n hidden elements per party.
    """
    if ahead is not None:
        z = ahead.part
    else:
        z = await in_thread(_embedding_product, one_hot, model.embed)
    x, wide = await finish_product_wide(ctx, z, 0, None, norm_shift(ctx, model.config))
    return Stream(x, wide)


def head_format(ctx: Context) -> FixedPoint:
    """The fixed point of the head's product :func:`lm_head` makes: 2f fractional bits, those
    of an untruncated product of two values at f (the client gets the logits at f:
    ``io.reveal_product_to``)."""
    return FixedPoint(2 * fixed_point(ctx).frac_bits)


async def lm_head(ctx: Context, model: SecureModel, x: AShare) -> ProductShare:
    """Logits (n, vocab) of normalised rows x (n, hidden), tied (E @ x^T) or untied head, as
    this party's 3-out-of-3 share of the untruncated product (:func:`.arith.product_share`:
    masked by a fresh zero-sharing) at 2f fractional bits (:func:`head_format`).

    The logits go to the client only (``io.reveal_product_to``): each party sends its
    share's bits [f, 64) and the client adds the three mod 2^(64 - f), getting the logits at
    f fractional bits, floor(z / 2^f) - e with e in {0, 1, 2} (at most 3 units of 2^-f below
    the exact product, never above); truncating first would cost 2 rounds and ~42 bytes per
    logit. Headroom: the product is |logit| 2^36, below 2^62 for |logit| < 2^26 (SmolLM2's
    are below 40; the final norm's rows are unit-RMS times its gain). Cost: local, no
    messages (the reveal: 1 round, 46 bits = 5.75 bytes per logit per party).
    """
    frac_bits = head_format(ctx).frac_bits
    if model.lm_head is not None:
        z = await product_share(ctx, stack_left(x), model.lm_head.stacked)
        return ProductShare(z, frac_bits)
    # z_i^T = E_i (x_i + x_{i+1})^T + E_{i+1} x_i^T = [E_i | E_{i+1}] @ [(x_i + x_{i+1})^T; x_i^T]
    z = await product_share(ctx, model.embed, stack_left(x).T.copy())
    return ProductShare(np.ascontiguousarray(z.T), frac_bits)


# ----------------------------------------------------------------------------- attention


@dataclasses.dataclass
class SecureKVCache:
    """Shares of every layer's rotated keys and values, (n_kv_heads, length, head_dim)."""

    keys: list[AShare | None]
    values: list[AShare | None]

    @classmethod
    def empty(cls, config: LlamaConfig) -> SecureKVCache:
        return cls([None] * config.n_layers, [None] * config.n_layers)

    @property
    def length(self) -> int:
        """Positions cached (public)."""
        first = self.keys[0] if self.keys else None
        return 0 if first is None else first.shape[1]

    def append(self, index: int, k: AShare, v: AShare) -> tuple[AShare, AShare]:
        """Add new positions (n_kv, n, d) to layer ``index``; all its keys and values."""
        old_k, old_v = self.keys[index], self.values[index]
        if old_k is not None and old_v is not None:
            k = AShare(*(np.concatenate(p, axis=1) for p in zip(
                (old_k.first, old_k.second), (k.first, k.second), strict=True)))
            v = AShare(*(np.concatenate(p, axis=1) for p in zip(
                (old_v.first, old_v.second), (v.first, v.second), strict=True)))
        self.keys[index], self.values[index] = k, v
        return k, v


@dataclasses.dataclass(frozen=True)
class Rope:
    """Public rotary tables for n positions, encoded for q and k heads side by side.

    ``cos`` and ``signed_sin`` have shape (n, n_heads + n_kv_heads, head_dim); the query
    heads' entries carry 1/sqrt(head_dim), the attention scale, for free.
    """

    cos: RingArray
    signed_sin: RingArray

    @classmethod
    def at(cls, ctx: Context, config: LlamaConfig, start: int, n: int) -> Rope:
        fx = fixed_point(ctx)
        cos, sin = rope_tables(config, np.arange(start, start + n))  # (n, d)
        half = config.head_dim // 2
        sin = np.concatenate([-sin[:, :half], sin[:, half:]], axis=-1)  # rotate_half's sign
        heads = np.array([config.head_dim ** -0.5] * config.n_heads + [1.0] * config.n_kv_heads)
        scale = heads[None, :, None]
        return cls(fx.encode(cos[:, None, :] * scale), fx.encode(sin[:, None, :] * scale))


async def apply_rope(ctx: Context, qk: AShare, rope: Rope) -> AShare:
    """x cos + rotate_half(x) sin on (n, heads, d) at any fractional bits a: local products
    (a + f bits), one truncation by f back to a (2 R, ~8 bytes per element per party).
    Needs |x| (|cos| + |sin|) 2^(a + f) < 2^62."""
    half = qk.shape[-1] // 2

    def rotated() -> AShare:
        swapped = qk.map(lambda a: np.concatenate([a[..., half:], a[..., :half]], axis=-1))
        return qk.scale(rope.cos) + swapped.scale(rope.signed_sin)

    return await truncate(ctx, await offload(rotated, size=qk.size))


def causal_mask(start: int, n: int, total: int, repeats: int) -> npt.NDArray[np.bool_]:
    """(repeats * n, total): row r * n + t (query position start + t) sees keys <= it."""
    visible = np.arange(total)[None, :] <= start + np.arange(n)[:, None]
    return np.tile(visible, (repeats, 1))


QKV_RAW_FRAC = 22
"""Fractional bits of x @ W'qkv before the attention norm's rho, or of x rho before the QKV
product where the norm scales the input (:func:`normalised_qkv`); and of x @ W'gate_up
before the MLP norm's rho (:func:`normalised_gate_up`)."""
QKV_RHO_FRAC = 32
"""Fractional bits of that rho."""


def normalises_input(config: LlamaConfig) -> bool:
    """Whether the balanced plan's attention norm (:func:`layer_plan`) scales the residual
    before the QKV product (x rho first, as the MLP's norm does) rather than the product
    after it: where the product has at least :data:`NORMALISE_INPUT_FROM` outputs per input
    (multi-head attention, q + 2 kv = 3 hidden: LLaMA-7B), so that 2 of every 3 products by
    rho go (about 42 bytes each, all parties) for 4 rounds more per layer
    (:func:`normalised_qkv`). With grouped-query attention (SmolLM2: 960 outputs for 576
    inputs) it would save 0.4 of them for the same 4 rounds, so the rounds win there."""
    return config.q_dim + 2 * config.kv_dim >= NORMALISE_INPUT_FROM * config.hidden


NORMALISE_INPUT_FROM = 3
"""QKV outputs per residual input from which the attention norm scales the input
(:func:`normalises_input`)."""


async def normalised_qkv(
    ctx: Context, config: LlamaConfig, layer: SecureLayer, stream: Stream, rope: Rope,
    normalise_input: bool, pre: SegmentMaterial | None = None,
) -> AShare:
    """RMSNorm(x) @ W'qkv (the gain folded into W'qkv) with q and k rotated, (n, q + 2 kv),
    by one of two paths (``normalise_input``: :class:`LayerPlan`; ``pre``: the norm's offline
    material, :func:`prepare_tuples`). The query heads carry 1/sqrt(head_dim) (:class:`Rope`).

    **rho after** (balanced: grouped-query attention, SmolLM2): rho RoPE(x @ W'qkv). rho is a
    scalar per row and RoPE a linear map of each row with public coefficients, so they commute: the
    product on the raw residual (scope ``qkv``) and the rotation of its q and k columns
    (:func:`apply_rope`, scope ``rope``) run beside the norm's rsqrt (scope ``norm``: 4
    rounds, against 2 + 2), then one truncated product by rho per output (scope ``qkv``).
    Rounds: norm 4, then the product by rho 2 (6); RoPE has none of its own (rotating q and k
    after the product took 1 round, 2 when its truncation's blocks rotate). RoPE's
    truncation: as many elements as after the product.

    **rho first** (balanced: multi-head attention, LLaMA-7B): RoPE(RMSNorm(x) @ W'qkv), the
    MLP's order: the norm with its product x rho (:func:`.norms.rms_norm`: 6 rounds, n hidden
    products; h = x rho kept at :data:`QKV_RAW_FRAC` = 22 fractional bits, at no cost: its
    truncation removes 4 bits fewer), then h @ W'qkv truncated to f bits (2) and RoPE (2; 1
    when its truncation is one block, below :data:`.trunc.ROTATE_MIN_ELEMENTS`): 10 rounds,
    and n (q + 2 kv - hidden) products by rho fewer (LLaMA-7B: 2 of 3; 2.85 of a block's
    63.7 MB for 8 tokens). Headroom: |h W'| 2^46 before the product's truncation, |q|, |k|
    (|cos| + |sin|) 2^36 before RoPE's: |q|, |k|, |v| < 2^16.
    Error added (f = 18; h within rms_norm's relative error and one unit of 2^-22; s =
    1/sqrt(head_dim) for the query heads, 1 for the keys): per output column j, h's unit
    through W' and the product's truncation, e_j = 2^-22 sum_i |W'_ij| + 2^-18; rotated,
    sqrt(2) s max(e_a, e_b) on a pair (a, b), plus RoPE's truncation (2^-18) and the tables'
    rounding (|a| + |b|) 2^-19 (times s); v: e_j. Relative: rsqrt's (as below) and rho's
    resolution (:func:`.norms.rms_norm`'s rho bits). On the same inputs the two paths' errors
    are alike (multi-head tiny layout, 24 cases: the largest error per case in a ratio of
    0.74-1.64, median 1.02, rho first to rho after), both mostly the tables' rounding.
    Test: tests/test_secure_llama.py (this bound, against float64, at a multi-head layout).

    Headroom (rho after): the raw product's pre-truncation value is |x W'| 2^42 (W' at 24
    fractional bits: :func:`weight_tensors`); its rotation (x W' at :data:`QKV_RAW_FRAC` bits,
    cos and sin at f) is at most sqrt(2) max |x W'| 2^40 before its truncation (pairs
    rotated; the query heads' 1/sqrt(head_dim) only lowers it); and rho RoPE(x W') = q (or k,
    v) is taken at :data:`QKV_RAW_FRAC` + :data:`QKV_RHO_FRAC` = 54 fractional bits before
    its truncation. So this needs |x W'| < 2^20 and |q|, |k|, |v| < 2^8 (q, k rotated: at
    most sqrt(2) times their largest element before). SmolLM2 (plaintext reference, 4
    prompts, first-token rows with |x| up to 24,926): max |x W'| 6,967 (< 2^13), max |q|,
    |k|, |v| 19.5 (< 2^5).

    Error added (rho after), with rho <= 11.2 (SmolLM2, measured) and s as above: the
    rounding of x W' (2^-22) rotated (at most sqrt(2) s 2^-22) and
    the rotation's own (2^-22), both times rho, and the product's truncation (2^-18):
    rho (sqrt(2) s + 1) 2^-22 + 2^-18, at most 1.03e-5 for k and 7.0e-6 for q (s = 1/8);
    v as before, rho 2^-22 + 2^-18 <= 6.5e-6. Relative to q, k, v: rho's, i.e. rsqrt's
    (:func:`.norms.rms_rsqrt`: <= 1.3e-6 on its precise path, 5.7e-6 on its wide one, rows
    with an rms above ~241: SmolLM2's first token from layer 11 on) and its resolution 2^-32
    (2.4e-7 at rho = 1/1046, the smallest); and cos and sin rounded to 2^-19 (times s):
    rho (|a| + |b|) 2^-19 on a rotated pair (a, b) of x W', as when they are rotated after
    rho. These two dominate: on SmolLM2's own layer inputs (the float64 residual of the 12
    perplexity windows of 128 tokens, layers 3, 6, 9: rows with |x| up to 840 in dimension
    507, rho 0.028-0.47) the error is at most 3.8e-5, RMS 3.0e-6 (rho's relative error on
    their first 32 rows of 4 windows, layers 3, 8, 12 and 20: at most 6.6e-7). Rotated after
    rho, as before: (rho 2^-22 + 2^-18) sqrt(2) s + 2^-18, 1.30e-5 for k and 5.0e-6 for q (at
    rho = 1: q 4.1e-6 now, 4.5e-6 before); on the same inputs at most 4.0e-5, RMS 3.1e-6.
    Test: tests/test_secure_llama.py (this bound, against float64, on rows of one scale and
    on SmolLM2-shaped rows with one massive activation)."""
    n, split = stream.x.shape[0], (config.n_heads + config.n_kv_heads) * config.head_dim

    async def rotated(c: Context, x: AShare, bits: int) -> AShare:
        """x @ W'qkv truncated by ``bits``, its q and k columns rotated."""
        with c.scope("qkv"):
            qkv = await weight_matmul(c, x, layer.wqkv, bits=bits)
        with c.scope("rope"):
            qk = await apply_rope(c, qkv[:, :split].reshape(n, -1, config.head_dim), rope)
        return concatenate([qk.reshape(n, split), qkv[:, split:]], axis=-1)

    if normalise_input:
        with ctx.scope("norm"):
            h = await rms_norm(ctx, stream.x, eps=config.rms_eps, wide=stream.wide, pre=pre,
                               out_frac=QKV_RAW_FRAC)
        return await rotated(ctx, h, QKV_RAW_FRAC + FOLDED_EXTRA_BITS)

    return await _scaled_after(ctx, config, stream, lambda c, bits: rotated(c, stream.x, bits),
                               QKV_RHO_FRAC, "qkv", pre)


async def _scaled_after(
    ctx: Context, config: LlamaConfig, stream: Stream,
    raw: Callable[[Context, int], Awaitable[AShare]], rho_frac: int, scope: str,
    pre: SegmentMaterial | None,
) -> AShare:
    """A norm's rho after its product (the rho-after path of :func:`normalised_qkv` and
    :func:`normalised_gate_up`): ``raw(c, bits)``, the product on the raw residual truncated
    by ``bits`` to :data:`QKV_RAW_FRAC` bits, beside the rsqrt (scope ``norm``, rho at
    ``rho_frac`` bits), then one truncated product by rho per output, in scope ``scope``."""
    f = fixed_point(ctx).frac_bits

    async def rho(c: Context) -> AShare:
        with c.scope("norm"):
            return await rms_rsqrt(c, stream.x, stream.wide, eps=config.rms_eps,
                                   max_abs=MAX_ABS, frac_bits=rho_frac, pre=pre)

    r, product = await ctx.gather(
        rho, lambda c: raw(c, 2 * f + FOLDED_EXTRA_BITS - QKV_RAW_FRAC))
    with ctx.scope(scope):
        return await mul_fxp(ctx, product, repeat_last(r, product.shape[-1]),
                             bits=QKV_RAW_FRAC + rho_frac - f)


async def attention(
    ctx: Context, config: LlamaConfig, plan: LayerPlan, layer: SecureLayer, stream: Stream,
    rope: Rope, cache: SecureKVCache, index: int, pre: LayerTuples | None = None,
) -> Stream:
    """The stream plus the grouped-query causal self-attention of its new rows x (n, hidden),
    with the cache (``pre``: the layer's TP1 tuples, :func:`prepare_tuples`; the attention
    uses the norm's and the reciprocal's; ``plan``: its norm's order, :class:`LayerPlan`).

    All query heads of one key/value group form one batched product against that group's
    keys (no copies of K or V per query head); one softmax over every head and row.
    """
    x = stream.x
    n, d = x.shape[0], config.head_dim
    heads, groups, rep = config.n_heads, config.n_kv_heads, config.n_rep
    name = f"layer{index}"
    qkv = await normalised_qkv(ctx, config, layer, stream, rope, plan.normalise_input,
                               None if pre is None else pre.attn_norm)
    probe(ctx, f"{name}.qkv", qkv)
    split = (heads + groups) * d
    qk = qkv[:, :split].reshape(n, heads + groups, d)
    k_new = qk[:, heads:].transpose(1, 0, 2)  # (groups, n, d)
    v_new = qkv[:, split:].reshape(n, groups, d).transpose(1, 0, 2)
    keys, values = cache.append(index, k_new.map(np.ascontiguousarray),
                                v_new.map(np.ascontiguousarray))
    total = keys.shape[1]
    start = total - n  # this layer's positions before the new rows
    q = qk[:, :heads].reshape(n, groups, rep, d).transpose(1, 2, 0, 3).reshape(groups, rep * n, d)
    mask = causal_mask(start, n, total, rep)
    keep = None if mask.all() else mask  # a new token sees every key: nothing to mask
    # (groups, rep n, total): the maximum starts in the scores' first round
    scores, top = await matmul_max(ctx, q, keys.transpose(0, 2, 1), keep,
                                   product_scope="scores", max_scope="softmax.max_along",
                                   pre=None if pre is None else pre.maximum)
    probe(ctx, f"{name}.scores", scores.reshape(groups, rep, n, total))
    out = await attend(ctx, scores, values, keep, n, name, top,
                       None if pre is None else pre.reciprocal,
                       None if pre is None else pre.neg_exp)
    out = out.reshape(groups, rep, n, d).transpose(2, 0, 1, 3).reshape(n, heads * d)
    probe(ctx, f"{name}.attn_out", out)
    with ctx.scope("o"):
        projected, after = await residual_matmul(ctx, config, out, layer.wo, stream)
    probe(ctx, f"{name}.o_proj", projected)
    return after


async def attend(
    ctx: Context, scores: AShare, values: AShare, keep: npt.NDArray[np.bool_] | None, n: int,
    name: str, top: AShare | None = None, pre: SegmentMaterial | None = None,
    exp_pre: CompareMaterial | None = None,
) -> AShare:
    """softmax(scores) @ values per key/value group, (groups, rep n, T) @ (groups, T, d);
    ``pre``: the reciprocal's TP1 tuples, ``exp_pre``: the exponential's comparisons'
    material (:func:`prepare_tuples`; None: made inline); ``keep``: the causal mask (None:
    every entry kept, as for one new row).

    Scopes ``softmax`` (its maximum, exponential and reciprocal in theirs, and the product
    by 1/sum) and ``pv``. For one new row, or when it costs no more bytes
    (:func:`.softmax.normalise_after`), the rows are normalised *after* the product:
    (e @ V) x r, with e @ V beside the reciprocal (2 rounds fewer); else (e x r) @ V.
    """
    with ctx.scope("softmax"):
        e = await exp_rows(ctx, scores, keep, top, exp_pre)
    groups, _, total = scores.shape
    probe(ctx, f"{name}.exp", e.reshape(groups, -1, n, total))

    async def product(c: Context, left: AShare) -> AShare:
        with c.scope("pv"):
            return await matmul_fxp(c, left, values)

    async def sums(c: Context) -> AShare:
        with c.scope("softmax"):
            return await row_reciprocals(c, e, pre)

    if normalise_after(n, total, values.shape[-1]):
        weighted, r = await ctx.gather(lambda c: product(c, e), sums)
        with ctx.scope("softmax"):
            return await scale_rows(ctx, weighted, r)
    with ctx.scope("softmax"):
        probs = await probabilities(ctx, e, keep, pre)
    return await product(ctx, probs)


SILU_SELECTION: Selection = "evaluators"
"""Who selects SiLU's table rows: its comparisons' bits are opened to their evaluators only
(:mod:`.evaluators`: 66 bytes per element fewer than to all three)."""

GATE_UP_RHO_FRAC = 30
"""Fractional bits of the MLP norm's rho where it scales the gate/up product
(:func:`normalised_gate_up`)."""


async def normalised_gate_up(
    ctx: Context, config: LlamaConfig, layer: SecureLayer, stream: Stream,
    normalise_input: bool, name: str, pre: SegmentMaterial | None = None,
) -> AShare:
    """RMSNorm(x) @ W'gate_up (the gain folded into W'), (n, 2 ffn), by one of two paths
    (``normalise_input``: :class:`LayerPlan`; ``pre``: the norm's offline material).

    **rho first** (balanced, fewer-bytes): the norm with its product x rho
    (:func:`.norms.rms_norm`: 6 rounds, n hidden products by rho; probe ``ffn_norm``), then
    the gate/up product (2): 8 rounds.

    **rho after** (fewer-rounds): rho (x @ W') as :func:`normalised_qkv`'s: the product on the
    raw residual, truncated to :data:`QKV_RAW_FRAC` bits, beside the norm's rsqrt (4 rounds,
    rho at :data:`GATE_UP_RHO_FRAC` bits), then one truncated product by rho per output (2):
    6 rounds, n (2 ffn - hidden) products by rho more (SmolLM2: 2,496 per row; a token 3.2
    MB more, all parties, and 60 rounds fewer: ``benchmarks/llama.py --tradeoff
    fewer-rounds``). Headroom: |x W'| 2^42 before the raw product's truncation and
    |rho x W'| 2^52 before the last: |x W'| < 2^20 and |gate|, |up| < 2^10. SmolLM2
    (the float64 reference forward over 38 prompts and 4 windows of 128 tokens of
    ``benchmarks/prompts/pride-and-prejudice-ch1.txt``, the massive-activation first tokens
    included, measured when this path was added): max |x W'| 59,597 (< 2^16), |gate| 58.6,
    |up| 78.9, rho in [0.00081, 10.03]. Error added: x W''s rounding times rho (2^-22 rho <= 2.4e-6)
    and the last truncation (2^-18), against rho first's h unit through W' (2^-18 sum_i
    |W'_ij|); relative: rho's (rsqrt's, as :func:`normalised_qkv`) and its resolution 2^-30
    (1.2e-6 at the smallest rho)."""
    f = fixed_point(ctx).frac_bits
    if normalise_input:
        with ctx.scope("norm"):
            h = await rms_norm(ctx, stream.x, eps=config.rms_eps, wide=stream.wide, pre=pre)
        probe(ctx, f"{name}.ffn_norm", h)
        with ctx.scope("gate_up"):
            return await weight_matmul(ctx, h, layer.w_gate_up, bits=f + FOLDED_EXTRA_BITS)

    async def raw(c: Context, bits: int) -> AShare:
        with c.scope("gate_up"):
            return await weight_matmul(c, stream.x, layer.w_gate_up, bits=bits)

    return await _scaled_after(ctx, config, stream, raw, GATE_UP_RHO_FRAC, "gate_up", pre)


async def mlp(
    ctx: Context, config: LlamaConfig, plan: LayerPlan, layer: SecureLayer, stream: Stream,
    index: int, pre: SegmentMaterial | None = None,
    silu_pre: CompareMaterial | EvaluatorCompare | None = None,
) -> Stream:
    """The stream x plus SwiGLU (silu(h W_gate) * h W_up) W_down of h = RMSNorm(x); gate and
    up in one product, the norm's rho before or after it (:func:`normalised_gate_up`, by
    ``plan``; ``pre``: the norm's TP1 tuples, ``silu_pre``: SiLU's comparisons' material,
    :func:`prepare_tuples`; None: made inline).
    SiLU's comparisons are as long as the layer's certified gate bound needs, if declared
    (less the table's slack bits), and their bits opened to their evaluators only
    (:mod:`.evaluators`: 66 bytes per element fewer than to all three). The selected rows'
    exchange runs beside the powers: SiLU takes 6 rounds where its comparisons' tree has one
    level (gate bounds up to 2^7) or where their sender is the gate product's dealer, who
    holds its components a round early (a new token's one block: the leaves start in the
    product's last round), else 7 (a prompt pass's layers of gate bound 2^8); with
    ``plan.silu_horner`` 2 more, 43.5 bytes per element fewer (:func:`.activations.silu`)."""
    name = f"layer{index}"
    gate_up = await normalised_gate_up(ctx, config, layer, stream, plan.normalise_mlp_input,
                                       name, pre)
    probe(ctx, f"{name}.gate_up", gate_up)
    f = config.ffn
    gate = gate_up.map(lambda a: np.ascontiguousarray(a[..., :f]))
    up = gate_up.map(lambda a: np.ascontiguousarray(a[..., f:]))
    activated = await silu(ctx, gate, bound=config.gate_bound(index),  # its scope
                           selection=SILU_SELECTION, horner=plan.silu_horner, pre=silu_pre)
    probe(ctx, f"{name}.silu", activated)
    with ctx.scope("silu_up"):
        product = await mul_fxp(ctx, activated, up)
    probe(ctx, f"{name}.silu_up", product)
    with ctx.scope("down"):
        down, after = await residual_matmul(ctx, config, product, layer.w_down, stream)
    probe(ctx, f"{name}.down", down)
    return after


async def decoder_layer(
    ctx: Context, config: LlamaConfig, plan: LayerPlan, layer: SecureLayer, x: Stream,
    rope: Rope, cache: SecureKVCache, index: int, pre: LayerTuples | None = None,
) -> Stream:
    """One block on the residual stream (n, hidden) by ``plan``'s protocols; appends its
    keys/values to the cache. ``pre``: its norms' TP1 tuples (:func:`prepare_tuples`; None:
    prepared inline)."""
    with ctx.scope("attn"):
        after = await attention(ctx, config, plan, layer, x, rope, cache, index, pre)
    probe(ctx, f"layer{index}.attn_residual", after.x)
    with ctx.scope("mlp"):
        x = await mlp(ctx, config, plan, layer, after, index,
                      None if pre is None else pre.mlp_norm, None if pre is None else pre.silu)
    probe(ctx, f"layer{index}.residual", x.x)
    return x


@dataclasses.dataclass(frozen=True)
class LayerTuples:
    """A layer's offline material (:func:`prepare_tuples`: TP1 tuples and comparisons'):
    the attention norm's (rho at :data:`QKV_RHO_FRAC`, or as the MLP's where it scales the
    input: :class:`LayerPlan`), the softmax reciprocal's, the MLP norm's, and the
    comparisons' material of the softmax's exponential, of its maximum's first step and of
    SiLU (its evaluators', where they select: :func:`.activations.table_compare_spec`)."""

    attn_norm: SegmentMaterial
    reciprocal: SegmentMaterial
    mlp_norm: SegmentMaterial
    neg_exp: CompareMaterial
    maximum: MaximumMaterial | None
    silu: CompareMaterial | EvaluatorCompare


@dataclasses.dataclass(frozen=True)
class PassTuples:
    """A pass's offline material (:func:`prepare_tuples`): its TP1 tuples and comparisons'
    material per layer and the head norm's, for ``rows`` new rows at ``keys`` cached + new
    positions with the head on ``head_rows`` (0: a pass without a head, ``head`` None)."""

    rows: int
    keys: int
    head_rows: int
    layers: tuple[LayerTuples, ...]
    head: SegmentMaterial | None


async def prepare_tuples(
    ctx: Context, config: LlamaConfig, plan: LayerPlan, rows: int, keys: int, head_rows: int
) -> PassTuples:
    """Every TP1 tuple of a pass over ``rows`` new rows and ``keys`` cached + new positions
    (the head's norm on ``head_rows``, none for 0; no TP1 tuple where
    ``plan.candidate_tuples`` is False: the segments' candidates then truncate in 2 rounds
    each), and the comparisons' material of its norms, its softmax reciprocals,
    exponentials and maxima (the first step's: :func:`.softmax.product_maximum_spec`; none
    for one key, its own maximum), public parameters only: phase ``offline``, 4
    rounds, all in scope ``tuples``. The TP1 tuples in one preparation per truncation width
    for the whole pass, the comparisons' material in one per kind of comparison (below
    :data:`.trunc.ROTATE_MIN_ELEMENTS` elements each), sliced
    (:func:`.segments.prepare_segment_batches`, :func:`.fastcmp.prepare_compare_batches`,
    :func:`.fastcmp.prepare_maximum_batches`: their protocol steps do not grow with the
    number of layers, only the slicing does). Made during the pass
    before (the session's passes after a prompt's first: 1 row, one position more), or at
    the pass's start beside the embedding (:func:`forward`). ``plan``: the model's, taken for
    ``rows`` here (:meth:`LayerPlan.for_rows`)."""
    shape, eps, plan = (rows, config.hidden), config.rms_eps, plan.for_rows(rows)
    attn_rho = None if plan.normalise_input else QKV_RHO_FRAC  # :func:`normalised_qkv`
    mlp_rho = None if plan.normalise_mlp_input else GATE_UP_RHO_FRAC  # normalised_gate_up
    layer = [rms_norm_tuples(ctx, shape, eps=eps, frac_bits=attn_rho),
             row_reciprocals_tuples(ctx, config.n_heads * rows, keys),
             rms_norm_tuples(ctx, shape, eps=eps, frac_bits=mlp_rho)]
    scores = config.n_heads * rows * keys
    exp_spec = neg_exp_compare_spec(ctx, scores)
    # one key (a one-position prompt's pass) is its own maximum: no material
    max_specs = [product_maximum_spec(scores, keys, fixed_point(ctx).frac_bits)
                 ] * config.n_layers if keys > 1 else []
    silu = [table_compare_spec(ctx, rows * config.ffn, SILU_ACCURATE, config.gate_bound(i),
                               SILU_SELECTION) for i in range(config.n_layers)]
    by_evaluators = [i for i, (_, ev) in enumerate(silu) if ev]
    opened = [i for i, (_, ev) in enumerate(silu) if not ev]
    head = [rms_norm_tuples(ctx, (head_rows, config.hidden), eps=eps)] if head_rows else []
    with ctx.scope("tuples"):
        got, exps, maxima, silu_ev, silu_opened = await ctx.gather(
            lambda c: prepare_segment_batches(c, [*layer * config.n_layers, *head],
                                              tuples=plan.candidate_tuples),
            lambda c: _offline(c, prepare_compare_batches, [exp_spec] * config.n_layers),
            lambda c: _offline(c, prepare_maximum_batches, max_specs),
            lambda c: _offline(c, functools.partial(prepare_compare_batches,
                                                    prepare=prepare_evaluator_compare),
                               [silu[i][0] for i in by_evaluators]),
            lambda c: _offline(c, prepare_compare_batches, [silu[i][0] for i in opened]))
    silu_made = dict(zip([*by_evaluators, *opened], [*silu_ev, *silu_opened], strict=True))
    return PassTuples(rows, keys, head_rows,
                      tuple(LayerTuples(*got[3 * i : 3 * i + 3], exps[i],
                                        maxima[i] if maxima else None, silu_made[i])
                            for i in range(config.n_layers)),
                      got[-1] if head else None)


async def _offline(ctx: Context, prepare: Callable[[Context, list[Any]], Awaitable[list[Any]]],
                   specs: list[Any]) -> list[Any]:
    """``prepare(ctx, specs)`` (a batched preparation of :mod:`.fastcmp`) in phase
    ``offline``."""
    with ctx.phase(OFFLINE_PHASE):
        return await prepare(ctx, specs)


async def forward(
    ctx: Context, model: SecureModel, one_hot: AShare, cache: SecureKVCache, *,
    all_positions: bool = False, pre: PassTuples | None = None,
    embedded: EmbedAhead | None = None, head: bool = True,
) -> ProductShare | None:
    """Logits (1, vocab) at the last of n new tokens (one-hot rows (n, vocab)), or (n, vocab)
    at every one of them if ``all_positions``: this party's 3-out-of-3 share of them,
    untruncated, for the client (:func:`lm_head`); without ``head``, None (a pass that only
    extends the cache: a long prompt's first positions).

    ``all_positions`` runs the final norm and the head on n rows instead of 1 (the head's
    product is local: no more messages or rounds, only its n x vocab shares to reveal). The
    tokens continue at position ``cache.length``; the cache is extended. ``pre``: the pass's
    offline material, made ahead (:func:`prepare_tuples` for this pass's rows, positions and
    head rows, else a ValueError); None: made at the start, beside the embedding, which the
    first norm then waits for (4 offline rounds against the embedding's 2). ``embedded``: P_0's
    embedding product made ahead (:func:`embed_ahead`), if any. Scopes:
    :func:`forward_scopes`. Raises ContextLengthError (before any message) if the cache plus
    the new tokens exceed the context length.
    """
    config = model.config
    n, start = one_hot.shape[0], cache.length
    if start + n > config.context_length:
        raise ContextLengthError(
            f"{start} cached + {n} new tokens exceed the context length {config.context_length}"
        )
    rope, plan = Rope.at(ctx, config, start, n), model.plan.for_rows(n)

    async def embed(c: Context) -> Stream:
        with c.scope("embed"):
            return await embed_tokens(c, model, one_hot, embedded)

    head_rows = n if all_positions else 1 if head else 0
    if pre is None:
        x, pre = await ctx.gather(
            embed, lambda c: prepare_tuples(c, config, plan, n, start + n, head_rows))
    elif (pre.rows, pre.keys, pre.head_rows) != (n, start + n, head_rows):
        raise ValueError(f"material for {pre.rows} rows at {pre.keys} positions, head on "
                         f"{pre.head_rows}; the pass has {n} at {start + n}, head on {head_rows}")
    else:
        x = await embed(ctx)
    for i, layer in enumerate(model.layers):
        with ctx.scope(f"layer{i}"):
            x = await decoder_layer(ctx, config, plan, layer, x, rope, cache, i,
                                    pre.layers[i])
    if not head:
        return None
    with ctx.scope("head"):
        rows = x if all_positions else x.rows(slice(n - 1, None))
        normed = await rms_norm(ctx, rows.x, model.final_norm, eps=config.rms_eps,
                                wide=rows.wide, pre=pre.head)
        probe(ctx, "final_norm", normed)
        logits = await lm_head(ctx, model, normed)
        probe(ctx, "logits", logits)
        return logits


__all__ = [
    "COMPONENTS", "NO_PROBE", "PROBE_POINTS", "TRADEOFFS", "EmbedAhead", "LayerPlan",
    "LayerProbe", "PassTuples", "Probe", "Rope", "SecureKVCache", "SecureLayer", "SecureModel",
    "SecureWeight", "Stored", "Stream", "apply_rope", "assemble_model", "attend", "attention",
    "causal_mask", "decoder_layer", "embed_ahead", "embed_tokens", "forward", "forward_scopes",
    "head_format", "layer_plan", "lm_head", "mlp", "norm_shift", "normalised_gate_up",
    "normalised_qkv", "normalises_input", "prepare_tuples", "probe", "residual_matmul",
    "stored_form", "weight_matmul", "weight_plan", "weight_tensors",
]

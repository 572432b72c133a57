"""The step handle: what a protocol step holds of its party, and the protocol kit around it.

A protocol step is ``async def step(ctx: Context, ...)``. All computing parties run the same
program (SPMD) and name every message by its *step path* — the parent's path plus the child
index, fixed when a child step is created — and a per-step sequence number. So the parties
agree on every message key whatever order Trio schedules tasks in, and independent steps run
concurrently (round overlapping) without any coordination.

The kit a protocol is written with:

- :class:`Context`: send and receive (:meth:`~Context.recv_arrays` checks every received
  array against its public :class:`ArraySpec`; a large message travels in pieces of a fixed
  size, :mod:`puma_async.pieces`; :meth:`~Context.recv_message` the message type), child
  steps (:meth:`~Context.gather`), scopes and phases for the statistics (phase ``offline``
  on a round clock of its own), PRG labels, and typed per-party state
  (:meth:`~Context.state`, :meth:`~Context.install`: keys, input seeds, the fixed-point
  format; one instance per type, as SPU's kernels ask ``ctx->getState<PrgState>()``).
- :data:`Step`: the type of a step function (what :meth:`~Context.gather` runs);
  :data:`Program` a role's whole program.
- :func:`protocol`: the decorator of a protocol boundary (``softmax``, ``rms_norm``,
  ``less_than``): each call runs in a child step of its own, inside a scope named after the
  protocol, so statistics read as protocol names. The child path is fixed when the protocol
  is *called*, as MPyC's ``mpc_coro`` forks its program counter at the call.

**Round clocks.** A step's ``clock`` counts the rounds on its causal path: a message is sent
in round ``clock + 1`` and receiving one of round r raises the clock to r. Beside the clock a
step keeps its ``source``, the received message that set it (its :data:`MessageId`; children
inherit it, :meth:`~Context.join` keeps the latest one's), so every message sent names its
*parent* and the statistics can walk the critical path back across the parties
(:mod:`puma_async.critical_path`). *Offline* work (``with ctx.phase(OFFLINE_PHASE)``:
material whose distribution and shape are public, such as dealt products and random bits,
which could be made before the input exists) runs on a clock of its own that starts at 0 and
is put aside when the phase ends: offline traffic is reported apart and never moves the
online clock, even when it is prepared inline beside online rounds.

The kit is kept in this one module (about 500 lines), beside the handle it extends, so that a
protocol author reads one file.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast, overload

import numpy as np
import trio

from puma_async import codec, pieces
from puma_async.codec import Arrays, Envelope, Message, StepPath, format_path
from puma_async.errors import ProtocolError, first_error
from puma_async.pieces import Joiner, plan_pieces, split_pieces
from puma_async.roles import role_name
from puma_async.stats import OFFLINE_PHASE, MessageId
from puma_async.workers import in_thread

if TYPE_CHECKING:
    from puma_async.runtime import PartyRuntime

T = TypeVar("T")
S = TypeVar("S")
M = TypeVar("M", bound=Message)
P = ParamSpec("P")

DEFAULT_PHASE = "online"
ENCODE_OFFLOAD_BYTES = 1 << 20
"""A message of this many payload bytes or more is encoded (copied into its frame) in a
worker thread, and a received piece this large copied into its arrays
(:class:`~puma_async.pieces.Joiner`) too, so that the event loop keeps moving heartbeats
and other frames."""

Step = Callable[["Context"], Awaitable[T]]
"""A protocol step: a coroutine function of its own :class:`Context` (``Step[AShare]``)."""
Program = Step[Any]
"""A role's whole program: the root step that :func:`~puma_async.runtime.run_party` runs."""


class Ready:
    """A step whose result is already known (material made ahead, a value that needs no
    message): :meth:`Context.gather` takes its child step path, so the other steps' paths
    and messages are those of the step it stands for, but runs no task for it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    async def __call__(self, ctx: Context) -> Any:
        return self.value


_RING_DTYPE = np.dtype(np.uint64)
_THREE_ITEMS = b"\x93"  # msgpack's header of an array of three items


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """The public dtype and shape of an array a step receives (shapes are public in MPC).

    ``ArraySpec.ring(n)`` is n ring elements (uint64), ``ArraySpec.of(np.uint8, (k,))`` any
    other whitelisted dtype; :meth:`Context.recv_arrays` refuses anything else. A dimension
    of None accepts any length (for the rare message whose length only the sender knows,
    such as a list of output shapes; the receiver cannot plan its pieces, so such a message
    must fit in one, :data:`~puma_async.pieces.PIECE_BYTES`).
    """

    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]

    @classmethod
    def of(cls, dtype: Any, shape: int | Sequence[int | None]) -> ArraySpec:
        if isinstance(shape, int) and cls is ArraySpec:  # the common case: made once
            return _flat_spec(dtype, shape)
        return cls(np.dtype(dtype), tuple(None if d is None else int(d) for d in shape))

    @classmethod
    def ring(cls, shape: int | Sequence[int | None]) -> ArraySpec:
        """Ring elements (or packed boolean words: both uint64) of ``shape``."""
        return cls.of(_RING_DTYPE, shape)

    def matches(self, array: np.ndarray) -> bool:
        if array.dtype != self.dtype:
            return False
        if array.shape == self.shape:  # every spec without a None dimension that matches
            return True
        return array.ndim == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, array.shape, strict=True)
        )

    def __str__(self) -> str:
        dims = ["*" if d is None else str(d) for d in self.shape]
        return f"{self.dtype} ({', '.join(dims)}{',' if len(dims) == 1 else ''})"


@functools.lru_cache(maxsize=4096)
def _flat_spec(dtype: Any, n: int) -> ArraySpec:
    """``ArraySpec.of(dtype, n)``, one instance per (dtype, n): specs are immutable, and a
    token's steps ask for a few hundred distinct ones thousands of times (1.3 -> 0.1 us)."""
    return ArraySpec(np.dtype(dtype), (int(n),))


class Context:
    """One protocol step's handle on its party: messages, child steps, scopes, labels, state.

    Attributes: ``role`` (this party's role id), ``path`` (the step path), ``clock`` (rounds on
    this step's causal path so far), ``source`` (the received message that set the clock, None
    while it is the clock the step started with at the root or offline).
    """

    def __init__(
        self,
        runtime: PartyRuntime,
        path: StepPath = (),
        *,
        clock: int = 0,
        source: MessageId | None = None,
        scope: tuple[str, ...] = (),
        phase: str = DEFAULT_PHASE,
    ):
        self.runtime = runtime
        self.path = path
        self.clock = clock
        self.source = source
        self.frontier = clock
        self._set_scope(scope)
        self._phase = phase
        self._children = 0
        self._send_seq: dict[int, int] = defaultdict(int)
        self._recv_seq: dict[int, int] = defaultdict(int)
        self._labels: dict[bytes, int] = defaultdict(int)
        self._label_head: bytes | None = None

    # -- identity ----------------------------------------------------------------------

    @property
    def role(self) -> int:
        return self.runtime.role

    @property
    def session(self) -> bytes:
        return self.runtime.session

    @property
    def scope_name(self) -> str:
        return self._scope_name

    @property
    def phase_name(self) -> str:
        """The phase this step's traffic is attributed to (:meth:`phase`)."""
        return self._phase

    @property
    def step_name(self) -> str:
        return format_path(self.path)

    # -- per-party state ---------------------------------------------------------------

    @overload
    def state(self, kind: type[S]) -> S: ...

    @overload
    def state(self, kind: type[S], default: S) -> S: ...

    def state(self, kind: type[S], default: S | None = None) -> S:
        """This party's instance of ``kind`` (set-up state shared by all steps: keys, seeds).

        Without one installed, ``default`` if given, else a :class:`ProtocolError` naming the
        missing set-up: the class's ``SETUP`` text (how to install it), if it has one.
        """
        value = self.runtime.states.get(kind)
        if value is not None:
            return cast(S, value)  # installed under its own type
        if default is not None:
            return default
        how = getattr(kind, "SETUP", f"install one with ctx.install({kind.__name__}(...))")
        raise ProtocolError(
            f"{kind.__name__} is not set up at {role_name(self.role)}: {how}", step=self.step_name
        )

    def install(self, value: object) -> None:
        """Make ``value`` this party's state of its type (replacing an earlier one)."""
        self.runtime.states[type(value)] = value

    # -- messages ----------------------------------------------------------------------

    async def send(self, to: int, message: Message) -> None:
        """Send ``message`` to role ``to`` as the next message of this step to that peer.

        The message is encoded before this returns (so later changes to its arrays do not
        matter; a large one in a worker thread, :data:`ENCODE_OFFLOAD_BYTES`), then handed to
        an in-process peer at once, or queued for the peer's writer task; an array message
        for a peer in this event loop is handed over decoded instead, its arrays copied
        (:meth:`~puma_async.runtime.PartyRuntime.enqueue`). It never waits for the peer.
        """
        nbytes = codec.message_nbytes(message)
        await self._enqueue(self._stamp(to, message, nbytes), nbytes)

    async def _enqueue(self, env: Envelope, nbytes: int) -> None:
        """Encode a stamped envelope and hand it to the runtime (:meth:`send`)."""
        if nbytes < ENCODE_OFFLOAD_BYTES:
            self.runtime.enqueue(env)
        else:
            frame = await in_thread(codec.encode_frame, [env])
            self.runtime.enqueue_frame(env.receiver, frame, env.path, env.seq)

    def _stamp(self, to: int, message: Message, nbytes: int) -> Envelope:
        """The envelope of the next message of this step to ``to``, accounted for (every
        send goes through here)."""
        seq = self._send_seq[to]
        self._send_seq[to] = seq + 1
        round_ = self.clock + 1
        runtime = self.runtime
        if round_ > self.frontier:
            self.frontier = round_
        runtime.stats.message(self._phase, self._scope_name, to, nbytes, round_, False)
        if runtime.stats.log is not None:
            runtime.stats.log_sent(
                to, self.path, seq, round_, self.source, self._phase, self._scope_name, nbytes
            )
        if runtime.observer is not None:
            runtime.observer(("send", to, self.path, seq), self._phase, self._scope_name)
        return Envelope(runtime.session, runtime.role, to, self.path, seq, round_, message)

    async def recv(self, frm: int) -> Message:
        """Receive the next message of this step from role ``frm`` (waits for as long as
        ``frm`` is alive)."""
        seq = self._recv_seq[frm]
        self._recv_seq[frm] = seq + 1
        key = (frm, self.path, seq)
        env = self.runtime.mailbox.take_ready(key)
        if env is None:  # not here yet: wait for it
            env = await self.runtime.mailbox.wait_for(key)
        if env.round > self.clock:
            self.clock = env.round
            self.source = (frm, self.role, self.path, seq)
            if env.round > self.frontier:
                self.frontier = env.round
        self.runtime.stats.message(
            self._phase, self._scope_name, frm, codec.message_nbytes(env.message), env.round,
            True,
        )
        if self.runtime.observer is not None:
            self.runtime.observer(("recv", *key), self._phase, self._scope_name)
        return env.message

    async def recv_message(self, frm: int, kind: type[M]) -> M:
        """:meth:`recv`, refusing any message that is not a ``kind`` (a protocol error)."""
        msg = await self.recv(frm)
        if not isinstance(msg, kind):
            raise ProtocolError(
                f"expected {kind.__name__}, got {type(msg).__name__}", peer=frm,
                step=self.step_name,
            )
        return msg

    async def send_arrays(self, to: int, *arrays: np.ndarray) -> None:
        """Send arrays (numpy scalars become 0-d arrays) as one :class:`Arrays` message, or,
        above :data:`~puma_async.pieces.PIECE_BYTES`, as consecutive messages of its pieces
        (:mod:`puma_async.pieces`: same step, same round; all stamped before the first is
        encoded, so their sequence numbers follow each other)."""
        message = tuple(map(np.asarray, arrays))
        nbytes = 0
        for array in message:
            nbytes += array.nbytes
        if pieces.travels_whole(nbytes):  # plan_pieces' own test, without making a plan
            await self._enqueue(self._stamp(to, Arrays(message), nbytes), nbytes)
            return
        plan = plan_pieces(message)
        assert plan is not None
        stamped = []
        for piece in split_pieces(message, plan):
            nbytes = sum(a.nbytes for a in piece)
            stamped.append((self._stamp(to, Arrays(piece), nbytes), nbytes))
        for env, nbytes in stamped:
            await self._enqueue(env, nbytes)

    async def recv_arrays(self, frm: int, *specs: ArraySpec) -> tuple[np.ndarray, ...]:
        """Receive one message of arrays of exactly ``specs`` (in pieces if its payload is
        above :data:`~puma_async.pieces.PIECE_BYTES`, as :meth:`send_arrays` sends it): as
        many arrays, each of its spec's dtype and shape, else a :class:`ProtocolError` naming
        the peer, the step, what was expected and what came (in pieces: the first piece's
        header of shapes, each piece's dtypes and lengths). A spec with a None dimension
        cannot be planned in pieces: its message must fit in one."""
        plan = plan_pieces(specs)
        if plan is None:
            return self._checked(frm, specs, (await self.recv_message(frm, Arrays)).arrays)
        joiner = Joiner(specs, plan)
        expected = ", ".join(map(str, specs))
        for k in range(len(plan)):
            want = tuple(ArraySpec.of(dtype, n) for dtype, n in joiner.expected(k))
            got = (await self.recv_message(frm, Arrays)).arrays
            shapes = joiner.foreign_shapes(got) if k == 0 else None
            if shapes is not None:
                raise ProtocolError(f"expected arrays [{expected}], got arrays of shapes "
                                    f"{', '.join(map(str, shapes))}", peer=frm,
                                    step=self.step_name)
            checked = self._checked(
                frm, want, got, f" (piece {k + 1} of {len(plan)} of [{expected}])")
            try:
                if sum(a.nbytes for a in checked) < ENCODE_OFFLOAD_BYTES:
                    joiner.put(k, checked)
                else:  # copied in a worker thread, as a large message is encoded
                    await in_thread(joiner.put, k, checked)
            except ValueError as exc:  # a header of nothing
                raise ProtocolError(f"expected arrays [{expected}], got {exc}", peer=frm,
                                    step=self.step_name) from None
        return joiner.arrays

    def _checked(self, frm: int, specs: Sequence[ArraySpec], arrays: tuple[np.ndarray, ...],
                 where: str = "") -> tuple[np.ndarray, ...]:
        """``arrays`` if they match ``specs``, else the :class:`ProtocolError` of
        :meth:`recv_arrays`."""
        if len(arrays) != len(specs) or not all(map(ArraySpec.matches, specs, arrays)):
            expected = ", ".join(map(str, specs)) or "nothing"
            got = ", ".join(f"{a.dtype} {a.shape}" for a in arrays) or "nothing"
            raise ProtocolError(
                f"expected arrays [{expected}]{where}, got [{got}]", peer=frm,
                step=self.step_name,
            )
        return arrays

    async def recv_array(self, frm: int, spec: ArraySpec) -> np.ndarray:
        """Receive one array of ``spec`` (:meth:`recv_arrays` with one spec)."""
        (array,) = await self.recv_arrays(frm, spec)
        return array

    # -- structure ---------------------------------------------------------------------

    def child(self, scope: str | None = None) -> Context:
        """A new child step (path = this path + next child index), starting at this clock, in
        this step's scope or in ``scope`` (a whole dotted name: work for a later scope, such
        as the next pass's material made during this one)."""
        index = self._children
        self._children += 1
        return Context(
            self.runtime, (*self.path, index), clock=self.clock, source=self.source,
            scope=self._scope if scope is None else tuple(scope.split(".")), phase=self._phase,
        )

    def raise_clock(self, clock: int, source: MessageId | None) -> None:
        """Move this step's clock up to ``clock`` (set by ``source``) if it is behind."""
        if clock > self.clock:
            self.clock, self.source = clock, source
        if clock > self.frontier:
            self.frontier = clock

    def join(self, children: Sequence[Context]) -> None:
        """Merge finished children's round clocks back into this step (and let the mailbox
        forget the keys they received)."""
        for c in children:
            self.raise_clock(c.clock, c.source)
            self.frontier = max(self.frontier, c.frontier)
            self.runtime.mailbox.forget(c.path)

    async def gather(self, *steps: Step[Any]) -> list[Any]:
        """Run independent steps concurrently, each in its own child step; their results.

        Child paths are fixed here, in argument order, before any of them starts, so all
        parties agree on them. Rounds of the whole equal those of the longest step. With the
        runtime's ``sequential`` switch on, the steps run one after the other instead (same
        messages; used to measure what overlapping saves); so does a single step, which has
        nothing to overlap with (no nursery: about 15 us less). A :class:`Ready` step takes its
        child path and gives its value without a task.
        """
        if self.runtime.options.sequential or len(steps) <= 1:
            return await self.run_sequentially(*steps)
        return await self.run_children([self.child() for _ in steps], steps)

    async def run_children(self, children: Sequence[Context], steps: Sequence[Step[Any]]
                           ) -> list[Any]:
        """:meth:`gather` in given children of this step (one per step, made by
        :meth:`child`, possibly earlier: in another scope than the current one), then
        :meth:`join` them; their results. With the ``sequential`` switch, one after the
        other, each from the clock the one before left (as :meth:`run_sequentially`)."""
        if self.runtime.options.sequential:
            results = []
            for child, step in zip(children, steps, strict=True):
                child.raise_clock(self.clock, self.source)
                results.append(await step(child))
                self.join([child])
            return results
        results: list[Any] = [None] * len(steps)
        live = []
        for i, step in enumerate(steps):
            if type(step) is Ready:
                results[i] = step.value
            else:
                live.append(i)

        async def run(i: int) -> None:
            results[i] = await steps[i](children[i])

        if len(live) == 1:  # nothing to overlap with: no nursery (about 20 us less)
            await run(live[0])
        elif live:
            try:
                async with trio.open_nursery() as nursery:
                    for i in live[1:]:
                        nursery.start_soon(run, i)
                    await run(live[0])  # in this task: one task spawn (~23 us) fewer
            except BaseExceptionGroup as group:
                raise first_error(group) from None
        self.join(children)
        return results

    async def run_sequentially(self, *steps: Step[Any]) -> list[Any]:
        """Like :meth:`gather` (same child paths and messages) but one after the other."""
        results = []
        for step in steps:
            child = self.child()
            results.append(await step(child))
            self.join([child])
        return results

    def _set_scope(self, scope: tuple[str, ...]) -> None:
        self._scope = scope
        self._scope_name = ".".join(scope)  # joined once: every message is accounted to it

    def scope(self, name: str) -> _Scope:
        """Attribute traffic, rounds and wall time inside to the nested scope ``outer.name``."""
        return _Scope(self, name)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute traffic and rounds inside to phase ``name`` ('setup', 'online',
        'offline'). Entering ``offline`` from another phase starts this step's own offline
        round clock at 0; leaving it restores the clock it had (module docstring)."""
        outer = self._phase
        fresh = name == OFFLINE_PHASE and outer != OFFLINE_PHASE
        saved = (self.clock, self.source, self.frontier)
        if fresh:
            self.clock = self.frontier = 0
            self.source = None
        self._phase = name
        try:
            yield
        finally:
            self._phase = outer
            if fresh:
                self.clock, self.source, self.frontier = saved

    def label(self, purpose: bytes = b"") -> bytes:
        """A label for a PRG draw, unique within the session and equal at every party.

        It names this step path, the purpose and how many labels of that purpose this step
        drew before; parties that share a key must draw the same labels in the same order
        within a step (child steps keep concurrent draws apart).
        """
        label = self.next_label(purpose)
        self._labels[purpose] += 1
        return label

    def next_label(self, purpose: bytes = b"") -> bytes:
        """The label the next :meth:`label` call for ``purpose`` returns, without drawing it:
        for work made ahead from a draw this step makes later (a new token's embedding from
        the client's input seeds: ``protocols.llama.embed_ahead``)."""
        if self._label_head is None:  # msgpack's [path, purpose, count], the path packed once
            self._label_head = _THREE_ITEMS + codec.packb(list(self.path))
        # [purpose, count] packed in one call, without its array header: the last two items
        return self._label_head + codec.packb((purpose, self._labels[purpose]))[1:]

    def fresh_key(self, size: int = 16) -> bytes:
        """A new secret key for this party (PRG keys, input seeds).

        Derived from the party's ``entropy`` (32 random bytes per run unless given) and a label
        of this step, so a party re-run from a trace with the same entropy draws the same keys.
        """
        return hashlib.blake2b(
            self.label(b"key"), key=self.runtime.entropy, digest_size=size
        ).digest()


CURRENT_STEP: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "puma_async_current_step", default=None)
"""The step whose scope the running Trio task entered last (:meth:`Context.scope`; tasks a
gather spawns start with their parent's): what :class:`~puma_async.scopetime.ScopeTimer`
reads to attribute the event loop's time to scopes, at no cost to code that does not look
(a set and a reset per scope entered)."""


class _Scope:
    """:meth:`Context.scope`'s context manager (a class: a third of a generator-based one's
    cost, and every protocol call enters one)."""

    __slots__ = ("_ctx", "_name", "_outer", "_start", "_started", "_token")

    def __init__(self, ctx: Context, name: str) -> None:
        self._ctx, self._name = ctx, name

    def __enter__(self) -> None:
        ctx = self._ctx
        self._outer = ctx._scope
        ctx._set_scope((*self._outer, *self._name.split(".")))
        self._start, self._started = ctx.clock, time.perf_counter()
        self._token = CURRENT_STEP.set(ctx)

    def __exit__(self, *exc: object) -> None:
        ctx = self._ctx
        CURRENT_STEP.reset(self._token)
        ctx.runtime.stats.scope_exit(
            ctx._phase, ctx._scope_name, ctx.frontier - self._start,
            time.perf_counter() - self._started,
        )
        ctx._set_scope(self._outer)


def protocol(
    fn: Callable[Concatenate[Context, P], Awaitable[T]],
) -> Callable[Concatenate[Context, P], Coroutine[Any, Any, T]]:
    """Make ``fn`` a protocol boundary: every call runs in a child step of the caller's step,
    inside the scope ``fn.__name__`` (statistics then read ``layer3.attn.softmax``).

    The child path is taken when ``fn`` is *called*, so a protocol's messages and PRG labels
    depend on the program's call order only, as MPyC's ``mpc_coro`` forks its program counter
    at the call. Use it at the boundaries a reader looks for, not on every helper: each
    boundary adds a level to the step paths and a scope to the statistics.
    """
    name = fn.__name__

    @functools.wraps(fn)
    def call(ctx: Context, /, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        child = ctx.child()
        return _run_child(ctx, child, name, fn(child, *args, **kwargs))

    return call


async def _run_child(parent: Context, child: Context, name: str, body: Awaitable[T]) -> T:
    """Await ``body`` (the protocol running in ``child``) in scope ``name``, then join."""
    child.raise_clock(parent.clock, parent.source)
    with child.scope(name):
        result = await body
    parent.join([child])
    return result


__all__ = [
    "CURRENT_STEP", "DEFAULT_PHASE", "ENCODE_OFFLOAD_BYTES", "OFFLINE_PHASE", "ArraySpec",
    "Context", "MessageId", "Program", "Ready", "Step", "protocol",
]

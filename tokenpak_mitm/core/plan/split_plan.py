"""Learning-planner planning split in two, so the heavy pure part can run in a worker process (pure).

`cache_insert.insert_markers(..., memory, now)` reads the proxy's planner memory twice
(`PrefixIndex.stats` on the prompt's boundary digests, the calibration's bytes per token) and
writes it once (`PrefixIndex.record`). Everything else (decoding, `json.loads`, `jsonscan`,
fingerprinting, choosing, splicing) is a pure function of the body, which is most of the cost of
a many-block prompt. The memory itself stays in the proxy's process. So:

1. ``prompt_digests(body, encoding)`` (worker): the boundary digests and the model.
2. The proxy looks those digests up (``PrefixIndex.stats``) and the model's bytes per token.
3. ``plan_with_snapshot(body, encoding, opts, snapshot, now)`` (worker): the unchanged
   `insert_markers` against a `Memory` that answers from the snapshot and, instead of writing,
   returns the `record` call it would have made.
4. The proxy makes that `record` call on its own index and puts the real `Recorded` in the ticket.

Given the same memory, the result is the one in-process planning gives (the same code decides;
tests/test_split_plan.py checks it). Between steps 2 and 4 another request may change the
memory, as it already may between `stats` and `record` when two plans run in threads.

OpenAI Chat Completions / Responses bodies (`openai_cache.insert_openai_breakpoint`, whose
`learning_planner.plan_openai` reads and writes the memory the same way) take the same steps:
``prompt_digests(body, encoding, api)`` and ``plan_openai_with_snapshot``.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from tokenpak_mitm.core.plan.cache_insert import CacheOptions, InsertResult, insert_markers, parse_decoded
from tokenpak_mitm.core.plan.learning_planner import Memory, Trailers
from tokenpak_mitm.core.plan.openai_cache import Api as OpenAIApi
from tokenpak_mitm.core.plan.openai_cache import insert_openai_breakpoint, parse_for_planner
from tokenpak_mitm.core.plan.prefix_index import DIGEST_BYTES, PrefixIndex, PrefixStats, Recorded, boundaries
from tokenpak_mitm.core.plan.token_estimate import TokenCalibration

__all__ = ["Digests", "RecordCall", "Snapshot", "apply_record", "apply_record_stepwise", "plan_openai_with_snapshot", "plan_with_snapshot", "prompt_digests", "take_snapshot", "trailer_drops"]

_NO_RECORD = Recorded((), None, None, None)


@dataclass(frozen=True)
class Digests:
    """Step 1's answer: the prompt's boundary digests, concatenated (one bytes object pickles fast)."""

    blob: bytes
    model: str | None

    def split(self) -> list[bytes]:
        b, n = self.blob, DIGEST_BYTES
        return [b[i:i + n] for i in range(0, len(b), n)]


@dataclass(frozen=True)
class Snapshot:
    """Step 2's answer: what the memory knows about those digests (`PrefixIndex.export_stats` records),
    and whether this client's next request drops a per-turn trailer (`Memory.trailers.drops` of the
    first digest; the prior, True, when not given)."""

    known: bytes
    bytes_per_token: float
    trailer_drops: bool = True


@dataclass(frozen=True)
class RecordCall:
    """The `PrefixIndex.record` call planning would have made (step 4 makes it on the real index)."""

    count: int  # digests recorded: those of step 1 (checked), or fewer: up to the end before a per-turn trailer
    now: float
    writes: Mapping[int, str]
    read: int | None
    known_end: int | None = None  # the deepest digest known when planning (`Trailers.confirm` is made with it)


def prompt_digests(body: bytes, content_encoding: str | None, api: Literal["anthropic"] | OpenAIApi = "anthropic") -> Digests | None:
    """The boundary digests `learning_planner.plan` (for ``api`` "anthropic") or `plan_openai` will
    look up (None: a body the planner is not given: not a JSON object; for OpenAI also too large,
    undecodable or naming no GPT-5.6+ model, as `insert_openai_breakpoint` decides)."""
    request = parse_decoded(body, content_encoding) if api == "anthropic" else parse_for_planner(body, content_encoding)
    if not isinstance(request, dict):
        return None
    model = request.get("model")
    return Digests(b"".join(b.digest for b in boundaries(request, api)), model if isinstance(model, str) else None)


def take_snapshot(memory: Memory, digests: Sequence[bytes], now: float) -> bytes:
    """The known stats of `digests` from `memory` (a caller may take them a slice at a time and join them)."""
    return memory.index.export_stats(digests, now)


def trailer_drops(memory: Memory, digests: Sequence[bytes]) -> bool:
    """`Snapshot.trailer_drops` for a prompt with these digests."""
    return memory.trailers.drops(digests[0]) if digests else True


def plan_with_snapshot(body: bytes, content_encoding: str | None, opts: CacheOptions, snapshot: Snapshot,
                       now: float) -> tuple[InsertResult, RecordCall | None]:
    """`insert_markers` with the learning planner answering from `snapshot`; never raises."""
    index = _SnapshotIndex(PrefixIndex.stats_from_export(snapshot.known))
    trailers = _SnapshotTrailers(snapshot.trailer_drops)
    result = insert_markers(body, content_encoding, opts, Memory(index, _FixedCalibration(snapshot.bytes_per_token), trailers), now)
    return result, None if index.call is None else replace(index.call, known_end=trailers.known_end)


def plan_openai_with_snapshot(body: bytes, content_encoding: str | None, api: OpenAIApi, snapshot: Snapshot,
                              now: float) -> tuple[InsertResult, RecordCall | None]:
    """`insert_openai_breakpoint` with the learning planner answering from `snapshot`; never raises."""
    index = _SnapshotIndex(PrefixIndex.stats_from_export(snapshot.known))
    result = insert_openai_breakpoint(body, content_encoding, api, memory=Memory(index, _FixedCalibration(snapshot.bytes_per_token)), now=now)
    return result, index.call


def apply_record(memory: Memory, digests: Digests, result: InsertResult, call: RecordCall | None) -> InsertResult:
    """Make the recorded call on the real memory; the result's ticket then carries the real `Recorded`."""
    for done in apply_record_stepwise(memory, digests.split(), result, call, step=max(1, call.count if call else 1)):
        if done is not None:
            return done
    raise AssertionError("unreachable")  # pragma: no cover


def apply_record_stepwise(memory: Memory, digests: Sequence[bytes], result: InsertResult, call: RecordCall | None,
                          step: int = 2048) -> Iterator[InsertResult | None]:
    """`apply_record` a slice of `step` digests per `next` (None until the last, which yields the result)."""
    if call is None or result.ticket is None:
        yield result
        return
    if len(digests) < call.count:
        raise ValueError("the planner fingerprinted other blocks than step 1")
    memory.trailers.confirm(digests, call.known_end)
    if call.count < len(digests):  # recorded up to its end before a per-turn trailer, as `learning_planner.plan` does
        memory.trailers.expect(digests[0], digests[call.count - 1], digests[call.count])
        digests = digests[:call.count]
    for recorded in memory.index.record_stepwise(digests, call.now, writes=call.writes, read=call.read, step=step):
        if recorded is None:
            yield None
        else:
            yield replace(result, ticket=replace(result.ticket, recorded=recorded))
            return


class _SnapshotIndex(PrefixIndex):
    """Answers `stats` from a snapshot; `record` is remembered, not done."""

    def __init__(self, known: Mapping[bytes, PrefixStats]) -> None:
        super().__init__()
        self._known = known
        self.call: RecordCall | None = None

    def stats(self, digests: Sequence[bytes], now: float) -> tuple[PrefixStats | None, ...]:
        known = self._known
        return tuple(known.get(d) for d in digests)

    def record(self, digests: Sequence[bytes], now: float, *, writes: Mapping[int, str] = {},
               read: int | None = None) -> Recorded:
        self.call = RecordCall(len(digests), now, dict(writes), read)
        return _NO_RECORD


class _SnapshotTrailers(Trailers):
    """Answers `drops` from the snapshot; remembers the `confirm` call (step 4 makes it), expects nothing."""

    def __init__(self, drops: bool) -> None:
        super().__init__()
        self._drops = drops
        self.known_end: int | None = None

    def drops(self, client: bytes) -> bool:
        return self._drops

    def expect(self, client: bytes, stable_end: bytes, trailer: bytes) -> None:
        return None

    def confirm(self, digests: Sequence[bytes], k: int | None) -> None:
        self.known_end = k


class _FixedCalibration(TokenCalibration):
    def __init__(self, bytes_per_token: float) -> None:
        super().__init__()
        self._bpt = bytes_per_token

    def bytes_per_token(self, model: str | None) -> float:
        return self._bpt

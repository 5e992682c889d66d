"""Byte-offset map of an Anthropic Messages request body, without re-serializing it.

Why: a cache marker must be *spliced* into the client's exact bytes (re-serializing
changes key order, number spelling and escapes, which breaks provider cache hits and
request signatures). `json.loads` tells us *what* the request says; this scanner tells
us *where* each relevant structure sits in the original bytes.

What is located (all offsets are byte offsets into the original body, ends exclusive):
the root value; every top-level key's value; the `tools` array elements; `system`
(its value, and its elements when it is an array); `messages` elements and, for each
message, its `content` value and (when an array) the content elements. For an OpenAI
Responses body, `scan(body, messages_key="input")` maps the `input` items the same way
(each item's `content` and its parts, or, for an item without `content`, its `output` when that
is an array: a `function_call_output` carrying content parts, as `prefix_index.item_content`
reads it); Chat Completions bodies use `messages` as is.

Semantics match `json.loads` exactly:
- grammar is RFC 8259 (whitespace is ` \\t\\n\\r`; numbers like `-0`, `1.0`, `1E+2`;
  `NaN`/`Infinity` are rejected, unlike Python's lenient default);
- duplicate keys: the LAST occurrence wins, as in `json.loads` (the earlier values are
  still validated, but their offsets are dropped);
- the body must be strict UTF-8 with no BOM.

Speed: linear. Everything runs on a latin-1 view of the bytes (one character per byte,
so string indices ARE byte offsets). Strings, the bulk of any large body, are skipped by
the `json` module's C string scanner or by possessive regexes; a value we do not need to
look inside (a content block, a tool definition, a tool's input schema...) is matched
whole by one strict regex when it nests at most 4 deep, and runs of such members are
consumed by one regex call. Python-level work is per recorded structure, never per
byte. Depth is unbounded: deeper values fall back to a walk with an explicit stack (no
recursion). Measured: ~50 MB of image/tool-output conversation in ~0.4 s.

That walk is the reference. `scan` first tries a faster one that walks only the mapped
containers in Python and skips every other value with the `json` module's C scanner (the one
`json.loads` runs): 0.25 ms instead of 1.1 ms for a 200 KB agent request. On anything it does not
accept (invalid JSON, nesting past C recursion) it hands over to the reference, so answers and
errors are the reference's (tests/test_jsonscan.py compares them on generated and mutated bodies).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from json.decoder import scanstring as _scan_string  # type: ignore[attr-defined]  # C-accelerated in CPython
from typing import Any, NamedTuple, cast

__all__ = ["JsonScanError", "Loc", "MessageLoc", "BodyMap", "scan", "scan_reference", "parse_and_scan", "one_pass_pays", "agrees_with", "block_locs"]


class JsonScanError(ValueError):
    """The body is not valid UTF-8 JSON. The only exception `scan` raises for bad input."""


class Loc(NamedTuple):
    """One JSON value in the body: bytes [start, end). (A NamedTuple: cheap to build by the thousand.)

    kind is "object", "array", "string" or "scalar" (number/true/false/null).
    For containers, `end - 1` is the offset of the closing `}` or `]`; `empty` says
    the container has no members (so an insertion there needs no leading comma).
    """

    start: int
    end: int
    kind: str
    empty: bool = False

    @property
    def close(self) -> int:
        """Offset of the last byte: the closing bracket, brace or quote."""
        return self.end - 1


class MessageLoc(NamedTuple):
    """A `messages[i]` element, its `content` value and the content elements (if an array)."""

    loc: Loc
    content: Loc | None
    blocks: tuple[Loc, ...] | None


@dataclass(frozen=True, slots=True)
class BodyMap:
    """Where the planner-relevant structures sit. Fields are None when absent or of another type."""

    root: Loc
    keys: Mapping[str, Loc]  # top-level key -> value (last duplicate wins); empty unless root is an object
    tools: tuple[Loc, ...] | None  # elements of `tools` when it is an array
    system: Loc | None  # the `system` value, whatever its type
    system_blocks: tuple[Loc, ...] | None  # elements of `system` when it is an array
    messages: tuple[MessageLoc, ...] | None  # elements of `messages` when it is an array


# Roles: what a container is, decided from its parent and key, so we only record what matters.
_NONE, _ROOT, _TOOLS, _SYSTEM, _MESSAGES, _MESSAGE, _CONTENT, _ELEMENT = range(8)
_ROOT_ARRAY_ROLES = {"tools": _TOOLS, "system": _SYSTEM, "messages": _MESSAGES}
_LIST_ROLES = (_TOOLS, _SYSTEM, _MESSAGES, _CONTENT)
_KEYED_ROLES = (_ROOT, _MESSAGE)  # objects whose member names we must read

# All quantifiers are possessive (`*+`): JSON tokens never need backtracking, and
# possessive loops keep `re` linear and several times faster on long runs.
_W = r"[ \t\n\r]*+"
_WS = re.compile(_W)
_STRING = r'"[^"\\\x00-\x1f]*+(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*+)*+"'
_NUMBER = r"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+"
_NON_STRING_SCALAR = re.compile(rf"{_NUMBER}|true|false|null")
_FAST_DEPTH = 4  # containers nested up to this depth are matched whole by one regex call


def _nested_value_pattern(depth: int) -> str:
    """A strict regex for any JSON value nested at most `depth` containers deep.

    Each member is followed by either `,` + the start of the next member or a lookahead
    for the closing bracket, so `[1,]`, `{"a":1,}` and missing commas are all rejected.
    """
    value = rf"(?:{_STRING}|{_NUMBER}|true|false|null)"
    for _ in range(depth):
        obj = rf'\{{{_W}(?:{_STRING}{_W}:{_W}{value}{_W}(?:,{_W}(?=")|(?=\}})))*+\}}'
        arr = rf"\[{_W}(?:{value}{_W}(?:,{_W}(?!\])|(?=\])))*+\]"
        value = rf"(?:{_STRING}|{_NUMBER}|true|false|null|{obj}|{arr})"
    return value


_SHALLOW_VALUE = _nested_value_pattern(_FAST_DEPTH - 1)
_SHALLOW_CONTAINER = re.compile(_nested_value_pattern(_FAST_DEPTH))
# "value ," repeated / "key : value ," repeated: a whole run of members in one C call.
# The trailing comma is required, so the last member is always left to the main loop.
_ARRAY_RUN = re.compile(rf"(?:{_W}{_SHALLOW_VALUE}{_W},)*+")
_OBJECT_RUN = re.compile(rf"(?:{_W}{_STRING}{_W}:{_W}{_SHALLOW_VALUE}{_W},)*+")
# These three patterns can match the empty string, so .match never returns None: typed as such
# (no per-call None check on the scanner's hot path).
_AlwaysMatch = Callable[[str, int], "re.Match[str]"]
_ws_match = cast(_AlwaysMatch, _WS.match)
_array_run = cast(_AlwaysMatch, _ARRAY_RUN.match)
_object_run = cast(_AlwaysMatch, _OBJECT_RUN.match)

_VALUE, _KEY, _AFTER = range(3)


def scan(body: bytes, messages_key: str = "messages") -> BodyMap:
    """Map `body`; raise JsonScanError if it is not valid UTF-8 JSON (never anything else).

    `messages_key` names the top-level array mapped as `messages` ("input" for OpenAI Responses).
    """
    text = _latin1_text(body)
    if _scan_value is not None:
        try:
            return _fast(text, messages_key)
        except _Fallback:
            pass  # anything unusual (invalid JSON, a value nested too deep for C): the reference walk decides
    return _reference(text, messages_key)


def scan_reference(body: bytes, messages_key: str = "messages") -> BodyMap:
    """`scan` by the reference walker alone (the fast path must always give the same answer; tests compare)."""
    return _reference(_latin1_text(body), messages_key)


def _latin1_text(body: bytes) -> str:
    """`body` checked to be UTF-8, as one character per byte (offsets in the text are byte offsets)."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise JsonScanError(f"expected bytes, got {type(body).__name__}")
    raw = bytes(body)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonScanError(f"invalid UTF-8 at byte {exc.start}") from None
    return raw.decode("latin-1")


def _reference(text: str, messages_key: str) -> BodyMap:
    try:
        return _Walk(text, messages_key).run()
    except JsonScanError:
        raise
    except (ValueError, IndexError) as exc:  # JSONDecodeError from the string scanner, or ran off the end
        raise JsonScanError(f"invalid JSON: {exc}") from None


# ---- the fast path -------------------------------------------------------------------------
# Only the few containers whose insides matter (the root, `tools`, `system`, the messages, their
# content) are walked in Python; every other value (a content block, a tool, a long string) is
# skipped by the `json` module's own C scanner, the one `json.loads` runs, so acceptance is
# json.loads's by construction (NaN/Infinity rejected through parse_constant). It builds the
# skipped value and drops it: ~1 GB/s against ~0.2 GB/s for the regexes. It never reports an
# error itself: on anything it does not accept it gives up (`_Fallback`) and the reference walk
# above, which is the specification, answers (rejects, or maps a value nested deeper than C
# recursion allows).


class _Fallback(Exception):
    pass


def _reject_constant(name: str) -> object:
    raise _Fallback(name)


def _c_scanner() -> Callable[[str, int], tuple[object, int]] | None:
    from json import scanner

    make = getattr(scanner, "c_make_scanner", None)
    if make is None:  # pragma: no cover - CPython always has it
        return None
    return cast(Callable[[str, int], tuple[object, int]], make(json.JSONDecoder(parse_constant=_reject_constant, strict=True)))


_scan_value = _c_scanner()
_KIND_BY_OPENER = {"{": "object", "[": "array", '"': "string"}


_WS_CHARS = " \t\n\r"
_new_loc = tuple.__new__


def _fast(s: str, messages_key: str, latin1: bool = True) -> BodyMap:
    """The map `_Walk` would give, or `_Fallback` (see above). IndexError (ran off the end) included."""
    return _fast_parse(s, messages_key, latin1)[1]


def _fast_parse(s: str, messages_key: str, latin1: bool) -> tuple[object, BodyMap]:
    """(the value, its map) of `s`, offsets being indexes into `s`; or `_Fallback`.

    On a latin-1 view (`latin1`) the strings in the value are mojibake (only the map is wanted).
    """
    try:
        return _FastWalk(s, messages_key, latin1).run()
    except IndexError:
        raise _Fallback from None


def _skip(s: str, i: int) -> tuple[Loc, int, object]:
    """A value we do not look inside, parsed by the C scanner: its Loc, end and value."""
    try:
        value, end = _scan_value(s, i)  # type: ignore[misc]
    except (StopIteration, ValueError, RecursionError):
        raise _Fallback from None
    c = s[i]
    if c == "{" or c == "[":
        j = i + 1
        if s[j] in _WS_CHARS:
            j = _ws_match(s, j).end()
        return _new_loc(Loc, (i, end, "object" if c == "{" else "array", j == end - 1)), end, value
    return _new_loc(Loc, (i, end, "string" if c == '"' else "scalar", False)), end, value


def _key(s: str, i: int, latin1: bool) -> tuple[str, int]:
    """A member name at `i` and the offset of its value (past the colon and whitespace)."""
    if s[i] != '"':
        raise _Fallback
    try:
        key, end = _scan_string(s, i + 1, True)
    except ValueError:
        raise _Fallback from None
    if latin1 and not key.isascii():
        key = json.loads(s[i:end].encode("latin-1"))
    if s[end] != ":":
        end = _ws_match(s, end).end()
        if s[end] != ":":
            raise _Fallback
    end += 1
    if s[end] in _WS_CHARS:
        end = _ws_match(s, end).end()
    return key, end


def _next(s: str, i: int, close: str) -> tuple[int, bool]:
    """After a member ending at `i`: (offset of the next member, False) or (offset past `close`, True)."""
    c = s[i]
    if c in _WS_CHARS:
        i = _ws_match(s, i).end()
        c = s[i]
    if c == ",":
        i += 1
        if s[i] in _WS_CHARS:
            i = _ws_match(s, i).end()
        return i, False
    if c == close:
        return i + 1, True
    raise _Fallback


def _list(s: str, start: int) -> tuple[Loc, int, tuple[Loc, ...], list[object]]:
    """An array whose elements are recorded (tools, system, content), and its value."""
    i = start + 1
    if s[i] in _WS_CHARS:
        i = _ws_match(s, i).end()
    if s[i] == "]":
        return _new_loc(Loc, (start, i + 1, "array", True)), i + 1, (), []
    items = []
    values = []
    while True:
        loc, i, value = _skip(s, i)
        items.append(loc)
        values.append(value)
        i, done = _next(s, i, "]")
        if done:
            return _new_loc(Loc, (start, i, "array", False)), i, tuple(items), values


class _FastWalk:
    __slots__ = ("s", "messages_key", "content_keys", "root_roles", "latin1")

    def __init__(self, text: str, messages_key: str, latin1: bool) -> None:
        self.s = text
        self.latin1 = latin1
        self.messages_key = messages_key
        self.content_keys = ("content",) if messages_key == "messages" else ("content", "output")
        self.root_roles = _ROOT_ARRAY_ROLES if messages_key == "messages" else {
            "tools": _TOOLS, "system": _SYSTEM, messages_key: _MESSAGES}

    def run(self) -> tuple[object, BodyMap]:
        s, latin1 = self.s, self.latin1
        i = _ws_match(s, 0).end()
        keys: dict[str, Loc] = {}
        tools = system_blocks = None
        system = None
        messages = None
        obj: object
        if s.startswith("{", i):
            start, roles, messages_key = i, self.root_roles, self.messages_key
            members: dict[str, object] = {}
            obj = members
            i += 1
            if s[i] in _WS_CHARS:
                i = _ws_match(s, i).end()
            if s[i] == "}":
                root, i = _new_loc(Loc, (start, i + 1, "object", True)), i + 1
            else:
                while True:
                    key, i = _key(s, i, latin1)
                    role = roles.get(key, _NONE) if s[i] == "[" else _NONE
                    items: tuple[Any, ...] | None = None
                    value: object
                    if role == _MESSAGES:
                        loc, i, items, value = self._messages(i)
                    elif role != _NONE:
                        loc, i, items, value = _list(s, i)
                    else:
                        loc, i, value = _skip(s, i)
                    keys[key] = loc
                    members[key] = value
                    if key == "tools":
                        tools = items
                    elif key == "system":
                        system, system_blocks = loc, items
                    elif key == messages_key:
                        messages = items
                    i, done = _next(s, i, "}")
                    if done:
                        root = _new_loc(Loc, (start, i, "object", False))
                        break
        else:
            root, i, obj = _skip(s, i)
        if _ws_match(s, i).end() != len(s):
            raise _Fallback
        return obj, BodyMap(root, keys, tools, system, system_blocks, messages)

    def _messages(self, start: int) -> tuple[Loc, int, tuple[MessageLoc, ...], list[object]]:
        s, content_keys, latin1 = self.s, self.content_keys, self.latin1
        i = start + 1
        if s[i] in _WS_CHARS:
            i = _ws_match(s, i).end()
        if s[i] == "]":
            return _new_loc(Loc, (start, i + 1, "array", True)), i + 1, (), []
        out = []
        values: list[object] = []
        while True:
            if s[i] != "{":
                loc, i, value = _skip(s, i)
                out.append(_new_loc(MessageLoc, (loc, None, None)))
                values.append(value)
            else:
                opened = i
                members: dict[str, object] = {}
                i += 1
                if s[i] in _WS_CHARS:
                    i = _ws_match(s, i).end()
                if s[i] == "}":
                    i += 1
                    out.append(_new_loc(MessageLoc, (_new_loc(Loc, (opened, i, "object", True)), None, None)))
                else:
                    content = output = None
                    while True:
                        key, i = _key(s, i, latin1)
                        if key in content_keys:
                            items = None
                            if s[i] == "[":
                                loc, i, items, members[key] = _list(s, i)
                            else:
                                loc, i, members[key] = _skip(s, i)
                            if key == "content":
                                content = (loc, items)
                            else:
                                output = (loc, items)
                        else:
                            i, members[key] = _skip(s, i)[1:]
                        i, done = _next(s, i, "}")
                        if done:
                            break
                    chosen = content or (output if output is not None and output[0].kind == "array" else None)
                    found, blocks = chosen or (None, None)
                    out.append(_new_loc(MessageLoc, (_new_loc(Loc, (opened, i, "object", False)), found, blocks)))
                values.append(members)
            i, done = _next(s, i, "]")
            if done:
                return _new_loc(Loc, (start, i, "array", False)), i, tuple(out), values


def parse_and_scan(body: bytes, messages_key: str = "messages") -> tuple[object, BodyMap] | None:
    """``(json.loads(body), scan(body))`` in one pass, or None when it cannot tell (then call both).

    json.loads as `cache_insert` runs it: strict UTF-8, NaN and Infinity rejected. The fast walk
    above run on the decoded text: every value the map points at is parsed once, by the C scanner
    the map is taken with, and the containers the walk records are assembled from those values in
    order (a repeated member name keeps its first place and its last value, as a dict does in
    json.loads). Offsets are then converted from characters to bytes (nothing to convert for an
    ASCII body). None on anything the fast walk hands over (invalid JSON, very deep nesting).
    """
    if _scan_value is None or not isinstance(body, bytes):
        return None  # pragma: no cover - CPython has the C scanner
    try:
        text = body.decode("utf-8")
        obj, body_map = _fast_parse(text, messages_key, latin1=False)
    except (UnicodeDecodeError, _Fallback):
        return None
    if len(text) != len(body):
        body_map = _in_bytes(body_map, text)
    return obj, body_map


def one_pass_pays(body: bytes) -> bool:
    """Whether `parse_and_scan` beats `json.loads` alone on `body` even when no map is needed.

    Its walk costs Python time per recorded structure: a body dense with small objects (more than
    256 in its first 64 KB: thousands of tiny messages) parses several times faster with json.loads.
    """
    return body.count(b"{", 0, 64 << 10) <= 256


def _in_bytes(body_map: BodyMap, text: str) -> BodyMap:
    """`body_map` with its character offsets into `text` made byte offsets into its UTF-8 encoding."""
    locs: list[Loc] = [body_map.root, *body_map.keys.values(), *(body_map.tools or ()), *(body_map.system_blocks or ())]
    if body_map.system is not None:
        locs.append(body_map.system)
    for m in body_map.messages or ():
        locs.append(m.loc)
        if m.content is not None:
            locs.append(m.content)
        locs.extend(m.blocks or ())
    at: dict[int, int] = {}
    chars = nbytes = 0
    for point in sorted({p for loc in locs for p in (loc.start, loc.end)}):
        nbytes += len(text[chars:point].encode("utf-8"))
        chars = point
        at[point] = nbytes

    def move(loc: Loc) -> Loc:
        return _new_loc(Loc, (at[loc.start], at[loc.end], loc.kind, loc.empty))

    def moved(locs: tuple[Loc, ...] | None) -> tuple[Loc, ...] | None:
        return None if locs is None else tuple(map(move, locs))

    return BodyMap(
        move(body_map.root), {k: move(v) for k, v in body_map.keys.items()}, moved(body_map.tools),
        None if body_map.system is None else move(body_map.system), moved(body_map.system_blocks),
        None if body_map.messages is None else tuple(
            _new_loc(MessageLoc, (move(m.loc), None if m.content is None else move(m.content), moved(m.blocks)))
            for m in body_map.messages),
    )


class _Frame:
    """An open container on the explicit stack."""

    __slots__ = ("is_object", "role", "start", "key", "items", "content", "output")

    def __init__(self, is_object: bool, role: int, start: int) -> None:
        self.is_object = is_object
        self.role = role
        self.start = start
        self.key: str | None = None  # current member name (only read for keyed roles)
        self.items: list[Any] | None = [] if role in _LIST_ROLES else None
        self.content: tuple[Loc, tuple[Loc, ...] | None] | None = None  # for messages
        self.output: tuple[Loc, tuple[Loc, ...] | None] | None = None  # for Responses items without content


class _Walk:
    def __init__(self, text: str, messages_key: str = "messages") -> None:
        self.s = text  # latin-1 view: index == byte offset
        self.messages_key = messages_key
        self.content_keys = ("content",) if messages_key == "messages" else ("content", "output")
        self.root_roles = _ROOT_ARRAY_ROLES if messages_key == "messages" else {
            "tools": _TOOLS, "system": _SYSTEM, messages_key: _MESSAGES}
        self.keys: dict[str, Loc] = {}
        self.tools: tuple[Loc, ...] | None = None
        self.system: Loc | None = None
        self.system_blocks: tuple[Loc, ...] | None = None
        self.messages: tuple[MessageLoc, ...] | None = None
        self.root: Loc | None = None

    def run(self) -> BodyMap:
        s, n, ws = self.s, len(self.s), _ws_match
        stack: list[_Frame] = []
        i = ws(s, 0).end()
        state = _VALUE
        while True:
            if state == _VALUE:
                top = stack[-1] if stack else None
                if top is not None and top.role == _NONE and not top.is_object:
                    i = ws(s, _array_run(s, i).end()).end()
                c = s[i] if i < n else ""
                if c == "{" or c == "[":
                    role = self._child_role(top, c, self.root_roles, self.content_keys)
                    if role == _NONE or role == _ELEMENT:  # nothing inside matters: try one regex call
                        m = _SHALLOW_CONTAINER.match(s, i)
                        if m is not None:
                            empty = ws(s, i + 1).end() == m.end() - 1
                            kind = "object" if c == "{" else "array"
                            self._complete(stack, None, i, m.end(), kind, empty)
                            i, state = m.end(), _AFTER
                            continue
                    frame = _Frame(c == "{", role, i)
                    stack.append(frame)
                    i = ws(s, i + 1).end()
                    if i < n and s[i] == ("}" if frame.is_object else "]"):
                        stack.pop()
                        i += 1
                        self._complete(stack, frame, frame.start, i, _kind(frame), True)
                        state = _AFTER
                    else:
                        state = _KEY if frame.is_object else _VALUE
                elif c == '"':
                    end = _scan_string(s, i + 1, True)[1]
                    self._complete(stack, None, i, end, "string")
                    i, state = end, _AFTER
                else:
                    m = _NON_STRING_SCALAR.match(s, i)
                    if m is None:
                        raise JsonScanError(f"expected a value at byte {i}")
                    self._complete(stack, None, i, m.end(), "scalar")
                    i, state = m.end(), _AFTER
            elif state == _KEY:
                top = stack[-1]
                if top.role not in _KEYED_ROLES:
                    i = ws(s, _object_run(s, i).end()).end()
                if i >= n or s[i] != '"':
                    raise JsonScanError(f"expected a member name at byte {i}")
                key, end = _scan_string(s, i + 1, True)
                if top.role in _KEYED_ROLES:
                    top.key = key if key.isascii() else json.loads(s[i:end].encode("latin-1"))
                i = ws(s, end).end()
                if i >= n or s[i] != ":":
                    raise JsonScanError(f"expected ':' at byte {i}")
                i = ws(s, i + 1).end()
                state = _VALUE
            else:  # _AFTER a complete value
                i = ws(s, i).end()
                if not stack:
                    if i != n:
                        raise JsonScanError(f"trailing data at byte {i}")
                    break
                top = stack[-1]
                c = s[i] if i < n else ""
                if c == ",":
                    i = ws(s, i + 1).end()
                    state = _KEY if top.is_object else _VALUE
                elif c == ("}" if top.is_object else "]"):
                    stack.pop()
                    i += 1
                    self._complete(stack, top, top.start, i, _kind(top))
                else:
                    raise JsonScanError(f"expected ',' or a closing bracket at byte {i}")
        assert self.root is not None
        return BodyMap(self.root, self.keys, self.tools, self.system, self.system_blocks, self.messages)

    @staticmethod
    def _child_role(parent: _Frame | None, opener: str, root_roles: Mapping[str, int] = _ROOT_ARRAY_ROLES,
                    content_keys: tuple[str, ...] = ("content",)) -> int:
        if parent is None:
            return _ROOT if opener == "{" else _NONE
        role = parent.role
        if role == _ROOT:
            return root_roles.get(parent.key, _NONE) if opener == "[" else _NONE  # type: ignore[arg-type]
        if role == _MESSAGES:
            return _MESSAGE if opener == "{" else _ELEMENT
        if role in (_TOOLS, _SYSTEM, _CONTENT):
            return _ELEMENT
        if role == _MESSAGE and parent.key in content_keys and opener == "[":
            return _CONTENT
        return _NONE

    def _complete(
        self, stack: list[_Frame], child: _Frame | None, start: int, end: int, kind: str, empty: bool = False,
    ) -> None:
        """Record a finished value into whatever its parent cares about (last duplicate wins)."""
        if not stack:
            self.root = Loc(start, end, kind, empty)
            return
        parent = stack[-1]
        role = parent.role
        if role == _NONE or role == _ELEMENT or (role == _MESSAGE and parent.key not in self.content_keys):
            return
        loc = Loc(start, end, kind, empty)
        if role == _ROOT:
            key = parent.key
            assert key is not None
            self.keys[key] = loc
            items = tuple(child.items) if child is not None and child.items is not None else None
            if key == "tools":
                self.tools = items
            elif key == "system":
                self.system, self.system_blocks = loc, items
            elif key == self.messages_key:
                self.messages = items
        elif role == _MESSAGES:
            chosen = None if child is None else child.content or (
                child.output if child.output is not None and child.output[0].kind == "array" else None)
            content, blocks = chosen or (None, None)
            parent.items.append(MessageLoc(loc, content, blocks))  # type: ignore[union-attr]
        elif role == _MESSAGE:
            items = tuple(child.items) if child is not None and child.items is not None else None
            if parent.key == "content":
                parent.content = (loc, items)
            else:  # "output", in a Responses item
                parent.output = (loc, items)
        else:  # _TOOLS, _SYSTEM, _CONTENT
            parent.items.append(loc)  # type: ignore[union-attr]


def _kind(frame: _Frame) -> str:
    return "object" if frame.is_object else "array"


_KIND_OF: dict[type, str] = {dict: "object", list: "array", str: "string"}


def _same_kind(value: object, loc: Loc | None) -> bool:
    return loc is not None and _KIND_OF.get(type(value), "scalar") == loc.kind


def _same_elements(values: list[Any], locs: tuple[Loc, ...] | None) -> bool:
    return locs is not None and len(values) == len(locs) and all(map(_same_kind, values, locs))


def agrees_with(obj: object, body_map: BodyMap, messages_key: str = "messages") -> bool:
    """Cross-check the scanner against `json.loads`: same keys, element counts and kinds.

    Any disagreement means one of the two views is wrong; callers must then leave the
    body alone rather than splice at an offset they cannot trust.
    """
    if not _same_kind(obj, body_map.root):
        return False
    if not isinstance(obj, dict):
        return True
    if set(obj) != set(body_map.keys) or not all(_same_kind(v, body_map.keys[k]) for k, v in obj.items()):
        return False
    tools, system, messages = obj.get("tools"), obj.get("system"), obj.get(messages_key)
    if isinstance(tools, list) != (body_map.tools is not None):
        return False
    if isinstance(tools, list) and not _same_elements(tools, body_map.tools):
        return False
    if isinstance(system, list) != (body_map.system_blocks is not None):
        return False
    if isinstance(system, list) and not _same_elements(system, body_map.system_blocks):
        return False
    if ("system" in obj) != (body_map.system is not None):
        return False
    if not isinstance(messages, list):
        return body_map.messages is None
    if body_map.messages is None or len(messages) != len(body_map.messages):
        return False
    for message, where in zip(messages, body_map.messages):
        if not _same_kind(message, where.loc):
            return False
        content, present = _content_of(message, messages_key)
        if isinstance(message, dict) and present != (where.content is not None):
            return False
        if content is not None and not _same_kind(content, where.content):
            return False
        if isinstance(content, list) != (where.blocks is not None):
            return False
        if isinstance(content, list) and not _same_elements(content, where.blocks):
            return False
    return True


def block_locs(body_map: BodyMap, addresses: Iterable[tuple[str, int | None, int | None]], api: str = "anthropic") -> list[Loc | None]:
    """The Loc of each prompt block, addressed as `prefix_index.prompt_blocks(request, api)` yields them.

    (section, message, block): ("tools", None, i); ("system", None, None) for a string system
    (OpenAI Responses: a string ``instructions``; Chat Completions has no system section, and a
    top-level ``system`` key there is not one), ("system", None, j); ("messages", i, j) for a part
    of a list content (``content``, or the ``output`` list of a Responses item without content),
    or ("messages", i, None) for a message's non-list content or, without content, the message
    (item) itself; a Responses string ``input`` is the one message it stands for. None where the
    map has no such value. `body_map` must agree with the request the addresses come from
    (`agrees_with`), scanned with that API's items key.
    """
    out: list[Loc | None] = []
    messages = body_map.messages
    openai = api != "anthropic"
    for section, message, block in addresses:
        loc: Loc | None = None
        if section == "tools":
            if body_map.tools is not None and block is not None and block < len(body_map.tools):
                loc = body_map.tools[block]
        elif section == "system":
            if openai:
                if block is None and api == "openai_responses":
                    loc = body_map.keys.get("instructions")
            elif block is None:
                loc = body_map.system if body_map.system is not None and body_map.system.kind == "string" else None
            elif body_map.system_blocks is not None and block < len(body_map.system_blocks):
                loc = body_map.system_blocks[block]
        elif message is not None:
            if messages is None:
                if api == "openai_responses" and message == 0 and block is None:
                    loc = body_map.keys.get("input")  # a string input: one user message
            elif message < len(messages):
                where = messages[message]
                if block is not None:
                    loc = where.blocks[block] if where.blocks is not None and block < len(where.blocks) else None
                else:
                    loc = where.content if where.content is not None else where.loc
        out.append(loc)
    return out


def _content_of(message: object, messages_key: str) -> tuple[object, bool]:
    """The value mapped as a message's content, and whether there is one (see ``scan``)."""
    if not isinstance(message, dict):
        return None, False
    if messages_key != "messages" and "content" not in message and isinstance(message.get("output"), list):
        return message["output"], True
    return message.get("content"), "content" in message

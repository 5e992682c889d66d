"""Any valid JSON spelling of a request, for properties that compare a fast path on the client's bytes
with the reference on the parsed value (prefix_index, request_shape, cache_insert)."""
from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import strategies as st

__all__ = ["BLOCKS", "MARKABLE", "REQUESTS", "TEXTS", "raw_threshold", "spell"]

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def spell(value: object, rnd: random.Random, canonical: bool) -> str:
    """JSON for `value`: canonical (json.dumps, compact, ensure_ascii=False) or any valid spelling
    (whitespace, \\u and \\/ escapes, upper-case hex, floats as exponents, -0, duplicate keys)."""
    if canonical:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def ws() -> str:
        return rnd.choice(["", "", "", " ", "\n", "\t "])

    def string(s: str) -> str:
        out = []
        for ch in s:
            roll = rnd.random()
            if roll < 0.15 and ord(ch) < 0x10000:
                out.append(("\\u%04x" if rnd.random() < 0.5 else "\\u%04X") % ord(ch))
            elif ch == "/" and roll < 0.5:
                out.append("\\/")
            elif ch in _SHORT:
                out.append(_SHORT[ch])
            elif ord(ch) < 0x20:
                out.append("\\u%04x" % ord(ch))
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'

    def render(v: object) -> str:
        if isinstance(v, dict):
            members = [f"{ws()}{string(k)}{ws()}:{ws()}{render(x)}{ws()}" for k, x in v.items()]
            if v and rnd.random() < 0.1:  # an earlier duplicate json.loads drops
                members.insert(0, f"{string(next(iter(v)))}:{render('shadowed')}")
            return "{" + (",".join(members) or ws()) + "}"
        if isinstance(v, list):
            return "[" + (",".join(f"{ws()}{render(x)}{ws()}" for x in v) or ws()) + "]"
        if isinstance(v, str):
            return string(v)
        if isinstance(v, float) and rnd.random() < 0.3:
            return f"{v:e}" if v == v else "0"
        if v == 0 and not isinstance(v, bool) and rnd.random() < 0.2:
            return "-0"
        return json.dumps(v)

    return render(value)


TEXTS = st.text(alphabet=st.characters(codec="utf-8"), max_size=30) | st.sampled_from(["", 'a "q" \\ / \n\t\x01 é ☃ 𝄞', "cache_control"])
_MARK = st.sampled_from([{"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}])
_SCALAR = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | TEXTS
_JSON = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXTS, inner, max_size=3), max_leaves=8)
_TEXT_BLOCK = st.builds(lambda t, m: {"type": "text", "text": t, **({"cache_control": m} if m else {})}, TEXTS, st.none() | _MARK)
BLOCKS = st.one_of(
    _TEXT_BLOCK,
    st.builds(lambda t: {"type": "input_text", "text": t}, TEXTS),
    st.builds(lambda i, x: {"type": "tool_use", "id": i, "name": "f", "input": x}, TEXTS, _JSON),
    st.builds(lambda i, c: {"type": "tool_result", "tool_use_id": i, "content": c}, TEXTS, TEXTS | st.lists(_TEXT_BLOCK, max_size=2)),
    st.builds(lambda c: {"type": "document", "source": {"type": "content", "content": c}}, st.lists(_TEXT_BLOCK, max_size=2)),
    _JSON,
)
REQUESTS = st.fixed_dictionaries(
    {"model": st.sampled_from(["claude-sonnet-4-6", "claude-opus-4-1"]),
     "messages": st.lists(st.one_of(
         st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": TEXTS | st.lists(BLOCKS, max_size=4)}),
         st.fixed_dictionaries({"role": st.just("user")}), TEXTS, _JSON), max_size=5)},
    optional={"tools": st.lists(st.builds(lambda n, d, x: {"name": n, "description": d, "input_schema": x}, TEXTS, TEXTS, _JSON) | _JSON, max_size=3),
              "system": TEXTS | st.lists(_TEXT_BLOCK | _JSON, max_size=3),
              "tool_choice": st.just({"type": "any"})},
)

# Requests the planner marks: well-formed Messages requests with a long prompt (big texts are
# repeated words, with escapes and non-ASCII, so both the fast and the slow paths show up).
_LONG = st.builds(lambda words, n: (" ".join(words) + " ") * n,
                  st.lists(st.sampled_from(["cache", "prefix", 'quote"d', "back\\slash", "line\n", "tab\t", "é", "☃", "/"]),
                           min_size=1, max_size=6), st.integers(400, 900))
_DICT_BLOCK = _TEXT_BLOCK | st.builds(lambda t: {"type": "text", "text": t}, _LONG) | st.builds(
    lambda i, c: {"type": "tool_result", "tool_use_id": i, "content": c}, TEXTS, TEXTS | _LONG | st.lists(_TEXT_BLOCK, max_size=2))
MARKABLE = st.fixed_dictionaries(
    {"model": st.sampled_from(["claude-sonnet-4-6", "claude-opus-4-1"]), "max_tokens": st.just(100),
     "system": _LONG | st.lists(st.builds(lambda t: {"type": "text", "text": t}, _LONG) | _TEXT_BLOCK, min_size=1, max_size=2),
     "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                                  "content": TEXTS | _LONG | st.lists(_DICT_BLOCK, min_size=1, max_size=3)}),
                          min_size=1, max_size=4)},
    optional={"tools": st.lists(st.builds(lambda n, d: {"name": n, "description": d, "input_schema": {"type": "object"}}, TEXTS, TEXTS | _LONG),
                                max_size=2)},
)


@contextmanager
def raw_threshold(size: int) -> Iterator[None]:
    """Use the client's bytes for blocks from `size` bytes up (default 512: the generated blocks are
    small, so properties set 0 to exercise the byte paths on every block)."""
    from tokenpak_mitm.core.account import request_shape
    from tokenpak_mitm.core.plan import cache_insert, openai_cache, prefix_index

    modules = (prefix_index, cache_insert, openai_cache, request_shape)
    saved = [m.RAW_MIN_BYTES for m in modules]
    for m in modules:
        m.RAW_MIN_BYTES = size  # type: ignore[misc]
    try:
        yield
    finally:
        for m, value in zip(modules, saved):
            m.RAW_MIN_BYTES = value  # type: ignore[misc]

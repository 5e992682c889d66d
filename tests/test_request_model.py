"""The model a request asks for, read from its body for rows whose response names none."""

from __future__ import annotations

import gzip
import json
import zlib

from hypothesis import given
from hypothesis import strategies as st

from tokenpak_mitm.core.request_model import PARSE_BELOW, request_model


def test_top_level_model_of_a_small_body_exactly():
    body = json.dumps({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": '{"model": "decoy"}'}]},
                                    {"role": "assistant", "content": [{"type": "tool_use", "input": {"model": "nested"}}]}],
                       "model": "claude-sonnet-4-6"}).encode()
    assert request_model(body) == "claude-sonnet-4-6"  # a nested "model" member is not the request's


def test_large_body_uses_the_first_model_member():
    body = b'{"model":"gpt-5","messages":[{"role":"user","content":"' + b"x" * (PARSE_BELOW + 10) + b'"}]}'
    assert request_model(body) == "gpt-5"


def test_compressed_bodies():
    body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 5}).encode()
    assert request_model(gzip.compress(body), "gzip") == "claude-haiku-4-5"
    assert request_model(zlib.compress(body), "deflate") == "claude-haiku-4-5"
    assert request_model(body, "br") is None  # not decoded: no unbounded work for a label
    bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024) + b"}")  # 64 MiB of whitespace
    assert request_model(bomb, "gzip") is None


def test_bodies_without_a_model():
    for body in (None, b"", b"not json", b"[1,2]", b'{"model": 5}', b'{"model": ""}', b"\xff\xfe"):
        assert request_model(body) is None


@given(st.binary(max_size=512), st.sampled_from([None, "gzip", "deflate", "identity", "zstd", "x"]))
def test_never_raises(body: bytes, encoding: str | None):
    result = request_model(body, encoding)
    assert result is None or isinstance(result, str)

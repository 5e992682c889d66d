"""Secrets by rule, not by list: header names, each repeated value, a user option, our own headers."""

from __future__ import annotations

import pytest

from tokenpak_mitm.core.redact import (
    PLACEHOLDER,
    is_secret_header,
    redact_text,
    secret_values,
)
from tokenpak_mitm.proxy.record_redact import redact_headers


@pytest.mark.parametrize("name", [
    "authorization", "X-Gateway-Token", "x-portkey-api-key", "x-session-signature", "X-Client-Secret",
    "cookie", "x-db-password", "x-amz-security-token", "x-goog-credential", "proxy-authorization", "apikey",
])
def test_a_name_that_suggests_a_credential_is_secret(name: str):
    assert is_secret_header(name) and is_secret_header(name.encode())


@pytest.mark.parametrize("name", ["content-type", "user-agent", "anthropic-version", "x-stainless-lang", "accept-encoding", "x-request-id"])
def test_ordinary_headers_are_not(name: str):
    assert not is_secret_header(name)


def test_our_own_session_headers_are_labels_not_secrets():
    assert not is_secret_header("x-tokenpak-session") and not is_secret_header("X-Tokenpak-Project")


def test_a_user_option_adds_names():
    assert not is_secret_header("x-corp-pass")
    assert is_secret_header("x-corp-pass", frozenset({"x-corp-pass"}))


def test_each_value_of_a_repeated_header_is_a_known_secret():
    known = secret_values([("x-api-key", "first-value-of-no-shape"), ("X-API-Key", "second-value-of-no-shape")])
    assert {"first-value-of-no-shape", "second-value-of-no-shape"} <= set(known)
    echoed = "bad keys: first-value-of-no-shape, second-value-of-no-shape"
    assert redact_text(echoed, known) == f"bad keys: {PLACEHOLDER}, {PLACEHOLDER}"


def test_a_joined_value_is_split_again():
    known = secret_values([("x-api-key", "first-value-of-no-shape, second-value-of-no-shape")])
    assert {"first-value-of-no-shape", "second-value-of-no-shape"} <= set(known)


def test_custom_header_values_and_bytes_fields():
    known = secret_values([(b"x-gateway-token", b"Bearer gw-abcdefgh-123"), (b"x-corp-pass", b"corp-pass-value")], extra=("x-corp-pass",))
    assert {"gw-abcdefgh-123", "corp-pass-value"} <= set(known)


def test_recorded_headers_are_redacted_field_by_field():
    fields = [(b"x-api-key", b"one-of-no-shape"), (b"x-api-key", b"two-of-no-shape"), (b"x-gateway-token", b"gw"), (b"x-tokenpak-session", b"label"), (b"content-type", b"application/json")]
    out, changed = redact_headers(fields)
    assert out == [(b"x-api-key", b"[REDACTED]"), (b"x-api-key", b"[REDACTED]"), (b"x-gateway-token", b"[REDACTED]"), (b"x-tokenpak-session", b"label"), (b"content-type", b"application/json")]
    assert changed == 3

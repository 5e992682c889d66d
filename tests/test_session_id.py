"""session_id: which session a request names itself as part of (headers and body alone)."""

from __future__ import annotations

import json

import pytest

from tokenpak_mitm.core.account.session_id import clean_id, identify

CC = "54c1eb09-bc4c-4d2f-98eb-6d2ab2d5e2fe"


def test_explicit_header_session_and_project_win():
    h = identify({"x-tokenpak-session": "run-7", "x-tokenpak-project": "billing", "x-claude-code-session-id": CC}, {}, "anthropic")
    assert (h.session_id, h.source, h.project) == ("run-7", "header", "billing")


def test_openai_identifiers():
    assert identify({}, {"prompt_cache_key": "conv-1"}, "openai_chat").session_id == "conv-1"
    assert identify({}, {"conversation": {"id": "conv_9"}}, "openai_responses").session_id == "conv_9"
    prev = identify({}, {"previous_response_id": "resp_1", "user": "alice@example.com"}, "openai_responses")
    assert prev.session_id is None and prev.previous_response_id == "resp_1" and "alice" not in prev.scope



@pytest.mark.parametrize(("user_id", "expected"), [
    (json.dumps({"device_id": "d", "account_uuid": "", "session_id": CC}), CC),
    (f"user_{'a' * 64}_account_acc-1_session_{CC}", CC),
    ("{not json", None),
    (json.dumps(["session_id", CC]), None),
    ("user_abc", None),
])
def test_claude_code_metadata_user_id_forms(user_id: str, expected: str | None):
    h = identify({}, {"metadata": {"user_id": user_id}}, "anthropic")
    assert h.session_id == expected and (h.source == "claude-code") == (expected is not None)


def test_the_header_beats_metadata_and_ids_are_cleaned():
    h = identify({"x-claude-code-session-id": "hdr-1"}, {"metadata": {"user_id": json.dumps({"session_id": CC})}}, "anthropic")
    assert h.session_id == "hdr-1"
    assert clean_id("  a b\x00c\n" + "x" * 300) == "abc" + "x" * 125
    assert clean_id("   ") is None and clean_id(42) is None


def test_lineage_scope_is_per_credential_and_user():
    a = identify({}, {"user": "alice"}, "openai_chat", "k1")
    b = identify({}, {"user": "bob"}, "openai_chat", "k1")
    assert a.session_id is None and a.scope != b.scope and a.scope.startswith("k1/")


def test_claude_code_project_is_the_working_directory_name_never_the_path():
    system = [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
              {"type": "text", "text": "Here is useful information about the environment you are running in:\n<env>\n"
                                       "Working directory: /Users/alice/src/tokenpak-mitm\nIs directory a git repo: Yes\n</env>"}]
    body = {"system": system, "metadata": {"user_id": json.dumps({"session_id": CC})}}
    h = identify({}, body, "anthropic")
    assert (h.session_id, h.project) == (CC, "tokenpak-mitm")
    assert identify({"x-tokenpak-project": "billing"}, body, "anthropic").project == "billing"  # the header wins
    assert identify({}, {"system": "Working directory: /x/y", "metadata": body["metadata"]}, "anthropic").project is None  # not in <env>


def test_claude_code_scope_is_the_account_so_a_refreshed_token_keeps_the_cache_history():
    meta = {"user_id": json.dumps({"device_id": "d", "account_uuid": "acc-1", "session_id": CC})}
    a = identify({}, {"metadata": meta}, "anthropic", "token-hash-1")
    b = identify({}, {"metadata": meta}, "anthropic", "token-hash-2")
    assert a.scope == b.scope and "acc-1" not in a.scope
    legacy = identify({}, {"metadata": {"user_id": f"user_{'a' * 64}_account_acc-1_session_{CC}"}}, "anthropic", "t")
    assert legacy.scope == a.scope
    no_account = {"user_id": json.dumps({"device_id": "d", "account_uuid": "", "session_id": CC})}
    assert identify({}, {"metadata": no_account}, "anthropic", "token-hash-1").scope == "token-hash-1"

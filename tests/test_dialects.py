"""A dialect is one registered object (core/dialects): the registry, the built-in four, and a toy
dialect that another package adds through an entry point, working end to end through a real
mitmdump, the store's writer process and the simulated provider without touching this package."""

from __future__ import annotations

import json
import sqlite3
import textwrap
import time
from pathlib import Path

import pytest

from tokenpak_mitm.core import dialects as registry
from tokenpak_mitm.core.dialects import dialect, dialects
from tokenpak_mitm.core.dialects.replies import Reply
from tokenpak_mitm.core.routes import classify, tracker_for
from tokenpak_mitm.sim.client import build_request, request
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.provider import FakeProvider

# A dialect of a provider API this package has never heard of: JSON in, JSON or SSE out, with its
# own usage words. Everything it needs is in this one module of another package.
TOY_MODULE = textwrap.dedent('''
    from __future__ import annotations
    import json
    from tokenpak_mitm.core.dialects.replies import Reply, sse_data, split_text
    from tokenpak_mitm.core.dialects.spec import Dialect, Endpoint, PromptLayout, Renderer
    from tokenpak_mitm.core.observe.tracker import Extract, decode_json, frame_json
    from tokenpak_mitm.core.observe.usage import Usage


    class ToyTracker:
        def __init__(self) -> None:
            self.extract = Extract()

        def _object(self, obj) -> bool:
            if not isinstance(obj, dict):
                return False
            self.extract.note_identity(obj)
            usage = obj.get("tally")
            if isinstance(usage, dict):
                self.extract.usage = Usage(input_tokens=usage.get("heard"), output_tokens=usage.get("said"))
                self.extract.usage_final = True
            if obj.get("done"):
                self.extract.terminal_seen = True
                self.extract.stop_reason = "done"
            if obj.get("piece"):
                self.extract.content_frames += 1
                return True
            return False

        def feed_frame(self, raw: bytes) -> bool:
            return self._object(frame_json(raw))

        def feed_body(self, body: bytes, status: int) -> None:
            self._object(decode_json(body))


    def _assemble(objs, out) -> None:
        for o in objs:
            if isinstance(o, dict) and isinstance(o.get("piece") or o.get("said"), str):
                out.text.append(o.get("piece") or o.get("said"))


    def _json(r: Reply) -> dict:
        return {"id": r.id, "model": r.model, "said": r.text, "done": True, "tally": dict(r.usage)}


    def _frames(r: Reply) -> list[bytes]:
        frames = [sse_data({"id": r.id, "model": r.model, "piece": p}) for p in split_text(r.text, r.text_deltas)]
        return frames + [sse_data({"id": r.id, "model": r.model, "done": True, "tally": dict(r.usage)})]


    DIALECT = Dialect(
        name="toy",
        provider="toyco",
        endpoints=(Endpoint("toy.speak", suffix="/v1/toy/speak"),),
        tracker=ToyTracker,
        layout=PromptLayout(items="lines", content="words"),
        cache=None,
        session_hint=None,
        assemble=_assemble,
        render=Renderer("toy", _json, _frames, lambda status, message: {"oops": message, "status": status},
                        lambda: sse_data({"oops": "overloaded"}), first_delta=0,
                        plain_usage=lambda heard, said: {"heard": heard, "said": said}),
    )
''')


@pytest.fixture
def toy_package(tmp_path: Path) -> Path:
    """An installed-looking package (module + dist-info with the entry point) on its own path entry."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_dialect.py").write_text(TOY_MODULE)
    info = site / "toy_dialect-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-dialect\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tokenpak_mitm.dialects]\ntoy = toy_dialect:DIALECT\n")
    return site


@pytest.fixture
def toy_registered(toy_package: Path, monkeypatch: pytest.MonkeyPatch):
    """The toy dialect loaded in this process through its entry point, as the proxy loads it."""
    monkeypatch.syspath_prepend(str(toy_package))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ORDERED", registry._ORDERED)
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    d = dialect("toy")
    assert d is not None, "the entry point was not loaded"
    return d


def test_the_builtin_dialects_are_registered_in_matching_order():
    assert [d.name for d in dialects()][:4] == ["anthropic", "openai_chat", "openai_responses", "gemini"]
    for d in dialects()[:4]:
        assert d.tracker().extract is not None
        reply = Reply(id="r1", model="m", text="hello there", usage={})
        assert d.render.frames(reply) and isinstance(d.render.json(reply), dict)


@pytest.mark.parametrize(("path", "name", "api", "billable"), [
    ("/v1/messages", "anthropic", "messages", True),
    ("/v1/messages/count_tokens", "anthropic", "messages.count_tokens", False),
    ("/openai/v1/chat/completions", "openai_chat", "chat.completions", True),
    ("/v1/responses", "openai_responses", "responses", True),
    ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", "gemini", "generate_content", True),
])
def test_routes_come_from_the_dialects_endpoints(path: str, name: str, api: str, billable: bool):
    route = classify("POST", "example.test", path, any_host=True)
    assert route is not None and (route.dialect, route.api, route.billable) == (name, api, billable)
    d = dialect(name)
    assert d is not None and type(tracker_for(route)) is type(d.tracker())


def test_a_plugin_cannot_replace_a_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    site = tmp_path / "site"
    site.mkdir()
    (site / "evil_dialect.py").write_text("from tokenpak_mitm.core.dialects.anthropic import DIALECT\n")
    info = site / "evil_dialect-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evil-dialect\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tokenpak_mitm.dialects]\nevil = evil_dialect:DIALECT\nbroken = no_such_module:DIALECT\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ORDERED", registry._ORDERED)
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    before = dialect("anthropic")
    assert len(dialects()) == 4
    assert dialect("anthropic") is before
    assert "would replace the built-in 'anthropic'" in caplog.text and "'broken'" in caplog.text


def test_the_toy_dialect_routes_tracks_and_views(toy_registered):
    route = classify("POST", "toy.example", "/v1/toy/speak", any_host=True)
    assert route is not None and route.dialect == "toy" and route.provider == "toyco"
    tracker = tracker_for(route)
    assert tracker is not None
    tracker.feed_body(b'{"id":"t1","model":"toy-1","said":"hi","done":true,"tally":{"heard":7,"said":2}}', 200)
    assert (tracker.extract.usage.input_tokens, tracker.extract.usage.output_tokens, tracker.extract.model) == (7, 2, "toy-1")


@pytest.mark.e2e
@pytest.mark.parametrize("stream", [False, True])
def test_a_toy_dialect_from_another_package_works_end_to_end(toy_registered, toy_package: Path, tmp_path: Path, stream: bool):
    """Nothing in tokenpak_mitm names the toy: its entry point is on the proxy's path, the fake
    provider renders it by its own renderer, and the row the writer process writes has its usage."""
    db = tmp_path / "t.db"
    with FakeProvider(text_deltas=4) as fake:
        proxy = MitmdumpProcess(f"reverse:{fake.url}", db=db, confdir=tmp_path / "conf", env={"PYTHONPATH": str(toy_package)})
        proxy.start()
        try:
            body = json.dumps({"model": "toy-1", "stream": stream, "lines": [{"words": "say something nice"}]}).encode()
            resp = request(proxy.port, build_request("POST", "/v1/toy/speak", body, [("content-type", "application/json")]))
            assert resp.status == 200
        finally:
            proxy.stop()
        sent = fake.received[-1]
        assert sent.route == "/v1/toy/speak" and sent.body == body  # forwarded untouched
    reply = resp.body
    if stream:
        assert reply.count(b"data: ") == 5 and b'"done":true' in reply
    else:
        assert json.loads(reply)["said"].startswith("Simulated reply")
    heard = json.loads(reply.split(b"data: ")[-1] if stream else reply)["tally"]["heard"]
    deadline = time.monotonic() + 10
    rows: list[tuple[object, ...]] = []
    while time.monotonic() < deadline and not rows:
        con = sqlite3.connect(db)
        rows = con.execute("SELECT provider, api, model, input_tokens, output_tokens, terminal_state, usage_source FROM requests").fetchall()
        con.close()
        time.sleep(0.05)
    assert rows == [("toyco", "toy.speak", "toy-1", heard, fake.sim.output_tokens, "completed", "final")]

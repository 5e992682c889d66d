"""The proxies a user would pick instead of tokenpak-mitm, run beside it when they are installed.

``make bench-peers`` installs each into its own virtualenv under ``bench/.peers/<name>`` from the
pinned list ``bench/peers/<name>.txt`` (never into our venv: their dependencies would change what
we measure and test). ``python -m bench`` finds the installed ones (:func:`detect`) and adds them
as extra interleaved setups after direct, plain and addon, each in front of the same upstream
process, for the workloads it can serve (:attr:`Peer.skips` says why not, and the table says so).

How each is pointed at the loopback upstream:

* **TokenPak** (PyPI ``tokenpak``): ``tokenpak serve`` routes Anthropic requests to
  ``https://api.anthropic.com`` and, when the target is not a provider host it knows, skips its
  own processing (logging, accounting, routing). So it keeps its target and
  ``tokenpak_launch.py`` redirects the connection only, at the httpx transport (like
  ``curl --connect-to``): TokenPak does all the work it does for the real API.
* **LiteLLM proxy** (``litellm[proxy]``): its Anthropic pass-through route ``/anthropic/...``
  forwards to ``ANTHROPIC_API_BASE``; a master key is set as in any deployment (the client's
  ``x-api-key`` is that key).

Each runs with a fresh ``HOME`` in the run's temporary directory and a minimal environment, so it
neither reads nor writes the user's files and sees no credential of the user's.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Child

__all__ = ["PEERS", "PEERS_DIR", "Peer", "detect", "hint", "start_peer"]

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE.parent / ".peers"  # bench/.peers/<name>: one venv per peer (gitignored)
BENCH_KEY = "bench"  # the x-api-key every bench request carries

# What a peer's process is started with: (argv, extra environment), given its venv, its port,
# the upstream's port.
Command = Callable[[Path, int, int], tuple[list[str], dict[str, str]]]


def _tokenpak(venv: Path, port: int, upstream: int) -> tuple[list[str], dict[str, str]]:
    return ([str(venv / "bin" / "python"), str(HERE / "tokenpak_launch.py"), "serve", "--port", str(port)],
            {"BENCH_UPSTREAM_PORT": str(upstream)})


def _litellm(venv: Path, port: int, upstream: int) -> tuple[list[str], dict[str, str]]:
    return ([str(venv / "bin" / "litellm"), "--host", "127.0.0.1", "--port", str(port)],
            {"ANTHROPIC_API_BASE": f"http://127.0.0.1:{upstream}", "ANTHROPIC_API_KEY": BENCH_KEY,
             # A deployment sets a master key; a short one needs this flag to start.
             "LITELLM_MASTER_KEY": BENCH_KEY, "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
             # The packaged price map, not a download at start (there is no network here).
             "LITELLM_LOCAL_MODEL_COST_MAP": "True"})


@dataclass(frozen=True)
class Peer:
    name: str  # the setup's key in results ("tokenpak-pypi"), distinct from our own "addon"
    label: str  # for people: "TokenPak (PyPI)"
    dist: str  # the distribution whose version is reported
    prefix: str  # path prefix the client puts before /v1/messages
    health: str  # a GET path that answers once the server is up
    command: Command
    skips: dict[str, str] = field(default_factory=dict)  # workload -> why this peer does not run it

    def venv(self, root: Path = PEERS_DIR) -> Path:
        return root / self.name.removesuffix("-pypi")

    def installed(self, root: Path = PEERS_DIR) -> bool:
        """``make bench-peers`` touches ``.installed`` only after pip succeeded."""
        v = self.venv(root)
        return (v / ".installed").exists() and (v / "bin" / "python").exists()

    def version(self, root: Path = PEERS_DIR) -> str:
        """The installed version, from the dist-info directory name (no interpreter start)."""
        want = self.dist.replace("-", "_").lower()
        for info in sorted(self.venv(root).glob("lib/python*/site-packages/*.dist-info")):
            name, _, version = info.name.removesuffix(".dist-info").rpartition("-")
            if name.lower() == want:
                return version
        return "?"


# TokenPak sits out the 1 GB stream: over a 64 MiB stream of 256 KiB deltas (``--quick``) it
# moved 1.2 MB/s, used 33 s of CPU and grew by 198 MB, so 1 GiB would take about 15 minutes.
# LiteLLM runs it (125 MB/s there; it keeps about the streamed size in memory while it streams).
_TOKENPAK_BULK = "1.2 MB/s and +198 MB RSS over a 64 MiB stream: 1 GiB would take ~15 min"

PEERS: tuple[Peer, ...] = (
    Peer("tokenpak-pypi", "TokenPak (PyPI)", "tokenpak", "", "/health", _tokenpak, {"bulk": _TOKENPAK_BULK}),
    Peer("litellm", "LiteLLM proxy", "litellm", "/anthropic", "/health/liveliness", _litellm),
)


def detect(root: Path = PEERS_DIR, peers: tuple[Peer, ...] = PEERS) -> tuple[list[Peer], list[Peer]]:
    """(installed, missing) peers under ``root``."""
    found = [p for p in peers if p.installed(root)]
    return found, [p for p in peers if p not in found]


def hint(missing: list[Peer]) -> str | None:
    """The one line a run prints when a peer is not installed; None when all are."""
    if not missing:
        return None
    names = ", ".join(p.label for p in missing)
    return f"peers not installed: {names}; `make bench-peers` installs them into bench/.peers/ and the next run adds them"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int, path: str) -> bool:
    """Whether an HTTP GET of ``path`` gets a status line (any status: the server is up)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n" % path.encode())
            return s.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def start_peer(peer: Peer, upstream_port: int, workdir: Path, root: Path = PEERS_DIR, timeout: float = 120.0) -> Child:
    """Start ``peer`` on a free loopback port in front of the upstream; wait (bounded) until it answers.

    Its output goes to ``workdir/<name>.log`` (a file, never a pipe nobody reads: a full pipe
    would stall the peer). Raises RuntimeError, the peer stopped, if it does not come up."""
    home = workdir / f"home-{peer.name}"
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    argv, extra = peer.command(peer.venv(root), port, upstream_port)
    env = {"PATH": f"{peer.venv(root) / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "PYTHONUNBUFFERED": "1", **extra}
    log = workdir / f"{peer.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=home, start_new_session=True)  # Ctrl-C reaches us; we stop it
    child = Child(peer.name, proc, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if _answers(port, peer.health):
            return child
        time.sleep(0.25)
    child.stop()
    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
    raise RuntimeError(f"{peer.label} did not start on :{port} within {timeout:.0f}s (exit {proc.poll()}): {tail}")


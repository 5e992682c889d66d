"""``tokenpak setup CLIENT``: the exact shell lines that route one client through the proxy.

The output is meant for ``eval "$(tokenpak setup python)"``: only ``export`` lines and ``#``
comments go to stdout, every value is shell-quoted, and messages go to stderr. Reverse mode is the
default because it needs no CA at all. Regular mode needs the client to trust the mitmproxy CA,
and the variables that do that differ per runtime: ``NODE_EXTRA_CA_CERTS`` *adds* a certificate,
while ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` *replace* the trust store, so
those get a combined bundle (certifi's roots + the mitmproxy CA) when ``--write-bundle`` asks for
one. Only the public certificate ``mitmproxy-ca-cert.pem`` is ever referenced or copied; the
private key (``mitmproxy-ca.pem``) never is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CLIENTS", "SetupOptions", "render", "write_bundle", "addon_script_path", "allow_hosts_pattern",
    "LLM_HOSTS", "CA_CERT_NAME", "add_arguments", "run",
]

CLIENTS = ("claude-code", "python", "node", "curl", "shell")
LLM_HOSTS = ("api.anthropic.com", "api.openai.com", "generativelanguage.googleapis.com")
CA_CERT_NAME = "mitmproxy-ca-cert.pem"  # public certificate: the only CA file clients may see
DEFAULT_CONFDIR = "~/.mitmproxy"
DEFAULT_BUNDLE_HINT = "~/.tokenpak/ca-bundle.pem"
# Reverse mode has one upstream per listener: OpenAI and Gemini get the next ports.
REVERSE_UPSTREAMS = (
    ("ANTHROPIC_BASE_URL", "https://api.anthropic.com", 0, ""),  # no /v1: SDKs append /v1/messages
    ("OPENAI_BASE_URL", "https://api.openai.com", 1, "/v1"),  # the OpenAI SDKs expect /v1 here
    ("GOOGLE_GEMINI_BASE_URL", "https://generativelanguage.googleapis.com", 2, ""),
)
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True, slots=True)
class SetupOptions:
    client: str
    host: str = "127.0.0.1"
    port: int = 8766
    mode: str = "reverse"
    confdir: Path = Path(DEFAULT_CONFDIR).expanduser()
    bundle: Path | None = None  # combined CA bundle written by --write-bundle

    @property
    def ca_cert(self) -> Path:
        return self.confdir / CA_CERT_NAME


def addon_script_path() -> str:
    """The package's ``mitmdump -s`` entry as an absolute path (present in a pip install too)."""
    from tokenpak_mitm.proxy.launch import SCRIPT

    return str(SCRIPT)


def allow_hosts_pattern(hosts: tuple[str, ...] = LLM_HOSTS) -> str:
    """``--allow-hosts`` regex: intercept TLS for LLM API hosts only, tunnel everything else."""
    return "^(" + "|".join(re.escape(h) for h in hosts) + "):443$"


def _mitmdump() -> str:
    """The mitmdump next to this interpreter (the project's venv), so the line runs as printed."""
    from tokenpak_mitm.proxy.launch import mitmdump_executable

    return mitmdump_executable()


def _export(name: str, value: str) -> str:
    return f"export {name}={shlex.quote(value)}"


def _proxy_command(opts: SetupOptions, modes: list[str]) -> str:
    parts = [_mitmdump(), "--listen-host", opts.host]
    if len(modes) == 1:
        parts += ["-p", str(opts.port)]
    for mode in modes:
        parts += ["--mode", mode]
    # mitmdump's own per-flow lines print full URLs (a Gemini ?key= included): keep them off, as make run does.
    parts += ["--set", "flow_detail=0", "-s", addon_script_path()]
    if opts.mode != "regular":
        parts += ["--set", "connection_strategy=lazy"]  # an unreachable upstream then gets a 502 and a row, as with tokenpak run
    if opts.mode == "regular":
        if opts.confdir != Path(DEFAULT_CONFDIR).expanduser():
            parts += ["--set", f"confdir={opts.confdir}"]
        parts += ["--allow-hosts", allow_hosts_pattern()]
    return " ".join(shlex.quote(p) for p in parts)


def _reverse_lines(opts: SetupOptions) -> list[str]:
    wanted = {
        "claude-code": ("ANTHROPIC_BASE_URL",),
        "node": ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"),
    }.get(opts.client, tuple(name for name, *_ in REVERSE_UPSTREAMS))
    upstreams = [u for u in REVERSE_UPSTREAMS if u[0] in wanted]
    lines = [f"# tokenpak setup {opts.client} --mode reverse: the client talks plain HTTP to the proxy; no CA is needed."]
    if len(upstreams) == 1:
        lines += ["# Start the proxy (or `make run`):", "#   " + _proxy_command(opts, [f"reverse:{upstreams[0][1]}"])]
    else:
        lines += [
            "# A reverse listener forwards to ONE upstream, so each provider needs its own listener/port:",
            "#   " + _proxy_command(opts, [f"reverse:{up}@{opts.port + off}" for _, up, off, _ in upstreams]),
        ]
    for name, _, offset, suffix in upstreams:
        lines.append(_export(name, f"http://{opts.host}:{opts.port + offset}{suffix}"))
    if opts.client == "claude-code":
        lines.append("# No trailing /v1: Claude Code appends /v1/messages itself.")
    if opts.client == "node":
        lines.append("# Gemini's JS SDK takes its base URL in code (httpOptions.baseUrl), not from the environment.")
    if opts.client == "curl":
        lines += [
            '# Then: curl "$ANTHROPIC_BASE_URL/v1/messages" -H "x-api-key: $ANTHROPIC_API_KEY" \\',
            "#   -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' -d @request.json",
        ]
    lines += [
        "# If HTTP_PROXY/http_proxy is set in this shell, also exempt the proxy: export NO_PROXY=127.0.0.1,localhost",
        "# Undo: unset " + " ".join(name for name, *_ in upstreams),
    ]
    return lines


def _regular_lines(opts: SetupOptions) -> list[str]:
    proxy_url = f"http://{opts.host}:{opts.port}"
    ca = str(opts.ca_cert)
    replacing = str(opts.bundle) if opts.bundle else ca
    lines = [
        f"# tokenpak setup {opts.client} --mode regular: HTTPS goes through the proxy, which decrypts LLM hosts only,",
        "# so the client must trust the mitmproxy CA. Start the proxy:",
        "#   " + _proxy_command(opts, ["regular"]),
        f"# The CA is created in {opts.confdir} on the proxy's first start. Clients get {CA_CERT_NAME} only;",
        "# the private key file beside it must stay private.",
    ]
    if not opts.ca_cert.is_file():
        lines.append(f"# NOTE: {ca} does not exist yet: start the proxy once to create it.")
    lines += [_export("HTTPS_PROXY", proxy_url), _export("https_proxy", proxy_url)]
    names: list[str] = ["HTTPS_PROXY", "https_proxy"]
    adds_ca = opts.client in ("claude-code", "node", "shell")
    replaces = {"python": ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"), "curl": ("CURL_CA_BUNDLE",),
                "shell": ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}.get(opts.client, ())
    if adds_ca:
        lines.append("# NODE_EXTRA_CA_CERTS ADDS the CA to Node's roots (read once at process start).")
        lines.append(_export("NODE_EXTRA_CA_CERTS", ca))
        names.append("NODE_EXTRA_CA_CERTS")
    if replaces:
        lines.append("# " + " / ".join(replaces) + " REPLACE the trust store:")
        if opts.bundle:
            lines.append(f"# {opts.bundle} = certifi's roots + the mitmproxy CA, so hosts that are tunnelled still verify.")
        else:
            lines.append("# with the CA alone, hosts that are not intercepted (tunnelled, NO_PROXY) fail verification.")
            lines.append(f"# For a combined bundle (certifi + mitmproxy CA) add: --write-bundle {DEFAULT_BUNDLE_HINT}")
        lines += [_export(name, replacing) for name in replaces]
        names += list(replaces)
    if opts.client == "node":
        lines.append("# Plain Node fetch ignores HTTPS_PROXY: use reverse mode for such tools.")
    lines.append("# Undo: unset " + " ".join(names))
    return lines


def _statusline_lines() -> list[str]:
    """How to wire ``tokenpak statusline`` into Claude Code (comments: the output is eval'd)."""
    exe = Path(sys.argv[0]) if sys.argv and Path(sys.argv[0]).name == "tokenpak" else None
    command = f"{exe.absolute()} statusline" if exe is not None and exe.is_file() else "tokenpak statusline"
    setting = json.dumps({"statusLine": {"type": "command", "command": command}})
    return [
        "# Status line (this session's cost and savings, cache hit ratio, last miss, how long the cache stays warm):",
        f"# add to ~/.claude/settings.json:  {setting}",
    ]


def render(opts: SetupOptions) -> str:
    lines = _reverse_lines(opts) if opts.mode == "reverse" else _regular_lines(opts)
    if opts.client == "claude-code":
        lines += _statusline_lines()
    return "\n".join(lines) + "\n"


def write_bundle(ca_cert: Path, dest: Path) -> int:
    """Write certifi's roots + the CA certificate(s) to ``dest``; returns the certificates added.

    Only ``CERTIFICATE`` PEM blocks are copied, so a key that ended up in the file never leaks.
    """
    import certifi  # a mitmproxy dependency

    blocks = _PEM_CERT.findall(ca_cert.read_bytes())
    if not blocks:
        raise ValueError(f"{ca_cert} holds no PEM certificate")
    roots = Path(certifi.where()).read_bytes().rstrip(b"\n")
    data = roots + b"\n\n# mitmproxy CA (tokenpak setup --write-bundle)\n" + b"\n".join(blocks) + b"\n"
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".ca-bundle.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)  # certificates are public; clients of other users may read them
    os.replace(tmp, dest)
    return len(blocks)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("client", choices=CLIENTS, help="which client to configure (shell = every variable)")
    parser.add_argument("--port", type=int, default=8766, help="proxy port (reverse mode: Anthropic's; OpenAI +1, Gemini +2)")
    parser.add_argument("--host", default="127.0.0.1", help="proxy listen host")
    parser.add_argument("--mode", choices=("reverse", "regular"), default="reverse", help="reverse (base URLs, no CA) or regular (HTTPS_PROXY + CA)")
    parser.add_argument("--confdir", default=DEFAULT_CONFDIR, help="mitmproxy confdir holding the CA (regular mode)")
    parser.add_argument("--write-bundle", metavar="PATH", help="regular mode: write certifi + mitmproxy CA to PATH and point the replacing CA variables at it")


def run(args: argparse.Namespace) -> int:
    confdir = Path(args.confdir).expanduser().absolute()
    bundle = Path(args.write_bundle).expanduser().absolute() if args.write_bundle else None
    opts = SetupOptions(client=args.client, host=args.host, port=args.port, mode=args.mode, confdir=confdir, bundle=bundle)
    if bundle is not None:
        if args.mode != "regular":
            print("tokenpak setup: --write-bundle only applies to --mode regular", file=sys.stderr)
            return 2
        if not opts.ca_cert.is_file():
            print(f"tokenpak setup: no mitmproxy CA at {opts.ca_cert} yet: start the proxy once "
                  "(make run MODE=regular) so mitmproxy creates its CA, then run this again", file=sys.stderr)
            return 2
        try:
            count = write_bundle(opts.ca_cert, bundle)
        except (OSError, ValueError) as e:
            print(f"tokenpak setup: cannot write the CA bundle: {e}\n"
                  f"  start the proxy once with --set confdir={confdir} to create the CA", file=sys.stderr)
            return 2
        print(f"tokenpak setup: wrote {bundle} (certifi roots + {count} mitmproxy CA certificate)", file=sys.stderr)
    sys.stdout.write(render(opts))
    return 0

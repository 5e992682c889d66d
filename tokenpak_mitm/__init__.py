"""tokenpak-mitm: a mitmproxy addon that inserts prompt-cache markers and logs exact LLM telemetry."""

__version__ = "0.1.0"

"""Test doubles for the providers' APIs, so tests, the conformance runner, the doctor and the
benchmarks get exact, reproducible traffic without a network or an API key:

* `upstream`: the one fake upstream, a loopback HTTP/1.1 server answering scripted bytes
  (chunk boundaries, pauses, resets, garbage).
* `dialects`: the thin dialect layer, one reply rendered as Anthropic Messages, OpenAI Chat
  Completions, OpenAI Responses or Gemini sends it (JSON or SSE).
* `provider`: the fake upstream answering all four dialects with usage from `cache_sim`, a pure
  prompt-cache model."""

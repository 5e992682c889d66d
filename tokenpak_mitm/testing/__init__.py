"""Test doubles for the Anthropic API: a pure prompt-cache model (`cache_sim`) and a
loopback HTTP upstream built on it (`fake_anthropic`), so tests and benchmarks get exact,
reproducible usage figures without a network or an API key."""

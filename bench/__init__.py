"""Benchmarks for tokenpak-mitm (run one with `python -m bench.<name>`)."""

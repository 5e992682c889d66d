# Two commands do everything on a fresh clone: `make run` and `make test`.
# Each creates or updates the virtualenv by itself (Python >= 3.12; .python-version selects 3.12 under pyenv).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
HOST    ?= 127.0.0.1
PORT    ?= 8766
MODE    ?= reverse:https://api.anthropic.com
# mitmdump's own per-flow lines print full URLs (a Gemini ?key= included); the addon prints its
# own redacted line per LLM request instead. FLOW_DETAIL=1 brings mitmdump's lines back.
FLOW_DETAIL ?= 0
# Quiet by default: the startup line, one line per LLM request, warnings and errors. QUIET=false
# brings back mitmproxy's per-connection lines (client connect/disconnect, "Streaming response from").
QUIET   ?= true
# In regular mode (HTTPS_PROXY) only the LLM API hosts are decrypted; other traffic is tunnelled
# untouched. EXTRA_HOSTS=gateway.corp.example,llm.local adds hosts (a company gateway, a local
# model server) to both the interception scope and the addon's LLM hosts (tokenpak_hosts).
# `make run MODE=regular SCOPE=` intercepts everything.
EXTRA_HOSTS ?=
SCOPE   ?= llm
ARGS    ?=
# Test workers (pytest-xdist). Whole files go to one worker (--dist loadfile), so a module's shared
# mitmdump is started once; every test uses OS-picked ports and its own temp dirs. WORKERS=0 runs
# everything in this process (e.g. with --pdb).
WORKERS ?= 2
XDIST   := $(if $(filter 0,$(WORKERS)),-p no:xdist,-n $(WORKERS) --dist loadfile)

.PHONY: run test test-fast check bench bench-peers venv lock clean

# Installs come from the committed lock files (requirements/*.txt, exact versions with hashes),
# so a fresh clone gets what CI tested. The proxy needs only run.txt; tests and benchmarks add dev.txt.
$(BIN)/python:
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "tokenpak-mitm needs Python >= 3.12 (mitmproxy 12); install it or set PY=python3.12")'
	$(PY) -m venv $(VENV)

$(RUN_STAMP): requirements/run.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements/run.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

$(DEV_STAMP): requirements/dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@ $(RUN_STAMP)

venv: $(DEV_STAMP)

# The proxy's command line has one definition, `tokenpak run` (tokenpak_mitm/cli/run.py), which a
# pip install without this Makefile uses too; these variables map to its options.
run: $(RUN_STAMP)
	$(BIN)/tokenpak run --host '$(HOST)' --port '$(PORT)' --mode '$(MODE)' --flow-detail '$(FLOW_DETAIL)' --quiet '$(QUIET)' \
		--extra-hosts '$(EXTRA_HOSTS)' $(if $(SCOPE),,--intercept-all) -- $(ARGS)

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q $(XDIST) $(ARGS)

# The unit subset (no mitmdump subprocesses; e2e tests are marked, see tests/conftest.py): make test-fast
test-fast: $(DEV_STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m 'not e2e' $(ARGS)

# Static gates: ruff, mypy --strict, import-linter layer contracts (the same script CI calls).
check: $(DEV_STAMP)
	BIN=$(BIN) .ci/checks

bench: $(DEV_STAMP)
	$(BIN)/python -m bench $(ARGS)

# The proxies a user would pick instead (TokenPak from PyPI, LiteLLM's proxy), for `make bench`
# only: each in its own venv under bench/.peers/ from the pinned list bench/peers/NAME.txt, never
# in ours. `make bench` adds the installed ones as extra setups (docs/performance.md, "Peers").
PEERS_DIR := bench/.peers
bench-peers: $(PEERS_DIR)/tokenpak/.installed $(PEERS_DIR)/litellm/.installed

$(PEERS_DIR)/%/.installed: bench/peers/%.txt
	rm -rf $(PEERS_DIR)/$*
	$(PY) -m venv $(PEERS_DIR)/$*
	$(PEERS_DIR)/$*/bin/python -m pip install -q --disable-pip-version-check -r $<
	@touch $@

# Refresh the lock files after changing dependencies in pyproject.toml (needs the dev venv). Keeps every
# existing pin; `make lock UPGRADE=--upgrade` also moves everything to the newest allowed versions.
UPGRADE ?=
LOCK_FLAGS := -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
lock: $(DEV_STAMP)
	$(BIN)/pip-compile $(LOCK_FLAGS) $(UPGRADE) --extra otel --extra team -o requirements/run.txt pyproject.toml requirements/build.in
	$(BIN)/pip-compile $(LOCK_FLAGS) $(UPGRADE) --extra otel --extra team --extra dev -c requirements/run.txt -o requirements/dev.txt pyproject.toml requirements/build.in

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis $(PEERS_DIR)

# Two commands do everything on a fresh clone: `make run` and `make test`.
# Each creates or updates the virtualenv by itself (Python >= 3.12; .python-version selects 3.12 under pyenv).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
HOST    ?= 127.0.0.1
PORT    ?= 8766
MODE    ?= reverse:https://api.anthropic.com
# mitmdump's own per-flow lines print full URLs (a Gemini ?key= included); the addon prints its
# own redacted line per LLM request instead. FLOW_DETAIL=1 brings mitmdump's lines back.
FLOW_DETAIL ?= 0
# In regular mode (HTTPS_PROXY) only the LLM API hosts are decrypted; other traffic is tunnelled
# untouched. `make run MODE=regular SCOPE=` intercepts everything.
LLM_HOSTS := ^(api\.anthropic\.com|api\.openai\.com|generativelanguage\.googleapis\.com):443$$
SCOPE   ?= $(if $(filter regular%,$(MODE)),--allow-hosts '$(LLM_HOSTS)')
ARGS    ?=

.PHONY: run test bench venv clean

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "tokenpak-mitm needs Python >= 3.12 (mitmproxy 12); install it or set PY=python3.12")'
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/mitmdump --listen-host $(HOST) -p $(PORT) --mode $(MODE) --set flow_detail=$(FLOW_DETAIL) $(SCOPE) -s addons/tokenpak.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

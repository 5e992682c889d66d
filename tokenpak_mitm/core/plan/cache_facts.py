"""Per-model prompt-cache facts: ONE table for the planner, the simulator, the savings tool and docs.

Pure data plus a lookup (no I/O, no mitmproxy). Every value carries its source in a comment.
Sources, abbreviated below:

* ``PF``  — the providers' prompt-caching, pricing and release-note pages as read in November 2026 (it wins
  over protocols.md where they differ).
* ``A-PC`` — Anthropic prompt-caching guide ("Cache limitations", "How automatic prefix checking
  works", "Mixing different TTLs"), quoted in protocols.md §1.5-1.7.
* ``A-PR`` — Anthropic pricing page, prompt-caching table (protocols.md §1.8).
* ``A-RN`` — Anthropic release notes (Opus 4.8 minimum lowered to 1,024 on 2026-05-28).
* ``O-PC`` — OpenAI prompt-caching guide (protocols.md §3.2); ``O-SDK`` the ``prompt_cache_options``
  docstring of the official SDKs ("Each request can write up to four breakpoints ... up to the
  latest 80 breakpoints in the conversation, without a content-block lookback limit ... The ttl
  defaults to 30m, which is currently the only supported value").
* ``G-PC`` — Google's Gemini context-caching page (2026-10), quoted in PF.
* ``OLD`` — older snapshots of A-PC's table for retired 3.x models (protocols.md §1.6 note).

Dollar prices are NOT here: ``pricing`` prices rows from genai-prices. The multipliers below are
ratios to the model's input price, used by the planner to decide whether a marker pays and by the
simulator and ``tokenpak savings`` to cost a replay (``input_price`` x multiplier).

Lookup (``facts_for``): the longest model-id prefix that matches, where what follows the prefix
may only be a date stamp, ``-latest``, or a platform suffix (``@20250514`` on Vertex, ``-v1:0``
on Bedrock); ``claude-opus-4-9`` does NOT match ``claude-opus-4``. Platform prefixes such as
``us.anthropic.`` are dropped. OpenAI models are matched by version number (GPT-5.6 and later
share one entry). An unknown model gets its provider's fallback entry, marked as an assumption.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, Literal

__all__ = [
    "ANTHROPIC",
    "FALLBACK",
    "GEMINI",
    "LOOKBACK_BLOCKS",
    "MAX_BREAKPOINTS",
    "OPENAI_GPT56",
    "OPENAI_LEGACY",
    "SECTION_PARAMETERS",
    "TTL_SECONDS",
    "CacheFacts",
    "Provider",
    "all_facts",
    "facts_for",
    "minimum_tokens",
    "missing_facts",
    "ttl_seconds",
]

Provider = Literal["anthropic", "openai", "gemini"]

# Lifetimes, counted from the start of the request that writes or reads the entry.
TTL_SECONDS: Final[Mapping[str, float]] = {
    "5m": 300.0,  # A-PC: default lifetime, "refreshed for no additional cost each time the cached content is used"
    "1h": 3600.0,  # A-PC: `"ttl": "1h"`
    "30m": 1800.0,  # O-SDK: prompt_cache_options.ttl "defaults to 30m, which is currently the only supported value"
}

MAX_BREAKPOINTS: Final = 4  # A-PC: "A maximum of 4 blocks with cache_control may be provided"; O-SDK: "up to four"
LOOKBACK_BLOCKS: Final = 20  # A-PC: "checks at most 20 positions per breakpoint, counting the breakpoint itself"


@dataclass(frozen=True, slots=True)
class CacheFacts:
    """What one model family's prompt cache does.

    minimum_tokens: below it nothing is cached and no error is returned.
    ttls: the TTL values a marker may carry, the default first ("" for none: implicit caching).
    write: input-price multiplier per TTL for a cache write ({} = writes are free).
    read: input-price multiplier for a cache read; None = genai-prices carries it per model.
    max_breakpoints: markers per request (0: the API takes none); the automatic one counts.
    lookback_blocks: block positions a read checks back from a breakpoint; None = unlimited.
    explicit_markers: the request can carry per-block markers.
    cached_granularity: reported cached tokens are rounded down to a multiple of this.
    """

    provider: Provider
    family: str
    minimum_tokens: int
    ttls: tuple[str, ...]
    write: Mapping[str, float] = field(default_factory=dict)
    read: float | None = 0.1
    max_breakpoints: int = MAX_BREAKPOINTS
    lookback_blocks: int | None = LOOKBACK_BLOCKS
    explicit_markers: bool = True
    cached_granularity: int = 1
    assumption: bool = False  # True when a value is a guess (fallback entries), not documented
    breakpoint_window: int | None = None  # the latest N breakpoints a read may match (None: not limited / not documented)

    def write_multiplier(self, ttl: str) -> float:
        """Input-price multiplier of a write with `ttl` (1.0 when writes are free)."""
        return self.write.get(ttl, 1.0)

    def read_multiplier(self) -> float:
        """Input-price multiplier of a read; 0.1 (the common case) when genai-prices owns the figure."""
        return 0.1 if self.read is None else self.read


_ANTHROPIC_WRITE: Final[Mapping[str, float]] = {"5m": 1.25, "1h": 2.0}  # A-PR: 5m write 1.25x, 1h write 2x
_ANTHROPIC_TTLS: Final = ("5m", "1h")  # A-PC: "5m" (default) or "1h"


def _claude(family: str, minimum: int, read: float = 0.1) -> CacheFacts:
    return CacheFacts("anthropic", family, minimum, _ANTHROPIC_TTLS, _ANTHROPIC_WRITE, read)


ANTHROPIC: Final[tuple[CacheFacts, ...]] = (
    # 512 tokens. PF: "512: Opus 5, Fable 5, Mythos 5 (third-party pages quoting the official one also
    # give 512 for the 5.5 / 5.1 generation: Opus 5.5, Sonnet 5.5, Haiku 5.5, Fable 5.1, Mythos 5.1)".
    _claude("claude-opus-5", 512),  # PF / A-PC: 512 list
    _claude("claude-fable-5", 512),  # PF / A-PC: 512 list
    _claude("claude-mythos-5", 512),  # PF / A-PC: 512 list
    _claude("claude-opus-5-5", 512, read=0.05),  # PF: "Opus 5.5 reads 0.05x"
    _claude("claude-sonnet-5-5", 512, read=0.05),  # PF: "Sonnet 5.5 reads cut to 0.05x in October 2026"
    _claude("claude-haiku-5-5", 512),  # PF (reads 0.1x; a long-prompt price tier above 100k is genai-prices')
    _claude("claude-fable-5-1", 512),  # PF
    _claude("claude-mythos-5-1", 512),  # PF
    # 1,024 tokens. A-PC table via PF; Opus 4.8 lowered from 2,048 on 2026-05-28 (A-RN).
    _claude("claude-opus-4-8", 1024),  # PF; lowered from 2,048 on 2026-05-28 (A-RN)
    _claude("claude-sonnet-5", 1024),  # PF / A-PC: 1,024 list
    _claude("claude-sonnet-4-6", 1024),  # PF / A-PC: 1,024 list
    _claude("claude-sonnet-4-5", 1024),  # PF / A-PC: 1,024 list
    _claude("claude-opus-4-1", 1024),  # PF / A-PC: 1,024 list
    _claude("claude-opus-4", 1024),  # PF / A-PC: 1,024 list
    _claude("claude-opus-4-0", 1024),  # PF / A-PC: 1,024 list (the -0 alias of the same model)
    _claude("claude-sonnet-4", 1024),  # PF / A-PC: 1,024 list
    _claude("claude-sonnet-4-0", 1024),  # PF / A-PC: 1,024 list (the -0 alias of the same model)
    _claude("claude-3-7-sonnet", 1024),  # OLD
    _claude("claude-3-5-sonnet", 1024),  # OLD
    _claude("claude-3-opus", 1024),  # OLD
    # 2,048 tokens. PF: "2,048: Opus 4.7, Mythos Preview"; Haiku 3.x: A-PC table / OLD.
    _claude("claude-opus-4-7", 2048),  # PF / A-PC: 2,048 list
    _claude("claude-mythos-preview", 2048),  # PF / A-PC: 2,048 list
    _claude("claude-3-5-haiku", 2048),  # OLD (A-PC table of earlier snapshots)
    _claude("claude-haiku-3-5", 2048),  # OLD (A-PC table of earlier snapshots)
    _claude("claude-3-haiku", 2048),  # OLD (A-PC table of earlier snapshots)
    # 4,096 tokens. PF: "4,096: Opus 4.6, Opus 4.5, Haiku 4.5".
    _claude("claude-opus-4-6", 4096),  # PF / A-PC: 4,096 list
    _claude("claude-opus-4-5", 4096),  # PF / A-PC: 4,096 list
    _claude("claude-haiku-4-5", 4096),  # PF / A-PC: 4,096 list
)

OPENAI_GPT56: Final = CacheFacts(
    "openai", "gpt-5.6+",
    minimum_tokens=1024,  # O-PC: "1,024 tokens for GPT-5.6 and later"
    ttls=("30m",),  # O-SDK: "defaults to 30m, which is currently the only supported value"
    write={"30m": 1.25},  # O-PC: "cache writes cost 1.25x the standard, uncached input-token rate"
    read=0.1,  # O-PC: "subsequent reads cost only 0.1x that rate"
    max_breakpoints=4,  # O-SDK: "Each request can write up to four breakpoints" (the implicit one uses one)
    lookback_blocks=None,  # O-SDK: "without a content-block lookback limit"
    breakpoint_window=80,  # O-SDK: a read matches "up to the latest 80 breakpoints in the conversation"
)
OPENAI_LEGACY: Final = CacheFacts(
    "openai", "gpt (before 5.6), o-series",
    minimum_tokens=1024,  # O-PC (older text): "enabled automatically for prompts that are 1024 tokens or longer"
    ttls=("",),  # O-PC: automatic, no markers; retention "in_memory" | "24h" is a request option
    write={},  # O-PC: before GPT-5.6 no cache-write fee
    read=None,  # O-PC: the model's "cached input" price (gpt-4o 0.5x, gpt-4.1/o3 0.25x, gpt-5 0.1x): genai-prices
    max_breakpoints=0,  # O-PC: "No request markers for models before GPT-5.6"
    lookback_blocks=None,
    explicit_markers=False,
    cached_granularity=128,  # O-PC: cached_tokens "rounding down to the nearest multiple of 128"
)
GEMINI: Final[tuple[CacheFacts, ...]] = (
    # G-PC via PF: implicit caching on by default for 2.5 and newer; no per-request markers.
    CacheFacts("gemini", "gemini-2.5", 2048, ("",), {}, None, 0, None, False),  # PF: "minimum 2,048 tokens for 2.5"
    CacheFacts("gemini", "gemini-3", 4096, ("",), {}, None, 0, None, False),  # PF: "4,096 for 3.x/4"
    CacheFacts("gemini", "gemini-4", 4096, ("",), {}, None, 0, None, False),  # PF: "4,096 for 3.x/4"
)

# Unknown models. Anthropic: 1,024, the most common documented minimum (an assumption; a marker on a
# prefix below the real minimum costs nothing: "no error is returned" and nothing is written, A-PC).
# Gemini: 4,096, the largest documented minimum (implicit caching: the figure only sizes estimates).
FALLBACK: Final[Mapping[Provider, CacheFacts]] = {
    "anthropic": CacheFacts("anthropic", "claude (unknown)", 1024, _ANTHROPIC_TTLS, _ANTHROPIC_WRITE, 0.1, assumption=True),
    "openai": OPENAI_LEGACY,
    "gemini": CacheFacts("gemini", "gemini (unknown)", 4096, ("",), {}, None, 0, None, False, assumption=True),
}

# What may follow a table prefix: a date stamp, an alias, or a platform suffix.
_SUFFIX = re.compile(r"(?:-\d{8})?(?:-latest)?(?:-v\d+(?::\d+)?)?(?:[@:].*)?", re.IGNORECASE)
_GPT_VERSION = re.compile(r"gpt-(\d+)(?:\.(\d+))?")
_BY_FAMILY: Final[Mapping[str, CacheFacts]] = {f.family: f for f in (*ANTHROPIC, *GEMINI)}


def all_facts() -> tuple[CacheFacts, ...]:
    """Every entry, for docs and tests."""
    return (*ANTHROPIC, OPENAI_GPT56, OPENAI_LEGACY, *GEMINI, *FALLBACK.values())


def facts_for(model: object, provider: Provider | None = None) -> CacheFacts:
    """The facts for `model` (provider inferred from the id when not given)."""
    return _facts_for(model if isinstance(model, str) else "", provider)


@lru_cache(maxsize=1024)  # model ids come from clients: bounded; the planner asks about 3 times a request
def _facts_for(model: str, provider: Provider | None) -> CacheFacts:
    name = model.lower()
    if provider is None:
        provider = "openai" if _GPT_VERSION.search(name) or re.match(r"o\d", name) else (
            "gemini" if "gemini" in name else "anthropic")
    if provider == "openai":
        found = _GPT_VERSION.search(name)
        if found and (int(found.group(1)), int(found.group(2) or 0)) >= (5, 6):
            return OPENAI_GPT56
        return OPENAI_LEGACY
    marker = "gemini-" if provider == "gemini" else "claude-"
    if marker in name:
        name = name[name.index(marker):]  # drops "anthropic." / "us.anthropic." / "models/" prefixes
        best: CacheFacts | None = None
        for family, facts in _BY_FAMILY.items():
            matches = name.startswith(family) and (provider == "gemini" or _SUFFIX.fullmatch(name, len(family)))
            if matches and (best is None or len(family) > len(best.family)):
                best = facts
        if best is not None:
            return best
    return FALLBACK[provider]


def missing_facts(model: object, provider: str | None = None) -> bool:
    """True for an Anthropic or Gemini model the table does not name (planned with the fallback's
    assumptions; ``tokenpak report`` lists them). OpenAI models all map to a documented entry.
    ``provider`` None: inferred from the id, as ``facts_for`` does."""
    if provider not in ("anthropic", "gemini", None) or not isinstance(model, str) or not model:
        return False
    return facts_for(model, provider).assumption  # type: ignore[arg-type]


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS: Final[Mapping[str, float]] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def ttl_seconds(value: object) -> float | None:
    """A TTL such as ``"30m"`` or ``"24h"`` (OpenAI's ``prompt_cache_options.ttl``,
    ``prompt_cache_retention``) in seconds; None when it is not one."""
    if isinstance(value, str):
        found = _DURATION.match(value)
        if found and int(found.group(1)) > 0:
            return int(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    return None


def minimum_tokens(model: object, provider: Provider | None = None) -> int:
    """The model's minimum cacheable prefix in tokens."""
    return facts_for(model, provider).minimum_tokens


# Request parameters folded into a section's fingerprint because changing them invalidates that
# section and everything after it. A-PC invalidation table via PF: "tool definitions -> everything;
# web search or citations toggled, `speed` -> system and messages; `tool_choice`,
# `disable_parallel_tool_use`, images present/absent -> messages; thinking parameters and
# `output_config.effort` -> messages always, tools/system on some models". Tool definitions and the
# web-search tool are the tools section itself. "tools/system on some models" is not modelled (the
# docs do not say which models): an assumption that errs toward predicting reads that may not happen
# only for those models when thinking settings change mid-conversation.
# Derived names: "citations" = some document block enables citations; "images" = some image block
# appears in the messages (nested ones included); "disable_parallel_tool_use" lives in tool_choice.
SECTION_PARAMETERS: Final[Mapping[str, tuple[str, ...]]] = {
    "tools": (),
    "system": ("speed", "citations"),
    "messages": ("tool_choice", "images", "thinking", "output_config.effort"),
}

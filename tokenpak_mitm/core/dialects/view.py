"""What mitmweb's view shows of a response, assembled by each dialect from the JSON objects of its
body (pure): the generated text, the reasoning text, the tool calls and the errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Assembled", "ToolCall"]


@dataclass(slots=True)
class ToolCall:
    name: str = ""
    arguments: str = ""
    id: str | None = None


@dataclass(slots=True)
class Assembled:
    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _streamed: dict[str, ToolCall] = field(default_factory=dict)  # stream index -> call

    def call(self, key: Any) -> ToolCall:
        """The streamed tool call at index ``key`` (created on first use)."""
        k = str(key)
        if k not in self._streamed:
            self._streamed[k] = ToolCall()
            self.tool_calls.append(self._streamed[k])
        return self._streamed[k]

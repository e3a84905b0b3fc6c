"""What a tool is to the run engine: a described function with a risk, an idempotency flag and a timeout.

A `ToolSpec` is what the model sees (name, description, JSON schema of the arguments) plus what the
engine needs to call it safely. A `ToolSource` lists and calls tools: the Python registry
(`sre.tools.registry`) and MCP servers (`sre.tools.mcp`) are the two kinds. A call returns the
tool's output as text, or raises `ToolError` with a message the model is given as the tool's result
(arguments that fail their schema, a timeout, a failure inside the tool). Nothing here touches the
store or the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Risk = Literal["low", "medium", "high"]
DEFAULT_TIMEOUT = 30.0


class ToolError(Exception):
    """A tool call that did not produce a result; `message` is given to the model as the tool's output.

    `code` is one of: invalid_arguments, timeout, tool_failed, unknown_tool, unavailable.
    """

    def __init__(self, message: str, *, code: str = "tool_failed") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    risk: Risk = "low"
    idempotent: bool = True  # safe to run again when a crash leaves its outcome unknown
    timeout: float = DEFAULT_TIMEOUT  # seconds
    source: str = "python"  # "python", or "mcp:LABEL"


class ToolSource(Protocol):
    """A place tools come from. `call` must honour `spec.timeout` (raising `ToolError(code="timeout")`)."""

    label: str

    async def list_tools(self) -> list[ToolSpec]: ...

    async def call(self, name: str, arguments: dict[str, Any], *, key: str) -> str:
        """Run the tool; `key` is the call's exactly-once key (run, step, call id), which a tool that
        talks to an outside system may pass on as an idempotency key."""
        ...

    async def aclose(self) -> None: ...

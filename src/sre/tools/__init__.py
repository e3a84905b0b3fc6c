"""Tools: what an agent can do besides talking. The Python registry of server-side tools, MCP servers
as tool sources, and the approval policy. Below the engine; knows nothing of the store."""

from sre.tools.base import ToolError, ToolSource, ToolSpec
from sre.tools.registry import ToolRegistry, default_registry, tool

__all__ = ["ToolError", "ToolRegistry", "ToolSource", "ToolSpec", "default_registry", "tool"]

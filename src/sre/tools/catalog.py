"""The tools a runtime offers agents: its Python registry and its configured MCP servers.

`check` validates an agent's server and MCP tool references when the agent is written (an unknown
name is a 400); `resolve` turns them into the named tools a run may call, listing MCP servers' tools
(each server connects on first use). The model sees a tool by its own name; two sources offering the
same name to one agent is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sre.tools.base import ToolError, ToolSource, ToolSpec
from sre.tools.registry import ToolRegistry
from sre.types.agents import MCPToolParam, ServerToolParam
from sre.types.errors import InvalidRequest, ModelError
from sre.types.requests import FunctionToolParam

AgentToolRef = FunctionToolParam | ServerToolParam | MCPToolParam


@dataclass(frozen=True)
class BoundTool:
    spec: ToolSpec
    source: ToolSource


class ToolCatalog:
    def __init__(self, registry: ToolRegistry, mcp: dict[str, ToolSource] | None = None) -> None:
        self.registry = registry
        self.mcp = dict(mcp or {})

    def check(self, refs: Sequence[AgentToolRef], param: str = "tools") -> None:
        for index, ref in enumerate(refs):
            if isinstance(ref, ServerToolParam) and ref.name not in self.registry.tools:
                known = ", ".join(sorted(self.registry.tools)) or "none"
                raise InvalidRequest(
                    f"Invalid value for '{param}[{index}].name': there is no server-side tool "
                    f"'{ref.name}' (registered: {known}).",
                    param=f"{param}[{index}].name",
                    code="unknown_tool",
                )
            if isinstance(ref, MCPToolParam) and ref.server_label not in self.mcp:
                known = ", ".join(sorted(self.mcp)) or "none"
                raise InvalidRequest(
                    f"Invalid value for '{param}[{index}].server_label': no MCP server "
                    f"'{ref.server_label}' is configured (configured: {known}).",
                    param=f"{param}[{index}].server_label",
                    code="unknown_tool",
                )

    async def resolve(self, refs: Sequence[AgentToolRef]) -> dict[str, BoundTool]:
        self.check(refs)
        bound: dict[str, BoundTool] = {}
        for ref in refs:
            found: list[BoundTool] = []
            if isinstance(ref, ServerToolParam):
                found.append(BoundTool(self.registry.tools[ref.name].spec, self.registry))
            elif isinstance(ref, MCPToolParam):
                source = self.mcp[ref.server_label]
                try:
                    specs = await source.list_tools()
                except ToolError as exc:
                    raise ModelError(
                        f"MCP server '{ref.server_label}' is unavailable: {exc.message}",
                        code="tool_source_unavailable",
                    ) from None
                allowed = None if ref.allowed_tools is None else set(ref.allowed_tools)
                found.extend(BoundTool(s, source) for s in specs if allowed is None or s.name in allowed)
            for tool in found:
                if tool.spec.name in bound:
                    raise InvalidRequest(
                        f"Two of the agent's tool sources offer a tool named '{tool.spec.name}'.",
                        param="tools",
                        code="duplicate_tool",
                    )
                bound[tool.spec.name] = tool
        return bound

    async def aclose(self) -> None:
        for source in self.mcp.values():
            await source.aclose()

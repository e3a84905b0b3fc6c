"""Agent definitions: what a platform team declares about an agent, validated strictly.

`AgentDefinition` is the body of `POST /v1/agents` and, without its name and with a
`schema_version`, the JSON that each stored version keeps; `UpdateAgent` is the body of
`POST /v1/agents/{name}`, whose fields replace those of the newest version. An agent's tools are
client-side function tools (as in the Responses API), server-side tools by name (`{"type": "server"}`)
and the tools of a configured MCP server (`{"type": "mcp"}`); its limits, approval policy and
concurrency policy bound and shape each run. Whether the model and the tools exist is checked by the
runtime, which knows what is configured; this module does no I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sre.types.context import ContextPolicy
from sre.types.errors import InvalidField, InvalidRequest
from sre.types.items import validate_metadata
from sre.types.requests import FunctionToolParam

AGENT_SCHEMA_VERSION = 2  # 2: `context` and `compaction_model` (version 1 had neither: defaults)
MAX_AGENT_VERSION = 2**31 - 1  # versions are 32-bit integers in the store
NAME_PATTERN = r"^[a-zA-Z0-9_-]+$"
MAX_TOOLS = 128

_STRICT = ConfigDict(extra="forbid", strict=True)
AgentName = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]
ToolName = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]
Instructions = Annotated[str, Field(max_length=256_000)]
ModelName = Annotated[str, Field(min_length=1, max_length=200)]
Concurrency = Literal["reject", "enqueue", "interrupt"]


class ServerToolParam(BaseModel):
    """A server-side tool from the runtime's registry, by name."""

    model_config = _STRICT
    type: Literal["server"]
    name: ToolName


class MCPToolParam(BaseModel):
    """The tools of an MCP server configured in the runtime (`[mcp_servers.LABEL]`)."""

    model_config = _STRICT
    type: Literal["mcp"]
    server_label: ToolName
    allowed_tools: Annotated[list[ToolName], Field(max_length=MAX_TOOLS)] | None = None


AgentTool = Annotated[FunctionToolParam | ServerToolParam | MCPToolParam, Field(discriminator="type")]
Tools = Annotated[list[AgentTool], Field(max_length=MAX_TOOLS)]


def tool_key(tool: FunctionToolParam | ServerToolParam | MCPToolParam) -> str:
    return f"mcp:{tool.server_label}" if isinstance(tool, MCPToolParam) else tool.name


def _metadata(value: object) -> dict[str, str]:
    try:
        return validate_metadata(value)
    except InvalidRequest as exc:
        raise InvalidField(exc.message, param=exc.param, code=exc.code) from None


def _distinct_tools(tools: list[FunctionToolParam | ServerToolParam | MCPToolParam]) -> None:
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        key = tool_key(tool)
        if key in seen:
            field = "server_label" if isinstance(tool, MCPToolParam) else "name"
            raise InvalidField(
                f"Invalid value for 'tools[{index}].{field}': '{key}' is already among the agent's tools.",
                param=f"tools[{index}].{field}",
                code="invalid_value",
            )
        seen.add(key)


class AgentLimits(BaseModel):
    """Bounds on one run of the agent; absent means unbounded. A run that reaches one ends
    `incomplete` with the limit as its reason (checked between steps)."""

    model_config = _STRICT
    max_tool_calls: Annotated[int, Field(ge=1, le=10_000)] | None = None
    max_steps: Annotated[int, Field(ge=1, le=10_000)] | None = None
    deadline_seconds: Annotated[int, Field(ge=1, le=365 * 86400)] | None = None


Operator = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "exists"]


class ApprovalRule(BaseModel):
    """A call of `tool` needs approval (`effect: "deny"`: is refused) when its top-level `argument`
    satisfies `op value` (`exists`: the argument is present; no `argument`: every call)."""

    model_config = _STRICT
    tool: ToolName
    argument: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    op: Operator = "exists"
    value: str | int | float | bool | list[str | int | float | bool] | None = None
    effect: Literal["approval", "deny"] = "approval"


class AgentApproval(BaseModel):
    """The agent's tool policy: which tool calls are refused outright (`tools_denied`, rules with
    `effect: "deny"`), which pause a run until an approver decides, and who the approvers are
    (principal names or ids, `group:NAME`, `role:ROLE`; none named: the principal the run acts for).
    Every other call of a tool the agent was given is allowed."""

    model_config = _STRICT
    tools_requiring_approval: Annotated[list[ToolName], Field(max_length=MAX_TOOLS)] = Field(
        default_factory=list
    )
    tools_denied: Annotated[list[ToolName], Field(max_length=MAX_TOOLS)] = Field(default_factory=list)
    rules: Annotated[list[ApprovalRule], Field(max_length=MAX_TOOLS)] = Field(default_factory=list)
    approvers: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=100)] = (
        Field(default_factory=list)
    )


class AgentDefinition(BaseModel):
    """`POST /v1/agents`: one agent, as its first version."""

    model_config = _STRICT
    name: AgentName
    instructions: Instructions | None = None
    model: ModelName | None = None  # None: the default model when the version is written
    tools: Tools = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    limits: AgentLimits = Field(default_factory=AgentLimits)
    approval: AgentApproval = Field(default_factory=AgentApproval)
    concurrency: Concurrency = "reject"
    context: ContextPolicy = Field(default_factory=ContextPolicy)
    compaction_model: ModelName | None = None  # None: the server's compaction model (else its default)

    @field_validator("metadata", mode="before")
    @classmethod
    def _check_metadata(cls, value: object) -> dict[str, str]:
        return _metadata(value)

    @field_validator("tools")
    @classmethod
    def _check_tools(
        cls, value: list[FunctionToolParam | ServerToolParam | MCPToolParam]
    ) -> list[FunctionToolParam | ServerToolParam | MCPToolParam]:
        _distinct_tools(value)
        return value

    def to_stored(self) -> dict[str, Any]:
        """The JSON a stored version keeps: everything but the name (the row has it), versioned."""
        return {
            "schema_version": AGENT_SCHEMA_VERSION,
            **self.model_dump(exclude={"name"}, exclude_none=True),
        }

    @classmethod
    def from_stored(cls, name: str, stored: dict[str, Any]) -> AgentDefinition:
        data = dict(stored)
        version = data.pop("schema_version", None)
        if version not in (1, AGENT_SCHEMA_VERSION):  # version 1 reads as 2 with default context
            raise ValueError(f"agent '{name}' was stored with unknown schema version {version!r}")
        return cls.model_validate({**data, "name": name})


class UpdateAgent(BaseModel):
    """`POST /v1/agents/{name}`: the fields given replace the newest version's in a new version;
    `null` puts a field back to its default. The name cannot change."""

    model_config = _STRICT
    instructions: Instructions | None = None
    model: ModelName | None = None
    tools: Tools | None = None
    metadata: dict[str, str] | None = None
    limits: AgentLimits | None = None
    approval: AgentApproval | None = None
    concurrency: Concurrency | None = None
    context: ContextPolicy | None = None
    compaction_model: ModelName | None = None

    @field_validator("metadata", mode="before")
    @classmethod
    def _check_metadata(cls, value: object) -> dict[str, str] | None:
        return None if value is None else _metadata(value)

    @field_validator("tools")
    @classmethod
    def _check_tools(
        cls, value: list[FunctionToolParam | ServerToolParam | MCPToolParam] | None
    ) -> list[FunctionToolParam | ServerToolParam | MCPToolParam] | None:
        _distinct_tools(value or [])
        return value

    def revise(self, current: AgentDefinition) -> AgentDefinition:
        data = current.model_dump(exclude_none=True)
        for field in self.model_fields_set:
            value = getattr(self, field)
            if value is None:
                data.pop(field, None)
            else:
                data[field] = value.model_dump() if isinstance(value, BaseModel) else value
        if "tools" in self.model_fields_set and self.tools is not None:
            data["tools"] = [t.model_dump(exclude_none=True) for t in self.tools]
        return AgentDefinition.model_validate(data)

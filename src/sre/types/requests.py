"""Request shapes of the public API (OpenAI Responses and Conversations), validated by pydantic.

The HTTP layer and the Python API accept the same models. Unknown fields are refused, naming the
field; a few OpenAI parameters that SRE accepts but does not act on yet are listed as such.
`invalid_from_pydantic` turns a validation failure into an `InvalidRequest` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sre.types.errors import InvalidRequest
from sre.types.formats import TEXT, TextFormat, parse_text_format
from sre.types.items import validate_metadata

_STRICT = ConfigDict(extra="forbid", strict=True)


class FunctionToolParam(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceFunction(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=64)]


# OpenAI's `include` values (accepted; SRE has none of the items they name yet) and SRE's own.
Includable = Literal[
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
    "context_manifest",  # SRE's own: what went into each model call
]
INCLUDABLE: tuple[str, ...] = get_args(Includable)


class ContextManagement(BaseModel):
    """An entry of `context_management`: compact the oldest history when it no longer fits the
    model's window, or once it passes `compact_threshold` tokens."""

    model_config = _STRICT
    type: Literal["compaction"]
    compact_threshold: Annotated[int, Field(ge=1, le=10_000_000)] | None = None


class ConversationRef(BaseModel):
    model_config = _STRICT
    id: Annotated[str, Field(min_length=1, max_length=64)]


class TextParam(BaseModel):
    """`text`: the output's format (checked here, naming the bad field) and OpenAI's verbosity."""

    model_config = _STRICT
    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: object) -> object:
        return None if value is None else parse_text_format(value).to_dict()

    @property
    def text_format(self) -> TextFormat:
        return TEXT if self.format is None else parse_text_format(self.format)


Metadata = dict[str, str]


class _WithMetadata(BaseModel):
    model_config = _STRICT
    metadata: Metadata | None = None

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: object) -> object:
        return None if value is None else validate_metadata(value)


class CreateResponse(_WithMetadata):
    """`POST /v1/responses`."""

    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    input: str | list[Any]
    instructions: str | None = None
    previous_response_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    conversation: Annotated[str, Field(min_length=1, max_length=64)] | ConversationRef | None = None
    store: bool = True
    stream: bool = False
    background: bool = False
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: list[FunctionToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    context_management: Annotated[list[ContextManagement], Field(max_length=8)] | None = None
    include: Annotated[list[Includable], Field(max_length=16)] | None = None
    text: TextParam | None = None  # the output's format: sre.types.formats
    # Accepted for compatibility with OpenAI clients; SRE does not act on them yet.
    user: str | None = None
    reasoning: dict[str, Any] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    stream_options: dict[str, Any] | None = None

    @property
    def text_format(self) -> TextFormat:
        return TEXT if self.text is None else self.text.text_format

    @property
    def conversation_id(self) -> str | None:
        if isinstance(self.conversation, ConversationRef):
            return self.conversation.id
        return self.conversation


class CountInputTokens(BaseModel):
    """`POST /v1/responses/input_tokens`: what `POST /v1/responses` would send, counted, not sent."""

    model_config = _STRICT
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    input: str | list[Any] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    conversation: Annotated[str, Field(min_length=1, max_length=64)] | ConversationRef | None = None
    tools: list[FunctionToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    text: TextParam | None = None
    reasoning: dict[str, Any] | None = None

    def as_response_request(self) -> CreateResponse:
        return CreateResponse.model_validate(self.model_dump(exclude_none=True), strict=False)


class CompactResponse(BaseModel):
    """`POST /v1/responses/compact`: the context a request would send (its `input` after the chain
    of `previous_response_id`), compacted: its user messages and one compaction item."""

    model_config = _STRICT
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    previous_response_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    # Accepted for compatibility with OpenAI clients; SRE does not act on them.
    prompt_cache_key: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    image: dict[str, Any] | None = None


class CreateEmbeddings(BaseModel):
    """`POST /v1/embeddings`."""

    model_config = _STRICT
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    input: (
        Annotated[str, Field(min_length=1, max_length=100_000)]
        | Annotated[
            list[Annotated[str, Field(min_length=1, max_length=100_000)]],
            Field(min_length=1, max_length=2048),
        ]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


class CreateConversation(_WithMetadata):
    """`POST /v1/conversations`."""

    items: Annotated[list[Any], Field(max_length=20)] | None = None
    # SRE's: "private" (the creator's; admins and auditors read it, audited) or "tenant" (shared)
    visibility: Literal["private", "tenant"] = "private"


class UpdateConversation(BaseModel):
    """`POST /v1/conversations/{id}`: the metadata (as OpenAI's), and SRE's visibility."""

    model_config = _STRICT
    metadata: Metadata | None = None
    visibility: Literal["private", "tenant"] | None = None

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: object) -> object:
        return None if value is None else validate_metadata(value)

    @model_validator(mode="after")
    def _something(self) -> UpdateConversation:
        if self.metadata is None and self.visibility is None:  # OpenAI's requires the metadata
            raise InvalidRequest(
                "Missing required parameter: 'metadata'.", param="metadata", code="missing_required_parameter"
            )
        return self


class CreateItems(BaseModel):
    """`POST /v1/conversations/{id}/items`."""

    model_config = _STRICT
    items: Annotated[list[Any], Field(min_length=1, max_length=20)]


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "constrained-", "literal[", "list[", "union[")) or part in (
            "str",
            "int",
            "float",
            "bool",
            "ConversationRef",
            "ToolChoiceFunction",
            "FunctionToolParam",
            "ContextManagement",
            "TextParam",
            "list[any]",
            "dict[str,any]",
            "function",
            "server",
            "mcp",
            "[key]",  # a mapping's key failed: the field is the key itself
        ):
            continue  # a union branch's name, not a field
        else:
            out += f".{part}" if out else part
    return out


def pick_error(errors: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The error to report: the first, or where a union tried several branches on that field, the
    deepest below it (the branch that matched the value's shape: `{"id": 5}` is about `id`)."""

    def field(err: Mapping[str, Any]) -> str:
        return _loc(tuple(p for p in err.get("loc", ()) if p not in ("body", "query", "path")))

    first = field(errors[0])
    below = [e for e in errors if field(e) == first or field(e).startswith((first + ".", first + "["))]
    return max(below or errors[:1], key=lambda e: len(field(e)))


def invalid_from_pydantic(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> InvalidRequest:
    err = pick_error(exc.errors())
    loc = (
        tuple(err["loc"])[len(prefix) :] if tuple(err["loc"])[: len(prefix)] == prefix else tuple(err["loc"])
    )
    return invalid_from_error(err["type"], loc, err["msg"], err.get("ctx"))


def invalid_from_error(kind: str, loc: tuple[int | str, ...], msg: str, ctx: Any = None) -> InvalidRequest:
    if isinstance(ctx, dict):
        inner = ctx.get("error")
        if isinstance(inner, InvalidRequest):
            return inner  # raised by one of our validators, already naming its field
    field = _loc(loc) or None
    if kind in ("union_tag_invalid", "union_tag_not_found") and field is not None:
        tag = str((ctx or {}).get("discriminator", "type")).strip("'") if isinstance(ctx, dict) else "type"
        field = f"{field}.{tag}"
    if kind == "json_invalid":
        return InvalidRequest("We could not parse the JSON body of your request: it is not valid JSON.")
    if kind == "missing" and field is None:
        return InvalidRequest("The request body is missing: send a JSON object.", code="invalid_body")
    if kind == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{field}'.", param=field, code="missing_required_parameter"
        )
    if kind == "extra_forbidden":
        return InvalidRequest(
            f"Unrecognized request argument supplied: {field}", param=field, code="unknown_parameter"
        )
    if field is None:
        return InvalidRequest(f"Invalid request body: {msg}.", code="invalid_body")
    return InvalidRequest(f"Invalid value for '{field}': {msg}.", param=field, code="invalid_value")

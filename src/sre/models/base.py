"""The provider protocol: stream one completion for a list of items, tools and settings.

A provider translates SRE's items (OpenAI Responses shapes) to one wire format and its answer back
into a small closed set of events. It holds no conversation state and never touches the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sre.models.tokens import PromptCounter, TextTokenizer, TokenCount
from sre.types.formats import TEXT, TextFormat
from sre.types.items import ModelItem

AnyItem = ModelItem  # the items a model is sent (compaction items reach it as messages)


@dataclass(frozen=True, slots=True)
class FunctionTool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ModelRequest:
    items: Sequence[AnyItem]
    instructions: str | None = None
    tools: Sequence[FunctionTool] = ()
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    text_format: TextFormat = TEXT  # what the text must be: each provider asks its upstream for it


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    type: Literal["text_delta"] = "text_delta"


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call; `index` ties the pieces of one call together."""

    index: int
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""
    type: Literal["tool_call_delta"] = "tool_call_delta"


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    exact: bool = True  # reported by the upstream or counted by the model's tokenizer
    type: Literal["usage"] = "usage"


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason
    type: Literal["finish"] = "finish"


ModelEvent = TextDelta | ToolCallDelta | Usage | Finish


@dataclass(frozen=True, slots=True)
class Pricing:
    """US dollars per million tokens."""

    input: float
    output: float
    cached_input: float | None = None  # defaults to the input price

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        cached_price = self.input if self.cached_input is None else self.cached_input
        uncached = max(0, input_tokens - cached_tokens)
        return (uncached * self.input + cached_tokens * cached_price + output_tokens * self.output) / 1e6


@dataclass(slots=True)
class ModelInfo:
    name: str  # what requests call it
    provider: str
    upstream_model: str  # what the provider calls it
    context_window: int
    options: dict[str, Any] = field(default_factory=dict)
    pricing: Pricing | None = None  # None: unknown, cost is not computed


class ChatModel(ABC):
    """One configured model. Subclasses implement `stream`; everything else is shared."""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        self._counter: PromptCounter | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @abstractmethod
    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Yield text and tool-call deltas, then usage (if known), then exactly one `Finish`."""

    def count_tokens(self, request: ModelRequest) -> TokenCount:
        """The request's input tokens: exact where the provider knows its tokenizer, else estimated."""
        tools = [*request.tools, *format_tools(request.text_format)]
        return self.prompt_counter().prompt(request.instructions, request.items, tool_dicts(tools))

    def prompt_counter(self) -> PromptCounter:
        """How this model counts a prompt (made once: it caches the counts of stored items)."""
        if self._counter is None:
            self._counter = self.new_prompt_counter()
        return self._counter

    def new_prompt_counter(self) -> PromptCounter:
        """A provider whose prompt template frames messages differently from OpenAI's says so here."""
        return PromptCounter(self.tokenizer())

    def tokenizer(self) -> TextTokenizer | None:
        """The model's own tokenizer, if it is available offline."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional for providers without connections
        """Release connections; called once when the runtime closes."""


def tool_dicts(tools: Sequence[FunctionTool]) -> list[dict[str, Any]]:
    """Tool definitions as they are counted (name, description, parameters)."""
    return [
        {"name": t.name, "description": t.description or "", "parameters": t.parameters or {}} for t in tools
    ]


def format_tools(fmt: TextFormat) -> list[FunctionTool]:
    """A JSON format's schema, counted as a tool definition: it is part of the prompt on every
    provider that sends it (a `response_format`, a `text.format`, Anthropic's format tool)."""
    if not fmt.is_json:
        return []
    return [FunctionTool(name=fmt.name or "json_output", description=fmt.description, parameters=fmt.schema)]

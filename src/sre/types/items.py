"""Conversation items: the one internal language of SRE, in OpenAI Responses item shapes.

Everything that enters a conversation is one of these tagged models, validated once at the edge
(`parse_input_items`), stored as its JSON and handed to providers, which translate to their wire
formats. Each stored item has an id and a status. This module knows nothing of storage or HTTP.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from sre.types.errors import InvalidRequest


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputText(_Part):
    type: Literal["input_text"] = "input_text"
    text: str


class OutputText(_Part):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)


class InputImage(_Part):
    type: Literal["input_image"] = "input_image"
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["low", "high", "auto"] = "auto"


class Refusal(_Part):
    type: Literal["refusal"] = "refusal"
    refusal: str


ContentPart = Annotated[InputText | OutputText | InputImage | Refusal, Field(discriminator="type")]
Role = Literal["user", "assistant", "system", "developer"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None


class Message(_Item):
    type: Literal["message"] = "message"
    role: Role
    content: list[ContentPart]
    status: ItemStatus = "completed"

    def text(self) -> str:
        out: list[str] = []
        for part in self.content:
            if isinstance(part, InputText | OutputText):
                out.append(part.text)
            elif isinstance(part, Refusal):
                out.append(part.refusal)
        return "".join(out)


class FunctionCall(_Item):
    type: Literal["function_call"] = "function_call"
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    arguments: str
    status: ItemStatus = "completed"


class FunctionCallOutput(_Item):
    type: Literal["function_call_output"] = "function_call_output"
    call_id: str = Field(min_length=1, max_length=256)
    output: str | list[ContentPart]
    status: ItemStatus = "completed"

    def output_text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(p.text for p in self.output if isinstance(p, InputText | OutputText))


class CompactionCovers(BaseModel):
    """SRE's own: the range of conversation items a compaction item stands for, first to last
    (inclusive, earlier compaction items among them)."""

    model_config = ConfigDict(extra="ignore")
    first_item_id: str | None = None
    last_item_id: str | None = None
    items: int = 0


class Compaction(_Item):
    """A summary that stands for the oldest items of a conversation (OpenAI's `compaction` item).

    `encrypted_content` is opaque to clients: SRE puts the summary and the range it covers there
    (`sre1.` and base64 JSON), so a compaction item round-trips through any client. `summary` and
    `covers` are SRE's own, readable copies. The model sees the summary as a user-role message:
    a client that forges one gains nothing it could not say in a message.
    """

    type: Literal["compaction"] = "compaction"
    encrypted_content: str = Field(min_length=1, max_length=1_000_000)
    created_by: str | None = None
    summary: str | None = None
    covers: CompactionCovers | None = None
    status: ItemStatus = "completed"

    def text(self) -> str:
        return self.summary or ""


_COMPACTION_PREFIX = "sre1."


def compaction_content(summary: str, covers: CompactionCovers, through_seq: int | None) -> str:
    """The opaque `encrypted_content` of a compaction item SRE makes (`through_seq`: the position of
    its last covered item in its conversation's lineage)."""
    payload = {"summary": summary, "covers": covers.model_dump(), "through_seq": through_seq}
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return _COMPACTION_PREFIX + base64.urlsafe_b64encode(raw).decode()


def read_compaction(content: str) -> tuple[str, CompactionCovers, int | None] | None:
    """The summary, range and last covered position a compaction item's content holds; None for
    content SRE did not make."""
    if not content.startswith(_COMPACTION_PREFIX):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(content[len(_COMPACTION_PREFIX) :].encode()))
        summary = payload["summary"]
        covers = CompactionCovers.model_validate(payload.get("covers") or {})
        through = payload.get("through_seq")
    except (ValueError, KeyError, TypeError, binascii.Error, ValidationError):
        return None
    if not isinstance(summary, str) or not (through is None or isinstance(through, int)):
        return None
    return summary, covers, through


ModelItem = Message | FunctionCall | FunctionCallOutput  # what a model is sent
AnyItem = Message | FunctionCall | FunctionCallOutput | Compaction  # what a conversation holds
Item = Annotated[AnyItem, Field(discriminator="type")]
ITEM_ADAPTER: TypeAdapter[AnyItem] = TypeAdapter(Item)
ITEM_TYPES = ("message", "function_call", "function_call_output", "compaction")
ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "compaction": "cmp"}


def _normalise(raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"Invalid type for '{where}': expected an object.", param=where)
    item = dict(raw)
    item.pop("id", None)  # ids are SRE's to assign; a client's ids would collide
    kind = item.get("type")
    if kind is None and "role" in item:
        item["type"] = kind = "message"
    if kind is None:
        raise InvalidRequest(f"Missing required parameter: '{where}.type'.", param=f"{where}.type")
    if not isinstance(kind, str) or kind not in ITEM_TYPES:
        raise InvalidRequest(
            f"Invalid value for '{where}.type': {kind!r}. Supported values are: "
            + ", ".join(repr(t) for t in ITEM_TYPES)
            + ".",
            param=f"{where}.type",
            code="invalid_value",
        )
    if kind == "message" and isinstance(item.get("content"), str):
        role = item.get("role")
        part = "output_text" if role == "assistant" else "input_text"
        item["content"] = [{"type": part, "text": item["content"]}]
    return item


_TAGS = {*ITEM_TYPES, "input_text", "output_text", "input_image", "refusal"}


def _where(prefix: str, loc: tuple[int | str, ...]) -> str:
    out = prefix
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (part in _TAGS and (previous is None or isinstance(previous, int))) or part.startswith(
            ("function-", "list[", "str")
        ):
            pass  # the union's branch name (an item's or a content part's type), not a field
        else:
            out += f".{part}"
        previous = part
    return out


def parse_item(raw: object, where: str) -> AnyItem:
    """Validate one item from a request; raise `InvalidRequest` naming the offending field."""
    item = _normalise(raw, where)
    try:
        parsed = ITEM_ADAPTER.validate_python(item)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = _where(where, tuple(err["loc"]))
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field += "." + str((err.get("ctx") or {}).get("discriminator", "type")).strip("'")
        raise InvalidRequest(f"Invalid value for '{field}': {err['msg']}.", param=field) from None
    if isinstance(parsed, Compaction):  # its readable fields come from its content, never the client
        read = read_compaction(parsed.encrypted_content)
        if read is None:
            raise InvalidRequest(
                f"Invalid value for '{where}.encrypted_content': this compaction item was not made by "
                "this server (SRE reads only its own).",
                param=f"{where}.encrypted_content",
                code="invalid_compaction",
            )
        parsed = parsed.model_copy(update={"summary": read[0], "covers": read[1], "created_by": "sre"})
    return parsed


def parse_input_items(raw: object, where: str = "input") -> list[AnyItem]:
    """Turn a request's `input` (a string or a list of items) into validated items."""
    if isinstance(raw, str):
        return [Message(role="user", content=[InputText(text=raw)])]
    if not isinstance(raw, list):
        raise InvalidRequest(f"Invalid type for '{where}': expected a string or an array.", param=where)
    return [parse_item(entry, f"{where}[{i}]") for i, entry in enumerate(raw)]


def item_to_dict(item: AnyItem) -> dict[str, Any]:
    return item.model_dump(mode="json", exclude_none=True)


def item_from_json(raw: str) -> AnyItem:
    """A stored item straight from its JSON (parsed and validated in one pass, in pydantic-core)."""
    return ITEM_ADAPTER.validate_json(raw)


def estimate_tokens(item: AnyItem) -> int:
    """A cheap, deterministic token estimate (4 characters a token, plus framing): what the store
    records per item. Models count with their own tokenizers (`sre.models.tokens`)."""
    if isinstance(item, Message | Compaction):
        chars = len(item.text())
    elif isinstance(item, FunctionCall):
        chars = len(item.name) + len(item.arguments)
    else:
        chars = len(item.output_text())
    return 4 + (chars + 3) // 4


MAX_METADATA_PAIRS = 16


def validate_metadata(raw: object, param: str = "metadata") -> dict[str, str]:
    """OpenAI's metadata rules: at most 16 pairs, keys up to 64 characters, string values up to 512."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidRequest(f"Invalid type for '{param}': expected an object.", param=param)
    if len(raw) > MAX_METADATA_PAIRS:
        raise InvalidRequest(f"'{param}' may hold at most {MAX_METADATA_PAIRS} pairs.", param=param)
    for key, value in raw.items():
        if not isinstance(key, str) or not 0 < len(key) <= 64:
            raise InvalidRequest(f"Keys of '{param}' must be 1 to 64 characters.", param=param)
        if not isinstance(value, str) or len(value) > 512:
            raise InvalidRequest(
                f"Invalid value for '{param}.{key}': expected a string of at most 512 characters.",
                param=f"{param}.{key}",
            )
    return dict(raw)

"""Structured output formats: a request's `text.format`, validated, and an output checked against it.

`parse_text_format` turns the `format` of OpenAI's `text` parameter (`text`, `json_object`, or
`json_schema` with `name`, `schema`, `strict`, `description`) into a `TextFormat`, refusing a bad
one with an `InvalidField` naming it (`text.format.schema`, ...). `output_violation` says why a
model's final text does not honour the format, or `None` when it does: `json_object` and
`json_schema` outputs must parse as a JSON object; a strict `json_schema` output must also match
its schema. It knows nothing of models or the engine, which decide what a violation ends in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

from sre.types.errors import InvalidField

FormatType = Literal["text", "json_object", "json_schema"]
INVALID_OUTPUT = "invalid_output"  # the incomplete reason of a response whose output breaks its format
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_WHERE = "text.format"


@dataclass(frozen=True, slots=True)
class TextFormat:
    """What the model's text must be: plain text, any JSON object, or JSON matching `schema`."""

    type: FormatType = "text"
    name: str | None = None
    schema: dict[str, Any] = field(default_factory=dict)
    strict: bool = False
    description: str | None = None

    @property
    def is_json(self) -> bool:
        return self.type != "text"

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's shape, as the request sends it and the response echoes it."""
        if self.type != "json_schema":
            return {"type": self.type}
        out: dict[str, Any] = {"type": "json_schema", "name": self.name, "schema": self.schema}
        if self.description is not None:
            out["description"] = self.description
        out["strict"] = self.strict
        return out


TEXT = TextFormat()


def _fail(message: str, where: str, code: str = "invalid_value") -> InvalidField:
    return InvalidField(message, param=where, code=code)


def parse_text_format(raw: object) -> TextFormat:
    """`text.format` as a `TextFormat`, or an `InvalidField` naming what is wrong with it."""
    if not isinstance(raw, dict):
        raise _fail(f"Invalid type for '{_WHERE}': expected an object.", _WHERE, "invalid_type")
    kind = raw.get("type")
    if kind is None:
        raise _fail(
            f"Missing required parameter: '{_WHERE}.type'.", f"{_WHERE}.type", "missing_required_parameter"
        )
    allowed: dict[str, set[str]] = {
        "text": {"type"},
        "json_object": {"type"},
        "json_schema": {"type", "name", "schema", "strict", "description"},
    }
    if kind not in allowed:
        raise _fail(
            f"Invalid value for '{_WHERE}.type': expected one of 'text', 'json_object', 'json_schema', "
            f"got {json.dumps(kind)}.",
            f"{_WHERE}.type",
        )
    for key in raw:
        if key not in allowed[kind]:
            raise _fail(
                f"Unrecognized request argument supplied: {_WHERE}.{key}",
                f"{_WHERE}.{key}",
                "unknown_parameter",
            )
    if kind != "json_schema":
        return TextFormat(type=kind)
    name = raw.get("name")
    if name is None:
        raise _fail(
            f"Missing required parameter: '{_WHERE}.name'.", f"{_WHERE}.name", "missing_required_parameter"
        )
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(
            f"Invalid value for '{_WHERE}.name': it must be 1 to 64 letters, digits, '_' or '-'.",
            f"{_WHERE}.name",
        )
    strict = raw.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _fail(
            f"Invalid type for '{_WHERE}.strict': expected a boolean.", f"{_WHERE}.strict", "invalid_type"
        )
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise _fail(
            f"Invalid type for '{_WHERE}.description': expected a string.",
            f"{_WHERE}.description",
            "invalid_type",
        )
    return TextFormat(
        type="json_schema",
        name=name,
        schema=_check_schema(raw.get("schema"), name),
        strict=bool(strict),
        description=description,
    )


def _check_schema(schema: object, name: str) -> dict[str, Any]:
    where = f"{_WHERE}.schema"
    if schema is None:
        raise _fail(f"Missing required parameter: '{where}'.", where, "missing_required_parameter")
    if not isinstance(schema, dict):
        raise _fail(
            f"Invalid schema for response_format '{name}': expected a JSON object.", where, "invalid_type"
        )
    if "type" not in schema:
        raise _fail(f"Invalid schema for response_format '{name}': schema must have a 'type' key.", where)
    # Every provider can be made to honour an object at the root (Anthropic's tool input must be one),
    # and OpenAI's strict mode asks for the same.
    if schema["type"] != "object":
        raise _fail(
            f"Invalid schema for response_format '{name}': the root must be of type 'object', "
            f"got {json.dumps(schema['type'])}.",
            where,
        )
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        at = "".join(f"[{p!r}]" for p in exc.path)
        raise _fail(
            f"Invalid schema for response_format '{name}': {exc.message} (at schema{at}).", where
        ) from None
    return schema


def output_violation(fmt: TextFormat, text: str) -> str | None:
    """Why `text` breaks `fmt`, or `None` when it honours it."""
    if not fmt.is_json:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"the output is not valid JSON: {exc}"
    if not isinstance(value, dict):
        return "the output is not a JSON object"
    if fmt.type == "json_schema" and fmt.strict:
        error = best_match(Draft202012Validator(fmt.schema).iter_errors(value))
        if error is not None:
            at = "".join(f"[{p!r}]" for p in error.absolute_path)
            return f"the output does not match schema '{fmt.name}': {error.message} (at output{at})"
    return None

"""Structured outputs on the bundled local model: what llama.cpp's grammar costs and what it buys.

SmolLM2-135M-Instruct (the `local` provider, `LocalChatModel.stream`) answers a few prompts against
three JSON schemas (flat; nested; an enum and an array), twice each:

  * without a grammar: `text.format` left as text, the schema given to the model in its
    instructions ("Answer with one JSON object matching this JSON schema: ...");
  * with a grammar: the same instructions, and `text.format` a strict `json_schema`, which the
    local provider compiles to a GBNF grammar that sampling must follow.

Per mode: generation speed (output tokens, as the model's tokenizer counts them, over the time from
the first token to the last; median over the answers) and the share of answers that are schema-valid
(`sre.types.formats.output_violation`: parses as a JSON object and matches the schema, on the raw
text as a client would get it). Temperature 0, `max_output_tokens` 128 (an answer cut there counts
as invalid). The load averages are printed at the start and end (the machine may be shared).

    bench/.venv/bin/python bench/structured.py              # the full run
    bench/.venv/bin/python bench/structured.py --prompts 2  # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OtherLoad, load, machine, revision, today
from sre.models.base import Finish, ModelRequest, TextDelta, Usage
from sre.models.config import local_model_info
from sre.models.local import LocalChatModel
from sre.types.formats import TEXT, TextFormat, output_violation, parse_text_format
from sre.types.items import parse_input_items

MAX_TOKENS = 128
SCHEMAS: dict[str, dict[str, object]] = {
    "flat": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "location": {
                "type": "object",
                "properties": {
                    "country": {"type": "string", "maxLength": 24},
                    "population": {"type": "integer"},
                },
                "required": ["country", "population"],
                "additionalProperties": False,
            },
        },
        "required": ["city", "location"],
        "additionalProperties": False,
    },
    "enum_array": {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "keywords": {
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "minItems": 1,
                "maxItems": 3,
            },
        },
        "required": ["sentiment", "keywords"],
        "additionalProperties": False,
    },
}
PROMPTS = [
    "Tell me about Paris.",
    "Who was Ada Lovelace?",
    "I loved this film, the music was great.",
    "The service was slow and the food was cold.",
    "Describe Tokyo in one sentence.",
    "What is the capital of Canada?",
    "My order arrived broken.",
    "Name a famous scientist.",
]


@dataclass
class Answer:
    tokens: int
    seconds: float  # first token to last
    valid: bool


async def answer(model: LocalChatModel, prompt: str, schema: str, fmt: TextFormat, grammar: bool) -> Answer:
    instructions = "Answer with one JSON object matching this JSON schema: " + json.dumps(SCHEMAS[schema])
    request = ModelRequest(
        items=parse_input_items(prompt),
        instructions=instructions,
        max_output_tokens=MAX_TOKENS,
        temperature=0.0,
        text_format=fmt if grammar else TEXT,
    )
    first: float | None = None
    last = time.perf_counter()
    parts: list[str] = []
    tokens = 0
    finish = "stop"
    async for event in model.stream(request):
        if isinstance(event, TextDelta):
            last = time.perf_counter()
            first = last if first is None else first
            parts.append(event.text)
        elif isinstance(event, Usage):
            tokens = event.output_tokens
        elif isinstance(event, Finish):
            finish = event.reason
    text = "".join(parts)
    valid = finish == "stop" and output_violation(fmt, text) is None
    return Answer(tokens, last - first if first is not None else 0.0, valid)


def rate(answers: list[Answer]) -> float:
    """Median tokens/s over answers with at least two tokens (a rate needs a first and a last)."""
    rates = [(a.tokens - 1) / a.seconds for a in answers if a.tokens > 1 and a.seconds > 0]
    return statistics.median(rates) if rates else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the prompts to use")
    args = parser.parse_args()
    print(f"{today()}, SRE {revision()}, {machine()}")
    print(f"load averages at start: {load()}")
    other = OtherLoad()
    model = LocalChatModel(local_model_info())
    await model.load()
    await answer(model, "Warm up.", "flat", TEXT, grammar=False)  # untimed
    results: dict[tuple[str, bool], list[Answer]] = {}
    for prompt in PROMPTS[: args.prompts]:
        for schema in SCHEMAS:
            fmt = parse_text_format(
                {"type": "json_schema", "name": schema, "schema": SCHEMAS[schema], "strict": True}
            )
            for grammar in (False, True):  # alternating, so drift in the machine's load hits both
                results.setdefault((schema, grammar), []).append(
                    await answer(model, prompt, schema, fmt, grammar)
                )
    print(f"load averages at end: {load()}; {other.report()}\n")
    print("| schema | mode | answers | schema-valid | median tokens/s | median output tokens |")
    print("|---|---|---:|---:|---:|---:|")
    for grammar in (False, True):
        everything: list[Answer] = []
        for schema in SCHEMAS:
            got = results[(schema, grammar)]
            everything += got
            print(row(schema, grammar, got))
        print(row("**all**", grammar, everything))


def row(schema: str, grammar: bool, answers: list[Answer]) -> str:
    valid = sum(a.valid for a in answers)
    tokens = statistics.median(a.tokens for a in answers)
    mode = "grammar (`json_schema`, strict)" if grammar else "no grammar (schema in instructions)"
    return (
        f"| {schema} | {mode} | {len(answers)} | {valid}/{len(answers)} ({100 * valid / len(answers):.0f} %) "
        f"| {rate(answers):.1f} | {tokens:.0f} |"
    )


if __name__ == "__main__":
    asyncio.run(main())

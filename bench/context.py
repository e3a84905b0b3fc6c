"""Prompt tokens per turn when a long LoCoMo conversation is replayed as a chat, with compaction on.

One LoCoMo conversation (`../shared/benchmarks/locomo/locomo10.json`, read in place, never copied;
licence CC BY-NC 4.0) is replayed through `Runtime.create_response` on one SRE conversation: each
utterance of the first speaker is a user turn (`context_management: [{"type": "compaction"}]`), and
the chat model answers with the second speaker's next utterance, as the dataset has it (a
`FunctionModel` that counts with tiktoken, as an OpenAI model does, so every count is exact). The
compaction model is the bundled local model (SmolLM2-135M through llama.cpp, offline), as in the
embedded default; `--summariser extractive` uses a quick stand-in instead. For every turn it records
the prompt the chat model was sent (tokens, counted by its tokenizer) against the whole history so
far (what sending everything would cost), and whether the turn compacted.

    bench/.venv/bin/python bench/context.py                      # conversation 2, a 4,096-token model
    bench/.venv/bin/python bench/context.py --summariser extractive --window 2048
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load, machine, revision, today
from sre.context import output_reserve
from sre.models import ModelRequest
from sre.models.tokens import TextTokenizer, tiktoken_tokenizer
from sre.runtime import Runtime
from sre.testing import FunctionModel
from sre.types.items import InputText, Message, OutputText

LOCOMO = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "locomo" / "locomo10.json"
SUMMARISER = "You condense conversations."


class OpenAILikeModel(FunctionModel):
    """Answers by the dataset; counts with tiktoken (cl100k), exactly as an OpenAI model would."""

    def tokenizer(self) -> TextTokenizer | None:
        return tiktoken_tokenizer("cl100k_base")


def turns_of(sample: dict[str, Any]) -> list[tuple[str, str]]:
    """(user text, assistant text) pairs: the first speaker's utterances, each answered by the
    second speaker's that follow; each session opens with its date."""
    conv = sample["conversation"]
    a = conv["speaker_a"]
    sessions = sorted(
        (int(k.split("_")[1]), v)
        for k, v in conv.items()
        if k.startswith("session_") and not k.endswith("date_time") and isinstance(v, list)
    )
    pairs: list[tuple[str, str]] = []
    for number, utterances in sessions:
        date = conv.get(f"session_{number}_date_time", "")
        user, answer = [f"[{date}]"] if date else [], []
        for u in utterances:
            text = u["text"]
            if u["speaker"] == a:
                if answer:
                    pairs.append((" ".join(user), " ".join(answer)))
                    user, answer = [], []
                user.append(text)
            else:
                answer.append(text)
        if user or answer:
            pairs.append((" ".join(user) or "…", " ".join(answer) or "…"))
    return pairs


async def replay(args: argparse.Namespace) -> dict[str, Any]:
    data = json.loads(LOCOMO.read_text())
    sample = data[args.conversation]
    pairs = turns_of(sample)[: args.turns or None]
    answers: list[str] = []
    sent: list[ModelRequest] = []

    def chat(request: ModelRequest) -> str:
        if request.instructions and request.instructions.startswith(SUMMARISER):
            # The quick stand-in: the first sentence of each line, as many as fit.
            lines = request.items[0].text().splitlines()  # type: ignore[union-attr]
            return " ".join(line.split(". ")[0] for line in lines[-40:])[: 4 * 400]
        sent.append(request)
        return answers[-1]

    model = OpenAILikeModel(chat, name="chat", context_window=args.window)
    models: list[Any] = [model]
    config = None
    if args.summariser == "local":
        from sre.models.config import local_model_info
        from sre.models.local import LocalChatModel

        local = LocalChatModel(local_model_info())
        models.append(local)
        config = Path(tempfile.mkdtemp()) / "sre.toml"
        config.write_text(f'[context]\ncompaction_model = "{local.name}"\n')
    runtime = Runtime.open(
        data_dir=tempfile.mkdtemp(prefix="sre-context-"), models=models, config=config, env={}
    )
    if args.summariser == "local":
        await runtime.warm()
    counter = model.prompt_counter()
    budget = args.window - output_reserve(args.window, None)
    rows: list[dict[str, Any]] = []
    history: list[Any] = []
    try:
        caller = runtime.local_caller()
        conv = (await runtime.create_conversation(caller))["id"]
        for number, (user, answer) in enumerate(pairs, start=1):
            answers.append(answer)
            started = time.perf_counter()
            response = await runtime.create_response(
                caller,
                {
                    "input": user,
                    "conversation": conv,
                    "context_management": [{"type": "compaction"}],
                },
            )
            elapsed = time.perf_counter() - started
            if response["status"] != "completed":
                raise RuntimeError(f"turn {number} did not complete: {response}")
            history.append(Message(role="user", content=[InputText(text=user)]))
            full = counter.prompt(None, history).tokens  # everything so far, as this model counts it
            history.append(Message(role="assistant", content=[OutputText(text=answer)]))
            prompt = model.count_tokens(sent[-1]).tokens
            compacted = any(item["type"] == "compaction" for item in response["output"])
            rows.append(
                {"turn": number, "full": full, "prompt": prompt, "compacted": compacted, "seconds": elapsed}
            )
            if number % 25 == 0:
                print(f"  turn {number}: full {full}, sent {prompt}", file=sys.stderr, flush=True)
        items = await runtime.list_items(caller, conv, limit=100, order="asc")
        return {"rows": rows, "budget": budget, "pairs": len(pairs), "first_items": len(items["data"])}
    finally:
        await runtime.aclose()


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    rows = result["rows"]
    prompts = [r["prompt"] for r in rows]
    over = [r for r in rows if r["prompt"] > result["budget"]]
    compactions = sum(1 for r in rows if r["compacted"])
    lines = [
        f"LoCoMo conversation {args.conversation} replayed as {len(rows)} user turns; chat model window "
        f"{args.window:,} tokens (prompt budget {result['budget']:,} after the output's reserve), counted "
        f"with tiktoken; compaction by the {'bundled local model' if args.summariser == 'local' else 'extractive stand-in'}.",
        f"Machine: {machine()}. Date: {today()}. SRE code at commit {args.revision}. Load: {load()}.",
        "",
        "| Turn | Whole history so far (tokens) | Prompt sent (tokens) | Sent ÷ whole |",
        "|---:|---:|---:|---:|",
    ]
    marks = sorted({*range(25, len(rows) + 1, 25), len(rows)})
    for r in rows:
        if r["turn"] in marks:
            lines.append(f"| {r['turn']} | {r['full']:,} | {r['prompt']:,} | {r['prompt'] / r['full']:.2f} |")
    seconds = sorted(r["seconds"] for r in rows)
    compacting = [r["seconds"] for r in rows if r["compacted"]]
    lines += [
        "",
        f"- Prompt tokens per turn: median {statistics.median(prompts):,.0f}, max {max(prompts):,} "
        f"(budget {result['budget']:,}); turns over the budget: **{len(over)}**.",
        f"- Whole history by the last turn: {rows[-1]['full']:,} tokens; the last prompt was "
        f"{rows[-1]['prompt']:,} ({rows[-1]['prompt'] / rows[-1]['full']:.1%} of it).",
        f"- Compactions: {compactions} (one turn in {len(rows) / max(1, compactions):.1f}); a compacting turn took "
        f"{statistics.median(compacting) if compacting else float('nan'):.2f} s median, the others "
        f"{statistics.median([r['seconds'] for r in rows if not r['compacted']]) * 1000:.1f} ms.",
        f"- Turn time overall: median {statistics.median(seconds) * 1000:.1f} ms, max {seconds[-1]:.2f} s.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--conversation", type=int, default=2, help="which of the 10 LoCoMo conversations (2: the longest)"
    )
    parser.add_argument("--window", type=int, default=4096, help="the chat model's context window")
    parser.add_argument("--turns", type=int, default=0, help="replay only this many user turns (0: all)")
    parser.add_argument(
        "--summariser", choices=["local", "extractive"], default="local", help="the compaction model"
    )
    parser.add_argument("--json", default=None, help="also write the per-turn rows to this JSON file")
    args = parser.parse_args()
    args.revision = revision()
    if not LOCOMO.exists():
        raise SystemExit(f"LoCoMo data not found at {LOCOMO}")
    result = asyncio.run(replay(args))
    print(report(result, args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

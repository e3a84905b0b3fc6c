"""The context engine: one budget per model call, sections, cutting, compaction and the manifest.

Property tests (`hypothesis`) drive the assembler over random histories, section policies and windows
from 512 to 128k tokens, with the store's estimates and with an exact tokenizer (tiktoken), and check
that the prompt never exceeds the window and that the manifest accounts for every candidate. The
same property is then checked through the whole runtime on both stores, and compaction keeps a
200-turn conversation going with a 2,000-token model. The model is a test double (`FunctionModel`);
everything else is SRE's own code.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sre import Runtime
from sre.context import (
    Candidate,
    ContextAssembler,
    ContextOverflow,
    ContextRequest,
    TurnContext,
    output_reserve,
)
from sre.models import ModelRequest
from sre.models.base import ChatModel, FunctionTool
from sre.models.tokens import TextTokenizer, tiktoken_tokenizer
from sre.testing import FunctionModel, ScriptedToolCall
from sre.types.context import ContextManifest, ContextPolicy, SectionPolicy
from sre.types.ids import new_id
from sre.types.items import (
    Compaction,
    FunctionCall,
    FunctionCallOutput,
    InputText,
    Message,
    ModelItem,
    OutputText,
    item_from_json,
)
from sre.types.records import Caller, StoredItem, Window
from sre.types.steps import (
    CallStepData,
    ModelStepData,
    RunPayload,
    step_data_from_stored,
)

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
]


def text_of(n: int, seed: int = 0) -> str:
    return " ".join(WORDS[(seed + i) % len(WORDS)] for i in range(n))


class ExactModel(FunctionModel):
    """A function model that counts with tiktoken, as an OpenAI model does."""

    def tokenizer(self) -> TextTokenizer | None:
        return tiktoken_tokenizer("cl100k_base")


def model_of(window: int, exact: bool, fn: Any = None) -> ChatModel:
    reply = fn or (lambda request: "ok")
    return ExactModel(reply, context_window=window) if exact else FunctionModel(reply, context_window=window)


# -- the assembler alone, over random histories ---------------------------------------------------


def stored(item: ModelItem, seq: int) -> StoredItem:
    from sre.types.items import estimate_tokens

    data = item.model_dump(mode="json", exclude_none=True)
    return StoredItem(
        tenant_id="t",
        conversation_id="conv_x",
        seq=seq,
        id=str(item.id),
        type=item.type,
        raw=json.dumps(data),
        response_id=None,
        created_at=0,
        tokens=estimate_tokens(item),
    )


@st.composite
def histories(draw: st.DrawFn) -> list[ModelItem]:
    out: list[ModelItem] = []
    for index in range(draw(st.integers(0, 120))):
        kind = draw(st.sampled_from(["user", "assistant", "assistant", "call"]))
        size = draw(st.integers(0, 400))
        if kind == "call":
            call_id = f"call_{index}"
            out.append(FunctionCall(id=new_id("fc"), call_id=call_id, name="lookup", arguments='{"q": "x"}'))
            out.append(
                FunctionCallOutput(
                    id=new_id("fco"), call_id=call_id, output=text_of(draw(st.integers(0, 3000)), index)
                )
            )
        elif kind == "user":
            out.append(Message(id=new_id("msg"), role="user", content=[InputText(text=text_of(size, index))]))
        else:
            out.append(
                Message(id=new_id("msg"), role="assistant", content=[OutputText(text=text_of(size, index))])
            )
    return out


section_policies = st.fixed_dictionaries(
    {},
    optional={
        "history": st.builds(
            SectionPolicy,
            share=st.floats(0, 1),
            min_tokens=st.integers(0, 5000),
            max_tokens=st.one_of(st.none(), st.integers(1, 50_000)),
        ),
        "tool_outputs": st.builds(
            SectionPolicy,
            share=st.floats(0, 1),
            min_tokens=st.integers(0, 5000),
            max_tokens=st.one_of(st.none(), st.integers(1, 50_000)),
        ),
    },
)


def context_for(
    model: ChatModel,
    history: list[ModelItem],
    new: list[ModelItem],
    instructions: str | None,
) -> TurnContext:
    window = Window(items=[stored(item, i + 1) for i, item in enumerate(history)], tokens=0, truncated=False)
    return TurnContext(
        caller=Caller(tenant_id="t", principal_id="p"),
        agent=None,
        definition=None,
        conversation_id="conv_x",
        window=window,
        input_items=new,
        run_items=[],
        agent_instructions=None,
        request_instructions=instructions,
        now=time.time(),
        step=0,
        counter=model.prompt_counter(),
    )


def check_manifest(manifest: ContextManifest, candidates: int) -> None:
    """Every candidate is accounted for, once; each section's use adds up; the window's arithmetic
    holds."""
    assert sum(e.count for e in manifest.entries) == candidates
    for section in manifest.sections:
        entries = [e for e in manifest.entries if e.section == section.section]
        assert section.used == sum(e.tokens_in for e in entries if e.included)
        assert section.candidates == sum(e.count for e in entries)
        assert section.offered == sum(e.tokens for e in entries)
    for entry in manifest.entries:
        assert entry.included == (entry.reason is None), entry
        assert entry.tokens_in <= entry.tokens or entry.cut, entry
        assert entry.included or entry.tokens_in == 0
    w = manifest.window
    assert w.prompt_budget == w.context_window - w.output_reserve
    assert w.used <= w.prompt_budget
    assert len(ContextManifest.model_validate(manifest.to_stored()).model_dump_json()) < 40_000


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    window=st.sampled_from([512, 700, 1024, 2000, 4096, 8192, 32_000, 128_000]),
    exact=st.booleans(),
    history=histories(),
    policy=section_policies,
    instructions=st.one_of(st.none(), st.integers(1, 600).map(text_of)),
    tool_output=st.one_of(st.none(), st.integers(0, 40_000)),
    max_output=st.one_of(st.none(), st.integers(1, 400)),
)
async def test_the_prompt_never_exceeds_the_window(
    window: int,
    exact: bool,
    history: list[ModelItem],
    policy: dict[str, SectionPolicy],
    instructions: str | None,
    tool_output: int | None,
    max_output: int | None,
) -> None:
    model = model_of(window, exact)
    new: list[ModelItem] = []
    if tool_output is not None:  # the client answers a call of the newest history
        history = [*history, FunctionCall(id=new_id("fc"), call_id="call_new", name="f", arguments="{}")]
        new.append(FunctionCallOutput(id=new_id("fco"), call_id="call_new", output=text_of(tool_output, 3)))
    new.append(Message(id=new_id("msg"), role="user", content=[InputText(text="and now?")]))
    tools = [FunctionTool(name="f", description="a tool", parameters={"type": "object"})]
    turn = context_for(model, history, new, instructions)
    request = ContextRequest(
        model=model,
        policy=ContextPolicy(sections=policy),
        max_output_tokens=max_output,
        tools=tools,
        truncation="auto",
    )
    assembler = ContextAssembler()
    candidates = await assembler.candidates(turn)
    try:
        assembled = await assembler.assemble(turn, request)
    except ContextOverflow:
        # Only what must go in can overflow: the instructions, the input and a marker per output.
        counter = model.prompt_counter()
        must = counter.base + counter.tools(
            [{"name": "f", "description": "a tool", "parameters": {"type": "object"}}]
        )
        must += counter.instructions(instructions) + sum(
            counter.item(i) for i in new if isinstance(i, Message)
        )
        must += min(counter.item(new[0]), 120) if tool_output is not None else 0
        assert must > window - output_reserve(window, max_output) - 200
        return
    sent = ModelRequest(items=assembled.items, instructions=assembled.instructions, tools=tools)
    assert model.count_tokens(sent).tokens + output_reserve(window, max_output) <= window
    assert assembled.manifest.window.used == model.count_tokens(sent).tokens
    check_manifest(assembled.manifest, len(candidates))
    # The new input always goes in, last; no tool output goes in without its call.
    assert assembled.items[-1] == new[-1]
    calls = {i.call_id for i in assembled.items if isinstance(i, FunctionCall)}
    assert all(i.call_id in calls for i in assembled.items if isinstance(i, FunctionCallOutput))
    if tool_output is not None:
        answer = next(
            i for i in assembled.items if isinstance(i, FunctionCallOutput) and i.call_id == "call_new"
        )
        if answer.output_text() != new[0].output_text():  # type: ignore[union-attr]
            assert "to fit the context window" in answer.output_text()
            assert str(new[0].id) in answer.output_text()  # where to get the rest
    # History goes in newest first, without gaps: nothing is left out for budget after what went in.
    history_entries = [e for e in assembled.manifest.entries if e.source == "history"]
    seen_in = False
    for entry in history_entries:
        seen_in = seen_in or entry.included
        assert not (seen_in and entry.reason == "budget"), history_entries
    # A section never takes more than its maximum.
    cap = policy["history"].max_tokens if "history" in policy else None
    if cap is not None:
        used = next((s.used for s in assembled.manifest.sections if s.section == "history"), 0)
        assert used <= cap


def test_allotment_flows_unused_share_and_honours_limits() -> None:
    from sre.context.budget import allot

    policies = {
        "history": SectionPolicy(share=0.5),
        "memory": SectionPolicy(share=0.3, min_tokens=100),
        "tool_outputs": SectionPolicy(share=0.2, max_tokens=150),
    }
    # Memory wants nothing: its share goes to history; tool outputs stop at their maximum.
    got = allot(1000, policies, {"history": 5000, "memory": 0, "tool_outputs": 900})
    assert got == {"history": 850, "memory": 0, "tool_outputs": 150}
    # Minimums hold under contention, and the sum never exceeds what is available.
    got = allot(1000, policies, {"history": 5000, "memory": 400, "tool_outputs": 5000})
    assert got["memory"] >= 300 and got["tool_outputs"] == 150 and sum(got.values()) == 1000
    # Floors (the markers of outputs that must go in) come first, whatever the policy.
    got = allot(
        100, {"tool_outputs": SectionPolicy(max_tokens=10)}, {"tool_outputs": 500}, {"tool_outputs": 60}
    )
    assert got == {"tool_outputs": 60}


# -- through the runtime, on both stores ----------------------------------------------------------


@pytest.fixture
def runtime_with(store_url: str, tmp_path: Path) -> Iterator[Any]:
    opened: list[Runtime] = []

    def make(models: Sequence[ChatModel], config: str | None = None) -> Runtime:
        path = None
        if config is not None:
            path = tmp_path / f"sre-{len(opened)}.toml"
            path.write_text(config)
        rt = Runtime.open(database_url=store_url, models=list(models), config=path, env={})
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        rt.store.close()


async def seeded_caller(rt: Runtime) -> Caller:
    tenant = f"ctx-{uuid.uuid4().hex[:10]}"
    rt.create_key(tenant, "alice", role="developer")
    return rt.tenant_caller(tenant, "alice")


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    window=st.sampled_from([512, 1024, 2048, 8192, 128_000]),
    exact=st.booleans(),
    sizes=st.lists(st.integers(1, 600), min_size=1, max_size=60),
    history_share=st.floats(0.05, 1),
)
async def test_turns_fit_the_window_on_both_stores(
    runtime_with: Any, window: int, exact: bool, sizes: list[int], history_share: float
) -> None:
    seen: list[ModelRequest] = []

    def reply(request: ModelRequest) -> str:
        seen.append(request)
        return "ok"

    model = model_of(window, exact, reply)
    rt = runtime_with([model], f"[context.sections.history]\nshare = {history_share}\n")
    try:
        await check_one_turn(rt, model, seen, sizes, window)
    finally:
        await rt.aclose()  # each example's pool goes with it (PostgreSQL counts connections)


async def check_one_turn(
    rt: Runtime, model: ChatModel, seen: list[ModelRequest], sizes: list[int], window: int
) -> None:
    caller = await seeded_caller(rt)
    conv = await rt.create_conversation(caller)
    for start in range(0, len(sizes), 20):
        items = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": text_of(n, i)}
            for i, n in enumerate(sizes[start : start + 20])
        ]
        await rt.create_items(caller, conv["id"], {"items": items})
    done = await rt.create_response(
        caller,
        {
            "input": "what now?",
            "conversation": conv["id"],
            "truncation": "auto",
            "include": ["context_manifest"],
        },
    )
    request = seen[-1]
    assert model.count_tokens(request).tokens + output_reserve(window, None) <= window
    [manifest] = done["context_manifest"]
    typed = ContextManifest.model_validate(
        {k: v for k, v in manifest.items() if k not in ("model_call_id", "status")}
    )
    check_manifest(typed, sum(e.count for e in typed.entries))
    assert typed.window.used == model.count_tokens(request).tokens
    used = next((s["used"] for s in manifest["sections"] if s["section"] == "history"), 0)
    assert used == sum(model.prompt_counter().item(i) for i in request.items[:-1])


# -- compaction -----------------------------------------------------------------------------------

SUMMARISER = "You condense conversations."


def chat_and_summarise(seen: list[ModelRequest], summaries: list[ModelRequest]) -> Any:
    def reply(request: ModelRequest) -> str:
        if request.instructions and request.instructions.startswith(SUMMARISER):
            summaries.append(request)
            text = request.items[0].text()  # type: ignore[union-attr]
            numbers = [w.rstrip(":") for w in text.split() if w.rstrip(":").isdigit()]
            return f"The user sent numbered messages, up to number {numbers[-1] if numbers else '?'}."
        seen.append(request)
        return "Noted."

    return reply


async def all_items(rt: Runtime, caller: Caller, conv_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = None
    while True:
        page = await rt.list_items(caller, conv_id, after=after, limit=100, order="asc")
        out.extend(page["data"])
        if not page["has_more"]:
            return out
        after = page["last_id"]


async def test_a_200_turn_conversation_keeps_going_through_compaction(runtime_with: Any) -> None:
    seen: list[ModelRequest] = []
    summaries: list[ModelRequest] = []
    model = FunctionModel(chat_and_summarise(seen, summaries), context_window=2000)
    rt = runtime_with([model])
    caller = await seeded_caller(rt)
    conv = await rt.create_conversation(caller)
    budget = 2000 - output_reserve(2000, None)
    sent: list[str] = []
    for turn in range(200):
        text = f"Message number {turn}: " + text_of(40, turn)
        sent.append(text)
        done = await rt.create_response(
            caller,
            {"input": text, "conversation": conv["id"], "context_management": [{"type": "compaction"}]},
        )
        assert done["status"] == "completed", done
        assert model.count_tokens(seen[-1]).tokens <= budget
        assert seen[-1].items[-1].text() == text  # type: ignore[union-attr]
    assert len(summaries) >= 5  # it compacted again and again
    for request in summaries:
        assert model.count_tokens(request).tokens + (request.max_output_tokens or 0) <= 2000
    items = await all_items(rt, caller, conv["id"])
    position = {item["id"]: index for index, item in enumerate(items)}
    compactions = [i for i in items if i["type"] == "compaction"]
    assert 5 <= len(compactions) <= len(summaries)
    for item in compactions:  # each covers exactly the range it claims, from the start
        covers = item["covers"]
        first, last = position[covers["first_item_id"]], position[covers["last_item_id"]]
        assert first == 0 and last - first + 1 == covers["items"], item
        assert position[item["id"]] > last
        assert item["summary"] and item["encrypted_content"].startswith("sre1.")
    # Every original item is still there and readable.
    users = [i for i in items if i["type"] == "message" and i["role"] == "user"]
    assert [u["content"][0]["text"] for u in users] == sent
    covered = await rt.get_item(caller, conv["id"], users[0]["id"])
    assert covered["content"][0]["text"] == sent[0]
    # Later turns read the newest summary instead of what it covers.
    last_request = seen[-1]
    assert last_request.items[0].text().startswith("[Summary of the earlier conversation")  # type: ignore[union-attr]
    assert sent[0] not in [i.text() for i in last_request.items if isinstance(i, Message)]
    manifests = await rt.response_context(caller, done["id"])
    assert manifests[0]["compaction"]["status"] in ("used", "created")


async def test_a_failing_summariser_falls_back_to_truncation(runtime_with: Any) -> None:
    failures = {"mode": "raise"}
    seen: list[ModelRequest] = []

    def reply(request: ModelRequest) -> Any:
        if request.instructions and request.instructions.startswith(SUMMARISER):
            if failures["mode"] == "raise":
                return RuntimeError("summariser down")
            return ""  # empty: unusable
        seen.append(request)
        return "Noted."

    model = FunctionModel(reply, context_window=1024)
    rt = runtime_with([model])
    caller = await seeded_caller(rt)
    conv = await rt.create_conversation(caller)
    await rt.create_items(
        caller, conv["id"], {"items": [{"role": "user", "content": text_of(120, i)} for i in range(12)]}
    )
    for mode, why in (("raise", "summariser down"), ("empty", "no summary")):
        failures["mode"] = mode
        done = await rt.create_response(
            caller,
            {
                "input": "still there?",
                "conversation": conv["id"],
                "context_management": [{"type": "compaction"}],
                "include": ["context_manifest"],
            },
        )
        assert done["status"] == "completed"
        note = done["context_manifest"][0]["compaction"]
        assert note["status"] == "failed" and why in note["error"]
        manifest = done["context_manifest"][0]
        left_out = [e for e in manifest["entries"] if e["section"] == "history" and e["reason"] == "budget"]
        assert left_out or manifest["older_items"]  # truncated instead
        assert model.count_tokens(seen[-1]).tokens <= 1024 - output_reserve(1024, None)
    items = await all_items(rt, caller, conv["id"])
    assert len(items) == 12 + 4 and not any(i["type"] == "compaction" for i in items)  # nothing lost
    usage = await rt.usage(caller)
    assert sum(r["failed_calls"] for r in usage["data"]) >= 2  # the failed summaries are recorded


async def test_a_long_tool_output_is_cut_with_a_marker(runtime_with: Any) -> None:
    seen: list[ModelRequest] = []

    def reply(request: ModelRequest) -> Any:
        seen.append(request)
        if isinstance(request.items[-1], FunctionCallOutput):
            return "Read it."
        return ScriptedToolCall("fetch", {"url": "x"}, "call_big")

    model = FunctionModel(reply, context_window=2048)
    rt = runtime_with([model])
    caller = await seeded_caller(rt)
    tools = [{"type": "function", "name": "fetch", "parameters": {"type": "object"}}]
    first = await rt.create_response(caller, {"input": "fetch it", "tools": tools})
    assert first["output"][0]["type"] == "function_call"
    big = text_of(30_000)
    done = await rt.create_response(
        caller,
        {
            "previous_response_id": first["id"],
            "tools": tools,
            "input": [{"type": "function_call_output", "call_id": "call_big", "output": big}],
            "include": ["context_manifest"],
        },
    )
    answer = seen[-1].items[-1]
    assert isinstance(answer, FunctionCallOutput) and len(answer.output_text()) < len(big)
    assert "tokens cut to fit the context window" in answer.output_text()
    inputs = await rt.list_input_items(caller, done["id"])
    stored_output = inputs["data"][0]
    assert stored_output["output"] == big and stored_output["id"] in answer.output_text()
    entry = next(e for e in done["context_manifest"][0]["entries"] if e["section"] == "tool_outputs")
    assert entry["cut"] == 1 and entry["included"] and entry["tokens_in"] < entry["tokens"]


async def test_agent_policy_and_an_applications_own_source(runtime_with: Any) -> None:
    seen: list[ModelRequest] = []
    model = FunctionModel(lambda r: seen.append(r) or "ok", context_window=4096)
    rt = runtime_with([model])
    caller = await seeded_caller(rt)

    class Notes:
        name = "notes"
        contiguous = False

        async def candidates(self, turn: TurnContext) -> list[Candidate]:
            return [
                Candidate(
                    source="notes",
                    id=f"note:{i}",
                    section="notes",
                    tokens=turn.counter.text(f"Note {i}: " + text_of(200, i)) + 1,
                    score=1 - i / 10,
                    text=f"Note {i}: " + text_of(200, i),
                    provenance={"app": "crm"},
                )
                for i in range(6)
            ]

    rt.add_context_source(Notes())
    with pytest.raises(ValueError):
        rt.add_context_source(Notes())
    await rt.create_agent(
        caller,
        {
            "name": "tight",
            "instructions": "Be brief.",
            "context": {
                "sections": {
                    "history": {"share": 0.1, "max_tokens": 300},
                    "notes": {"share": 0.3, "max_tokens": 700},
                }
            },
        },
    )
    conv = await rt.create_conversation(caller)
    await rt.create_items(
        caller, conv["id"], {"items": [{"role": "user", "content": text_of(100, i)} for i in range(20)]}
    )
    done = await rt.create_response(
        caller,
        {
            "model": "agent:tight",
            "input": "go",
            "conversation": conv["id"],
            "store": False,
            "include": ["context_manifest"],
        },
    )
    [manifest] = done["context_manifest"]
    sections = {s["section"]: s for s in manifest["sections"]}
    assert sections["history"]["used"] <= 300 and sections["notes"]["used"] <= 700
    assert sections["notes"]["included"] == sum(
        1 for n in range(6) if f"Note {n}:" in (seen[-1].instructions or "")
    )
    assert seen[-1].instructions.startswith("Be brief.")  # type: ignore[union-attr]
    notes = [e for e in manifest["entries"] if e["source"] == "notes"]
    assert sum(e["count"] for e in notes) == 6 and any(e["reason"] in ("score", "budget") for e in notes)


# -- what durable runs keep: older versions still load ---------------------------------------------


def test_durable_records_of_older_versions_still_load() -> None:
    # A model step as version 1 wrote it: usage as a list.
    v1 = {
        "items": [{"type": "message", "role": "assistant", "content": []}],
        "usage": [10, 2, 5, 1],
        "status": "completed",
        "reason": None,
    }
    data = step_data_from_stored("model", v1)
    assert isinstance(data, ModelStepData) and data.usage.input_tokens == 10 and data.usage.cached_tokens == 2
    assert data.usage.output_tokens == 5 and data.usage.exact and data.version == 2
    call = step_data_from_stored(
        "tool", {"output": {"type": "function_call_output", "call_id": "c", "output": "1"}}
    )
    assert isinstance(call, CallStepData) and call.output is not None
    # A run payload of version 2.
    payload = RunPayload.model_validate(
        {
            "version": 2,
            "request": {"input": "x"},
            "reported_model": None,
            "agent": None,
            "response": {"id": "resp_1"},
        }
    )
    assert payload.version == 3 and payload.request == {"input": "x"}
    # Newer than this code: refused, not misread.
    with pytest.raises(ValueError, match="version 99; this SRE reads up to version 2"):
        step_data_from_stored("model", {**v1, "version": 99})
    with pytest.raises(ValueError, match="version 99; this SRE reads up to version 3"):
        RunPayload.model_validate({"version": 99, "request": {}, "response": {}})
    with pytest.raises(ValueError):
        RunPayload.model_validate({"version": 1, "request": {}, "response": {}})
    # Manifests recorded before they had a version read as none.
    assert ContextManifest.from_stored({"window": {"items": 3}, "input_items": 1}) is None
    with pytest.raises(ValueError):
        ContextManifest.from_stored({"version": 7})


def test_a_compaction_item_round_trips_through_its_content() -> None:
    from sre.types.items import CompactionCovers, compaction_content, parse_item, read_compaction

    covers = CompactionCovers(first_item_id="msg_a", last_item_id="msg_b", items=7)
    content = compaction_content("They talked about cats.", covers, 42)
    assert read_compaction(content) == ("They talked about cats.", covers, 42)
    # A client's copy is read from its content alone: its readable fields cannot be forged.
    parsed = parse_item({"type": "compaction", "encrypted_content": content, "summary": "lies"}, "input[0]")
    assert isinstance(parsed, Compaction) and parsed.summary == "They talked about cats."
    assert item_from_json(json.dumps(parsed.model_dump(mode="json"))) == parsed


async def test_a_compaction_item_in_the_input_replaces_what_came_before(runtime_with: Any) -> None:
    seen: list[ModelRequest] = []
    summaries: list[ModelRequest] = []
    model = FunctionModel(chat_and_summarise(seen, summaries), context_window=4096)
    rt = runtime_with([model])
    caller = await seeded_caller(rt)
    compacted = await rt.compact_response(
        caller,
        {
            "input": [
                {"role": "user", "content": "Message number 7: hello"},
                {"role": "assistant", "content": "hi"},
            ]
        },
    )
    assert compacted["object"] == "response.compaction" and len(summaries) == 1
    *users, item = compacted["output"]
    assert [u["content"][0]["text"] for u in users] == ["Message number 7: hello"]
    assert item["type"] == "compaction" and "number 7" in item["summary"]
    conv = await rt.create_conversation(caller, {"items": [{"role": "user", "content": "old news"}]})
    done = await rt.create_response(
        caller,
        {
            "conversation": conv["id"],
            "input": [item, {"role": "user", "content": "go on"}],
            "include": ["context_manifest"],
        },
    )
    texts = [i.text() for i in seen[-1].items]  # type: ignore[union-attr]
    assert (
        texts[-1] == "go on"
        and texts[0].startswith("[Summary of the earlier conversation")
        and "old news" not in texts
    )
    reasons = {e["reason"] for e in done["context_manifest"][0]["entries"] if e["source"] == "history"}
    assert reasons == {"superseded"}
    # The next turn reads the stored compaction item (a client's: it stands for all before it).
    await rt.create_response(caller, {"conversation": conv["id"], "input": "and then?"})
    texts = [i.text() for i in seen[-1].items]  # type: ignore[union-attr]
    assert "old news" not in texts and texts[0].startswith("[Summary of the earlier conversation")
    assert texts[-3:] == ["go on", "Noted.", "and then?"]

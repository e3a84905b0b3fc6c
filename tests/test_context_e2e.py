"""Compaction and context manifests through the official `openai` client against `sre serve`, on both
stores: `responses.compact`, `context_management` on a conversation, compaction items that round-trip
through the client, `include=["context_manifest"]`, and `sre responses context` on the same store.

The upstream is the fake Chat Completions server on loopback (a test double for the model only); it
records what SRE sent, which is how these tests see the summary standing in for what it covers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai.types.responses import ResponseCompactionItem, ResponseOutputMessage

from tests.support.upstream import ChatUpstream, Reply
from tests.test_e2e_openai_client import Harness, contents


@pytest.fixture
def harness(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, upstream: ChatUpstream
) -> Iterator[Harness]:
    pg = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    h = Harness(tmp_path, backend, pg, upstream)
    yield h
    if h.server is not None:
        h.server.stop()


SUMMARY = "The user introduced themself as Ada, a chemist from Lyon, and asked about catalysts."


def test_compact_and_use_the_compacted_output(harness: Harness) -> None:
    client = harness.start()
    history = [
        {"role": "user", "content": "My name is Ada and I am a chemist in Lyon."},
        {"role": "assistant", "content": "Nice to meet you, Ada. " + "Catalysts speed reactions. " * 40},
        {"role": "user", "content": "Which catalyst for hydrogenation?"},
        {"role": "assistant", "content": "Palladium on carbon is common. " * 30},
    ]
    harness.upstream.replies.append(Reply(text=SUMMARY))
    compacted = client.responses.compact(model="fake", input=history)  # type: ignore[arg-type]
    assert compacted.object == "response.compaction"
    *users, item = compacted.output
    assert isinstance(item, ResponseCompactionItem) and item.encrypted_content.startswith("sre1.")
    assert [u.content[0].text for u in users] == [  # type: ignore[union-attr]
        "My name is Ada and I am a chemist in Lyon.",
        "Which catalyst for hydrogenation?",
    ]
    assert compacted.usage.input_tokens > 0 and compacted.usage.output_tokens > 0
    summariser = harness.upstream.requests[-1]["messages"]
    assert "Palladium on carbon" in summariser[-1]["content"]  # it read what it summarised
    # The compacted output is the next turn's context: the summary, not what it stands for.
    harness.upstream.replies.append(Reply(text="Palladium, as I said."))
    follow = client.responses.create(
        model="fake",
        store=False,
        input=[
            *[o.model_dump(exclude_none=True) for o in compacted.output],
            {"role": "user", "content": "Remind me?"},
        ],  # type: ignore[misc]
    )
    assert follow.output_text == "Palladium, as I said."
    sent = contents(harness.last_messages())
    assert any(isinstance(c, str) and SUMMARY in c for c in sent)
    assert not any(isinstance(c, str) and "Catalysts speed reactions" in c for c in sent)
    assert sent[-1] == "Remind me?"


def test_context_management_compacts_a_conversation(harness: Harness) -> None:
    client = harness.start()
    long = "The experiment log reads: " + "temperature stable, pressure rising. " * 60
    conversation = client.conversations.create(
        items=[{"type": "message", "role": "user", "content": f"{long} (entry {i})"} for i in range(6)]  # type: ignore[misc]
    )
    harness.upstream.replies.extend([Reply(text=SUMMARY), Reply(text="Understood.")])
    first = client.responses.create(
        model="fake",
        conversation=conversation.id,
        input="Summarise the log so far.",
        context_management=[{"type": "compaction", "compact_threshold": 300}],
        include=["context_manifest"],  # type: ignore[list-item]
    )
    compaction, answer = first.output
    assert isinstance(compaction, ResponseCompactionItem) and isinstance(answer, ResponseOutputMessage)
    assert first.output_text == "Understood."
    manifest = first.model_extra["context_manifest"][0]  # type: ignore[index]
    assert (
        manifest["compaction"]["status"] == "created" and manifest["compaction"]["item_id"] == compaction.id
    )
    assert manifest["window"]["used"] <= manifest["window"]["prompt_budget"]
    sent = contents(harness.last_messages())
    assert any(isinstance(c, str) and SUMMARY in c for c in sent) and sent[-1] == "Summarise the log so far."
    # A later turn, over a restart, reads the stored summary instead of the items it covers.
    client = harness.restart()
    harness.upstream.replies.append(Reply(text="Still stable."))
    later = client.responses.create(model="fake", conversation=conversation.id, input="And now?")
    assert later.output_text == "Still stable."
    sent = contents(harness.last_messages())
    assert any(isinstance(c, str) and SUMMARY in c for c in sent)
    assert not any(isinstance(c, str) and "(entry 0)" in c for c in sent)
    # The originals stay readable; the compaction item is among the conversation's items.
    items = list(client.conversations.items.list(conversation.id, order="asc", limit=100))
    assert sum(1 for i in items if i.type == "compaction") == 1
    assert [i.content[0].text for i in items if i.type == "message" and i.role == "user"][:6] == [  # type: ignore[union-attr]
        f"{long} (entry {i})" for i in range(6)
    ]
    # The manifest, again: from the API and from the CLI on the same store.
    again = client.responses.retrieve(first.id, include=["context_manifest"])  # type: ignore[list-item]
    assert again.model_extra["context_manifest"] == first.model_extra["context_manifest"]  # type: ignore[index]
    env = {**os.environ, **harness.env}
    shown = subprocess.run(
        [sys.executable, "-m", "sre", "responses", "context", first.id, "--tenant", harness.tenant,
         "--data-dir", str(harness.data_dir)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "history compacted now into" in shown.stdout and compaction.id in shown.stdout
    assert "SECTION" in shown.stdout and "history" in shown.stdout and "compacted" in shown.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "sre", "responses", "context", "resp_" + "0" * 32, "--tenant", harness.tenant,
         "--data-dir", str(harness.data_dir)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1 and missing.stderr.startswith("error: Response with id")

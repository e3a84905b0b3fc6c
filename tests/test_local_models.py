"""The bundled local models, run for real: SmolLM2 through llama.cpp and MiniLM through onnxruntime.

These load real weights from the installed packages (no download) and are marked slow; they are
still part of the test command.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from sre import Runtime
from sre.models import ModelRequest
from sre.models.config import local_model_info
from sre.models.embeddings import EmbeddingInfo, EmbeddingRegistry, OpenAIEmbeddings, local_embeddings
from sre.models.local import LocalChatModel, bundled_gguf, load_llama
from sre.types.errors import ConfigError
from sre.types.formats import output_violation, parse_text_format
from sre.types.items import parse_input_items
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol() -> LocalChatModel:
    return LocalChatModel(local_model_info())


async def collect(model: LocalChatModel, prompt: str, **kwargs: Any) -> tuple[str, list[Any]]:
    events = [e async for e in model.stream(ModelRequest(items=parse_input_items(prompt), **kwargs))]
    return "".join(e.text for e in events if e.type == "text_delta"), events


async def test_local_model_streams_an_answer(smol: LocalChatModel) -> None:
    assert bundled_gguf().is_file() and bundled_gguf().stat().st_size > 50_000_000
    text, events = await collect(
        smol, "What is the capital of France?", max_output_tokens=24, temperature=0.0
    )
    assert text.strip()
    assert len([e for e in events if e.type == "text_delta"]) > 1  # streamed token by token
    usage = next(e for e in events if e.type == "usage")
    assert usage.input_tokens > 5 and 0 < usage.output_tokens <= 24
    assert events[-1].type == "finish"


async def test_one_instance_serves_concurrent_requests(smol: LocalChatModel) -> None:
    other = LocalChatModel(local_model_info("another-name"))
    results = await asyncio.gather(
        collect(smol, "Say hello.", max_output_tokens=8), collect(other, "Say goodbye.", max_output_tokens=8)
    )
    assert all(text.strip() for text, _ in results)
    assert smol.llama() is other.llama()  # the weights are loaded once per process


def test_local_tokenizer_is_exact(smol: LocalChatModel) -> None:
    counted = smol.count_tokens(ModelRequest(items=parse_input_items("Hello world"), instructions="Be kind."))
    assert counted.exact and counted.tokens > 4
    assert smol.tokenizer().count("Hello world") == len(smol.llama().tokenize(b"Hello world", add_bos=False))


def test_missing_weights_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_llama(str(tmp_path / "nope.gguf"), 512, 1)


async def test_local_embeddings() -> None:
    model = local_embeddings()
    result = await model.embed(
        ["The cat sits on the mat.", "A cat is sitting on a rug.", "Interest rates rose."]
    )
    vectors = np.array(result.vectors)
    assert vectors.shape == (3, 384) and result.tokens > 10
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2]
    many = await model.embed([f"sentence {i}" for i in range(150)])  # more than one batch
    assert len(many.vectors) == 150
    assert np.allclose(many.vectors[7], (await model.embed(["sentence 7"])).vectors[0], atol=1e-5)


class _EmbeddingUpstream(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.received.append(body)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0]}
            for i, t in enumerate(body["input"])
        ]
        payload = json.dumps(
            {"object": "list", "data": data, "usage": {"prompt_tokens": 3, "total_tokens": 3}}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def embedding_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


async def test_openai_compatible_embeddings_batch(embedding_upstream: str) -> None:
    info = EmbeddingInfo(
        "remote", "openai", "text-embedding-3-small", 2, {"base_url": embedding_upstream, "batch_size": 2}
    )
    model = OpenAIEmbeddings(info)
    result = await model.embed(["a", "bb", "ccc"])
    await model.aclose()
    assert result.vectors == [[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]]
    assert [len(r["input"]) for r in _EmbeddingUpstream.received[-2:]] == [2, 1]
    registry = EmbeddingRegistry.from_config(
        {"embeddings": {"remote": {"provider": "openai", "base_url": embedding_upstream}}}
    )
    assert registry.resolve(None).name == "remote"


def test_offline_out_of_the_box(tmp_path: Path) -> None:
    """`sre serve` with no configuration at all answers through the bundled local model."""
    server = ServerProcess(data_dir=tmp_path / "data", args=["--no-auth"]).start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        models = {m.id: m for m in client.models.list().data}
        assert models["local"].owned_by == "local" and models["local"].context_window == 4096  # type: ignore[attr-defined]
        conv = client.conversations.create()
        first = client.responses.create(
            input="Hello! My name is Ada.", conversation=conv.id, max_output_tokens=32
        )
        second = client.responses.create(input="What is my name?", conversation=conv.id, max_output_tokens=32)
        assert first.output_text.strip() and second.output_text.strip()
        assert [i.type for i in client.conversations.items.list(conv.id).data] == ["message"] * 4
        assert second.usage is not None and second.usage.input_tokens > first.usage.input_tokens  # type: ignore[union-attr]
        vectors = client.embeddings.create(
            model="local-embeddings", input=["offline", "embeddings"]
        )  # base64 by default
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384
        floats = client.embeddings.create(model="local-embeddings", input="offline", encoding_format="float")
        assert np.allclose(floats.data[0].embedding, vectors.data[0].embedding, atol=1e-6)
    finally:
        server.stop()


async def test_runtime_defaults_to_local_models(tmp_path: Path) -> None:
    runtime = Runtime.open(data_dir=tmp_path, env={})
    try:
        assert runtime.models.default == "local" and runtime.embeddings.default == "local-embeddings"
        listed = {m["id"]: m for m in runtime.list_models()["data"]}
        assert listed["local"]["context_window"] == 4096 and listed["local-embeddings"]["dimensions"] == 384
    finally:
        await runtime.aclose()


# Structured outputs: llama.cpp's grammar from the format's JSON schema, with the real SmolLM2

FLAT_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
NESTED_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "location": {
            "type": "object",
            "properties": {"country": {"type": "string", "maxLength": 24}, "population": {"type": "integer"}},
            "required": ["country", "population"],
            "additionalProperties": False,
        },
    },
    "required": ["city", "location"],
    "additionalProperties": False,
}
ENUM_ARRAY_SCHEMA = {
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
}
GRAMMAR_SCHEMAS = {"flat": FLAT_SCHEMA, "nested": NESTED_SCHEMA, "enum_array": ENUM_ARRAY_SCHEMA}
GRAMMAR_PROMPTS = [
    "Tell me about Paris.",
    "Who was Ada Lovelace?",
    "I loved this film, the music was great.",
    "Describe Tokyo in one sentence.",
    "The service was slow and the food was cold.",
    "What is a llama?",
    "Give me a fact about Berlin.",
    "Write a short note about the weather today.",
    "Who is the main character of Hamlet?",
    "Summarise: the meeting moved to Tuesday.",
    "What do you know about Cairo?",
    "My order arrived broken.",
    "Name a famous scientist.",
    "Describe a quiet village by the sea.",
    "Is Python a good first language?",
    "Tell me about Mount Everest.",
    "The book was fine, nothing special.",
    "What is the capital of Canada?",
    "Introduce yourself.",
    "Reply with anything you like.",
]


@pytest.mark.parametrize("schema_name", list(GRAMMAR_SCHEMAS))
async def test_grammar_makes_every_output_schema_valid(smol: LocalChatModel, schema_name: str) -> None:
    """20 prompts against each schema, sampled (llama.cpp's default temperature) under the grammar:
    every output is valid JSON that matches its schema, and it finished (not cut by
    `max_output_tokens`)."""
    fmt = parse_text_format(
        {"type": "json_schema", "name": schema_name, "schema": GRAMMAR_SCHEMAS[schema_name], "strict": True}
    )
    for prompt in GRAMMAR_PROMPTS:
        text, events = await collect(smol, prompt, text_format=fmt, max_output_tokens=128)
        assert events[-1].reason == "stop", (prompt, text)
        assert output_violation(fmt, text) is None, (prompt, text, output_violation(fmt, text))


async def test_structured_output_through_the_api(tmp_path: Path) -> None:
    """The local model as the runtime's default: a strict `json_schema` turn completes with JSON
    that matches the schema, and the response echoes the format."""
    import httpx

    from sre.api import create_app

    runtime = Runtime.open(data_dir=tmp_path, env={})
    try:
        _, secret = runtime.create_key("local-structured", "alice")
        transport = httpx.ASGITransport(app=create_app(runtime))
        headers = {"Authorization": f"Bearer {secret}"}
        fmt = {"type": "json_schema", "name": "person", "schema": FLAT_SCHEMA, "strict": True}
        async with httpx.AsyncClient(transport=transport, base_url="http://sre", headers=headers) as client:
            body = {"input": "Who was Ada Lovelace?", "text": {"format": fmt}, "max_output_tokens": 64}
            done = (await client.post("/v1/responses", json=body)).json()
        assert done["status"] == "completed" and done["text"] == {"format": fmt}
        (message,) = done["output"]
        answer = json.loads(message["content"][0]["text"])
        assert set(answer) == {"name", "age"} and isinstance(answer["age"], int)
    finally:
        await runtime.aclose()

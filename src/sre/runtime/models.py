"""The runtime's models: embeddings, and the list of configured chat and embedding models."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import Mapping
from typing import Any

from sre.runtime.base import _coerce
from sre.runtime.quotas import QuotasAPI
from sre.types.errors import InvalidRequest, ModelError, SREError
from sre.types.ids import new_id
from sre.types.records import Caller, ModelCallRecord
from sre.types.requests import (
    CreateEmbeddings,
)


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what OpenAI's clients ask for by default: little-endian float32
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


class ModelsAPI(QuotasAPI):
    async def create_embeddings(
        self, caller: Caller, request: CreateEmbeddings | Mapping[str, Any]
    ) -> dict[str, Any]:
        body = _coerce(CreateEmbeddings, request)
        await self._check_tokens(caller)
        model = self.embeddings.resolve(body.model)
        if body.dimensions is not None and body.dimensions != model.info.dimensions:
            raise InvalidRequest(
                f"Model '{model.name}' makes {model.info.dimensions}-dimensional vectors; "
                f"'dimensions' must be {model.info.dimensions} or omitted.",
                param="dimensions",
            )
        texts = [body.input] if isinstance(body.input, str) else body.input
        started = time.perf_counter()
        try:
            result = await model.embed(texts)
            status, error = "completed", None
        except SREError as exc:
            status, error, result = "failed", exc, None
        call = ModelCallRecord(
            tenant_id=caller.tenant_id,
            id=new_id("mc"),
            response_id=None,
            principal_id=caller.principal_id,
            key_id=caller.key_id,
            model=model.name,
            provider=model.info.provider,
            status=status,
            input_tokens=0 if result is None else result.tokens,
            output_tokens=0,
            latency_ms=(time.perf_counter() - started) * 1000,
            manifest={"embeddings": len(texts)},
            error=None if error is None else error.message,
            created_at=int(time.time()),
            tokens_exact=model.info.provider == "local",
        )
        await asyncio.to_thread(self.store.responses.record_model_call, call)
        if error is not None or result is None:
            raise error or ModelError("embedding failed")
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
            for i, v in enumerate(result.vectors)
        ]
        usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
        return {"object": "list", "data": data, "model": model.name, "usage": usage}

    # -- models -------------------------------------------------------------------------------

    def list_models(self) -> dict[str, Any]:
        data = [
            {
                "id": info.name,
                "object": "model",
                "created": 0,
                "owned_by": info.provider,
                "context_window": info.context_window,
                "pricing": None
                if info.pricing is None
                else {
                    "input": info.pricing.input,
                    "cached_input": info.pricing.cached_input,
                    "output": info.pricing.output,
                    "unit": "USD per 1M tokens",
                },
            }
            for info in self.models.infos()
        ]
        for embedding in self.embeddings.models.values():
            data.append(
                {
                    "id": embedding.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": embedding.info.provider,
                    "kind": "embedding",
                    "dimensions": embedding.info.dimensions,
                }
            )
        return {"object": "list", "data": data}

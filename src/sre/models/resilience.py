"""Resilience as wrappers around any provider: retries with backoff, and a fallback chain.

`RetryingModel` tries a call again when the provider says its failure is retryable (429, 5xx,
a dropped connection, a stream that ended early) and nothing has been streamed yet: exponential
backoff with jitter, `Retry-After` honoured, both capped. `FallbackModel` moves to the next model
of its chain on a failure before any output. Once output has reached the caller, a failure is
passed on: the turn ends as failed with the reason, never as a silently truncated answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from sre.models.base import ChatModel, ModelEvent, ModelRequest
from sre.models.tokens import PromptCounter, TextTokenizer
from sre.types.errors import SREError

log = logging.getLogger("sre.models")
Sleep = Callable[[float], Awaitable[None]]


class WrapperModel(ChatModel):
    """A model that delegates to another and keeps its name, window, prices and tokenizer."""

    def __init__(self, inner: ChatModel) -> None:
        super().__init__(inner.info)
        self.inner = inner

    def tokenizer(self) -> TextTokenizer | None:
        return self.inner.tokenizer()

    def prompt_counter(self) -> PromptCounter:
        return self.inner.prompt_counter()

    async def aclose(self) -> None:
        await self.inner.aclose()


class RetryingModel(WrapperModel):
    def __init__(
        self,
        inner: ChatModel,
        *,
        max_retries: int = 2,
        base_delay: float = 0.5,
        max_delay: float = 20.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(inner)
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.attempts = 0  # calls made upstream, for tests and diagnostics

    def delay(self, attempt: int, error: SREError) -> float | None:
        """Seconds to wait before retry number `attempt` (1-based); None: do not retry."""
        if error.retry_after is not None:
            retry_after: float = error.retry_after
            return retry_after if retry_after <= self.max_delay else None
        backoff = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return backoff * random.uniform(0.5, 1.0)  # full jitter on the upper half

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        attempt = 0
        while True:
            streamed = False
            self.attempts += 1
            try:
                async for event in self.inner.stream(request):
                    streamed = True
                    yield event
                return
            except SREError as error:
                attempt += 1
                wait = (
                    None
                    if streamed or not error.retryable or attempt > self.max_retries
                    else self.delay(attempt, error)
                )
                if wait is None:
                    raise
                log.warning("model %s failed (%s); retry %d in %.2fs", self.name, error.code, attempt, wait)
                await self.sleep(wait)


class FallbackModel(WrapperModel):
    """The first model of the chain that answers; the chain's name is the first model's."""

    def __init__(self, chain: Sequence[ChatModel]) -> None:
        if not chain:
            raise ValueError("a fallback chain needs at least one model")
        super().__init__(chain[0])
        self.chain = list(chain)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        for position, model in enumerate(self.chain):
            streamed = False
            try:
                async for event in model.stream(request):
                    streamed = True
                    yield event
                return
            except SREError as error:
                if streamed or position == len(self.chain) - 1:
                    raise
                log.warning(
                    "model %s failed (%s); falling back to %s",
                    model.name,
                    error.code,
                    self.chain[position + 1].name,
                )

    async def aclose(self) -> None:
        for model in self.chain:
            await model.aclose()

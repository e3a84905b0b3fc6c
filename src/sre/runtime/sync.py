"""`SyncRuntime`: the thin blocking wrapper over `Runtime` for scripts and notebooks.

It owns one event loop and runs each coroutine method of the async runtime on it; there is no
second implementation of anything.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from sre.runtime.runtime import Runtime


class SyncRuntime:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._runner = asyncio.Runner()

    @classmethod
    def open(cls, **kwargs: Any) -> SyncRuntime:
        return cls(Runtime.open(**kwargs))

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._runtime, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(attr(*args, **kwargs))

        return call

    def stream_response(self, caller: Any, request: Any) -> list[dict[str, Any]]:
        """All events of a streamed turn, collected (a blocking caller cannot interleave)."""

        async def collect() -> list[dict[str, Any]]:
            stream = await self._runtime.stream_response(caller, request)
            return [event async for event in stream]

        return self._runner.run(collect())

    def close(self) -> None:
        self._runner.run(self._runtime.aclose())
        self._runner.close()

    def __enter__(self) -> SyncRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__: list[str] = ["SyncRuntime"]

"""Plain turns: a turn that names no agent and is not background, run now for a waiting client.

It goes through the same run engine and model step as every durable run, with a lighter ledger
(`TurnLedger`): no run row and no journal in the store, one commit at its end. It runs in a task of
its own, so a client that goes away does not lose the turn; its events (or only its final one)
arrive on a queue, and a callback given at its start runs once it has ended (a quota's place is
freed so). No SQL and no HTTP here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sre.engine.journal import DONE, TurnLedger
from sre.engine.runs import RunEngine
from sre.engine.turn import PreparedTurn
from sre.types.errors import ModelError, SREError
from sre.types.status import FINAL_TYPES

log = logging.getLogger("sre.plain")

Event = dict[str, Any]
OnEnd = Callable[[], Awaitable[None]]


class _Once:
    """An end-of-turn callback that runs once, whichever of the turn's task and its client gets there
    first."""

    def __init__(self, callback: OnEnd | None) -> None:
        self.callback = callback

    async def __call__(self) -> None:
        callback, self.callback = self.callback, None
        if callback is not None:
            try:
                await callback()
            except Exception:
                log.exception("the end of a plain turn could not be recorded")


class PlainTurns:
    def __init__(self, engine: RunEngine) -> None:
        self.engine = engine
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, turn: PreparedTurn, *, events: bool, on_end: OnEnd | None = None) -> asyncio.Queue[Any]:
        """Run the turn in its own task; its events (and finally `DONE`) arrive on the queue. `on_end`
        runs once the turn has ended (committed or failed), before `DONE`."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(self._drive(turn, queue, events=events, on_end=_Once(on_end)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return queue

    def stream(self, turn: PreparedTurn, *, on_end: OnEnd | None = None) -> AsyncIterator[Event]:
        """Start the turn now; its events. `on_end` runs before the final event reaches the client (the
        turn has committed by then), so a client that starts its next turn at once finds it done."""
        once = _Once(on_end)
        return self._events(self.start(turn, events=True, on_end=once), once)

    async def _events(self, queue: asyncio.Queue[Any], once: _Once) -> AsyncIterator[Event]:
        last = -1
        while True:
            event = await queue.get()
            if event is DONE:
                return
            if isinstance(event, dict):
                last = event["sequence_number"]
                if event["type"] in FINAL_TYPES:
                    await once()
                yield event
            elif isinstance(event, SREError):  # the turn could not be committed: say so, last
                yield {
                    "type": "error",
                    "code": event.code or event.error_type,
                    "message": event.message,
                    "param": event.param,
                    "sequence_number": last + 1,
                }

    async def respond(self, turn: PreparedTurn, *, on_end: OnEnd | None = None) -> Event:
        queue = self.start(turn, events=False, on_end=on_end)
        final: Event | None = None
        while True:
            event = await queue.get()
            if event is DONE:
                break
            if isinstance(event, SREError):
                raise event
            final = event["response"]
        assert final is not None
        return final

    async def _drive(
        self, turn: PreparedTurn, queue: asyncio.Queue[Any], *, events: bool, on_end: _Once
    ) -> None:
        try:
            await self.engine.execute(turn, TurnLedger(self.engine.store, queue, events=events))
        except Exception as exc:  # the task must always end the queue
            error = (
                exc
                if isinstance(exc, SREError)
                else ModelError(f"internal error: {type(exc).__name__}: {exc}")
            )
            queue.put_nowait(error)
        finally:
            await on_end()
            queue.put_nowait(DONE)

    async def aclose(self) -> None:
        """Let running turns finish (they commit), up to a bound, then cancel the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=10)
            for task in pending:
                task.cancel()

"""Status names of responses and runs, the groups the engine and store reason with, and the
streaming event that ends a response in each status. Defined here once; imports nothing."""

from __future__ import annotations

from typing import Final, Literal

ResponseStatus = Literal[
    "queued", "in_progress", "requires_action", "completed", "incomplete", "failed", "cancelled"
]

QUEUED: Final = "queued"
IN_PROGRESS: Final = "in_progress"
REQUIRES_ACTION: Final = "requires_action"  # a run paused for client tool outputs or approvals
COMPLETED: Final = "completed"
INCOMPLETE: Final = "incomplete"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"

TERMINAL: Final = frozenset({COMPLETED, INCOMPLETE, FAILED, CANCELLED})
ACTIVE: Final = (QUEUED, IN_PROGRESS, REQUIRES_ACTION)  # a conversation runs one of these at a time

FINAL_EVENT: Final = {
    COMPLETED: "response.completed",
    INCOMPLETE: "response.incomplete",
    FAILED: "response.failed",
    # The Responses API has no `response.cancelled` event: a cancelled run ends with
    # `response.incomplete` whose response has status "cancelled" (the openai client parses it).
    CANCELLED: "response.incomplete",
    # A pause ends the stream like OpenAI's function-call turns do.
    REQUIRES_ACTION: "response.completed",
}
FINAL_TYPES: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})

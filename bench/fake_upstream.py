"""A fake Chat Completions upstream for bench/gateway_overhead.py, run in a process of its own.

It is the test suite's `ChatUpstream` (tests/support/upstream.py: a threaded HTTP server on
loopback), answering every request with the same 20-word reply streamed word by word (one chunk
per word, after a first chunk with the role), then a chunk with the finish reason, a usage chunk
and `data: [DONE]`; each stream closes its connection. It prints its base URL on the
first line of stdout, then serves until it is terminated.

    bench/.venv/bin/python bench/fake_upstream.py
"""

from __future__ import annotations

import collections
import signal
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for tests.support

from tests.support.upstream import ChatUpstream, Reply

REPLY = (
    "Sure. The deploy finished at noon, latency stayed within budget, and the next release is "
    "scheduled for Monday morning."
)  # 20 words


class FixedUpstream(ChatUpstream):
    def __init__(self) -> None:
        super().__init__()
        # The fake records every request for tests; a benchmark makes thousands: keep the last few.
        self.requests = collections.deque(maxlen=8)  # type: ignore[assignment]
        self.headers = collections.deque(maxlen=8)  # type: ignore[assignment]
        self.paths = collections.deque(maxlen=8)  # type: ignore[assignment]

    def echo(self, body: dict[str, Any]) -> Reply:
        return Reply(text=REPLY)


def main() -> None:
    upstream = FixedUpstream().start()
    print(upstream.base_url, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    upstream.stop()


if __name__ == "__main__":
    main()

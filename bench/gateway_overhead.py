"""The model gateway's own time per call, against the official `openai` SDK on the same fake upstream.

A fake Chat Completions server (bench/fake_upstream.py: the test suite's `ChatUpstream`, in a
process of its own so it shares no GIL with the client measured) streams the same 20-word reply
to every request. In one event loop, alternating in rotating order, each call timed end to end
(`time.perf_counter`, until the stream is consumed):

  A. the official SDK: `openai.AsyncOpenAI(base_url=fake).chat.completions.create(model=...,
     messages=[...], stream=True, stream_options={"include_usage": True})`, every chunk consumed;
  B. SRE's gateway as users get it: `ModelRegistry.from_config(...).resolve(name)` of a model with
     `provider = "openai"` (the Chat Completions provider inside its retry wrapper),
     `.stream(ModelRequest(...))`, every event consumed;
  C. (full stateful turn, not the gateway) `client.responses.create(..., stream=True)` with the
     official SDK against a real `sre serve --no-auth` whose model is the same fake: validation,
     the model call through the gateway, the turn stored in SQLite, SSE back to the client;
  D. (reference: the floor) a bare `httpx.AsyncClient.stream("POST", ...)` reading the lines,
     parsing nothing.

Both A and B send the same body (one user message, `stream`, `stream_options.include_usage`) and
open a new connection per call (the fake closes each stream's connection). Prints a markdown
table: median and p95 per call, and each ratio to A.

    bench/.venv/bin/python bench/gateway_overhead.py                 # 500 calls each
    bench/.venv/bin/python bench/gateway_overhead.py --calls 100 --no-server   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OtherLoad, Server, load, machine, revision, sentence, summary_ms, today
from fake_upstream import REPLY
from sre.models.base import ModelRequest, TextDelta
from sre.models.config import ModelRegistry
from sre.models.resilience import RetryingModel
from sre.types.items import parse_input_items

MODEL = "gw"  # SRE's name for the model
UPSTREAM_MODEL = "fake-model"
TARGET = 1.1


def start_fake() -> tuple[subprocess.Popen[str], str]:
    script = Path(__file__).resolve().parent / "fake_upstream.py"
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    base_url = proc.stdout.readline().strip()
    if not base_url.startswith("http"):
        proc.terminate()
        raise RuntimeError(f"the fake upstream did not start: {base_url!r}")
    return proc, base_url


def server_config(fake_url: str) -> str:
    return f"""default_model = "{MODEL}"

[models.{MODEL}]
provider = "openai"
model = "{UPSTREAM_MODEL}"
base_url = "{fake_url}"
api_key = "bench"
"""


Call = Callable[[str], Awaitable[str]]


async def measure(args: argparse.Namespace, fake_url: str, server_url: str | None) -> dict[str, list[float]]:
    from openai import AsyncOpenAI

    sdk = AsyncOpenAI(base_url=fake_url, api_key="bench")  # the SDK's defaults otherwise
    registry = ModelRegistry.from_config(
        {
            "models": {
                MODEL: {
                    "provider": "openai",
                    "model": UPSTREAM_MODEL,
                    "base_url": fake_url,
                    "api_key": "bench",
                }
            }
        },
        {},
    )
    gateway = registry.resolve(MODEL)
    if not isinstance(gateway, RetryingModel):
        raise RuntimeError(f"expected the provider inside its retry wrapper, got {type(gateway).__name__}")
    bare = httpx.AsyncClient(timeout=60)
    to_sre = AsyncOpenAI(base_url=server_url, api_key="unused") if server_url else None

    async def call_sdk(text: str) -> str:
        stream = await sdk.chat.completions.create(
            model=UPSTREAM_MODEL,
            messages=[{"role": "user", "content": text}],
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = []
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
        return "".join(parts)

    async def call_gateway(text: str) -> str:
        request = ModelRequest(items=parse_input_items([{"role": "user", "content": text}]))
        parts = []
        async for event in gateway.stream(request):
            if isinstance(event, TextDelta):
                parts.append(event.text)
        return "".join(parts)

    async def call_turn(text: str) -> str:
        assert to_sre is not None
        stream = await to_sre.responses.create(model=MODEL, input=text, stream=True)
        parts = []
        status = None
        async for event in stream:
            if event.type == "response.output_text.delta":
                parts.append(event.delta)
            elif event.type == "response.completed":
                status = event.response.status
        if status != "completed":
            raise RuntimeError(f"the turn did not complete: {status}")
        return "".join(parts)

    async def call_bare(text: str) -> str:
        body = {
            "model": UPSTREAM_MODEL,
            "messages": [{"role": "user", "content": text}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        lines = 0
        async with bare.stream("POST", f"{fake_url}/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                lines += bool(line)
        return REPLY if lines else ""

    variants: dict[str, Call] = {"A": call_sdk, "B": call_gateway}
    if to_sre is not None:
        variants["C"] = call_turn
    if not args.no_bare:
        variants["D"] = call_bare
    names = list(variants)
    rng = random.Random(17)
    inputs = [sentence(rng, 120) for _ in range(64)]
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    for i in range(args.warmup + args.calls):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:  # rotate who goes first
            t0 = time.perf_counter()
            text = await variants[name](inputs[i % len(inputs)])
            elapsed = time.perf_counter() - t0
            if text != REPLY:
                raise RuntimeError(f"{name} got {text!r}, not the fake's reply")
            if i >= args.warmup:
                samples[name].append(elapsed)
        if i and i % 100 == 0:
            print(f"  {i}/{args.warmup + args.calls}", file=sys.stderr, flush=True)
    await sdk.close()
    await registry.aclose()
    await bare.aclose()
    if to_sre is not None:
        await to_sre.close()
    return samples


LABELS = {
    "A": "A. `openai` SDK direct: `AsyncOpenAI.chat.completions.create(stream=True)`",
    "B": "B. SRE gateway: `ModelRegistry.from_config(...).resolve(name).stream(ModelRequest(...))`",
    "C": "C. Full stateful turn (not the gateway): `responses.create(stream=True)` via `sre serve`",
    "D": "D. Reference floor: bare `httpx` stream, lines read, nothing parsed",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=500, help="timed calls per variant")
    parser.add_argument(
        "--warmup", type=int, default=50, help="untimed calls per variant before the timed ones"
    )
    parser.add_argument("--no-server", action="store_true", help="skip C, the full turn through `sre serve`")
    parser.add_argument("--no-bare", action="store_true", help="skip D, the bare httpx reference")
    parser.add_argument("--work-dir", default=None, help="where to put the server's temporary data directory")
    args = parser.parse_args()
    code = revision()
    load_start = load()
    others = OtherLoad()
    from importlib.metadata import version

    fake, fake_url = start_fake()
    root = Path(tempfile.mkdtemp(prefix="sre-bench-gateway-", dir=args.work_dir))
    server = None if args.no_server else Server(root / "data", config_text=server_config(fake_url))
    try:
        if server is not None:
            server.start()
            time.sleep(3.0)  # `sre serve` warms models in the background as it starts: let that finish
        print(f"Measuring {args.warmup} + {args.calls} calls per variant…", file=sys.stderr, flush=True)
        samples = asyncio.run(measure(args, fake_url, None if server is None else server.base_url))
    finally:
        if server is not None:
            server.stop()
        fake.terminate()
        fake.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)

    a_median, a_p95 = summary_ms(samples["A"])
    lines = [
        f"Time per call against a fake Chat Completions upstream in its own process (20-word reply streamed "
        f"as 22 chunks plus a usage chunk); {args.calls} timed calls per variant after {args.warmup} warm-up "
        "calls, variants alternating in rotating order in one asyncio event loop; ms per call.",
        f"Machine: {machine()}. Date: {today()}. SRE code at commit {code}. openai {version('openai')}, "
        f"httpx {version('httpx')}.",
        f"Load averages (1, 5, 15 min) at start: {load_start}; at end: {load()}; {others.report()}.",
        "",
        "| Variant | Median | p95 | ÷ A, median | ÷ A, p95 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in samples.items():
        median, p95 = summary_ms(values)
        lines.append(
            f"| {LABELS[name]} | {median:.2f} | {p95:.2f} | {median / a_median:.3f} | {p95 / a_p95:.3f} |"
        )
    b_median, b_p95 = summary_ms(samples["B"])
    ok = b_median / a_median <= TARGET
    lines += [
        "",
        f"Target B ÷ A ≤ {TARGET}: {'met' if ok else 'NOT met'} "
        f"(median {b_median / a_median:.3f}, p95 {b_p95 / a_p95:.3f}).",
    ]
    if "D" in samples:
        d_median, _ = summary_ms(samples["D"])
        lines.append(
            f"Above the bare-httpx floor (median minus D's median): A {a_median - d_median:+.2f} ms, "
            f"B {b_median - d_median:+.2f} ms."
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Throughput and memory of the two bundled local models that the model gateway runs in-process.

Three measurements, each printed as a markdown table:

  * Local chat (SmolLM2-135M-Instruct, Q4_1 GGUF, through llama.cpp), SRE's path
    (`LocalChatModel.stream(ModelRequest(...))`, the embedded default's settings) against
    `llama_cpp.Llama` called directly on the same file with the same settings (its own instance,
    `create_chat_completion(..., stream=True)`), alternating which goes first:
      - prompt processing: a ~500-token prompt, `max_tokens=1`, timed end to end; the prompt's
        tokens are counted by llama.cpp (the chat template included), its KV cache emptied
        (`Llama.reset()`, untimed) before every call so no prefix is reused;
      - generation: 128 tokens at temperature 0 from a short prompt (both instances produce the
        same tokens); time to first token, and tokens/s from the first token to the last.
  * Local embeddings (all-MiniLM-L6-v2 int8 on onnxruntime): sentences/s of
    `LocalEmbeddings.embed_sync` over 2,000 sentences of 10-25 words (batched as SRE batches, 64
    at a time), against the same pipeline written directly on an onnxruntime session of its own
    and `tokenizers` (same options, same batches, vectors left in numpy).
  * Resident memory of `sre serve --no-auth` with no configuration (the embedded default: both
    local models, warmed at start) once both models have answered a request: VmRSS and VmHWM
    from /proc/PID/status.

Medians over the timed runs, after an untimed warm-up. The 1-minute, 5-minute and 15-minute load
averages are printed at the start and end (the machine may be shared).

    bench/.venv/bin/python bench/local_models.py                     # the full run
    bench/.venv/bin/python bench/local_models.py --runs 2 --sentences 256 --no-memory   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WORDS, OtherLoad, Server, load, machine, revision, sentence, today
from memory import mib, proc_status
from sre.models.base import Finish, ModelRequest, TextDelta
from sre.models.config import local_model_info, model_infos
from sre.models.embeddings import LocalEmbeddings, local_embeddings
from sre.models.local import LocalChatModel
from sre.types.items import parse_input_items

PROMPT_TOKENS = 500  # the user message is grown until the whole templated prompt reaches this
GEN_TOKENS = 128
GEN_PROMPT = (
    "Explain in detail, step by step, how a database index speeds up queries. Write at least five paragraphs."
)
EMBED_TARGET = 300.0  # sentences/s
MEMORY_TARGET_MB = 600.0  # MB (10^6 bytes)


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(
        f"{name} {version(name)}" for name in ("llama_cpp_python", "onnxruntime", "tokenizers", "numpy")
    )


# -- chat ---------------------------------------------------------------------------------------


@dataclass
class ChatRun:
    seconds: float
    prompt_tokens: int = 0
    ttft: float = float("nan")
    first_to_last: float = float("nan")
    generated: int = 0


def user_text(llama: Any, seed: int, tokens: int) -> str:
    """Prose whose templated prompt (one user message, SmolLM2's default system line) is ~`tokens`."""
    rng = random.Random(seed)
    overhead = 30  # system line and chat markup, about
    parts: list[str] = []
    while True:
        parts.append(sentence(rng, 160))
        text = " ".join(parts)
        if len(llama.tokenize(text.encode(), add_bos=False, special=False)) + overhead >= tokens:
            return text


async def sre_call(model: LocalChatModel, text: str, max_tokens: int) -> ChatRun:
    llama = model.llama()
    llama.reset()  # empty KV cache: the whole prompt is processed (untimed)
    request = ModelRequest(
        items=parse_input_items([{"role": "user", "content": text}]),
        temperature=0.0,
        max_output_tokens=max_tokens,
    )
    first = last = float("nan")
    count = 0
    finish = None
    t0 = time.perf_counter()
    async for event in model.stream(request):
        if isinstance(event, TextDelta):
            last = time.perf_counter()
            if count == 0:
                first = last
            count += 1
        elif isinstance(event, Finish):
            finish = event.reason
    elapsed = time.perf_counter() - t0
    return finish_run(llama, elapsed, t0, first, last, max_tokens, finish)


def raw_call(llama: Any, text: str, max_tokens: int) -> ChatRun:
    llama.reset()
    first = last = float("nan")
    count = 0
    finish = None
    t0 = time.perf_counter()
    for chunk in llama.create_chat_completion(
        messages=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=0.0, stream=True
    ):
        choice = chunk["choices"][0]
        if choice.get("delta", {}).get("content"):
            last = time.perf_counter()
            if count == 0:
                first = last
            count += 1
        finish = choice.get("finish_reason") or finish
    elapsed = time.perf_counter() - t0
    return finish_run(llama, elapsed, t0, first, last, max_tokens, finish)


def finish_run(
    llama: Any, elapsed: float, t0: float, first: float, last: float, max_tokens: int, finish: object
) -> ChatRun:
    if max_tokens == 1:  # the one sampled token is not evaluated: n_tokens is the prompt
        return ChatRun(seconds=elapsed, prompt_tokens=llama.n_tokens)
    if finish != "length":
        raise RuntimeError(f"generation stopped before {max_tokens} tokens ({finish}); pick another prompt")
    return ChatRun(
        seconds=elapsed,
        prompt_tokens=llama.n_tokens - (max_tokens - 1),
        ttft=first - t0,
        first_to_last=last - first,
        generated=max_tokens,
    )


@dataclass
class ChatResult:
    prompt_tokens: int
    sre_prompt_s: list[float]
    raw_prompt_s: list[float]
    gen_prompt_tokens: int
    sre_ttft: list[float]
    raw_ttft: list[float]
    sre_gen_s: list[float]  # first token to last
    raw_gen_s: list[float]
    threads: int
    threads_batch: int
    n_ctx: int
    n_batch: int


def chat_model(threads: int | None) -> LocalChatModel:
    """The embedded default's model; with `threads`, that option set as a user would in the config."""
    if threads is None:
        return LocalChatModel(local_model_info())
    section = {"provider": "local", "model": "SmolLM2-135M-Instruct", "threads": threads}
    infos, _ = model_infos({"models": {"local": section}}, {})
    return LocalChatModel(infos["local"])


async def bench_chat(runs: int, warmup: int, threads: int | None) -> ChatResult:
    from llama_cpp import Llama

    model = chat_model(threads)
    await model.load()
    mine = model.llama()
    raw = Llama(
        model_path=model.path,
        n_ctx=model.info.context_window,
        n_threads=model.n_threads,
        n_batch=512,
        verbose=False,
    )
    for attr in ("n_threads", "n_threads_batch", "n_batch"):
        if getattr(raw, attr) != getattr(mine, attr):
            raise RuntimeError(f"settings differ: {attr} {getattr(raw, attr)} != {getattr(mine, attr)}")
    if raw.n_ctx() != mine.n_ctx():
        raise RuntimeError("settings differ: n_ctx")

    result = ChatResult(
        prompt_tokens=0, sre_prompt_s=[], raw_prompt_s=[], gen_prompt_tokens=0, sre_ttft=[], raw_ttft=[],
        sre_gen_s=[], raw_gen_s=[], threads=mine.n_threads, threads_batch=mine.n_threads_batch,
        n_ctx=mine.n_ctx(), n_batch=mine.n_batch,
    )  # fmt: skip
    tokens: list[int] = []
    for i in range(warmup + runs):
        text = user_text(raw, seed=100 + i, tokens=PROMPT_TOKENS)  # a different prompt every run
        pair: list[ChatRun] = []
        for who in ("sre", "raw") if i % 2 == 0 else ("raw", "sre"):
            run = await sre_call(model, text, 1) if who == "sre" else raw_call(raw, text, 1)
            pair.append(run)
            if i >= warmup:
                (result.sre_prompt_s if who == "sre" else result.raw_prompt_s).append(run.seconds)
        if pair[0].prompt_tokens != pair[1].prompt_tokens:
            raise RuntimeError(f"prompt tokens differ: {pair[0].prompt_tokens} != {pair[1].prompt_tokens}")
        if i >= warmup:
            tokens.append(pair[0].prompt_tokens)
    result.prompt_tokens = round(statistics.median(tokens))
    print(f"  prompt: {tokens} tokens", file=sys.stderr, flush=True)

    for i in range(warmup + runs):
        for who in ("sre", "raw") if i % 2 == 0 else ("raw", "sre"):
            run = (
                await sre_call(model, GEN_PROMPT, GEN_TOKENS)
                if who == "sre"
                else raw_call(raw, GEN_PROMPT, GEN_TOKENS)
            )
            result.gen_prompt_tokens = run.prompt_tokens
            if i >= warmup:
                if who == "sre":
                    result.sre_ttft.append(run.ttft)
                    result.sre_gen_s.append(run.first_to_last)
                else:
                    result.raw_ttft.append(run.ttft)
                    result.raw_gen_s.append(run.first_to_last)
    await model.aclose()
    return result


# -- embeddings ---------------------------------------------------------------------------------


def embedding_sentences(count: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(10, 25))]
        text = " ".join(words)
        out.append(text[0].upper() + text[1:] + ".")
    return out


def direct_embedder(sre_model: LocalEmbeddings) -> Callable[[list[str]], Any]:
    """The same pipeline, written directly: its own onnxruntime session and tokenizer, numpy out."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = sre_model.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(sre_model.model_path, options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(sre_model.tokenizer_path)
    tokenizer.enable_truncation(sre_model.max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    batch_size = sre_model.batch_size

    def embed(texts: list[str]) -> Any:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer.encode_batch(texts[start : start + batch_size])
            ids = np.array([e.ids for e in batch], dtype=np.int64)
            mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
            hidden = session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out.append(pooled)
        return np.concatenate(out)

    return embed


@dataclass
class EmbedResult:
    sentences: int
    tokens: int
    batch_size: int
    threads: int
    sre_s: list[float]
    raw_s: list[float]
    max_abs_diff: float


def bench_embeddings(count: int, runs: int) -> EmbedResult:
    import numpy as np

    texts = embedding_sentences(count)
    model = local_embeddings()
    model.load()
    direct = direct_embedder(model)
    model.embed_sync(texts[:128])  # warm-up: the first runs of a session are slower
    direct(texts[:128])
    sre_s: list[float] = []
    raw_s: list[float] = []
    tokens = 0
    diff = 0.0
    for i in range(runs):
        for who in ("sre", "raw") if i % 2 == 0 else ("raw", "sre"):
            t0 = time.perf_counter()
            if who == "sre":
                got = model.embed_sync(texts)
                sre_s.append(time.perf_counter() - t0)
                tokens = got.tokens
                mine = np.array(got.vectors, dtype=np.float32)
            else:
                theirs = direct(texts)
                raw_s.append(time.perf_counter() - t0)
        diff = max(diff, float(np.abs(mine - theirs).max()))
    return EmbedResult(count, tokens, model.batch_size, model.threads, sre_s, raw_s, diff)


# -- memory -------------------------------------------------------------------------------------


def bench_memory(work_dir: str | None) -> list[tuple[str, dict[str, int]]]:
    root = Path(tempfile.mkdtemp(prefix="sre-bench-local-", dir=work_dir))
    server = Server(root / "data", config_text=None)  # no config: the embedded default
    rows: list[tuple[str, dict[str, int]]] = []
    rng = random.Random(3)
    try:
        server.start(timeout=120)
        rows.append(("healthy (models loading in the background)", proc_status(server.pid)))
        with httpx.Client(base_url=server.base_url, timeout=300) as client:
            r = client.post("/responses", json={"input": "Say hello.", "max_output_tokens": 8})
            r.raise_for_status()
            if r.json()["status"] not in ("completed", "incomplete") or not r.json()["output"]:
                raise RuntimeError(f"the local model did not answer: {r.json()}")  # incomplete: hit 8 tokens
            r = client.post("/embeddings", json={"input": "A sentence to embed."})
            r.raise_for_status()
            time.sleep(1.0)
            rows.append(
                ("after one response (max_output_tokens 8) and one embedding", proc_status(server.pid))
            )
            for round_ in ("", " again"):
                for _ in range(5):
                    body = {"input": " ".join(sentence(rng) for _ in range(10)), "max_output_tokens": 128}
                    client.post("/responses", json=body).raise_for_status()
                time.sleep(1.0)
                rows.append(
                    (
                        f"after 5 responses{round_} (~500-token prompts, 128 tokens out)",
                        proc_status(server.pid),
                    )
                )
                r = client.post("/embeddings", json={"input": embedding_sentences(2000, seed=5)})
                r.raise_for_status()
                if len(r.json()["data"]) != 2000:
                    raise RuntimeError("the embeddings request did not return 2,000 vectors")
                time.sleep(1.0)
                rows.append((f"after one request of 2,000 embeddings{round_}", proc_status(server.pid)))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return rows


# -- report -------------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report_chat(c: ChatResult, runs: int, warmup: int) -> list[str]:
    sre_pp, raw_pp = med(c.sre_prompt_s), med(c.raw_prompt_s)
    sre_gen = (GEN_TOKENS - 1) / med(c.sre_gen_s)
    raw_gen = (GEN_TOKENS - 1) / med(c.raw_gen_s)
    sre_ttft, raw_ttft = med(c.sre_ttft), med(c.raw_ttft)
    return [
        f"Local chat: SmolLM2-135M-Instruct Q4_1 GGUF through llama.cpp; n_ctx {c.n_ctx:,}; threads: "
        f"{c.threads} generating, {c.threads_batch} processing the prompt; n_batch {c.n_batch}; "
        f"median of {runs} runs after {warmup} warm-up run(s), SRE and llama.cpp alternating.",
        "",
        "| Measure | SRE (`LocalChatModel.stream`) | llama.cpp direct (`Llama.create_chat_completion`) "
        "| SRE ÷ direct (time) |",
        "|---|---:|---:|---:|",
        f"| Prompt processing, {c.prompt_tokens} prompt tokens, max_tokens 1: time | {sre_pp * 1000:,.0f} ms "
        f"| {raw_pp * 1000:,.0f} ms | {sre_pp / raw_pp:.3f} |",
        f"| Prompt processing: tokens/s | {c.prompt_tokens / sre_pp:,.0f} | {c.prompt_tokens / raw_pp:,.0f} | |",
        f"| Generation, {GEN_TOKENS} tokens at temperature 0: time to first token "
        f"({c.gen_prompt_tokens}-token prompt) | {sre_ttft * 1000:,.1f} ms | {raw_ttft * 1000:,.1f} ms "
        f"| {sre_ttft / raw_ttft:.3f} |",
        f"| Generation: tokens/s, first token to last | {sre_gen:,.1f} | {raw_gen:,.1f} "
        f"| {raw_gen / sre_gen:.3f} |",
        "",
        "Per run (s): prompt SRE "
        + ", ".join(f"{v:.3f}" for v in c.sre_prompt_s)
        + "; prompt direct "
        + ", ".join(f"{v:.3f}" for v in c.raw_prompt_s)
        + "; generation SRE "
        + ", ".join(f"{v:.3f}" for v in c.sre_gen_s)
        + "; generation direct "
        + ", ".join(f"{v:.3f}" for v in c.raw_gen_s)
        + ".",
    ]


def report_embeddings(e: EmbedResult, runs: int) -> list[str]:
    sre, raw = med(e.sre_s), med(e.raw_s)
    rate = e.sentences / sre
    return [
        f"Local embeddings: all-MiniLM-L6-v2 int8 on onnxruntime, {e.sentences:,} sentences of 10-25 words "
        f"({e.tokens:,} tokens with [CLS]/[SEP]), batches of {e.batch_size}, {e.threads} intra-op threads; "
        f"median of {runs} runs after a warm-up, SRE and direct alternating.",
        "",
        "| Measure | SRE (`LocalEmbeddings.embed_sync`) | onnxruntime + tokenizers direct | SRE ÷ direct (time) |",
        "|---|---:|---:|---:|",
        f"| Time for {e.sentences:,} sentences | {sre:.2f} s | {raw:.2f} s | {sre / raw:.3f} |",
        f"| Sentences/s | {rate:,.0f} | {e.sentences / raw:,.0f} | |",
        f"| Tokens/s | {e.tokens / sre:,.0f} | {e.tokens / raw:,.0f} | |",
        "",
        f"Target ≥ {EMBED_TARGET:.0f} sentences/s: {'met' if rate >= EMBED_TARGET else 'NOT met'} ({rate:,.0f}/s). "
        f"Largest difference between the two pipelines' vector components: {e.max_abs_diff:.2g}. "
        "Per run (s): SRE " + ", ".join(f"{v:.2f}" for v in e.sre_s) + "; direct "
        + ", ".join(f"{v:.2f}" for v in e.raw_s) + ".",
    ]  # fmt: skip


def report_memory(rows: list[tuple[str, dict[str, int]]]) -> list[str]:
    lines = [
        "Resident memory of `sre serve --no-auth --data-dir <tmp>` with no configuration (the embedded "
        "default: local chat + local embeddings, both warmed in the background at start).",
        "",
        "| Point | RSS (MB) | Peak RSS so far (MB) | RSS (MiB) | Anonymous RSS (MiB) | File-backed RSS (MiB) "
        "| Threads |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in rows:
        lines.append(
            f"| {label} | {s['VmRSS'] * 1024 / 1e6:.1f} | {s['VmHWM'] * 1024 / 1e6:.1f} | {mib(s['VmRSS']):.1f} "
            f"| {mib(s.get('RssAnon', 0)):.1f} | {mib(s.get('RssFile', 0)):.1f} | {s.get('Threads', 0)} |"
        )
    loaded = rows[1][1]["VmRSS"] * 1024 / 1e6
    last = rows[-1][1]["VmRSS"] * 1024 / 1e6
    peak = max(s["VmHWM"] for _, s in rows) * 1024 / 1e6

    def verdict(value: float) -> str:
        return "within" if value <= MEMORY_TARGET_MB else "OVER"

    lines += [
        "",
        f"Target ≤ {MEMORY_TARGET_MB:.0f} MB with both models loaded: "
        f"{'met' if loaded <= MEMORY_TARGET_MB else 'NOT met'} once both have answered a request "
        f"({loaded:.0f} MB). After bigger requests: {last:.0f} MB ({verdict(last)}); "
        f"peak over the whole run {peak:.0f} MB ({verdict(peak)}).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="timed chat runs (each of prompt and generation)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed chat runs before the timed ones")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="the local chat model's `threads` option, for both paths (default: SRE's default for this machine)",
    )
    parser.add_argument("--sentences", type=int, default=2000, help="sentences per embedding run")
    parser.add_argument("--embed-runs", type=int, default=3, help="timed embedding runs")
    parser.add_argument("--no-chat", action="store_true", help="skip the chat measurement")
    parser.add_argument("--no-embeddings", action="store_true", help="skip the embedding measurement")
    parser.add_argument("--no-memory", action="store_true", help="skip the server memory measurement")
    parser.add_argument("--work-dir", default=None, help="where to put the server's temporary data directory")
    args = parser.parse_args()
    code = revision()  # at start: the code that runs, even if a commit lands meanwhile
    load_start = load()
    others = OtherLoad()

    sections: list[list[str]] = []
    if not args.no_chat:
        print("Local chat…", file=sys.stderr, flush=True)
        chat = asyncio.run(bench_chat(args.runs, args.warmup, args.threads))
        sections.append(report_chat(chat, args.runs, args.warmup))
    if not args.no_embeddings:
        print("Local embeddings…", file=sys.stderr, flush=True)
        sections.append(report_embeddings(bench_embeddings(args.sentences, args.embed_runs), args.embed_runs))
    if not args.no_memory:
        print("Server memory…", file=sys.stderr, flush=True)
        sections.append(report_memory(bench_memory(args.work_dir)))

    header = [
        f"Machine: {machine()}. Date: {today()}. SRE code at commit {code}. {versions()}.",
        f"Load averages (1, 5, 15 min) at start: {load_start}; at end: {load()}; {others.report()}.",
    ]
    print("\n".join(header))
    for lines in sections:
        print()
        print("\n".join(lines))


if __name__ == "__main__":
    main()

"""The manifest of a model call: a selection written down, ids and counts only.

Each source's candidates in prompt order, neighbours that shared one fate (in or out, why, cut or
not) merged into one entry; the totals per section; the window's arithmetic. Bounded: past
`MAX_ENTRIES` entries, like ones are merged regardless of their neighbours. Pure.
"""

from __future__ import annotations

from typing import Any

from sre.context.selection import Choice, Selection
from sre.types.context import (
    REQUIRED_SECTIONS,
    CompactionNote,
    ContextManifest,
    ManifestEntry,
    SectionTotals,
    WindowArithmetic,
)

MAX_ENTRIES = 200  # manifest entries per call; beyond, runs of like entries are merged


def _entries(choices: list[Choice]) -> list[ManifestEntry]:
    """Each source's candidates in prompt order, neighbours that shared one fate as one entry."""
    by_source: dict[str, list[Choice]] = {}
    for choice in choices:
        by_source.setdefault(choice.candidate.source, []).append(choice)
    runs: list[
        list[Any]
    ] = []  # source, section, first, last, count, tokens, in, score, included, cut, reason
    for group in by_source.values():
        group.sort(key=lambda ch: ch.candidate.order)
        run: list[Any] | None = None
        for ch in group:
            c = ch.candidate
            if (
                run is not None
                and run[1] == c.section
                and run[8] == ch.included
                and run[10] == ch.reason
                and (run[9] > 0) == ch.cut
            ):
                run[3] = c.id
                run[4] += 1
                run[5] += c.tokens
                run[6] += ch.tokens_in
                run[7] = max(run[7], c.score)
                run[9] += 1 if ch.cut else 0
                continue
            run = [
                c.source,
                c.section,
                c.id,
                None,
                1,
                c.tokens,
                ch.tokens_in,
                c.score,
                ch.included,
                int(ch.cut),
                ch.reason,
            ]
            runs.append(run)
    if len(runs) > MAX_ENTRIES:  # merge like runs regardless of their neighbours
        merged: dict[tuple[Any, ...], list[Any]] = {}
        for r in runs:
            key = (r[0], r[1], r[8], r[10])
            found = merged.get(key)
            if found is None:
                merged[key] = list(r)
            else:
                found[3] = r[3] or r[2]
                for i in (4, 5, 6, 9):
                    found[i] += r[i]
                found[7] = max(found[7], r[7])
        runs = list(merged.values())
    return [
        ManifestEntry.model_construct(
            source=r[0],
            section=r[1],
            first_id=r[2],
            last_id=r[3],
            count=r[4],
            tokens=r[5],
            tokens_in=r[6],
            score=round(r[7], 4),
            included=r[8],
            cut=r[9],
            reason=r[10],
        )
        for r in runs
    ]


def build_manifest(
    selection: Selection,
    *,
    model: str,
    step: int,
    exact: bool,
    used: int,
    compaction: CompactionNote | None,
    older_items: bool,
) -> ContextManifest:
    sums: dict[str, list[int]] = {}  # offered, used, candidates, included
    for name in (*REQUIRED_SECTIONS, *selection.policies):
        sums[name] = [0, 0, 0, 0]
    for ch in selection.choices:
        t = sums[ch.candidate.section]
        t[0] += ch.candidate.tokens
        t[2] += 1
        if ch.included:
            t[1] += ch.tokens_in
            t[3] += 1
    totals: list[SectionTotals] = []
    for name, (offered, used_tokens, candidates, included) in sums.items():
        policy = selection.policies.get(name)
        allotted = selection.allotted.get(name, 0) if policy is not None else used_tokens
        if not (candidates or allotted):  # a section with nothing to offer has nothing to explain
            continue
        totals.append(
            SectionTotals.model_construct(
                section=name,
                share=None if policy is None else policy.share,
                min_tokens=0 if policy is None else policy.min_tokens,
                max_tokens=None if policy is None else policy.max_tokens,
                offered=offered,
                allotted=allotted,
                used=used_tokens,
                candidates=candidates,
                included=included,
            )
        )
    window = WindowArithmetic(
        context_window=selection.context_window,
        output_reserve=selection.reserve,
        prompt_budget=selection.prompt_budget,
        fixed=selection.fixed,
        required=selection.required,
        available=selection.available,
        used=used,
    )
    return ContextManifest(
        model=model,
        step=step,
        exact=exact,
        window=window,
        sections=totals,
        entries=_entries(selection.choices),
        compaction=compaction,
        older_items=older_items,
    )

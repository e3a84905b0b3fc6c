"""The arithmetic of one model call's budget: how the tokens left after the required parts are split
across sections, and how a text too long for its room is cut with a marker. Pure functions.

`allot` gives each section `share` of what is available, at least its `min_tokens` and at most its
`max_tokens`, never more than it asks for; what one section leaves unused flows to the sections that
still want more, in proportion to their shares. A section's floor (the markers of tool outputs that
must go in, however short) is given before anything else.
"""

from __future__ import annotations

from collections.abc import Mapping

from sre.models.tokens import PromptCounter
from sre.types.context import SectionPolicy


def allot(
    available: int,
    policies: Mapping[str, SectionPolicy],
    demand: Mapping[str, int],
    floors: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Tokens per section; their sum never exceeds `available` once the floors fit in it."""
    floors = floors or {}
    names = list(policies)
    cap = {
        n: max(floors.get(n, 0), min(demand.get(n, 0), policies[n].max_tokens or available)) for n in names
    }
    give: dict[str, int] = {}
    for n in names:
        policy = policies[n]
        target = max(policy.min_tokens, int(policy.share * available))
        give[n] = max(floors.get(n, 0), min(cap[n], target))
    over = sum(give.values()) - available
    if over > 0:  # minimums oversubscribed: take back above the floors, largest first
        for n in sorted(names, key=lambda n: give[n] - floors.get(n, 0), reverse=True):
            back = min(over, give[n] - floors.get(n, 0))
            give[n] -= back
            over -= back
            if over <= 0:
                break
    left = available - sum(give.values())
    while left > 0:
        hungry = [n for n in names if give[n] < cap[n]]
        if not hungry:
            break
        weights = {n: policies[n].share or 0.0 for n in hungry}
        total = sum(weights.values())
        if total <= 0:
            weights = dict.fromkeys(hungry, 1.0)
            total = float(len(hungry))
        moved = 0
        for n in sorted(hungry, key=lambda n: weights[n], reverse=True):
            portion = max(1, int(left * weights[n] / total))
            extra = min(portion, cap[n] - give[n], left - moved)
            if extra > 0:
                give[n] += extra
                moved += extra
            if moved >= left:
                break
        if moved == 0:
            break
        left -= moved
    return give


def fair_shares(sizes: list[int], room: int) -> list[int]:
    """Split `room` among candidates of `sizes`: small ones whole, the rest equal (max-min fair)."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    out = [0] * len(sizes)
    left, count = room, len(sizes)
    for position, index in enumerate(order):
        share = left // (count - position)
        out[index] = min(sizes[index], share)
        left -= out[index]
    return out


def marker(cut: int, total: int, where: str) -> str:
    """What replaces the end of a text cut to fit: how much is missing and where the rest is."""
    if cut >= total:
        return f"[The whole output ({total} tokens) was left out to fit the context window; {where}.]"
    return f"\n[… {cut} of {total} tokens cut to fit the context window; {where}.]"


def cut_text(text: str, keep: int, counter: PromptCounter) -> str:
    """The longest prefix of `text` that counts at most `keep` tokens."""
    if keep <= 0:
        return ""
    if counter.text(text) <= keep:
        return text
    low, high = 0, min(len(text), keep * 8 + 8)  # a token is rarely more than 8 characters
    while counter.text(text[:high]) <= keep and high < len(text):
        low, high = high, min(len(text), high * 2)
    while low < high:
        middle = (low + high + 1) // 2
        if counter.text(text[:middle]) <= keep:
            low = middle
        else:
            high = middle - 1
    return text[:low]

"""Plain-text tables the CLI prints: a model call's context manifest."""

from __future__ import annotations

from typing import Any


def _span(entry: dict[str, Any]) -> str:
    first, last, count = entry["first_id"], entry.get("last_id"), entry["count"]
    return first if count == 1 or not last else f"{first} … {last} ({count})"


def manifest_table(manifest: dict[str, Any]) -> str:
    """One model call: the window's arithmetic, the sections, and every candidate's fate."""
    w = manifest["window"]
    lines = [
        f"model call {manifest.get('model_call_id', '?')} · step {manifest['step']} · {manifest['model']} · "
        f"tokens {'exact' if manifest['exact'] else 'estimated'}",
        f"window {w['context_window']} = output reserve {w['output_reserve']} + prompt budget "
        f"{w['prompt_budget']}; used {w['used']} (framing and tools {w['fixed']}, required {w['required']}, "
        f"shared {w['available']})",
    ]
    compaction = manifest.get("compaction")
    if compaction:
        what = {
            "created": "compacted now into",
            "used": "uses the summary",
            "failed": "compaction failed, fell back to truncation:",
        }[compaction["status"]]
        detail = compaction.get("error") or compaction.get("item_id") or ""
        covers = (
            f" (covers {compaction['first_item_id']} … {compaction['last_item_id']}, {compaction['items']} items)"
            if compaction.get("last_item_id")
            else ""
        )
        lines.append(f"history {what} {detail}{covers}")
    if manifest.get("older_items"):
        lines.append("older history exists beyond the window and was not read")
    lines.append("")
    lines.append(
        f"{'SECTION':<14} {'SHARE':>6} {'MIN':>7} {'MAX':>7} {'OFFERED':>8} {'ALLOTTED':>9} {'USED':>7} {'IN':>9}"
    )
    for s in manifest["sections"]:
        share = "req." if s["share"] is None else f"{s['share']:.2f}"
        cap = "-" if s["max_tokens"] is None else str(s["max_tokens"])
        lines.append(
            f"{s['section']:<14} {share:>6} {s['min_tokens']:>7} {cap:>7} {s['offered']:>8} {s['allotted']:>9} "
            f"{s['used']:>7} {s['included']:>4}/{s['candidates']:<4}"
        )
    lines.append("")
    lines.append(
        f"{'SOURCE':<13} {'SECTION':<13} {'IN':<4} {'WHY':<12} {'TOKENS':>7} {'SENT':>7} {'SCORE':>6}  CANDIDATES"
    )
    for e in manifest["entries"]:
        why = e["reason"] or ("cut" if e["cut"] else "")
        lines.append(
            f"{e['source']:<13} {e['section']:<13} {'yes' if e['included'] else 'no':<4} {why:<12} "
            f"{e['tokens']:>7} {e['tokens_in']:>7} {e['score']:>6.2f}  {_span(e)}"
        )
    return "\n".join(lines) + "\n"

"""The context layer: what goes into each model call, and why.

Context sources (`ContextSource`: the instructions, the conversation's history, the turn's input and
tool outputs; memory, knowledge and an application's own join them) offer candidates; the
`ContextAssembler` alone owns the budget — the model's window less the output's reserve, split across
sections by the context policy — compacts the oldest history when it no longer fits, and writes a
`ContextManifest` explaining every call. It sits between the engine and the store and models layers:
it reads the store only to compact, writes nothing, and knows nothing of runs, HTTP or events.
"""

from sre.context.assembler import AssembledContext, ContextAssembler, ContextRequest
from sre.context.compaction import CompactionFailed, CompactionResult, Compactor
from sre.context.policy import ContextDefaults, turn_policy
from sre.context.selection import ContextOverflow, output_reserve
from sre.context.sources import Candidate, ContextSource, TurnContext, summary_message

__all__ = [
    "AssembledContext",
    "Candidate",
    "CompactionFailed",
    "CompactionResult",
    "Compactor",
    "ContextAssembler",
    "ContextDefaults",
    "ContextOverflow",
    "ContextRequest",
    "ContextSource",
    "TurnContext",
    "output_reserve",
    "summary_message",
    "turn_policy",
]

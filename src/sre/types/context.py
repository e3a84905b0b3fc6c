"""What goes into a model call, declared and explained: the context policy and the manifest.

`ContextPolicy` is how an agent (its versioned `context` field) or the server (`[context]`) splits
one model call's token budget across sections: a share, a minimum and a maximum per section, and
whether the oldest history is compacted when it no longer fits. `ContextManifest` is the typed,
versioned record stored with every model call: each candidate the context sources offered (or a run
of neighbouring candidates with the same fate), whether it went in and why not, the totals per
section and the window's arithmetic. Ids and counts only, never texts, so it stays small. No I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sre.types.errors import InvalidField

_STRICT = ConfigDict(extra="forbid", strict=True)

SECTION_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
SectionName = Annotated[str, Field(pattern=SECTION_PATTERN)]

# Sections whose candidates always go in whole (or the call cannot be made): the instructions, the
# turn's new input and the run's own items. The policy has no say over them.
REQUIRED_SECTIONS = ("instructions", "input")
# Sections the policy splits the rest of the budget across, in the order they are documented.
KNOWN_SECTIONS = ("profile", "memory", "knowledge", "history", "tool_outputs")


def _as_float(value: object) -> object:
    """A whole number where a fraction is expected (strict mode takes only floats)."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class SectionPolicy(BaseModel):
    """A section's part of the budget left after the required sections: `share` of it, at least
    `min_tokens` (when the section has that much to offer) and at most `max_tokens`. What a section
    leaves unused flows to the others."""

    model_config = _STRICT
    share: Annotated[float, Field(ge=0, le=1)] = 0.0
    min_tokens: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    max_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None

    _number = field_validator("share", mode="before")(lambda value: _as_float(value))


def default_sections() -> dict[str, SectionPolicy]:
    return {
        "profile": SectionPolicy(share=0.05),
        "memory": SectionPolicy(share=0.1),
        "knowledge": SectionPolicy(share=0.1),
        "history": SectionPolicy(share=0.5),
        "tool_outputs": SectionPolicy(share=0.25),
    }


class ContextPolicy(BaseModel):
    """How one model call's budget is split, and when history is compacted.

    `sections` replaces the defaults section by section (a section not named keeps its default; one
    the defaults do not know, an application's own, gets only what the others leave).
    `compaction: true` summarises the oldest history into a stored compaction item when it no longer
    fits (or when it passes `compact_threshold` tokens), keeping the newest `keep_recent` share of the
    history's budget verbatim.
    """

    model_config = _STRICT
    sections: Annotated[dict[SectionName, SectionPolicy], Field(max_length=32)] = Field(default_factory=dict)
    compaction: bool = False
    compact_threshold: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    keep_recent: Annotated[float, Field(ge=0, le=0.9)] = 0.5

    _number = field_validator("keep_recent", mode="before")(lambda value: _as_float(value))

    @field_validator("sections")
    @classmethod
    def _not_required(cls, value: dict[str, SectionPolicy]) -> dict[str, SectionPolicy]:
        for name in value:
            if name in REQUIRED_SECTIONS:
                raise InvalidField(
                    f"Invalid value for 'context.sections.{name}': the {name} section always goes in whole; "
                    "it has no share.",
                    param=f"context.sections.{name}",
                    code="invalid_value",
                )
        return value

    def section(self, name: str) -> SectionPolicy:
        own = self.sections.get(name)
        if own is not None:
            return own
        return default_sections().get(name, SectionPolicy())

    def all_sections(self, extra: list[str] | tuple[str, ...] = ()) -> dict[str, SectionPolicy]:
        names = list(KNOWN_SECTIONS) + [n for n in self.sections if n not in KNOWN_SECTIONS]
        names += [n for n in extra if n not in names and n not in REQUIRED_SECTIONS]
        return {name: self.section(name) for name in names}


# -- the manifest ---------------------------------------------------------------------------------

MANIFEST_VERSION = 1
Reason = Literal["budget", "score", "superseded", "not_permitted", "orphaned", "compacted"]


class ManifestEntry(BaseModel):
    """One candidate, or a run of `count` neighbouring candidates of one source and section that
    shared one fate (`first_id` … `last_id`)."""

    model_config = ConfigDict(extra="forbid")
    source: str
    section: str
    first_id: str
    last_id: str | None = None
    count: int = 1
    tokens: int  # as offered
    tokens_in: int  # as they went in: fewer when cut, 0 when left out
    score: float
    included: bool
    cut: int = 0  # how many of them were cut to fit (with a marker saying how to get the rest)
    reason: Reason | None = None


class SectionTotals(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: str
    share: float | None = None  # None: a required section
    min_tokens: int = 0
    max_tokens: int | None = None
    offered: int  # tokens its candidates offered
    allotted: int  # tokens it was given
    used: int  # tokens that went in
    candidates: int
    included: int


class WindowArithmetic(BaseModel):
    """`prompt_budget = context_window - output_reserve`; `available = prompt_budget - fixed -
    required` is what the policy splits; `used <= prompt_budget` always."""

    model_config = ConfigDict(extra="forbid")
    context_window: int
    output_reserve: int
    prompt_budget: int
    fixed: int  # tool definitions and message framing
    required: int  # instructions, the new input and the run's own items
    available: int
    used: int  # the whole prompt, framing included


class CompactionNote(BaseModel):
    """What compaction did for this call: `created` a new compaction item, `used` a stored one, or
    `failed` (the call fell back to truncation; `error` says why)."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["created", "used", "failed"]
    item_id: str | None = None
    first_item_id: str | None = None
    last_item_id: str | None = None
    items: int = 0  # items the compaction item covers
    model: str | None = None
    summary_tokens: int = 0
    error: str | None = None


class ContextManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    model: str
    step: int = 0
    exact: bool  # token counts from the model's own tokenizer (else estimated)
    window: WindowArithmetic
    sections: list[SectionTotals]
    entries: list[ManifestEntry]
    compaction: CompactionNote | None = None
    older_items: bool = False  # history older than the window exists and was not read

    def to_stored(self) -> dict[str, Any]:
        """What the model call record keeps: defaults left out (read back, they are filled in)."""
        # The version is always written, first: it says how to read the rest.
        return {"version": self.version, **self.model_dump(mode="json", exclude_defaults=True)}

    @staticmethod
    def from_stored(data: dict[str, Any]) -> ContextManifest | None:
        """The manifest of a stored model call; None for calls recorded before manifests had a
        version (they hold only a window summary) or that were no chat calls (embeddings)."""
        version = data.get("version")
        if version is None:
            return None
        if version != MANIFEST_VERSION:
            raise ValueError(f"context manifest of unknown version {version!r}")
        return ContextManifest.model_validate(data)

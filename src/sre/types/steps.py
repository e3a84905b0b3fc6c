"""What a durable run keeps between commits, as typed and versioned records: the payload a run is
queued with, and the data of each journal row (a model step, a tool or client call, a compaction).

Every shape carries a `version` that is read and checked: older versions are upgraded on read (the
tests keep fixtures written by them), a newer one than this code knows is refused rather than
misread. Usage is stored by name. No I/O here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

STEP_DATA_VERSION = 2
RUN_PAYLOAD_VERSION = 3


class TooNew(ValueError):
    """A durable record written by a newer version of SRE than this one."""


def _check_version(data: Any, current: int, what: str, oldest: int = 1) -> Any:
    """Refuse a version this code cannot read; a record made in code (no version given) is current."""
    if not isinstance(data, dict) or ("version" not in data and oldest > 1):
        return data
    version = data.get("version", 1)
    if not isinstance(version, int) or version > current:
        raise TooNew(f"{what} of version {version!r}; this SRE reads up to version {current}")
    if version < oldest:
        raise ValueError(f"{what} of version {version} is too old to read")
    return data


class StepUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    exact: bool = True

    def __add__(self, other: StepUsage) -> StepUsage:
        return StepUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            exact=self.exact and other.exact,
        )


class ModelStepData(BaseModel):
    """A model step: its output items (Responses item dicts), usage, and how the model finished."""

    model_config = ConfigDict(extra="forbid")
    version: int = STEP_DATA_VERSION
    items: list[dict[str, Any]]
    usage: StepUsage
    status: Literal["completed", "incomplete"]
    reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        data = _check_version(data, STEP_DATA_VERSION, "a model step")
        if isinstance(data, dict) and isinstance(data.get("usage"), list):
            # Version 1 stored usage as [input, cached, output, exact].
            data = dict(data)
            used = data.get("usage") or [0, 0, 0, True]
            data["usage"] = {
                "input_tokens": used[0],
                "cached_tokens": used[1],
                "output_tokens": used[2],
                "exact": bool(used[3]),
            }
            data["version"] = STEP_DATA_VERSION
        return data


class CallStepData(BaseModel):
    """A tool or client call: `name` while it is started or pending, its `output` item once done."""

    model_config = ConfigDict(extra="forbid")
    version: int = STEP_DATA_VERSION
    name: str | None = None
    output: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        data = _check_version(data, STEP_DATA_VERSION, "a call step")
        if isinstance(data, dict) and data.get("version", 1) == 1:
            data = {**data, "version": STEP_DATA_VERSION}  # version 1 had the same fields
        return data


class CompactionStepData(BaseModel):
    """A compaction made for the run's context: the item to store with the run's end, the note for
    the manifests of its model calls, and the model call that made it (recorded with the step)."""

    model_config = ConfigDict(extra="forbid")
    version: int = STEP_DATA_VERSION
    item: dict[str, Any]
    note: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        return _check_version(data, STEP_DATA_VERSION, "a compaction step", oldest=2)


StepData = ModelStepData | CallStepData | CompactionStepData
StepKind = Literal["model", "tool", "client", "compaction"]


def step_data_from_stored(kind: str, data: dict[str, Any]) -> StepData:
    if kind == "model":
        return ModelStepData.model_validate(data)
    if kind == "compaction":
        return CompactionStepData.model_validate(data)
    return CallStepData.model_validate(data)


class RunPayload(BaseModel):
    """What a durable run is queued with: the validated request (an agent's pinned to the version it
    started with), what its response reports as `model` and `agent`, and its queued response object."""

    model_config = ConfigDict(extra="forbid")
    version: int = RUN_PAYLOAD_VERSION
    request: dict[str, Any]
    reported_model: str | None = None
    agent: dict[str, Any] | None = None
    response: dict[str, Any]
    actor: str | None = None  # the service principal acting for the run's principal, if one is

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        data = _check_version(data, RUN_PAYLOAD_VERSION, "a run payload", oldest=2)
        if isinstance(data, dict) and data.get("version") == 2:
            data = {**data, "version": RUN_PAYLOAD_VERSION}  # version 2 had the same fields
        return data

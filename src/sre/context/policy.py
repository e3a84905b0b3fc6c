"""The server's context defaults (`[context]` in the configuration), and the policy one turn runs
with: the agent's own, else the server's, with a request's `context_management` switching
compaction on for that request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from sre.types.context import ContextPolicy
from sre.types.errors import ConfigError


@dataclass(frozen=True)
class ContextDefaults:
    policy: ContextPolicy = field(default_factory=ContextPolicy)
    compaction_model: str | None = None  # None: the default model

    @classmethod
    def from_config(cls, table: object) -> ContextDefaults:
        """`[context]`: `compaction`, `compaction_model`, `compact_threshold`, `keep_recent` and
        `[context.sections.NAME]` tables of `share`, `min_tokens`, `max_tokens`."""
        if table is None:
            return cls()
        if not isinstance(table, Mapping):
            raise ConfigError("[context] must be a table")
        data: dict[str, Any] = dict(table)
        model = data.pop("compaction_model", None)
        if model is not None and (not isinstance(model, str) or not model):
            raise ConfigError("[context] compaction_model must be a model name")
        try:
            policy = ContextPolicy.model_validate(data, strict=False)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"[context] {where}: {err['msg']}") from None
        return cls(policy=policy, compaction_model=model)


def turn_policy(
    agent_policy: ContextPolicy | None,
    defaults: ContextDefaults,
    context_management: Sequence[Any] | None,
) -> ContextPolicy:
    policy = agent_policy if agent_policy is not None else defaults.policy
    for entry in context_management or []:
        if getattr(entry, "type", None) == "compaction":
            threshold = getattr(entry, "compact_threshold", None)
            update: dict[str, Any] = {"compaction": True}
            if threshold is not None:
                update["compact_threshold"] = threshold
            policy = policy.model_copy(update=update)
    return policy

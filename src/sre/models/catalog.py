"""What SRE knows about well-known upstream models: context windows and list prices.

Used only where the configuration says nothing; every value can be overridden per model
(`context_window`, `input_price`, `cached_input_price`, `output_price`, in US dollars per million
tokens). Prices are list prices as published when this table was written and change over time.
"""

from __future__ import annotations

from dataclasses import dataclass

from sre.models.base import Pricing


@dataclass(frozen=True, slots=True)
class KnownModel:
    context_window: int
    pricing: Pricing | None


# Longest prefix wins.
KNOWN: dict[str, KnownModel] = {
    "gpt-4o-mini": KnownModel(128_000, Pricing(0.15, 0.60, 0.075)),
    "gpt-4o": KnownModel(128_000, Pricing(2.50, 10.00, 1.25)),
    "gpt-4.1-nano": KnownModel(1_047_576, Pricing(0.10, 0.40, 0.025)),
    "gpt-4.1-mini": KnownModel(1_047_576, Pricing(0.40, 1.60, 0.10)),
    "gpt-4.1": KnownModel(1_047_576, Pricing(2.00, 8.00, 0.50)),
    "gpt-5-nano": KnownModel(400_000, Pricing(0.05, 0.40, 0.005)),
    "gpt-5-mini": KnownModel(400_000, Pricing(0.25, 2.00, 0.025)),
    "gpt-5": KnownModel(400_000, Pricing(1.25, 10.00, 0.125)),
    "o3-mini": KnownModel(200_000, Pricing(1.10, 4.40, 0.55)),
    "o4-mini": KnownModel(200_000, Pricing(1.10, 4.40, 0.275)),
    "gpt-3.5-turbo": KnownModel(16_385, Pricing(0.50, 1.50)),
    "claude-3-5-haiku": KnownModel(200_000, Pricing(0.80, 4.00, 0.08)),
    "claude-3-5-sonnet": KnownModel(200_000, Pricing(3.00, 15.00, 0.30)),
    "claude-3-7-sonnet": KnownModel(200_000, Pricing(3.00, 15.00, 0.30)),
    "claude-sonnet-4": KnownModel(200_000, Pricing(3.00, 15.00, 0.30)),
    "claude-haiku-4": KnownModel(200_000, Pricing(1.00, 5.00, 0.10)),
    "claude-opus-4": KnownModel(200_000, Pricing(15.00, 75.00, 1.50)),
    "smollm2-135m-instruct": KnownModel(8_192, Pricing(0.0, 0.0)),
}


def lookup(upstream_model: str) -> KnownModel | None:
    name = upstream_model.lower().rsplit("/", 1)[-1]
    best = max((prefix for prefix in KNOWN if name.startswith(prefix)), key=len, default=None)
    return None if best is None else KNOWN[best]

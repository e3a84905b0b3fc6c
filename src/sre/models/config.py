"""Model configuration: a TOML file, overridable by environment variables, into a registry.

    default_model = "gpt"
    [models.gpt]
    provider = "openai"            # or "scripted"
    model = "gpt-4o-mini"          # the upstream's name; defaults to the section name
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY" # or api_key = "..."
    context_window = 128000         # known models: taken from sre.models.catalog
    retries = 2                     # on 429, 5xx and dropped connections, before any output
    fallbacks = ["other-model"]     # tried in order when this one fails before any output
    input_price = 0.15              # USD per million tokens (also cached_input_price, output_price)

`SRE_MODELS__<NAME>__<KEY>=value` overrides one key of one model (and can define a model),
`SRE_DEFAULT_MODEL` names the default, and `SRE_OPENAI_BASE_URL` with `SRE_OPENAI_MODEL` defines
an OpenAI-compatible model without any file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sre.models.base import ChatModel, ModelInfo, Pricing
from sre.models.catalog import KnownModel, lookup
from sre.models.resilience import FallbackModel, RetryingModel
from sre.types.errors import ConfigError, InvalidRequest

PROVIDERS = ("openai", "openai-responses", "anthropic", "local", "scripted")
DEFAULT_CONTEXT_WINDOW = 128_000
LOCAL_CONTEXT_WINDOW = 4096  # the KV cache grows with it; 4096 keeps the embedded default small
_KNOWN_KEYS = {
    "provider",
    "model",
    "base_url",
    "api_key",
    "api_key_env",
    "context_window",
    "headers",
    "query",
    "max_tokens_param",
    "max_tokens_default",
    "anthropic_version",
    "structured_output",
    "connect_timeout",
    "read_timeout",
    "replies",
    "call_tool",
    "tool_arguments",
    "path",
    "threads",
    "retries",
    "retry_max_delay",
    "fallbacks",
    "input_price",
    "cached_input_price",
    "output_price",
}
_FLOAT_KEYS = (
    "connect_timeout",
    "read_timeout",
    "retry_max_delay",
    "input_price",
    "cached_input_price",
    "output_price",
)


def read_toml(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    file = Path(path).expanduser()
    try:
        with file.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None


def _coerce(key: str, value: str) -> Any:
    try:
        if key in ("context_window", "retries"):
            return int(value)
        if key in _FLOAT_KEYS:
            return float(value)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if key == "replies":
        return value.split("|")
    if key == "fallbacks":
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


def _pricing(name: str, section: Mapping[str, Any], known: KnownModel | None) -> Pricing | None:
    prices = {k: section[k] for k in ("input_price", "cached_input_price", "output_price") if k in section}
    for key, value in prices.items():
        if not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"[models.{name}] {key} must be a non-negative number (USD per million tokens)")
    if "input_price" in prices or "output_price" in prices:
        return Pricing(
            input=float(prices.get("input_price", 0.0)),
            output=float(prices.get("output_price", 0.0)),
            cached_input=None if "cached_input_price" not in prices else float(prices["cached_input_price"]),
        )
    return None if known is None else known.pricing


def model_infos(config: Mapping[str, Any], env: Mapping[str, str]) -> tuple[dict[str, ModelInfo], str | None]:
    raw = config.get("models", {})
    if not isinstance(raw, dict):
        raise ConfigError("[models] must be a table of models")
    sections: dict[str, dict[str, Any]] = {}
    for name, section in raw.items():
        if not isinstance(section, dict):
            raise ConfigError(f"[models.{name}] must be a table")
        sections[name] = dict(section)
    for var, value in env.items():
        if var.startswith("SRE_MODELS__") and var.count("__") == 2:
            _, name, key = var.split("__")
            key = key.lower()
            match = next((n for n in sections if n.upper().replace("-", "_") == name.upper()), name.lower())
            sections.setdefault(match, {})[key] = _coerce(key, value)
    if env.get("SRE_OPENAI_BASE_URL") and env.get("SRE_OPENAI_MODEL"):
        name = env["SRE_OPENAI_MODEL"]
        sections.setdefault(name, {}).update(
            provider="openai",
            base_url=env["SRE_OPENAI_BASE_URL"],
            api_key=env.get("SRE_OPENAI_API_KEY") or env.get("OPENAI_API_KEY"),
        )
    infos: dict[str, ModelInfo] = {}
    for name, section in sections.items():
        unknown = set(section) - _KNOWN_KEYS
        if unknown:
            raise ConfigError(f"[models.{name}] has unknown keys: {', '.join(sorted(unknown))}")
        provider = section.get("provider", "openai")
        if provider not in PROVIDERS:
            raise ConfigError(
                f"[models.{name}] provider must be one of {', '.join(PROVIDERS)}, got {provider!r}"
            )
        if section.get("api_key_env") and not section.get("api_key"):
            section["api_key"] = env.get(str(section["api_key_env"]))
        upstream = str(section.get("model", name))
        known = lookup(upstream)
        if provider == "local":  # the window is what SRE allocates, not what the weights allow
            window = section.get("context_window", LOCAL_CONTEXT_WINDOW)
        else:
            window = section.get("context_window", known.context_window if known else DEFAULT_CONTEXT_WINDOW)
        if not isinstance(window, int) or window < 256:
            raise ConfigError(f"[models.{name}] context_window must be an integer of at least 256")
        retries = section.get("retries", 0 if provider in ("scripted", "local") else 2)
        if not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ConfigError(f"[models.{name}] retries must be an integer from 0 to 10")
        section["retries"] = retries
        fallbacks = section.get("fallbacks", [])
        if not isinstance(fallbacks, list) or not all(isinstance(f, str) for f in fallbacks):
            raise ConfigError(f"[models.{name}] fallbacks must be a list of model names")
        infos[name] = ModelInfo(
            name=name,
            provider=provider,
            upstream_model=upstream,
            context_window=window,
            options={k: v for k, v in section.items() if k not in ("provider", "model", "context_window")},
            pricing=_pricing(name, section, known),
        )
    for name, info in infos.items():
        for other in info.options.get("fallbacks", []):
            if other not in infos or other == name:
                raise ConfigError(
                    f"[models.{name}] falls back to {other!r}, which is not another configured model"
                )
    default = env.get("SRE_DEFAULT_MODEL") or config.get("default_model")
    if default is not None and default not in infos:
        raise ConfigError(f"default model {default!r} is not configured")
    if default is None and len(infos) == 1:
        default = next(iter(infos))
    return infos, default


def local_model_info(name: str = "local") -> ModelInfo:
    """The embedded default: SmolLM2-135M-Instruct, bundled, run in-process."""
    infos, _ = model_infos({"models": {name: {"provider": "local", "model": "SmolLM2-135M-Instruct"}}}, {})
    return infos[name]


def build_model(info: ModelInfo) -> ChatModel:
    if info.provider == "scripted":
        from sre.models.scripted import scripted_from_info

        return scripted_from_info(info)
    if info.provider == "openai-responses":
        from sre.models.openai_responses import OpenAIResponsesModel

        return OpenAIResponsesModel(info)
    if info.provider == "local":
        from sre.models.local import LocalChatModel

        return LocalChatModel(info)
    if info.provider == "anthropic":
        from sre.models.anthropic import AnthropicModel

        return AnthropicModel(info)
    from sre.models.openai_chat import OpenAIChatModel

    return OpenAIChatModel(info)


class ModelRegistry:
    """The configured models by name, and which one a request without `model` gets."""

    def __init__(self, models: Mapping[str, ChatModel] | None = None, default: str | None = None) -> None:
        self.models: dict[str, ChatModel] = dict(models or {})
        self.default = default if default is not None else (next(iter(self.models)) if self.models else None)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ModelRegistry:
        """Build every configured model, each wrapped in its retries, then in its fallback chain."""
        infos, default = model_infos(config, os.environ if env is None else env)
        single: dict[str, ChatModel] = {}
        for name, info in infos.items():
            model = build_model(info)
            retries = int(info.options.get("retries", 0))
            if retries:
                max_delay = float(info.options.get("retry_max_delay", 20.0))
                model = RetryingModel(model, max_retries=retries, max_delay=max_delay)
            single[name] = model
        chained: dict[str, ChatModel] = {}
        for name, model in single.items():
            fallbacks = infos[name].options.get("fallbacks", [])
            chained[name] = FallbackModel([model, *(single[f] for f in fallbacks)]) if fallbacks else model
        return cls(chained, default)

    def add(self, model: ChatModel, *, default: bool = False) -> None:
        self.models[model.name] = model
        if default or self.default is None:
            self.default = model.name

    def resolve(self, name: str | None) -> ChatModel:
        if name is None:
            if self.default is None:
                raise InvalidRequest(
                    "No model is configured. Set SRE_OPENAI_BASE_URL and SRE_OPENAI_MODEL, or pass --config.",
                    param="model",
                    code="model_not_found",
                )
            name = self.default
        model = self.models.get(name)
        if model is None:
            raise InvalidRequest(
                f"The model '{name}' does not exist. Known models: {', '.join(sorted(self.models)) or 'none'}.",
                param="model",
                code="model_not_found",
            )
        return model

    def infos(self) -> list[ModelInfo]:
        return [m.info for m in self.models.values()]

    async def aclose(self) -> None:
        for model in self.models.values():
            await model.aclose()

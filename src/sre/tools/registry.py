"""Server-side Python tools: functions registered with a pydantic argument schema, a risk, an
idempotency flag and a timeout.

`ToolRegistry.tool` is a decorator. A function either takes one pydantic model (its argument schema)
or plain annotated parameters, from which a model is built; either way the model's JSON schema is
what the model sees and what a call's arguments are validated against before the function runs.
Synchronous functions run in a worker thread; a timeout gives the model an error at once (a thread
cannot be stopped, so its work may still finish: mark such tools `idempotent=False` when that
matters). `tools_from_modules` imports the modules a configuration names, whose tools register on
`default_registry` through `sre.tool`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from sre.tools.base import DEFAULT_TIMEOUT, Risk, ToolError, ToolSpec
from sre.types.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True)
class PythonTool:
    spec: ToolSpec
    args: type[BaseModel]
    fn: Callable[..., Any]
    takes_model: bool  # called with the model itself rather than its fields


def _args_model(fn: Callable[..., Any], name: str) -> tuple[type[BaseModel], bool]:
    signature = inspect.signature(fn)
    hints = get_type_hints(fn)
    params = list(signature.parameters.values())
    if len(params) == 1:
        hint = hints.get(params[0].name)
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            return hint, True
    fields: dict[str, Any] = {}
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name!r}: *args and **kwargs cannot be described to a model")
        if param.name not in hints:
            raise TypeError(f"tool {name!r}: parameter {param.name!r} needs a type annotation")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints[param.name], default)
    model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return model, False


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return json.dumps(value, default=str, ensure_ascii=False)


class ToolRegistry:
    """A `ToolSource` of Python functions."""

    label = "python"

    def __init__(self) -> None:
        self.tools: dict[str, PythonTool] = {}

    def tool(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        risk: Risk = "low",
        idempotent: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Any:
        """Register `fn` (usable bare, `@registry.tool`, or with options, `@registry.tool(risk=...)`)."""

        def register(target: F) -> F:
            self.add(
                target, name=name, description=description, risk=risk, idempotent=idempotent, timeout=timeout
            )
            return target

        return register(fn) if fn is not None else register

    def add(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        risk: Risk = "low",
        idempotent: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ToolSpec:
        tool_name = name or fn.__name__
        if not tool_name or len(tool_name) > 64 or not set(tool_name) <= _NAME_CHARS:
            raise ValueError(f"tool name {tool_name!r}: use 1-64 letters, digits, '_' or '-'")
        if risk not in ("low", "medium", "high"):
            raise ValueError(f"tool {tool_name!r}: risk must be low, medium or high, not {risk!r}")
        if not 0 < timeout <= 86400:
            raise ValueError(f"tool {tool_name!r}: timeout must be between 0 and 86400 seconds")
        args, takes_model = _args_model(fn, tool_name)
        schema = args.model_json_schema()
        schema.pop("title", None)
        spec = ToolSpec(
            name=tool_name,
            description=description or inspect.getdoc(fn) or "",
            parameters=schema,
            risk=risk,
            idempotent=idempotent,
            timeout=timeout,
        )
        self.tools[tool_name] = PythonTool(spec=spec, args=args, fn=fn, takes_model=takes_model)
        return spec

    async def list_tools(self) -> list[ToolSpec]:
        return [t.spec for t in self.tools.values()]

    def specs(self) -> dict[str, ToolSpec]:
        return {name: t.spec for name, t in self.tools.items()}

    async def call(self, name: str, arguments: dict[str, Any], *, key: str) -> str:
        tool = self.tools.get(name)
        if tool is None:
            raise ToolError(f"There is no tool named '{name}'.", code="unknown_tool")
        try:
            parsed = tool.args.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
            )
            raise ToolError(f"Invalid arguments for '{name}': {problems}", code="invalid_arguments") from None
        if tool.takes_model:
            call_args: tuple[Any, ...] = (parsed,)
            call_kwargs: dict[str, Any] = {}
        else:
            call_args, call_kwargs = (), {f: getattr(parsed, f) for f in type(parsed).model_fields}
        try:
            if inspect.iscoroutinefunction(tool.fn):
                result = await asyncio.wait_for(tool.fn(*call_args, **call_kwargs), tool.spec.timeout)
            else:
                result = await asyncio.wait_for(
                    asyncio.to_thread(tool.fn, *call_args, **call_kwargs), tool.spec.timeout
                )
        except TimeoutError:
            raise ToolError(
                f"Tool '{name}' did not finish within {tool.spec.timeout:g} s.", code="timeout"
            ) from None
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(f"Tool '{name}' failed: {type(exc).__name__}: {exc}") from None
        return _render(result)

    async def aclose(self) -> None:
        return None


default_registry = ToolRegistry()


def tool(
    fn: F | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    risk: Risk = "low",
    idempotent: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """Register a function on `default_registry`, which `sre serve` offers to agents."""
    return default_registry.tool(
        fn, name=name, description=description, risk=risk, idempotent=idempotent, timeout=timeout
    )


def tools_from_modules(modules: list[str]) -> None:
    """Import the modules a configuration's `[tools] modules` names (they register their tools)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(
                f"could not import tool module {module!r}: {type(exc).__name__}: {exc}"
            ) from None

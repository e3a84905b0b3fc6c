"""Models: the provider protocol, the providers and their configuration.

Providers translate SRE's items to one wire format and back; they never touch the store.
"""

from sre.models.base import (
    ChatModel,
    Finish,
    FunctionTool,
    ModelEvent,
    ModelInfo,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from sre.models.config import ModelRegistry, read_toml
from sre.models.scripted import FunctionModel, ScriptedModel, ScriptedToolCall

__all__ = [
    "ChatModel",
    "Finish",
    "FunctionModel",
    "FunctionTool",
    "ModelEvent",
    "ModelInfo",
    "ModelRegistry",
    "ModelRequest",
    "ScriptedModel",
    "ScriptedToolCall",
    "TextDelta",
    "ToolCallDelta",
    "Usage",
    "read_toml",
]

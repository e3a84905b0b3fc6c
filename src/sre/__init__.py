"""SRE, the Stateful Runtime Environment: stateful, governed agents over stateless model APIs.

What users import lives here; everything else is private to its layer.
"""

from sre.context import Candidate, ContextSource, TurnContext
from sre.models import ChatModel, ModelRegistry, ModelRequest
from sre.runtime import Runtime, Settings, SyncRuntime
from sre.tools import ToolError, ToolRegistry, tool
from sre.types import (
    Caller,
    ConfigError,
    Conflict,
    InvalidRequest,
    ModelError,
    NotFound,
    PermissionDenied,
    RateLimited,
    SREError,
    Unauthenticated,
)

__version__ = "0.1.0"

__all__ = [
    "Caller",
    "Candidate",
    "ChatModel",
    "ConfigError",
    "Conflict",
    "ContextSource",
    "InvalidRequest",
    "ModelError",
    "ModelRegistry",
    "ModelRequest",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "Runtime",
    "SREError",
    "Settings",
    "SyncRuntime",
    "ToolError",
    "ToolRegistry",
    "TurnContext",
    "Unauthenticated",
    "__version__",
    "tool",
]

"""The runtime facade: `Runtime` (async) and `SyncRuntime` (a thin blocking wrapper)."""

from sre.runtime.runtime import Runtime
from sre.runtime.settings import Settings
from sre.runtime.sync import SyncRuntime

__all__ = ["Runtime", "Settings", "SyncRuntime"]

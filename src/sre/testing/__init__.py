"""Test doubles that ship with SRE: a scripted model, a function model, and a switch that makes any
real model request fail.

    from sre.testing import ScriptedModel, ScriptedToolCall, block_model_requests
    block_model_requests()            # or SRE_BLOCK_MODEL_REQUESTS=1, inherited by subprocesses
    model = ScriptedModel(["Hello!", ScriptedToolCall("lookup", {"q": "x"})])

They stand in for the model only; never for SRE's own layers.
"""

from __future__ import annotations

from sre.models.guard import requests_blocked, set_blocked
from sre.models.scripted import FunctionModel, ScriptedModel, ScriptedToolCall


def block_model_requests(blocked: bool = True) -> None:
    """Make every model request to a non-loopback host fail in this process."""
    set_blocked(blocked)


__all__ = ["FunctionModel", "ScriptedModel", "ScriptedToolCall", "block_model_requests", "requests_blocked"]

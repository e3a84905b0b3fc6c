"""Governance: who is calling, and what they may do.

The one place above the store where a request's identity is established (an API key, the local
user of an embedded setup, the CLI acting within a tenant) and where the rules of who may do what
are written (who may decide an approval). Later: roles, scopes, acting for a user, audit. It reads
and writes through the store; it knows nothing of HTTP, models or the engine.
"""

from sre.governance.auth import Authenticator
from sre.governance.rules import approval_check

__all__ = ["Authenticator", "approval_check"]

"""Governance: who is calling, and what they may do.

The one place above the store where a request's identity is established (an API key, an OIDC
access token from a configured issuer, the local user of an embedded setup, the CLI acting within a
tenant) and where the rules of who may do what
are written (who may decide an approval, who may read the audit trail). Later: scopes, acting for a
user, per-route roles. It also keeps a tenant's secrets encrypted (`secrets`, with the keys and the
cipher in `secret_keys`). It reads
and writes through the store; it knows nothing of HTTP, models or the engine.
"""

from sre.governance.auth import Authenticator
from sre.governance.roles import AUDIT_READERS, RIGHTS, check_audit_reader
from sre.governance.rules import approval_check

__all__ = ["AUDIT_READERS", "RIGHTS", "Authenticator", "approval_check", "check_audit_reader"]

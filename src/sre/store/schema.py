"""The relational schema, as SQLAlchemy Core tables shared by SQLite and PostgreSQL.

Every table carries `tenant_id` first in its primary key, so no query can forget it and a later
partitioning by tenant stays possible. Conversation items are append-only: a fork points at its
parent and fork point instead of copying. Agent definitions are append-only too: an update is a new
version, a delete marks the versions deleted. The Alembic migrations in `migrations/versions` create
exactly these tables; a test checks that the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa

from sre.types.status import ACTIVE

metadata = sa.MetaData()

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

principals = sa.Table(
    "principals",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # 0007: what the principal may do (principals made before 0007 keep every right: admin)
    sa.Column("role", sa.String(16), nullable=False, server_default="admin"),
    # 0009: what runs acting for it may use ({"tools": [...], "models": [...]}, JSON; NULL: anything),
    # and when it was disabled (its keys and tokens are refused from then on)
    sa.Column("grants", sa.Text, nullable=True),
    sa.Column("disabled_at", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("tenant_id", "name", name="uq_principals_name"),
)

# 0009: groups of principals, nested one level (a group's members are principals or groups whose
# members are principals). A group carries grants like a principal; approvers may name it.
groups = sa.Table(
    "groups",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("grants", sa.Text, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("tenant_id", "name", name="uq_groups_name"),
)

group_members = sa.Table(
    "group_members",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("group_id", sa.String(64), primary_key=True),
    sa.Column("member_id", sa.String(64), primary_key=True),  # a principal's id or a group's
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
sa.Index("ix_group_members_member", group_members.c.tenant_id, group_members.c.member_id)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("principal_id", sa.String(64), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(32), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("revoked_at", sa.BigInteger, nullable=True),
    sa.Column("expires_at", sa.BigInteger, nullable=True),  # 0008: refused from then on (None: never)
    # 0009: what the key may do, a JSON list of scopes (NULL: everything its principal's role may)
    sa.Column("scopes", sa.Text, nullable=True),
    # 0009: the key this one replaced by rotation, if any
    sa.Column("rotated_from", sa.String(64), nullable=True),
)

# 0011: a tenant's secrets (provider API keys, connectors' credentials), encrypted: `ciphertext` is a
# Fernet token of the value (`sre.governance.secrets`), `key_id` the fingerprint of the key that made
# it, so that a rotation finds what the newest key has not yet re-encrypted. Never a plaintext.
secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("ciphertext", sa.Text, nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=True),
    sa.UniqueConstraint("tenant_id", "name", name="uq_secrets_name"),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("hidden", sa.Boolean, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("parent_id", sa.String(64), nullable=True),
    sa.Column("fork_seq", sa.BigInteger, nullable=True),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("deleted_at", sa.BigInteger, nullable=True),
    # 0006: how many compaction items its own segment holds (a window looks for one only if some has)
    sa.Column("compactions", sa.Integer, nullable=False, server_default="0"),
    # 0007: the principal it belongs to (NULL: made before ownership, the tenant's), and who else
    # of the tenant may use it: "private" (its owner; admins and auditors read it, audited) or "tenant"
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("visibility", sa.String(16), nullable=False, server_default="private"),
)
sa.Index("ix_conversations_parent", conversations.c.tenant_id, conversations.c.parent_id)
sa.Index(
    "ix_conversations_visible",
    conversations.c.tenant_id,
    conversations.c.hidden,
    conversations.c.id,
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("conversation_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(64), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("response_id", sa.String(64), nullable=True),
    sa.Column("origin", sa.String(8), nullable=False),  # "input" or "output" of its response
    sa.Column("tokens", sa.Integer, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
sa.Index("ux_items_id", items.c.tenant_id, items.c.id, unique=True)
sa.Index("ix_items_response", items.c.tenant_id, items.c.response_id, items.c.seq)
# 0006: a conversation's newest compaction item is one probe of this (partial) index.
sa.Index(
    "ix_items_compaction",
    items.c.tenant_id,
    items.c.conversation_id,
    items.c.seq,
    sqlite_where=items.c.type == "compaction",
    postgresql_where=items.c.type == "compaction",
)

responses = sa.Table(
    "responses",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("principal_id", sa.String(64), nullable=False),
    sa.Column("conversation_id", sa.String(64), nullable=False),
    sa.Column("public_conversation_id", sa.String(64), nullable=True),
    sa.Column("previous_response_id", sa.String(64), nullable=True),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("head_seq", sa.BigInteger, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("completed_at", sa.BigInteger, nullable=True),
)

model_calls = sa.Table(
    "model_calls",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("response_id", sa.String(64), nullable=True),
    sa.Column("principal_id", sa.String(64), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("input_tokens", sa.Integer, nullable=False),
    sa.Column("output_tokens", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("cached_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tokens_exact", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("key_id", sa.String(64), nullable=True),  # 0010: the API key it was made through
)
sa.Index("ix_model_calls_response", model_calls.c.tenant_id, model_calls.c.response_id)
sa.Index("ix_model_calls_created", model_calls.c.tenant_id, model_calls.c.created_at)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("definition", sa.Text, nullable=False),  # JSON, validated above the store
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("deleted_at", sa.BigInteger, nullable=True),
)

# A durable run (background, or an agent's): the request to execute, its status, the lease of the
# worker executing it, and its place in its conversation's queue. Its `responses` row is written when
# it finishes (in the turn's transaction); until then the response object is read from here.
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("response_id", sa.String(64), primary_key=True),
    sa.Column("principal_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("request", sa.Text, nullable=False),  # JSON: the validated request and the queued response
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_expires_at", sa.BigInteger, nullable=True),  # epoch milliseconds
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # 0005: the named conversation (one active run each), the queue order (epoch ms), whether the
    # client asked for `background` (its events are kept), the committed step count and the last
    # event committed with a step (a new attempt drops the events after it).
    sa.Column("conversation_id", sa.String(64), nullable=True),
    sa.Column("queued_ms", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("background", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("steps", sa.Integer, nullable=False, server_default="0"),
    sa.Column("committed_sequence", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("key_id", sa.String(64), nullable=True),  # 0010: the API key that started it
)
sa.Index("ix_runs_runnable", runs.c.status, runs.c.created_at)
sa.Index("ix_runs_conversation", runs.c.tenant_id, runs.c.conversation_id, runs.c.status)
# 0010: the runs that hold a place under a concurrency limit (queued, in progress or paused), counted
# per tenant, principal or key from this (partial) index alone.
RUN_HOLDS_PLACE = "status IN (" + ", ".join(f"'{status}'" for status in ACTIVE) + ")"
sa.Index(
    "ix_runs_active",
    runs.c.tenant_id,
    runs.c.principal_id,
    runs.c.key_id,
    sqlite_where=sa.text(RUN_HOLDS_PLACE),
    postgresql_where=sa.text(RUN_HOLDS_PLACE),
)

run_events = sa.Table(
    "run_events",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("response_id", sa.String(64), primary_key=True),
    sa.Column("sequence_number", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("attempt", sa.Integer, nullable=False),  # 0: written at enqueue or cancel, not by a worker
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# The journal of an unfinished run: one row per model step (call_id "") and per tool call. A tool
# call that is not idempotent gets a `started` row before it runs, so a crash leaves its outcome
# visibly unknown. The rows go when the run finishes: its items are in the conversation by then.
run_steps = sa.Table(
    "run_steps",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("response_id", sa.String(64), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("call_id", sa.String(256), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # model, tool, client
    sa.Column("status", sa.String(16), nullable=False),  # started, completed
    sa.Column("data", sa.Text, nullable=False),  # JSON
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# A decision a paused run waits for: a tool call that needs approval, or a non-idempotent call whose
# outcome a crash left unknown (approve: run it again; deny: tell the model it did not run).
approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("response_id", sa.String(64), nullable=False),
    sa.Column("principal_id", sa.String(64), nullable=False),  # whom the run acts for
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("call_id", sa.String(256), nullable=False),
    sa.Column("kind", sa.String(24), nullable=False),  # approval, unknown_outcome
    sa.Column("tool", sa.String(200), nullable=False),
    sa.Column("arguments", sa.Text, nullable=False),
    sa.Column("approvers", sa.Text, nullable=False),  # JSON list of principal names; [] = the run's own
    sa.Column("status", sa.String(16), nullable=False),  # pending, approved, denied, cancelled
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("decided_by", sa.String(64), nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("decided_at", sa.BigInteger, nullable=True),
)
sa.Index("ix_approvals_status", approvals.c.tenant_id, approvals.c.status, approvals.c.created_at)
sa.Index("ix_approvals_response", approvals.c.tenant_id, approvals.c.response_id)

# 0010: quotas. A subject's own limits (NULL: the server's default for its kind; -1: none), set by
# an admin; the counters of requests per minute and tokens per UTC day, one row per subject and
# window (with the marks of refusals already audited, so that a flood of them is audited once per
# window); and the places plain turns hold under a concurrency limit while they run (a durable run
# holds its place by its row in `runs`). A place unrenewed past `expires_ms` is free again.
quota_limits = sa.Table(
    "quota_limits",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("subject", sa.String(16), primary_key=True),  # tenant, principal or key
    sa.Column("subject_id", sa.String(64), primary_key=True),
    sa.Column("requests_per_minute", sa.BigInteger, nullable=True),
    sa.Column("tokens_per_day", sa.BigInteger, nullable=True),
    sa.Column("concurrent_runs", sa.BigInteger, nullable=True),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

quota_counters = sa.Table(
    "quota_counters",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("counter", sa.String(32), primary_key=True),  # requests, tokens, refused:LIMIT
    sa.Column("subject", sa.String(16), primary_key=True),
    sa.Column("subject_id", sa.String(64), primary_key=True),
    sa.Column("window_start", sa.BigInteger, primary_key=True, autoincrement=False),  # epoch seconds
    sa.Column("n", sa.BigInteger, nullable=False),
)

quota_slots = sa.Table(
    "quota_slots",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("principal_id", sa.String(64), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=True),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

ALL_TABLES = (
    tenants,
    principals,
    groups,
    group_members,
    api_keys,
    secrets,
    conversations,
    items,
    responses,
    model_calls,
    agents,
    runs,
    run_events,
    run_steps,
    approvals,
    quota_limits,
    quota_counters,
    quota_slots,
)

# 0007: the audit trail. Each tenant's events form one hash chain (`seq` 1, 2, ...; each row's
# `prev_hash` is the hash of the one before); `audit_heads` holds each chain's last position, the
# row a writer locks to extend it (and what a truncated chain is checked against).
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(64), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("resource_id", sa.String(200), nullable=True),
    sa.Column("actor", sa.String(64), nullable=True),
    sa.Column("on_behalf_of", sa.String(64), nullable=True),
    sa.Column("agent", sa.String(200), nullable=True),
    sa.Column("agent_version", sa.Integer, nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
sa.Index("ix_audit_action", audit_events.c.tenant_id, audit_events.c.action, audit_events.c.seq)
sa.Index(
    "ix_audit_resource",
    audit_events.c.tenant_id,
    audit_events.c.resource_type,
    audit_events.c.resource_id,
    audit_events.c.seq,
)

audit_heads = sa.Table(
    "audit_heads",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

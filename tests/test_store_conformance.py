"""The store conformance suite: one set of behaviours, run against SQLite and PostgreSQL.

Each test makes its own tenant, so tests share a database without clearing it.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sre.store import Store, TurnCommit
from sre.store.schema import agents, api_keys, items, metadata
from sre.types.errors import Conflict, InvalidRequest, NotFound
from sre.types.items import Message, OutputText, parse_input_items
from sre.types.records import AgentVersion, ResponseRecord
from sre.types.steps import CallStepData, ModelStepData, RunPayload, StepUsage


def tenant(store: Store) -> str:
    return store.keys.ensure_tenant(f"t-{uuid.uuid4().hex}")


def texts(stored: list) -> list[str]:  # type: ignore[type-arg]
    return ["".join(p.get("text", "") for p in i.data.get("content", [])) for i in stored]


def user(*words: str) -> list:  # type: ignore[type-arg]
    return parse_input_items([{"role": "user", "content": w} for w in words])


def test_backend_is_what_it_claims(store: Store, backend: str) -> None:
    assert store.dialect == backend


def test_migrations_match_schema(store: Store) -> None:
    with store.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    assert store.db.current_revision() == store.db.head_revision()
    assert store.db.upgrade() is False  # already at head: nothing to do


def test_keys_are_hashed_resolved_and_revoked(store: Store) -> None:
    t = tenant(store)
    assert store.keys.ensure_tenant(store.keys.tenant_names()[t]) == t  # idempotent
    alice = store.keys.ensure_principal(t, "alice")
    assert store.keys.ensure_principal(t, "alice") == alice
    key, secret = store.keys.create_key(t, alice.id, "laptop")
    caller = store.keys.authenticate(secret)
    assert caller is not None and (caller.tenant_id, caller.principal_id, caller.key_id) == (
        t,
        alice.id,
        key.id,
    )
    with store.db.read() as conn:
        stored = conn.execute(sa.select(api_keys.c.key_hash).where(api_keys.c.id == key.id)).scalar_one()
    assert secret not in stored and len(stored) == 64
    assert store.keys.authenticate(secret + "x") is None
    store.keys.revoke_key(key.id)
    assert store.keys.authenticate(secret) is None
    assert store.keys.revoke_key(key.id).revoked_at is not None  # revoking twice is harmless
    with pytest.raises(NotFound):
        store.keys.revoke_key("key_missing")
    with pytest.raises(InvalidRequest):
        store.keys.ensure_principal(t, "bob", kind="robot")


def test_conversation_lifecycle(store: Store) -> None:
    t = tenant(store)
    conv, stored = store.conversations.create(t, metadata={"topic": "x"}, initial=user("a", "b"))
    assert [i.seq for i in stored] == [1, 2] and conv.last_seq == 2
    assert store.conversations.get(t, conv.id).metadata == {"topic": "x"}
    assert store.conversations.update(t, conv.id, metadata={"topic": "y"}).metadata == {"topic": "y"}
    assert store.conversations.get(t, conv.id).metadata == {"topic": "y"}
    store.conversations.delete(t, conv.id)
    with pytest.raises(NotFound):
        store.conversations.get(t, conv.id)
    with pytest.raises(NotFound):
        store.conversations.append(t, conv.id, user("c"))
    with store.db.read() as conn:
        left = conn.execute(
            sa.select(sa.func.count()).select_from(items).where(items.c.conversation_id == conv.id)
        )
        assert left.scalar_one() == 0  # no fork reads them: the items are gone


def test_tenants_never_see_each_other(store: Store) -> None:
    a, b = tenant(store), tenant(store)
    conv, stored = store.conversations.create(a, initial=user("secret"))
    for call in (
        lambda: store.conversations.get(b, conv.id),
        lambda: store.conversations.append(b, conv.id, user("x")),
        lambda: store.conversations.list_items(b, conv.id),
        lambda: store.conversations.get_item(b, conv.id, stored[0].id),
        lambda: store.conversations.delete(b, conv.id),
        lambda: store.conversations.fork(b, conv.id),
    ):
        with pytest.raises(NotFound):
            call()
    assert texts(store.conversations.list_items(a, conv.id).data) == ["secret"]


def test_items_are_ordered_and_paginated(store: Store) -> None:
    t = tenant(store)
    conv, _ = store.conversations.create(t)
    words = [f"w{i}" for i in range(25)]
    store.conversations.append(t, conv.id, user(*words))
    first = store.conversations.list_items(t, conv.id, limit=10, order="asc")
    assert texts(first.data) == words[:10] and first.has_more
    second = store.conversations.list_items(t, conv.id, limit=10, order="asc", after=first.data[-1].id)
    assert texts(second.data) == words[10:20]
    last = store.conversations.list_items(t, conv.id, limit=10, order="asc", after=second.data[-1].id)
    assert texts(last.data) == words[20:] and not last.has_more
    newest = store.conversations.list_items(t, conv.id, limit=3)
    assert texts(newest.data) == ["w24", "w23", "w22"]
    with pytest.raises(InvalidRequest):
        store.conversations.list_items(t, conv.id, after="msg_unknown")


def test_forks_reference_their_parent_instead_of_copying(store: Store) -> None:
    t = tenant(store)
    parent, stored = store.conversations.create(t, initial=user("p1", "p2", "p3"))
    fork = store.conversations.fork(t, parent.id, at_item_id=stored[1].id)
    assert fork.parent_id == parent.id and fork.fork_seq == 2
    store.conversations.append(t, fork.id, user("f1"))
    store.conversations.append(t, parent.id, user("p4"))
    assert texts(store.conversations.list_items(t, fork.id, order="asc").data) == ["p1", "p2", "f1"]
    assert texts(store.conversations.list_items(t, parent.id, order="asc").data) == ["p1", "p2", "p3", "p4"]
    grandchild = store.conversations.fork(t, fork.id)
    store.conversations.append(t, grandchild.id, user("g1"))
    assert texts(store.conversations.list_items(t, grandchild.id, order="asc").data) == [
        "p1",
        "p2",
        "f1",
        "g1",
    ]
    page = store.conversations.list_items(t, grandchild.id, order="desc", limit=2)
    rest = store.conversations.list_items(t, grandchild.id, order="desc", limit=2, after=page.data[-1].id)
    assert texts(page.data) + texts(rest.data) == ["g1", "f1", "p2", "p1"]
    with store.db.read() as conn:
        count = conn.execute(
            sa.select(sa.func.count())
            .select_from(items)
            .where(items.c.conversation_id.in_([parent.id, fork.id, grandchild.id]))
        ).scalar_one()
    assert count == 6  # 4 in the parent, 1 in each fork: nothing copied
    assert store.conversations.get_item(t, grandchild.id, stored[0].id).id == stored[0].id
    with pytest.raises(NotFound):
        store.conversations.get_item(t, fork.id, stored[2].id)  # after the fork point: not in the fork
    with pytest.raises(Conflict):
        store.conversations.delete_item(t, fork.id, stored[0].id)  # the parent's item
    store.conversations.delete(t, parent.id)  # a live fork still reads the parent's items
    assert texts(store.conversations.list_items(t, fork.id, order="asc").data) == ["p1", "p2", "f1"]


def test_delete_item(store: Store) -> None:
    t = tenant(store)
    conv, stored = store.conversations.create(t, initial=user("a", "b", "c"))
    store.conversations.delete_item(t, conv.id, stored[1].id)
    assert texts(store.conversations.list_items(t, conv.id, order="asc").data) == ["a", "c"]
    with pytest.raises(NotFound):
        store.conversations.delete_item(t, conv.id, stored[1].id)


def test_window_reads_the_newest_items_that_fit(store: Store) -> None:
    t = tenant(store)
    conv, _ = store.conversations.create(t)
    store.conversations.append(t, conv.id, user(*[f"message number {i:04d}" for i in range(300)]))
    per_item = store.conversations.list_items(t, conv.id, limit=1).data[0].tokens
    window = store.conversations.window(t, conv.id, budget=per_item * 50 + per_item // 2)
    assert len(window.items) == 50 and window.truncated
    assert (
        texts(window.items)[0] == "message number 0250" and texts(window.items)[-1] == "message number 0299"
    )
    everything = store.conversations.window(t, conv.id, budget=10**9)
    assert len(everything.items) == 300 and not everything.truncated
    upto = store.conversations.window(t, conv.id, budget=10**9, upto=10)
    assert len(upto.items) == 10


def _turn(
    t: str,
    principal: str,
    *,
    previous: ResponseRecord | None = None,
    conversation: str | None = None,
    text: str = "q",
    keep: bool = True,
    store_it: bool = True,
) -> TurnCommit:
    rid = f"resp_{uuid.uuid4().hex}"
    return TurnCommit(
        tenant_id=t,
        principal_id=principal,
        response_id=rid,
        model="m",
        status="completed" if keep else "failed",
        body={},
        created_at=1,
        completed_at=2,
        conversation_id=conversation,
        previous=previous,
        input_items=user(text),
        output_items=[Message(role="assistant", content=[OutputText(text=f"answer to {text}")])],
        store=store_it,
        keep_items=keep,
        model_calls=[],
    )


def test_response_chains_append_and_branch_by_reference(store: Store) -> None:
    t = tenant(store)
    p = store.keys.ensure_principal(t, "alice").id
    first, _, _ = store.responses.commit_turn(_turn(t, p, text="one"))
    assert first is not None
    second, _, _ = store.responses.commit_turn(_turn(t, p, previous=first, text="two"))
    assert second is not None and second.conversation_id == first.conversation_id  # continued at the head
    branch, _, _ = store.responses.commit_turn(_turn(t, p, previous=first, text="other"))
    assert branch is not None and branch.conversation_id != first.conversation_id  # a fork
    window = store.responses.context(t, None, branch, 10**9)
    assert texts(window.items) == ["one", "answer to one", "other", "answer to other"]
    window = store.responses.context(t, None, second, 10**9)
    assert texts(window.items) == ["one", "answer to one", "two", "answer to two"]
    failed, stored_in, _ = store.responses.commit_turn(_turn(t, p, previous=second, text="boom", keep=False))
    assert failed is not None and failed.status == "failed" and stored_in == []
    assert store.responses.get(t, failed.id).head_seq == second.head_seq
    page = store.responses.list_input_items(t, second.id)
    assert texts(page.data) == ["two"]
    assert [i.type for i in store.responses.output_items(second)] == ["message"]
    with pytest.raises(NotFound):
        store.responses.get(tenant(store), first.id)
    store.responses.delete(t, first.id)
    with pytest.raises(NotFound):
        store.responses.get(t, first.id)
    unstored, _, _ = store.responses.commit_turn(_turn(t, p, store_it=False))
    assert unstored is None


def test_turn_in_a_conversation(store: Store) -> None:
    t = tenant(store)
    p = store.keys.ensure_principal(t, "alice").id
    conv, _ = store.conversations.create(t)
    record, stored_in, stored_out = store.responses.commit_turn(_turn(t, p, conversation=conv.id, text="hi"))
    assert record is not None and record.public_conversation_id == conv.id
    assert [i.seq for i in stored_in + stored_out] == [1, 2]
    assert texts(store.conversations.list_items(t, conv.id, order="asc").data) == ["hi", "answer to hi"]
    store.conversations.delete(t, conv.id)
    with pytest.raises(NotFound):
        store.responses.commit_turn(_turn(t, p, conversation=conv.id))


def test_concurrent_appends_keep_one_order(store: Store) -> None:
    t = tenant(store)
    conv, _ = store.conversations.create(t)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            for i in range(25):
                store.conversations.append(t, conv.id, user(f"{name}{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in "abc"]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    listed = store.conversations.list_items(t, conv.id, order="asc", limit=100).data
    assert [i.seq for i in listed] == list(range(1, 76))
    for name in "abc":
        mine = [x for x in texts(listed) if x.startswith(name)]
        assert mine == [f"{name}{i}" for i in range(25)]


# -- agents ------------------------------------------------------------------------------------


def bump(current: AgentVersion) -> dict[str, Any]:
    return {"n": current.definition["n"] + 1}


def test_agent_versions_are_appended_and_deletion_keeps_the_numbering(store: Store) -> None:
    t = tenant(store)
    first = store.agents.create(t, "helper", {"n": 1})
    assert (first.name, first.version, first.definition) == ("helper", 1, {"n": 1})
    with pytest.raises(Conflict):
        store.agents.create(t, "helper", {"n": 99})
    second = store.agents.update(t, "helper", bump)
    assert (second.version, second.definition) == (2, {"n": 2})
    assert store.agents.get(t, "helper").version == 2
    assert store.agents.get(t, "helper", 1).definition == {"n": 1}  # never rewritten
    with pytest.raises(NotFound) as missing:
        store.agents.get(t, "helper", 3)
    assert missing.value.param == "version"
    assert [v.version for v in store.agents.versions(t, "helper").data] == [2, 1]
    store.agents.delete(t, "helper")
    for call in (
        lambda: store.agents.get(t, "helper"),
        lambda: store.agents.get(t, "helper", 1),
        lambda: store.agents.update(t, "helper", bump),
        lambda: store.agents.delete(t, "helper"),
        lambda: store.agents.versions(t, "helper"),
    ):
        with pytest.raises(NotFound):
            call()
    assert store.agents.list(t).data == []
    again = store.agents.create(t, "helper", {"n": 10})
    assert again.version == 3  # the numbers go on; the old versions stay deleted
    assert [v.version for v in store.agents.versions(t, "helper").data] == [3]
    with pytest.raises(NotFound):
        store.agents.get(t, "helper", 1)
    with store.db.read() as conn:
        rows = conn.execute(
            sa.select(agents.c.version, agents.c.deleted_at.is_not(None))
            .where(agents.c.tenant_id == t)
            .order_by(agents.c.version)
        ).all()
    assert [tuple(r) for r in rows] == [(1, True), (2, True), (3, False)]


def test_agents_of_one_tenant_are_invisible_to_another(store: Store) -> None:
    a, b = tenant(store), tenant(store)
    store.agents.create(a, "secret", {"n": 1})
    for call in (
        lambda: store.agents.get(b, "secret"),
        lambda: store.agents.get(b, "secret", 1),
        lambda: store.agents.update(b, "secret", bump),
        lambda: store.agents.delete(b, "secret"),
        lambda: store.agents.versions(b, "secret"),
    ):
        with pytest.raises(NotFound):
            call()
    assert store.agents.list(b).data == []
    mine = store.agents.create(b, "secret", {"n": 7})  # the same name, a different agent
    assert mine.version == 1
    assert store.agents.get(a, "secret").definition == {"n": 1}


def test_agents_list_by_name_with_cursors(store: Store) -> None:
    t = tenant(store)
    names = ["a-1", "a_2", "B", "a", "z9", "m"]
    for name in names:
        store.agents.create(t, name, {"n": 1})
    store.agents.update(t, "m", bump)
    store.agents.delete(t, "z9")
    expected = sorted(set(names) - {"z9"})  # byte order on both stores
    first = store.agents.list(t, limit=2)
    assert [r.name for r in first.data] == expected[:2] and first.has_more
    rest = store.agents.list(t, limit=10, after=first.data[-1].name)
    assert [r.name for r in rest.data] == expected[2:] and not rest.has_more
    newest = store.agents.list(t, limit=10, order="desc")
    assert [r.name for r in newest.data] == expected[::-1]
    assert [r.name for r in store.agents.list(t, order="desc", after="a_2").data] == ["a-1", "a", "B"]
    assert {r.name: r.version for r in rest.data}["m"] == 2  # the newest version of each
    page = store.agents.versions(t, "m", limit=1, order="asc")
    assert [v.version for v in page.data] == [1] and page.has_more
    assert [v.version for v in store.agents.versions(t, "m", after=1, order="asc").data] == [2]
    assert [v.version for v in store.agents.versions(t, "m", after=2).data] == [1]


def test_concurrent_agent_updates_get_distinct_consecutive_versions(store: Store) -> None:
    t = tenant(store)
    store.agents.create(t, "busy", {"n": 1})
    errors: list[BaseException] = []
    written: list[int] = []

    def writer() -> None:
        try:
            for _ in range(10):
                written.append(store.agents.update(t, "busy", bump).version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert sorted(written) == list(range(2, 42))
    latest = store.agents.get(t, "busy")
    assert latest.version == 41 and latest.definition == {"n": 41}  # each built on the one before


def test_concurrent_creates_of_one_name_make_one_agent(store: Store) -> None:
    t = tenant(store)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def creator(i: int) -> None:
        barrier.wait()
        try:
            store.agents.create(t, "race", {"n": i})
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=creator, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(outcomes) == ["conflict"] * 3 + ["created"]
    assert [v.version for v in store.agents.versions(t, "race").data] == [1]


# -- durable runs: queue, leases, journal, approvals --------------------------------------------------


def _enqueue(
    store: Store, tenant_id: str, conv: str | None, policy: str = "enqueue", owner: str | None = None
):  # type: ignore[no-untyped-def]
    response_id = f"resp_{uuid.uuid4().hex}"
    payload = RunPayload(request={}, response={"id": response_id, "status": "queued"})
    first = {"type": "response.queued", "sequence_number": 0}
    lease = store.runs.enqueue(
        tenant_id, response_id, "p", payload, first, conversation_id=conv, policy=policy, owner=owner
    )
    return response_id, lease


def _claim_mine(store: Store, tenant_id: str, response_id: str):  # type: ignore[no-untyped-def]
    return store.runs.claim_runnable_run("w", 30, only=(tenant_id, response_id))


def test_runs_on_one_conversation_wait_their_turn(store: Store) -> None:
    from sre.types.records import StepRecord

    tenant_id = tenant(store)
    conv = store.conversations.create(tenant_id)[0].id
    first, lease = _enqueue(store, tenant_id, conv, owner="me")
    assert lease is not None and lease.attempt == 1  # nothing ahead: claimed for its owner at once
    second, waiting = _enqueue(store, tenant_id, conv, owner="me")
    assert waiting is None and _claim_mine(store, tenant_id, second) is None  # behind the first
    with pytest.raises(Conflict) as busy:
        _enqueue(store, tenant_id, conv, policy="reject")
    assert busy.value.code == "conversation_busy"
    # A paused run is still active; once it ends, the next one may start.
    assert store.runs.pause(
        lease, [StepRecord(1, "call_1", "client", "pending", CallStepData(name="f"))], [], []
    )
    assert _claim_mine(store, tenant_id, second) is None
    store.runs.cancel(tenant_id, first)
    claimed = _claim_mine(store, tenant_id, second)
    assert claimed is not None and claimed[0].response_id == second
    assert store.runs.get(tenant_id, first).status == "cancelled"  # type: ignore[union-attr]


def test_interrupt_cancels_waiting_runs_and_flags_running_ones(store: Store) -> None:
    tenant_id = tenant(store)
    conv = store.conversations.create(tenant_id)[0].id
    _, lease = _enqueue(store, tenant_id, conv, owner="me")
    queued, _ = _enqueue(store, tenant_id, conv)
    newest, got = _enqueue(store, tenant_id, conv, policy="interrupt", owner="me")
    assert got is None  # the running one must stop first
    assert store.runs.get(tenant_id, queued).status == "cancelled"  # type: ignore[union-attr]
    assert lease is not None and store.runs.heartbeat(lease, 30) is True  # told to cancel
    store.runs.finish(lease, "cancelled", [])
    assert _claim_mine(store, tenant_id, newest) is not None


def test_a_lost_lease_can_never_write_again(store: Store) -> None:
    from sre.store import LeaseLost
    from sre.types.records import StepRecord

    tenant_id = tenant(store)
    response_id, lease = _enqueue(store, tenant_id, None, owner="dead")
    assert lease is not None
    assert store.runs.expire_owner("dead") == 1
    claimed = _claim_mine(store, tenant_id, response_id)
    assert claimed is not None and claimed[1].attempt == 2
    row = StepRecord(
        0, "", "model", "completed", ModelStepData(items=[], usage=StepUsage(), status="completed")
    )
    with pytest.raises(LeaseLost):
        store.runs.commit_step(lease, [row], [], 30)
    assert store.runs.steps(tenant_id, response_id) == []
    store.runs.commit_step(claimed[1], [row], [{"type": "x", "sequence_number": 1}], 30, cursor=1)
    assert [s.step for s in store.runs.steps(tenant_id, response_id)] == [0]


def test_answers_to_a_paused_run_are_all_or_nothing(store: Store) -> None:
    import time

    from sre.governance import approval_check
    from sre.types.errors import PermissionDenied
    from sre.types.records import ApprovalRecord, Principal, StepRecord

    tenant_id = tenant(store)
    response_id, lease = _enqueue(store, tenant_id, None, owner="me")
    assert lease is not None

    def ask(approval_id: str, approvers: list[str]) -> ApprovalRecord:
        return ApprovalRecord(
            tenant_id=tenant_id, id=approval_id, response_id=response_id, principal_id="p", step=1,
            call_id=approval_id, kind="approval", tool="pay", arguments="{}", approvers=approvers,
            status="pending", reason=None, decided_by=None, created_at=int(time.time()), decided_at=None,
        )  # fmt: skip

    alice = approval_check(Principal(tenant_id, "p", "alice", "user"))
    boss = approval_check(Principal(tenant_id, "x", "boss", "user"))
    waiting = StepRecord(1, "call_c", "client", "pending", CallStepData(name="c"))
    assert store.runs.pause(lease, [waiting], [], [ask("apr_a", []), ask("apr_b", ["boss"])])
    output = StepRecord(
        1, "call_c", "client", "completed", CallStepData(output={"type": "function_call_output"})
    )
    with pytest.raises(PermissionDenied):  # the second decision is not the principal's to make
        store.approvals.answer(
            tenant_id, response_id, outputs=[output], decisions=[("apr_a", True, None), ("apr_b", True, None)],
            check=alice, decided_by="alice",
        )  # fmt: skip
    assert store.approvals.get(tenant_id, "apr_a").status == "pending"  # nothing was written
    assert [s.status for s in store.runs.steps(tenant_id, response_id)] == ["pending"]
    assert not store.approvals.answer(
        tenant_id, response_id, outputs=[output], decisions=[("apr_a", True, None)],
        check=alice, decided_by="alice",
    )  # fmt: skip
    assert store.runs.get(tenant_id, response_id).status == "requires_action"  # type: ignore[union-attr]
    decided, requeued = store.approvals.decide(
        tenant_id, "apr_b", check=boss, decided_by="boss", approve=False, reason="no"
    )
    assert requeued and decided.status == "denied" and decided.decided_by == "boss"
    assert store.runs.get(tenant_id, response_id).status == "queued"  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        store.approvals.decide(tenant_id, "apr_b", check=boss, decided_by="boss", approve=True, reason=None)
    assert [a.id for a in store.approvals.list(tenant_id, status="denied").data] == ["apr_b"]
    assert store.approvals.list(tenant(store)).data == []  # another tenant sees none

"""Conversations and their append-only items, forks, pagination and context windows.

A conversation's items are its own rows plus, for a fork, its parent's rows up to the fork point
(recursively): the lineage. Sequence numbers continue across a fork, so one ordering covers the whole
lineage and nothing is copied. Every read is an index range scan bounded by what the caller needs:
a page, or the newest items that fit a token budget, never the whole history.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from sre.store.audit import append_audit
from sre.store.database import Database, id_equals
from sre.store.schema import conversations, items
from sre.types.audit import AuditEvent
from sre.types.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from sre.types.ids import new_id
from sre.types.items import ID_PREFIX, AnyItem, estimate_tokens, item_to_dict, read_compaction
from sre.types.records import Conversation, Page, StoredItem, Viewer, Window

_MAX_LINEAGE = 10_000
_WINDOW_PAGE = 256
_INF = 2**62


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def conversation_from_row(row: sa.Row[Any]) -> Conversation:
    m = row._mapping
    return Conversation(
        tenant_id=m["tenant_id"],
        id=m["id"],
        created_at=m["created_at"],
        metadata=json.loads(m["metadata"]),
        hidden=bool(m["hidden"]),
        parent_id=m["parent_id"],
        fork_seq=m["fork_seq"],
        last_seq=m["last_seq"],
        compactions=m["compactions"],
        owner=m["owner"],
        visibility=m["visibility"],
    )


def item_from_row(row: sa.Row[Any]) -> StoredItem:
    m = row._mapping
    return StoredItem(
        tenant_id=m["tenant_id"],
        conversation_id=m["conversation_id"],
        seq=m["seq"],
        id=m["id"],
        type=m["type"],
        raw=m["data"],
        response_id=m["response_id"],
        created_at=m["created_at"],
        tokens=m["tokens"],
        origin=m["origin"],
    )


# -- building blocks shared with the responses repository; each runs inside the caller's transaction --


def insert_conversation(
    conn: sa.Connection,
    tenant_id: str,
    *,
    metadata: dict[str, str] | None = None,
    hidden: bool = False,
    parent: Conversation | None = None,
    fork_seq: int | None = None,
    owner: str | None = None,
    visibility: str = "private",
) -> Conversation:
    conv = Conversation(
        tenant_id=tenant_id,
        id=new_id("conv"),
        created_at=int(time.time()),
        metadata=metadata or {},
        hidden=hidden,
        parent_id=None if parent is None else parent.id,
        fork_seq=fork_seq if parent is not None else None,
        last_seq=fork_seq if (parent is not None and fork_seq is not None) else 0,
        owner=owner,
        visibility=visibility,
    )
    conn.execute(
        conversations.insert(),
        dict(
            tenant_id=tenant_id,
            id=conv.id,
            hidden=hidden,
            metadata=dumps(conv.metadata),
            parent_id=conv.parent_id,
            fork_seq=conv.fork_seq,
            last_seq=conv.last_seq,
            created_at=conv.created_at,
            deleted_at=None,
            owner=owner,
            visibility=visibility,
        ),
    )
    return conv


# Statements every turn runs, built once with bound parameters.
_LOAD = sa.select(conversations).where(
    conversations.c.tenant_id == sa.bindparam("t"),
    conversations.c.id == sa.bindparam("c"),
    conversations.c.deleted_at.is_(None),
)
_LOAD_FOR_UPDATE = _LOAD.with_for_update()


def load_conversation(
    conn: sa.Connection,
    tenant_id: str,
    conversation_id: str,
    *,
    for_update: bool = False,
    hidden_ok: bool = True,
    param: str = "conversation_id",
    viewer: Viewer | None = None,
    write: bool = False,
) -> Conversation:
    """The conversation, unless it is deleted, hidden (when not `hidden_ok`) or not the `viewer`'s
    to read (or, with `write`, to change): then it is not found, as another tenant's would be."""
    query = _LOAD_FOR_UPDATE if for_update and conn.dialect.name == "postgresql" else _LOAD
    row = (
        None
        if "\x00" in conversation_id
        else conn.execute(query, {"t": tenant_id, "c": conversation_id}).first()
    )
    if row is not None and (hidden_ok or not row._mapping["hidden"]):
        conv = conversation_from_row(row)
        if viewer is None or viewer.may(conv.owner, shared=conv.visibility == "tenant", write=write):
            return conv
    raise NotFound(f"Conversation with id '{conversation_id}' not found.", param=param)


def append_rows(
    conn: sa.Connection,
    conv: Conversation,
    new_items: Sequence[AnyItem],
    *,
    response_id: str | None = None,
    origin: str = "input",
    outputs_from: int | None = None,
) -> list[StoredItem]:
    """Append items after the conversation's head (with `outputs_from`, the items from that index
    on are the response's output); the caller holds the conversation's lock."""
    if not new_items:
        return []
    now = int(time.time())
    stored: list[StoredItem] = []
    rows: list[dict[str, Any]] = []
    seq = conv.last_seq
    for index, item in enumerate(new_items):
        if outputs_from is not None:
            origin = "output" if index >= outputs_from else "input"
        seq += 1
        item_id = item.id or new_id(ID_PREFIX[item.type])
        data = item_to_dict(item)
        data["id"] = item_id
        tokens = estimate_tokens(item)
        raw = dumps(data)
        rows.append(
            {
                "tenant_id": conv.tenant_id,
                "conversation_id": conv.id,
                "seq": seq,
                "id": item_id,
                "type": item.type,
                "response_id": response_id,
                "origin": origin,
                "tokens": tokens,
                "data": raw,
                "created_at": now,
            }
        )
        stored.append(
            StoredItem(
                tenant_id=conv.tenant_id,
                conversation_id=conv.id,
                seq=seq,
                id=item_id,
                type=item.type,
                raw=raw,
                data=data,
                response_id=response_id,
                created_at=now,
                tokens=tokens,
                origin=origin,
            )
        )
    conn.execute(items.insert(), rows)
    more = sum(1 for item in new_items if item.type == "compaction")
    conn.execute(_SET_LAST_SEQ, {"tenant": conv.tenant_id, "conv": conv.id, "last_seq": seq, "more": more})
    return stored


_SET_LAST_SEQ = (
    conversations.update()
    .where(conversations.c.tenant_id == sa.bindparam("tenant"), conversations.c.id == sa.bindparam("conv"))
    .values(last_seq=sa.bindparam("last_seq"), compactions=conversations.c.compactions + sa.bindparam("more"))
)
Segment = tuple[str, int, int]  # conversation id, first seq excluded, last seq included
_SCAN_COLUMNS = (
    items.c.seq,
    items.c.id,
    items.c.type,
    items.c.response_id,
    items.c.tokens,
    items.c.data,
    items.c.created_at,
    items.c.origin,
)


def lineage(conn: sa.Connection, conv: Conversation) -> list[Segment]:
    """The conversation's segments, newest first: its own items, then each ancestor's up to its fork."""
    return lineage_with_compactions(conn, conv)[0]


def lineage_with_compactions(conn: sa.Connection, conv: Conversation) -> tuple[list[Segment], set[str]]:
    """The lineage's segments, and which of their conversations hold compaction items."""
    segments: list[Segment] = [(conv.id, conv.fork_seq or 0, _INF)]
    compacted = {conv.id} if conv.compactions else set()
    parent_id, upto = conv.parent_id, conv.fork_seq
    while parent_id is not None and upto is not None:
        if len(segments) > _MAX_LINEAGE:
            raise Conflict("Conversation lineage is too deep.")
        row = conn.execute(_PARENT, {"t": conv.tenant_id, "c": parent_id}).first()
        if row is None:
            break
        segments.append((parent_id, row.fork_seq or 0, upto))
        if row.compactions:
            compacted.add(parent_id)
        parent_id, upto = row.parent_id, row.fork_seq
    return segments, compacted


_SCAN_WHERE = (
    items.c.tenant_id == sa.bindparam("t"),
    items.c.conversation_id == sa.bindparam("c"),
    items.c.seq > sa.bindparam("lo"),
    items.c.seq <= sa.bindparam("hi"),
)
_SCAN_DESC = (
    sa.select(*_SCAN_COLUMNS).where(*_SCAN_WHERE).order_by(items.c.seq.desc()).limit(sa.bindparam("n"))
)
_SCAN_ASC = sa.select(*_SCAN_COLUMNS).where(*_SCAN_WHERE).order_by(items.c.seq).limit(sa.bindparam("n"))
_PARENT = sa.select(conversations.c.parent_id, conversations.c.fork_seq, conversations.c.compactions).where(
    conversations.c.tenant_id == sa.bindparam("t"), conversations.c.id == sa.bindparam("c")
)
_NEWEST_COMPACTION = (
    sa.select(*_SCAN_COLUMNS)
    .where(*_SCAN_WHERE, items.c.type == "compaction")
    .order_by(items.c.seq.desc())
    .limit(1)
)


def scan(
    conn: sa.Connection,
    tenant_id: str,
    segments: list[Segment],
    *,
    descending: bool,
    limit: int,
    bound: int | None = None,
    floor: int = 0,
) -> list[StoredItem]:
    """Up to `limit` items of the lineage in seq order, starting after (or before) seq `bound`,
    never at or below seq `floor`."""
    return [
        _scanned(tenant_id, conv_id, row)
        for conv_id, row in _scan_rows(conn, tenant_id, segments, descending, limit, bound, floor)
    ]


def _scan_rows(
    conn: sa.Connection,
    tenant_id: str,
    segments: list[Segment],
    descending: bool,
    limit: int,
    bound: int | None,
    floor: int,
) -> list[tuple[str, Any]]:
    """`scan`'s rows (of `_SCAN_COLUMNS`), each with its conversation: plain tuples, not mapped rows
    or items, as a window reads hundreds of them on every turn and keeps only those that fit."""
    out: list[tuple[str, Any]] = []
    ordered = segments if descending else list(reversed(segments))
    for conv_id, lo, hi in ordered:
        remaining = limit - len(out)
        if remaining <= 0:
            break
        low, high = max(lo, floor), hi
        if bound is not None:
            if descending:
                high = min(high, bound - 1)
            else:
                low = max(low, bound)
        if low >= high:
            continue
        query = _SCAN_DESC if descending else _SCAN_ASC
        params = {"t": tenant_id, "c": conv_id, "lo": low, "hi": high, "n": remaining}
        out.extend((conv_id, row) for row in conn.execute(query, params).fetchall())
    return out


def _scanned(tenant_id: str, conv_id: str, row: Any) -> StoredItem:
    """A row of `_SCAN_COLUMNS` as a stored item."""
    seq, item_id, kind, response_id, tokens, raw, created_at, origin = row
    return StoredItem(
        tenant_id=tenant_id,
        conversation_id=conv_id,
        seq=seq,
        id=item_id,
        type=kind,
        raw=raw,
        response_id=response_id,
        created_at=created_at,
        tokens=tokens,
        origin=origin,
    )


def find_item(
    conn: sa.Connection, tenant_id: str, segments: list[Segment], item_id: str
) -> StoredItem | None:
    row = conn.execute(
        sa.select(items).where(items.c.tenant_id == tenant_id, id_equals(items.c.id, item_id))
    ).first()
    if row is None:
        return None
    found = item_from_row(row)
    for conv_id, lo, hi in segments:
        if found.conversation_id == conv_id and lo < found.seq <= hi:
            return found
    return None


def newest_compaction(
    conn: sa.Connection,
    tenant_id: str,
    segments: list[Segment],
    upto: int | None = None,
    only: set[str] | None = None,
) -> tuple[StoredItem | None, int]:
    """The lineage's newest compaction item at or before seq `upto`, and the seq of the last item it
    stands for: the one its content names (a compaction SRE made), or every item before it (one a
    client sent, which replaces what came before). A partial index makes this one probe a segment."""
    top = _INF if upto is None else upto
    for conv_id, lo, hi in segments:
        high = min(hi, top)
        if high <= lo or (only is not None and conv_id not in only):
            continue
        params = {"t": tenant_id, "c": conv_id, "lo": lo, "hi": high}
        row = conn.execute(_NEWEST_COMPACTION, params).first()
        if row is None:
            continue
        found = _scanned(tenant_id, conv_id, row)
        seq = found.seq
        through = seq - 1
        if found.origin == "output":
            read = read_compaction(str(found.data.get("encrypted_content", "")))
            if read is not None and read[2] is not None and 0 <= read[2] < seq:
                through = read[2]
        return found, through
    return None, 0


def read_window(conn: sa.Connection, conv: Conversation, budget: int, upto: int | None = None) -> Window:
    """The newest items up to seq `upto` that fit `budget` tokens, oldest first, read newest-first,
    down to the newest compaction item's range (which it stands for)."""
    segments, compacted = lineage_with_compactions(conn, conv)
    compaction, start = (
        newest_compaction(conn, conv.tenant_id, segments, upto, compacted) if compacted else (None, 0)
    )
    chosen: list[StoredItem] = []
    used = 0
    bound: int | None = None if upto is None else upto + 1
    skip = compaction.seq if compaction is not None else None
    tenant_id = conv.tenant_id
    while True:
        page = _scan_rows(conn, tenant_id, segments, True, _WINDOW_PAGE, bound, start)
        for conv_id, row in page:  # row: seq, id, type, response_id, tokens, ...
            if row[0] == skip:
                continue  # it stands first, for what it covers
            if row[2] != "compaction":  # an older summary costs nothing: it will not go in
                if used + row[4] > budget:
                    chosen.reverse()
                    return Window(chosen, used, True, compaction, start, conv.id)
                used += row[4]
            chosen.append(_scanned(tenant_id, conv_id, row))
        if len(page) < _WINDOW_PAGE:
            chosen.reverse()
            return Window(chosen, used, False, compaction, start, conv.id)
        bound = page[-1][1][0]


class ConversationRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        tenant_id: str,
        *,
        metadata: dict[str, str] | None = None,
        initial: Sequence[AnyItem] = (),
        owner: str | None = None,
        visibility: str = "private",
    ) -> tuple[Conversation, list[StoredItem]]:
        with self.db.write() as conn:
            conv = insert_conversation(conn, tenant_id, metadata=metadata, owner=owner, visibility=visibility)
            stored = append_rows(conn, conv, initial)
        if stored:
            conv = dataclasses.replace(conv, last_seq=stored[-1].seq)
        return conv, stored

    def get(self, tenant_id: str, conversation_id: str, *, viewer: Viewer | None = None) -> Conversation:
        with self.db.read() as conn:
            return load_conversation(conn, tenant_id, conversation_id, hidden_ok=False, viewer=viewer)

    def update(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        metadata: dict[str, str] | None = None,
        visibility: str | None = None,
        viewer: Viewer | None = None,
    ) -> Conversation:
        """Replace the metadata and/or the visibility (only its owner shares or unshares it)."""
        with self.db.write() as conn:
            conv = load_conversation(
                conn, tenant_id, conversation_id, for_update=True, hidden_ok=False, viewer=viewer, write=True
            )
            values: dict[str, Any] = {}
            if metadata is not None:
                values["metadata"] = dumps(metadata)
            if visibility is not None and visibility != conv.visibility:
                if viewer is not None and conv.owner not in (None, viewer.principal_id):
                    raise PermissionDenied(
                        f"Only the owner of conversation '{conversation_id}' may change its visibility.",
                        param="visibility",
                        code="not_the_owner",
                    )
                values["visibility"] = visibility
            if values:
                conn.execute(
                    conversations.update()
                    .where(conversations.c.tenant_id == tenant_id, conversations.c.id == conversation_id)
                    .values(**values)
                )
        return dataclasses.replace(
            conv,
            metadata=conv.metadata if metadata is None else metadata,
            visibility=visibility or conv.visibility,
        )

    def delete(self, tenant_id: str, conversation_id: str, *, viewer: Viewer | None = None) -> None:
        """Hide the conversation; drop its items unless a live fork still reads them."""
        with self.db.write() as conn:
            load_conversation(
                conn, tenant_id, conversation_id, for_update=True, hidden_ok=False, viewer=viewer, write=True
            )
            conn.execute(
                conversations.update()
                .where(conversations.c.tenant_id == tenant_id, conversations.c.id == conversation_id)
                .values(deleted_at=int(time.time()))
            )
            forks = conn.execute(
                sa.select(sa.func.count())
                .select_from(conversations)
                .where(
                    conversations.c.tenant_id == tenant_id,
                    conversations.c.parent_id == conversation_id,
                    conversations.c.deleted_at.is_(None),
                )
            ).scalar_one()
            if forks == 0:
                conn.execute(
                    items.delete().where(
                        items.c.tenant_id == tenant_id, items.c.conversation_id == conversation_id
                    )
                )
            event = AuditEvent(
                action="conversation.delete",
                resource_type="conversation",
                resource_id=conversation_id,
                actor=None if viewer is None else viewer.principal_id,
                details={"items_kept_for_forks": forks > 0},
            )
            append_audit(conn, tenant_id, [event])

    def fork(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        at_item_id: str | None = None,
        metadata: dict[str, str] | None = None,
        hidden: bool = False,
        viewer: Viewer | None = None,
    ) -> Conversation:
        """A new conversation (the viewer's) that sees the parent's items up to `at_item_id` (default:
        all); forking needs the right to change the parent (its owner's, or shared)."""
        with self.db.write() as conn:
            parent = load_conversation(
                conn, tenant_id, conversation_id, for_update=True, hidden_ok=hidden, viewer=viewer, write=True
            )
            fork_seq = parent.last_seq
            if at_item_id is not None:
                found = find_item(conn, tenant_id, lineage(conn, parent), at_item_id)
                if found is None:
                    raise NotFound(f"Item with id '{at_item_id}' not found.", param="item_id")
                fork_seq = found.seq
            return insert_conversation(
                conn,
                tenant_id,
                metadata=metadata,
                hidden=hidden,
                parent=parent,
                fork_seq=fork_seq,
                owner=parent.owner if viewer is None else viewer.principal_id,
            )

    def append(
        self,
        tenant_id: str,
        conversation_id: str,
        new_items: Sequence[AnyItem],
        *,
        viewer: Viewer | None = None,
    ) -> list[StoredItem]:
        with self.db.write() as conn:
            conv = load_conversation(
                conn, tenant_id, conversation_id, for_update=True, hidden_ok=False, viewer=viewer, write=True
            )
            return append_rows(conn, conv, new_items)

    def list_items(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: str = "desc",
        viewer: Viewer | None = None,
    ) -> Page:
        with self.db.read() as conn:
            conv = load_conversation(conn, tenant_id, conversation_id, hidden_ok=False, viewer=viewer)
            segments = lineage(conn, conv)
            bound = None
            if after is not None:
                found = find_item(conn, tenant_id, segments, after)
                if found is None:
                    raise InvalidRequest(f"No item with id '{after}' in this conversation.", param="after")
                bound = found.seq
            rows = scan(conn, tenant_id, segments, descending=order == "desc", limit=limit + 1, bound=bound)
        return Page(data=rows[:limit], has_more=len(rows) > limit, extra={"conversation": conv})

    def get_item(
        self, tenant_id: str, conversation_id: str, item_id: str, *, viewer: Viewer | None = None
    ) -> StoredItem:
        with self.db.read() as conn:
            conv = load_conversation(conn, tenant_id, conversation_id, hidden_ok=False, viewer=viewer)
            found = find_item(conn, tenant_id, lineage(conn, conv), item_id)
        if found is None:
            raise NotFound(f"Item with id '{item_id}' not found.", param="item_id")
        return found

    def delete_item(
        self, tenant_id: str, conversation_id: str, item_id: str, *, viewer: Viewer | None = None
    ) -> Conversation:
        with self.db.write() as conn:
            conv = load_conversation(
                conn, tenant_id, conversation_id, for_update=True, hidden_ok=False, viewer=viewer, write=True
            )
            found = find_item(conn, tenant_id, lineage(conn, conv), item_id)
            if found is None:
                raise NotFound(f"Item with id '{item_id}' not found.", param="item_id")
            if found.conversation_id != conv.id:
                raise Conflict(
                    f"Item '{item_id}' belongs to the conversation this one was forked from; delete it there.",
                    param="item_id",
                )
            conn.execute(
                items.delete().where(
                    items.c.tenant_id == tenant_id,
                    items.c.conversation_id == conv.id,
                    items.c.seq == found.seq,
                )
            )
            event = AuditEvent(
                action="conversation.item.delete",
                resource_type="item",
                resource_id=found.id,
                actor=None if viewer is None else viewer.principal_id,
                details={"conversation_id": conv.id, "type": found.type},
            )
            append_audit(conn, tenant_id, [event])
        return conv

    def window(self, tenant_id: str, conversation_id: str, budget: int, upto: int | None = None) -> Window:
        with self.db.read() as conn:
            conv = load_conversation(conn, tenant_id, conversation_id)
            return read_window(conn, conv, budget, upto)

    def read_range(
        self, tenant_id: str, conversation_id: str, *, after_seq: int, before_seq: int, limit_tokens: int
    ) -> tuple[list[StoredItem], bool]:
        """The lineage's items after seq `after_seq` and before seq `before_seq`, oldest first, up to
        about `limit_tokens` (stored estimates); and whether they reach `before_seq`."""
        out: list[StoredItem] = []
        used = 0
        with self.db.read() as conn:
            conv = load_conversation(conn, tenant_id, conversation_id)
            segments = lineage(conn, conv)
            bound = after_seq
            while True:
                page = scan(conn, tenant_id, segments, descending=False, limit=_WINDOW_PAGE, bound=bound)
                for item in page:
                    if item.seq >= before_seq:
                        return out, True
                    if used + item.tokens > limit_tokens and out:
                        return out, False
                    used += item.tokens
                    out.append(item)
                if len(page) < _WINDOW_PAGE:
                    return out, True
                bound = page[-1].seq

"""Moderation: the queue of flagged targets and the actions moderators take.

Actions: ``hide``, ``restore`` and ``delete`` content (reviews, replies,
threads, posts); ``close``/``reopen`` a plugin; ``quarantine``/``release`` a
version; ``ban``/``unban`` a user; ``moderator``/``unmoderator`` (by the admin
token or CLI only) make a user a moderator or not.  Each is one append-only row of
``moderation_actions``: who, what, which target, why, when, and the target's
state before and after.  ``reverse`` undoes an action by putting the state
before it back, recorded as a new action naming the one reversed; it is
refused when a later action changed the target since (reverse that first).
Hiding, deleting, closing, quarantining and banning uphold the target's
pending flags, restoring and reopening overrule them (:func:`.flags.resolve_flags`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral._errors import NotFoundError, PermissionDenied, UsageError

from .. import _db
from .._accounts import as_utc
from .._db import flags, moderation_actions, threads, users
from . import ratings
from .flags import resolve_flags
from .targets import CONTENT, Target, find, set_content_state
from .text import MAX_NOTE, check_body
from .users import set_banned

__all__ = ["ACTIONS", "Moderator", "act", "list_actions", "queue", "reverse"]


class Catalogue(Protocol):
    """What moderation needs of the registry: closing plugins and quarantining versions."""

    def set_quarantined_in(self, conn: Connection, plugin_id: str, version: str,
                           quarantined: bool) -> str: ...

    def set_closed_in(self, conn: Connection, plugin_id: str, closed: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Moderator:
    """Who acts: ``user:<name>`` (a user with ``is_admin``) or ``token:<id>`` (admin token)."""

    label: str
    user_pk: int | None = None


#: action -> (kinds it applies to, the state it sets, whether it upholds the flags)
ACTIONS: Final[dict[str, tuple[tuple[str, ...], dict[str, bool], bool | None]]] = {
    "hide": (tuple(CONTENT), {"hidden": True}, True),
    # deleting also hides: an author's edit (which undoes their own withdrawal) must not
    # bring back what a moderator removed
    "delete": (tuple(CONTENT), {"deleted": True, "hidden": True}, True),
    "restore": (tuple(CONTENT), {"hidden": False, "deleted": False}, False),
    "close": (("plugin",), {"closed": True}, True),
    "reopen": (("plugin",), {"closed": False}, False),
    "quarantine": (("version",), {"quarantined": True}, True),
    "release": (("version",), {"quarantined": False}, False),
    "ban": (("user",), {"banned": True}, None),
    "unban": (("user",), {"banned": False}, None),
    # granting moderation: the admin token or the admin CLI only, never a moderator
    "moderator": (("user",), {"is_admin": True}, None),
    "unmoderator": (("user",), {"is_admin": False}, None),
}
_GRANTS: Final = ("moderator", "unmoderator")


def _state(target: Target) -> dict[str, bool]:
    if target.kind in CONTENT:
        return {"hidden": target.hidden, "deleted": target.deleted}
    if target.kind == "user":
        return {"banned": target.hidden, "is_admin": target.is_admin}
    return {{"plugin": "closed", "version": "quarantined"}[target.kind]: target.hidden}


def _apply(conn: Connection, catalogue: Catalogue, target: Target,
           state: dict[str, bool]) -> list[str]:
    """Put ``target`` in ``state``; returns plugin ids whose signed metadata must change."""
    if target.kind in CONTENT:
        set_content_state(conn, target, hidden=state.get("hidden"),
                          deleted=state.get("deleted"))
        if target.kind == "review":
            ratings.refresh(conn)
        return []
    if target.kind == "plugin":
        catalogue.set_closed_in(conn, target.name, state["closed"])
        return [target.name]
    if target.kind == "version":
        plugin_id, _, version = target.name.partition("@")
        catalogue.set_quarantined_in(conn, plugin_id, version, state["quarantined"])
        return [plugin_id]
    if state["banned"] != target.hidden:
        set_banned(conn, target.pk, state["banned"])
    if state["is_admin"] != target.is_admin:
        conn.execute(users.update().where(users.c.pk == target.pk)
                     .values(is_admin=state["is_admin"]))
    return []


def _record(conn: Connection, who: Moderator, action: str, target: Target, reason: str,
            before: dict[str, bool], after: dict[str, bool],
            reverses: int | None = None) -> dict[str, Any]:
    now = _db.utcnow()
    pk = conn.execute(moderation_actions.insert().values(
        actor=who.label, action=action, target_kind=target.kind, target=target.name,
        reason=reason, reverses_pk=reverses, before=json.dumps(before, sort_keys=True),
        after=json.dumps(after, sort_keys=True), created_at=now,
    )).inserted_primary_key[0]  # type: ignore[index]
    return _action_dict(conn.execute(sa.select(moderation_actions)
                                     .where(moderation_actions.c.pk == pk)).one())


def _action_dict(row: Any) -> dict[str, Any]:
    return {"action_id": int(row.pk), "actor": row.actor, "action": row.action,
            "target_kind": row.target_kind, "target": row.target, "reason": row.reason,
            "reverses": row.reverses_pk, "before": json.loads(row.before),
            "after": json.loads(row.after), "created_at": as_utc(row.created_at).isoformat()}


def act(conn: Connection, catalogue: Catalogue, who: Moderator, action: str, kind: str,
        name: str, reason: str = "") -> tuple[dict[str, Any], list[str]]:
    """Take one moderation action; returns the recorded action and plugins to re-sign."""
    if action not in ACTIONS:
        raise UsageError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}",
                         field="action")
    kinds, wanted, upholds = ACTIONS[action]
    if kind not in kinds:
        raise UsageError(f"{action!r} applies to a {' or '.join(kinds)}, not a {kind!r}",
                         field="target_kind")
    check_body(reason, "reason", MAX_NOTE, allow_empty=True)
    target = find(conn, kind, name)
    if action in _GRANTS and who.user_pk is not None:
        raise PermissionDenied("moderation is granted by the registry's admin token or its "
                               "admin CLI, not by a moderator", permission="scope:admin")
    if kind == "user" and who.user_pk == target.pk:
        raise PermissionDenied("a moderator cannot ban, unban or demote themselves",
                               permission="moderation")
    before = _state(target)
    after = {**before, **wanted}
    changed = _apply(conn, catalogue, target, after)
    if upholds is not None:
        resolve_flags(conn, kind, target.name, agreed=upholds)
    return _record(conn, who, action, target, reason, before, after), changed


def reverse(conn: Connection, catalogue: Catalogue, who: Moderator, action_id: int,
            reason: str = "") -> tuple[dict[str, Any], list[str]]:
    """Undo action ``action_id`` (recorded as a new ``reverse`` action)."""
    check_body(reason, "reason", MAX_NOTE, allow_empty=True)
    m = moderation_actions
    row = conn.execute(sa.select(m).where(m.c.pk == action_id)).first()
    if row is None:
        raise NotFoundError(f"no moderation action {action_id}", action=action_id)
    done = conn.execute(sa.select(m.c.pk).where(m.c.reverses_pk == action_id)).first()
    if done is not None:
        raise UsageError(f"action {action_id} was reversed already (by action {done.pk})",
                         action=action_id)
    later = conn.execute(sa.select(m.c.pk).where(
        (m.c.target_kind == row.target_kind) & (m.c.target == row.target) & (m.c.pk > row.pk)
    ).order_by(m.c.pk.desc()).limit(1)).first()
    if later is not None:
        raise UsageError(f"action {later.pk} changed {row.target_kind} {row.target} since; "
                         f"reverse it first", action=action_id, later=int(later.pk))
    target = find(conn, str(row.target_kind), str(row.target))
    before = _state(target)
    after = {**before, **json.loads(row.before)}
    changed = _apply(conn, catalogue, target, after)
    return _record(conn, who, "reverse", target, reason, before, after, int(row.pk)), changed


def list_actions(conn: Connection, *, kind: str | None = None, target: str | None = None,
                 limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """The action log, newest first (optionally for one target)."""
    m = moderation_actions
    q = sa.select(m).order_by(m.c.pk.desc()).limit(limit).offset(offset)
    if kind is not None:
        q = q.where(m.c.target_kind == kind)
    if target is not None:
        q = q.where(m.c.target == target)
    return [_action_dict(r) for r in conn.execute(q)]


def _preview(conn: Connection, kind: str, name: str) -> dict[str, Any]:
    """A short look at the flagged thing for the queue."""
    if kind in CONTENT and name.isdigit():
        table = CONTENT[kind]
        cols = [table.c.body, table.c.hidden, table.c.deleted, users.c.name.label("author")]
        if kind == "thread":
            cols.append(threads.c.title)
        row = conn.execute(sa.select(*cols).join(users, users.c.pk == table.c.user_pk)
                           .where(table.c.pk == int(name))).first()
        if row is None:
            return {}
        out = {"author": row.author, "excerpt": row.body[:280], "hidden": bool(row.hidden),
               "deleted": bool(row.deleted)}
        if kind == "thread":
            out["title"] = row.title
        return out
    if kind == "plugin":
        p = _db.plugins
        row = conn.execute(sa.select(p.c.summary, p.c.closed).where(p.c.id == name)).first()
        return {} if row is None else {"excerpt": row.summary[:280], "hidden": bool(row.closed)}
    return {}


def queue(conn: Connection, *, limit: int = 100) -> list[dict[str, Any]]:
    """Targets with pending flags: malware reports first, then by score; reasons, a preview."""
    f = flags
    score = sa.func.sum(f.c.weight).label("score")
    malware = sa.func.max(sa.case((f.c.reason == "malware", 1), else_=0))
    rows = conn.execute(
        sa.select(f.c.target_kind, f.c.target, score, sa.func.count().label("n"),
                  sa.func.max(f.c.created_at).label("last"))
        .where(f.c.status == "pending").group_by(f.c.target_kind, f.c.target)
        .order_by(malware.desc(), score.desc(), sa.func.max(f.c.created_at).desc())
        .limit(limit)
    ).all()
    out = []
    for r in rows:
        detail = conn.execute(sa.select(f.c.pk, f.c.reason, f.c.note, users.c.name, f.c.weight)
                              .join(users, users.c.pk == f.c.user_pk)
                              .where((f.c.target_kind == r.target_kind)
                                     & (f.c.target == r.target) & (f.c.status == "pending"))
                              .order_by(f.c.pk)).all()
        reasons: dict[str, int] = {}
        for d in detail:
            reasons[d.reason] = reasons.get(d.reason, 0) + 1
        out.append({"target_kind": r.target_kind, "target": r.target,
                    "score": round(float(r.score), 3), "flags": int(r.n), "reasons": reasons,
                    "last_flagged_at": as_utc(r.last).isoformat(),
                    "flaggers": [{"flag_id": int(d.pk), "user": d.name, "reason": d.reason,
                                  "note": d.note, "weight": round(float(d.weight), 3)}
                                 for d in detail],
                    **_preview(conn, r.target_kind, r.target)})
    return out

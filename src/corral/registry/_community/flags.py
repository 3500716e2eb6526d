"""Flags: anyone signed in reports a review, reply, thread, post or plugin.

Each flag weighs what its flagger is trusted for, after Discourse's reviewable
scores::

    weight = (1 + TRUST_BONUS * trust_level) * accuracy
    accuracy = (agreed + 1) / (agreed + disagreed + 2)

so a new account weighs 0.5, a flagger whose flags moderators always upheld
approaches ``1 + TRUST_BONUS * trust_level``, and one always overruled
approaches 0.  The target's score is the sum of its pending flags' weights; at
:data:`HIDE_THRESHOLD` content is hidden at once (a ``system`` action that a
moderator can reverse).  Plugins are never hidden by flags alone: they wait in
the queue, malware reports first.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral._errors import UsageError

from .. import _db
from .._accounts import as_utc
from .._db import flags, moderation_actions, users
from . import ratings
from .targets import CONTENT, find, set_content_state
from .text import MAX_NOTE, check_body
from .users import User

__all__ = ["FLAGGABLE", "HIDE_THRESHOLD", "REASONS", "TRUST_BONUS", "add_flag", "flag_weight",
           "resolve_flags", "target_score"]

REASONS: Final = ("spam", "abuse", "malware", "other")
FLAGGABLE: Final = (*CONTENT, "plugin")
TRUST_BONUS: Final = 0.5
HIDE_THRESHOLD: Final = 2.0


def flag_weight(user: User) -> float:
    """How much one flag of ``user`` counts now."""
    return (1.0 + TRUST_BONUS * user.trust_level) * user.accuracy


def target_score(conn: Connection, kind: str, name: str) -> float:
    """The sum of the pending flags' weights on one target."""
    f = flags
    total = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(f.c.weight), 0.0)).where(
        (f.c.target_kind == kind) & (f.c.target == name) & (f.c.status == "pending"))
    ).scalar_one()
    return float(total)


def add_flag(conn: Connection, user: User, kind: str, name: str, reason: str,
             note: str = "") -> dict[str, Any]:
    """Flag a target; hide content whose score reaches :data:`HIDE_THRESHOLD`."""
    user.require_active()
    if kind not in FLAGGABLE:
        raise UsageError(f"one flags a {', '.join(FLAGGABLE)}; not a {kind!r}",
                         field="target_kind")
    if reason not in REASONS:
        raise UsageError(f"reason must be one of {', '.join(REASONS)}, got {reason!r}",
                         field="reason")
    check_body(note, "note", MAX_NOTE, allow_empty=True)
    target = find(conn, kind, name)
    if target.hidden or target.deleted:
        raise UsageError(f"that {kind} is already hidden", field="target", reason="hidden")
    if target.author_pk == user.pk:
        raise UsageError(f"you cannot flag your own {kind}", field="target")
    f = flags
    mine = (f.c.target_kind == kind) & (f.c.target == target.name) & (f.c.user_pk == user.pk)
    if conn.execute(sa.select(f.c.pk).where(mine)).first() is not None:
        raise UsageError(f"you flagged this {kind} already", field="target")
    weight = flag_weight(user)
    now = _db.utcnow()
    pk = conn.execute(f.insert().values(target_kind=kind, target=target.name, user_pk=user.pk,
                                        reason=reason, note=note, weight=weight,
                                        created_at=now)).inserted_primary_key[0]  # type: ignore[index]
    score = target_score(conn, kind, target.name)
    hidden = False
    if kind in CONTENT and score >= HIDE_THRESHOLD:
        set_content_state(conn, target, hidden=True)
        if kind == "review":
            ratings.refresh(conn)  # a hidden review's stars stop counting
        conn.execute(moderation_actions.insert().values(
            actor="system", action="hide", target_kind=kind, target=target.name,
            reason=f"flag score {score:.2f} reached {HIDE_THRESHOLD}", created_at=now))
        hidden = True
    return {"flag_id": int(pk), "target_kind": kind, "target": target.name, "reason": reason,
            "weight": round(weight, 3), "score": round(score, 3), "hidden": hidden,
            "created_at": as_utc(now).isoformat()}


def resolve_flags(conn: Connection, kind: str, name: str, agreed: bool) -> int:
    """Settle the pending flags on a target; flaggers' accuracy and trust follow.

    A flagger reaches trust level 1 after 3 upheld flags and 2 after 10, as long
    as at least three quarters of their flags were upheld.
    """
    f, u = flags, users
    pending = (f.c.target_kind == kind) & (f.c.target == name) & (f.c.status == "pending")
    flaggers = [int(x) for x in conn.execute(sa.select(f.c.user_pk).where(pending)).scalars()]
    if not flaggers:
        return 0
    conn.execute(f.update().where(pending).values(
        status="agreed" if agreed else "disagreed", resolved_at=_db.utcnow()))
    column = u.c.flags_agreed if agreed else u.c.flags_disagreed
    conn.execute(u.update().where(u.c.pk.in_(flaggers)).values({column: column + 1}))
    for row in conn.execute(sa.select(u.c.pk, u.c.flags_agreed, u.c.flags_disagreed,
                                      u.c.trust_level).where(u.c.pk.in_(flaggers))).all():
        good, bad = int(row.flags_agreed), int(row.flags_disagreed)
        level = 0
        if good >= 3 and good >= 3 * bad:
            level = 2 if good >= 10 else 1
        if level != int(row.trust_level) and int(row.trust_level) < 3:  # 3+: set by hand
            conn.execute(u.update().where(u.c.pk == row.pk).values(trust_level=level))
    return len(flaggers)

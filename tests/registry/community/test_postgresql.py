"""The community schema and one whole flow on PostgreSQL (the SQLite tests cover the rest);
the append-only moderation log on both databases."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from corral.registry._community.service import Community
from corral.registry._db import COMMUNITY_TABLES, migrate, moderation_actions, utcnow

from .conftest import Site, bearer


def test_schema_and_the_review_flag_moderate_flow(pg_site: Site) -> None:
    site = pg_site
    assert site.registry.engine.dialect.name == "postgresql"
    names = set(sa.inspect(site.registry.engine).get_table_names())
    assert {t.name for t in COMMUNITY_TABLES} <= names
    assert migrate(site.registry.engine) == 0  # idempotent: nothing left to run
    me, flaggers = site.person(), [site.person() for _ in range(4)]
    assert site.http.put("/v1/plugins/acme.widget/reviews/mine", json={"stars": 5, "body": "x"},
                         headers=me.auth).status_code == 403
    site.http.get("/v1/plugins/acme.widget/versions/1.0.0/download", headers=me.auth)
    r = site.http.put("/v1/plugins/acme.widget/reviews/mine",
                      json={"stars": 5, "body": "spam \u202e <b>"}, headers=me.auth)
    assert r.status_code == 201
    assert r.json()["version"] == "1.0.0"
    rid = str(r.json()["review_id"])
    assert site.http.get("/v1/plugins/acme.widget").json()["bayes_rating"] == 5.0
    for who in flaggers:
        assert site.http.post("/v1/flags", json={"target_kind": "review", "target": rid,
                                                 "reason": "spam"},
                              headers=who.auth).status_code == 201
    assert site.http.get(f"/v1/reviews/{rid}").status_code == 404
    assert site.http.get("/v1/plugins/acme.widget").json()["bayes_rating"] == 0.0
    mod = site.person()
    Community(site.registry).set_admin(mod.name)
    queue = site.http.get("/v1/moderation/queue", headers=mod.auth).json()["queue"]
    assert queue[0]["target"] == rid
    assert queue[0]["score"] == 2.0
    q = site.http.post("/v1/moderation/actions", json={"action": "quarantine",
                       "target_kind": "version", "target": "acme.widget@1.1.0"},
                       headers=mod.auth)
    assert q.status_code == 201
    assert site.http.get("/v1/plugins/acme.widget/resolve").json()["version"] == "1.0.0"
    assert site.http.get("/v1/plugins/acme.widget/reviews",
                         headers=bearer(mod.token)).json()["total"] == 0
    back = site.http.post(f"/v1/moderation/actions/{q.json()['action_id']}/reverse",
                          headers=mod.auth)
    assert back.status_code == 201
    assert site.http.get("/v1/plugins/acme.widget/resolve").json()["version"] == "1.1.0"
    assert site.http.get("/v1/threads/2147483647").status_code == 404


def test_the_moderation_log_refuses_updates_and_deletes(pg_site: Site, site: Site) -> None:
    for registry in (pg_site.registry, site.registry):
        with registry.write() as conn:
            conn.execute(moderation_actions.insert().values(
                actor="system", action="hide", target_kind="review", target="1",
                created_at=utcnow()))
        for stmt in (moderation_actions.update().values(reason="rewritten history"),
                     moderation_actions.delete()):
            with pytest.raises(sa.exc.DatabaseError, match="append-only"), \
                    registry.write() as conn:
                conn.execute(stmt)
        with registry.read() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(moderation_actions)
                                .where(moderation_actions.c.reason == "rewritten history")
                                ).scalar_one() == 0

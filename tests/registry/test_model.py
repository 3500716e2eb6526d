"""Pure pieces: names and skeletons, query terms, ranking, tokens, store, migrations, seed."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa

from corral._errors import NotFoundError, PermissionDenied, UsageError
from corral.registry import _db
from corral.registry._artifacts import FilesystemArtifactStore
from corral.registry._errors import Unauthenticated, error_from_dict, http_status
from corral.registry._names import ecosystem_of, normalise_name, query_terms, skeleton
from corral.registry._rank import Candidate, rank
from corral.registry._seed import downloads_for_rank, seed
from corral.registry._service import Registry


def test_names() -> None:
    assert normalise_name("Flask_SQLAlchemy") == "flask-sqlalchemy"
    assert normalise_name("zope.interface") == "zope-interface"
    assert skeleton("pytest-xdist") == skeleton("pytest_xd1st") == skeleton("PytestXdist")
    assert skeleton("modern") == skeleton("modem")  # rn reads as m
    assert skeleton("g00gle") == skeleton("google")
    assert skeleton("acme.tool-x") == skeleton("acmet.ool-x")
    assert skeleton("requests") != skeleton("request")
    assert ecosystem_of("pytest-cov") == ("pytest", "testing")
    assert ecosystem_of("apache-airflow-providers-amazon") == ("airflow", "workflow")
    assert ecosystem_of("sphinxcontrib-mermaid") == ("sphinx", "documentation")
    assert ecosystem_of("requests") is None
    groups = query_terms("run the tests in parallel")
    assert [g[0] for g in groups] == ["tests", "parallel"]
    assert "distributed" in groups[1]
    assert query_terms("the") == [("the",)]


def test_rank_orders_exact_then_typo_then_popularity() -> None:
    def cand(pk: int, name: str, downloads: int, summary: str = "") -> Candidate:
        return Candidate(pk, f"pypi.{name}", name, summary, "", downloads, 0.0)

    cands = [cand(1, "pytest-xdist", 700_000, "distributed testing"),
             cand(2, "pytest-rxdist", 0, "rust"),
             cand(3, "xdist-tools", 10, "")]
    out = rank(cands, query="pytest-xdist", query_name="pytest-xdist",
               groups=query_terms("pytest-xdist"))
    assert out[0].pk == 1
    out = rank(cands, query="pytset-xdist", query_name="pytset-xdist",
               groups=query_terms("pytset-xdist"))
    assert out[0].pk == 1


def test_error_mapping() -> None:
    assert http_status(UsageError("x")) == 400
    assert http_status(NotFoundError("x")) == 404
    assert http_status(Unauthenticated("x")) == 401
    assert http_status(PermissionDenied("x", permission="p")) == 403
    again = error_from_dict({"code": "permission_denied", "message": "m", "permission": "p"}, 403)
    assert isinstance(again, PermissionDenied)
    assert again.exit_code == 4
    assert isinstance(error_from_dict({"code": "permission_denied", "message": "m"}, 401),
                      Unauthenticated)
    assert error_from_dict({"code": "not_found", "message": "m"}, 404).exit_code == 1
    assert error_from_dict({"code": "invalid", "message": "m"}, 422).exit_code == 3


def test_tokens_are_hashed_scoped_and_expire(tmp_path: Path) -> None:
    with Registry.open(tmp_path) as reg:
        reg.create_publisher("acme")
        token = reg.create_token("acme", scopes=("yank",), expires_in=dt.timedelta(hours=1))
        token_id, secret = token.split("_")[1], token.split("_", 2)[2]
        with reg.read() as conn:
            row = conn.execute(sa.select(_db.tokens)).one()
        assert row.token_id == token_id
        assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in str(tuple(row))
        who = reg.authenticate(token)
        assert who.publisher == "acme"
        who.require("yank")
        with pytest.raises(PermissionDenied):
            who.require("publish")
        with pytest.raises(Unauthenticated, match="invalid"):
            reg.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B"))
        with pytest.raises(Unauthenticated):
            reg.authenticate(None)
        with pytest.raises(UsageError):
            reg.create_token("acme", scopes=("root",))
        with pytest.raises(NotFoundError):
            reg.create_token("nobody")
        with pytest.raises(UsageError):
            reg.create_publisher("Bad Name!")
        with pytest.raises(UsageError):
            reg.create_publisher("acme")


def test_store_is_content_addressed_and_atomic(tmp_path: Path) -> None:
    store = FilesystemArtifactStore(tmp_path / "a")
    blob = tmp_path / "blob"
    blob.write_bytes(b"hello")
    digest = hashlib.sha256(b"hello").hexdigest()
    assert store.put_file(blob, digest) is True
    assert store.put_file(blob, digest) is False
    with store.open(digest) as fp:
        assert fp.read() == b"hello"
    assert [p.name for p in store.files()] == [digest]
    with pytest.raises(ValueError, match="does not hash"):
        store.put_file(blob, "0" * 64)
    assert [p.name for p in store.files()] == [digest]  # no temp file left behind
    assert not [p for p in (tmp_path / "a").rglob("*.tmp")]
    store.delete(digest)
    assert not store.exists(digest)
    with pytest.raises(NotFoundError):
        store.open(digest)


def test_migrations_are_versioned_and_idempotent(tmp_path: Path) -> None:
    engine = _db.open_engine(f"sqlite:///{tmp_path / 'r.db'}")
    assert _db.migrate(engine) == _db.SCHEMA_VERSION
    assert _db.migrate(engine) == 0
    with engine.connect() as conn:
        done = conn.exec_driver_sql("SELECT version FROM schema_migrations").scalars().all()
    assert sorted(done) == list(range(1, _db.SCHEMA_VERSION + 1))
    engine.dispose()


def test_seed_is_idempotent(tmp_path: Path) -> None:
    tsv = tmp_path / "c.tsv"
    tsv.write_text("name\tversion\tmonth\tpopularity_rank\tsummary\n"
                   "Pytest_Foo\t1.0\t2026-01\t10\tRun foo tests\n"
                   "weird\tnot a version\t\t\tbroken row\n", encoding="utf-8")
    with Registry.open(tmp_path / "r") as reg:
        assert seed(reg, tsv) == {"added": 2, "skipped": 0, "invalid": 0}
        assert seed(reg, tsv) == {"added": 0, "skipped": 2, "invalid": 0}
        info = reg.info("pypi.pytest-foo")
        assert info["name"] == "Pytest_Foo"
        assert info["tags"] == ["pytest"]
        assert info["category"] == "testing"
        assert info["downloads"] == downloads_for_rank(10)
        assert reg.info("pypi.weird")["version"] == "0"
    assert downloads_for_rank("") == 0


def test_registry_never_imports_the_host_runtime() -> None:
    import subprocess
    import sys

    code = ("import sys; import corral.registry._app, corral.registry._seed, "
            "corral._cli.registry, corral.registry.client; "
            "bad = [m for m in sys.modules if m.startswith(('corral._host', 'corral._sandbox'))]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
    light = subprocess.run(
        [sys.executable, "-c", "import sys, corral.registry, corral._cli.registry; "
         "print(any(m in sys.modules for m in ('fastapi', 'sqlalchemy', 'httpx')))"],
        capture_output=True, text=True, check=True)
    assert light.stdout.strip() == "False"

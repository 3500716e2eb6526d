"""Search quality on a real PyPI catalogue (the whole one in CI), through HTTP and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.registry import client_main

from .conftest import CATALOGUE

#: (query, the plugin a user means, how near the top it must be)
QUERIES = [
    ("run tests in parallel", "pypi.pytest-xdist", 5),
    ("pytset-xdist", "pypi.pytest-xdist", 1),
    ("pytest xdist", "pypi.pytest-xdist", 1),
    ("markdown documentation site", "pypi.mkdocs", 5),
    ("measure test coverage", "pypi.pytest-cov", 3),
    ("mock objects in tests", "pypi.pytest-mock", 3),
    ("read the docs theme for sphinx", "pypi.sphinx-rtd-theme", 1),
    ("material theme for mkdocs", "pypi.mkdocs-material", 3),
    ("django debug toolbar", "pypi.django-debug-toolbar", 1),
    ("djangorestframwork", "pypi.djangorestframework", 1),
    ("reqeusts", "pypi.requests", 1),
    ("timeout for tests", "pypi.pytest-timeout", 3),
    ("retry flaky tests", "pypi.pytest-rerunfailures", 5),
    ("cors headers django", "pypi.django-cors-headers", 1),
    ("airflow amazon provider", "pypi.apache-airflow-providers-amazon", 1),
    ("environment variables from .env file", "pypi.python-dotenv", 3),
    ("flake8 bugbear", "pypi.flake8-bugbear", 1),
    ("Flask_SQLAlchemy", "pypi.flask-sqlalchemy", 1),
    ("pypi.black", "pypi.black", 1),
    ("code formatter", "pypi.black", 10),
    ("jupyterlab git", "pypi.jupyterlab-git", 1),
    ("async tests", "pypi.pytest-asyncio", 5),
]


@pytest.mark.parametrize(("query", "wanted", "within"), QUERIES)
def test_query_finds_the_plugin(catalogue_url: str, query: str, wanted: str, within: int) -> None:
    r = httpx.get(f"{catalogue_url}/v1/search", params={"q": query, "per_page": 10})
    r.raise_for_status()
    ids = [x["id"] for x in r.json()["results"]]
    assert wanted in ids[:within], f"{query!r}: {wanted} not in top {within}: {ids[:within]}"


def test_result_shape_and_filters(catalogue_url: str) -> None:
    doc = httpx.get(f"{catalogue_url}/v1/search", params={"q": "pytest"}).json()
    first = doc["results"][0]
    assert first["id"] == "pypi.pytest"
    for key in ("id", "name", "version", "summary", "downloads", "rating", "verified"):
        assert key in first
    assert doc["total"] > 1000
    tagged = httpx.get(f"{catalogue_url}/v1/search",
                       params={"q": "theme", "tag": "mkdocs", "per_page": 50}).json()
    assert tagged["results"]
    assert tagged["results"]  # all() below must not pass on nothing
    assert all("mkdocs" in x["tags"] for x in tagged["results"])
    cat = httpx.get(f"{catalogue_url}/v1/search",
                    params={"q": "coverage", "category": "testing"}).json()
    assert cat["results"]  # all() below must not pass on nothing
    assert all(x["category"] == "testing" for x in cat["results"])
    by_dl = httpx.get(f"{catalogue_url}/v1/search",
                      params={"q": "django", "sort": "downloads", "per_page": 50}).json()
    downloads = [x["downloads"] for x in by_dl["results"]]
    assert downloads == sorted(downloads, reverse=True)
    # every package named for django matches, whichever catalogue was seeded
    named = sum(1 for line in CATALOGUE.read_text(encoding="utf-8").splitlines()[1:]
                if "django" in line.split("\t", 1)[0].lower())
    assert named > 50
    assert by_dl["total"] >= named
    empty = httpx.get(f"{catalogue_url}/v1/search", params={"q": "zzqqxxjjvv"}).json()
    assert empty == {**empty, "results": [], "total": 0}


def test_cli_search_json(catalogue_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = client_main("search", ["run", "tests", "in", "parallel", "--json",
                                  "--registry", catalogue_url])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"results", "total"} <= set(doc)
    assert "pypi.pytest-xdist" in [x["id"] for x in doc["results"][:5]]
    code = client_main("show", ["pypi.pytest-xdist", "--json", "--registry", catalogue_url])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0
    assert shown["versions"][0]["sha256"] is None
    assert shown["tags"] == ["pytest"]
    code = client_main("show", ["pypi.no-such-thing", "--json", "--registry", catalogue_url])
    assert code == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not_found"
    code = client_main("search", ["x", "--sort", "bogus", "--json", "--registry", catalogue_url])
    assert code == 2


@pytest.fixture(scope="module")
def pg_catalogue_url(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The pytest, mkdocs and sphinx parts of the catalogue, on PostgreSQL."""
    from corral.registry._app import open_server
    from corral.registry._seed import seed

    from .conftest import CATALOGUE, open_backend

    if not CATALOGUE.is_file():
        pytest.skip(f"{CATALOGUE} is not available")
    tmp = tmp_path_factory.mktemp("pgcat")
    lines = CATALOGUE.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = [line for line in lines[1:] if line.lower().startswith(("pytest", "mkdocs", "sphinx"))]
    subset = tmp / "subset.tsv"
    subset.write_text(lines[0] + "".join(keep), encoding="utf-8")
    reg = open_backend("postgresql", tmp / "data", request)
    seed(reg, subset)
    with open_server(reg) as url:
        yield url
    reg.close()


@pytest.mark.parametrize(("query", "wanted", "within"), [
    ("run tests in parallel", "pypi.pytest-xdist", 5),
    ("pytset-xdist", "pypi.pytest-xdist", 1),
    ("markdown documentation site", "pypi.mkdocs", 5),
    ("read the docs theme for sphinx", "pypi.sphinx-rtd-theme", 1),
    ("measure test coverage", "pypi.pytest-cov", 3),
])
def test_postgresql_search(pg_catalogue_url: str, query: str, wanted: str, within: int) -> None:
    r = httpx.get(f"{pg_catalogue_url}/v1/search", params={"q": query})
    r.raise_for_status()
    ids = [x["id"] for x in r.json()["results"]]
    assert wanted in ids[:within], f"{query!r}: {wanted} not in top {within}: {ids[:within]}"
    assert httpx.get(f"{pg_catalogue_url}/v1/health").json()["database"] == "postgresql"


def test_postgresql_text_search_uses_its_index_after_a_seed(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """After a bulk seed the text index answers a rare query, not a scan of every row.

    A seed leaves the index's entries in GIN's pending list unless it cleans it; the
    planner then scans the table (tens of ms a query on the full catalogue).  The
    query is planned as a search plans it: a ``tsquery`` constant, not ``to_tsquery``.
    """
    import sqlalchemy as sa

    from corral.registry._search import _matches, _tsquery_text
    from corral.registry._seed import seed

    from .conftest import CATALOGUE, open_backend

    reg = open_backend("postgresql", tmp_path / "data", request)
    try:
        assert seed(reg, CATALOGUE)["added"] > 5000
        with reg.engine.connect() as conn:
            text = _tsquery_text(conn, "(pytest) & (xdist)")
            assert text == "'pytest' & 'xdist'"
            where = _matches("postgresql", text)
            stmt = sa.select(sa.func.count()).select_from(sa.table("plugins")).where(where)
            compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
            assert "ix_plugins_search" in plan, plan
            assert conn.execute(stmt).scalar_one() >= 1
    finally:
        reg.close()

"""The OpenAPI document is true to the server: schemathesis against a real server.

Every operation is fuzzed with data the document allows (and, for operations
with parameters, data it forbids); the run fails on any 5xx, a status the
document does not list, a body or content type that does not match it, or
forbidden data that is accepted.  Bounded: a few hundred examples in all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

import httpx  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from corral.registry._app import open_server  # noqa: E402
from corral.registry._community.service import Community  # noqa: E402
from corral.registry._service import Registry  # noqa: E402

from .conftest import _accounts, make_plugin, open_backend  # noqa: E402

POSITIVE = [not_a_server_error, status_code_conformance, content_type_conformance,
            response_schema_conformance]
NEGATIVE = [*POSITIVE, negative_data_rejection]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Registry]]:
    """A registry with one published plugin; yields (url, publish token, registry)."""
    tmp = tmp_path_factory.mktemp(f"openapi-{request.param}")
    reg: Registry = open_backend(request.param, tmp / "data", request,
                                 max_upload_bytes=1024 * 1024)
    token, _ = _accounts(reg)
    with open_server(reg) as url:
        archive = make_plugin(tmp, "acme.fuzzed", "1.0.0")
        with archive.open("rb") as fp:
            r = httpx.post(f"{url}/v1/publish", files={"archive": fp},
                           headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 201, r.text
        yield url, token, reg
    reg.close()


def _run(operation: Any, mode: Any, url: str, headers: dict[str, str], examples: int) -> None:
    checks = NEGATIVE if mode == GenerationMode.NEGATIVE else POSITIVE

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        case.call_and_validate(base_url=url, headers=headers, checks=checks, timeout=30)

    check()


#: The community's operations, fuzzed apart (each half within the per-test timeout)
#: and with a moderator's user token, so that the fuzzer reaches past authentication.
COMMUNITY_TAGS = {"accounts", "reviews", "discussions", "moderation"}


@pytest.mark.parametrize("part", ["registry", "community"])
def test_openapi_document_matches_the_server(served: tuple[str, str, Registry],
                                             tmp_path: Path, part: str) -> None:
    url, token, reg = served
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations
                  if bool(set(op.tags or ()) & COMMUNITY_TAGS) == (part == "community")]
    assert len(operations) >= 16
    if part == "community":
        name = "fuzz-moderator"
        httpx.post(f"{url}/v1/users", json={"name": name, "password": "fuzzing pass"})
        session = httpx.post(f"{url}/v1/sessions",
                             json={"name": name, "password": "fuzzing pass"}).json()["session"]
        token = httpx.post(f"{url}/v1/users/me/tokens", json={},
                           headers={"Authorization": f"Bearer {session}"}).json()["token"]
        Community(reg).set_admin(name)
    auth = {"Authorization": f"Bearer {token}"}
    for operation in operations:
        _run(operation, GenerationMode.POSITIVE, url, auth, 15)
        has_params = bool(list(operation.iter_parameters())) or operation.body
        if has_params:
            _run(operation, GenerationMode.NEGATIVE, url, auth, 8)

"""The cache's file in the home: owner-only, never through a planted link, not a grant away."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.plugins import make_plugin

from corral import Host, PolicyDenied
from corral._errors import UsageError


def test_cache_db_is_owner_only(host: Host, cache_plugin: Callable[..., Path]) -> None:
    host.enable(host.register(cache_plugin("acme.f"))[0].id)
    host.call("acme.f", "put", {"key": "k", "value": "v"})
    mode = stat.S_IMODE((host.home / "cache.db").stat().st_mode)
    assert mode == 0o600


def test_a_link_planted_at_cache_db_is_refused(host: Host, tmp_path: Path,
                                               cache_plugin: Callable[..., Path]) -> None:
    host.enable(host.register(cache_plugin("acme.f"))[0].id)
    target = tmp_path / "elsewhere.db"
    target.write_bytes(b"")
    os.symlink(target, host.home / "cache.db")
    with pytest.raises(UsageError, match="cache database"):
        host._services.cache.store  # noqa: B018 - opening it is what is refused
    assert target.read_bytes() == b""  # nothing was written through the link


def test_reading_cache_db_is_not_grantable(host: Host, tmp_path: Path) -> None:
    grant = str(host.home / "cache.db")
    src = make_plugin(tmp_path, "acme.nosy", permissions={"fs-read": [grant]})
    with pytest.raises(PolicyDenied, match=r"cache\.db"):
        host.register(src)
